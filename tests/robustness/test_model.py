"""The Latte model, its config and the VAE: regressions for defects the fuzzing campaign found (issue 15; the campaign
runs in test_fuzz.py), one or more asserts each.

Sizes are refused before they are allocated (ValueError naming the field, MemoryError for what cannot fit), configs that
cannot work are ValueErrors rather than panics, and a non-finite output from finite inputs is an error.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import latte_rs
from conftest import TINY_VAE, tiny_config


def test_absurd_config_sizes_are_value_errors_naming_the_field():
    for field, value in [("hidden_size", 10**6), ("depth", 10**6), ("num_frames", 10**9), ("input_size", 2**40)]:
        with pytest.raises(ValueError, match=field):
            latte_rs.LatteConfig(**{field: value})
    with pytest.raises(ValueError, match="fits in 64 bits"):
        latte_rs.LatteConfig(depth=2**70)


def test_models_larger_than_memory_are_memory_errors_before_allocation():
    cfg = latte_rs.LatteConfig(depth=4096, hidden_size=65536, num_heads=16)
    with pytest.raises(MemoryError, match="parameters need more than"):
        cfg.num_parameters()
    with pytest.raises(MemoryError):
        latte_rs.LatteModel(cfg)


def test_an_mlp_of_width_zero_is_a_value_error():
    with pytest.raises(ValueError, match="MLP of width 0"):
        tiny_config(mlp_ratio=0.01)


def test_a_vae_config_with_zero_groups_is_a_value_error(tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(TINY_VAE, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["norm_num_groups"] = 0
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="norm_num_groups"):
        latte_rs.VideoVAE.from_pretrained(folder)


def test_vae_frames_with_a_side_of_one_pixel_are_a_value_error():
    vae = latte_rs.VideoVAE.from_pretrained(TINY_VAE)
    for shape in [(1, 3, 1, 2), (1, 1, 3, 1, 8), (1, 3, 8, 1)]:
        with pytest.raises(ValueError, match="H, W >="):
            vae.encode(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="chunk_size"):
        vae.decode(np.zeros((1, 2, 4, 2, 2), np.float32), chunk_size=0)


def test_nonfinite_outputs_from_finite_inputs_are_errors():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="range of"):
        model(np.full((1, 4, 4, 8, 8), 1e300), np.array([3]))  # finite in float64, infinite in float32
    with pytest.raises(ValueError, match="output"):
        model(np.full((1, 4, 4, 8, 8), 3e38, np.float32), np.array([3]))
    vae = latte_rs.VideoVAE.from_pretrained(TINY_VAE)
    with pytest.raises(ValueError):
        vae.decode(np.full((1, 2, 4, 2, 2), 3e38, np.float32))


def test_a_huge_finite_cfg_scale_is_an_error_not_a_nan_output():
    # Issue 30: forward_with_cfg returned inf/NaN for a huge finite cfg_scale (the sampling path refused it).
    # Random weights everywhere (a fresh model's final layer is zero, so its two branches would agree).
    model = latte_rs.LatteModel(tiny_config(num_classes=3), seed=0)
    rng = np.random.default_rng(0)
    model.load_state_dict({k: 0.2 * rng.standard_normal(v.shape, dtype=np.float32)
                           for k, v in model.state_dict().items()})
    x = np.concatenate([rng.standard_normal((1, 4, 4, 8, 8), dtype=np.float32)] * 2)
    t, y = np.array([500, 500]), np.array([1, 3])
    assert np.isfinite(model.forward_with_cfg(x, t, y, 4.0)).all()
    for scale in (1e300, 3e38):
        with pytest.raises(ValueError, match="guidance_scale \\(cfg_scale\\).*NaN or infinity"):
            model.forward_with_cfg(x, t, y, scale)
    with pytest.raises(ValueError, match="guidance_scale"):
        latte_rs.sample(model, latte_rs.DDIMScheduler(), noise=x[:1], y=y[:1], cfg_scale=1e300,
                        num_inference_steps=2, progress=False)
