"""Sampling latents from a Latte model: the Rust core's one sampling loop runs every step; Python only shows
progress."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from . import _native
from ._native import GaussianDiffusion, LatteModel, Scheduler


def progress_bar(progress: bool, desc: str = "sampling"):
    """A tqdm bar and the ``callback(done, total)`` that drives it (the native loops call it after each step)."""
    bar = tqdm(total=None, desc=desc, unit="step", disable=not progress)

    def callback(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return bar, callback


def sample(
    model: LatteModel,
    diffusion: Any,
    num_samples: int = 1,
    *,
    num_inference_steps: int | None = None,
    noise: Any = None,
    y: Any = None,
    cfg_scale: float = 1.0,
    sampler: Literal["ddpm", "ddim"] = "ddpm",
    eta: float = 0.0,
    seed: int = 0,
    clip_denoised: bool = False,
    progress: bool = True,
    cache: Any = None,
    num_frames: int | None = None,
    long_video: Literal["windows", "fifo"] | None = None,
    window_stride: int | None = None,
    lookahead_denoising: bool | None = None,
) -> np.ndarray:
    """Generates latent videos (B, F, C, H, W) as the official ``sample/sample.py`` does.

    Args:
        model: the denoiser.
        diffusion: the process to sample, e.g. ``GaussianDiffusion(timestep_respacing="250")`` (DDPM, the
            official default) or ``GaussianDiffusion(timestep_respacing="ddim50")`` with ``sampler="ddim"``; or a
            diffusers-style scheduler (``DDPMScheduler``, ``DDIMScheduler``, ``EulerDiscreteScheduler``,
            ``DPMSolverMultistepScheduler``), run on the model's prediction channels (its learned variance only
            for a scheduler whose ``variance_type`` is learned, as diffusers' pipelines do).
        num_samples: clips to generate when ``noise`` is not given.
        num_inference_steps: a scheduler's steps (default 50); a ``GaussianDiffusion`` samples the steps of its
            ``timestep_respacing``, so leave it unset (or give exactly that number).
        noise: the starting noise x_T (B, F, C, H, W); drawn from ``seed`` when omitted.
        y: class labels (B,) for a class-conditional model.
        cfg_scale: classifier-free guidance scale; above 1 the batch runs twice, the second half with the null
            class, and guidance applies to the first ``in_channels`` output channels (as the official code).
        sampler: ``"ddpm"`` (ancestral) or ``"ddim"``, for a ``GaussianDiffusion`` (a scheduler samples as itself).
        eta: DDIM's stochasticity, for ``sampler="ddim"`` or a ``DDIMScheduler``; other samplers have none, and
            a non-zero ``eta`` with them is an error rather than ignored.
        seed: seeds the starting noise (when drawn) and every step's noise. Same seed, same result.
        clip_denoised: clip each x0 estimate to [-1, 1] (the official sampler does not), for a
            ``GaussianDiffusion`` (a scheduler clips by its ``clip_sample`` config).
        progress: show a progress bar.
        cache: a caching policy (``latte_rs.TeaCache(...)``, ``PyramidAttentionBroadcast(...)`` or
            ``FasterCache(...)``) that skips work across steps; after the run its ``report`` says which steps,
            blocks and attention layers were computed and skipped.
        num_frames: frames to generate (default: the noise's, else the model's). Beyond the trained length
            ``long_video`` says how they are made (see the Long videos docs page); within it nothing changes.
        long_video: ``"windows"`` (the default): every step runs the model over sliding windows of the trained
            length, their outputs fused per frame, the starting noise rescheduled FreeNoise-style; or ``"fifo"``
            (FIFO-Diffusion's diagonal denoising): a queue of frames at increasing noise levels, one timestep per
            frame, one frame leaving clean per iteration; its queue holds ``num_inference_steps`` frames (at least
            the trained length).
        window_stride: for ``"windows"``: frames between the windows' starts, 1 to the trained length (default:
            half of it).
        lookahead_denoising: for ``"fifo"``: FIFO-Diffusion's lookahead denoising (windows half a window apart,
            each frame updated where it sees the frames ahead of it; twice the model calls), default True.

    >>> import latte_rs
    >>> model = latte_rs.LatteModel(latte_rs.LatteConfig.preset("Latte-S/8", num_frames=4, input_size=16))
    >>> d = latte_rs.GaussianDiffusion(timestep_respacing="ddim5")
    >>> latte_rs.sample(model, d, sampler="ddim", progress=False).shape
    (1, 4, 4, 16, 16)
    """
    if isinstance(diffusion, GaussianDiffusion):
        native = diffusion
    else:
        native = getattr(diffusion, "core", None)
        if not isinstance(native, Scheduler):
            raise TypeError(f"diffusion: expected a GaussianDiffusion or a latte-rs scheduler, got {type(diffusion)}")
        if sampler != "ddpm":
            raise ValueError(f"sampler: chooses how a GaussianDiffusion samples; {type(diffusion).__name__} samples "
                             "as itself (use DDIMScheduler for DDIM)")
        if clip_denoised:
            raise ValueError(f"clip_denoised: applies to a GaussianDiffusion; {type(diffusion).__name__} clips by "
                             "its clip_sample config")
        if num_inference_steps is None:
            num_inference_steps = 50
    bar, callback = progress_bar(progress)
    try:
        return _native.sample(model, native, noise=noise, num_samples=num_samples, y=y, guidance_scale=cfg_scale,
                              eta=eta, num_inference_steps=num_inference_steps, sampler=sampler,
                              clip_denoised=clip_denoised, seed=seed, callback=callback, cache=cache,
                              num_frames=num_frames, long_video=long_video, window_stride=window_stride,
                              lookahead_denoising=lookahead_denoising)
    finally:
        bar.close()
