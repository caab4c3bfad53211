"""Fréchet Video Distance with every knob of the protocol explicit and recorded.

The protocol is StyleGAN-V's, which Latte's evaluation uses (``tools/metrics/frechet_video_distance.py``):

- features: the 400-d pre-softmax logits of the TF-Hub ``i3d-kinetics-400`` network, averaged over time (the
  Rust ``latte_rs.I3D``, checked against the reference network to 1e-5);
- input: 16 frames per clip, RGB, resized to 224×224 by bilinear interpolation as PyTorch's
  ``interpolate(align_corners=False)`` (StyleGAN-V's ``resize=True``; no antialiasing), values mapped linearly
  from the declared range to [-1, 1];
- clips: 2048 real and 2048 generated. Where clips are cut from longer videos (folders, datasets of videos,
  arrays or iterables whose items have more than `num_frames` frames), real clips take `num_frames` frames every
  `real_stride` (3 for Latte, 6 for Taichi-HD) from a random start, one clip per video, videos drawn at random
  without replacement; videos too short for that are skipped (StyleGAN-V's ``discard_short_videos``). Generated
  clips take frames every `fake_stride` (1) from the first frame. Items that already are clips of `num_frames`
  frames are taken as they are;
- statistics in float64; covariance with ``ddof=0`` (StyleGAN-V's ``FeatureStats``; the original TF code uses
  1), and the Fréchet distance by symmetric eigen-decompositions (:mod:`latte_rs.evaluation.metrics`).

All randomness comes from `seed`. Sources may be arrays (NumPy or anything with ``__dlpack__``), iterables of
clips or batches (generators, DataLoaders), sequences (datasets), folders of videos / frame folders, our
``VideoClips`` datasets (their files and spatial transform, the protocol's frame sampling), or statistics saved
before (``FeatureStats`` or its ``.npz``). Everything is streamed in batches, so memory does not grow with the
number of clips; input is checked before any network work. Statistics of a real folder are cached in
``cache_dir()/fvd`` under a key made of the protocol and the folder's file list, sizes and times.

>>> import numpy as np
>>> from latte_rs.evaluation import fvd
>>> real = np.random.default_rng(0).integers(0, 256, (3, 16, 32, 32, 3), dtype=np.uint8)
>>> fake = real // 2   # darker copies
>>> result = fvd(real, fake, num_clips=3, progress=False)   # 16-frame arrays are clips already
>>> result.fvd > 10, result.protocol["num_frames"], result.real["num_clips"]
(True, 16, 3)
>>> result.real["frames"]
'as given (the items are clips of num_frames frames)'
>>> fvd(real, real, num_clips=3, progress=False).fvd < 1e-6
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from .._files import atomic_write
from .._inputs import load_json, open_regular
from . import sources
from .metrics import RunningStats, frechet_distance
from .settings import Protocol
from .sources import Plan
from .weights import cache_dir, load_i3d

FEATURES = 400
Layout = Literal["NFHWC", "NFCHW"]


@dataclasses.dataclass
class FeatureStats:
    """Mean and covariance of the I3D features of one set, with how they were made."""

    mean: np.ndarray
    cov: np.ndarray
    count: int
    info: dict[str, Any]

    def save(self, path: str | os.PathLike) -> Path:
        """Writes an ``.npz`` atomically (a temporary file, then a rename)."""
        path = Path(path)
        atomic_write(path, lambda tmp: np.savez(tmp, mean=self.mean, cov=self.cov, count=np.int64(self.count),
                                                info=np.array(json.dumps(self.info))))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Statistics saved by :meth:`save`; ValueError naming the file for anything else (a damaged zip, missing
        or mis-shaped arrays, an info record that is not a JSON object)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"stats: no such file {path}")
        try:
            with open_regular(path) as f, np.load(f, allow_pickle=False) as z:
                mean, cov = np.asarray(z["mean"], np.float64), np.asarray(z["cov"], np.float64)
                count, info = z["count"], load_json(str(z["info"]), "its info")
                if count.shape != () or count.dtype.kind not in "iu" or not isinstance(info, dict):
                    raise ValueError(f"count {count!r} and info {type(info).__name__}: expected an int and an object")
        except Exception as e:  # noqa: BLE001 - zipfile's BadZipFile, zlib.error, EOFError, KeyError, ...
            raise ValueError(f"{path}: not a feature-statistics file ({type(e).__name__}: {e})") from None
        if mean.shape != (FEATURES,) or cov.shape != (FEATURES, FEATURES):
            raise ValueError(f"{path}: expected mean ({FEATURES},) and cov ({FEATURES}, {FEATURES}), got "
                             f"{mean.shape} and {cov.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise ValueError(f"{path}: not a feature-statistics file (non-finite mean or covariance)")
        return cls(mean, cov, int(count), info)


@dataclasses.dataclass
class FVDResult:
    """An FVD value with the protocol and what each side was made of."""

    fvd: float
    protocol: dict[str, Any]
    real: dict[str, Any]
    fake: dict[str, Any]
    seconds: float

    def __float__(self) -> float:
        return self.fvd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


# --- statistics -----------------------------------------------------------------------------------------------------


def _stats_from(source: Any, arg: str) -> FeatureStats | None:
    if isinstance(source, FeatureStats):
        return source
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".npz"):
        try:
            return FeatureStats.load(source)
        except ValueError as e:
            raise ValueError(f"{arg}: {e}") from None
    return None


def _compute(plan: Plan, proto: Protocol, role: str, i3d, batch_size: int, progress: bool) -> FeatureStats:
    stats = RunningStats(FEATURES)
    with tqdm(total=plan.num, unit="clip", desc=f"FVD {role}", disable=not progress) as bar:
        for clips, value_range in sources.prefetched(plan.batches(batch_size)):
            stats.update(i3d.features(clips, value_range=value_range))
            bar.update(len(clips))
    mean, cov = stats.mean_cov(ddof=proto.ddof)
    info = {"protocol": proto.side(role), "source": plan.description, "num_clips": stats.count, **plan.notes}
    return FeatureStats(mean, cov, stats.count, info)


def _prepare(source: Any, role: str, proto: Protocol, layout: str, cache: bool
             ) -> tuple[FeatureStats | Plan, Path | None]:
    """Saved or cached statistics, or a checked plan of what to read and where to cache its statistics."""
    stats = _stats_from(source, role)
    if stats is not None:
        _check_compatible(stats, proto, role)
        return stats, None
    plan = sources.plan(source, role, proto, layout)
    if not (cache and role == "real" and plan.fingerprint is not None):
        return plan, None
    key = hashlib.sha256(json.dumps({"protocol": proto.side(role), "data": plan.fingerprint},
                                    sort_keys=True, default=str).encode()).hexdigest()
    cache_file = cache_dir() / "fvd" / f"real-{key[:32]}.npz"
    if cache_file.is_file():
        try:
            stats = FeatureStats.load(cache_file)
            stats.info["cached"] = str(cache_file)
            return stats, None
        except ValueError:
            pass  # a damaged cache entry is recomputed and replaced
    return plan, cache_file


def _finish(prepared: FeatureStats | Plan, cache_file: Path | None, proto: Protocol, role: str, i3d,
            batch_size: int, progress: bool) -> FeatureStats:
    if isinstance(prepared, FeatureStats):
        return prepared
    stats = _compute(prepared, proto, role, i3d, batch_size, progress)
    if cache_file is not None:
        stats.save(cache_file)
        stats.info["cache_file"] = str(cache_file)
    return stats


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")


def feature_stats(source: Any, *, role: Literal["real", "fake"] = "real", protocol: Protocol | None = None,
                  layout: Layout = "NFHWC", batch_size: int = 8, cache: bool = True, i3d=None,
                  weights: str | os.PathLike | None = None, progress: bool = True) -> FeatureStats:
    """I3D feature statistics of one set under `protocol` (default: the standard one), to save and reuse as
    either argument of :func:`fvd`. Statistics of a real folder or dataset are cached unless ``cache=False``.
    """
    if role not in ("real", "fake"):
        raise ValueError(f"role: expected 'real' or 'fake', got {role!r}")
    _check_batch_size(batch_size)
    proto = protocol or Protocol()
    prepared, cache_file = _prepare(source, role, proto, layout, cache)
    if isinstance(prepared, Plan) and i3d is None:
        i3d = load_i3d(weights, progress=progress)
    return _finish(prepared, cache_file, proto, role, i3d, batch_size, progress)


def _check_compatible(stats: FeatureStats, proto: Protocol, role: str) -> None:
    saved = stats.info.get("protocol", {})
    mine = proto.side(role)
    for key in ("num_frames", "ddof", "network"):
        if key in saved and saved[key] != mine[key]:
            raise ValueError(f"{role}: saved statistics were made with {key}={saved[key]!r}, the protocol asks "
                             f"for {mine[key]!r}")


def fvd(real: Any, fake: Any, *, num_clips: int | None = None, num_real: int = 2048, num_fake: int = 2048,
        num_frames: int = 16, real_stride: int = 3, fake_stride: int = 1, image_size: int | None = None,
        value_range: tuple[float, float] | None = None, seed: int = 0, ddof: int = 0, layout: Layout = "NFHWC",
        batch_size: int = 8, cache: bool = True, weights: str | os.PathLike | None = None,
        progress: bool = True) -> FVDResult:
    """Fréchet Video Distance between a real and a generated set (see the module docs for the protocol).

    Args:
        real, fake: arrays ``(N, F, H, W, 3)`` (uint8, or float with `value_range`), iterables of clips or
            batches, datasets, folders of videos / frame folders, ``VideoClips`` datasets, or saved statistics
            (``FeatureStats`` or an ``.npz`` path).
        num_clips: sets both `num_real` and `num_fake`.
        num_real, num_fake: clips per set (2048); fewer are used, with a warning, when a folder has fewer.
        num_frames: frames per clip (16).
        real_stride, fake_stride: frame stride within a clip cut from a longer video (3 and 1 for Latte; 6 and 1
            for Taichi-HD); items that already have `num_frames` frames are taken as they are, and the result's
            per-side ``frames`` entry says which was done.
        image_size: centre-crop to a square and resize frames of folders to this size first (Latte's
            "center-crop-resize-256" preparation); None uses frames as they are (one resolution per set).
        value_range: the range of float clips (uint8 means (0, 255)).
        seed: the draw of videos and clip starts.
        ddof: covariance normalisation: 0 (StyleGAN-V, Latte) or 1 (the original TF FVD).
        layout: "NFHWC" (channels last) or "NFCHW" (channels first, as the VAE decodes) for arrays and iterables.
        batch_size: clips per network call.
        cache: cache the statistics of a real folder or dataset.
        weights: converted I3D weights (default: the cache, fetched on first use).
        progress: progress bars.

    Both sides are checked (shapes, lengths, value ranges, readable sources) before any network work; the
    result records the protocol and, per side, the source, the number of clips and whether a cache was used.
    """
    start = time.perf_counter()
    _check_batch_size(batch_size)
    if num_clips is not None:
        num_real = num_fake = num_clips
    proto = Protocol(num_real=num_real, num_fake=num_fake, num_frames=num_frames, real_stride=real_stride,
                     fake_stride=fake_stride, image_size=image_size, value_range=value_range, seed=seed, ddof=ddof)
    prepared = {role: _prepare(source, role, proto, layout, cache)
                for role, source in (("real", real), ("fake", fake))}
    i3d = None
    if any(isinstance(p, Plan) for p, _ in prepared.values()):
        i3d = load_i3d(weights, progress=progress)
    stats = {role: _finish(p, f, proto, role, i3d, batch_size, progress) for role, (p, f) in prepared.items()}
    value = frechet_distance(stats["real"].mean, stats["real"].cov, stats["fake"].mean, stats["fake"].cov)
    return FVDResult(value, proto.to_dict(), stats["real"].info, stats["fake"].info, time.perf_counter() - start)
