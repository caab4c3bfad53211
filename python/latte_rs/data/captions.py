"""Captioned videos: clips with the text that describes them, for text-to-video training (Latte-1).

Two layouts, the ones captioned video sets ship in:

- a folder: every video file and frame folder under it (as :func:`~latte_rs.data.video.scan` finds them) with its
  caption in a same-named ``.txt`` file beside it: ``clip.mp4`` + ``clip.txt``, ``frames/`` + ``frames.txt``;
- a manifest: a CSV (``.csv``), a JSON list (``.json``) or JSON lines (``.jsonl``) of rows holding a path and a
  caption. The columns are found by name: the path in ``path``, ``video``, ``video_path``, ``file`` or
  ``filename`` (Open-Sora's ``path``), or WebVid's ``page_dir`` + ``videoid`` (the file
  ``{page_dir}/{videoid}.mp4``); the caption in ``caption``, ``text`` (Open-Sora), ``name`` (WebVid) or
  ``prompt``. ``path_key`` / ``caption_key`` pick other columns. Relative paths are read from ``video_root``
  (default: the manifest's folder).

Clips are sampled and transformed exactly as :class:`~latte_rs.data.VideoClips` does (same seeds, same crops).
An item is the official dict ``{"video": (F, 3, S, S) float32 in [-1, 1], "caption": str, "video_name": 0}``;
with ``use_image_num = n`` the video has ``F + n`` frames and ``"image_captions"`` lists the captions of the n
sources the image frames come from.

Sources that cannot be used are found when the dataset is made (a missing video, a missing ``.txt``, an empty
caption, a manifest row without a path or caption), reported in one warning and left out; ``bad`` records each
(its path, or ``row N`` for manifest rows, N counted from 1 in file order, the CSV header not counted) with the
reason. Videos that turn out unreadable or too short when read are handled as ``VideoClips`` handles them: warned
about once, recorded in ``bad``, replaced by the next good source.

>>> ds = CaptionedVideos("webvid/results_2M_train.csv", video_root="webvid/videos")  # doctest: +SKIP
>>> item = ds[0]  # doctest: +SKIP
>>> item["video"].shape, item["caption"]  # doctest: +SKIP
((16, 3, 256, 256), 'Aerial shot of a winter forest')
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._inputs import load_json, read_text, regular_file_error, text_stream
from .video import Resize, VideoClips, scan

#: Columns read as the video's path, in this order of preference.
PATH_KEYS = ("path", "video", "video_path", "file", "filename")
#: Columns read as the caption, in this order of preference (``name`` is WebVid's caption column).
CAPTION_KEYS = ("caption", "text", "name", "prompt")
#: WebVid's columns that make the path ``{page_dir}/{videoid}.mp4``.
WEBVID_KEYS = ("page_dir", "videoid")
MANIFEST_SUFFIXES = (".csv", ".json", ".jsonl")


def caption_file(source: Path) -> Path:
    """The ``.txt`` caption beside a video file (``clip.mp4`` → ``clip.txt``) or frame folder (``frames/`` →
    ``frames.txt``)."""
    return source.parent / f"{source.name if source.is_dir() else source.stem}.txt"


def _shown(bad: Mapping[str, str], limit: int = 5) -> str:
    shown = "; ".join(f"{key}: {reason}" for key, reason in list(bad.items())[:limit])
    return shown + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")


def _csv_rows(path: Path) -> tuple[list[Any], list[str]]:
    """The rows of a CSV manifest and its header. A row the csv module cannot read (a field past its size limit, a
    NUL byte) becomes a string, reported as a bad row by the caller; the rows after it are still read."""
    with text_stream(path) as f:
        reader = csv.DictReader(f)
        try:
            columns = [c for c in (reader.fieldnames or []) if c is not None]
        except csv.Error as e:
            raise ValueError(f"source: {path} is not a readable CSV ({e})") from None
        rows: list[Any] = []
        while True:
            try:
                rows.append(next(reader))
            except StopIteration:
                return rows, columns
            except csv.Error as e:
                rows.append(f"not a CSV row ({e})")


def _read_rows(path: Path) -> tuple[list[Any], list[str]]:
    """The rows of a manifest and its columns (the CSV header, or every key of the JSON rows in first-seen
    order). CSV rows and JSON lines that do not parse become strings, reported as bad rows by the caller."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _csv_rows(path)
        text = read_text(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"source: {path} is not UTF-8 text ({e})") from None
    if suffix == ".json":
        rows = load_json(text, f"source: {path}")
        if not isinstance(rows, list):
            raise ValueError(f"source: expected {path} to hold a JSON list of rows, got a {type(rows).__name__}")
    else:
        rows = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rows.append(load_json(line, "the line"))
            except ValueError as e:
                rows.append(str(e))
    columns: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            columns.update(dict.fromkeys(str(k) for k in row))
    return rows, list(columns)


def _pick_key(columns: list[str], given: str | None, candidates: tuple[str, ...], arg: str,
              source: Path) -> str | None:
    """The column to read: `given` (argument `arg`, which must name a column), else the first of `candidates`
    present, else None."""
    if given is not None:
        if given not in columns:
            raise ValueError(f"{arg}: {given!r} is not a column of {source}; columns found: {columns}")
        return given
    return next((key for key in candidates if key in columns), None)


class CaptionedVideos(VideoClips):
    """Clips with captions from a folder of videos and ``.txt`` captions or a CSV / JSON / JSON-lines manifest
    (see the module docs), sampled as :class:`~latte_rs.data.VideoClips` samples them.

    Args:
        source: a folder (videos and frame folders with same-named ``.txt`` captions) or a manifest file.
        num_frames, frame_interval, image_size, resize, random_flip, sampling, seed: as ``VideoClips``.
        use_image_num: image-video joint clips: append this many single frames from other sources (as
            ``VideoClips``); ``"image_captions"`` then holds their captions.
        video_root: the folder relative paths of a manifest are read from (default: the manifest's folder).
        path_key: the manifest column holding the path (default: found by name, see the module docs).
        caption_key: the manifest column holding the caption (default: found by name).

    Raises:
        FileNotFoundError: `source` or `video_root` does not exist, or a folder holds no videos.
        ValueError: the manifest's columns hold no path or caption (the message lists the columns found and the
            keys looked for), or no source is left after the bad ones are left out.

    >>> ds = CaptionedVideos("clips/", num_frames=16, frame_interval=3, image_size=256)  # doctest: +SKIP
    >>> ds[0]["caption"], ds.caption(0)  # doctest: +SKIP
    ('a dog runs on the beach', 'a dog runs on the beach')
    """

    _source_arg = "source"

    def __init__(
        self,
        source: str | os.PathLike,
        num_frames: int = 16,
        frame_interval: int = 3,
        image_size: int = 256,
        *,
        resize: Resize = "resize_crop",
        random_flip: bool = True,
        sampling: Literal["linspace", "stride"] | None = None,
        seed: int = 0,
        use_image_num: int = 0,
        video_root: str | os.PathLike | None = None,
        path_key: str | None = None,
        caption_key: str | None = None,
    ) -> None:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source: expected a folder or manifest path, got {type(source).__name__}")
        for name, value in (("path_key", path_key), ("caption_key", caption_key)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name}: expected a column name (str) or None, got {type(value).__name__}")
        self.source = Path(source)
        bad: dict[str, str] = {}
        if self.source.is_dir():
            for name, value in (("video_root", video_root), ("path_key", path_key), ("caption_key", caption_key)):
                if value is not None:
                    raise ValueError(f"{name}: only for a manifest source; {self.source} is a folder (captions "
                                     f"come from .txt files beside the videos), got {value!r}")
            sources, captions, total, ignored = self._from_folder(bad)
            root = self.source
        elif self.source.exists():
            why = regular_file_error(self.source)
            if why is not None:
                raise ValueError(f"source: expected a folder or a manifest file, {self.source} is {why}")
            if self.source.suffix.lower() not in MANIFEST_SUFFIXES:
                raise ValueError(f"source: expected a folder or a manifest ending in {', '.join(MANIFEST_SUFFIXES)}, "
                                 f"got {self.source}")
            root = self.source.parent if video_root is None else Path(video_root)
            if not root.is_dir():
                raise FileNotFoundError(f"video_root: no such directory {root}")
            sources, captions, total = self._from_manifest(root, path_key, caption_key, bad)
            ignored = 0
        else:
            raise FileNotFoundError(f"source: no such folder or manifest file {self.source}")
        if not sources:
            raise ValueError(f"source: none of the {total} videos of {self.source} has a usable video and caption; "
                             f"{_shown(bad)}")
        if bad:
            warnings.warn(f"{self.source}: leaving out {len(bad)} of {total} captioned videos: {_shown(bad)}",
                          stacklevel=2)
        super().__init__(root, num_frames, frame_interval, image_size, resize=resize, random_flip=random_flip,
                         sampling=sampling, labels=None, seed=seed, sources=sources, use_image_num=use_image_num)
        self.captions: list[str] = captions
        self.ignored_files = ignored
        self.bad = bad  # after VideoClips' constructor, which starts an empty record

    def _from_folder(self, bad: dict[str, str]) -> tuple[list[Path], list[str], int, int]:
        found, ignored = scan(self.source, companions=(".txt",))
        if not found:
            raise FileNotFoundError(f"source: no video files or frame folders under {self.source}")
        sources, captions = [], []
        for path in found:
            text_path = caption_file(path)
            if not text_path.exists():
                bad[str(path)] = f"no caption file {text_path.name}"
                continue
            try:
                caption = read_text(text_path).strip()
            except (OSError, ValueError) as e:  # not a regular file, not UTF-8
                bad[str(path)] = f"unreadable caption file {text_path.name} ({e})"
                continue
            if not caption:
                bad[str(path)] = f"empty caption in {text_path.name}"
                continue
            sources.append(path)
            captions.append(caption)
        return sources, captions, len(found), ignored

    def _from_manifest(self, root: Path, path_key: str | None, caption_key: str | None,
                       bad: dict[str, str]) -> tuple[list[Path], list[str], int]:
        rows, columns = _read_rows(self.source)
        if not rows:
            raise ValueError(f"source: {self.source} lists no rows")
        path_col = _pick_key(columns, path_key, PATH_KEYS, "path_key", self.source)
        webvid = path_col is None and all(k in columns for k in WEBVID_KEYS)
        if path_col is None and not webvid:
            raise ValueError(f"source: no path column in {self.source}; columns found: {columns}; looked for "
                             f"{list(PATH_KEYS)} or {' + '.join(WEBVID_KEYS)} (or pass path_key)")
        caption_col = _pick_key(columns, caption_key, CAPTION_KEYS, "caption_key", self.source)
        if caption_col is None:
            raise ValueError(f"source: no caption column in {self.source}; columns found: {columns}; looked for "
                             f"{list(CAPTION_KEYS)} (or pass caption_key)")
        path_cols = list(WEBVID_KEYS) if webvid else [path_col]
        sources, captions = [], []
        for number, row in enumerate(rows, start=1):
            key = f"row {number}"
            if isinstance(row, str):  # a JSON line that did not parse
                bad[key] = row
                continue
            if not isinstance(row, dict):
                bad[key] = f"expected an object of columns, got {type(row).__name__}"
                continue
            values = {col: row.get(col) for col in path_cols + [caption_col]}
            missing = [col for col, v in values.items() if v is None or (isinstance(v, str) and not v.strip())]
            if missing:
                bad[key] = f"no {' / '.join(repr(m) for m in missing)}"
                continue
            if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values.values()):
                bad[key] = f"expected text values, got {values}"
                continue
            caption = str(values[caption_col]).strip()
            if webvid:
                relative = Path(str(values["page_dir"]).strip()) / f"{str(values['videoid']).strip()}.mp4"
            else:
                relative = Path(str(values[path_col]).strip())
            path = relative if relative.is_absolute() else root / relative
            try:
                exists = path.exists()
            except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
                bad[key] = f"unusable path {str(path)[:200]!r} ({e.strerror if isinstance(e, OSError) else e})"
                continue
            if not exists:
                bad[key] = f"no such video {path}"
                continue
            sources.append(path)
            captions.append(caption)
        return sources, captions, len(rows)

    def caption(self, index: int) -> str:
        """The caption of clip `index` (no video read)."""
        return self.captions[index]

    def load(self, index: int) -> dict:
        """Clip `index` with its caption, raising ValueError when its source is bad (``__getitem__``
        substitutes instead)."""
        item = super().load(index)
        if not isinstance(item, dict):  # (clip, label) of a plain clip
            return {"video": item[0], "caption": self.captions[index], "video_name": 0}
        return item

    def _joint(self, index: int, frames: np.ndarray, flip: bool) -> dict:
        images, others = self._image_frames(index, flip)
        video = np.concatenate([self._transform(frames, flip), images], axis=0)
        return {"video": video, "caption": self.captions[index], "video_name": 0,
                "image_captions": [self.captions[other] for other in others]}

    def __repr__(self) -> str:
        return (f"CaptionedVideos({str(self.source)!r}, clips={len(self)}, num_frames={self.num_frames}, "
                f"frame_interval={self.frame_interval}, image_size={self.image_size}, resize={self.resize!r})")
