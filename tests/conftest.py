"""Shared helpers for the test suite: the fixtures that several folders read, and the tiny model config.

Each folder keeps its own golden files in its ``fixtures/`` beside its tests; the paths here are the ones read
from more than one folder (the official parity cases, the tiny VAE, the T5 encoder and the text-to-video
transformer). The suite runs with ``--import-mode=importlib`` and ``pythonpath = ["tests"]`` (pyproject.toml), so
test modules of the same name can live in different folders and ``from conftest import ...`` works everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import latte_rs

# In importlib mode pytest imports this file as `tests.conftest`; test modules import it as `conftest`. One module
# under both names, so that its helpers are not defined twice.
sys.modules.setdefault("conftest", sys.modules[__name__])

TESTS = Path(__file__).parent
# Made by tests/model/fixtures/make_official_golden.py; read by model/, diffusion/ and torch/.
OFFICIAL = TESTS / "model" / "fixtures" / "official"
# Made by tests/model/fixtures/make_vae_golden.py; the VAE of the pipelines, the latent cache and the fuzzing.
TINY_VAE = TESTS / "model" / "fixtures" / "vae" / "tiny_attn"
# Made by tests/t2v/fixtures/make_t5_golden.py and make_t2v_golden.py; the text side of data/ and robustness/.
T5_GATED = TESTS / "t2v" / "fixtures" / "t5" / "gated"
T2V_VIDEO = TESTS / "t2v" / "fixtures" / "transformer" / "video"


class TorchTokenizer:
    """Our T5 tokenizer (``latte_rs.text.T5Tokenizer``) behind transformers' call interface, for diffusers'
    LattePipeline (t2v/ and torch/ run it over our components)."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def __call__(self, texts, padding="max_length", max_length=None, return_tensors="pt", **kwargs):
        import torch

        texts = [texts] if isinstance(texts, str) else texts
        if padding == "longest":
            max_length = max(len(self.tok.sp.encode(t)) + 1 for t in texts)
        out = self.tok(texts, max_length=max_length)
        return type("Encoding", (), {"input_ids": torch.from_numpy(out["input_ids"]),
                                     "attention_mask": torch.from_numpy(out["attention_mask"])})()


def load_official_case(name: str) -> dict:
    """A golden case made by tests/model/fixtures/make_official_golden.py from the official Latte code."""
    with np.load(OFFICIAL / f"{name}.npz") as z:
        data = {k: z[k] for k in z.files}
    data["config"] = json.loads(str(data["config"]))
    data["params"] = {k[len("param/") :]: v for k, v in data.items() if k.startswith("param/")}
    return data


def fixture_script(path: Path):
    """The golden-file script at ``path`` (a ``fixtures/make_*.py``) as a module: its reference functions, not its
    main."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> latte_rs.LatteConfig:
    """A model small enough for fast tests: 4 blocks of width 32, 4 frames of 8×8 latents."""
    base = dict(depth=4, hidden_size=32, num_heads=4, patch_size=2, input_size=8, num_frames=4, in_channels=4)
    base.update(overrides)
    return latte_rs.LatteConfig(**base)


def pixel_model(num_classes: int = 3, seed: int = 0) -> latte_rs.LatteModel:
    """A Latte-S/8 on 4 frames of 16×16 RGB pixels (no VAE): videos a pipeline can write without a decoder."""
    cfg = latte_rs.LatteConfig.preset("Latte-S/8", num_frames=4, input_size=16, in_channels=3,
                                      num_classes=num_classes)
    return latte_rs.LatteModel(cfg, seed=seed)


def perturbed(model, seed: int = 0, scale: float = 0.05):
    """`model` with every parameter moved by N(0, scale²) noise: adaLN and output layers start at zero, which
    would make the modulation trivial and the output constant."""
    gen = np.random.default_rng(seed)
    model.load_state_dict({k: (v + scale * gen.standard_normal(v.shape)).astype(v.dtype)
                           for k, v in model.state_dict().items()})
    return model


def random_latents(cfg: latte_rs.LatteConfig, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Standard-normal float32 latents shaped for ``cfg``: (batch, frames, channels, size, size)."""
    shape = (batch, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
