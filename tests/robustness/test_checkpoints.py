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
import shutil
import struct
import subprocess
import sys
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


# Issue 30: saving never deletes what is not a checkpoint or not the save's own; loaded state is checked like the
# weights; official pickles with shared entries load and pickles nested beyond any checkpoint's depth are refused.


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_saving_over_a_folder_that_is_not_a_checkpoint_is_refused_and_deletes_nothing(tmp_path):
    trainer = latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), seed=0), latte_rs.GaussianDiffusion())
    exp = tmp_path / "experiment"
    (exp / "checkpoints").mkdir(parents=True)
    (exp / "notes.txt").write_text("three weeks of work")
    (exp / "trainer.json").write_text(json.dumps({"format": "someone-elses", "files": {}}))
    with pytest.raises(ValueError, match=str(exp)) as e:
        trainer.save(exp)  # the typo of trainer.save(exp / "checkpoints" / "0000101")
    assert "not a latte-rs checkpoint" in str(e.value)
    assert sorted(p.name for p in exp.iterdir()) == ["checkpoints", "notes.txt", "trainer.json"]
    assert (exp / "notes.txt").read_text() == "three weeks of work"
    assert _hidden(tmp_path) == []
    # An empty folder and an existing checkpoint are replaced.
    (tmp_path / "empty").mkdir()
    trainer.save(tmp_path / "empty")
    trainer.save(tmp_path / "empty")
    assert latte_rs.Trainer.resume(tmp_path / "empty").step_count == 0
    assert _hidden(tmp_path) == []


def test_a_users_hidden_folders_beside_a_checkpoint_survive_a_save(tmp_path):
    trainer = latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), seed=0), latte_rs.GaussianDiffusion())
    ck = tmp_path / "ck"
    trainer.save(ck)
    backup = tmp_path / ".ck.backup-999999"  # named like a dead process's leftover, but the user's
    shutil.copytree(ck, backup)
    (tmp_path / ".ck.tmp-999999-0").mkdir()
    (tmp_path / ".ck.tmp-999999-0" / "mine.txt").write_text("keep")
    (tmp_path / ".ck.old-999999-3").write_text("a file, not even a folder")
    trainer.save(ck)
    assert _hidden(tmp_path) == [".ck.backup-999999", ".ck.old-999999-3", ".ck.tmp-999999-0"]
    assert sorted(os.listdir(backup)) == sorted(os.listdir(ck))
    assert (tmp_path / ".ck.tmp-999999-0" / "mine.txt").read_text() == "keep"


def _rewrite_tensors(path: Path, edit) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize(("dtype", "file", "key", "value"), [
    ("float32", "optimizer.safetensors", "v/", -1.0),
    ("float32", "optimizer.safetensors", "m/", np.nan),
    ("float32", "optimizer.safetensors", "v/", np.inf),
    ("float32", "ema.safetensors", "", np.inf),
    ("bfloat16", "optimizer.safetensors", "master/", np.nan),
])
def test_a_resumed_optimiser_state_with_impossible_values_is_refused(tmp_path, dtype, file, key, value):
    trainer = latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), dtype=dtype, seed=0), latte_rs.GaussianDiffusion())
    trainer.step(random_latents(tiny_config()))
    ckpt = tmp_path / "ckpt"
    trainer.save(ckpt)
    name = "final_layer.linear.weight"

    def edit(tensors):
        t = tensors[key + name].copy()
        t.flat[3] = value
        tensors[key + name] = t

    _rewrite_tensors(ckpt / file, edit)
    _refresh_manifest(ckpt)  # valid checksums: only the values can stop it
    with pytest.raises(ValueError, match=f"{file}.*{key}{name}"):
        latte_rs.Trainer.resume(ckpt)


@pytest.mark.parametrize("edit", [
    lambda d: {**d, **{k: [] for k, v in d.items() if isinstance(v, list)}},  # every table empty
    lambda d: {**d, "posterior_variance": [0.5 * v for v in d["posterior_variance"]]},  # right length, wrong values
    lambda d: {**d, "sqrt_alphas_cumprod": [1.0] * len(d["sqrt_alphas_cumprod"])},
])
def test_a_resumed_diffusion_process_whose_tables_disagree_with_its_betas_is_refused(tmp_path, edit):
    ckpt = _saved_checkpoint(tmp_path)
    diffusion = json.loads((ckpt / "diffusion.json").read_text())
    (ckpt / "diffusion.json").write_text(json.dumps(edit(diffusion)))
    _refresh_manifest(ckpt)
    with pytest.raises(ValueError, match="diffusion.json"):
        latte_rs.Trainer.resume(ckpt)
    with pytest.raises(ValueError, match="diffusion.json"):
        latte_rs.GaussianDiffusion.load(ckpt)


@pytest.mark.parametrize(("loss_scale", "match"), [
    ({"scale": -1.0, "clean_steps": 0}, "loss_scale"),
    ({"scale": 0.0, "clean_steps": 0}, "loss_scale"),
    ({"scale": 1e-320, "clean_steps": 0}, "loss_scale"),
    ({"scale": 65536.0, "clean_steps": 2**64 - 1}, "clean_steps"),
    (None, "loss_scale"),  # a float16 model trains with loss scaling
])
def test_a_resumed_loss_scale_that_cannot_work_is_refused(tmp_path, loss_scale, match):
    trainer = latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), dtype="float16", seed=0),
                               latte_rs.GaussianDiffusion())
    ckpt = tmp_path / "ckpt"
    trainer.save(ckpt)
    manifest = json.loads((ckpt / "trainer.json").read_text())
    assert manifest["loss_scale"] == {"scale": 65536.0, "clean_steps": 0}
    manifest["loss_scale"] = loss_scale
    (ckpt / "trainer.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=match):
        latte_rs.Trainer.resume(ckpt)


def test_a_loss_scale_on_a_float32_checkpoint_is_refused(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    manifest = json.loads((ckpt / "trainer.json").read_text())
    manifest["loss_scale"] = {"scale": 1e30, "clean_steps": 0}
    (ckpt / "trainer.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="loss_scale"):
        latte_rs.Trainer.resume(ckpt)


@pytest.mark.parametrize("first", ["model", "ema"])
def test_a_train_py_checkpoint_whose_model_and_ema_share_one_dict_loads(tmp_path, first):
    torch = pytest.importorskip("torch")
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    path = tmp_path / "shared.pt"
    other = "ema" if first == "model" else "model"
    torch.save({first: state, other: state}, path)  # one dict, pickled once: the second entry is a memo reference
    for use_ema in (True, False):
        loaded = latte_rs.LatteModel.from_checkpoint(path, preset="Latte-S/2", use_ema=use_ema, **_tiny_overrides())
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[k], v, err_msg=f"{k} (use_ema={use_ema})")


def _pickle_zip(path: Path, pickle: bytes) -> None:
    """A file laid out as torch.save writes one: a zip archive with the pickle at archive/data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("nest", [
    b"]" * 300_000 + b"a" * 299_999,  # lists in lists (EMPTY_LIST, APPEND)
    b"N" + b"\x85" * 300_000,  # one-tuples of one-tuples (TUPLE1)
    b"}" + b"(X\x01\x00\x00\x00k}" * 300_000 + b"u" * 300_000,  # dicts in dicts (MARK, key, EMPTY_DICT ... SETITEMS)
])
def test_a_pickle_nested_300000_deep_is_a_value_error_not_a_crash(tmp_path, nest):
    path = tmp_path / "deep.pt"
    _pickle_zip(path, b"\x80\x02" + nest + b".")
    # In a child process: a stack overflow would kill it (a signal), not the test run.
    script = ("import sys, latte_rs\n"
              "try:\n"
              "    latte_rs.LatteModel.from_checkpoint(sys.argv[1])\n"
              "except ValueError as e:\n"
              "    print('ValueError:', e)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "nested deeper than" in proc.stdout, proc.stdout + proc.stderr[-2000:]
