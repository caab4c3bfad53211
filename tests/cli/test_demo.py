"""`latte-rs demo` end to end (small), and the built-in tiny model against baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

import latte_rs
from latte_rs.demo import (
    GRID_SCALE,
    TINY_GUIDANCE,
    class_colour_accuracy,
    demo_config,
    pixel_fd,
    pixel_features,
    real_clips,
    tiny_model,
)
from latte_rs.training import model_config


def test_demo_writes_every_file(tmp_path, capsys):
    from PIL import Image

    from latte_rs.cli import main

    out = tmp_path / "demo"
    code = main(["demo", "--steps", "12", "--samples", "2", "--sampling-steps", "4", "--eval-clips", "8",
                 "--output-dir", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("sample_00.gif", "sample_01.gif", "sample_00.mp4", "sample_01.mp4", "grid.png", "loss.png",
                 "pretrained_00.gif", "pretrained_01.mp4", "pretrained_grid.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with Image.open(out / "sample_01.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (16, 16)
    with Image.open(out / "grid.png") as grid:  # 16×16 frames enlarged GRID_SCALE times, 2-pixel gaps
        assert grid.size == (8 * 16 * GRID_SCALE + 7 * 2, 2 * 16 * GRID_SCALE + 2)
    assert set(summary["scores"]) == {"trained", "pretrained", "untrained", "noise", "real_vs_real"}
    assert summary["scores"]["pretrained"] < summary["scores"]["untrained"]
    assert summary["class_colour_accuracy"]["real"] == 1.0
    assert summary["train_steps"] == 12 and summary["final_loss"] > 0
    # Issue 31: every sampling run used the demo's cache, and the summary has the scores without it too.
    cache = summary["cache"]
    assert summary["sampling"]["cache"] == cache["policy"] == "fastercache"
    assert cache["trained_report"]["policy"] == "fastercache" and cache["trained_report"]["uncond_skipped"] > 0
    assert set(cache["trained_without_cache"]) == {"score", "class_colour_accuracy", "psnr_db_of_cached_frames"}
    assert cache["sampling_speedup"] > 0 and "trained uncached" in cache["evaluation_seconds"]
    assert set(cache["text_to_video_without_cache"]) == set(summary["text_to_video"]["held_out_prompt_following"])


def test_demo_without_cache_samples_exactly_once(tmp_path, capsys):
    """``--cache none`` samples without a cache and so has nothing to compare; a bad policy is refused by name
    before any training."""
    from latte_rs.cli import main
    from latte_rs.demo import run_demo

    code = main(["demo", "--steps", "2", "--samples", "1", "--sampling-steps", "2", "--eval-clips", "8",
                 "--cache", "none", "--output-dir", str(tmp_path / "d"), "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cache"]["policy"] == "none" and "trained_without_cache" not in summary["cache"]
    assert "held_out_prompt_following_without_cache" not in summary["text_to_video"]
    with pytest.raises(ValueError, match=r"cache: expected one of none, teacache, fastercache, pab, got 'tea'"):
        run_demo(tmp_path / "e", cache="tea")
    assert not (tmp_path / "e").exists()


def test_the_demo_imports_nothing_optional(tmp_path):
    """The demo trains on one process: it must not import torch (0.5 GB, seconds) merely to learn that no process
    group exists, nor any other optional package it does not use (issue 35)."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom latte_rs.cli import main\n"
        f"main(['demo', '--steps', '3', '--samples', '1', '--sampling-steps', '2', '--eval-clips', '4', "
        f"'--output-dir', {str(tmp_path / 'demo')!r}, '--no-progress'])\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'jax', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_pixel_features_see_appearance_and_motion():
    """Another set of real clips is close; the same clips frozen (no motion), with their frames shuffled, or
    noise are far."""
    real, _ = real_clips(64, demo_config(), seed=5)
    assert pixel_features(real).shape == (64, 32)
    other, _ = real_clips(64, demo_config(), seed=6)
    frozen = np.repeat(real[:, :1], real.shape[1], axis=1)
    rng = np.random.default_rng(1)
    shuffled = np.stack([clip[rng.permutation(len(clip))] for clip in real])
    noise = rng.integers(0, 256, real.shape, dtype=np.uint8)
    base = pixel_fd(real, other)
    assert pixel_fd(real, frozen) > 2 * base and pixel_fd(real, shuffled) > 2 * base
    assert pixel_fd(real, noise) > 8 * base  # measured: 11.8x (frozen 4.1x, shuffled 5.2x)
    with pytest.raises(ValueError, match="multiples of 8"):
        pixel_features(np.zeros((2, 4, 12, 12, 3), np.uint8))


def test_class_colour_accuracy_reads_the_colour_of_the_shape():
    real, labels = real_clips(32, demo_config(), seed=7)
    assert class_colour_accuracy(real, labels) == 1.0
    assert class_colour_accuracy(real, (labels + 1) % 4) == 0.0
    blank = np.full_like(real, np.median(real))  # the background's value everywhere: no shape, never right
    assert class_colour_accuracy(blank, labels) == 0.0
    with pytest.raises(ValueError, match="labels"):
        class_colour_accuracy(real, labels[:3])
    with pytest.raises(ValueError, match="uint8"):
        class_colour_accuracy(real.astype(np.float32), labels)


def test_the_shipped_tiny_model_beats_noise_and_an_untrained_model():
    """Scores on 64 held-out clips with the default sampler (DDPM, 50 steps) and the tiny model's guidance."""
    cfg = demo_config()
    model = tiny_model()
    # The recipe is the demo's; the attention kernel is not part of it (the model was saved when "math" was the
    # default, which "auto" is on the CPU).
    assert repr(model.config.replace(attention="auto")) == repr(model_config(cfg))
    real, labels = real_clips(64, cfg, seed=1000)
    sampling = dict(class_labels=labels, num_inference_steps=50, guidance_scale=TINY_GUIDANCE, seed=1, progress=False)
    tiny = latte_rs.LattePipeline(model)(**sampling).frames
    fresh = latte_rs.LattePipeline(latte_rs.LatteModel(model_config(cfg), seed=0))(**sampling).frames
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    scores = {"tiny": pixel_fd(real, tiny), "untrained": pixel_fd(real, fresh), "noise": pixel_fd(real, noise)}
    assert scores["tiny"] < 0.05 * scores["untrained"], scores  # measured: 0.81 against 25.4
    assert scores["tiny"] < 0.25 * scores["noise"], scores  # against 6.86 (real vs real: 0.48)
    # Each shape is painted in its class's colour: the model learned the classes (chance is 1/4).
    assert class_colour_accuracy(tiny, labels) >= 0.95
    assert class_colour_accuracy(fresh, labels) <= 0.5
