"""Video datasets. Clips are (F, C, H, W) float32 in [-1, 1] with an int label, the layout Latte's datasets yield."""

from .synthetic import SyntheticVideos
from .video import VideoClips

__all__ = ["SyntheticVideos", "VideoClips"]
