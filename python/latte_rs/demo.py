"""`latte-rs demo`: train a small Latte on the built-in synthetic videos, sample from it, and write what a person
wants to look at: GIF and MP4 samples, a grid of frames, the loss curve, a score against held-out real clips,
prompt-to-video samples of the built-in text-to-video model with its prompt following on captions it never saw,
and a JSON summary. No downloads, CPU only, a few minutes on two cores.

The score is a Fréchet distance like FVD's, but over features that need no download (``pixel_features``): fixed
random projections of 8×8 thumbnails and of frame differences (appearance and motion). It compares runs of the
demo (trained model, untrained model, noise) on the same real clips; it is not comparable with published FVD.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import tiny_t2v
from ._files import atomic_write_text
from ._native import LatteModel
from .cache import cache_report, make_cache
from .data.synthetic import BACKGROUND, CLASS_COLOURS
from .evaluation.metrics import RunningStats, frechet_distance, psnr
from .pipelines import LattePipeline
from .training import load_config, make_dataset, model_config, train
from .video_io import frame_grid, save_gif, save_mp4, save_png

ASSETS = Path(__file__).parent / "assets"
#: The demo's training config (also the recipe of the shipped tiny model): class-conditional (4 shapes), pixel
#: space, 8 frames of 16×16.
CONFIG_FILE = ASSETS / "tiny_synthetic.yaml"
#: The shipped tiny model (EMA weights of `latte-rs train --config assets/tiny_synthetic.yaml --steps 8000`).
TINY_MODEL = ASSETS / "tiny_synthetic.safetensors"
#: Classifier-free guidance for the tiny model (trained with 10% label dropout): 2 gives solid shapes of the
#: class's colour; 1 (no guidance) more varied but ragged ones.
TINY_GUIDANCE = 2.0
#: The demo's grids show each 16×16 frame enlarged this many times (nearest neighbour).
GRID_SCALE = 8
#: The demo samples with FasterCache (diffusers' defaults): on the built-in class model it kept FVD (176.6 with and
#: without, 64 clips) at 1.30x, and the text model's prompt following at 1.42x (docs/caching.md).
DEMO_CACHE = "fastercache"
CACHE_DESCRIPTIONS = {"none": "no cache", "teacache": "TeaCache() (the model's fitted coefficients, threshold 0.1)",
                      "fastercache": "FasterCache() (diffusers' FasterCacheConfig defaults)",
                      "pab": "PyramidAttentionBroadcast() (diffusers' defaults: spatial attention every 2nd step)"}


def demo_config() -> dict[str, Any]:
    return load_config(CONFIG_FILE)


def tiny_model():
    """The shipped tiny model (a ``LatteModel``, see ``assets/tiny_synthetic.yaml``)."""
    return LatteModel.load(str(TINY_MODEL))


def fit_teacache(runs: int = 3, seed: int = 0, steps: int = 50):
    """Fits the shipped tiny model's TeaCache coefficients (``TeaCache.fit``) on its sampler (ancestral DDPM) and
    guidance, one clip per class per run, and writes them beside it (``tiny_synthetic.teacache.json``)."""
    from .cache import TeaCache

    pipe = LattePipeline(tiny_model())
    fitted = TeaCache.fit(pipe, runs=runs, seed=seed, class_labels=[0, 1, 2, 3], guidance_scale=TINY_GUIDANCE,
                          num_inference_steps=steps, output_type="np")
    fitted.save(TINY_MODEL, fitted_on=f"latte_rs.demo.fit_teacache(runs={runs}, seed={seed}, steps={steps}): "
                f"{len(fitted.fit_data[0])} steps of ancestral DDPM, classes 0-3, guidance {TINY_GUIDANCE}")
    return fitted


def pixel_features(videos, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Download-free clip features ``(B, 2·dim)``: fixed Gaussian random projections (from `seed`) of each clip's
    8×8 thumbnails (appearance) and of their frame-to-frame differences ×4 (motion; the factor makes a small
    shape's motion weigh about as much as its appearance). Videos ``(B, F, H, W, 3)`` uint8, or float in
    [0, 1]; H and W multiples of 8."""
    v = np.asarray(videos)
    v = v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v.astype(np.float32)
    if v.ndim != 5 or v.shape[2] % 8 or v.shape[3] % 8 or v.shape[4] != 3 or v.shape[1] < 2:
        raise ValueError(f"videos: expected (B, F >= 2, H, W, 3) with H, W multiples of 8, got {v.shape}")
    b, f, h, w, c = v.shape
    thumbs = v.reshape(b, f, 8, h // 8, 8, w // 8, 3).mean(axis=(3, 5))  # (B, F, 8, 8, 3)
    motion = 4.0 * np.diff(thumbs, axis=1)
    rng = np.random.default_rng(seed)
    out = []
    for part in (thumbs, motion):
        flat = part.reshape(b, -1)
        proj = rng.standard_normal((flat.shape[1], dim)) / np.sqrt(flat.shape[1])
        out.append(flat @ proj)
    return np.concatenate(out, axis=1)


def pixel_fd(real, fake, seed: int = 0) -> float:
    """Fréchet distance between the ``pixel_features`` of two sets of videos (see the module docs)."""
    stats = []
    for videos in (real, fake):
        feats = pixel_features(videos, seed=seed)
        s = RunningStats(feats.shape[1])
        s.update(feats)
        stats.append(s.mean_cov(ddof=1))
    return frechet_distance(*stats[0], *stats[1])


def class_colour_accuracy(videos, labels) -> float:
    """The fraction of videos whose shape has its class's colour (for datasets made with ``class_colours``):
    the mean colour of the pixels that differ from the background is nearest to ``CLASS_COLOURS[label]``. A
    video with almost no such pixels counts as wrong. Videos ``(B, F, H, W, 3)`` uint8."""
    v = np.asarray(videos)
    if v.ndim != 5 or v.shape[-1] != 3 or v.dtype != np.uint8:
        raise ValueError(f"videos: expected (B, F, H, W, 3) uint8, got {v.shape} {v.dtype}")
    labels = np.asarray(labels)
    if labels.shape != (v.shape[0],):
        raise ValueError(f"labels: expected ({v.shape[0]},), got {labels.shape}")
    rgb = v.astype(np.float32) / 127.5 - 1.0  # back to [-1, 1]
    palette = np.asarray(CLASS_COLOURS, np.float32)
    right = 0
    for video, label in zip(rgb, labels, strict=True):
        fg = np.abs(video - BACKGROUND).max(axis=-1) > 0.4
        if fg.sum() < 0.01 * fg.size:
            continue
        mean = video[fg].mean(axis=0)
        right += int(np.argmin(((palette - mean) ** 2).sum(axis=1)) == label)
    return right / len(labels)


def real_clips(num: int, cfg: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out synthetic clips ``(num, F, H, W, 3)`` uint8 and their labels (a seed the training never used)."""
    ds = make_dataset({**cfg, "num_clips": num, "global_seed": seed})
    clips, labels = zip(*(ds[i] for i in range(num)), strict=True)
    videos = np.stack(clips).transpose(0, 1, 3, 4, 2)  # (B, F, H, W, 3) in [-1, 1]
    return (np.clip(videos / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8), np.asarray(labels)


#: The demo's prompts for the built-in text-to-video model: four combinations it never saw in training
#: (``data.synthetic.HELD_OUT``) and four it did.
DEMO_PROMPTS = ("a red square moving right", "a green disc moving left", "a blue triangle moving right",
                "a yellow cross moving left", "a green square moving up", "a blue disc moving down",
                "a yellow triangle moving up", "a red cross moving down")


def text_to_video(out: Path, seed: int = 0, progress: bool = True, videos_per_combination: int = 2,
                  cache: str = "none", compare: bool = False) -> dict[str, Any]:
    """The built-in text-to-video model's part of the demo: GIF/MP4 and a grid for ``DEMO_PROMPTS`` (a row per
    prompt, in ``t2v_prompts.txt``) and its prompt following on the held-out combinations, measured on the
    pixels (``latte_rs.tiny_t2v.evaluate``), sampled with the caching policy ``cache`` (a ``CACHES`` name);
    with ``compare``, the prompt following without the cache too."""
    pipe = tiny_t2v.pipeline()
    samples = tiny_t2v.generate(list(DEMO_PROMPTS), seed=seed, progress=progress, pipe=pipe,
                                cache=make_cache(cache))
    files = []
    for i, video in enumerate(samples.frames):
        files.append(str(save_gif(video, out / f"t2v_{i:02d}.gif", fps=6)))
        files.append(str(save_mp4(video, out / f"t2v_{i:02d}.mp4", fps=6)))
    save_png(frame_grid(samples.frames, scale=GRID_SCALE), out / "t2v_grid.png")
    atomic_write_text(out / "t2v_prompts.txt", "\n".join(DEMO_PROMPTS) + "\n")
    timed = _Timed()
    scores = timed("cached", lambda: tiny_t2v.evaluate("held_out", videos_per_combination, seed=seed + 1,
                                                       pipe=pipe, cache=make_cache(cache)))
    result = {"prompts": list(DEMO_PROMPTS), "samples": files, "grid": str(out / "t2v_grid.png"),
              "held_out_prompt_following": scores,
              "score": "fraction of videos whose colour, shape and direction, read off the pixels, match the "
                       "prompt (latte_rs.evaluation.prompt_following; chance 0.25 each)",
              "guidance_scale": tiny_t2v.GUIDANCE, "steps": tiny_t2v.STEPS}
    if compare:
        result["held_out_prompt_following_without_cache"] = timed(
            "uncached", lambda: tiny_t2v.evaluate("held_out", videos_per_combination, seed=seed + 1, pipe=pipe))
    result["evaluation_seconds"] = timed.seconds
    return result


class _Timed:
    """Runs callables and keeps each one's wall time under its name (seconds, rounded)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn):
        start = time.perf_counter()
        value = fn()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
        return value


def run_demo(output_dir: str | Path = "latte-demo", steps: int = 1000, num_samples: int = 8,
             sampling_steps: int = 50, guidance_scale: float = TINY_GUIDANCE, eval_clips: int = 64, seed: int = 0,
             progress: bool = True, cache: str = DEMO_CACHE, compare_cache: bool = True) -> dict[str, Any]:
    """Trains, samples (ancestral DDPM, `guidance_scale`, the caching policy `cache`: a ``latte_rs.cache.CACHES``
    name), scores and writes everything to `output_dir`; returns the summary (also in ``summary.json``). With
    `compare_cache` (and a cache), the trained model's score and the text model's prompt following are also
    measured without the cache, on the same seeds, with both sampling times."""
    make_cache(cache)  # a bad name fails here, before the training
    compare = compare_cache and cache != "none"
    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**demo_config(), "global_seed": seed}
    result = train(cfg, output_dir=out / "train", max_steps=steps, progress=progress)
    shutil.copy(out / "train" / "loss.png", out / "loss.png")
    trained = result.trainer.ema_model()
    train_seconds = time.perf_counter() - start

    # Samples of the model just trained and, for comparison, of the built-in tiny model (the same recipe trained
    # for 8000 steps): what more training buys.
    labels = np.arange(num_samples) % cfg["num_classes"]
    sampling = dict(num_inference_steps=sampling_steps, guidance_scale=guidance_scale, progress=progress)
    pipes = {"trained": LattePipeline(trained), "pretrained": LattePipeline(tiny_model())}
    files = []
    for name, prefix, grid in (("trained", "sample", "grid.png"), ("pretrained", "pretrained", "pretrained_grid.png")):
        samples = pipes[name](class_labels=labels, seed=seed, cache=make_cache(cache), **sampling)
        for i, video in enumerate(samples.frames):
            files.append(str(save_gif(video, out / f"{prefix}_{i:02d}.gif", fps=6)))
            files.append(str(save_mp4(video, out / f"{prefix}_{i:02d}.mp4", fps=6)))
        save_png(frame_grid(samples.frames, scale=GRID_SCALE), out / grid)

    # The score: trained model, the tiny model, an untrained model (same config, its initial weights) and noise,
    # against held-out real clips, each with `eval_clips` clips of the same labels.
    pipes["untrained"] = LattePipeline(LatteModel(model_config(cfg), seed=seed))
    real, real_labels = real_clips(eval_clips, cfg, seed=seed + 1000)
    timed = _Timed()
    caches = {name: make_cache(cache) for name in pipes}
    fakes = {name: timed(f"{name} cached" if compare else name,
                         lambda pipe=pipe, c=caches[name]: pipe(class_labels=real_labels, seed=seed + 1, cache=c,
                                                                **sampling).frames)
             for name, pipe in pipes.items()}
    fakes["noise"] = np.random.default_rng(seed).integers(0, 256, real.shape, dtype=np.uint8)
    other_real, _ = real_clips(eval_clips, cfg, seed=seed + 2000)
    scores = {name: pixel_fd(real, frames) for name, frames in fakes.items()}
    scores["real_vs_real"] = pixel_fd(real, other_real)
    colour = None
    if cfg.get("class_colours"):
        colour = {name: class_colour_accuracy(fakes[name], real_labels) for name in pipes}
        colour["real"] = class_colour_accuracy(real, real_labels)
    cache_summary: dict[str, Any] = {"policy": cache, "description": CACHE_DESCRIPTIONS[cache]}
    report = cache_report(caches["trained"])
    if report is not None:
        cache_summary["trained_report"] = report.summary()
    if compare:  # the model this run trained, sampled again without the cache: what the cache cost and saved
        exact = timed("trained uncached", lambda: pipes["trained"](class_labels=real_labels, seed=seed + 1,
                                                                   **sampling).frames)
        cache_summary["trained_without_cache"] = {
            "score": round(pixel_fd(real, exact), 4),
            "class_colour_accuracy": class_colour_accuracy(exact, real_labels) if colour is not None else None,
            "psnr_db_of_cached_frames": _finite_or_none(psnr(fakes["trained"], exact))}
        cache_summary["sampling_speedup"] = round(timed.seconds["trained uncached"]
                                                  / max(timed.seconds["trained cached"], 1e-9), 2)
    cache_summary["evaluation_seconds"] = timed.seconds
    text = text_to_video(out, seed=seed, progress=progress, cache=cache, compare=compare)
    if compare:
        cache_summary["text_to_video_without_cache"] = text["held_out_prompt_following_without_cache"]
    last = result.history[-1] if result.history else {}
    summary = {
        "output_dir": str(out),
        "samples": files,
        "grid": str(out / "grid.png"),
        "pretrained_grid": str(out / "pretrained_grid.png"),
        "loss_plot": str(out / "loss.png"),
        "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "train_steps": steps,
        "sampling": {"scheduler": type(pipes["trained"].scheduler).__name__, "steps": sampling_steps,
                     "guidance_scale": guidance_scale, "cache": cache},
        "final_loss": last.get("loss"),
        "score": "pixel Fréchet distance to held-out real clips (latte_rs.demo.pixel_fd; lower is better)",
        "scores": {k: round(v, 4) for k, v in scores.items()},
        "class_colour_accuracy": colour,
        "cache": cache_summary,
        "text_to_video": text,
        "model": {"parameters": trained.num_parameters(), **{k: cfg[k] for k in ("num_frames", "image_size")}},
        "seconds": {"training": round(train_seconds, 1), "total": round(time.perf_counter() - start, 1)},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _finite_or_none(x: float) -> float | None:
    """`x` rounded to 2 decimals for JSON, None for inf (equal frames)."""
    return None if not np.isfinite(x) else round(float(x), 2)
