"""Evaluation: FVD with the I3D network in Rust (see :mod:`latte_rs.evaluation.fvd`)."""

from .weights import cache_dir, i3d_weights, load_i3d

__all__ = ["cache_dir", "i3d_weights", "load_i3d"]
