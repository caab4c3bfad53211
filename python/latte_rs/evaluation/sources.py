"""What one side of an FVD reads: arrays, iterables and datasets of clips, folders of videos or frame folders, and
``VideoClips`` datasets, each checked before any network work and streamed in batches; and the thread that reads
and decodes one batch ahead of the network.

Items that already are clips (exactly ``num_frames`` frames) are taken as they are; the protocol's stride and
random start apply where clips are cut from longer videos. Each plan records which it did in its notes.
"""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..data.video import VideoClips, frames_and_size, read_frames, scan, spatial_transform
from .settings import Protocol


def _cut(role: str, stride: int) -> str:
    """How clips are cut from longer videos, for the record."""
    start = "a random start" if role == "real" else "the first frame"
    return f"every {stride} from {start}"


AS_GIVEN = "as given (the items are clips of num_frames frames)"


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


class Plan(ABC):
    """What one side reads: a description, the number of clips, batches of clips, a fingerprint for caching."""

    description: str
    num: int
    fingerprint: str | None = None
    notes: dict[str, Any]

    @abstractmethod
    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, tuple[float, float]]]:
        """Batches of at most ``batch_size`` clips, each with its value range."""


class _ArrayPlan(Plan):
    def __init__(self, arr: np.ndarray, role: str, proto: Protocol, layout: str, arg: str) -> None:
        if arr.ndim != 5:
            raise ValueError(f"{arg}: expected clips of shape (N, F, H, W, 3) (layout {layout}), got {arr.shape}")
        self.arr = np.moveaxis(arr, 2, 4) if layout == "NFCHW" else arr
        _to_channels_last(self.arr[:1], "NFHWC", arg)
        n, frames = self.arr.shape[:2]
        stride = proto.real_stride if role == "real" else proto.fake_stride
        if frames == proto.num_frames:
            stride = 1  # already clips: nothing to cut
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
        self.notes = {"available": int(n), "frames": AS_GIVEN if frames == proto.num_frames else _cut(role, stride)}

    def batches(self, batch_size):
        for i in range(0, self.num, batch_size):
            idx, fr = self.index[i:i + batch_size], self.frames[i:i + batch_size]
            yield np.ascontiguousarray(self.arr[idx[:, None], fr]), self.value_range


def _fingerprint(root: Path, sources: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sources:
        st = p.stat()
        entries = len(os.listdir(p)) if p.is_dir() else st.st_size
        h.update(f"{os.path.relpath(p, root)}|{entries}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class _FolderPlan(Plan):
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
                total, size = frames_and_size(path)
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


class _StreamPlan(Plan):
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
        count = as_given = 0
        for clip in self._clips():
            if count == self.want:
                break
            clip = _to_channels_last(clip, self.layout, self.arg)
            if first is None:
                first = clip.shape[1:]
            elif clip.shape[1:] != first:
                raise ValueError(f"{self.arg}: mixed resolutions, clip {count} is {clip.shape[1:]}, the first "
                                 f"was {first}; pass clips of one size")
            if clip.shape[0] == self.proto.num_frames:
                as_given += 1  # already a clip: nothing to cut
            elif clip.shape[0] < span:
                raise ValueError(f"{self.arg}: clip {count} has {clip.shape[0]} frames, shorter than the "
                                 f"{self.proto.num_frames} frames every {self.stride} the protocol takes ({span}); "
                                 f"pass {self.role}_stride=1 if the clips are already subsampled")
            else:
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
        cut = count - as_given
        self.notes["frames"] = (AS_GIVEN if not cut else _cut(self.role, self.stride) if not as_given
                                else f"{as_given} {AS_GIVEN}; {cut} cut {_cut(self.role, self.stride)}")


def plan(source: Any, role: str, proto: Protocol, layout: str) -> Plan:
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


def prefetched(batches: Iterator, depth: int = 2) -> Iterator:
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
