"""The type stubs of the native module (``python/latte_rs/_native.pyi``) say what the compiled module has: every
name, signature, default and class kind, checked by mypy's stubtest (names for type checkers only are listed, with
why, in ``stubtest_allowlist.txt``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import latte_rs

ALLOWLIST = Path(__file__).with_name("stubtest_allowlist.txt")


def test_stubs_match_the_native_module(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="the stub check needs mypy (pip install '.[test]')")
    # The package this test imported, not whatever another working directory would find first.
    package_root = str(Path(latte_rs.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "latte_rs._native", "--concise", "--allowlist", str(ALLOWLIST)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"stubtest found differences:\n{result.stdout}{result.stderr}"
