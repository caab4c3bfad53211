"""latte_rs.autocast: bf16 linear layers for inference, float32 everywhere else (training under it:
tests/training/test_bf16.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import latte_rs
from conftest import load_official_case
from latte_rs import _native

needs_bf16 = pytest.mark.skipif(not latte_rs.BF16_AUTOCAST_SUPPORTED, reason="CPU without AVX512-BF16")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture
def official():
    case = load_official_case("v1_class")
    model = latte_rs.LatteModel(latte_rs.LatteConfig(**case["config"]), seed=0)
    model.load_state_dict(case["params"], strict=True)
    return case, model


@needs_bf16
def test_bf16_forward_is_the_official_output_to_bf16_precision(official) -> None:
    case, model = official
    with latte_rs.autocast("bfloat16"):
        out = model(case["x"], case["t"], y=case["y"])
    assert out.dtype == np.float32
    err = _rel(out, case["out"])
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per operand); a few layers compound it.
    assert 1e-5 < err < 3e-2, err
    # and off again after the block: the float32 parity holds
    assert _rel(model(case["x"], case["t"], y=case["y"]), case["out"]) <= 1e-5


def test_the_setting_nests_restores_and_survives_exceptions() -> None:
    assert _native.set_autocast(None) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with latte_rs.autocast():
            assert _native.set_autocast("bfloat16") == "bfloat16"
            with latte_rs.autocast(enabled=False):
                assert _native.set_autocast(None) is None
            assert _native.set_autocast("bfloat16") == "bfloat16"
        assert _native.set_autocast(None) is None
        with pytest.raises(KeyError), latte_rs.autocast("torch.bfloat16"):
            raise KeyError("inside")
        assert _native.set_autocast(None) is None

        @latte_rs.autocast()
        def inside() -> str | None:
            return _native.set_autocast("bfloat16")

        assert inside() == "bfloat16"
        assert _native.set_autocast(None) is None


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="autocast dtype.*'float16'"):
        latte_rs.autocast("float16")
    with pytest.raises(TypeError, match="autocast enabled"):
        latte_rs.autocast(enabled="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="autocast dtype"):
        _native.set_autocast("int8")


@pytest.mark.skipif(latte_rs.BF16_AUTOCAST_SUPPORTED, reason="CPU has AVX512-BF16")
def test_without_avx512_bf16_it_warns_and_stays_float32(official) -> None:
    case, model = official
    with pytest.warns(RuntimeWarning, match="AVX512-BF16"), latte_rs.autocast():
        out = model(case["x"], case["t"], y=case["y"])
    assert _rel(out, case["out"]) <= 1e-5
