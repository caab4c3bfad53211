"""LatteConfig: presets, options, validation, JSON round-trip, parameter counts."""

from __future__ import annotations

import pickle

import pytest

import latte_rs
from latte_rs import LatteConfig

# The official implementation's trainable-parameter counts (/2, 16 frames, 32×32 latents, learn_sigma).
OFFICIAL_COUNTS = {
    0: {"S": 32_480_672, "B": 129_547_040, "L": 456_815_648, "XL": 673_681_568},
    101: {"S": 32_519_840, "B": 129_625_376, "L": 456_920_096, "XL": 673_799_072},
}


@pytest.mark.parametrize("classes", [0, 101])
@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
def test_preset_parameter_counts_equal_official(size: str, classes: int) -> None:
    cfg = LatteConfig.preset(f"Latte-{size}/2", num_frames=16, image_size=256, num_classes=classes)
    assert cfg.num_parameters() == OFFICIAL_COUNTS[classes][size]


def test_built_model_counts_like_the_config() -> None:
    cfg = LatteConfig.preset("Latte-S/2", num_frames=16, input_size=32)
    model = latte_rs.LatteModel(cfg)
    assert model.num_parameters() == cfg.num_parameters() == OFFICIAL_COUNTS[0]["S"]
    # The fixed sin-cos tables are parameters of the checkpoint but not trainable: 256 + 16 rows of 384.
    assert model.num_parameters(trainable_only=False) == OFFICIAL_COUNTS[0]["S"] + (256 + 16) * 384


def test_preset_with_overrides() -> None:
    cfg = LatteConfig.preset("Latte-XL/2", num_frames=16, image_size=256, num_classes=101)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (28, 1152, 16, 2)
    assert cfg.input_size == 32 and cfg.num_classes == 101 and cfg.out_channels == 8
    assert len(LatteConfig.preset_names()) == 12
    assert LatteConfig.preset("LatteIMG-B/4").hidden_size == 768


def test_every_option_is_settable() -> None:
    cfg = LatteConfig(
        depth=4,
        hidden_size=64,
        num_heads=4,
        patch_size=2,
        input_size=8,
        num_frames=8,
        in_channels=4,
        learn_sigma=False,
        num_classes=10,
        class_dropout_prob=0.2,
        variant=3,
        patch_embed="tubelet",
        tubelet_size=2,
        injection="tokens",
        temporal_position="rope",
        attention="chunked",
        attention_chunk_size=64,
        mlp_ratio=2.0,
    )
    d = cfg.to_dict()
    assert d["variant"] == 3 and d["patch_embed"] == "tubelet" and d["injection"] == "tokens"
    assert cfg.replace(variant=4).variant == 4 and cfg.variant == 3


def test_json_round_trip_and_pickle() -> None:
    cfg = LatteConfig.preset("Latte-B/4", variant=2, use_image_num=4, temporal_position="rope")
    assert LatteConfig.from_json(cfg.to_json()) == cfg
    assert LatteConfig.from_dict(cfg.to_dict()) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg != cfg.replace(variant=1)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(variant=5), ["variant", "5"]),
        (dict(depth=3), ["depth", "even"]),
        (dict(num_heads=5), ["num_heads", "divisible"]),
        (dict(patch_embed="tubelet", tubelet_size=3), ["num_frames", "tubelet_size"]),
        (dict(patch_embed="tubelet", tubelet_size=2, use_image_num=2), ["use_image_num", "tubelet"]),
        (dict(tubelet_size=2), ["tubelet_size", "patch_embed"]),
        (dict(variant=4, hidden_size=384, num_heads=3), ["variant 4", "even"]),
        (dict(class_dropout_prob=1.5), ["class_dropout_prob"]),
        (dict(input_size=33), ["input_size", "patch_size"]),
        (dict(patch_embed="cube"), ["patch_embed", "cube"]),
        (dict(injection="film"), ["injection", "film"]),
        (dict(temporal_position="learned"), ["temporal_position"]),
        (dict(depth="12"), ["depth"]),
        (dict(image_size=100), ["image_size", "multiple of 8"]),
    ],
)
def test_invalid_options_are_rejected_with_a_message(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        LatteConfig.preset("Latte-S/2", **kwargs)
    for w in words:
        assert w in str(info.value)


def test_unknown_keyword_and_preset() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'depht'"):
        LatteConfig(depht=4)
    with pytest.raises(ValueError, match="unknown preset"):
        LatteConfig.preset("Latte-M/2")
    with pytest.raises(AttributeError):
        LatteConfig().no_such_field  # noqa: B018


def test_flash_attention_needs_its_feature() -> None:
    if latte_rs.FLASH_ATTN_AVAILABLE:
        pytest.skip("built with flash-attn")
    with pytest.raises(RuntimeError, match="flash-attn"):
        LatteConfig(attention="flash")
