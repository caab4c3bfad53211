"""Writing and showing videos: GIF (Pillow), MP4 (PyAV), a grid image of frames (PNG), inline display in Jupyter.

Frames are ``(F, H, W, 3)`` uint8 (what ``LattePipeline`` returns per video); floats in [0, 1] are accepted too.

>>> import numpy as np, tempfile, os
>>> from latte_rs.video_io import save_gif, frame_grid
>>> frames = np.zeros((4, 8, 8, 3), np.uint8); frames[:, :, :, 0] = np.arange(4)[:, None, None] * 60
>>> path = save_gif(frames, os.path.join(tempfile.mkdtemp(), "clip.gif"), fps=4)
>>> frame_grid(np.stack([frames, frames])).shape      # 2 videos × 4 frames, 2-pixel gaps
(18, 38, 3)
"""

from __future__ import annotations

import base64
import io
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ._files import atomic_write


def as_uint8(frames) -> np.ndarray:
    """Frames as uint8 ``(..., H, W, 3)``: uint8 as it is, floats in [0, 1] scaled and rounded."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype.kind != "f":
        raise TypeError(f"frames: expected uint8 or float in [0, 1], got dtype {frames.dtype}")
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def _check_clip(frames, arg: str = "frames") -> np.ndarray:
    frames = as_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"{arg}: expected one video (F, H, W, 3), got shape {frames.shape}")
    return frames


def save_gif(frames, path: str | os.PathLike, fps: float = 8.0, loop: int = 0) -> Path:
    """Writes a looping GIF; returns its path."""
    frames = _check_clip(frames)
    images = [Image.fromarray(f) for f in frames]
    return atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                         duration=max(1, round(1000 / fps)), loop=loop))


def save_mp4(frames, path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Writes an MP4 (H.264 when this FFmpeg build has an encoder for it, else MPEG-4 Part 2); returns its path.
    Odd frame sizes are padded by one pixel (the encoders need even sizes)."""
    import av

    frames = _check_clip(frames)
    f, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    codec = next((c for c in ("libx264", "h264", "libopenh264", "mpeg4") if c in av.codecs_available), "mpeg4")

    def write(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
            if codec == "mpeg4":
                stream.bit_rate = 4_000_000
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write(path, write)


def frame_grid(videos, gap: int = 2, background: int = 255, scale: int = 1) -> np.ndarray:
    """One image of videos ``(B, F, H, W, 3)``: a row per video, a column per frame, `gap` pixels apart; each frame
    enlarged `scale` times by nearest neighbour (so that tiny frames, like the demo's 16×16, can be seen)."""
    videos = as_uint8(videos)
    if videos.ndim == 4:
        videos = videos[None]
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos: expected (B, F, H, W, 3), got shape {videos.shape}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale: expected a positive int, got {scale!r}")
    if scale > 1:
        videos = videos.repeat(scale, axis=2).repeat(scale, axis=3)
    b, f, h, w, _ = videos.shape
    grid = np.full((b * h + (b - 1) * gap, f * w + (f - 1) * gap, 3), background, np.uint8)
    for i in range(b):
        for j in range(f):
            grid[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = videos[i, j]
    return grid


def save_png(image, path: str | os.PathLike) -> Path:
    """Writes one image ``(H, W, 3)`` (e.g. a ``frame_grid``) as a PNG; returns its path."""
    image = as_uint8(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected (H, W, 3), got shape {image.shape}")
    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def gif_bytes(frames, fps: float = 8.0) -> bytes:
    frames = _check_clip(frames)
    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)),
                   loop=0)
    return buf.getvalue()


def show(frames, fps: float = 8.0, width: int | None = None):
    """Shows a video inline in Jupyter (an animated GIF in an ``<img>``); returns the IPython HTML object."""
    from IPython.display import HTML

    data = base64.b64encode(gif_bytes(frames, fps)).decode()
    size = f' width="{width}"' if width else ""
    return HTML(f'<img src="data:image/gif;base64,{data}"{size} style="image-rendering: pixelated">')
