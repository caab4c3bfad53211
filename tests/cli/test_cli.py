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


def test_a_prompt_to_a_class_model_file_is_an_error(tmp_path, capsys):
    # The command line: a class-model file refuses --prompt, never ignores it (without a checkpoint, --prompt
    # picks the built-in text-to-video model: tests/t2v/test_tiny_t2v.py).
    pixel_model().save(str(tmp_path / "m.safetensors"))
    for argv in (["sample", str(tmp_path / "m.safetensors"), "--prompt", "a blue triangle"],):
        assert main(argv + ["--steps", "2", "--no-progress", "--output-dir", str(tmp_path / "out")]) != 0
        err = capsys.readouterr().err
        assert "--prompt" in err and "takes no text" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["demo", "train", "encode", "fvd", "sample"])
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
