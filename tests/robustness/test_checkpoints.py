"""Model files and trainer checkpoints on disk: regressions for defects the fuzzing campaign found (issue 15; the
campaign runs in test_fuzz.py), one or more asserts each.

Hostile files are refused before anything is allocated or read outside the checkpoint: a model file declaring a huge
model, named pipes and devices, a manifest naming paths outside the folder, flipped bits under valid safetensors
(CRC-32), a damaged official pickle, a diffusion table shorter than its schedule; and what is written is what is read
back (float64 state, a step counter at its maximum).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import random_latents, tiny_config


def _rewrite_safetensors_metadata(path: Path, edit) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["latte_config"] = json.dumps(edit(json.loads(header["__metadata__"]["latte_config"])))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _saved_checkpoint(tmp_path: Path) -> Path:
    """A freshly saved trainer checkpoint of the tiny model (step 0)."""
    ckpt = tmp_path / "ckpt"
    latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), seed=0), latte_rs.GaussianDiffusion()).save(ckpt)
    return ckpt


def _refresh_manifest(ckpt: Path) -> None:
    """Recomputes the manifest's sizes and CRC-32s, as a hostile author of a checkpoint would."""
    manifest = json.loads((ckpt / "trainer.json").read_text())
    for name, entry in manifest["files"].items():
        data = (ckpt / name).read_bytes()
        entry["bytes"], entry["crc32"] = len(data), zlib.crc32(data)
    (ckpt / "trainer.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("edit", "error"), [
    (lambda c: {**c, "hidden_size": 10**6}, ValueError),
    (lambda c: {**c, "hidden_size": 65536, "num_heads": 16, "depth": 4096}, MemoryError),
])
def test_a_model_file_declaring_a_huge_model_is_refused_everywhere(tmp_path, edit, error):
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    path = tmp_path / "m.safetensors"
    model.save(path)
    _rewrite_safetensors_metadata(path, edit)
    with pytest.raises(error):
        latte_rs.LatteModel.load(path)
    with pytest.raises(error):
        latte_rs.LatteModel.from_checkpoint(path)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion())
    ckpt = tmp_path / "ckpt"
    trainer.save(ckpt)
    _rewrite_safetensors_metadata(ckpt / "model.safetensors", edit)
    _refresh_manifest(ckpt)  # valid checksums: only the sizes can stop it
    with pytest.raises(error):
        latte_rs.Trainer.resume(ckpt)


def test_named_pipes_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            latte_rs.LatteModel.load(fifo)
        except Exception as e:  # noqa: BLE001 - the type is asserted below
            result["error"] = e

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "loading a named pipe blocked"
    assert isinstance(result.get("error"), ValueError) and "regular file" in str(result["error"])
    with pytest.raises(ValueError, match="regular file"):
        latte_rs.LatteModel.from_checkpoint("/dev/zero")


def test_a_manifest_cannot_point_resume_outside_the_checkpoint(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    manifest = json.loads((ckpt / "trainer.json").read_text())
    for name in ("/dev/zero", "../outside.safetensors"):
        files = dict(manifest["files"])
        files[name] = files.pop("ema.safetensors")
        (ckpt / "trainer.json").write_text(json.dumps({**manifest, "files": files}))
        with pytest.raises(ValueError, match="not a file name inside the checkpoint"):
            latte_rs.Trainer.resume(ckpt)


def test_from_checkpoint_on_a_trainer_folder_verifies_the_checksums(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    latte_rs.LatteModel.from_checkpoint(ckpt)
    data = bytearray((ckpt / "ema.safetensors").read_bytes())
    data[-5] ^= 0x10  # a flipped bit in a weight: still a valid safetensors file
    (ckpt / "ema.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC-32"):
        latte_rs.LatteModel.from_checkpoint(ckpt)


def test_a_corrupt_official_pickle_is_a_value_error(tmp_path):
    torch = pytest.importorskip("torch")
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    path = tmp_path / "official.pt"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in model.state_dict().items()}}, path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:2] + b"\xff" * 8 + b[10:], lambda b: b.replace(b"q", b"r")):
        bad = tmp_path / "bad.pt"
        with zipfile.ZipFile(bad, "w") as z:
            for n, data in entries.items():
                z.writestr(n, damage(data) if n == pkl else data)
        with pytest.raises(ValueError):
            latte_rs.LatteModel.from_checkpoint(bad, preset="Latte-S/2", **_tiny_overrides())


def _tiny_overrides() -> dict:
    cfg = tiny_config()
    return dict(depth=cfg.depth, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, num_frames=cfg.num_frames,
                input_size=cfg.input_size, in_channels=cfg.in_channels)


def test_a_resumed_diffusion_table_shorter_than_its_schedule_is_refused(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    diffusion = json.loads((ckpt / "diffusion.json").read_text())
    diffusion["posterior_mean_coef1"] = diffusion["posterior_mean_coef1"][:10]
    (ckpt / "diffusion.json").write_text(json.dumps(diffusion))
    _refresh_manifest(ckpt)
    with pytest.raises(ValueError, match="posterior_mean_coef1"):
        latte_rs.Trainer.resume(ckpt)


def test_a_step_counter_at_its_maximum_refuses_to_wrap(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    manifest = json.loads((ckpt / "trainer.json").read_text())
    assert "step" in manifest, sorted(manifest)
    manifest["step"] = 2**64 - 1
    (ckpt / "trainer.json").write_text(json.dumps(manifest))
    resumed = latte_rs.Trainer.resume(ckpt)
    assert resumed.step_count == 2**64 - 1
    with pytest.raises(ValueError, match="maximum"):
        resumed.step(random_latents(tiny_config()))


def test_float64_training_state_round_trips_exactly(tmp_path):
    model = latte_rs.LatteModel(tiny_config(), dtype="float64", seed=0)
    d = latte_rs.GaussianDiffusion(timestep_respacing="37", noise_schedule="squaredcos_cap_v2")
    trainer = latte_rs.Trainer(model, d)
    trainer.save(tmp_path / "ckpt")
    back = latte_rs.Trainer.resume(tmp_path / "ckpt").diffusion.tables()
    for name, table in d.tables().items():
        assert table.dtype == np.float64
        assert np.array_equal(table.view(np.uint64), back[name].view(np.uint64)), name
