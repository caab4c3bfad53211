"""Video datasets. Clips are (F, C, H, W) float32 in [-1, 1] with an int label, the layout Latte's datasets yield;
captioned videos (``CaptionedVideos``) come as the official dicts with a ``"caption"``."""

from .captions import CaptionedVideos
from .latents import LatentClips, encode_dataset
from .synthetic import CaptionedSyntheticVideos, SyntheticVideos
from .video import UCF101, FaceForensics, SkyTimelapse, TaichiHD, VideoClips, find_classes

__all__ = [
    "CaptionedVideos",
    "FaceForensics",
    "LatentClips",
    "SkyTimelapse",
    "CaptionedSyntheticVideos",
    "SyntheticVideos",
    "TaichiHD",
    "UCF101",
    "VideoClips",
    "encode_dataset",
    "find_classes",
]
