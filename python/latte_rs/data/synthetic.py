"""A built-in procedural video dataset: coloured shapes moving and bouncing on a dark background.

It needs no downloads, is deterministic from a seed (clip `i` depends only on `seed` and `i`, so it reads the same
from any process or worker), and has any resolution and length. Labels are the shape (square, disc, triangle,
cross) or the direction the clip opens moving in (right, left, down, up; it reverses at walls), so
class-conditional models have something to learn.

Named settings (``SETTINGS``, ``SyntheticVideos.setting``; the training configs' ``dataset: synthetic_time``):

- ``"shapes"``: the defaults above; a clip's label can largely be read off any one frame.
- ``"time"``: a benchmark where time matters. The label is the direction the labelled shape opens moving in
  (it bounces off the walls later, so the order of the frames decides it); the labelled shape is painted white
  (``TARGET_COLOUR``) in a random shape and two distractors in the palette's colours move in random directions,
  bouncing too; the shapes are stacked in a random order per clip, so distractors pass in front of the labelled
  shape as well as behind it. No single frame says the label.
"""

from __future__ import annotations

import sys
from typing import Literal

import numpy as np

from .._inputs import check_int

SHAPES = ("square", "disc", "triangle", "cross")
DIRECTIONS = ("right", "left", "down", "up")
#: The background's value (every channel, in [-1, 1]).
BACKGROUND = -0.8
#: The colours (in [-1, 1]) of the labelled shape of each class with ``class_colours=True``: red, green, blue, yellow.
CLASS_COLOURS = ((0.9, -0.45, -0.45), (-0.4, 0.8, -0.4), (-0.3, -0.1, 1.0), (0.95, 0.8, -0.5))
#: The colour (in [-1, 1]) of the labelled shape with ``target_colour=True``: white, apart from the palette.
TARGET_COLOUR = (0.95, 0.95, 0.95)
_DIRECTION_VECTORS = {"right": (0.0, 1.0), "left": (0.0, -1.0), "down": (1.0, 0.0), "up": (-1.0, 0.0)}


def shape_mask(shape: str, rows: np.ndarray, cols: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """The pixels covered by `shape` (one of ``SHAPES``) of radius `r` centred at (`cy`, `cx`), as a boolean mask
    over the pixel grid `rows`, `cols` (e.g. ``np.mgrid``)."""
    dy, dx = rows - cy, cols - cx
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "disc":
        return dy * dy + dx * dx <= r * r
    if shape == "triangle":  # apex up, base at cy + r
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    return ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r))


def _bounce(start: float, velocity: float, steps: np.ndarray, low: float, high: float) -> np.ndarray:
    """Positions of a point moving at `velocity` between walls at `low` and `high`, reflecting off them."""
    span = high - low
    if span <= 0:
        return np.full(steps.shape, low)
    p = (start - low + velocity * steps) % (2 * span)
    return low + np.where(p > span, 2 * span - p, p)


class SyntheticVideos:
    """Clips of moving, bouncing shapes.

    Args:
        num_clips: dataset length.
        num_frames: frames per clip.
        image_size: height and width in pixels.
        label_by: "shape" (square, disc, triangle, cross) or "motion" (right, left, down, up).
        num_classes: how many of the four classes to use (1-4).
        num_shapes: shapes per clip; the first one carries the label, the others are distractors.
        speed: pixels per frame, as a fraction of `image_size` (default 1/32).
        shape_size: the range a shape's radius is drawn from, as fractions of `image_size` (default 0.08 to 0.16).
        class_colours: paint the labelled shape in its class's colour (``CLASS_COLOURS``) instead of a random one,
            an easier task whose samples are easy to check by eye.
        target_colour: paint the labelled shape ``TARGET_COLOUR`` and the distractors in colours of
            ``CLASS_COLOURS`` drawn at random, so the labelled shape can be found while its colour says nothing
            of the label.
        shuffle_depth: stack the shapes in a random order per clip (default: the labelled shape at the bottom,
            under every distractor).
        seed: the dataset's seed.

    >>> ds = SyntheticVideos(num_clips=8, num_frames=4, image_size=32)
    >>> video, label = ds[0]
    >>> video.shape, video.dtype, int(label) in range(4)
    ((4, 3, 32, 32), dtype('float32'), True)
    """

    def __init__(
        self,
        num_clips: int = 1024,
        num_frames: int = 16,
        image_size: int = 64,
        label_by: Literal["shape", "motion"] = "shape",
        num_classes: int = 4,
        num_shapes: int = 1,
        speed: float = 1 / 32,
        shape_size: tuple[float, float] = (0.08, 0.16),
        class_colours: bool = False,
        target_colour: bool = False,
        shuffle_depth: bool = False,
        seed: int = 0,
    ) -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips: expected at least 1, got {num_clips}")
        if num_frames < 1:
            raise ValueError(f"num_frames: expected at least 1, got {num_frames}")
        if image_size < 8:
            raise ValueError(f"image_size: expected at least 8 pixels, got {image_size}")
        if label_by not in ("shape", "motion"):
            raise ValueError(f'label_by: expected "shape" or "motion", got {label_by!r}')
        if not 1 <= num_classes <= 4:
            raise ValueError(f"num_classes: expected 1 to 4, got {num_classes}")
        if num_shapes < 1:
            raise ValueError(f"num_shapes: expected at least 1, got {num_shapes}")
        # Bounds far beyond any use (each clip is rendered whole, num_shapes times): a larger value is a typo. The
        # clip count must fit len(), which Python holds in an index-sized int.
        for name, value, most in (("num_frames", num_frames, 1 << 16), ("image_size", image_size, 1 << 14),
                                  ("num_shapes", num_shapes, 64), ("num_clips", num_clips, sys.maxsize)):
            if value > most:
                raise ValueError(f"{name}: expected at most {most}, got {value}")
        if not speed > 0:
            raise ValueError(f"speed: expected a positive fraction of the image size, got {speed}")
        try:
            low_size, high_size = (float(v) for v in shape_size)
        except (TypeError, ValueError):
            raise ValueError(f"shape_size: expected two fractions (low, high), got {shape_size!r}") from None
        if not 0 < low_size <= high_size <= 0.5:
            raise ValueError(f"shape_size: expected 0 < low <= high <= 0.5 of the image size, got {shape_size!r}")
        self.num_clips = num_clips
        self.num_frames = num_frames
        self.image_size = image_size
        self.label_by = label_by
        self.num_classes = num_classes
        self.num_shapes = num_shapes
        self.speed = speed
        self.shape_size = (low_size, high_size)
        if class_colours and target_colour:
            raise ValueError("target_colour: expected False with class_colours=True (the labelled shape has one "
                             "colour), got True")
        self.class_colours = bool(class_colours)
        self.target_colour = bool(target_colour)
        self.shuffle_depth = bool(shuffle_depth)
        self.seed = check_int("seed", seed, 0)

    @classmethod
    def setting(cls, name: str, **kwargs) -> SyntheticVideos:
        """The dataset of a named setting (``SETTINGS``), with other arguments (clips, frames, size, geometry,
        seed) as given.

        >>> ds = SyntheticVideos.setting("time", num_clips=4, num_frames=16, image_size=16)
        >>> ds.label_by, ds.num_shapes, ds.class_names
        ('motion', 3, ('right', 'left', 'down', 'up'))
        """
        if name not in SETTINGS:
            raise ValueError(f"setting: expected one of {sorted(SETTINGS)}, got {name!r}")
        fixed = sorted(set(SETTINGS[name]) & set(kwargs))
        if fixed:
            raise ValueError(f"setting: {name!r} fixes {fixed}; expected none of them as arguments, got "
                             f"{ {k: kwargs[k] for k in fixed} }")
        return cls(**SETTINGS[name], **kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        names = SHAPES if self.label_by == "shape" else DIRECTIONS
        return names[: self.num_classes]

    def __len__(self) -> int:
        return self.num_clips

    def label(self, index: int) -> int:
        """The label of clip `index` without rendering it."""
        return int(self._rng(index).integers(self.num_classes))

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, index]))

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        index %= self.num_clips
        rng = self._rng(index)
        label = int(rng.integers(self.num_classes))
        size = self.image_size
        steps = np.arange(self.num_frames, dtype=np.float64)
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
        video = np.full((self.num_frames, 3, size, size), BACKGROUND, dtype=np.float32)
        speed = self.speed * size
        tracks = []
        for k in range(self.num_shapes):
            radius = size * rng.uniform(*self.shape_size)
            shape = SHAPES[label] if (k == 0 and self.label_by == "shape") else SHAPES[rng.integers(len(SHAPES))]
            if k == 0 and self.label_by == "motion":
                vy, vx = _DIRECTION_VECTORS[DIRECTIONS[label]]
            else:
                angle = rng.uniform(0, 2 * np.pi)
                vy, vx = np.sin(angle), np.cos(angle)
            colour = rng.uniform(-0.2, 1.0, size=3).astype(np.float32)  # drawn always: the stream stays the same
            if k == 0 and self.class_colours:
                colour = np.asarray(CLASS_COLOURS[label], dtype=np.float32)
            elif self.target_colour:
                palette = TARGET_COLOUR if k == 0 else CLASS_COLOURS[rng.integers(len(CLASS_COLOURS))]
                colour = np.asarray(palette, dtype=np.float32)
            low, high = radius, size - 1 - radius
            cy0, cx0 = rng.uniform(low, high, size=2)
            if k == 0 and self.label_by == "motion":
                # Start in the half of the track behind the motion, so the clip opens moving as labelled.
                half = (high - low) / 2 * rng.uniform()
                if vy:
                    cy0 = low + half if vy > 0 else high - half
                else:
                    cx0 = low + half if vx > 0 else high - half
            ys = _bounce(cy0, vy * speed, steps, low, high)
            xs = _bounce(cx0, vx * speed, steps, low, high)
            tracks.append((shape, radius, colour, ys, xs))
        order = rng.permutation(self.num_shapes) if self.shuffle_depth else range(self.num_shapes)
        for k in order:  # bottom first
            shape, radius, colour, ys, xs = tracks[k]
            for f in range(self.num_frames):
                m = shape_mask(shape, rows, cols, ys[f], xs[f], radius)
                video[f][:, m] = colour[:, None]
        return video, label


#: The named settings of ``SyntheticVideos.setting``: the options each fixes (see the module docs).
SETTINGS: dict[str, dict] = {
    "shapes": {},
    "time": {"label_by": "motion", "num_shapes": 3, "target_colour": True, "shuffle_depth": True},
}

#: The colour names of ``CLASS_COLOURS``, in order.
COLOURS = ("red", "green", "blue", "yellow")


def synthetic_caption(colour: int, shape: int, direction: int) -> str:
    """The caption of a (colour, shape, direction) combination: "a red square moving left"."""
    return f"a {COLOURS[colour]} {SHAPES[shape]} moving {DIRECTIONS[direction]}"


#: The combinations held out of the captioned synthetic training set, to test prompt following on captions a
#: model never saw: (c + s + d) % 4 == 0 with direction right or left (8 of the 64). Every colour, shape and
#: direction, and every pair of them, is still in the training set.
HELD_OUT = tuple((c, s, d) for c in range(4) for s in range(4) for d in range(4) if (c + s + d) % 4 == 0 and d < 2)


class CaptionedSyntheticVideos:
    """Captioned clips of one shape moving on a dark background: "a {colour} {shape} moving {direction}", with
    4 colours (``COLOURS``, painted as ``CLASS_COLOURS``) × 4 shapes (``SHAPES``) × 4 directions
    (``DIRECTIONS``; the clip opens moving that way and reverses at a wall). The built-in text-to-video data.

    Args:
        num_clips, num_frames, image_size, speed, shape_size, seed: as ``SyntheticVideos``.
        combinations: "train" (all but ``HELD_OUT``), "held_out" (only those) or "all".

    Items are dicts ``{"video": (F, 3, S, S) float32 in [-1, 1], "caption": str, "video_name": combination
    index c·16 + s·4 + d}``; ``combination(i)`` gives clip i's (colour, shape, direction) without rendering.

    >>> ds = CaptionedSyntheticVideos(num_clips=4, num_frames=4, image_size=16)
    >>> item = ds[0]
    >>> item["video"].shape, item["caption"].startswith("a ")
    ((4, 3, 16, 16), True)
    """

    def __init__(self, num_clips: int = 1024, num_frames: int = 8, image_size: int = 16, *,
                 speed: float = 1 / 16, shape_size: tuple[float, float] = (0.2, 0.3),
                 combinations: Literal["train", "held_out", "all"] = "train", seed: int = 0) -> None:
        if combinations not in ("train", "held_out", "all"):
            raise ValueError(f'combinations: expected "train", "held_out" or "all", got {combinations!r}')
        # The geometry checks of SyntheticVideos (one place for them).
        self._base = SyntheticVideos(num_clips, num_frames, image_size, label_by="motion", speed=speed,
                                     shape_size=shape_size, seed=seed)
        every = [(c, s, d) for c in range(4) for s in range(4) for d in range(4)]
        held = set(HELD_OUT)
        self.combinations = {"train": [x for x in every if x not in held], "held_out": list(HELD_OUT),
                             "all": every}[combinations]
        self.num_clips, self.num_frames, self.image_size = num_clips, num_frames, image_size
        self.speed, self.shape_size, self.seed = speed, self._base.shape_size, self._base.seed

    def __len__(self) -> int:
        return self.num_clips

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, index, 17]))

    def combination(self, index: int) -> tuple[int, int, int]:
        """Clip `index`'s (colour, shape, direction) indices."""
        return self.combinations[int(self._rng(index).integers(len(self.combinations)))]

    def caption(self, index: int) -> str:
        return synthetic_caption(*self.combination(index))

    def __getitem__(self, index: int) -> dict:
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        index %= self.num_clips
        rng = self._rng(index)
        c, s, d = self.combinations[int(rng.integers(len(self.combinations)))]
        size = self.image_size
        steps = np.arange(self.num_frames, dtype=np.float64)
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
        video = np.full((self.num_frames, 3, size, size), BACKGROUND, dtype=np.float32)
        radius = size * rng.uniform(*self.shape_size)
        vy, vx = _DIRECTION_VECTORS[DIRECTIONS[d]]
        low, high = radius, size - 1 - radius
        cy0, cx0 = rng.uniform(low, high, size=2)
        # Start in the half of the track behind the motion, so the clip opens moving as captioned.
        half = (high - low) / 2 * rng.uniform()
        if vy:
            cy0 = low + half if vy > 0 else high - half
        else:
            cx0 = low + half if vx > 0 else high - half
        speed = self.speed * size
        ys = _bounce(cy0, vy * speed, steps, low, high)
        xs = _bounce(cx0, vx * speed, steps, low, high)
        colour = np.asarray(CLASS_COLOURS[c], dtype=np.float32)
        for f in range(self.num_frames):
            video[f][:, shape_mask(SHAPES[s], rows, cols, ys[f], xs[f], radius)] = colour[:, None]
        return {"video": video, "caption": synthetic_caption(c, s, d), "video_name": c * 16 + s * 4 + d}

    def __repr__(self) -> str:
        return (f"CaptionedSyntheticVideos(clips={self.num_clips}, num_frames={self.num_frames}, "
                f"image_size={self.image_size}, combinations={len(self.combinations)})")
