"""Clips from folders of video files or of frame images, sampled and transformed as the official Latte datasets.

Decoding is PyAV (``pip install av``); a file is opened only when one of its clips is asked for, so the datasets
can be handed to a ``torch.utils.data.DataLoader`` with ``num_workers > 0``. A clip is ``(F, 3, S, S)`` float32
in [-1, 1] and comes with an int label.

The pipeline, for one clip (the official ``datasets/*.py`` and ``video_transforms.py``):

1. temporal crop: a window of ``num_frames * frame_interval`` frames starting at
   ``randint(0, max(0, total - window - 1))`` (``TemporalRandomCrop``);
2. frame indices in the window: ``linspace(start, end - 1, num_frames)`` floored (video files), or every
   ``frame_interval``-th frame (frame folders, as the official SkyTimelapse and Taichi-HD loaders);
3. ``/ 255``, then the spatial transform: ``"resize_crop"`` scales the short side to ``image_size`` (bilinear,
   ``align_corners=False``, PyTorch's ``interpolate(scale_factor=...)`` arithmetic) and centre-crops
   (``UCFCenterCropVideo``); ``"crop_resize"`` centre-crops the short side and resizes to ``image_size``
   (``CenterCropResizeVideo``); ``"none"`` keeps the frames;
4. horizontal flip with probability 1/2 when ``random_flip``; then ``(x - 0.5) / 0.5``.

Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``: a clip depends only on those three,
whichever process or worker reads it. Call ``set_epoch`` to draw new crops each epoch.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .._inputs import check_int, check_pixels, open_regular, read_text, regular_file_error

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Resize = Literal["resize_crop", "crop_resize", "none"]


def _frame_key(name: str) -> tuple:
    """Frames sort by the last integer in their name (``frame_12.jpg`` after ``frame_9.jpg``), then by name."""
    numbers = re.findall(r"\d+", Path(name).stem)
    return (int(numbers[-1]) if numbers else -1, name)


def scan(root: str | os.PathLike, companions: tuple[str, ...] = ()) -> tuple[list[Path], int]:
    """Video files and frame folders under `root` (recursive, sorted), and how many other entries were ignored:
    files that are neither videos nor frames, and videos that are not regular files (a named pipe called
    ``clip.mp4`` would be waited on forever), each kind reported in one warning that names the first few. Files
    ending in one of `companions` (e.g. ``(".txt",)`` for captions beside the videos) belong with the videos: they
    are neither returned nor reported. (Frames are checked when read: a folder holding a frame that is not a
    regular file is reported and skipped then.)"""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: no such directory {root}")
    items: list[Path] = []
    ignored: list[str] = []
    irregular: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        images = [f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
        if images:
            items.append(Path(dirpath))
        for f in sorted(filenames):
            if f.lower().endswith(VIDEO_EXTENSIONS):
                path = Path(dirpath) / f
                why = regular_file_error(path)
                if why is None:
                    items.append(path)
                else:
                    irregular.append(f"{path} ({why})")
            elif not f.lower().endswith(IMAGE_EXTENSIONS + tuple(companions)):
                ignored.append(os.path.join(dirpath, f))
    for found, what in ((ignored, "files that are neither videos nor frames"),
                        (irregular, "videos that cannot be read")):
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            warnings.warn(f"ignoring {len(found)} {what}: {shown}", stacklevel=3)
    return sorted(items), len(ignored) + len(irregular)


def temporal_window(total: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """The official ``TemporalRandomCrop``: (begin, end) of a window of `size` frames."""
    begin = int(rng.integers(0, max(0, total - size - 1) + 1))
    return begin, min(begin + size, total)


def frame_indices(total: int, num_frames: int, frame_interval: int, rng: np.random.Generator,
                  sampling: Literal["linspace", "stride"] = "linspace") -> np.ndarray:
    """The frames one clip takes from a video of `total` frames (see the module docs). Raises ValueError when the
    video is too short."""
    begin, end = temporal_window(total, num_frames * frame_interval, rng)
    if end - begin < num_frames:
        raise ValueError(f"{total} frames, fewer than the {num_frames} a clip needs")
    if sampling == "linspace":
        return np.linspace(begin, end - 1, num_frames, dtype=int)
    idx = np.arange(begin, end, frame_interval)[:num_frames]
    if len(idx) < num_frames:
        raise ValueError(f"{total} frames, too few for {num_frames} frames every {frame_interval}")
    return idx


def _bilinear_axis(in_size: int, out_size: int, scale: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear interpolation along one axis (align_corners=False).
    `scale` is the scale factor (output/input) when one was given to ``interpolate``, or None when a size was:
    PyTorch then maps with ``in / out``, else with ``1 / scale``, in float32 (``(i + 0.5) · s − 0.5``), which is
    reproduced here to the bit: a coordinate off by 1e-5 pixel shows on noisy frames."""
    s = np.float32(in_size) / np.float32(out_size) if scale is None else np.float32(1.0 / scale)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(s * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


def resize_bilinear(clip: np.ndarray, out_hw: tuple[int, int], scale_hw: tuple[float | None, float | None],
                    window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Bilinear resize of (F, C, H, W) as ``torch.nn.functional.interpolate(..., align_corners=False)`` to
    `out_hw`, returning only the output rows/columns ``window = (top, height, left, width)`` (default: all), so a
    resize followed by a crop computes only what the crop keeps. Any numeric dtype in, float32 out."""
    _, _, h, w = clip.shape
    y0, y1, ly = _bilinear_axis(h, out_hw[0], scale_hw[0])
    x0, x1, lx = _bilinear_axis(w, out_hw[1], scale_hw[1])
    if window is not None:
        top, height, left, width = window
        y0, y1, ly = y0[top:top + height], y1[top:top + height], ly[top:top + height]
        x0, x1, lx = x0[left:left + width], x1[left:left + width], lx[left:left + width]
    ly, lx = ly[:, None], lx[None, :]
    rows0, rows1 = clip[:, :, y0].astype(np.float32), clip[:, :, y1].astype(np.float32)
    top_ = rows0[..., x0] * (1 - lx) + rows0[..., x1] * lx
    bottom = rows1[..., x0] * (1 - lx) + rows1[..., x1] * lx
    return (top_ * (1 - ly) + bottom * ly).astype(np.float32)


def _center_crop(clip: np.ndarray, th: int, tw: int) -> np.ndarray:
    h, w = clip.shape[-2:]
    i, j = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return clip[..., i:i + th, j:j + tw]


def spatial_transform(clip: np.ndarray, image_size: int, resize: Resize) -> np.ndarray:
    """The official spatial transforms on (F, C, H, W) frames (any dtype; float32 out, same value scale)."""
    h, w = clip.shape[-2:]
    if resize == "resize_crop":  # UCFCenterCropVideo: interpolate(scale_factor=size / short side), centre crop
        scale = image_size / min(h, w)
        out = (int(math.floor(h * scale)), int(math.floor(w * scale)))
        i, j = int(round((out[0] - image_size) / 2.0)), int(round((out[1] - image_size) / 2.0))
        return resize_bilinear(clip, out, (scale, scale), (i, image_size, j, image_size))
    if resize == "crop_resize":  # CenterCropResizeVideo: centre square of the short side, interpolate(size=...)
        side = min(h, w)
        square = _center_crop(clip, side, side)
        return resize_bilinear(square, (image_size, image_size), (None, None))
    if resize == "none":
        return clip.astype(np.float32)
    raise ValueError(f"resize: expected 'resize_crop', 'crop_resize' or 'none', got {resize!r}")


#: The process this module was imported in: a DataLoader worker forked from it (Linux's default) has another pid.
_IMPORT_PID = os.getpid()


def _forked() -> bool:
    """Whether this is a process forked from the one that imported the module (a DataLoader worker). FFmpeg's
    thread pools do not survive a fork: in such a worker, swscale's slice threads (`to_ndarray`'s conversion)
    hung the local CI run (the worker waiting in `avpriv_slicethread_execute`), so forked workers decode and
    convert on the calling thread; they run in parallel anyway."""
    return os.getpid() != _IMPORT_PID


@contextmanager
def _video_stream(path: Path):
    """The first video stream of a file, opened with PyAV if it is a regular file; every decoder error, in opening
    or in the caller's decoding, becomes ValueError (the loaders' report-skip-replace path)."""
    import av

    try:
        with open_regular(path) as f, av.open(f) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            check_pixels(stream.codec_context.width, stream.codec_context.height)
            # Frame- and slice-threaded decoding where the codec allows; on the calling thread in a forked worker.
            stream.thread_type = "NONE" if _forked() else "AUTO"
            yield container, stream
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode ({e})") from None
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a decoder's MemoryError, OverflowError, ... on a damaged file
        raise ValueError(f"cannot decode ({type(e).__name__}: {e})") from None


def _frame_files(path: Path) -> list[str]:
    return sorted((f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)), key=_frame_key)


Pick = Callable[[int], Sequence[int]]


def read_frames(path: Path, pick: Sequence[int] | Pick | None = None) -> tuple[np.ndarray, list[int]]:
    """Frames of a video file or frame folder as (n, H, W, 3) uint8, opening the source once, and their indices.
    `pick` is the indices, or a function from the source's frame count to the indices (all frames when None).
    Raises ValueError for an unreadable or empty source."""

    def resolve(total: int) -> list[int]:
        if total == 0:
            raise ValueError("no frames")
        if pick is None:
            return list(range(total))
        return [int(i) for i in (pick(total) if callable(pick) else pick)]

    if path.is_dir():
        files = _frame_files(path)
        idx = resolve(len(files))
        return np.stack([_read_image(path / files[i]) for i in idx]), idx
    frames: dict[int, np.ndarray] = {}
    with _video_stream(path) as (container, stream):
        # With the frame count in the header, decode only up to the last frame wanted; else decode everything.
        idx = resolve(int(stream.frames)) if stream.frames else None
        wanted = None if idx is None else set(idx)
        for i, frame in enumerate(container.decode(stream)):
            if wanted is None or i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24", threads=1 if _forked() else None)
            if wanted is not None and i >= max(wanted):
                break
    if idx is None:
        idx = resolve(len(frames))
    missing = [i for i in idx if i not in frames]
    if missing:
        raise ValueError(f"frames {missing[:3]} could not be decoded")
    return np.stack([frames[i] for i in idx]), idx


@contextmanager
def _image(path: Path):
    """An image opened with Pillow if it is a regular file of at most MAX_FRAME_PIXELS pixels (checked from its
    header); every decoder error, in opening or in the caller's decoding, becomes ValueError naming the image."""
    with open_regular(path) as f:
        try:
            with Image.open(f) as im:
                check_pixels(im.width, im.height)
                yield im
        except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, zlib.error, DecompressionBomb...
            raise ValueError(f"cannot decode {path.name} ({type(e).__name__}: {e})") from None


def _read_image(path: Path) -> np.ndarray:
    with _image(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _stream_length(container, stream) -> int:
    """Frames of an open video stream: from the container when it says, else by decoding."""
    return int(stream.frames) if stream.frames else sum(1 for _ in container.decode(stream))


def frames_and_size(path: Path) -> tuple[int, tuple[int, int]]:
    """Frame count and (height, width) of a video file or frame folder, from headers where possible."""
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise ValueError("no frames")
        with _image(path / files[0]) as im:
            return len(files), (im.height, im.width)
    with _video_stream(path) as (container, stream):
        return _stream_length(container, stream), (stream.codec_context.height, stream.codec_context.width)


def frame_count(path: Path) -> int:
    """Frames in a video file (from the container when it says, else by decoding) or a frame folder."""
    if path.is_dir():
        return len(_frame_files(path))
    with _video_stream(path) as (container, stream):
        return _stream_length(container, stream)


class VideoClips:
    """Clips from every video file and frame folder under `root`, as the official Latte datasets sample them.

    Args:
        root: folder searched recursively for video files (mp4, avi, webm, mkv, ...) and frame folders.
        num_frames: frames per clip (16).
        frame_interval: temporal stride (3 for Latte; the window is num_frames × frame_interval frames).
        image_size: output height and width (256).
        resize: "resize_crop" (short side to image_size, centre crop), "crop_resize" (centre square, resize) or
            "none".
        random_flip: flip horizontally with probability 1/2.
        sampling: "linspace" (video files, as UCF-101/FaceForensics) or "stride" (as the frame-folder datasets);
            default: linspace for files, stride for frame folders.
        labels: "folder" (the parent folder's index among the sorted class folders, as torchvision's
            ``find_classes`` and the official UCF-101 loader) or None (label 0 for every clip).
        seed: seed of the temporal crops and flips.
        use_image_num: image-video joint clips (the official ``*_img`` datasets): append this many single frames,
            each from a random other source, with the same transform and flip; items are then the official dict
            ``{"video": (F + n, 3, S, S), "video_name": label, "image_labels": (n,)}``.

    A source that cannot be decoded or is too short is reported once with a warning and replaced by the next good
    one, so an epoch never stops in the middle; ``bad`` lists them with the reason.

    >>> ds = VideoClips("videos/", num_frames=16, frame_interval=3, image_size=256)  # doctest: +SKIP
    >>> clip, label = ds[0]  # (16, 3, 256, 256) float32 in [-1, 1]  # doctest: +SKIP
    """

    _source_arg = "root"  # the argument named in errors about the sources (CaptionedVideos: "source")

    def __init__(
        self,
        root: str | os.PathLike,
        num_frames: int = 16,
        frame_interval: int = 3,
        image_size: int = 256,
        *,
        resize: Resize = "resize_crop",
        random_flip: bool = True,
        sampling: Literal["linspace", "stride"] | None = None,
        labels: Literal["folder"] | None = "folder",
        seed: int = 0,
        sources: Sequence[str | os.PathLike] | None = None,
        use_image_num: int = 0,
    ) -> None:
        for name, value in (("num_frames", num_frames), ("frame_interval", frame_interval), ("image_size", image_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if resize not in ("resize_crop", "crop_resize", "none"):
            raise ValueError(f"resize: expected 'resize_crop', 'crop_resize' or 'none', got {resize!r}")
        if sampling not in (None, "linspace", "stride"):
            raise ValueError(f"sampling: expected 'linspace', 'stride' or None, got {sampling!r}")
        if not isinstance(use_image_num, (int, np.integer)) or use_image_num < 0:
            raise ValueError(f"use_image_num: expected an int >= 0, got {use_image_num!r}")
        self.use_image_num = int(use_image_num)
        self.seed = check_int("seed", seed, 0)
        if labels not in ("folder", None):
            raise ValueError(f"labels: expected 'folder' or None, got {labels!r}")
        self.root = Path(root)
        if sources is None:
            self.sources, self.ignored_files = scan(self.root)
        else:
            self.sources, self.ignored_files = [Path(s) for s in sources], 0
        if not self.sources:
            raise FileNotFoundError(f"root: no video files or frame folders under {self.root}")
        self.num_frames, self.frame_interval, self.image_size = int(num_frames), int(frame_interval), int(image_size)
        self.resize, self.random_flip, self.sampling = resize, random_flip, sampling
        self.classes = sorted({p.parent.name for p in self.sources}) if labels == "folder" else []
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.epoch = 0
        self.bad: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.sources)

    def set_epoch(self, epoch: int) -> None:
        """New temporal crops and flips for another epoch (an int >= 0)."""
        self.epoch = check_int("epoch", epoch, 0)

    def label(self, index: int) -> int:
        return self.class_to_idx.get(self.sources[index].parent.name, 0) if self.classes else 0

    def _sampler(self, index: int) -> tuple[np.random.Generator, Pick]:
        """Clip `index`'s generator and its frame-index function of the source's frame count. The generator
        draws the indices first, then the flip."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sampling = self.sampling or ("stride" if self.sources[index].is_dir() else "linspace")
        return rng, lambda total: frame_indices(total, self.num_frames, self.frame_interval, rng, sampling)

    def _flip(self, rng: np.random.Generator) -> bool:
        return bool(self.random_flip and rng.random() < 0.5)

    def clip_indices(self, index: int) -> tuple[Path, np.ndarray, bool]:
        """The source, the frame indices and the flip of clip `index` (raises ValueError for a bad source)."""
        path = self.sources[index]
        rng, pick = self._sampler(index)
        idx = np.asarray(pick(frame_count(path)))
        return path, idx, self._flip(rng)

    def load(self, index: int) -> tuple[np.ndarray, int] | dict:
        """Clip `index`, raising ValueError when its source is bad (``__getitem__`` substitutes instead)."""
        rng, pick = self._sampler(index)
        frames, _ = read_frames(self.sources[index], pick)
        flip = self._flip(rng)
        if self.use_image_num:
            return self._joint(index, frames, flip)
        return self._transform(frames, flip), self.label(index)

    def _transform(self, frames: np.ndarray, flip: bool) -> np.ndarray:
        """(n, H, W, 3) uint8 → (n, 3, S, S) float32 in [-1, 1]. Resizing is linear, so it runs on the 0-255
        values (only the pixels the crop keeps), then scales."""
        clip = spatial_transform(frames.transpose(0, 3, 1, 2), self.image_size, self.resize) * np.float32(1 / 255)
        if flip:
            clip = clip[..., ::-1]
        return np.ascontiguousarray((clip - 0.5) / 0.5, dtype=np.float32)

    def _image_frames(self, index: int, flip: bool) -> tuple[np.ndarray, list[int]]:
        """The ``use_image_num`` single frames clip `index` appends, (n, 3, S, S), and the sources they come
        from: each a random frame of a random other good source, drawn from ``[seed, epoch, index, 1]``."""
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        n = len(self)

        def candidates():
            # n random draws; past as many misses (bad sources), every source in a random order, so that bad files
            # never make a good clip fail (its own source is among them).
            for _ in range(n):
                yield int(rng.integers(n))
            yield from (int(i) for i in rng.permutation(n))

        images, others = [], []
        for _ in range(self.use_image_num):
            for other in candidates():
                if str(self.sources[other]) in self.bad:
                    continue
                try:
                    image, _ = read_frames(self.sources[other], lambda total: [int(rng.integers(total))])
                except (ValueError, OSError) as e:
                    self.bad[str(self.sources[other])] = str(e)
                    warnings.warn(f"skipping {self.sources[other]}: {e}", stacklevel=4)
                    continue
                images.append(self._transform(image, flip)[0])
                others.append(other)
                break
            else:
                raise ValueError("no readable source for the image frames")
        return np.stack(images), others

    def _joint(self, index: int, frames: np.ndarray, flip: bool) -> dict:
        images, others = self._image_frames(index, flip)
        video = np.concatenate([self._transform(frames, flip), images], axis=0)
        image_labels = np.asarray([self.label(other) for other in others], np.int64)
        return {"video": video, "video_name": self.label(index), "image_labels": image_labels}

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} clips")
        index %= n
        for k in range(n):
            i = (index + k) % n
            key = str(self.sources[i])
            if key in self.bad:
                continue
            try:
                return self.load(i)
            except (ValueError, OSError) as e:
                self.bad[key] = str(e)
                warnings.warn(f"skipping {key}: {e}", stacklevel=2)
        raise ValueError(f"{self._source_arg}: none of the {n} sources under {self.root} gives a clip; "
                         f"reasons: {self.bad}")

    def __repr__(self) -> str:
        return (f"VideoClips({str(self.root)!r}, clips={len(self)}, num_frames={self.num_frames}, "
                f"frame_interval={self.frame_interval}, image_size={self.image_size}, resize={self.resize!r})")


def find_classes(root: str | os.PathLike) -> list[str]:
    """Class folders directly under `root`, sorted as Python sorts them (torchvision's and the official
    ``find_classes``: the class indices the official UCF-101 checkpoints expect)."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"root: no class folders in {root}")
    return classes


def _split_sources(root: Path, split_file: str | os.PathLike) -> list[Path]:
    """Videos listed in an official UCF-101 split file (``trainlist01.txt``: ``Class/v_name.avi [label]``)."""
    path = Path(split_file)
    if not path.exists():
        raise FileNotFoundError(f"split_file: no such file {path}")
    try:
        text = read_text(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"split_file: cannot read {path} ({e})") from None
    sources = []
    for line in text.splitlines():
        if line.strip():
            sources.append(root / line.split()[0])
    if not sources:
        raise ValueError(f"split_file: {path} lists no videos")
    return sources


class UCF101(VideoClips):
    """UCF-101 as the official loader: ``root/<Class>/<video>.avi``, labels by the sorted class folders (0-100),
    short side to ``image_size`` and centre crop, random flip, linspace sampling. ``split_file``: an official
    ``trainlist0N.txt`` / ``testlist0N.txt`` to keep only its videos."""

    def __init__(self, root: str | os.PathLike, num_frames: int = 16, frame_interval: int = 3,
                 image_size: int = 256, *, split_file: str | os.PathLike | None = None, random_flip: bool = True,
                 seed: int = 0, use_image_num: int = 0) -> None:
        root = Path(root)
        classes = find_classes(root) if root.is_dir() else None
        sources = _split_sources(root, split_file) if split_file is not None else None
        super().__init__(root, num_frames, frame_interval, image_size, resize="resize_crop",
                         random_flip=random_flip, sampling="linspace", labels="folder", seed=seed, sources=sources,
                         use_image_num=use_image_num)
        self.classes = classes or []
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class FaceForensics(VideoClips):
    """FaceForensics as the official loader: every video under ``root``, short side to ``image_size`` and centre
    crop, random flip, linspace sampling; unconditional (label 0)."""

    def __init__(self, root: str | os.PathLike, num_frames: int = 16, frame_interval: int = 3,
                 image_size: int = 256, *, random_flip: bool = True, seed: int = 0, use_image_num: int = 0) -> None:
        super().__init__(root, num_frames, frame_interval, image_size, resize="resize_crop",
                         random_flip=random_flip, sampling="linspace", labels=None, seed=seed,
                         use_image_num=use_image_num)


class SkyTimelapse(VideoClips):
    """SkyTimelapse as the official loader: frame folders under ``root``, centre square then resize to
    ``image_size``, no flip, every ``frame_interval``-th frame; unconditional."""

    def __init__(self, root: str | os.PathLike, num_frames: int = 16, frame_interval: int = 3,
                 image_size: int = 256, *, seed: int = 0, use_image_num: int = 0) -> None:
        super().__init__(root, num_frames, frame_interval, image_size, resize="crop_resize", random_flip=False,
                         sampling="stride", labels=None, seed=seed, use_image_num=use_image_num)


class TaichiHD(VideoClips):
    """Taichi-HD as the official loader: frame folders (already 256×256) under ``root``, no resizing, random flip,
    every ``frame_interval``-th frame; unconditional. (Centre square and resize, which leaves 256×256 frames
    exactly as they are and brings other sizes to ``image_size``.)"""

    def __init__(self, root: str | os.PathLike, num_frames: int = 16, frame_interval: int = 3,
                 image_size: int = 256, *, random_flip: bool = True, seed: int = 0, use_image_num: int = 0) -> None:
        super().__init__(root, num_frames, frame_interval, image_size, resize="crop_resize",
                         random_flip=random_flip, sampling="stride", labels=None, seed=seed,
                         use_image_num=use_image_num)
