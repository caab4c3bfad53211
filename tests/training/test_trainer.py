"""The Trainer: the optimiser against PyTorch, learning, exact resume, checkpoint integrity, non-finite handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import fixture_script, tiny_config
from latte_rs.data import SyntheticVideos

FIXTURES = Path(__file__).parent / "fixtures"


def _golden_script():
    return fixture_script(FIXTURES / "make_train_golden.py")


def _trainer_from_golden(golden) -> tuple[latte_rs.Trainer, list[str], dict]:
    opts = json.loads(str(golden["options"]))
    config = latte_rs.LatteConfig(**opts.pop("config"))
    model = latte_rs.LatteModel(config, seed=0)
    names = sorted(k.split("/", 1)[1] for k in golden.files if k.startswith("init/"))
    state = model.state_dict()
    state.update({n: golden[f"init/{n}"] for n in names})
    model.load_state_dict(state)
    opts["betas"] = tuple(opts["betas"])
    return latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), **opts), names, opts


def _check_against(golden, expected) -> None:
    trainer, names, _ = _trainer_from_golden(golden)
    for k in range(4):
        stats = trainer.apply_gradients({n: golden[f"grad{k}/{n}"] for n in names})
        assert stats["step"] == k + 1 and not stats["skipped"]
        state, ema = trainer.model.state_dict(), trainer.ema_state_dict()
        for n in names:
            want, got = expected[f"param{k}/{n}"], state[n]
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7, err_msg=f"step {k} {n}")
            np.testing.assert_allclose(ema[n], expected[f"ema{k}/{n}"], rtol=2e-6, atol=2e-7, err_msg=f"ema {k} {n}")
        # The update is not trivially small: every step moves the weights.
        moved = max(np.abs(expected[f"param{k}/{n}"] - golden[f"init/{n}"]).max() for n in names)
        assert moved > 1e-4


def test_optimizer_steps_equal_torch_adamw_golden():
    """Four steps with warm-up, weight decay, clipping from step 2 (one gradient spike) and EMA."""
    golden = np.load(FIXTURES / "train.npz")
    _check_against(golden, golden)


def test_optimizer_steps_equal_torch_adamw_live():
    pytest.importorskip("torch")
    golden = np.load(FIXTURES / "train.npz")
    script = _golden_script()
    inputs = {k: golden[k] for k in golden.files if k.startswith(("init/", "grad"))}
    _check_against(golden, script.reference(inputs))


def test_warmup_schedule():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    t = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-3, warmup_steps=4)
    assert [t.lr_at(s) for s in (1, 2, 4, 10)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])


def _clips(n: int, frames: int = 4, size: int = 8) -> np.ndarray:
    ds = SyntheticVideos(num_clips=n, num_frames=frames, image_size=size, seed=0)
    return np.stack([ds[i][0] for i in range(n)])


def test_loss_of_a_tiny_model_falls_by_90_percent():
    cfg = latte_rs.LatteConfig(depth=4, hidden_size=64, num_heads=4, patch_size=2, input_size=8, num_frames=4,
                               in_channels=3)
    model = latte_rs.LatteModel(cfg, seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=2e-3, seed=1)
    x = np.concatenate([_clips(4)] * 2)  # 4 clips, each twice per batch (different t and noise)
    losses = [trainer.step(x)["loss"] for _ in range(300)]
    first, last = losses[0], float(np.mean(losses[-50:]))
    assert last <= 0.1 * first, f"loss {first:.4f} -> {last:.4f}"


def _run(trainer: latte_rs.Trainer, x, y, steps: int) -> list[dict]:
    return [trainer.step(x, labels=y) for _ in range(steps)]


def test_resume_is_bit_exact(tmp_path):
    cfg = tiny_config(num_classes=3, class_dropout_prob=0.25)
    x, y = _clips(2, size=8)[:, :, :3].repeat(1, axis=0), np.array([0, 2])
    x = np.concatenate([x, x[:, :, :1]], axis=2)  # 4 channels
    opts = dict(lr=1e-3, weight_decay=0.01, warmup_steps=2, grad_clip=1.0, ema_decay=0.9, seed=5)
    straight = latte_rs.Trainer(latte_rs.LatteModel(cfg, seed=0), latte_rs.GaussianDiffusion(), **opts)
    full = _run(straight, x, y, 5)

    first = latte_rs.Trainer(latte_rs.LatteModel(cfg, seed=0), latte_rs.GaussianDiffusion(), **opts)
    part = _run(first, x, y, 3)
    first.save(tmp_path / "ckpt")
    del first
    resumed = latte_rs.Trainer.resume(tmp_path / "ckpt")
    assert resumed.step_count == 3 and resumed.options == straight.options
    part += _run(resumed, x, y, 2)
    assert part == full
    for a, b in [(straight.model.state_dict(), resumed.model.state_dict()),
                 (straight.ema_state_dict(), resumed.ema_state_dict())]:
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The checkpoint's weights load for sampling.
    loaded = latte_rs.LatteModel.load(tmp_path / "ckpt" / "model.safetensors")
    assert loaded.config == cfg


def test_corrupt_checkpoint_is_named_and_previous_still_loads(tmp_path):
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion())
    x = np.concatenate([_clips(2)] * 1)
    x = np.concatenate([x, x[:, :, :1]], axis=2)
    trainer.step(x)
    trainer.save(tmp_path / "0000001")
    trainer.step(x)
    trainer.save(tmp_path / "0000002")
    path = tmp_path / "0000002" / "optimizer.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="optimizer.safetensors"):
        latte_rs.Trainer.resume(tmp_path / "0000002")
    assert latte_rs.Trainer.resume(tmp_path / "0000001").step_count == 1
    with pytest.raises(FileNotFoundError, match="trainer.json"):
        shutil.rmtree(tmp_path / "empty", ignore_errors=True)
        (tmp_path / "empty").mkdir()
        latte_rs.Trainer.resume(tmp_path / "empty")


def test_non_finite_raises_or_skips_and_keeps_weights():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    before = model.state_dict()
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion())
    grads = {k: np.ones_like(v) for k, v in before.items() if k not in ("pos_embed", "temp_embed")}
    name = sorted(grads)[0]
    grads[name][0] = np.inf
    with pytest.raises(ValueError, match="non-finite gradient"):
        trainer.apply_gradients(grads)
    x = np.full((2, 4, 4, 8, 8), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        trainer.step(x)
    skipping = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), skip_nonfinite=True)
    stats = skipping.apply_gradients(grads)
    assert stats["skipped"] and stats["skipped_steps"] == 1 and stats["step"] == 0
    after = model.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_gradient_checkpointing_matches_plain_training():
    cfg = tiny_config(variant=3, use_image_num=1, num_classes=2)
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 8, 8)).astype(np.float32)
    y, yi = np.array([0, 1]), np.array([[1], [0]])
    results = []
    for ckpt in (False, True):
        model = latte_rs.LatteModel(cfg, seed=0)
        t = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-3, gradient_checkpointing=ckpt)
        stats = [t.step(x, labels=y, image_labels=yi) for _ in range(2)]
        results.append((stats, model.state_dict()))
    (s0, w0), (s1, w1) = results
    for a, b in zip(s0, s1, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
    for k in w0:
        np.testing.assert_allclose(w0[k], w1[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_torch_tensors_and_bad_arguments():
    torch = pytest.importorskip("torch")
    model = latte_rs.LatteModel(tiny_config(num_classes=3), seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), grad_accumulation=2)
    x = torch.randn(2, 4, 4, 8, 8)
    stats = trainer.step(x, labels=torch.tensor([0, 2]))
    assert set(stats) == {"loss", "mse", "vb", "grad_norm", "lr", "step", "skipped", "skipped_steps", "loss_scale"}
    assert stats["step"] == 1 and stats["mse"] is not None
    with pytest.raises(TypeError, match="labels"):
        trainer.step(x, labels=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="grad_accumulation = 2"):
        trainer.step(x[:1], labels=np.array([0]))
    with pytest.raises(ValueError, match="latents"):
        trainer.step(np.zeros((2, 4, 4, 8), np.float32))
    with pytest.raises(ValueError, match="grad_accumulation"):
        latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), grad_accumulation=0)
    with pytest.raises(ValueError, match="betas"):
        latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), betas=(1.0, 0.9))


def test_data_parallel_entry_points_refuse_bad_input_by_name(tmp_path):
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion())
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="timesteps"):
        trainer.forward_backward(x, timesteps=np.array([0, 1000]))
    with pytest.raises(ValueError, match="timesteps"):
        trainer.step(x, timesteps=np.array([-1, 3]))
    with pytest.raises(TypeError, match="timesteps"):
        trainer.step(x, timesteps=np.array([0.5, 3.0]))
    with pytest.raises(ValueError, match="noise"):
        trainer.step(x, noise=x[:1])
    with pytest.raises(ValueError, match="noise"):
        trainer.step(x, noise=np.full_like(x, np.nan))
    grad, losses = trainer.forward_backward(x)
    assert grad.shape == (model.num_parameters(),) and grad.dtype == np.float32
    assert trainer.step_count == 0  # the weights are untouched until apply_gradients
    with pytest.raises(ValueError, match="grads"):
        trainer.apply_gradients(grad[:-1], loss=losses["loss"])
    with pytest.raises(ValueError, match="loss, mse, vb"):
        trainer.apply_gradients({}, loss=1.0)
    with pytest.raises(ValueError, match="state"):
        trainer.set_rng_state("{}")
    with pytest.raises(ValueError, match=r"rank_rng_states\[1\]"):
        trainer.save(tmp_path / "c", rank_rng_states=[trainer.rng_state, "nope"])
    assert trainer.apply_gradients(grad, loss=losses["loss"])["step"] == 1
    out, graph = model.forward_graph(x, np.array([3, 9]))
    with pytest.raises(ValueError, match="grad_output"):
        graph.backward(out[:1])
    with pytest.raises(ValueError, match="grad_output"):
        graph.backward(np.full_like(out, np.inf))


def test_rank_streams_survive_a_checkpoint(tmp_path):
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    trainers = [latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), seed=3 + r) for r in range(2)]
    states = [t.rng_state for t in trainers]
    assert states[0] != states[1]
    trainers[0].save(tmp_path / "c", rank_rng_states=states)
    resumed = latte_rs.Trainer.resume(tmp_path / "c")
    assert resumed.rank_rng_states == states and resumed.rng_state == states[0]
    resumed.set_rng_state(states[1])
    assert resumed.rng_state == states[1]
    resumed.reseed(3)
    assert resumed.rng_state == states[0]  # the stream of seed 3 from its start
    assert latte_rs.Trainer.resume(tmp_path / "c").rank_rng_states == states
