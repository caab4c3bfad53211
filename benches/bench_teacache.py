"""TeaCache benchmark: the built-in text-to-video model's sampling loop with and without TeaCache, in one run.

Every setting samples the same videos: the held-out prompts of ``latte-rs tiny-t2v evaluate`` (prompt-following
combinations the model never saw in training), ``--videos`` per prompt, with the model's standard sampler
(``--steps`` ancestral DDPM steps, classifier-free guidance ``tiny_t2v.GUIDANCE``), from the same seed. For each
threshold it reports the wall time of the sampling loop and its speed-up over the uncached run, the steps and
block calls computed and skipped, the fidelity of the frames to the uncached frames (PSNR and SSIM over all
frames, latent MSE) and the prompt following (each attribute's accuracy, as ``tiny_t2v evaluate`` measures it on
the generated pixels) and its ratio to the uncached one. Timings are the best of ``--repeats`` runs, after one
untimed warm-up run. The
coefficients are the model's fitted ones (``assets/tiny_t2v/transformer/teacache.json``) unless
``--coefficients latte1`` asks for TeaCache's published Latte-1 polynomial.

    python benches/bench_teacache.py
    python benches/bench_teacache.py --thresholds 0.05 0.1 0.2 --repeats 3 --sampler ddim
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_label, host, write_results  # noqa: E402

from latte_rs.evaluation.metrics import psnr  # noqa: E402

ATTRIBUTES = ("colour", "shape", "direction")


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over the frames of videos ``(B, F, H, W, 3)`` (scikit-image's, 7x7 window, data range 1, per
    channel; without scikit-image, the same statistic with a uniform 7x7 window from scipy)."""
    a, b = (x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64) for x in (a, b))
    frames_a, frames_b = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        structural_similarity = None
    scores = []
    for fa, fb in zip(frames_a, frames_b, strict=True):
        if structural_similarity is not None:
            scores.append(structural_similarity(fa, fb, data_range=1.0, channel_axis=-1, win_size=7))
        else:
            scores.append(_ssim_scipy(fa, fb))
    return float(np.mean(scores))


def _ssim_scipy(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    from scipy.ndimage import uniform_filter

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    per_channel = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]
        mx, my = uniform_filter(x, win), uniform_filter(y, win)
        n = win * win
        cov = n / (n - 1)  # sample covariance, as scikit-image
        vx = (uniform_filter(x * x, win) - mx * mx) * cov
        vy = (uniform_filter(y * y, win) - my * my) * cov
        vxy = (uniform_filter(x * y, win) - mx * my) * cov
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        pad = win // 2
        per_channel.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(per_channel))


def sample_once(pipe, prompts, args, cache):
    from latte_rs import tiny_t2v

    start = time.perf_counter()
    out = tiny_t2v.generate(prompts, num_videos_per_prompt=args.videos, num_inference_steps=args.steps,
                            seed=args.seed, progress=False, pipe=pipe, cache=cache)
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--videos", type=int, default=4, help="videos per held-out prompt (evaluate's default)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                        help="ddpm: the built-in model's own sampler; ddim: DDIM over the same process")
    parser.add_argument("--coefficients", choices=("model", "latte1"), default="model")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import latte_rs
    from latte_rs import tiny_t2v
    from latte_rs.data.synthetic import HELD_OUT, synthetic_caption
    from latte_rs.evaluation.prompt_following import prompt_following

    pipe = tiny_t2v.pipeline()
    if args.sampler == "ddim":
        pipe.scheduler = latte_rs.DDIMScheduler(**latte_rs.pipelines.TRAINING_BETAS, clip_sample=False,
                                                prediction_type=pipe.scheduler.config["prediction_type"])
    combos = list(HELD_OUT)
    prompts = [synthetic_caption(*c) for c in combos]
    wanted = [c for c in combos for _ in range(args.videos)]
    coefficients = latte_rs.TeaCache.LATTE1_COEFFICIENTS if args.coefficients == "latte1" else None

    # One untimed short run first: the first sampling of a process pays one-time costs (allocator, tables).
    tiny_t2v.generate(prompts[:1], num_inference_steps=2, seed=args.seed, progress=False, pipe=pipe)
    settings = [None] + [latte_rs.TeaCache(t, coefficients=coefficients) for t in args.thresholds]
    results = []
    reference = None
    for cache in settings:
        best, out = None, None
        for _ in range(args.repeats):
            seconds, out = sample_once(pipe, prompts, args, cache)
            best = seconds if best is None else min(best, seconds)
        scores = prompt_following(list(out.frames), wanted)
        row = {"threshold": None if cache is None else cache.threshold, "seconds": best, "scores": scores}
        if cache is None:
            reference = (best, out, scores)
        else:
            report = out.cache_report
            row.update(steps_computed=report.steps_computed, steps_skipped=report.steps_skipped,
                       blocks_computed=report.blocks_computed, blocks_skipped=report.blocks_skipped,
                       coefficients_source=report.coefficients_source, cache_mib=report.cache_bytes / 2**20)
        row.update(speedup=reference[0] / best, psnr=psnr(out.frames, reference[1].frames),
                   ssim=ssim(out.frames, reference[1].frames),
                   latent_mse=float(np.mean((out.latents - reference[1].latents) ** 2)),
                   following_ratio={k: (scores[k] / reference[2][k] if reference[2][k] else None)
                                    for k in ATTRIBUTES if k in scores})
        results.append(row)
        print(json.dumps(row), flush=True)

    stamp = host()
    workload = (f"built-in text-to-video model, {len(wanted)} videos (held-out prompts x {args.videos}), "
                f"{args.steps} {args.sampler.upper()} steps, guidance {tiny_t2v.GUIDANCE}, "
                f"coefficients {args.coefficients}")
    print(f"\n## TeaCache: {workload}\n")
    print(f"host: {cpu_label(stamp)}, {os.cpu_count()} logical CPUs\n")
    print("| cache | steps computed | seconds | speed-up | PSNR dB | SSIM | latent MSE | colour | shape | direction |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        name = "none" if r["threshold"] is None else f"TeaCache {r['threshold']:g}"
        computed = f"{args.steps}/{args.steps}" if r["threshold"] is None else f"{r['steps_computed']}/{args.steps}"
        psnr_text = "∞" if np.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        attrs = " | ".join(f"{r['scores'][k]:.3f}" for k in ATTRIBUTES)
        print(f"| {name} | {computed} | {r['seconds']:.1f} | {r['speedup']:.2f}x | {psnr_text} | {r['ssim']:.3f} | "
              f"{r['latent_mse']:.2e} | {attrs} |")
    rows = [{"workload": workload, "engine": "none" if r["threshold"] is None else f"teacache {r['threshold']:g}",
             "median_s": r["seconds"], "peak_rss_mib": None, "ratio": r["speedup"],
             **{k: v for k, v in r.items() if k not in ("seconds",)},
             "psnr": None if np.isinf(r["psnr"]) else r["psnr"]} for r in results]
    print(f"\nwrote {write_results('bench_teacache', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
