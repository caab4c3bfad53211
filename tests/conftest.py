"""Shared helpers for the test suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import latte_rs

FIXTURES = Path(__file__).parent / "fixtures"


def load_official_case(name: str) -> dict:
    """A golden case made by tests/fixtures/make_official_golden.py from the official Latte code."""
    with np.load(FIXTURES / "official" / f"{name}.npz") as z:
        data = {k: z[k] for k in z.files}
    data["config"] = json.loads(str(data["config"]))
    data["params"] = {k[len("param/") :]: v for k, v in data.items() if k.startswith("param/")}
    return data


def fixture_script(name: str):
    """The golden-file script ``tests/fixtures/<name>.py`` as a module (its reference functions, not its main)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> latte_rs.LatteConfig:
    """A model small enough for fast tests: 4 blocks of width 32, 4 frames of 8×8 latents."""
    base = dict(depth=4, hidden_size=32, num_heads=4, patch_size=2, input_size=8, num_frames=4, in_channels=4)
    base.update(overrides)
    return latte_rs.LatteConfig(**base)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
