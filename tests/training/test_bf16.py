"""bf16 mixed-precision training on the CPU: ``latte_rs.autocast`` around a train step (and the training config's
``mixed_precision: bf16``) runs the linear layers' forward and backward GEMMs with bf16 operands and f32
accumulation, with f32 master weights, optimiser state and reductions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import latte_rs
from conftest import perturbed

needs_bf16 = pytest.mark.skipif(not latte_rs.BF16_AUTOCAST_SUPPORTED, reason="the CPU lacks AVX512-BF16")

VARIANTS = (1, 2, 3, 4)


def _class_model(variant: int) -> latte_rs.LatteModel:
    cfg = latte_rs.LatteConfig(depth=2, hidden_size=64, num_heads=4, input_size=8, num_frames=4, patch_size=2,
                               num_classes=3, learn_sigma=True, variant=variant)
    return perturbed(latte_rs.LatteModel(cfg, seed=0))


def _t2v_model() -> latte_rs.LatteT2VTransformer:
    cfg = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
               caption_channels=24, sample_size=8, video_length=4)
    return perturbed(latte_rs.LatteT2VTransformer(cfg, seed=0))


def _grads(model, bf16: bool, rng_seed: int = 0) -> list[np.ndarray]:
    """Every trainable parameter's gradient of sum(output · w) for a fixed batch, in f32 or under autocast."""
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)
    t = np.array([10, 700])
    with latte_rs.autocast(enabled=bf16):
        if isinstance(model, latte_rs.LatteT2VTransformer):
            text = rng.standard_normal((2, 5, 24)).astype(np.float32)
            out, graph = model.forward_graph(x, t, encoder_hidden_states=text)
        else:
            out, graph = model.forward_graph(x, t, np.array([0, 2]))
        _, grads = graph.backward(np.random.default_rng(9).standard_normal(out.shape).astype(np.float32))
    return [np.array(g, np.float64) for g in grads]


@needs_bf16
@pytest.mark.parametrize("kind", [*VARIANTS, "t2v"])
def test_bf16_gradients_match_f32_to_bf16_precision(kind):
    model = _t2v_model() if kind == "t2v" else _class_model(kind)
    full, half = _grads(model, False), _grads(model, True)
    assert len(full) == len(half) > 0
    flat_f, flat_h = np.concatenate([g.ravel() for g in full]), np.concatenate([g.ravel() for g in half])
    rel = np.linalg.norm(flat_h - flat_f) / np.linalg.norm(flat_f)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operand): the gradients agree to about
    # that, and differ (the bf16 path ran).
    assert 1e-5 < rel < 3e-2, rel
    cos = flat_h @ flat_f / (np.linalg.norm(flat_h) * np.linalg.norm(flat_f))
    assert cos > 0.999, cos
    # Every parameter's gradient, not just the total.
    names = model.trainable_parameter_names
    for name, f, h in zip(names, full, half, strict=True):
        scale = np.abs(f).max()
        if scale > 1e-6:
            assert np.abs(h - f).max() <= 0.1 * scale, name
    # Deterministic.
    again = _grads(model, True)
    for a, b in zip(half, again, strict=True):
        np.testing.assert_array_equal(a, b)


def _losses(bf16: bool, steps: int = 30, seed: int = 5) -> tuple[list[float], dict[str, np.ndarray]]:
    cfg = latte_rs.LatteConfig(depth=2, hidden_size=64, num_heads=4, input_size=8, num_frames=4, patch_size=2,
                               num_classes=3)
    model = latte_rs.LatteModel(cfg, seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=3e-3, seed=seed, grad_clip=1.0)
    data = np.random.default_rng(0).standard_normal((4, 4, 4, 8, 8)).astype(np.float32) * 0.5
    labels = np.array([0, 1, 2, 0])
    with latte_rs.autocast(enabled=bf16):
        losses = [trainer.step(data, labels)["loss"] for _ in range(steps)]
    return losses, trainer.model.state_dict()


@needs_bf16
def test_a_short_bf16_run_tracks_f32():
    f32, w32 = _losses(False)
    bf16, w16 = _losses(True)
    assert f32 != bf16, "the bf16 run rounds"
    # Same seeds, so the same timesteps and noise: the losses follow each other step by step, within the noise
    # bf16 rounding adds (far closer than an f32 run with other timesteps and noise), and both runs learn.
    other, _ = _losses(False, seed=6)
    diff = np.abs(np.array(f32) - np.array(bf16)) / np.array(f32)
    noise = np.abs(np.array(f32) - np.array(other)) / np.array(f32)
    assert np.median(diff) < 0.02 and diff.max() < 0.15, diff
    assert np.median(diff) < 0.2 * np.median(noise), (diff, noise)
    assert np.mean(bf16[-10:]) < np.mean(bf16[:5]) and np.mean(f32[-10:]) < np.mean(f32[:5])
    assert abs(np.mean(bf16[-10:]) - np.mean(f32[-10:])) < 0.05 * np.mean(f32[-10:])
    # The master weights stay float32.
    assert all(v.dtype == np.float32 for v in w16.values())


TINY = {
    "dataset": "synthetic",
    "model": "Latte-S/2",
    "num_frames": 4,
    "image_size": 8,
    "pixel_space": True,
    "model_config": {"depth": 2, "hidden_size": 32, "num_heads": 2},
    "local_batch_size": 2,
    "learning_rate": 1e-3,
    "log_every": 1,
    "ckpt_every": 100,
    "num_clips": 8,
    "global_seed": 11,
}


def test_the_config_key_trains_an_f32_model_in_bf16_and_is_refused_when_misspelt(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # CPUs without AVX512-BF16 warn (tested below)
        plain = latte_rs.train(TINY, output_dir=tmp_path / "a", max_steps=3, progress=False)
        mixed = latte_rs.train(dict(TINY, mixed_precision="bf16"), output_dir=tmp_path / "b", max_steps=3,
                               progress=False)
    assert mixed.model.dtype == "float32", "f32 master weights"
    losses = [[h["loss"] for h in r.history] for r in (plain, mixed)]
    if latte_rs.BF16_AUTOCAST_SUPPORTED:
        assert losses[0] != losses[1], "mixed_precision: bf16 changed nothing"
        np.testing.assert_allclose(losses[1], losses[0], rtol=0.05)
    else:
        assert losses[0] == losses[1]
    assert latte_rs.training.load_config({"mixed_precision": True})["mixed_precision"] is True
    with pytest.raises(ValueError, match="unknown keys.*mixed_precison"):
        latte_rs.training.load_config({"mixed_precison": "bf16"})
    with pytest.raises(ValueError, match="mixed_precision expected.*'bf61'"):
        latte_rs.training.load_config({"mixed_precision": "bf61"})
    # The setting is scoped to the steps: nothing stays on after training.
    assert latte_rs._native.set_autocast(None) is None


@pytest.mark.skipif(latte_rs.BF16_AUTOCAST_SUPPORTED, reason="the CPU has AVX512-BF16")
def test_without_avx512_bf16_bf16_training_warns_and_trains_in_f32(tmp_path):
    with pytest.warns(RuntimeWarning, match="AVX512-BF16"):
        latte_rs.train(dict(TINY, mixed_precision="bf16"), output_dir=tmp_path, max_steps=2, progress=False)
