"""Prompt following on the built-in captioned synthetic videos, measured on the pixels (no classifier, no
download): each generated clip's colour, shape and direction are read off its frames and compared with its
prompt, each attribute scored on its own (chance is 1/4 for each).

- colour: the mean colour of the foreground pixels (those far from the background), nearest of ``CLASS_COLOURS``;
- shape: per frame, the foreground's bounding box gives centre and radius; the shape whose mask at that place
  overlaps the foreground best (intersection over union) wins, and the frames vote;
- direction: the foreground centroid's displacement over the first frames (the clips open moving as captioned and
  may bounce later), its larger axis and sign.

The same readers serve the class-conditional synthetic data (``latte_rs.ablation``): with ``colour`` they look at
one object only (the pixels nearer that colour than any of ``CLASS_COLOURS``, e.g. the white labelled shape of the
"time" setting among distractors), and ``motion_consistency`` scores how steadily that object moves.

>>> from latte_rs.data.synthetic import CaptionedSyntheticVideos
>>> ds = CaptionedSyntheticVideos(num_clips=8, num_frames=8, image_size=16, combinations="all")
>>> videos = [(ds[i]["video"].transpose(0, 2, 3, 1) + 1) / 2 for i in range(8)]
>>> scores = prompt_following(videos, [ds.combination(i) for i in range(8)])
>>> scores["colour"], scores["shape"], scores["direction"]
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.synthetic import BACKGROUND, CLASS_COLOURS, DIRECTIONS, SHAPES, shape_mask

_BACKGROUND01 = (BACKGROUND + 1) / 2
_COLOURS01 = (np.asarray(CLASS_COLOURS, dtype=np.float64) + 1) / 2
#: A pixel is foreground when a channel is this far (in [0, 1]) from the background.
FOREGROUND = 0.25


def _frames01(video) -> np.ndarray:
    v = np.asarray(video)
    v = v.astype(np.float64) / 255.0 if v.dtype == np.uint8 else v.astype(np.float64)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"videos: expected clips (F, H, W, 3), got {v.shape}")
    return v


def foreground(video, colour: tuple[float, float, float] | None = None) -> np.ndarray:
    """The foreground pixels ``(F, H, W)`` bool of one clip ``(F, H, W, 3)`` (uint8, or float in [0, 1]): those
    far from the background; with `colour` (RGB in [-1, 1], e.g. ``TARGET_COLOUR``) only those nearer to it than
    to any colour of ``CLASS_COLOURS``."""
    v = _frames01(video)
    fg = np.abs(v - _BACKGROUND01).max(axis=-1) > FOREGROUND  # (F, H, W)
    if colour is not None:
        palette = np.concatenate([(np.asarray([colour], np.float64) + 1) / 2, _COLOURS01])
        nearest = np.argmin(((v[..., None, :] - palette) ** 2).sum(axis=-1), axis=-1)
        fg &= nearest == 0
    return fg


def _centroids(fg: np.ndarray) -> list[tuple[float, float] | None]:
    """Each frame's foreground centroid (None for a frame with fewer than 3 foreground pixels)."""
    out = []
    for frame in fg:
        if frame.sum() < 3:
            out.append(None)
            continue
        ys, xs = np.nonzero(frame)
        out.append((ys.mean(), xs.mean()))
    return out


def _opening_direction(centroids: list[tuple[float, float] | None]) -> int | None:
    """The direction index of the centroid's displacement over the first frames (None: too few seen)."""
    known = [c for c in centroids[: max(3, len(centroids) // 2 + 1)] if c is not None]
    if len(known) < 2:
        return None
    dy, dx = known[-1][0] - known[0][0], known[-1][1] - known[0][1]
    if abs(dx) >= abs(dy):
        return DIRECTIONS.index("right" if dx > 0 else "left")
    return DIRECTIONS.index("down" if dy > 0 else "up")


def measure(video, colour: tuple[float, float, float] | None = None
            ) -> tuple[int | None, int | None, int | None]:
    """The (colour, shape, direction) indices read off one clip ``(F, H, W, 3)`` (uint8, or float in [0, 1]);
    None for an attribute that cannot be read (no foreground). With `colour`, only the object of that colour is
    read (see ``foreground``) and the colour returned is None."""
    v = _frames01(video)
    fg = foreground(v, colour)
    if not fg.any():
        return None, None, None
    found = None
    if colour is None:
        mean = v[fg].mean(axis=0)
        found = int(np.argmin(((_COLOURS01 - mean) ** 2).sum(axis=1)))
    h, w = fg.shape[1:]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    votes = np.zeros(len(SHAPES))
    for frame in fg:
        if frame.sum() < 3:
            continue
        ys, xs = np.nonzero(frame)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        r = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2
        ious = []
        for name in SHAPES:  # the best fit over sub-pixel radii and offsets (the shapes are a few pixels across)
            best = 0.0
            for dr in (0.0, 0.25, 0.5, 0.75):
                for oy in (-0.25, 0.0, 0.25):
                    for ox in (-0.25, 0.0, 0.25):
                        m = shape_mask(name, rows, cols, cy + oy, cx + ox, r + dr)
                        best = max(best, (m & frame).sum() / max((m | frame).sum(), 1))
            ious.append(best)
        votes[int(np.argmax(ious))] += 1
    shape = int(np.argmax(votes)) if votes.any() else None
    return found, shape, _opening_direction(_centroids(fg))


def motion_consistency(videos: Sequence, speed: float, colour: tuple[float, float, float] | None = None
                       ) -> float:
    """How steadily the object moves, as the synthetic clips' objects do (a constant `speed` in pixels per frame,
    reflected at the walls): the fraction of consecutive frame pairs, over all clips, in which the object (the
    foreground, or the object of `colour`) is seen in both and its centroid moved between half and one and a half
    times `speed`. Occlusion and bounces keep real clips below 1: compare with the real clips' value.

    >>> from latte_rs.data.synthetic import SyntheticVideos
    >>> ds = SyntheticVideos(num_clips=4, num_frames=8, image_size=16, shape_size=(0.2, 0.3), speed=1 / 16)
    >>> videos = [(ds[i][0].transpose(0, 2, 3, 1) + 1) / 2 for i in range(4)]
    >>> motion_consistency(videos, speed=1.0) > 0.8
    True
    """
    if not len(videos):
        raise ValueError("videos: expected at least one clip, got none")
    if not speed > 0:
        raise ValueError(f"speed: expected a positive number of pixels per frame, got {speed}")
    steady = pairs = 0
    for video in videos:
        centroids = _centroids(foreground(video, colour))
        for a, b in zip(centroids[:-1], centroids[1:], strict=True):
            pairs += 1
            if a is not None and b is not None:
                steady += int(0.5 * speed <= float(np.hypot(b[0] - a[0], b[1] - a[1])) <= 1.5 * speed)
    return steady / max(pairs, 1)


def prompt_following(videos: Sequence, combinations: Sequence[tuple[int, int, int]]) -> dict[str, float]:
    """Accuracy of each attribute (and of all three at once) of `videos` against the (colour, shape, direction)
    of their prompts; an unreadable attribute counts as wrong."""
    if len(videos) != len(combinations) or not len(videos):
        raise ValueError(f"videos, combinations: expected the same non-zero count, got {len(videos)} and "
                         f"{len(combinations)}")
    hits = np.zeros((len(videos), 3), dtype=bool)
    for i, (video, want) in enumerate(zip(videos, combinations, strict=True)):
        got = measure(video)
        hits[i] = [g is not None and g == w for g, w in zip(got, want, strict=True)]
    return {"colour": float(hits[:, 0].mean()), "shape": float(hits[:, 1].mean()),
            "direction": float(hits[:, 2].mean()), "all": float(hits.all(axis=1).mean()), "clips": len(videos)}
