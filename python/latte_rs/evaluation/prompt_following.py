"""Prompt following on the built-in captioned synthetic videos, measured on the pixels (no classifier, no
download): each generated clip's colour, shape and direction are read off its frames and compared with its
prompt, each attribute scored on its own (chance is 1/4 for each).

- colour: the mean colour of the foreground pixels (those far from the background), nearest of ``CLASS_COLOURS``;
- shape: per frame, the foreground's bounding box gives centre and radius; the shape whose mask at that place
  overlaps the foreground best (intersection over union) wins, and the frames vote;
- direction: the foreground centroid's displacement over the first frames (the clips open moving as captioned and
  may bounce later), its larger axis and sign.

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


def measure(video) -> tuple[int | None, int | None, int | None]:
    """The (colour, shape, direction) indices read off one clip ``(F, H, W, 3)`` (uint8, or float in [0, 1]);
    None for an attribute that cannot be read (no foreground)."""
    v = _frames01(video)
    fg = np.abs(v - _BACKGROUND01).max(axis=-1) > FOREGROUND  # (F, H, W)
    if not fg.any():
        return None, None, None
    mean = v[fg].mean(axis=0)
    colour = int(np.argmin(((_COLOURS01 - mean) ** 2).sum(axis=1)))
    h, w = fg.shape[1:]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    votes = np.zeros(len(SHAPES))
    centroids = []
    for frame in fg:
        if frame.sum() < 3:
            centroids.append(None)
            continue
        ys, xs = np.nonzero(frame)
        centroids.append((ys.mean(), xs.mean()))
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
    known = [c for c in centroids[: max(3, len(centroids) // 2 + 1)] if c is not None]
    direction = None
    if len(known) >= 2:
        dy, dx = known[-1][0] - known[0][0], known[-1][1] - known[0][1]
        if abs(dx) >= abs(dy):
            direction = DIRECTIONS.index("right" if dx > 0 else "left")
        else:
            direction = DIRECTIONS.index("down" if dy > 0 else "up")
    return colour, shape, direction


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
