"""A save killed at each point of its protocol: the checkpoint path always resumes, and the next save tidies up.

The save protocol (src/train/checkpoint.rs): files into a unique hidden sibling, the manifest last, then an atomic
exchange with the existing checkpoint (or, where the file system cannot exchange, two renames); the process is
aborted at each point through the test hook ``LATTE_RS_TEST_CRASH_AT``. The next save removes only the copies that
prove themselves the killed save's (a marker file inside each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import tiny_config

SCRIPT = textwrap.dedent(
    """
    import os, sys, numpy as np, latte_rs
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    ckpt = sys.argv[1]
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8, 8)).astype(np.float32)
    trainer = latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), seed=0), latte_rs.GaussianDiffusion(), seed=1)
    trainer.step(x)
    trainer.save(ckpt)                      # step 1, complete
    trainer.step(x)
    os.environ.update(dict(arg.split("=", 1) for arg in sys.argv[2:]))
    trainer.save(ckpt)                      # step 2: killed where the environment says
    """
)

# (crash point, path taken, the step the checkpoint path resumes at)
CASES = [
    ("files", "exchange", 1),
    ("manifest", "exchange", 1),
    ("swapped", "exchange", 2),
    ("files", "renames", 1),
    ("manifest", "renames", 1),
    ("moved-old", "renames", 2),  # the path is empty: resume finds the complete new copy beside it
    ("swapped", "renames", 2),
    (None, "exchange", 2),
]


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(("point", "path", "step"), CASES)
def test_a_killed_save_always_leaves_a_checkpoint_to_resume(tmp_path, point, path, step) -> None:
    ckpt = tmp_path / "ckpt"
    env_args = ([f"LATTE_RS_TEST_CRASH_AT={point}"] if point else []) + (
        ["LATTE_RS_TEST_NO_EXCHANGE=1"] if path == "renames" else []
    )
    script = SCRIPT.format(tests=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", script, str(ckpt), *env_args], capture_output=True, text=True,
                          timeout=300)
    if point is None:
        assert proc.returncode == 0, proc.stderr
        assert _hidden(tmp_path) == []
    else:
        assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr[-2000:])
        assert _hidden(tmp_path), "the kill left the save's hidden copies behind"
    resumed = latte_rs.Trainer.resume(ckpt)
    assert resumed.step_count == step
    # The next save from here puts a complete checkpoint at the path and removes the dead save's leftovers.
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8, 8)).astype(np.float32)
    resumed.step(x)
    resumed.save(ckpt)
    assert _hidden(tmp_path) == [], "stale copies of the killed save were not removed"
    assert not (ckpt / ".latte-rs-save.json").exists(), "the save's marker stayed in the checkpoint"
    assert latte_rs.Trainer.resume(ckpt).step_count == step + 1


def test_saves_to_one_path_from_threads_never_collide(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    trainers = [latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), seed=s), latte_rs.GaussianDiffusion())
                for s in range(3)]
    with ThreadPoolExecutor(3) as pool:
        errors = [f.exception() for f in [pool.submit(t.save, tmp_path / "ckpt") for t in trainers * 4]]
    assert errors == [None] * 12
    assert latte_rs.Trainer.resume(tmp_path / "ckpt").step_count == 0
    assert _hidden(tmp_path) == []
    assert os.listdir(tmp_path / "ckpt")


def test_a_file_in_the_way_is_not_replaced(tmp_path) -> None:
    (tmp_path / "ckpt").write_text("not a checkpoint")
    trainer = latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), seed=0), latte_rs.GaussianDiffusion())
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        trainer.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt").read_text() == "not a checkpoint"
    assert _hidden(tmp_path) == []


def test_only_the_killed_saves_own_copies_are_removed(tmp_path):
    """A killed save's copies are removed by the next save because each proves itself a save's (a marker inside
    naming that very folder, its checkpoint, and a process gone from this host), not because of its name: a copy of
    a leftover under another name, a leftover of a save on another host and a look-alike without a marker stay."""
    ckpt = tmp_path / "ckpt"
    script = SCRIPT.format(tests=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", script, str(ckpt), "LATTE_RS_TEST_CRASH_AT=moved-old",
                           "LATTE_RS_TEST_NO_EXCHANGE=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr[-2000:])
    leftovers = _hidden(tmp_path)
    assert len(leftovers) == 2 and all((tmp_path / n / ".latte-rs-save.json").is_file() for n in leftovers)
    new = next(n for n in leftovers if ".tmp-" in n)
    shutil.copytree(tmp_path / new, tmp_path / ".ckpt.tmp-999999-9")  # the user's copy, under another name
    other_host = tmp_path / ".ckpt.tmp-999999-8"
    shutil.copytree(tmp_path / new, other_host)
    marker = json.loads((other_host / ".latte-rs-save.json").read_text())
    (other_host / ".latte-rs-save.json").write_text(json.dumps({**marker, "copy": other_host.name,
                                                                "host": "another-machine"}))
    (tmp_path / ".ckpt.old-999999-0").mkdir()  # a look-alike without a marker
    resumed = latte_rs.Trainer.resume(ckpt)  # from the killed save's complete new copy
    assert resumed.step_count == 2
    resumed.save(ckpt)
    assert _hidden(tmp_path) == [".ckpt.old-999999-0", ".ckpt.tmp-999999-8", ".ckpt.tmp-999999-9"]
    assert not (ckpt / ".latte-rs-save.json").exists(), "the marker stayed in the checkpoint"
