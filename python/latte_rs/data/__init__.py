"""Video datasets. Clips are (F, C, H, W) float32 in [-1, 1] with an int label, the layout Latte's datasets yield."""

from .synthetic import SyntheticVideos
from .video import UCF101, FaceForensics, SkyTimelapse, TaichiHD, VideoClips, find_classes

__all__ = ["FaceForensics", "SkyTimelapse", "SyntheticVideos", "TaichiHD", "UCF101", "VideoClips", "find_classes"]
