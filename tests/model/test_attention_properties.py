"""Properties that define the options the official code lacks: which positions each attention mixes.

Latte factorises attention: spatial attention mixes the tokens of one frame, temporal attention mixes one
position across the video frames. So perturbing frame k changes frame j != k only through temporal attention,
perturbing one token changes other tokens of its frame only through spatial attention, and image frames
(image-video joint training) never influence the video frames. Switching a kind of attention off (zeroing its
output projection) must remove exactly that path, in every variant.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import latte_rs
from conftest import tiny_config

VARIANTS = [1, 2, 3, 4]
OPTIONS = list(itertools.product(VARIANTS, ["adaln", "tokens"], ["absolute", "rope"]))


def perturbed_model(cfg: latte_rs.LatteConfig, seed: int = 0) -> tuple[latte_rs.LatteModel, dict]:
    model = latte_rs.LatteModel(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    sd = {
        k: v if k in ("pos_embed", "temp_embed") else v + 0.1 * rng.standard_normal(v.shape).astype(v.dtype)
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(sd)
    return model, sd


def attention_off(sd: dict, cfg: latte_rs.LatteConfig, kind: str) -> dict:
    """Zeroes the output projection of the spatial or temporal attention (kind = "spatial" | "temporal")."""
    sd = dict(sd)
    d = cfg.hidden_size
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    for i in blocks:
        if cfg.variant in (1, 2):
            temporal = i % 2 == 1 if cfg.variant == 1 else i >= len(blocks) // 2
            if temporal == (kind == "temporal"):
                sd[f"blocks.{i}.attn.proj.weight"] = np.zeros_like(sd[f"blocks.{i}.attn.proj.weight"])
                sd[f"blocks.{i}.attn.proj.bias"] = np.zeros_like(sd[f"blocks.{i}.attn.proj.bias"])
        elif cfg.variant == 3:
            name = "attn_temp" if kind == "temporal" else "attn"
            for p in ("weight", "bias"):
                sd[f"blocks.{i}.{name}.proj.{p}"] = np.zeros_like(sd[f"blocks.{i}.{name}.proj.{p}"])
        else:  # variant 4: the first half of the heads is spatial, the second temporal
            w = sd[f"blocks.{i}.attn.proj.weight"].copy()
            cols = slice(d // 2, d) if kind == "temporal" else slice(0, d // 2)
            w[:, cols] = 0
            sd[f"blocks.{i}.attn.proj.weight"] = w
    return sd


def run(model: latte_rs.LatteModel, x: np.ndarray) -> np.ndarray:
    return model(x, np.array([321]), y=np.array([2]), y_image=np.array([[1, 3]]))


def changed_frames(model, x, frame: int, token: tuple[int, int] | None = None) -> np.ndarray:
    """Per output frame: did it change when input `frame` (or one token of it) was perturbed?"""
    x2 = x.copy()
    if token is None:
        x2[:, frame] += 1.0
    else:
        r, c = token
        x2[:, frame, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] += 1.0
    diff = np.abs(run(model, x2) - run(model, x))
    return diff.reshape(diff.shape[1], -1).max(axis=1) > 1e-6


@pytest.mark.parametrize("variant, injection, pos", OPTIONS)
def test_frames_interact_only_through_temporal_attention(variant, injection, pos) -> None:
    cfg = tiny_config(variant=variant, injection=injection, temporal_position=pos, num_classes=4, use_image_num=2)
    model, sd = perturbed_model(cfg)
    x = np.random.default_rng(1).standard_normal((1, 6, 4, 8, 8)).astype(np.float32)
    # With temporal attention: perturbing video frame 1 changes every video frame, but no image frame.
    assert changed_frames(model, x, 1).tolist() == [True, True, True, True, False, False]
    # Perturbing an image frame changes that frame only.
    assert changed_frames(model, x, 4).tolist() == [False, False, False, False, True, False]
    # Without temporal attention, frames are independent.
    model.load_state_dict(attention_off(sd, cfg, "temporal"))
    assert changed_frames(model, x, 1).tolist() == [False, True, False, False, False, False]


@pytest.mark.parametrize("variant, injection, pos", OPTIONS)
def test_tokens_of_a_frame_interact_only_through_spatial_attention(variant, injection, pos) -> None:
    cfg = tiny_config(variant=variant, injection=injection, temporal_position=pos, num_classes=4, use_image_num=2)
    model, sd = perturbed_model(cfg)
    x = np.random.default_rng(2).standard_normal((1, 6, 4, 8, 8)).astype(np.float32)

    def changed_tokens() -> np.ndarray:
        x2 = x.copy()
        x2[:, 2, :, 2:4, 4:6] += 1.0  # token (row 1, col 2) of frame 2
        diff = np.abs(run(model, x2) - run(model, x))[0].max(axis=1)  # (F, H, W)
        return diff.reshape(6, 4, 2, 4, 2).max(axis=(2, 4)) > 1e-6  # (F, rows, cols) of tokens

    with_spatial = changed_tokens()
    assert with_spatial[2].all()  # spatial attention spreads it over the frame
    model.load_state_dict(attention_off(sd, cfg, "spatial"))
    only_token = changed_tokens()
    expected = np.zeros((6, 4, 4), bool)
    expected[:4, 1, 2] = True  # the same position in every video frame (temporal attention), nothing else
    assert (only_token == expected).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_tubelets_compress_time(variant) -> None:
    cfg = tiny_config(variant=variant, patch_embed="tubelet", tubelet_size=2, num_classes=4)
    model, sd = perturbed_model(cfg)
    model.load_state_dict(attention_off(sd, cfg, "temporal"))
    x = np.random.default_rng(3).standard_normal((1, 4, 4, 8, 8)).astype(np.float32)
    out = model(x, np.array([321]), y=np.array([2]))
    assert out.shape == (1, 4, 8, 8, 8)
    x2 = x.copy()
    x2[:, 0] += 1.0
    diff = np.abs(model(x2, np.array([321]), y=np.array([2])) - out).reshape(4, -1).max(axis=1) > 1e-6
    # Frames 0 and 1 form one token along time (4 frames -> 2 temporal positions): they change together.
    assert diff.tolist() == [True, True, False, False]
    assert cfg.replace(num_frames=8).num_parameters() == cfg.num_parameters()  # temp_embed is not trainable
    assert "temp_embed" in model.state_dict() and model.state_dict()["temp_embed"].shape == (1, 2, 32)


def test_rope_replaces_the_absolute_table() -> None:
    """RoPE adds no table (the rotation lives inside temporal attention; its relative-position invariance is
    tested in Rust, nn::pos): a static clip stays static, while the absolute table tells its frames apart."""
    cfg = tiny_config(variant=1, temporal_position="rope", num_frames=6)
    model, _ = perturbed_model(cfg)
    assert "temp_embed" not in model.state_dict()
    abs_cfg = cfg.replace(temporal_position="absolute")
    assert abs_cfg.num_parameters(trainable_only=False) - cfg.num_parameters(trainable_only=False) == 6 * 32
    x = np.repeat(np.random.default_rng(4).standard_normal((1, 1, 4, 8, 8)), 6, axis=1).astype(np.float32)
    out = model(x, np.array([100]))
    spread = np.abs(out - out[:, :1]).max()
    abs_model, _ = perturbed_model(abs_cfg)
    abs_out = abs_model(x, np.array([100]))
    abs_spread = np.abs(abs_out - abs_out[:, :1]).max()
    assert spread < 1e-5 < abs_spread
