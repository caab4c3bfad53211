"""The examples in the docstrings and the type stubs run and give what they show."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest

import latte_rs

STUBS = Path(latte_rs.__file__).with_name("_native.pyi")


def test_stub_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    globs = {**{k: getattr(latte_rs, k) for k in dir(latte_rs)}, "np": np, "latte_rs": latte_rs}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tree = ast.parse(STUBS.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node):
            name = getattr(node, "name", "_native")
            runner.run(parser.get_doctest(ast.get_docstring(node), dict(globs), name, str(STUBS), 0))
    assert runner.failures == 0 and runner.tries >= 4


@pytest.mark.parametrize("module", ["latte_rs", "latte_rs.data.synthetic", "latte_rs.training",
                                    "latte_rs.evaluation.metrics", "latte_rs.evaluation",
                                    "latte_rs.evaluation.protocol", "latte_rs.pipelines", "latte_rs.video_io",
                                    "latte_rs.torch"])
def test_module_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
