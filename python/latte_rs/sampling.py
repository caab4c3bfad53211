"""Sampling latents from a Latte model: every denoising step runs in Rust; Python only shows progress."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ._native import GaussianDiffusion, LatteModel, sample_with_scheduler


def sample(
    model: LatteModel,
    diffusion: Any,
    num_samples: int = 1,
    *,
    num_inference_steps: int = 50,
    noise: Any = None,
    y: Any = None,
    cfg_scale: float = 1.0,
    sampler: Literal["ddpm", "ddim"] = "ddpm",
    eta: float = 0.0,
    seed: int = 0,
    clip_denoised: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Generates latent videos (B, F, C, H, W) as the official ``sample/sample.py`` does.

    Args:
        model: the denoiser.
        diffusion: the process to sample, e.g. ``GaussianDiffusion(timestep_respacing="250")`` (DDPM, the
            official default) or ``GaussianDiffusion(timestep_respacing="ddim50")`` with ``sampler="ddim"``; or a
            diffusers-style scheduler (``DDPMScheduler``, ``DDIMScheduler``, ``EulerDiscreteScheduler``,
            ``DPMSolverMultistepScheduler``), run for ``num_inference_steps`` steps on the model's noise
            prediction (a learned variance is dropped, as LattePipeline does; ``sampler``, ``eta`` and
            ``clip_denoised`` then come from the scheduler's config).
        num_samples: clips to generate when ``noise`` is not given.
        noise: the starting noise x_T (B, F, C, H, W); drawn from ``seed`` when omitted.
        y: class labels (B,) for a class-conditional model.
        cfg_scale: classifier-free guidance scale; above 1 the batch runs twice, the second half with the null
            class, and guidance applies to the first ``in_channels`` output channels (as the official code).
        sampler: ``"ddpm"`` (ancestral) or ``"ddim"``; ``eta`` is DDIM's stochasticity.
        seed: seeds the starting noise (when drawn) and every step's noise. Same seed, same result.
        clip_denoised: clip each x0 estimate to [-1, 1] (the official sampler does not).
        progress: show a progress bar.

    >>> import latte_rs
    >>> model = latte_rs.LatteModel(latte_rs.LatteConfig.preset("Latte-S/8", num_frames=4, input_size=16))
    >>> d = latte_rs.GaussianDiffusion(timestep_respacing="ddim5")
    >>> latte_rs.sample(model, d, sampler="ddim", progress=False).shape
    (1, 4, 4, 16, 16)
    """
    if isinstance(diffusion, GaussianDiffusion):
        total = diffusion.num_timesteps

        def run(callback):
            return diffusion.sample(
                model,
                num_samples=num_samples,
                noise=noise,
                y=y,
                cfg_scale=cfg_scale,
                sampler=sampler,
                eta=eta,
                seed=seed,
                clip_denoised=clip_denoised,
                callback=callback,
            )
    else:
        native = getattr(diffusion, "_native", None)
        if native is None:
            raise TypeError(f"diffusion: expected a GaussianDiffusion or a latte-rs scheduler, got {type(diffusion)}")
        total = num_inference_steps

        def run(callback):
            return sample_with_scheduler(
                model,
                native,
                num_inference_steps,
                num_samples=num_samples,
                noise=noise,
                y=y,
                cfg_scale=cfg_scale,
                seed=seed,
                callback=callback,
            )

    bar = tqdm(total=total, desc="sampling", unit="step", disable=not progress)
    try:
        return run(lambda done, _total: bar.update(done - bar.n))
    finally:
        bar.close()
