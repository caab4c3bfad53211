"""`latte_rs.train` and `latte-rs train`: official YAML configs, logs, plots, checkpoints, resume."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from latte_rs.training import batches, latest_checkpoint, load_config, model_config

CONFIGS = Path(__file__).parent / "fixtures" / "configs"
TINY = {
    "dataset": "synthetic",
    "model": "Latte-S/2",
    "num_frames": 4,
    "image_size": 8,
    "pixel_space": True,
    "model_config": {"depth": 2, "hidden_size": 32, "num_heads": 2},
    "local_batch_size": 2,
    "learning_rate": 1e-3,
    "log_every": 2,
    "ckpt_every": 3,
    "num_clips": 16,
    "global_seed": 11,
}


@pytest.mark.parametrize("name", ["ucf101_train.yaml", "ffs_img_train.yaml", "taichi_train.yaml"])
def test_official_yaml_configs_are_read_as_they_are(name):
    cfg = load_config(CONFIGS / name)
    assert cfg["learning_rate"] == 1e-4  # "1e-4" is a string in YAML 1.1
    assert cfg["clip_max_norm"] == 0.1 and cfg["global_seed"] == 3407
    mc = model_config(cfg)
    assert (mc.depth, mc.hidden_size, mc.patch_size, mc.input_size, mc.num_frames) == (28, 1152, 2, 32, 16)
    if name.startswith("ucf101"):
        assert mc.num_classes == 101
    if name.startswith("ffs_img"):
        assert mc.use_image_num == 8 and mc.num_classes == 0
    with pytest.raises(FileNotFoundError, match="root"):  # the config's /path/to/datasets/... placeholder
        latte_rs.training.make_dataset(cfg)


def test_bad_configs_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        load_config({"learning_rate": "fast"})
    with pytest.raises(ValueError, match="unknown keys"):
        load_config({"lerning_rate": 1e-4})
    with pytest.raises(ValueError, match="num_classes"):
        load_config({"extras": 2})
    with pytest.raises(ValueError, match="prediction_type.*'v'"):
        load_config({"prediction_type": "v"})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_batches_are_deterministic_and_resumable():
    ds = latte_rs.data.SyntheticVideos(num_clips=6, num_frames=4, image_size=8, seed=0)
    full = [b for _, b in zip(range(7), batches(ds, 2, seed=3), strict=False)]
    later = [b for _, b in zip(range(3), batches(ds, 2, seed=3, start_step=4), strict=False)]
    for a, b in zip(full[4:], later, strict=True):
        np.testing.assert_array_equal(a.latents, b.latents)
        np.testing.assert_array_equal(a.labels, b.labels)
    joint = next(batches(ds, 2, seed=3, use_image_num=3, num_frames=4))
    assert joint.latents.shape == (2, 7, 3, 8, 8) and joint.image_labels.shape == (2, 3)


def _losses(path: Path) -> list[float]:
    with (path / "loss.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_train_writes_logs_plot_checkpoints_and_resumes_exactly(tmp_path):
    straight = latte_rs.train(TINY, output_dir=tmp_path / "a", max_steps=8, progress=False)
    assert straight.trainer.step_count == 8
    assert [h["step"] for h in straight.history] == [2, 4, 6, 8]
    png = (tmp_path / "a" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["0000003", "0000006", "0000008"]

    latte_rs.train(TINY, output_dir=tmp_path / "b", max_steps=6, progress=False)
    resumed = latte_rs.train(TINY, output_dir=tmp_path / "b", max_steps=8, resume=True, progress=False)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # A checkpoint's EMA weights load for sampling.
    ema = latte_rs.LatteModel.load(tmp_path / "a" / "checkpoints" / "0000008" / "ema.safetensors")
    assert ema.config == straight.model.config


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    latte_rs.train(TINY, output_dir=tmp_path, max_steps=6, progress=False)
    (tmp_path / "checkpoints" / "0000006" / "model.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="0000006"):
        assert latest_checkpoint(tmp_path / "checkpoints").name == "0000003"


def test_class_conditional_image_joint_training_runs(tmp_path):
    cfg = dict(TINY, extras=2, num_classes=4, use_image_num=2, gradient_accumulation_steps=2,
               gradient_checkpointing=True, clip_max_norm=0.5, start_clip_iter=1, lr_warmup_steps=2)
    result = latte_rs.train(cfg, output_dir=tmp_path, max_steps=3, progress=False)
    mc = result.model.config
    assert mc.num_classes == 4 and mc.use_image_num == 2
    assert result.trainer.options["grad_clip"] == 0.5 and result.trainer.options["gradient_checkpointing"]


def test_a_velocity_model_trains_and_samples_with_its_own_prediction_type(tmp_path, monkeypatch):
    """prediction_type: v_prediction trains the velocity (the trainer's process says so in the checkpoint), and a
    pipeline made from the checkpoint samples with it, whatever sampler is asked for; models without a training
    process of ours (official checkpoints, model files) predict the noise."""
    from latte_rs import cli
    from latte_rs.pipelines import LattePipeline
    from latte_rs.tiny_t2v import TINY_T2V

    result = latte_rs.train(dict(TINY, prediction_type="v_prediction"), output_dir=tmp_path, max_steps=3,
                            progress=False)
    ckpt = tmp_path / "checkpoints" / "0000003"

    def prediction_type(path):
        return latte_rs.open_model(path).prediction_type

    assert prediction_type(ckpt) == "v_prediction"
    # A model file of the checkpoint is the same model; copied out of it, nothing says, and Latte's noise it is.
    assert prediction_type(ckpt / "ema.safetensors") == "v_prediction"
    with monkeypatch.context() as m:  # a bare file name inside the checkpoint: its folder is the working directory
        m.chdir(ckpt)
        assert prediction_type("ema.safetensors") == "v_prediction"
    shutil.copy(ckpt / "ema.safetensors", tmp_path / "ema.safetensors")
    assert prediction_type(tmp_path / "ema.safetensors") == "epsilon"
    # The trainer's loss is the velocity's: the same step on a noise model gives another loss.
    eps = latte_rs.train(TINY, output_dir=tmp_path / "eps", max_steps=3, progress=False)
    assert prediction_type(tmp_path / "eps" / "checkpoints" / "0000003") == "epsilon"
    assert result.history[-1]["loss"] != eps.history[-1]["loss"]
    pipe = LattePipeline.from_pretrained(ckpt)
    assert pipe.scheduler.config["prediction_type"] == "v_prediction"
    # The process is read as a resume reads it: a missing or damaged one is an error, never a silent "epsilon".
    assert latte_rs.GaussianDiffusion.load(ckpt / "diffusion.json").prediction_type == "v_prediction"
    with pytest.raises(FileNotFoundError):
        latte_rs.GaussianDiffusion.load(tmp_path / "missing.json")
    damaged = tmp_path / "damaged"
    shutil.copytree(ckpt, damaged)
    (damaged / "diffusion.json").write_text((ckpt / "diffusion.json").read_text()[:1000])
    with pytest.raises(ValueError, match="diffusion.json: not a diffusion process"):
        latte_rs.GaussianDiffusion.load(damaged)
    # Opening the damaged checkpoint (or a model file inside it) refuses it: its process fails the manifest.
    for path in (damaged, damaged / "ema.safetensors"):
        with pytest.raises(ValueError, match="diffusion.json: corrupt or incomplete checkpoint file"):
            prediction_type(path)
    # Every sampler `latte-rs sample` makes is told what the model predicts: the trainer's velocity here, the
    # scheduler config's for a diffusers folder (the built-in text model predicts the velocity too).
    made = []
    real = cli._scheduler
    monkeypatch.setattr(cli, "_scheduler", lambda *a: made.append(real(*a)) or made[-1])
    samplers = ("ddpm", "ddim", "euler", "dpm")
    for sampler in samplers:
        assert cli.main(["sample", str(ckpt), "--sampler", sampler, "--steps", "2", "--no-progress", "--format",
                         "png", "--output-dir", str(tmp_path / sampler)]) == 0
    assert cli.main(["sample", str(TINY_T2V), "--prompt", "a red square moving left", "--sampler", "ddim",
                     "--steps", "2", "--no-progress", "--format", "png", "--output-dir", str(tmp_path / "t2v")]) == 0
    assert [type(s).__name__ for s in made] == ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                                                 "DPMSolverMultistepScheduler", "DDIMScheduler"]
    assert [s.config["prediction_type"] for s in made] == ["v_prediction"] * 5


def test_wrong_dataset_shape_is_explained(tmp_path):
    ds = [(np.zeros((4, 3, 8, 8), np.float32), 0)] * 4
    with pytest.raises(ValueError, match="encode them first"):
        latte_rs.train(dict(TINY, pixel_space=False, image_size=64), ds, output_dir=tmp_path, progress=False)


def test_cli_train(tmp_path):
    cmd = [sys.executable, "-m", "latte_rs.cli", "train", "--config", str(CONFIGS / "ucf101_train.yaml"),
           "--set", "dataset=synthetic", "--set", "model=Latte-S/2", "--set", "num_frames=4",
           "--set", "image_size=8", "--set", "pixel_space=true", "--set", "num_classes=4",
           "--set", "model_config={depth: 2, hidden_size: 32, num_heads: 2}", "--set", "local_batch_size=2",
           "--set", "num_clips=8", "--steps", "2", "--output-dir", str(tmp_path / "x"), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    assert summary["steps"] == 2 and Path(summary["checkpoint"]).is_dir()
    bad = subprocess.run([sys.executable, "-m", "latte_rs.cli", "train", "--config", str(CONFIGS / "ucf101_train.yaml"),
                          "--steps", "1", "--output-dir", str(tmp_path / "y")], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "/path/to/datasets" in bad.stderr


def test_torch_dataset_in_the_official_dict_format(tmp_path):
    torch = pytest.importorskip("torch")

    class Official(torch.utils.data.Dataset):
        """Yields what the official datasets yield: {"video": (F, C, H, W) tensor, "video_name": label}."""

        def __len__(self):
            return 4

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"video": torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, "video_name": i % 2}

    cfg = dict(TINY, extras=2, num_classes=2)
    result = latte_rs.train(cfg, Official(), output_dir=tmp_path, max_steps=2, progress=False)
    assert result.trainer.step_count == 2 and result.model.config.num_classes == 2
