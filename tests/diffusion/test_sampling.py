"""Sampling loops: the official sampler's results, reproducibility, progress, bad arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import load_official_case, tiny_config

GOLDEN = Path(__file__).parent / "fixtures" / "sampling.npz"


def official_model(name: str) -> latte_rs.LatteModel:
    case = load_official_case(name)
    model = latte_rs.LatteModel(latte_rs.LatteConfig(**case["config"]))
    model.load_state_dict(case["params"])
    return model


@pytest.mark.parametrize("name", ["v1_uncond", "v1_class"])
def test_ddim_run_matches_the_official_sampler(name: str) -> None:
    """Ten DDIM steps (eta 0) from the same noise, with guidance for the class model, as sample/sample.py."""
    with np.load(GOLDEN) as z:
        g = {k[len(name) + 1 :]: z[k] for k in z.files if k.startswith(name + "/")}
        respacing = str(z["respacing"])
    d = latte_rs.GaussianDiffusion(timestep_respacing=respacing)
    kwargs = {"y": g["y"], "cfg_scale": float(g["cfg_scale"])} if "y" in g else {}
    out = latte_rs.sample(official_model(name), d, noise=g["noise"], sampler="ddim", progress=False, **kwargs)
    assert out.shape == g["samples"].shape
    err = np.abs(out - g["samples"]).max() / np.abs(g["samples"]).max()
    assert err < 1e-5, err
    assert np.abs(out - g["noise"]).max() > 0.1  # the run did move


def test_same_seed_same_samples(rng) -> None:
    model = latte_rs.LatteModel(tiny_config(num_classes=3), seed=0)
    model.load_state_dict({k: v + 0.02 for k, v in model.state_dict().items()})
    d = latte_rs.GaussianDiffusion(timestep_respacing="8")
    y = np.array([0, 2])
    a = latte_rs.sample(model, d, 2, y=y, cfg_scale=2.0, seed=5, progress=False)
    b = latte_rs.sample(model, d, 2, y=y, cfg_scale=2.0, seed=5, progress=False)
    c = latte_rs.sample(model, d, 2, y=y, cfg_scale=2.0, seed=6, progress=False)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ddim = latte_rs.sample(model, d, 2, y=y, sampler="ddim", seed=5, progress=False)
    assert np.all(np.isfinite(ddim)) and not np.array_equal(ddim, a)


def test_progress_callback_sees_every_step_and_can_stop_the_loop() -> None:
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    d = latte_rs.GaussianDiffusion(timestep_respacing="6")
    seen = []
    d.sample(model, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        d.sample(model, callback=stop)


def test_bad_sampling_arguments() -> None:
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    d = latte_rs.GaussianDiffusion(timestep_respacing="4")
    with pytest.raises(ValueError, match="sampler"):
        latte_rs.sample(model, d, sampler="euler", progress=False)
    with pytest.raises(ValueError, match="cfg_scale > 1 needs a class-conditional model"):
        latte_rs.sample(model, d, cfg_scale=4.0, progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        latte_rs.sample(model, d, 0, progress=False)
    with pytest.raises(ValueError, match="x: expected"):
        latte_rs.sample(model, d, noise=np.zeros((1, 3, 4, 8, 8), np.float32), progress=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda: latte_rs.DDPMScheduler(clip_sample=False),
        lambda: latte_rs.DDIMScheduler(clip_sample=False),
        lambda: latte_rs.EulerDiscreteScheduler(use_karras_sigmas=True),
        lambda: latte_rs.DPMSolverMultistepScheduler(),
    ],
    ids=["ddpm", "ddim", "euler-karras", "dpm++2m"],
)
def test_rust_loop_with_schedulers_equals_a_python_loop(make) -> None:
    """The all-Rust loop gives what a diffusers-style Python loop over the same scheduler gives."""
    model = latte_rs.LatteModel(tiny_config(num_classes=3), seed=0)
    model.load_state_dict({k: v + 0.02 for k, v in model.state_dict().items()})
    noise = latte_rs.Generator(3).randn([2, 4, 4, 8, 8])
    y = np.array([0, 2])
    fast = latte_rs.sample(model, make(), 2, num_inference_steps=6, noise=noise, y=y, progress=False, seed=9)

    scheduler = make()
    scheduler.set_timesteps(6)
    gen = latte_rs.Generator(9)
    x = noise * np.float32(scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        eps = model(inp, np.full(2, float(t)), y=y)[:, :, :4]
        x = scheduler.step(eps, t, x, generator=gen).prev_sample
    np.testing.assert_allclose(fast, x, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(fast)) and np.abs(fast - noise).max() > 0.1


def test_scheduler_loop_with_guidance_and_bad_scheduler() -> None:
    model = latte_rs.LatteModel(tiny_config(num_classes=3), seed=0)
    s = latte_rs.DDIMScheduler(clip_sample=False)
    a = latte_rs.sample(model, s, 1, num_inference_steps=4, y=np.array([1]), cfg_scale=3.0, progress=False)
    b = latte_rs.sample(model, s, 1, num_inference_steps=4, y=np.array([1]), cfg_scale=3.0, progress=False)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 4, 4, 8, 8)
    with pytest.raises(TypeError, match="diffusion: expected a GaussianDiffusion or a latte-rs scheduler"):
        latte_rs.sample(model, object(), progress=False)


def _diffusers_ddim_loop(model, noise, y, steps, eta, seed, guidance=1.0, **config):
    """diffusers' DDIMScheduler driven by hand over our model, each step's variance noise drawn from
    latte_rs.Generator(seed) in the order our loop draws it (the starting noise is given; with eta > 0 every
    step draws, as in the official ddim_sample_loop)."""
    import torch
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(**config)
    ref.set_timesteps(steps)
    gen = latte_rs.Generator(seed)
    x = torch.from_numpy(noise)
    c = model.config.in_channels
    for t in ref.timesteps:
        batch = np.full(len(noise), float(t))
        eps = model(x.numpy(), batch, y=y)[:, :, :c]
        if guidance > 1:
            null = np.full_like(y, model.config.num_classes)
            uncond = model(x.numpy(), batch, y=null)[:, :, :c]
            eps = uncond + guidance * (eps - uncond)
        z = torch.from_numpy(gen.randn(list(noise.shape)))
        x = ref.step(torch.from_numpy(eps), t, x, eta=eta, variance_noise=z).prev_sample
    return x.numpy()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ddim_with_eta_matches_the_diffusers_loop_through_sample_and_the_pipeline(guidance) -> None:
    """eta > 0 reaches DDIM through latte_rs.sample (a DDIMScheduler, and a GaussianDiffusion with
    sampler="ddim") and through LattePipeline: each equals diffusers' DDIM loop given the same per-step noise."""
    pytest.importorskip("diffusers")
    model = latte_rs.LatteModel(tiny_config(num_classes=3), seed=0)
    model.load_state_dict({k: v + 0.02 for k, v in model.state_dict().items()})
    noise = latte_rs.Generator(3).randn([2, 4, 4, 8, 8])
    y = np.array([0, 2])
    config = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False)
    want = _diffusers_ddim_loop(model, noise, y, 5, 0.7, seed=11, guidance=guidance, **config)
    deterministic = _diffusers_ddim_loop(model, noise, y, 5, 0.0, seed=11, guidance=guidance, **config)
    assert np.abs(want - deterministic).max() > 1e-2  # eta matters

    scheduler = latte_rs.DDIMScheduler(**config)
    got = latte_rs.sample(model, scheduler, noise=noise, y=y, num_inference_steps=5, eta=0.7, seed=11,
                          cfg_scale=guidance, progress=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    pipe = latte_rs.LattePipeline(model, scheduler=scheduler)
    out = pipe(class_labels=[0, 2], num_inference_steps=5, eta=0.7, seed=11, latents=noise, guidance_scale=guidance,
               output_type="latent", progress=False)
    np.testing.assert_allclose(out.latents, want, rtol=1e-4, atol=1e-5)

    # The official process respaced to 5 DDIM steps is the same sampler (leading spacing, ᾱ_prev = 1 at the end).
    d = latte_rs.GaussianDiffusion(timestep_respacing="ddim5")
    got = latte_rs.sample(model, d, noise=noise, y=y, sampler="ddim", eta=0.7, seed=11, cfg_scale=guidance,
                          progress=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_eta_is_refused_where_no_sampler_reads_it_and_steps_are_not_silently_ignored() -> None:
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="eta: DDPMScheduler has no eta"):
        latte_rs.sample(model, latte_rs.DDPMScheduler(), eta=0.5, num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"eta: GaussianDiffusion \(ddpm\) has no eta"):
        latte_rs.sample(model, latte_rs.GaussianDiffusion(timestep_respacing="4"), eta=0.5, progress=False)
    with pytest.raises(ValueError, match="num_inference_steps: expected 4, the steps of this GaussianDiffusion"):
        latte_rs.sample(model, latte_rs.GaussianDiffusion(timestep_respacing="4"), num_inference_steps=50,
                        progress=False)
    with pytest.raises(ValueError, match="sampler: chooses how a GaussianDiffusion samples"):
        latte_rs.sample(model, latte_rs.DDPMScheduler(), sampler="ddim", progress=False)
