"""GaussianDiffusion against the IDDPM/DiT reference (`diffusion/` of the official Latte code), in float64.

Golden values come from tests/diffusion/fixtures/make_diffusion_golden.py, which runs the reference package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import latte_rs

GOLDEN = Path(__file__).parent / "fixtures" / "diffusion.npz"
CASES = {
    "learned_range": dict(learn_sigma=True),
    "learned_range_rescaled": dict(learn_sigma=True, rescale_learned_sigmas=True),
    "fixed_large": dict(learn_sigma=False),
    "fixed_small": dict(learn_sigma=False, sigma_small=True),
    "start_x_learned": dict(learn_sigma=True, prediction_type="sample"),
    "rescaled_kl": dict(learn_sigma=True, use_kl=True),
}
TABLES = [
    "betas",
    "alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-10) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("respacing", ["", "250", "ddim50", "10,20,30"])
def test_tables_and_respacing_match_the_reference(golden, schedule: str, respacing: str) -> None:
    d = latte_rs.GaussianDiffusion(timestep_respacing=respacing, noise_schedule=schedule)
    key = f"tables/{schedule}/{respacing or 'none'}"
    np.testing.assert_array_equal(d.timestep_map, golden[f"{key}/timestep_map"])
    assert d.num_timesteps == len(golden[f"{key}/betas"])
    tables = d.tables()
    for name in TABLES:
        close(tables[name], golden[f"{key}/{name}"])


@pytest.mark.parametrize("case", list(CASES))
def test_losses_distribution_and_ddim_match_the_reference(golden, case: str) -> None:
    kwargs = CASES[case]
    d = latte_rs.GaussianDiffusion(**kwargs)
    x0, noise, t = golden["inputs/x_start"], golden["inputs/noise"], golden["inputs/t"]
    out = golden["inputs/model_output_learned" if kwargs.get("learn_sigma") else "inputs/model_output_fixed"]
    key = f"case/{case}"
    x_t = d.q_sample(x0, t, noise)
    close(x_t, golden[f"{key}/x_t"])
    terms = d.training_losses(out, x0, t, noise)
    for term in ("loss", "mse", "vb"):
        assert (term in terms) == (f"{key}/{term}" in golden), term
        if term in terms:
            close(terms[term], golden[f"{key}/{term}"])
    pmv = d.p_mean_variance(out, x_t, t, clip_denoised=True)
    for term in ("mean", "log_variance", "pred_xstart"):
        close(pmv[term], golden[f"{key}/pmv_{term}"])
    sample, _ = d.ddim_sample(out, x_t, t, np.zeros_like(x_t), eta=0.0)
    close(sample, golden[f"{key}/ddim_sample"])


def test_ancestral_step_is_mean_plus_scaled_noise(golden) -> None:
    d = latte_rs.GaussianDiffusion()
    x0, noise, t = golden["inputs/x_start"], golden["inputs/noise"], golden["inputs/t"]
    out = golden["inputs/model_output_learned"]
    x_t = d.q_sample(x0, t, noise)
    pmv = d.p_mean_variance(out, x_t, t)
    sample, _ = d.p_sample(out, x_t, t, noise)
    expected = pmv["mean"] + (t != 0)[:, None, None, None, None] * np.exp(0.5 * pmv["log_variance"]) * noise
    close(sample, expected)
    close(sample[0], pmv["mean"][0])  # no noise at t = 0


def test_the_vb_term_only_trains_the_variance(golden) -> None:
    """Changing the mean channels of the output changes `mse` but not `vb` (the mean is detached for vb)."""
    d = latte_rs.GaussianDiffusion()
    x0, noise, t = golden["inputs/x_start"], golden["inputs/noise"], golden["inputs/t"]
    out = golden["inputs/model_output_learned"].copy()
    a = d.training_losses(out, x0, t, noise)
    out[:, :, 4:] += 0.1
    b = d.training_losses(out, x0, t, noise)
    assert np.all(a["mse"] == b["mse"]) and np.all(a["vb"] != b["vb"])


def test_velocity_prediction_is_the_reference_noise_prediction_in_other_words(golden) -> None:
    """A velocity model (prediction_type="v_prediction", for training: the content term keeps its weight at high
    noise) against two references: its MSE target is diffusers' ``DDPMScheduler.get_velocity``, and a velocity
    output that means the same as the golden noise output (v = sqrt(abar)·eps − sqrt(1 − abar)·x0_pred) gives the
    official noise model's posterior, prediction of x0 and variational bound exactly."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    d = latte_rs.GaussianDiffusion(prediction_type="v_prediction")
    assert d.prediction_type == "v_prediction" and latte_rs.GaussianDiffusion().prediction_type == "epsilon"
    x0, noise, t = golden["inputs/x_start"], golden["inputs/noise"], golden["inputs/t"]
    eps_out = golden["inputs/model_output_learned"]
    key = "case/learned_range"
    abar = d.tables()["alphas_cumprod"][t][:, None, None, None, None]
    x_t = d.q_sample(x0, t, noise)
    eps, var = eps_out[:, :, :4], eps_out[:, :, 4:]
    x0_pred = (x_t - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    v_out = np.concatenate([np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0_pred, var], axis=2)
    pmv = d.p_mean_variance(v_out, x_t, t, clip_denoised=False)
    reference = latte_rs.GaussianDiffusion().p_mean_variance(eps_out, x_t, t, clip_denoised=False)
    for term in ("mean", "log_variance", "pred_xstart"):
        close(pmv[term], reference[term], 1e-8)
    close(d.p_mean_variance(v_out, x_t, t)["mean"], golden[f"{key}/pmv_mean"], 1e-8)  # clipped x0, as golden
    terms = d.training_losses(v_out, x0, t, noise)
    close(terms["vb"], golden[f"{key}/vb"], 1e-8)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02, prediction_type="v_prediction")
    velocity = scheduler.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    mse = ((velocity - v_out[:, :, :4]) ** 2).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(terms["mse"], mse, rtol=2e-6)  # diffusers' alphas are float32
    close(terms["loss"], terms["mse"] + terms["vb"])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(timestep_respacing="ddim7x"), ["timestep_respacing", "ddim7x"]),
        (dict(timestep_respacing="2000"), ["timestep_respacing", "2000"]),
        (dict(timestep_respacing="fast"), ["timestep_respacing", "fast"]),
        (dict(noise_schedule="sigmoid"), ["noise_schedule", "sigmoid"]),
        (dict(prediction_type="noise"), ["prediction_type", "noise"]),
        (dict(diffusion_steps=0), ["diffusion_steps"]),
    ],
)
def test_bad_arguments(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        latte_rs.GaussianDiffusion(**kwargs)
    for w in words:
        assert w in str(info.value)


def test_bad_inputs(golden) -> None:
    d = latte_rs.GaussianDiffusion(timestep_respacing="250")
    x0, noise = golden["inputs/x_start"], golden["inputs/noise"]
    with pytest.raises(ValueError, match=r"t: expected steps in \[0, 250\), got 537"):
        d.q_sample(x0, golden["inputs/t"], noise)
    with pytest.raises(ValueError, match="t: expected 4 timesteps"):
        d.q_sample(x0, np.array([1, 2]), noise)
    with pytest.raises(TypeError, match="t: expected integer"):
        d.q_sample(x0, np.array([1.0, 2.0, 3.0, 4.0]), noise)
    with pytest.raises(ValueError, match="noise: expected shape"):
        d.q_sample(x0, np.array([1, 2, 3, 4]), noise[:, :1])
    with pytest.raises(ValueError, match=r"model_output: expected shape \[4, 2, 8, 4, 4\] \(learned variance"):
        d.p_mean_variance(golden["inputs/model_output_fixed"], x0, np.array([1, 2, 3, 4]))
