"""Evaluation: FVD with the I3D network in Rust.

>>> from latte_rs.evaluation import fvd, Protocol
>>> Protocol().num_real, Protocol().real_stride
(2048, 3)
"""

from .protocol import FeatureStats, FVDResult, feature_stats, fvd
from .settings import Protocol
from .weights import cache_dir, i3d_weights, load_i3d

__all__ = ["FVDResult", "FeatureStats", "Protocol", "cache_dir", "feature_stats", "fvd", "i3d_weights", "load_i3d"]
