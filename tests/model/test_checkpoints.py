"""Model files: opening trained weights (official `.pt` checkpoints read without running pickled code, safetensors
files and latte-rs checkpoints, with the model options inferred from the tensor shapes) and writing them
(`LatteModel.save` / `load`, atomic under a kill).

Hostile files are in tests/robustness/test_checkpoints.py; the Trainer's checkpoints (exact resume, the save
protocol under a crash) in tests/training/."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import load_official_case, tiny_config

try:
    import torch
except ImportError:
    torch = None
# Official checkpoints are written here with torch.save; latte-rs's own files need no torch.
needs_torch = pytest.mark.skipif(torch is None, reason="torch writes the official-format checkpoints")

CASES = ["v1_uncond", "v1_class", "v1_img_class", "v1_p4_class"]
INFERRED = ["depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "num_frames",
            "learn_sigma", "num_classes", "mlp_ratio"]


def max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch_state(params: dict, scale: float = 1.0, prefix: str = "") -> dict:
    return {prefix + k: torch.from_numpy(np.array(v) * scale) for k, v in params.items()}


@needs_torch
@pytest.mark.parametrize("name", CASES)
def test_official_train_checkpoints_load_and_reproduce_the_official_outputs(name, tmp_path):
    """A checkpoint as the official train.py writes it ({"model", "ema"}, here with the official golden model's
    weights as "ema", "model" different, and an argparse Namespace as official scripts add) gives the official
    model's outputs, with every option inferred from the shapes (and the head count given: width 64 is no
    preset)."""
    case = load_official_case(name)
    path = tmp_path / "0001000.pt"
    torch.save({"model": _torch_state(case["params"], 0.5), "ema": _torch_state(case["params"]),
                "args": argparse.Namespace(model="Latte-S/2", num_frames=16)}, path)
    # Not in the shapes: the head count (width 64 is no preset), the CFG dropout (0 in the image case, whose label
    # table then has no extra row) and the image frames per clip.
    given = {k: case["config"].get(k, 0) for k in ("num_heads", "class_dropout_prob", "use_image_num")}
    model = latte_rs.LatteModel.from_checkpoint(str(path), **given)
    for key in INFERRED:
        assert getattr(model.config, key) == case["config"][key], key
    out = model(case["x"], case["t"], y=case.get("y"), y_image=case.get("y_image"))
    assert max_rel_err(out, case["out"]) <= 1e-5
    raw = latte_rs.LatteModel.from_checkpoint(str(path), use_ema=False, **given)
    some = "final_layer.linear.weight"
    np.testing.assert_allclose(raw.state_dict()[some], 0.5 * case["params"][some], rtol=1e-6)


@needs_torch
def test_bare_and_prefixed_state_dicts_and_safetensors_load(tmp_path):
    from safetensors.torch import save_file

    case = load_official_case("v1_class")
    heads = case["config"]["num_heads"]
    ref = case["out"]
    torch.save(_torch_state(case["params"], prefix="module."), tmp_path / "ddp.pth")  # DDP-wrapped, bare
    save_file(_torch_state(case["params"]), str(tmp_path / "bare.safetensors"))
    for f in ("ddp.pth", "bare.safetensors"):
        model = latte_rs.LatteModel.from_checkpoint(str(tmp_path / f), num_heads=heads)
        assert max_rel_err(model(case["x"], case["t"], y=case["y"]), ref) <= 1e-5, f
    # Our own files: LatteModel.save keeps the config, a Trainer checkpoint folder holds model and EMA.
    model.save(str(tmp_path / "ours.safetensors"))
    again = latte_rs.LatteModel.from_checkpoint(str(tmp_path / "ours.safetensors"))
    assert max_rel_err(again(case["x"], case["t"], y=case["y"]), ref) <= 1e-5
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), ema_decay=0.5, seed=0)
    trainer.step(case["x"], labels=case["y"])  # the EMA now differs from the weights
    trainer.save(str(tmp_path / "ckpt"))
    ema = latte_rs.LatteModel.from_checkpoint(str(tmp_path / "ckpt"))
    raw = latte_rs.LatteModel.from_checkpoint(str(tmp_path / "ckpt"), use_ema=False)
    key = "final_layer.linear.weight"
    np.testing.assert_array_equal(ema.state_dict()[key], trainer.ema_state_dict()[key])
    np.testing.assert_array_equal(raw.state_dict()[key], trainer.model.state_dict()[key])
    assert not np.array_equal(ema.state_dict()[key], raw.state_dict()[key])


@needs_torch
def test_presets_supply_the_head_count_and_widths_of_presets_are_recognised(tmp_path):
    cfg = latte_rs.LatteConfig.preset("Latte-S/8", num_frames=2, input_size=16, num_classes=3)
    model = latte_rs.LatteModel(cfg, seed=1)
    torch.save({"ema": _torch_state(model.state_dict())}, tmp_path / "s.pt")
    loaded = latte_rs.LatteModel.from_checkpoint(str(tmp_path / "s.pt"))  # width 384: Latte-S, 6 heads
    assert loaded.config.num_heads == 6 and loaded.config.num_classes == 3 and loaded.config.depth == 12
    case = load_official_case("v1_uncond")
    torch.save(_torch_state(case["params"]), tmp_path / "u.pt")
    with pytest.raises(ValueError, match="hidden size 64 is not a Latte preset's; pass num_heads="):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "u.pt"))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@needs_torch
def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(_Payload(str(marker)), tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"holds a call to (posix|os|nt)\.system\(\.\.\.\), not a checkpoint dict"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "evil.pt"))
    case = load_official_case("v1_class")
    state = _torch_state(case["params"])
    state["blocks.0.attn.qkv.weight"] = _Payload(str(marker))
    torch.save({"ema": state}, tmp_path / "evil2.pt")
    with pytest.raises(ValueError, match=r"entry ema/blocks\.0\.attn\.qkv\.weight holds a call to .*system"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "evil2.pt"), num_heads=4)
    assert not marker.exists()


@needs_torch
def test_wrong_files_name_the_file_and_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(ValueError, match="junk.pt: not a PyTorch zip checkpoint"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "junk.pt"))
    case = load_official_case("v1_class")
    state = _torch_state(case["params"])
    state["blocks.1.mlp.fc2.bias"] = torch.zeros(3)
    torch.save({"ema": state}, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"(?s)shape.pt: .*blocks\.1\.mlp\.fc2\.bias: expected \[64\], got \[3\]"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "shape.pt"), num_heads=4)
    del state["blocks.1.mlp.fc2.bias"]
    torch.save({"ema": state}, tmp_path / "missing_key.pt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.1\.mlp\.fc2\.bias"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "missing_key.pt"), num_heads=4)
    torch.save({"ema": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor \"x_embedder.proj.weight\"; not a Latte state dict"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "other.pt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="not a latte-rs checkpoint"):
        latte_rs.LatteModel.from_checkpoint(str(tmp_path / "empty_dir"))


def test_save_and_load(tmp_path: Path, rng) -> None:
    cfg = tiny_config(num_classes=5, variant=3, temporal_position="rope")
    model = latte_rs.LatteModel(cfg, seed=1)
    model.load_state_dict({k: v + 0.01 for k, v in model.state_dict().items()})
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = latte_rs.LatteModel.load(path)
    assert loaded.config == cfg
    x, t = rng.standard_normal((2, 4, 4, 8, 8), dtype=np.float32), np.array([3, 999])
    np.testing.assert_array_equal(loaded(x, t, y=np.array([1, 2])), model(x, t, y=np.array([1, 2])))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary files left

    with pytest.raises(FileNotFoundError):
        latte_rs.LatteModel.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        model.save(tmp_path / "no" / "such" / "dir.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError):
        latte_rs.LatteModel.load(tmp_path / "junk.safetensors")


CRASHING_SAVE = """
import sys, latte_rs
model = latte_rs.LatteModel(latte_rs.LatteConfig.preset("Latte-B/2", num_frames=16, input_size=32), seed=1)
print("saving", flush=True)
model.save(sys.argv[1])
"""


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_a_save_killed_midway_leaves_a_readable_checkpoint(tmp_path: Path, delay: float) -> None:
    """Kill a process while it overwrites a checkpoint: the file is the old one or the new one, never a torn mix."""
    path = tmp_path / "model.safetensors"
    old = latte_rs.LatteModel(tiny_config(), seed=1)
    old.save(path)
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "saving"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loaded = latte_rs.LatteModel.load(path)
    if loaded.config == old.config:
        assert all(np.array_equal(v, old.state_dict()[k]) for k, v in loaded.state_dict().items())
    else:
        assert loaded.config.hidden_size == 768  # the save finished before the kill


def test_open_model_opens_every_kind_and_refuses_the_other_kind_before_building(tmp_path):
    """latte_rs.open_model is the one entry for model files: it says what a file holds, which weights it took and
    what the model predicts, and a caller that wants one kind gets the other refused by name."""
    from latte_rs.tiny_t2v import TINY_T2V

    model = latte_rs.LatteModel(tiny_config(), seed=0)
    model.save(tmp_path / "m.safetensors")
    opened = latte_rs.open_model(tmp_path / "m.safetensors")
    assert (opened.kind, opened.weights, opened.diffusion, opened.prediction_type) == ("latte", None, None, "epsilon")
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 8, 8), dtype=np.float32)  # (B, F, C, H, W)
    np.testing.assert_array_equal(opened.model(x, np.array([3])), model(x, np.array([3])))
    # A diffusers pipeline folder: its transformer, predicting what the folder's scheduler says (the built-in
    # text model predicts the velocity); the transformer folder alone says nothing, so the noise.
    pipe = latte_rs.open_model(TINY_T2V)
    assert (pipe.kind, pipe.prediction_type) == ("text", "v_prediction")
    assert isinstance(pipe.model, latte_rs.LatteT2VTransformer)
    assert latte_rs.open_model(TINY_T2V / "transformer").prediction_type == "epsilon"
    with pytest.raises(ValueError, match="text-to-video model.*LatteT2VTransformer"):
        latte_rs.open_model(TINY_T2V, kind="latte")
    with pytest.raises(ValueError, match="text-to-video model"):
        latte_rs.LatteModel.from_checkpoint(TINY_T2V / "transformer")
    with pytest.raises(ValueError, match="class-conditional or unconditional Latte.*LatteModel.from_checkpoint"):
        latte_rs.LatteT2VTransformer.from_checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match='kind: expected "latte" or "text", got "video"'):
        latte_rs.open_model(tmp_path / "m.safetensors", kind="video")
