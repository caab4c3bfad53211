"""The VAE against diffusers' AutoencoderKL (golden files from tests/model/fixtures/make_vae_golden.py, and live)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import latte_rs

VAE = Path(__file__).parent / "fixtures" / "vae"
NAMES = ["tiny_attn", "deep_plain"]


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", NAMES)
def test_encode_decode_match_diffusers_golden(name):
    g = np.load(VAE / f"{name}.npz")
    vae = latte_rs.VideoVAE.from_pretrained(VAE / name)
    mean, logvar = vae.encode_moments(g["x"])
    assert _rel(mean, g["mean"]) <= 1e-4 and _rel(logvar, g["logvar"]) <= 1e-4
    z = vae.encode(g["x"], sample=False, chunk_size=2)  # chunks of 2 over 3 frames
    np.testing.assert_allclose(z, g["mean"] * float(g["scaling_factor"]), rtol=1e-4, atol=1e-5)
    decoded = vae.decode(z)
    assert _rel(decoded, g["decoded"]) <= 1e-4


def test_video_layout_sampling_and_seeds():
    g = np.load(VAE / "tiny_attn.npz")
    vae = latte_rs.VideoVAE.from_pretrained(VAE / "tiny_attn")
    video = np.stack([g["x"], g["x"][::-1]])  # (B=2, F=3, 3, H, W)
    z = vae.encode(video, seed=1)
    assert z.shape == (2, 3, 4, 8, 12) and vae.downsample_factor == 2
    np.testing.assert_array_equal(z, vae.encode(video, seed=1))
    assert not np.array_equal(z, vae.encode(video, seed=2))
    mean = vae.encode(video, sample=False)
    std = np.exp(0.5 * vae.encode_moments(video)[1]) * vae.scaling_factor
    eps = (z - mean) / std
    assert abs(eps.mean()) < 0.2 and 0.8 < eps.std() < 1.2  # a sample is mean + std * N(0, 1)
    assert vae.decode(z).shape == (2, 3, 3, 16, 24)


def test_live_against_diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    g = np.load(VAE / "tiny_attn.npz")
    ref = diffusers.AutoencoderKL.from_pretrained(VAE / "tiny_attn").eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
        dec = ref.decode(torch.from_numpy(mean)).sample.numpy()
    vae = latte_rs.VideoVAE.from_pretrained(VAE / "tiny_attn")
    assert _rel(vae.encode_moments(x)[0], mean) <= 1e-4
    assert _rel(vae.decode(mean * vae.scaling_factor), dec) <= 1e-4
    assert g["x"].shape[1] == 3


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        latte_rs.VideoVAE.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((VAE / "tiny_attn" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        latte_rs.VideoVAE.from_pretrained(tmp_path)
    cfg = json.loads((VAE / "tiny_attn" / "config.json").read_text())
    cfg["block_out_channels"] = [8, 32]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (VAE / "tiny_attn" / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        latte_rs.VideoVAE.from_pretrained(tmp_path)
    vae = latte_rs.VideoVAE.from_pretrained(VAE / "tiny_attn")
    with pytest.raises(ValueError, match="video"):
        vae.encode(np.zeros((2, 4, 16, 16), np.float32))


def test_latent_cache_round_trip_and_training(tmp_path):
    from latte_rs.data import LatentClips, SyntheticVideos, encode_dataset

    vae = latte_rs.VideoVAE.from_pretrained(VAE / "tiny_attn")
    ds = SyntheticVideos(num_clips=5, num_frames=4, image_size=16, seed=0)
    out = encode_dataset(ds, vae, tmp_path / "cache", shard_size=2, seed=3, progress=False)
    cache = LatentClips(out)
    assert len(cache) == 5 and len(cache.index["shards"]) == 3
    for i in (0, 3, 4):
        z, label = cache[i]
        assert z.shape == (4, 4, 8, 8) and label == ds[i][1]
        np.testing.assert_array_equal(z, vae.encode(ds[i][0][None], seed=3 + i)[0])
    # The cache trains directly (dataset: latents).
    cfg = {"dataset": "latents", "data_path": str(out), "model": "Latte-S/2", "num_frames": 4, "image_size": 64,
           "model_config": {"depth": 2, "hidden_size": 32, "num_heads": 2, "input_size": 8},
           "local_batch_size": 2, "log_every": 1, "ckpt_every": 2}
    result = latte_rs.train(cfg, output_dir=tmp_path / "run", max_steps=2, progress=False)
    assert result.trainer.step_count == 2
    with pytest.raises(FileNotFoundError, match="index.json"):
        LatentClips(tmp_path)


def test_cli_encode(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "latte_rs.cli", "encode", "--vae", str(VAE / "tiny_attn"), "--output",
           str(tmp_path / "c"), "--set", "dataset=synthetic", "--set", "num_frames=4", "--set", "image_size=16",
           "--set", "num_clips=3", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert '"clips": 3' in out.stdout
    from latte_rs.data import LatentClips

    assert len(LatentClips(tmp_path / "c")) == 3
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "nowhere")] + cmd[6:], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "config.json" in bad.stderr
