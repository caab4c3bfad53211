"""Hugging Face Hub ids wherever a path is accepted: the one place that turns ``org/name`` into a local path.

Every loader (the native ``from_pretrained`` / ``from_checkpoint`` / ``load`` / ``open_model``, the pipelines,
the tokenizer, the training config and the CLI) passes its path through :func:`resolve`:

>>> from latte_rs import hub
>>> hub.resolve("model.safetensors")                        # a local path (or no id) is returned as it is
PosixPath('model.safetensors')
>>> hub.is_hub_id("maxin-cn/Latte"), hub.is_hub_id("./runs/model.pt")
(True, False)
>>> hub.resolve("maxin-cn/Latte", filename="ucf101.pt")     # doctest: +SKIP
PosixPath('/home/me/.cache/huggingface/hub/models--maxin-cn--Latte/snapshots/<commit>/ucf101.pt')

Rules, as diffusers' ``from_pretrained``:

- A local path always wins: when ``path`` exists, it is returned (joined with ``subfolder`` and ``filename``),
  ``revision`` is ignored. So does a path whose first part is a local folder (``runs/missing.pt``): a typo in a
  local path is reported as a missing file, not looked up on the Hub.
- Otherwise ``org/name`` (or ``org/name/path/in/repo``, the spelling of ``hf://`` paths, so that code joining
  ``pretrained / "vae"`` keeps working) is a Hub repository: :func:`huggingface_hub.snapshot_download` fetches
  only the part asked for (the file, or the folder without weight formats latte-rs never reads) into the Hugging
  Face cache, honouring ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and the saved login, and
  reusing what is already cached.
- Without ``huggingface_hub`` (the ``hub`` extra: ``pip install 'latte-rs[hub]'``) an id is an ``ImportError``
  that says so; an id missing from the cache while offline is a ``FileNotFoundError`` naming the id and the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["is_hub_id", "resolve"]

# huggingface_hub's own rule for one part of a repo id (validate_repo_id): word characters, '-' and '.', not
# starting or ending with '-' or '.', at most 96 characters, no '--' or '..'.
_PART = re.compile(r"[\w][\w.-]{0,94}[\w]|[\w]")

# Weight formats latte-rs never reads from a folder (it reads safetensors there): skipped when a folder is
# fetched, as diffusers skips the formats it will not load. An explicitly named file is always fetched.
_UNREAD_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.gguf")

_INSTALL = "pip install 'latte-rs[hub]'"


def _parts(path: str | os.PathLike) -> list[str] | None:
    """The parts of ``path`` if it is spelled like a Hub id (``org/name`` and an optional path inside), else
    None."""
    text = os.fspath(path)
    if not isinstance(text, str) or "\\" in text or text.startswith(("/", "~", ".")) or "//" in text:
        return None
    parts = text.rstrip("/").split("/")
    if len(parts) < 2 or any(part in ("", ".", "..") for part in parts):
        return None
    repo = parts[:2]
    if not all(_PART.fullmatch(part) and "--" not in part and ".." not in part for part in repo):
        return None
    if repo[1].endswith(".git"):
        return None
    return parts


def is_hub_id(path: str | os.PathLike) -> bool:
    """Whether ``path`` would be looked up on the Hub: spelled ``org/name[/path/in/repo]`` and not a local path
    (nor under a local folder)."""
    parts = _parts(path)
    return parts is not None and not Path(parts[0]).exists()


def _join(base: Path, *parts: str | None) -> Path:
    for part in parts:
        if part:
            base = base / part
    return base


def resolve(path: str | os.PathLike, *, subfolder: str | None = None, revision: str | None = None,
            filename: str | None = None, arg: str = "path") -> Path:
    """The local path of ``path`` (a file, a folder or a Hub id), ``subfolder`` and ``filename`` below it.

    ``revision`` (a branch, tag or commit hash; default ``main``) applies to Hub ids only. ``arg`` is the name of
    the argument, for the error messages. A path that neither exists nor looks like a Hub id is returned as it is,
    for the loader to report as missing.
    """
    local = Path(path)
    if local.exists() or not is_hub_id(path):
        return _join(local, subfolder, filename)
    parts = _parts(path)
    assert parts is not None
    repo_id = "/".join(parts[:2])
    inner = "/".join(p.strip("/") for p in (*parts[2:], subfolder, filename) if p)
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(f"{arg}: {os.fspath(path)!r} is not a local file or folder; to read it as a Hugging Face "
                          f"Hub id, install huggingface_hub: {_INSTALL}") from None
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    allow = [inner, f"{inner}/*"] if inner else None
    ignore = [f"{inner}/{pattern}" if inner else pattern for pattern in _UNREAD_WEIGHTS]
    try:
        snapshot = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=allow,
                                                     ignore_patterns=ignore)
    except LocalEntryNotFoundError as e:
        offline = " with HF_HUB_OFFLINE set" if constants.HF_HUB_OFFLINE else " and the Hub could not be reached"
        raise FileNotFoundError(
            f"{arg}: {os.fspath(path)!r} is not a local file or folder, and the Hugging Face Hub repository {where} "
            f"is not in the cache {constants.HF_HUB_CACHE}{offline}") from e
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise FileNotFoundError(f"{arg}: {os.fspath(path)!r} is not a local file or folder, nor a Hugging Face "
                                f"Hub repository {where} that can be read ({type(e).__name__})") from e
    target = _join(Path(snapshot), inner)
    if not target.exists():
        raise FileNotFoundError(f"{arg}: the Hugging Face Hub repository {where} has no {inner!r} (looked in "
                                f"{snapshot}, in the cache {constants.HF_HUB_CACHE})")
    return target
