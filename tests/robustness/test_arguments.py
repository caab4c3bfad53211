"""Arrays and arguments at the Python boundary: regressions for defects the fuzzing campaign found (issue 15; the
campaign runs in test_fuzz.py), one or more asserts each.

NumPy's defaults are accepted (float64 noise with float32 latents, big-endian arrays give the native result, NumPy
numbers and arrays in configs are the numbers and lists they hold), and errors name the argument they are about.
"""

from __future__ import annotations

import json

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


def test_numpy_numbers_and_lists_in_configs_are_taken_where_valid(tmp_path):
    """NumPy integers and arrays in a training config, a scheduler config or an FVD protocol are the numbers and
    lists they hold; an int is never rounded through a float; what is refused names its key (issue 30, defect 13)."""
    from latte_rs.evaluation import Protocol
    from latte_rs.training import load_config

    cfg = load_config({"dataset": "synthetic", "model": "Latte-S/2", "num_frames": np.int64(2), "image_size": 8,
                       "pixel_space": True, "model_config": {"depth": np.int64(2), "hidden_size": np.int32(16),
                                                             "num_heads": np.int64(2)},
                       "shape_size": np.array([0.2, 0.3]), "local_batch_size": np.int64(2), "num_clips": 4,
                       "max_train_steps": 1, "ckpt_every": 1, "log_every": 1, "global_seed": np.uint64(2**63 + 1)})
    assert cfg["global_seed"] == 2**63 + 1 and type(cfg["global_seed"]) is int
    assert cfg["model_config"] == {"depth": 2, "hidden_size": 16, "num_heads": 2} and cfg["shape_size"] == [0.2, 0.3]
    assert load_config({"global_seed": 2**62 + 1})["global_seed"] == 2**62 + 1
    assert load_config({"global_seed": str(2**62 + 1)})["global_seed"] == 2**62 + 1
    assert load_config({"max_train_steps": "1e3"})["max_train_steps"] == 1000
    result = latte_rs.train(cfg, output_dir=tmp_path / "run", progress=False)
    assert result.trainer.step_count == 1 and "depth: 2" in (tmp_path / "run" / "config.yaml").read_text()
    for bad, needle in [({"num_frames": 2.5}, "num_frames expected int"), ({"global_seed": -1}, "global_seed"),
                        ({"global_seed": 2**64}, "global_seed"), ({"learning_rate": [1]}, "learning_rate")]:
        with pytest.raises(ValueError, match=needle):
            load_config(bad)

    s = latte_rs.DDIMScheduler(num_train_timesteps=np.int64(10), trained_betas=np.linspace(1e-3, 0.2, 10),
                               steps_offset=np.int32(1))
    assert s.config["num_train_timesteps"] == 10 and len(s.config["trained_betas"]) == 10
    assert latte_rs.DDIMScheduler.from_config({**s.config, "num_train_timesteps": np.int64(10)}).config == s.config
    with pytest.raises(TypeError, match="trained_betas: expected a number"):
        latte_rs.DDIMScheduler(trained_betas={0.1, 0.2})

    proto = Protocol(num_real=np.int64(3), num_fake=3, image_size=np.int64(32), value_range=[-1, 1],
                     seed=np.int64(2), ddof=np.int64(1))
    assert proto.value_range == (-1.0, 1.0) and Protocol(value_range=np.array([0, 255])).value_range == (0.0, 255.0)
    assert json.loads(json.dumps(proto.to_dict()))["num_real"] == 3 and type(proto.image_size) is int
    for bad in [dict(value_range=(1,)), dict(value_range=5), dict(value_range=("a", "b")), dict(seed=-1)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            Protocol(**bad)


def test_pairs_of_numbers_are_taken_as_any_sequence_and_refused_by_name():
    """Trainer's betas and I3D's value_range take a tuple, a list or a NumPy array of two numbers (a list was
    refused: "'list' object is not an instance of 'tuple'", issue 30 defect 13); anything else names the argument."""
    from conftest import tiny_config

    model = latte_rs.LatteModel(tiny_config(depth=2), seed=0)
    for betas in ((0.9, 0.99), [0.9, 0.99], np.array([0.9, 0.99])):
        assert latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), betas=betas).options["betas"] == (0.9, 0.99)
    for bad, error in [([0.9], ValueError), ("ab", TypeError), ([0.9, "x"], TypeError), (0.9, TypeError)]:
        with pytest.raises(error, match="betas"):
            latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), betas=bad)
    clips = np.zeros((1, 9, 8, 8, 3), np.float32)
    for value_range in ((0, 1), [0, 1], np.array([0.0, 1.0])):
        assert latte_rs.I3D.preprocess(clips, value_range=value_range).shape[0] == 1
    with pytest.raises(ValueError, match="value_range"):
        latte_rs.I3D.preprocess(clips, value_range=[0, 1, 2])
