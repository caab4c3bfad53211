"""Arrays and arguments at the Python boundary: regressions for defects the fuzzing campaign found (issue 15; the
campaign runs in test_fuzz.py), one or more asserts each.

NumPy's defaults are accepted (float64 noise with float32 latents, big-endian arrays give the native result), and errors
name the argument they are about.
"""

from __future__ import annotations

import numpy as np
import pytest

import latte_rs
from conftest import random_latents, tiny_config


def test_float64_noise_with_float32_latents_just_works():
    s = latte_rs.DDPMScheduler()
    s.set_timesteps(10)
    x = np.zeros((1, 4, 8, 8), np.float32)
    noise = np.random.default_rng(0).standard_normal((1, 4, 8, 8))  # float64, NumPy's default
    assert s.add_noise(x, noise, np.array([3])).dtype == np.float32
    assert s.step(noise, int(s.timesteps[0]), x).prev_sample.dtype == np.float32
    d = latte_rs.GaussianDiffusion()
    x5 = np.zeros((2, 2, 4, 2, 2), np.float32)
    n5 = np.random.default_rng(0).standard_normal(x5.shape)
    assert np.allclose(d.q_sample(x5, np.array([5, 7]), n5), d.q_sample(x5, np.array([5, 7]), n5.astype(np.float32)))


def test_big_endian_arrays_give_the_native_result():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    x = random_latents(tiny_config(), batch=1)
    native = model(x, np.array([10]))
    assert np.array_equal(model(x.astype(">f4"), np.array([10], ">i8")), native)


def test_errors_name_their_argument():
    with pytest.raises(ValueError, match="mlp_ratio: invalid type: null"):
        latte_rs.LatteConfig.from_json('{"mlp_ratio": null}')
    with pytest.raises(ValueError) as info:
        latte_rs.GaussianDiffusion(diffusion_steps=-1)
    assert "while processing 'diffusion_steps'" in getattr(info.value, "__notes__", [])
    with pytest.raises(TypeError) as info:
        latte_rs.Generator("seed")
    assert "while processing 'seed'" in info.value.__notes__
    with pytest.raises(ValueError, match=r"\[1\]: expected an integer"):
        latte_rs.Generator(0).randn([2, -3])
    with pytest.raises(NotImplementedError, match="flash-attn"):
        latte_rs.LatteConfig(attention="flash")
