"""LattePipeline (class-conditional / unconditional) and the video writers (`latte-rs sample`: tests/cli/)."""

from __future__ import annotations

import numpy as np
import pytest

import latte_rs
from conftest import TINY_VAE, pixel_model
from latte_rs.pipelines import LatteOutput, LattePipeline
from latte_rs.video_io import frame_grid, save_gif, save_mp4

VAE = TINY_VAE


def test_pixel_pipeline_makes_seeded_uint8_videos_equal_to_the_sampler():
    model = pixel_model()
    pipe = LattePipeline(model)
    out = pipe(class_labels=[0, 2], num_inference_steps=3, seed=5, progress=False)
    assert isinstance(out, LatteOutput)
    assert out.frames.shape == (2, 4, 16, 16, 3) and out.frames.dtype == np.uint8
    assert out.latents.shape == (2, 4, 3, 16, 16)
    again = pipe(class_labels=[0, 2], num_inference_steps=3, seed=5, progress=False)
    np.testing.assert_array_equal(out.frames, again.frames)
    other = pipe(class_labels=[0, 2], num_inference_steps=3, seed=6, progress=False)
    assert not np.array_equal(out.frames, other.frames)
    # The same as the sampler by hand, then [-1, 1] → [0, 255] channels last.
    ref = latte_rs.sample(model, pipe.scheduler, 2, num_inference_steps=3, y=np.array([0, 2]), seed=5,
                          progress=False)
    want = (np.clip(ref.transpose(0, 1, 3, 4, 2) / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(out.frames, want)
    floats = pipe(class_labels=[0, 2], num_inference_steps=3, seed=5, output_type="np", progress=False)
    assert floats.frames.dtype == np.float32 and 0 <= floats.frames.min() and floats.frames.max() <= 1
    # Labels repeat for num_videos; guidance runs.
    assert pipe(class_labels=1, num_videos=3, num_inference_steps=2, guidance_scale=4.0,
                progress=False).frames.shape[0] == 3


def test_latent_pipeline_decodes_with_the_vae():
    cfg = latte_rs.LatteConfig.preset("Latte-S/4", num_frames=4, input_size=8)
    model = latte_rs.LatteModel(cfg, seed=1)
    vae = latte_rs.VideoVAE.from_pretrained(VAE)
    out = LattePipeline(model, vae=vae)(num_videos=2, num_inference_steps=2, progress=False)
    assert out.frames.shape == (2, 4, 16, 16, 3)
    decoded = vae.decode(out.latents)
    want = (np.clip(decoded.transpose(0, 1, 3, 4, 2) / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(out.frames, want)
    with pytest.raises(ValueError, match="pass vae="):
        LattePipeline(model)(num_inference_steps=2, progress=False)
    assert LattePipeline(model)(num_inference_steps=2, output_type="latent", progress=False).frames.shape == (
        1, 4, 4, 8, 8)


def test_pipeline_input_errors(tmp_path):
    pipe = LattePipeline(pixel_model())
    with pytest.raises(ValueError, match=r"class_labels: required .*\(0\.\.2\)"):
        pipe(progress=False)
    with pytest.raises(ValueError, match=r"class_labels: expected ints in \[0, 3\)"):
        pipe(class_labels=[3], progress=False)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=0, output_type="pil", progress=False)
    uncond = LattePipeline(pixel_model(num_classes=0))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(class_labels=1, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        uncond(guidance_scale=2.0, progress=False)
    # from_pretrained reads any checkpoint from_checkpoint reads.
    model = pixel_model()
    model.save(str(tmp_path / "m.safetensors"))
    loaded = LattePipeline.from_pretrained(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded(class_labels=1, num_inference_steps=2, progress=False).frames,
                                  pipe(class_labels=1, num_inference_steps=2, progress=False).frames)


def test_gif_mp4_and_grid_decode_to_the_frames(tmp_path):
    import av
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = np.repeat(np.repeat(rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8), 4, 1), 4, 2)  # 20×28
    gif = save_gif(frames, tmp_path / "a.gif", fps=5)
    with Image.open(gif) as im:
        assert im.n_frames == 6 and im.size == (28, 20)
        assert im.info["duration"] == 200
    mp4 = save_mp4(frames, tmp_path / "a.mp4", fps=5)
    with av.open(str(mp4)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (20, 28, 3)
    assert np.abs(decoded[3].astype(int) - frames[3]).mean() < 40  # lossy, but the same picture
    odd = save_mp4(frames[:, :19, :27], tmp_path / "odd.mp4")  # odd sizes are padded to even
    with av.open(str(odd)) as c:
        assert next(iter(c.decode(video=0))).to_ndarray(format="rgb24").shape[:2] == (20, 28)
    assert frame_grid(np.stack([frames, frames]), gap=1).shape == (41, 6 * 28 + 5, 3)
    big = frame_grid(frames[None, :2, :2, :3], gap=1, scale=3)  # 2 frames of 2×3: each pixel a 3×3 block
    assert big.shape == (6, 2 * 9 + 1, 3)
    assert (big[:3, :3] == frames[0, 0, 0]).all() and (big[3:, 10:13] == frames[1, 1, 0]).all()
    with pytest.raises(ValueError, match=r"one video \(F, H, W, 3\)"):
        save_gif(frames[0], tmp_path / "b.gif")
    out = LatteOutput(np.stack([frames]), np.zeros(1), fps=4)
    assert out.save_gif(tmp_path / "c.gif").is_file() and out.grid().shape == (20, 6 * 28 + 10, 3)


def test_a_prompt_to_a_class_model_is_an_error():
    pipe = latte_rs.LattePipeline(pixel_model())
    with pytest.raises(ValueError, match="prompt: this is a class-conditional Latte model, which takes no text"):
        pipe(class_labels=[0], prompt="a red square moving left", num_inference_steps=2, progress=False)
