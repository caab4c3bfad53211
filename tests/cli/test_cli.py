"""The `latte-rs` command line itself: every option of every command described in --help, `latte-rs sample` on a
class-model file writing videos, and its errors in one line naming what is wrong.

What each command computes is tested with its concept: `train` in training/, `encode` in model/test_vae.py and
data/test_captions.py, `fvd` in evaluation/, `sample --prompt` in t2v/, `demo` in test_demo.py here."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

from conftest import pixel_model
from latte_rs.cli import build_parser, main


def test_sample_cli_writes_videos_and_fails_in_one_line(tmp_path, capsys):
    pixel_model().save(str(tmp_path / "m.safetensors"))
    out = tmp_path / "out"
    code = main(["sample", str(tmp_path / "m.safetensors"), "--classes", "0", "2", "--steps", "2",
                 "--output-dir", str(out), "--no-progress", "--fps", "4"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == 2 and summary["frames"] == 4 and len(summary["files"]) == 5
    with Image.open(out / "sample_001.gif") as im:
        assert im.n_frames == 4 and im.size == (16, 16)
    assert (out / "sample_000.mp4").stat().st_size > 0 and (out / "grid.png").is_file()
    for argv, needle in [(["sample", str(tmp_path / "none.pt")], "none.pt"),
                         (["sample", str(tmp_path / "m.safetensors"), "--classes", "7"], "class_labels")]:
        assert main(argv + ["--no-progress", "--output-dir", str(out)]) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("latte-rs: error:") and needle in err and "\n" not in err


def test_sample_cli_cache(tmp_path, capsys):
    """--cache teacache samples with TeaCache and reports what it skipped, as --cache pab and --cache fastercache
    do with their defaults; a threshold without TeaCache is refused by option name."""
    pixel_model().save(str(tmp_path / "m.safetensors"))
    base = ["sample", str(tmp_path / "m.safetensors"), "--classes", "0", "--steps", "6", "--format", "png",
            "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert main(base + ["--cache", "teacache", "--cache-threshold", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cache"]["policy"] == "teacache" and summary["cache"]["threshold"] == 0.0
    assert summary["cache"]["steps_computed"] == 6 and summary["cache"]["coefficients_source"] == "latte-1"
    assert main(base) == 0 and json.loads(capsys.readouterr().out)["cache"] is None
    for name in ("pab", "fastercache"):
        assert main(base + ["--cache", name]) == 0
        summary = json.loads(capsys.readouterr().out)["cache"]
        assert summary["policy"] == name and summary["steps"] == 6 and summary["blocks_computed"] > 0
    for extra, needle in [(["--cache", "pab", "--cache-threshold", "0.1"], "--cache-threshold"),
                          (["--cache-threshold", "0.1"], "--cache-threshold")]:
        assert main(base + extra) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("latte-rs: error:") and needle in err
    with pytest.raises(SystemExit):
        main(base + ["--cache", "teacache", "--cache-threshold", "-1"])
    assert "--cache-threshold" in capsys.readouterr().err


def test_a_prompt_to_a_class_model_file_is_an_error(tmp_path, capsys):
    # The command line: a class-model file refuses --prompt, never ignores it (without a checkpoint, --prompt
    # picks the built-in text-to-video model: tests/t2v/test_tiny_t2v.py).
    pixel_model().save(str(tmp_path / "m.safetensors"))
    for argv in (["sample", str(tmp_path / "m.safetensors"), "--prompt", "a blue triangle"],):
        assert main(argv + ["--steps", "2", "--no-progress", "--output-dir", str(tmp_path / "out")]) != 0
        err = capsys.readouterr().err
        assert "--prompt" in err and "takes no text" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["ablate", "demo", "train", "encode", "fvd", "sample"])
def test_every_option_is_described_in_help(command, capsys):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    assert parser.description or any(c.dest == command and c.help for c in sub._choices_actions)
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {action.option_strings}: no help"
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(o in text for a in parser._actions for o in a.option_strings)


def _error_line(argv: list[str], capsys) -> str:
    """The one line `latte-rs argv` writes to stderr for a user's error, checked to come with a non-zero exit and
    no traceback; argparse's refusals (SystemExit) count the same as the commands' own."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code not in (0, None), f"{argv}: exit status {code}, stdout {captured.out[:200]!r}"
    assert err.startswith("latte-rs") and "error:" in err and "\n" not in err, f"{argv}: {err!r}"
    return err


def test_every_error_a_user_can_cause_is_one_line_naming_the_option(tmp_path, capsys):
    """YAML syntax errors and tags in --config / --set, --fps 0 or inf, a corrupt .npz, out-of-range counts and
    seeds: one line naming the option, a non-zero exit, never a traceback or a run that does nothing (issue 30,
    defect 12)."""
    (tmp_path / "syntax.yaml").write_text("model: Latte-S/2\nnum_frames: [16\n")
    (tmp_path / "tag.yaml").write_text("model: !!python/object/apply:os.system ['true']\n")
    (tmp_path / "list.yaml").write_text("- model\n")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "stats.npz").write_bytes(b"PK\x03\x04" + b"\0" * 60)  # a zip's magic, then nothing
    out = ["--output-dir", str(tmp_path / "out")]
    late = ["--output-dir", str(tmp_path / "late")]  # refused once the experiment folder is made
    cases = [
        (["train", "--config", str(tmp_path / "syntax.yaml")], "syntax.yaml"),
        (["train", "--config", str(tmp_path / "tag.yaml")], "tag.yaml"),
        (["train", "--config", str(tmp_path / "list.yaml")], "list.yaml"),
        (["train", "--config", str(tmp_path / "deep.yaml")], "deep.yaml"),
        (["train", "--set", "num_frames=[16"], "--set num_frames"),
        (["train", "--set", "model=!!python/name:os.system"], "--set model"),
        (["train", "--set", "novalue"], "--set"),
        # Found by the campaign's cli target: a YAML list that holds itself, a number past len()'s range, a typo in
        # model_config, one number for the synthetic shapes' size range.
        (["train", "--set", "max_train_steps=&a [*a]", *out], "max_train_steps"),
        (["train", "--set", "num_clips=18446744073709551616", "--steps", "1", *late], "num_clips"),
        (["train", "--set", "model_config={depht: 2}", "--steps", "1", *late], "model_config"),
        (["train", "--set", "shape_size=1e300", "--steps", "1", *late], "shape_size"),
        (["train", "--steps", "-1", *out], "--steps"),
        (["train", "--steps", "0", *out], "--steps"),
        (["encode", "--output", str(tmp_path / "c"), "--set", "a: b: c"], "--set"),
        (["encode", "--output", str(tmp_path / "c"), "--shard-size", "0"], "--shard-size"),
        (["sample", "--fps", "0", *out], "--fps"),
        (["sample", "--fps", "inf", *out], "--fps"),
        (["sample", "--fps", "nan", *out], "--fps"),
        (["sample", "--steps", "-1", *out], "--steps"),
        (["sample", "--num-videos", "0", *out], "--num-videos"),
        (["sample", "--seed", "-1", *out], "--seed"),
        (["sample", "--seed", str(2**64), *out], "--seed"),
        (["sample", "--guidance", "inf", *out], "--guidance"),
        (["sample", "--guidance", "0.5", *out], "--guidance"),
        (["sample", "--classes", "-1", *out], "--classes"),
        (["sample", "--height", "0", *out], "--height"),
        (["fvd", str(tmp_path / "stats.npz"), str(tmp_path / "stats.npz")], "stats.npz"),
        (["fvd", "a", "b", "--num-real", "1"], "--num-real"),
        (["fvd", "a", "b", "--num-clips", "-3"], "--num-clips"),
        (["fvd", "a", "b", "--num-frames", "8"], "--num-frames"),
        (["fvd", "a", "b", "--real-stride", "0"], "--real-stride"),
        (["fvd", "a", "b", "--batch-size", "0"], "--batch-size"),
        (["demo", "--steps", "-1", *out], "--steps"),
        (["demo", "--eval-clips", "1", *out], "--eval-clips"),
        (["forward", "--frames", "0"], "--frames"),
        (["forward", "--batch", "-2"], "--batch"),
        (["tiny-t2v", "evaluate", "--videos", "0"], "--videos"),
        (["tiny-t2v", "evaluate", "--steps", "x"], "--steps"),
    ]
    for argv, needle in cases:
        err = _error_line(argv, capsys)
        assert needle in err, f"{argv}: {err!r}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()
