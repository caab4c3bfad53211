"""DDPM, DDIM, Euler and DPM-Solver(++) schedulers against diffusers on diffusers' own test setup (dummy sample,
dummy model `sample * t / (t + 1)`): every spacing, prediction type and variance type, Karras sigmas and churn for
Euler, the SDE forms of DPM-Solver, full 10-step loops; `add_noise` with one timestep per sample and one for
the batch.

Golden runs come from tests/diffusion/fixtures/make_scheduler_golden.py (which runs diffusers, recording the noise
of each step); here the same noise is replayed through a stand-in generator. When diffusers is installed, a few
runs are also compared live.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import latte_rs

FIXTURES = Path(__file__).parent / "fixtures"

with np.load(FIXTURES / "schedulers.npz") as _z:
    GOLDEN = {k: _z[k] for k in _z.files}
INDEX = json.loads(str(GOLDEN["index"]))


class Replay:
    """Hands out recorded noise, one array per call, in the order the reference drew it."""

    def __init__(self, noise: np.ndarray) -> None:
        self.noise = list(noise)

    def randn(self, shape: list[int]) -> np.ndarray:
        z = self.noise.pop(0)
        assert list(z.shape) == list(shape)
        return z


def dummy_model(sample: np.ndarray, t: int, variance_type: str) -> np.ndarray:
    """The reference script's dummy model (diffusers' `sample * t / (t + 1)` plus variance channels)."""
    out = sample * np.float32(t) / np.float32(t + 1)
    if variance_type == "learned":
        return np.concatenate([out, 0.5 / (1 + np.exp(-(sample - 0.5)))], axis=1)
    if variance_type == "learned_range":
        return np.concatenate([out, np.tanh(sample - 0.5)], axis=1)
    return out


CLASSES = {
    "ddpm": latte_rs.DDPMScheduler,
    "ddim": latte_rs.DDIMScheduler,
    "euler": latte_rs.EulerDiscreteScheduler,
    "dpm": latte_rs.DPMSolverMultistepScheduler,
}


def run_loop(kind: str, config: dict, eta: float, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference script's loop; for "euler", `eta` is `s_churn`."""
    scheduler = CLASSES[kind](**config)
    scheduler.set_timesteps(10)
    if kind == "euler":
        gen = Replay(noise)
        sample = GOLDEN["dummy_sample"] * np.float32(scheduler.init_noise_sigma)
        for t in scheduler.timesteps:
            out = dummy_model(scheduler.scale_model_input(sample, t), float(t), "fixed_small").astype(np.float32)
            sample = scheduler.step(out, t, sample, s_churn=eta, generator=gen).prev_sample
        return scheduler.timesteps, sample
    variance_type = config.get("variance_type", "fixed_small") if kind == "ddpm" else "fixed_small"
    sample = GOLDEN["dummy_sample"].copy()
    gen = Replay(noise)
    for t in scheduler.timesteps:
        out = dummy_model(sample, int(t), variance_type).astype(np.float32)
        if kind == "dpm":
            sample = scheduler.step(out, t, sample, generator=gen).prev_sample  # the SDE forms draw noise
        elif kind == "ddpm":
            sample = scheduler.step(out, t, sample, generator=gen).prev_sample
        else:
            sample = scheduler.step(out, t, sample, eta=eta, variance_noise=gen.randn(list(sample.shape))).prev_sample
    return scheduler.timesteps, sample


@pytest.mark.parametrize("i", range(len(INDEX)), ids=[f"{c['kind']}-{c['config']}-eta{c['eta']}" for c in INDEX])
def test_full_loop_matches_diffusers(i: int) -> None:
    case = INDEX[i]
    timesteps, result = run_loop(case["kind"], case["config"], case["eta"], GOLDEN[f"{i}/noise"])
    expected = GOLDEN[f"{i}/result"]
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(timesteps, GOLDEN[f"{i}/timesteps"], rtol=1e-6)
    # diffusers' own tolerances on the sum and mean, then element-wise.
    assert abs(np.abs(result).sum() - np.abs(expected).sum()) < 1e-2
    assert abs(np.abs(result).mean() - np.abs(expected).mean()) < 1e-3
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def test_live_against_diffusers() -> None:
    pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(FIXTURES))
    import make_scheduler_golden as ref

    for i in (0, 7, 40, len(INDEX) - 1):
        case = INDEX[i]
        live = ref.run(case["kind"], case["config"], case["eta"], torch.Generator().manual_seed(i))
        _, result = run_loop(case["kind"], case["config"], case["eta"], live["noise"])
        np.testing.assert_allclose(result, live["result"], rtol=1e-4, atol=1e-5)
    # The reference records the step noise by replacing diffusers' randn_tensor for one loop; it must put it back
    # (left replaced, a later pipeline in this process drew its DDPM noise from a spent generator).
    from diffusers.schedulers import scheduling_ddpm
    from diffusers.utils.torch_utils import randn_tensor

    assert scheduling_ddpm.randn_tensor is randn_tensor


def test_config_round_trip_and_latte1_config(tmp_path: Path) -> None:
    # Latte-1's scheduler/scheduler_config.json carries keys for other schedulers too; they are kept.
    latte1 = {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.24.0",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "steps_offset": 0,
        "trained_betas": None,
        "variance_type": "learned_range",
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
    }
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(latte1))
    s = latte_rs.DDIMScheduler.from_config(tmp_path / "scheduler")
    assert s.config["variance_type"] == "learned_range" and s.config["dynamic_thresholding_ratio"] == 0.995
    path = s.save_config(tmp_path / "out")
    again = latte_rs.DDPMScheduler.from_config(path)
    assert again.config == s.config
    assert json.loads(path.read_text())["_class_name"] == "DDIMScheduler"


def test_add_noise_and_init_sigma() -> None:
    s = latte_rs.DDPMScheduler()
    x = np.ones((2, 3, 4, 4), np.float32)
    z = np.zeros_like(x)
    noisy = s.add_noise(x, z, np.array([0, 999]))
    a = s.alphas_cumprod
    np.testing.assert_allclose(noisy[:, 0, 0, 0], np.sqrt(a[[0, 999]]), rtol=1e-6)
    assert s.init_noise_sigma == 1.0
    assert s.scale_model_input(x, 3) is x


def test_same_generator_seed_same_run() -> None:
    def loop(seed: int) -> np.ndarray:
        s = latte_rs.DDPMScheduler()
        s.set_timesteps(5)
        g = latte_rs.Generator(seed)
        x = g.randn([1, 3, 4, 4])
        for t in s.timesteps:
            x = s.step(x * 0.1, t, x, generator=g).prev_sample
        return x

    np.testing.assert_array_equal(loop(1), loop(1))
    assert not np.array_equal(loop(1), loop(2))


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: latte_rs.DDIMScheduler(timestep_spacing="uniform"), ["timestep_spacing", "uniform"]),
        (lambda: latte_rs.DDPMScheduler(prediction_type="noise"), ["prediction_type", "noise"]),
        (lambda: latte_rs.DDPMScheduler(beta_schedule="sigmoid"), ["beta_schedule", "sigmoid"]),
        (lambda: latte_rs.DDPMScheduler().set_timesteps(1001), ["num_inference_steps", "1001"]),
        (lambda: latte_rs.DDPMScheduler().set_timesteps(0), ["num_inference_steps"]),
        (lambda: latte_rs.DDIMScheduler().step(np.zeros(3), 5, np.zeros(3)), ["set_timesteps"]),
    ],
)
def test_bad_arguments(make, words) -> None:
    with pytest.raises(ValueError) as info:
        make()
    for w in words:
        assert w in str(info.value)


def test_bad_step_inputs() -> None:
    s = latte_rs.DDPMScheduler()
    s.set_timesteps(10)
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="timestep: expected one of the scheduler's timesteps"):
        s.step(x, 901, x)
    with pytest.raises(ValueError, match="model_output: expected the sample's shape"):
        s.step(np.zeros((1, 5, 4, 4), np.float32), 900, x)
    with pytest.raises(ValueError, match="timestep: expected a value in"):
        s.step(x, 1000, x)


def test_dpm_solver_uses_the_prediction_half_of_a_learned_variance_output() -> None:
    x = latte_rs.Generator(0).randn([1, 4, 4, 8, 8])  # latte-rs layout (B, F, C, H, W)
    runs = []
    for variance_type, extra in (("learned_range", True), ("fixed_small", False)):
        s = latte_rs.DPMSolverMultistepScheduler(variance_type=variance_type)
        s.set_timesteps(5)
        sample = x.copy()
        for t in s.timesteps:
            eps = sample * 0.5
            out = np.concatenate([eps, np.ones_like(eps)], axis=2) if extra else eps
            sample = s.step(out, t, sample).prev_sample
        runs.append(sample)
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "euler", "dpm"])
def test_add_noise_per_sample_and_one_timestep_for_the_batch_match_diffusers(kind: str) -> None:
    g = {k.split("/")[-1]: GOLDEN[k] for k in GOLDEN if k.startswith(f"add_noise/{kind}/")}
    scheduler = CLASSES[kind]()
    scheduler.set_timesteps(10)
    x = GOLDEN["dummy_sample"]
    per_sample = scheduler.add_noise(x, g["noise"], g["per_sample_t"])
    np.testing.assert_allclose(per_sample, g["per_sample"], rtol=1e-6, atol=1e-6)
    single = scheduler.add_noise(x, g["noise"], g["single_t"])  # broadcast over the batch
    np.testing.assert_allclose(single, g["single"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(single, per_sample)
    scalar = g["single_t"].reshape(()).item()
    np.testing.assert_array_equal(scheduler.add_noise(x, g["noise"], scalar), single)


def test_add_noise_live_against_diffusers() -> None:
    pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(FIXTURES))
    import make_scheduler_golden as ref

    for kind in ref.ADD_NOISE_KINDS:
        live = ref.add_noise(kind, torch.Generator().manual_seed(1))
        scheduler = CLASSES[kind]()
        scheduler.set_timesteps(10)
        x = GOLDEN["dummy_sample"]
        for t, want in ((live["per_sample_t"], live["per_sample"]), (live["single_t"], live["single"])):
            np.testing.assert_allclose(scheduler.add_noise(x, live["noise"], t), want, rtol=1e-6, atol=1e-6)


def test_add_noise_errors_name_the_timesteps() -> None:
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"timesteps: expected 2 values \(one per sample\) or one for the batch"):
        latte_rs.DDPMScheduler().add_noise(x, x, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="set_timesteps"):
        latte_rs.DPMSolverMultistepScheduler().add_noise(x, x, 999)
    dpm = latte_rs.DPMSolverMultistepScheduler()
    dpm.set_timesteps(10)
    with pytest.raises(ValueError, match="timesteps: expected timesteps of the scheduler's schedule"):
        dpm.add_noise(x, x, 998)
    # float64 noise with float32 samples is converted, not a dtype error.
    assert latte_rs.DDPMScheduler().add_noise(x, x.astype(np.float64), 5).dtype == np.float32


def test_every_step_returns_prev_sample_and_pred_original_sample() -> None:
    x = latte_rs.Generator(0).randn([1, 3, 4, 4])
    for kind, make in CLASSES.items():
        s = make()
        s.set_timesteps(4)
        t = s.timesteps[0]
        out = s.step(x * 0.5, t, s.scale_model_input(x, t))
        assert isinstance(out, latte_rs.SchedulerOutput), kind
        s = make()
        s.set_timesteps(4)
        prev, x0 = s.step(x * 0.5, t, s.scale_model_input(x, t), return_dict=False)
        np.testing.assert_array_equal(prev, out.prev_sample)
        assert x0.shape == x.shape


def test_sde_dpm_solver_honours_the_generator() -> None:
    def run(seed: int) -> np.ndarray:
        s = latte_rs.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
        s.set_timesteps(5)
        g = latte_rs.Generator(seed)
        x = latte_rs.Generator(0).randn([1, 3, 4, 4])
        for t in s.timesteps:
            x = s.step(x * 0.3, t, x, generator=g).prev_sample
        return x

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))


@pytest.mark.parametrize("layout", ["diffusers", "latte"])
def test_dpm_solver_with_a_learned_variance_keeps_every_latent_channel(layout) -> None:
    """Issue 31, item 4: diffusers' DPMSolverMultistepScheduler with ``variance_type="learned_range"`` cuts the
    model output to its first 3 channels (``model_output[:, :3]``, written for RGB), one short of Latte's 4 latent
    channels (its step then fails on the shapes, checked live below). Ours splits at the sample's channel count, on
    diffusers' channel axis (B, C, F, H, W) or latte-rs's (B, F, C, H, W): the step equals the plain step on the
    prediction half."""
    rng = np.random.default_rng(0)
    axis = 1 if layout == "diffusers" else 2
    shape = (1, 4, 2, 8, 8) if layout == "diffusers" else (1, 2, 4, 8, 8)
    sample = rng.standard_normal(shape).astype(np.float32)
    output = rng.standard_normal(tuple(2 * d if i == axis else d for i, d in enumerate(shape))).astype(np.float32)
    learned = latte_rs.DPMSolverMultistepScheduler(variance_type="learned_range")
    plain = latte_rs.DPMSolverMultistepScheduler()
    for s in (learned, plain):
        s.set_timesteps(10)
    t = learned.timesteps[0]
    got = learned.step(output, t, sample).prev_sample
    want = plain.step(np.take(output, range(4), axis=axis), t, sample).prev_sample
    assert np.asarray(got).shape == shape
    np.testing.assert_array_equal(got, want)
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    if layout == "diffusers":
        ref = diffusers.DPMSolverMultistepScheduler(variance_type="learned_range")
        ref.set_timesteps(10)
        with pytest.raises(RuntimeError):  # 3 prediction channels against a 4-channel sample
            ref.step(torch.from_numpy(output), ref.timesteps[0], torch.from_numpy(sample))
