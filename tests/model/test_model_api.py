"""LatteModel's Python API: inputs, outputs, bad input, state dicts, devices, the GIL (its files are in
test_checkpoints.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import latte_rs
from conftest import tiny_config


@pytest.fixture(scope="module")
def cond_model() -> latte_rs.LatteModel:
    return latte_rs.LatteModel(tiny_config(num_classes=5, use_image_num=2), seed=0)


def inputs(rng: np.random.Generator, b: int = 2, f: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((b, f, 4, 8, 8), dtype=np.float32), np.array([3, 999])[:b]


def test_output_shape_dtype_and_determinism(cond_model, rng) -> None:
    x, t = inputs(rng)
    out = cond_model(x, t, y=np.array([1, 2]))
    assert out.shape == (2, 4, 8, 8, 8) and out.dtype == np.float32
    assert np.array_equal(out, cond_model.forward(x, t, y=np.array([1, 2])))
    a = latte_rs.LatteModel(tiny_config(), seed=3).state_dict()
    b = latte_rs.LatteModel(tiny_config(), seed=3).state_dict()
    c = latte_rs.LatteModel(tiny_config(), seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_initialisation_follows_the_dit_recipe() -> None:
    sd = latte_rs.LatteModel(tiny_config(num_classes=5, depth=8, hidden_size=64), seed=0).state_dict()
    for name, value in sd.items():
        if "adaLN_modulation" in name or name.startswith("final_layer.linear") or name.endswith(".bias"):
            assert not value.any(), name
    w = sd["blocks.0.attn.qkv.weight"]  # xavier-uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    bound = np.sqrt(6 / (64 + 192))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound
    assert abs(sd["t_embedder.mlp.0.weight"].std() - 0.02) < 0.002
    assert abs(sd["y_embedder.embedding_table.weight"].std() - 0.02) < 0.004
    assert sd["y_embedder.embedding_table.weight"].shape == (6, 64)  # 5 classes + the null class


def test_zero_init_model_predicts_zero(rng) -> None:
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    x, t = inputs(rng)
    assert not model(x, t).any()  # adaLN-Zero: the final layer starts at zero


def test_image_video_joint_input(cond_model, rng) -> None:
    x, t = inputs(rng, f=6)
    y = np.array([1, 2])
    out = cond_model(x, t, y=y, y_image=np.array([[0, 4], [3, 3]]))
    assert out.shape == (2, 6, 8, 8, 8)
    # Without y_image, the image frames take the clip's label.
    default = cond_model(x, t, y=y)
    explicit = cond_model(x, t, y=y, y_image=np.array([[1, 1], [2, 2]]))
    assert np.array_equal(default, explicit)


def test_dlpack_inputs_and_zero_copy_outputs(cond_model, rng) -> None:
    torch = pytest.importorskip("torch")
    x, t = inputs(rng)
    y = np.array([1, 2])
    expected = cond_model(x, t, y=y)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = cond_model(xt, torch.tensor(t), y=torch.tensor(y))
    np.testing.assert_array_equal(out, expected)
    as_torch = torch.from_numpy(out)
    assert as_torch.data_ptr() == out.ctypes.data
    via_dlpack = torch.from_dlpack(out)
    assert via_dlpack.data_ptr() == out.ctypes.data
    # float64 and non-contiguous inputs are accepted too.
    np.testing.assert_allclose(cond_model(x.astype(np.float64)[:, ::1], t, y=y), expected, rtol=0, atol=0)


def test_classifier_free_guidance_shape_and_identity(cond_model, rng) -> None:
    x, t = inputs(rng)
    t = np.array([500, 500])
    out1 = cond_model.forward_with_cfg(x, t, np.array([2, 5]), 1.0)
    plain = cond_model(np.concatenate([x[:1], x[:1]]), t, y=np.array([2, 5]))
    # Scale 1 gives the conditional prediction on the guided channels, for both halves.
    np.testing.assert_allclose(out1[:, :, :4], np.concatenate([plain[:1, :, :4]] * 2), atol=1e-6)
    np.testing.assert_array_equal(out1[:, :, 4:], plain[:, :, 4:])


BAD_INPUTS = [
    # (x shape, x dtype, t, y, exception, words in the message)
    ((2, 4, 4, 8), np.float32, [1, 2], [1, 2], ValueError, ["x", "rank 4", "(B, F, C, H, W)"]),
    ((2, 3, 4, 8, 8), np.float32, [1, 2], [1, 2], ValueError, ["x", "4..=6", "[2, 3, 4, 8, 8]"]),
    ((2, 7, 4, 8, 8), np.float32, [1, 2], [1, 2], ValueError, ["x", "[2, 7, 4, 8, 8]"]),
    ((2, 4, 3, 8, 8), np.float32, [1, 2], [1, 2], ValueError, ["x", "4, 8, 8", "[2, 4, 3, 8, 8]"]),
    ((2, 4, 4, 8, 6), np.float32, [1, 2], [1, 2], ValueError, ["x", "[2, 4, 4, 8, 6]"]),
    ((2, 4, 4, 8, 8), np.int64, [1, 2], [1, 2], TypeError, ["x", "floating-point", "I64"]),
    ((2, 4, 4, 8, 8), np.bool_, [1, 2], [1, 2], TypeError, ["x", "numeric"]),
    ((2, 4, 4, 8, 8), np.float32, [1, 1000], [1, 2], ValueError, ["t", "[0, 1000)", "1000"]),
    ((2, 4, 4, 8, 8), np.float32, [-1, 3], [1, 2], ValueError, ["t", "-1"]),
    ((2, 4, 4, 8, 8), np.float32, [1, 2, 3], [1, 2], ValueError, ["t", "(2,)", "[3]"]),
    ((2, 4, 4, 8, 8), np.float32, [1, float("nan")], [1, 2], ValueError, ["t", "NaN"]),
    ((2, 4, 4, 8, 8), np.float32, [1, 2], [1, 6], ValueError, ["y", "[0, 5]", "null class", "6"]),
    ((2, 4, 4, 8, 8), np.float32, [1, 2], [-1, 0], ValueError, ["y", "-1"]),
    ((2, 4, 4, 8, 8), np.float32, [1, 2], [1.0, 2.0], TypeError, ["y", "integer"]),
    ((2, 4, 4, 8, 8), np.float32, [1, 2], [1], ValueError, ["y", "[2]", "[1]"]),
    ((2, 4, 4, 8, 8), np.float32, [1, 2], None, ValueError, ["y", "class-conditional", "required"]),
]


@pytest.mark.parametrize("shape, dtype, t, y, exc, words", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(cond_model, shape, dtype, t, y, exc, words) -> None:
    x = np.zeros(shape, dtype=dtype)
    with pytest.raises(exc) as info:
        cond_model(x, np.array(t), y=None if y is None else np.array(y))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_nan_and_other_bad_values(cond_model) -> None:
    x = np.zeros((2, 4, 4, 8, 8), np.float32)
    x[1, 2, 3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="x: expected finite values"):
        cond_model(x, np.array([1, 2]), y=np.array([1, 2]))
    x[1, 2, 3, 4, 5] = np.inf
    with pytest.raises(ValueError, match="x: expected finite values"):
        cond_model(x, np.array([1, 2]), y=np.array([1, 2]))
    ok = np.zeros((2, 6, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"y_image: expected shape \[2, 2\]"):
        cond_model(ok, np.array([1, 2]), y=np.array([1, 2]), y_image=np.array([1, 2]))
    with pytest.raises(TypeError, match="x: expected a numeric array"):
        cond_model("video", np.array([1, 2]), y=np.array([1, 2]))
    with pytest.raises(ValueError, match="even batch"):
        cond_model.forward_with_cfg(
            np.zeros((3, 4, 4, 8, 8), np.float32), np.array([1, 2, 3]), np.array([1, 2, 3]), 4.0
        )
    uncond = latte_rs.LatteModel(tiny_config())
    with pytest.raises(ValueError, match="unconditional"):
        uncond(np.zeros((1, 4, 4, 8, 8), np.float32), np.array([1]), y=np.array([0]))
    with pytest.raises(ValueError, match="no null class"):
        no_null = latte_rs.LatteModel(tiny_config(num_classes=3, class_dropout_prob=0.0))
        no_null(np.zeros((1, 4, 4, 8, 8), np.float32), np.array([1]), y=np.array([3]))


def test_the_generic_kernel_path_is_the_fused_one_within_rounding(rng) -> None:
    """set_kernel_path("generic") runs the code a GPU runs (candle tensor ops) on the CPU: the same numbers as the
    fused CPU kernels to rounding, but not the same bits (it did run), and "auto" restores the fused kernels."""
    model = latte_rs.LatteModel(tiny_config(num_classes=5), seed=0)
    model.load_state_dict({k: 0.05 * rng.standard_normal(v.shape).astype(v.dtype) + v
                           for k, v in model.state_dict().items()})
    x, t = inputs(rng)
    fused = model(x, t, y=np.array([1, 2]))
    assert latte_rs.set_kernel_path("generic") == "auto"
    try:
        generic = model(x, t, y=np.array([1, 2]))
    finally:
        assert latte_rs.set_kernel_path("auto") == "generic"
    assert not np.array_equal(fused, generic)
    assert np.max(np.abs(fused - generic)) <= 1e-5 * np.max(np.abs(fused))
    assert np.array_equal(fused, model(x, t, y=np.array([1, 2])))
    with pytest.raises(ValueError, match="'auto' or 'generic'"):
        latte_rs.set_kernel_path("cuda")


def test_devices_and_dtypes() -> None:
    if not latte_rs.CUDA_AVAILABLE:
        with pytest.raises(RuntimeError, match="built without CUDA support; rebuild with"):
            latte_rs.LatteModel(tiny_config(), device="cuda")
    with pytest.raises(ValueError, match="device"):
        latte_rs.LatteModel(tiny_config(), device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        latte_rs.LatteModel(tiny_config(), dtype="int8")
    m64 = latte_rs.LatteModel(tiny_config(), dtype="float64")
    assert m64.dtype == "float64" and m64.state_dict()["pos_embed"].dtype == np.float64
    assert m64.device == "cpu"


def test_state_dict_round_trip_and_strictness(rng) -> None:
    cfg = tiny_config(num_classes=5)
    a = latte_rs.LatteModel(cfg, seed=1)
    b = latte_rs.LatteModel(cfg, seed=2)
    sd = a.state_dict()
    assert "x_embedder.proj.weight" in sd and "blocks.3.adaLN_modulation.1.weight" in sd and "temp_embed" in sd
    sd = {k: v + 0.01 for k, v in sd.items()}  # non-zero everywhere, so outputs compare meaningfully
    assert b.load_state_dict(sd) == ([], [])
    a.load_state_dict(sd)
    x, t = inputs(rng)
    np.testing.assert_array_equal(a(x, t, y=np.array([1, 2])), b(x, t, y=np.array([1, 2])))

    broken = dict(sd)
    del broken["blocks.0.attn.qkv.bias"]
    broken["blocks.9.extra"] = np.zeros(3, np.float32)
    broken["final_layer.linear.weight"] = np.zeros((7, 7), np.float32)
    with pytest.raises(ValueError) as info:
        b.load_state_dict(broken)
    msg = str(info.value)
    assert "missing keys (1): blocks.0.attn.qkv.bias" in msg
    assert "unexpected keys (1): blocks.9.extra" in msg
    assert "mis-shaped keys (1): final_layer.linear.weight: expected [32, 32], got [7, 7]" in msg
    del broken["final_layer.linear.weight"]
    missing, unexpected = b.load_state_dict(broken, strict=False)
    assert missing == ["blocks.0.attn.qkv.bias", "final_layer.linear.weight"]
    assert unexpected == ["blocks.9.extra"]


def test_compute_releases_the_gil(rng) -> None:
    model = latte_rs.LatteModel(latte_rs.LatteConfig.preset("Latte-S/2", num_frames=8, input_size=16))
    x = rng.standard_normal((2, 8, 4, 16, 16), dtype=np.float32)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    worker = threading.Thread(target=count)
    worker.start()
    start = time.perf_counter()
    model(x, np.array([1, 2]))
    elapsed = time.perf_counter() - start
    done.set()
    worker.join()
    # With the GIL held for the whole forward, the counter could not run at all.
    assert elapsed > 0.05 and ticks >= 5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_run_close_to_float32(dtype: str, rng) -> None:
    cfg = tiny_config(num_classes=5, variant=3)
    full = latte_rs.LatteModel(cfg, seed=1)
    sd = {k: v + 0.05 for k, v in full.state_dict().items()}
    full.load_state_dict(sd)
    half = latte_rs.LatteModel(cfg, dtype=dtype)
    half.load_state_dict(sd)
    assert half.dtype == dtype
    x, t = inputs(rng)
    ref = full(x, t, y=np.array([1, 2]))
    out = half(x, t, y=np.array([1, 2]))
    assert out.dtype == np.float32  # returned as float32 for NumPy
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
