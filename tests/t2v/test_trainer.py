"""The Trainer on the text-to-video transformer: gradients against diffusers' LatteTransformer3DModel under the
official Latte loss, activation checkpointing and accumulation, learning, exact resume, caption dropout, errors.

The golden file comes from tests/t2v/fixtures/make_t2v_train_golden.py (diffusers' model, the official
``create_diffusion`` ``training_losses``, PyTorch autograd); with LATTE_REPO set the comparison also runs live.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import fixture_script
from latte_rs.data import SyntheticVideos

FIXTURES = Path(__file__).parent / "fixtures"
CASES = ["video", "odd"]
# Attention is invariant to the key bias (it adds q·b to every score of a query, which softmax removes): its
# gradient is zero but for rounding, in the reference as here.
KEY_BIAS = re.compile(r"attn\d\.to_k\.bias$")

TINY = dict(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=8, sample_size=8, patch_size=2, caption_channels=6, video_length=4)


def _script():
    return fixture_script(FIXTURES / "make_t2v_train_golden.py")


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, np.ndarray]]:
    with np.load(FIXTURES / "t2v_train.npz") as z:
        return {name: {k[len(name) + 1 :]: z[k] for k in z.files if k.startswith(f"{name}/")} for name in CASES}


def _model(case) -> latte_rs.LatteT2VTransformer:
    model = latte_rs.LatteT2VTransformer(json.loads(str(case["config"])), seed=0)
    model.load_state_dict({k[len("param/") :]: v for k, v in case.items() if k.startswith("param/")})
    return model.with_temporal_attentions(bool(case["temporal"]))


def _gradients(case, **options) -> tuple[dict[str, np.ndarray], dict]:
    """forward_backward of a caption-dropout-free trainer on the case's batch, by parameter name."""
    trainer = latte_rs.Trainer(_model(case), latte_rs.GaussianDiffusion(), caption_dropout_prob=0, **options)
    flat, losses = trainer.forward_backward(case["x0"], encoder_hidden_states=case["features"],
                                            encoder_attention_mask=case["mask"], timesteps=case["t"],
                                            noise=case["noise"])
    return _unflatten(trainer, flat), losses


def _unflatten(trainer, flat) -> dict[str, np.ndarray]:
    sizes = [int(np.prod(s)) for s in trainer.parameter_shapes]
    assert flat.shape == (sum(sizes),)
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return {n: p.reshape(s) for n, p, s in zip(trainer.parameter_names, parts, trainer.parameter_shapes, strict=True)}


def _compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], temporal: bool, tol: float) -> tuple[float, str]:
    """Every gradient within ``tol`` of ``want``'s, norm-relative; returns the worst (error, parameter)."""
    assert got.keys() == want.keys()
    scale = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in want.values()))
    worst = (0.0, "")
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        if not temporal and name.startswith("temporal_transformer_blocks."):
            assert not w.any() and not g.any(), f"{name}: the temporal blocks are off, no gradient"
            continue
        if KEY_BIAS.search(name):
            assert max(np.linalg.norm(w), np.linalg.norm(g)) <= 1e-7 * scale, name
            continue
        assert np.abs(w).max() > 0, f"{name}: no gradient"
        rel = float(np.linalg.norm(g - w) / np.linalg.norm(w))
        worst = max(worst, (rel, name))
    assert worst[0] <= tol, f"worst norm-relative gradient error {worst[0]:.2e} at {worst[1]}"
    return worst


def _check_against_reference(case, **options) -> dict[str, np.ndarray]:
    got, losses = _gradients(case, **options)
    want = {k[len("grad/") :]: v for k, v in case.items() if k.startswith("grad/")}
    worst = _compare(got, want, bool(case["temporal"]), 1e-5)
    print(f"worst gradient error {worst[0]:.2e} ({worst[1]})")
    for k in ("loss", "mse", "vb"):
        assert losses[k] == pytest.approx(float(case[k].astype(np.float64).mean()), rel=1e-6, abs=1e-8), k
    return got


@pytest.mark.parametrize("name", CASES)
def test_gradients_equal_diffusers_under_the_official_loss(golden, name):
    _check_against_reference(golden[name])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.skipif(not os.environ.get("LATTE_REPO"), reason="set LATTE_REPO to an official Latte checkout")
def test_gradients_equal_diffusers_live(golden, name):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    live = _script().reference(Path(os.environ["LATTE_REPO"]), name)
    for k in ("x0", "t", "noise", "features", "mask"):  # the golden file is what the script makes
        np.testing.assert_array_equal(live[k], golden[name][k], err_msg=k)
    _check_against_reference(live)


@pytest.mark.parametrize("options", [dict(gradient_checkpointing=True), dict(grad_accumulation=2)],
                         ids=["checkpointing", "accumulation"])
@pytest.mark.parametrize("name", CASES)
def test_checkpointing_and_accumulation_give_the_plain_gradients(golden, name, options):
    case = golden[name]
    plain, plain_losses = _gradients(case)
    got = _check_against_reference(case, **options)
    _compare(got, plain, bool(case["temporal"]), 1e-6)
    _, losses = _gradients(case, **options)
    for k in ("loss", "mse", "vb"):
        assert losses[k] == pytest.approx(plain_losses[k], rel=1e-6), k


def _captioned_batch(rng, batch: int, tokens: int = 5, channels: int = 6, images: int = 0):
    """Latents (B, F, C, 8, 8), caption features (B, [1 + images,] S, channels) and masks with padding."""
    x = rng.standard_normal((batch, 4 + images, 4, 8, 8)).astype(np.float32)
    shape = (batch, 1 + images, tokens) if images else (batch, tokens)
    features = rng.standard_normal((*shape, channels)).astype(np.float32)
    kept = rng.integers(1, tokens + 1, shape[:-1])
    mask = (np.arange(tokens) < kept[..., None]).astype(np.float32)
    return x, features, mask


def test_a_tiny_text_model_learns_a_captioned_batch():
    ds = SyntheticVideos(num_clips=4, num_frames=4, image_size=8, seed=0)
    x = np.stack([ds[i][0] for i in range(4)])  # (4, 4, 3, 8, 8)
    rng = np.random.default_rng(0)
    captions = rng.standard_normal((2, 6, 8)).astype(np.float32)
    masks = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    which = np.array([0, 1, 0, 1])  # 4 clips, 2 captions
    cfg = dict(num_attention_heads=2, attention_head_dim=16, in_channels=3, out_channels=6, num_layers=2,
               cross_attention_dim=32, sample_size=8, patch_size=2, caption_channels=8, video_length=4)
    model = latte_rs.LatteT2VTransformer(cfg, seed=0)
    initial = latte_rs.LatteT2VTransformer(cfg, seed=0)
    diffusion = latte_rs.GaussianDiffusion()
    trainer = latte_rs.Trainer(model, diffusion, lr=1e-3, ema_decay=0.9, seed=1, caption_dropout_prob=0)
    batch = dict(encoder_hidden_states=np.concatenate([captions[which]] * 2),
                 encoder_attention_mask=np.concatenate([masks[which]] * 2))
    xb = np.concatenate([x] * 2)  # each clip twice per batch (different t and noise)
    losses = [trainer.step(xb, **batch)["loss"] for _ in range(200)]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-30:]))
    assert last <= 0.15 * first, f"loss {first:.4f} -> {last:.4f}"

    t = np.full(4, 300)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    x_t = diffusion.q_sample(x, t, noise).transpose(0, 2, 1, 3, 4)  # the model's (B, C, F, H, W)
    caption = captions[which] * masks[which][..., None]

    def denoising_error(m) -> float:
        eps = m(x_t, t, caption)[:, :3].transpose(0, 2, 1, 3, 4)
        return float(np.mean((eps - noise) ** 2))

    before = denoising_error(initial)
    ema = trainer.ema_model()
    assert isinstance(trainer.model, latte_rs.LatteT2VTransformer) and isinstance(ema, latte_rs.LatteT2VTransformer)
    for m in (trainer.model, ema):
        assert denoising_error(m) <= 0.1 * before, (denoising_error(m), before)


def _lively(seed: int) -> latte_rs.LatteT2VTransformer:
    """A TINY model with every weight N(0, 0.2²): the captions matter (at the N(0, 0.02²) init they barely do)."""
    model = latte_rs.LatteT2VTransformer(TINY, seed=seed)
    rng = np.random.default_rng(seed)
    model.load_state_dict({k: rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in model.state_dict().items()})
    return model


def _run(trainer, x, features, mask, steps: int) -> list[dict]:
    return [trainer.step(x, encoder_hidden_states=features, encoder_attention_mask=mask) for _ in range(steps)]


def test_resume_with_caption_dropout_and_joint_clips_is_bit_exact(tmp_path):
    rng = np.random.default_rng(3)
    x, features, mask = _captioned_batch(rng, batch=4, images=1)  # 4 video frames + 1 image, 2 captions per clip
    null = rng.standard_normal((1, 5, 6)).astype(np.float32)
    null_mask = np.array([[1, 1, 0, 0, 0]], np.float32)
    opts = dict(lr=1e-3, weight_decay=0.01, warmup_steps=2, grad_clip=1.0, ema_decay=0.9, seed=5,
                grad_accumulation=2, caption_dropout_prob=0.3, null_caption=null, null_caption_mask=null_mask)

    def trainer():
        return latte_rs.Trainer(latte_rs.LatteT2VTransformer(TINY, seed=0), latte_rs.GaussianDiffusion(), **opts)

    straight = trainer()
    full = _run(straight, x, features, mask, 5)
    first = trainer()
    part = _run(first, x, features, mask, 3)
    first.save(tmp_path / "ckpt")
    del first
    resumed = latte_rs.Trainer.resume(tmp_path / "ckpt")
    assert resumed.step_count == 3 and resumed.options == straight.options
    np.testing.assert_array_equal(resumed.null_caption, null * null_mask[..., None])
    part += _run(resumed, x, features, mask, 2)
    assert part == full
    assert len({s["loss"] for s in full}) == 5  # the steps did something
    assert isinstance(resumed.model, latte_rs.LatteT2VTransformer)
    for a, b in [(straight.model.state_dict(), resumed.model.state_dict()),
                 (straight.ema_state_dict(), resumed.ema_state_dict()),
                 (straight.ema_model().state_dict(), resumed.ema_model().state_dict())]:
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _forward_backward(trainer, x, features, mask, t, noise):
    return trainer.forward_backward(x, encoder_hidden_states=features, encoder_attention_mask=mask, timesteps=t,
                                    noise=noise)


@pytest.mark.parametrize("images", [0, 1], ids=["video", "joint"])
def test_caption_dropout_replaces_captions_by_the_null_caption(images):
    rng = np.random.default_rng(7)
    x, features, mask = _captioned_batch(rng, batch=2, images=images)
    t, noise = np.array([10, 700]), rng.standard_normal(x.shape).astype(np.float32)
    null = rng.standard_normal((1, 5, 6)).astype(np.float32)
    null_mask = np.array([[1, 1, 1, 0, 0]], np.float32)
    model = _lively(seed=2)

    def grad(features, mask, **opts):
        trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), **opts)
        return _forward_backward(trainer, x, features, mask, t, noise)[0]

    dropped = grad(features, mask, caption_dropout_prob=1.0, null_caption=null, null_caption_mask=null_mask)
    nulls = np.broadcast_to(null[:, None] if images else null, features.shape)
    nulls_mask = np.broadcast_to(null_mask[:, None] if images else null_mask, mask.shape)
    np.testing.assert_array_equal(dropped, grad(nulls, nulls_mask, caption_dropout_prob=0))
    kept = grad(features, mask, caption_dropout_prob=0)
    assert np.linalg.norm(dropped - kept) > 1e-3 * np.linalg.norm(kept)  # the captions matter
    np.testing.assert_array_equal(
        kept, grad(features, mask, caption_dropout_prob=0, null_caption=null, null_caption_mask=null_mask))


def test_caption_errors_are_named():
    rng = np.random.default_rng(0)
    x, features, mask = _captioned_batch(rng, batch=2)
    text = latte_rs.LatteT2VTransformer(TINY, seed=0)
    diffusion = latte_rs.GaussianDiffusion()
    trainer = latte_rs.Trainer(text, diffusion, caption_dropout_prob=0)
    with pytest.raises(ValueError, match="labels: a text-to-video model takes encoder_hidden_states"):
        trainer.step(x, labels=np.array([0, 1]), encoder_hidden_states=features)
    with pytest.raises(ValueError, match="encoder_hidden_states: required for a text-to-video model"):
        trainer.step(x)
    with pytest.raises(ValueError, match=r"encoder_attention_mask: expected shape \[2, 5\]"):
        trainer.step(x, encoder_hidden_states=features, encoder_attention_mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"encoder_hidden_states: expected shape \(2, S, 6\)"):
        trainer.step(x, encoder_hidden_states=features[..., :4])
    # A joint batch (4 video frames + 2 images) needs the video's caption and one per image frame.
    joint = np.concatenate([x, x[:, :2]], axis=1)
    with pytest.raises(ValueError, match=r"encoder_hidden_states: expected shape \(2, 3, S, 6\): the video's caption, "
                                         r"then one per image frame"):
        trainer.step(joint, encoder_hidden_states=np.stack([features] * 2, axis=1))
    with pytest.raises(ValueError, match=r"encoder_hidden_states: expected shape \(2, 3, S, 6\)"):
        trainer.step(joint, encoder_hidden_states=features)

    class_model = latte_rs.LatteModel(latte_rs.LatteConfig(depth=2, hidden_size=16, num_heads=2, input_size=8,
                                                           num_frames=4, num_classes=2), seed=0)
    class_trainer = latte_rs.Trainer(class_model, diffusion)
    with pytest.raises(ValueError, match="encoder_hidden_states: this Latte model takes class labels"):
        class_trainer.step(x, encoder_hidden_states=features)
    with pytest.raises(ValueError, match="null_caption: only a text-to-video model"):
        latte_rs.Trainer(class_model, diffusion, null_caption=features[:1])

    with pytest.raises(ValueError, match=r"null_caption: caption dropout \(caption_dropout_prob = 0.1\)"):
        latte_rs.Trainer(text, diffusion).step(x, encoder_hidden_states=features)
    with pytest.raises(ValueError, match="null_caption: expected 5 tokens"):
        latte_rs.Trainer(text, diffusion, null_caption=features[:1, :3]).step(x, encoder_hidden_states=features)
    with pytest.raises(ValueError, match=r"null_caption: expected shape \(1, S, 6\) or \(S, 6\)"):
        latte_rs.Trainer(text, diffusion, null_caption=features[:1, :, :4])
    with pytest.raises(ValueError, match="null_caption_mask: given without null_caption"):
        latte_rs.Trainer(text, diffusion, null_caption_mask=mask[:1])
    with pytest.raises(ValueError, match="caption_dropout_prob"):
        latte_rs.Trainer(text, diffusion, caption_dropout_prob=1.5)
