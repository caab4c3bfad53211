"""Pipelines: ``LattePipeline`` (class-conditional or unconditional Latte models: the paper's FaceForensics,
SkyTimelapse, UCF-101 and Taichi-HD models and ours) and ``LatteT2VPipeline`` (text-to-video with Latte-1).

``LatteT2VPipeline`` works as diffusers' ``LattePipeline``: prompts → T5 features → denoising with a
diffusers-style scheduler → VAE decode. Every network runs in Rust; no PyTorch needed.

>>> pipe = LatteT2VPipeline.from_pretrained("Latte-1")          # doctest: +SKIP
>>> out = pipe("a cat walking on grass", num_inference_steps=50, guidance_scale=7.5, video_length=16, seed=0)
... # doctest: +SKIP
>>> out.frames.shape                                             # doctest: +SKIP
(1, 16, 512, 512, 3)

The folder is a diffusers Latte-1 checkout: ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``
(``spiece.model``, read by :class:`latte_rs.text.T5Tokenizer`) and ``scheduler/``.
Without a text encoder or tokenizer, pass ``prompt_embeds`` (and ``negative_prompt_embeds``) yourself.

Differences from diffusers, by design: noise comes from ``seed`` (our generator, not torch's; pass
``latents=`` to start from given noise); prompts are lower-cased and stripped, which is what diffusers does
when ``clean_caption`` cannot run (it needs bs4 and ftfy); the caption cleaning itself is not reproduced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _native, hub
from ._native import LatteModel, LatteT2VTransformer, T5TextEncoder, VideoVAE, open_model
from .cache import CacheReport, cache_report
from .sampling import progress_bar, sample
from .schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, read_config
from .text import MAX_LENGTH, T5Tokenizer, encode_captions
from .video_io import frame_grid, save_gif, save_mp4
from .video_io import show as _show

SCHEDULERS = {c.__name__: c for c in (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                                       EulerDiscreteScheduler)}


def load_scheduler(folder: str | os.PathLike):
    """The scheduler a diffusers ``scheduler/`` folder describes (DDIM, DDPM, Euler or DPM-Solver++)."""
    path = Path(folder) / "scheduler_config.json"
    if not path.exists():
        raise FileNotFoundError(f"scheduler: no such file {path}")
    config = read_config(path)
    name = config.get("_class_name", "DDIMScheduler")
    if name not in SCHEDULERS:
        raise ValueError(f"{path}: scheduler {name!r} is not supported; expected one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)


@dataclass
class LatteOutput:
    """Generated videos, from either pipeline: ``frames`` ``(B, F, H, W, 3)`` as uint8 (``output_type="uint8"``,
    ``LattePipeline``'s default) or float32 in [0, 1] (``"np"``, ``LatteT2VPipeline``'s default, as diffusers), or
    the latents (``"latent"``); ``latents``: the final latents in the model's layout (``(B, F, C, h, w)`` for
    Latte, ``(B, C, F, h, w)`` for Latte-1); ``cache_report``: what a ``cache=`` policy computed and skipped;
    helpers to save and show."""

    frames: np.ndarray
    latents: np.ndarray
    fps: float = 8.0
    #: What the ``cache=`` policy computed and skipped (None without one).
    cache_report: CacheReport | None = None

    def save_gif(self, path: str | os.PathLike, index: int = 0, fps: float | None = None) -> Path:
        return save_gif(self.frames[index], path, fps or self.fps)

    def save_mp4(self, path: str | os.PathLike, index: int = 0, fps: float | None = None) -> Path:
        return save_mp4(self.frames[index], path, fps or self.fps)

    def grid(self, scale: int = 1) -> np.ndarray:
        """Every frame of every video in one image (a row per video), frames enlarged `scale` times."""
        return frame_grid(self.frames, scale=scale)

    def show(self, index: int = 0, width: int | None = 256):
        """The video inline in Jupyter."""
        return _show(self.frames[index], self.fps, width)


class LatteT2VPipeline:
    """Latte-1 text-to-video (see the module docs)."""

    def __init__(self, transformer: LatteT2VTransformer, scheduler: Any, vae: VideoVAE | None = None,
                 text_encoder: T5TextEncoder | None = None, tokenizer: T5Tokenizer | None = None) -> None:
        self.transformer, self.scheduler, self.vae = transformer, scheduler, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str = "cpu", dtype: str | None = None, *,
                        subfolder: str | None = None, revision: str | None = None) -> LatteT2VPipeline:
        """Reads a diffusers Latte-1 folder; ``vae/``, ``text_encoder/`` and ``tokenizer/`` are optional. ``folder``
        may be a Hugging Face Hub id (``"maxin-cn/Latte-1"``, with ``subfolder`` and ``revision``; a local folder
        of the same spelling wins; see :mod:`latte_rs.hub`)."""
        root = hub.resolve(folder, subfolder=subfolder, revision=revision, arg="folder")
        if not root.is_dir():
            raise FileNotFoundError(f"folder: no such directory {root}")
        transformer = LatteT2VTransformer.from_pretrained(root / "transformer", device=device, dtype=dtype)
        scheduler = load_scheduler(root / "scheduler")
        vae = VideoVAE.from_pretrained(root / "vae", device=device) if (root / "vae").is_dir() else None
        text_encoder = (T5TextEncoder.from_pretrained(root / "text_encoder", device=device, dtype=dtype)
                        if (root / "text_encoder").is_dir() else None)
        tokenizer = T5Tokenizer(root / "tokenizer") if (root / "tokenizer").is_dir() else None
        return cls(transformer, scheduler, vae, text_encoder, tokenizer)

    def _encode(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("prompt: this pipeline has no text encoder/tokenizer; pass prompt_embeds instead")
        return encode_captions(self.text_encoder, self.tokenizer, texts, max_length)

    def encode_prompt(self, prompt: str | list[str], negative_prompt: str | list[str] = "",
                      do_classifier_free_guidance: bool = True, num_videos_per_prompt: int = 1,
                      mask_feature: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """T5 features of the prompts and of the negative prompts, as ``LattePipeline.encode_prompt``: 120
        tokens; with ``mask_feature`` and one prompt, cut to the prompt's real tokens (both), with several
        prompts the padding positions zeroed."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds, mask = self._encode(prompts, MAX_LENGTH)
        negative = None
        if do_classifier_free_guidance:
            neg = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(neg) != len(prompts):
                raise ValueError(f"negative_prompt: expected {len(prompts)} prompts, got {len(neg)}")
            negative, _ = self._encode(neg, embeds.shape[1])
        embeds = np.repeat(embeds, num_videos_per_prompt, axis=0)
        mask = np.repeat(mask, num_videos_per_prompt, axis=0)
        if negative is not None:
            negative = np.repeat(negative, num_videos_per_prompt, axis=0)
        if mask_feature:
            if embeds.shape[0] == 1:
                keep = int(mask.sum())
                embeds = embeds[:, :keep]
                negative = negative[:, :keep] if negative is not None else None
            else:
                embeds = embeds * mask[:, :, None].astype(embeds.dtype)
        return embeds, negative

    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] = "",
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, num_videos_per_prompt: int = 1,
                 video_length: int | None = None, height: int | None = None, width: int | None = None,
                 seed: int = 0,
                 eta: float = 0.0, latents: Any = None, prompt_embeds: Any = None,
                 negative_prompt_embeds: Any = None, output_type: str = "np", mask_feature: bool = True,
                 enable_temporal_attentions: bool = True, decode_chunk_size: int = 14,
                 progress: bool = True, cache: Any = None, long_video: str | None = None,
                 window_stride: int | None = None, lookahead_denoising: bool | None = None) -> LatteOutput:
        """Generates videos; the arguments are diffusers' ``LattePipeline.__call__``'s (``seed`` replaces
        ``generator``). The prompt embeddings cross into Rust once; every denoising step runs there. Height and
        width default to the transformer's ``sample_size`` times the VAE's factor (512 for Latte-1). A transformer
        of 3 input channels without a VAE is a pixel-space model: its samples are the frames. ``cache``: a caching
        policy (``latte_rs.TeaCache``, ``PyramidAttentionBroadcast`` or ``FasterCache``); the output's
        ``cache_report`` says what it skipped. A ``video_length`` beyond the transformer's trained length samples
        over sliding windows (``long_video="windows"``, windows ``window_stride`` frames apart, default half the
        trained length) or by FIFO-Diffusion's diagonal denoising (``long_video="fifo"``, ``lookahead_denoising``;
        see ``latte_rs.sample``); the VAE decodes in chunks of ``decode_chunk_size`` frames."""
        cfg = self.transformer.config
        video_length = cfg["video_length"] if video_length is None else video_length
        if output_type not in ("np", "uint8", "latent"):
            raise ValueError(f"output_type: expected 'np', 'uint8' or 'latent', got {output_type!r}")
        pixel = self.vae is None and cfg["in_channels"] == 3
        if output_type != "latent" and self.vae is None and not pixel:
            raise ValueError("output_type: decoding needs a VAE (this pipeline has none); use 'latent'")
        scale = self.vae.downsample_factor if self.vae is not None else (1 if pixel else 8)
        height = cfg["sample_size"] * scale if height is None else height
        width = cfg["sample_size"] * scale if width is None else width
        if height % (scale * cfg["patch_size"]) or width % (scale * cfg["patch_size"]):
            raise ValueError(f"height/width: expected multiples of {scale * cfg['patch_size']}, got {height}x{width}")
        cfg_on = guidance_scale > 1.0
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("prompt: give a prompt or prompt_embeds")
            embeds, negative = self.encode_prompt(prompt, negative_prompt, cfg_on, num_videos_per_prompt,
                                                  mask_feature)
        else:
            embeds, negative = prompt_embeds, negative_prompt_embeds
            if cfg_on and negative is None:
                raise ValueError("negative_prompt_embeds: required with prompt_embeds when guidance_scale > 1")
        batch = len(embeds)
        shape = (batch, cfg["in_channels"], video_length, height // scale, width // scale)
        if latents is not None and tuple(np.shape(latents)) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(np.shape(latents))}")
        transformer = self.transformer.with_temporal_attentions(enable_temporal_attentions)
        bar, callback = progress_bar(progress)
        try:
            latents = _native.sample(transformer, self.scheduler.core, noise=latents, num_samples=batch,
                                     latent_shape=list(shape), encoder_hidden_states=embeds,
                                     negative_encoder_hidden_states=negative if cfg_on else None,
                                     guidance_scale=guidance_scale, eta=eta, num_inference_steps=num_inference_steps,
                                     seed=seed, callback=callback, cache=cache, long_video=long_video,
                                     window_stride=window_stride, lookahead_denoising=lookahead_denoising)
        finally:
            bar.close()
        report = cache_report(cache)
        if output_type == "latent":
            return LatteOutput(latents, latents, cache_report=report)
        video = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4))  # (B, F, C, H, W)
        if not pixel:
            video = self.vae.decode(video, chunk_size=decode_chunk_size)
        frames = np.clip(video / 2 + 0.5, 0, 1).transpose(0, 1, 3, 4, 2)  # (B, F, H, W, 3)
        if output_type == "uint8":
            frames = (frames * 255).round().astype(np.uint8)
        return LatteOutput(np.ascontiguousarray(frames, dtype=frames.dtype), latents, cache_report=report)


#: Latte's training process: 1000 linear betas from 1e-4 to 0.02 (the official ``create_diffusion``).
TRAINING_BETAS: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                      beta_schedule="linear")


def default_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """Ancestral DDPM over Latte's training process (1000 linear betas from 1e-4 to 0.02): the official
    ``sample.py``'s sampler (``sample_method: ddpm``). It forgives a model's noise-prediction error at high noise
    levels far better than deterministic DDIM, which can lock an early error in (see ``latte_rs.demo``).
    ``prediction_type`` is what the model predicts (Latte's "epsilon", or "v_prediction" / "sample" for models
    trained so: what ``latte_rs.open_model(path).prediction_type`` reads off a checkpoint)."""
    return DDPMScheduler(**TRAINING_BETAS, clip_sample=False, prediction_type=prediction_type)


class LattePipeline:
    """Videos from a class-conditional or unconditional Latte model, with diffusers-style arguments.

    >>> import latte_rs
    >>> cfg = latte_rs.LatteConfig.preset("Latte-S/8", num_frames=4, input_size=16, in_channels=3,
    ...                                   num_classes=3)
    >>> pipe = LattePipeline(latte_rs.LatteModel(cfg, seed=0))    # a pixel-space model: no VAE needed
    >>> out = pipe(class_labels=[0, 2], num_inference_steps=2, progress=False)
    >>> out.frames.shape, out.frames.dtype
    ((2, 4, 16, 16, 3), dtype('uint8'))
    """

    def __init__(self, model: LatteModel, scheduler: Any = None, vae: VideoVAE | None = None,
                 fps: float = 8.0) -> None:
        self.model, self.vae, self.fps = model, vae, fps
        self.scheduler = scheduler if scheduler is not None else default_scheduler()

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike, vae: str | os.PathLike | VideoVAE | None = None,
                        scheduler: Any = None, preset: str | None = None, use_ema: bool = True,
                        device: str = "cpu", *, subfolder: str | None = None, revision: str | None = None,
                        filename: str | None = None, **overrides: Any) -> LattePipeline:
        """A pipeline for any checkpoint ``LatteModel.from_checkpoint`` reads (official ``.pt``, safetensors,
        our trainer's folders), with a diffusers ``vae/`` folder for latent models. Without ``scheduler``:
        ancestral DDPM for what the checkpoint predicts (``open_model``'s ``prediction_type``). ``checkpoint`` and
        ``vae`` may be Hugging Face Hub ids (``LattePipeline.from_pretrained("maxin-cn/Latte", filename=
        "ucf101.pt", vae="maxin-cn/Latte/vae")``; ``subfolder``, ``revision`` and ``filename`` apply to the
        checkpoint; see :mod:`latte_rs.hub`)."""
        opened = open_model(str(checkpoint), kind="latte", preset=preset, use_ema=use_ema, device=device,
                            subfolder=subfolder, revision=revision, filename=filename, **overrides)
        if scheduler is None:
            scheduler = default_scheduler(opened.prediction_type)
        if vae is not None and not isinstance(vae, VideoVAE):
            vae = VideoVAE.from_pretrained(str(vae), device=device)
        return cls(opened.model, scheduler, vae)

    def __call__(self, class_labels: int | list[int] | np.ndarray | None = None, num_videos: int = 1,
                 num_inference_steps: int = 50, guidance_scale: float = 1.0, seed: int = 0, eta: float = 0.0,
                 latents: Any = None, output_type: str = "uint8", decode_chunk_size: int = 16,
                 progress: bool = True, prompt: Any = None, cache: Any = None, num_frames: int | None = None,
                 long_video: str | None = None, window_stride: int | None = None,
                 lookahead_denoising: bool | None = None) -> LatteOutput:
        """Generates videos.

        Args:
            class_labels: a label or labels for a class-conditional model (one video each); None for an
                unconditional model.
            num_videos: videos per label (or in all, unconditional).
            num_inference_steps: denoising steps of the scheduler (ancestral DDPM by default, as the official
                ``sample.py``; pass ``scheduler=`` for DDIM, Euler or DPM-Solver++).
            guidance_scale: classifier-free guidance (above 1 needs a model trained with label dropout).
            seed: the starting noise and every step's noise. Same seed, same videos.
            eta: DDIM's stochasticity (with a ``DDIMScheduler``; other schedulers have none).
            latents: starting noise ``(B, F, C, h, w)`` instead of drawing it.
            output_type: "uint8", "np" (float in [0, 1]) or "latent".
            cache: a caching policy (``latte_rs.TeaCache``, ``PyramidAttentionBroadcast`` or ``FasterCache``) that
                skips work across steps; the output's ``cache_report`` says what it computed and skipped.
            num_frames, long_video, window_stride, lookahead_denoising: frames per video (default: the model's);
                beyond the trained length the model samples over sliding windows or by FIFO-Diffusion's diagonal
                denoising (see ``latte_rs.sample``).
            prompt: refused: this model takes class labels, not text (``LatteT2VPipeline`` takes prompts). It is
                an argument only so that a prompt is an error instead of being dropped.
        """
        cfg = self.model.config
        if prompt is not None:
            kind = "class-conditional" if cfg.num_classes > 0 else "unconditional"
            raise ValueError(f"prompt: this is a {kind} Latte model, which takes no text (prompt {prompt!r} would "
                             "be ignored); give class_labels, or use a text-to-video model (LatteT2VPipeline)")
        if output_type not in ("uint8", "np", "latent"):
            raise ValueError(f"output_type: expected 'uint8', 'np' or 'latent', got {output_type!r}")
        if not isinstance(num_videos, (int, np.integer)) or num_videos < 1:
            raise ValueError(f"num_videos: expected a positive int, got {num_videos!r}")
        y = None
        if cfg.num_classes > 0:
            if class_labels is None:
                raise ValueError(f"class_labels: required for this class-conditional model (0..{cfg.num_classes - 1})")
            labels = np.atleast_1d(np.asarray(class_labels))
            if labels.dtype.kind not in "iu" or labels.ndim != 1 or labels.min() < 0 or labels.max() >= cfg.num_classes:
                raise ValueError(f"class_labels: expected ints in [0, {cfg.num_classes}), got {class_labels!r}")
            y = np.repeat(labels.astype(np.int64), num_videos)
            count = len(y)
        else:
            if class_labels is not None:
                raise ValueError("class_labels: this model is unconditional (num_classes=0)")
            if guidance_scale > 1.0:
                raise ValueError("guidance_scale: classifier-free guidance needs a class-conditional model")
            count = num_videos
        if output_type != "latent" and self.vae is None and cfg.in_channels != 3:
            raise ValueError(f"vae: this model makes {cfg.in_channels}-channel latents; pass vae= (a diffusers vae/ "
                             "folder) or use output_type='latent'")
        out = sample(self.model, self.scheduler, count, num_inference_steps=num_inference_steps, noise=latents,
                     y=y, cfg_scale=guidance_scale, eta=eta, seed=seed, progress=progress, cache=cache,
                     num_frames=num_frames, long_video=long_video, window_stride=window_stride,
                     lookahead_denoising=lookahead_denoising)
        report = cache_report(cache)
        if output_type == "latent":
            return LatteOutput(out, out, self.fps, report)
        video = self.vae.decode(out, chunk_size=decode_chunk_size) if self.vae is not None else out
        frames = np.clip(video.transpose(0, 1, 3, 4, 2) / 2 + 0.5, 0.0, 1.0).astype(np.float32)
        if output_type == "uint8":
            frames = (frames * 255).round().astype(np.uint8)
        return LatteOutput(np.ascontiguousarray(frames), out, self.fps, report)
