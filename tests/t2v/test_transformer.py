"""The text-to-video transformer against diffusers' LatteTransformer3DModel (golden files from
tests/t2v/fixtures/make_t2v_golden.py, plus live runs of diffusers), and loading diffusers folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import latte_rs

FIXTURES = Path(__file__).parent / "fixtures" / "transformer"
CASES = ["video", "image", "no_temporal", "odd", "large_sample"]


def max_rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _case(name):
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", CASES)
def test_outputs_match_diffusers_golden(name):
    case = _case(name)
    model = latte_rs.LatteT2VTransformer.from_pretrained(FIXTURES / name)  # sharded safetensors + index
    assert model.config == {**model.config, **json.loads(str(case["config"]))}
    out = model(case["x"], case["t"], case["caption"], enable_temporal_attentions=bool(case["temporal"]))
    assert out.shape == case["out"].shape
    assert max_rel_err(out, case["out"]) <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_outputs_match_diffusers_live(name):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    case = _case(name)
    ref = diffusers.LatteTransformer3DModel.from_pretrained(FIXTURES / name).eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(case["x"]), timestep=torch.from_numpy(case["t"]),
                   encoder_hidden_states=torch.from_numpy(case["caption"]),
                   enable_temporal_attentions=bool(case["temporal"])).sample.numpy()
    ours = latte_rs.LatteT2VTransformer.from_pretrained(FIXTURES / name)
    assert max_rel_err(ours(case["x"], case["t"], case["caption"], bool(case["temporal"])), want) <= 1e-5


def test_a_single_file_save_and_a_state_dict_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=4, num_layers=1,
               cross_attention_dim=8, sample_size=4, patch_size=2, caption_channels=6, video_length=2,
               norm_type="ada_norm_single", activation_fn="gelu-approximate", attention_bias=True,
               norm_elementwise_affine=False, norm_eps=1e-6)
    torch.manual_seed(0)
    ref = diffusers.LatteTransformer3DModel(**cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "single")
    assert (tmp_path / "single" / "diffusion_pytorch_model.safetensors").is_file()
    ours = latte_rs.LatteT2VTransformer.from_pretrained(tmp_path / "single")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 2, 4, 4), dtype=np.float32)
    c = rng.standard_normal((1, 3, 6), dtype=np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), timestep=torch.tensor([7]), encoder_hidden_states=torch.from_numpy(c)).sample
    assert max_rel_err(ours(x, np.array([7]), c), want.numpy()) <= 1e-5
    # state_dict / load_state_dict with diffusers' names.
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    fresh = latte_rs.LatteT2VTransformer(cfg, seed=3)
    assert set(fresh.state_dict()) == set(sd)
    fresh.load_state_dict(sd)
    assert max_rel_err(fresh(x, np.array([7]), c), want.numpy()) <= 1e-5
    assert fresh.num_parameters() == sum(p.numel() for p in ref.parameters())


def test_wrong_or_missing_files_name_the_file_and_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a diffusers transformer/ folder"):
        latte_rs.LatteT2VTransformer.from_pretrained(tmp_path / "nowhere")
    folder = tmp_path / "t"
    shutil.copytree(FIXTURES / "video", folder)
    (folder / "config.json").rename(folder / "config.bak")
    with pytest.raises(FileNotFoundError, match="config.json"):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)
    (folder / "config.bak").rename(folder / "config.json")
    shard = sorted(folder.glob("*-00003-of-*.safetensors"))[0]
    shard.rename(folder / "moved.bin")
    with pytest.raises(FileNotFoundError, match=rf"{shard.name} \(a shard listed in .*index.json for \d+ keys, e\.g\."):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)
    (folder / "moved.bin").rename(shard)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "caption_channels": 13}))
    with pytest.raises(ValueError, match=r"mis-shaped keys \(1\): caption_projection\.linear_1\.weight: expected "
                                         r"\[16, 13\], got \[16, 12\]"):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "num_layers": 1}))
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): .*transformer_blocks\.1\."):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "norm_type": "layer_norm"}))
    with pytest.raises(ValueError, match="config.json: .*norm_type \"layer_norm\": only \"ada_norm_single\""):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)


def test_bad_inputs_raise_named_errors():
    case = _case("video")
    model = latte_rs.LatteT2VTransformer.from_pretrained(FIXTURES / "video")
    x, t, c = case["x"], case["t"], case["caption"]
    with pytest.raises(ValueError, match=r"hidden_states: expected shape \(B, 4, F, H, W\)"):
        model(x[:, :3], t, c)
    with pytest.raises(ValueError, match=r"hidden_states: expected 4 frames \(video_length\), 1 \(an image\), or more "
                                         r"for image-video joint clips, got 3 frames"):
        model(x[:, :, :3], t, c)
    # More frames are joint clips: they need one caption per image frame after the video's.
    with pytest.raises(ValueError, match=r"encoder_hidden_states: expected shape \(2, 2, S, 12\): the video's caption, "
                                         r"then one per image frame \(5 frames are 4 video frames and 1 images\)"):
        model(np.concatenate([x, x[:, :, :1]], axis=2), t, c)
    with pytest.raises(ValueError, match=r"encoder_hidden_states: expected shape \(2, S, 12\)"):
        model(x, t, c[..., :5])
    with pytest.raises(ValueError, match=r"timestep: expected a scalar, shape \(2,\) or \(2, 4\) \(one per frame\)"):
        model(x, np.array([1, 2, 3]), c)
    with pytest.raises(ValueError, match=r"timestep: expected a scalar, shape \(2,\) or \(2, 4\)"):
        model(x, np.zeros((2, 3), np.float32), c)
    single = model(x, np.array(t[0]), c)  # a scalar timestep is broadcast
    both = model(x, np.array([t[0], t[0]]), c)
    np.testing.assert_array_equal(single, both)


def test_the_config_is_a_class_with_diffusers_keys():
    """LatteT2VConfig mirrors LatteConfig: diffusers' config.json keys with Latte-1's defaults, checked key by key,
    immutable with replace, round trips through dicts, JSON and pickle; it also reads as a mapping, as diffusers'
    config objects do, and the transformer takes it or a dict alike."""
    import pickle

    cfg = latte_rs.LatteT2VConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                  num_layers=1, cross_attention_dim=16, sample_size=8, patch_size=2,
                                  caption_channels=12, video_length=3)
    assert latte_rs.LatteT2VConfig().num_layers == 28 and latte_rs.LatteT2VConfig()["caption_channels"] == 4096
    assert cfg.video_length == cfg["video_length"] == dict(cfg)["video_length"] == 3 and cfg.inner_dim == 16
    assert latte_rs.LatteT2VConfig.from_dict(cfg.to_dict()) == cfg
    assert latte_rs.LatteT2VConfig.from_json(cfg.to_json()) == cfg == pickle.loads(pickle.dumps(cfg))
    assert cfg.replace(video_length=5).video_length == 5 and cfg.video_length == 3
    a, b = latte_rs.LatteT2VTransformer(cfg, seed=1), latte_rs.LatteT2VTransformer(cfg.to_dict(), seed=1)
    assert isinstance(a.config, latte_rs.LatteT2VConfig) and a.config == cfg
    x, c = np.zeros((1, 4, 3, 8, 8), np.float32), np.ones((1, 2, 12), np.float32)
    np.testing.assert_array_equal(a(x, np.array([5]), c), b(x, np.array([5]), c))
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_frames'"):
        latte_rs.LatteT2VConfig(num_frames=3)
    with pytest.raises(ValueError, match="video_length"):
        cfg.replace(video_length=0)
    with pytest.raises(ValueError, match="cross_attention_dim 12 must equal"):
        cfg.replace(cross_attention_dim=12)
    with pytest.raises(TypeError, match="config: expected a LatteT2VConfig, a dict"):
        latte_rs.LatteT2VTransformer([1, 2])
    with pytest.raises(KeyError):
        cfg["num_frames"]
    # As diffusers' configs: equal to the dict of its fields, not to a dict that differs.
    assert cfg == cfg.to_dict() and cfg != {**cfg.to_dict(), "video_length": 4} and cfg != "cfg"
