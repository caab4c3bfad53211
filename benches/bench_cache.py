"""Cache benchmark: the built-in text-to-video model's sampling loop uncached, with TeaCache, Pyramid Attention
Broadcast and FasterCache, in one run.

The workload is ``bench_teacache.py``'s (the held-out prompts of ``latte-rs tiny-t2v evaluate``, ``--videos`` per
prompt, the model's standard sampler, guidance ``tiny_t2v.GUIDANCE``, one seed), and so are the measures: wall
time of the sampling loop and its speed-up over the uncached run, fidelity to the uncached frames (PSNR, SSIM,
latent MSE) and prompt following per attribute. Per setting it also reports what was skipped: TeaCache's steps,
each attention kind's calls reused, FasterCache's unconditional branches approximated, and the bytes the cache
held. Timings are the best of ``--repeats`` runs after one untimed warm-up, in wall time and in the process's CPU
time (all its threads): on a machine other work shares, the CPU time is the steadier measure, and the speed-up is
taken from it (``--clock wall`` for wall time).

    python benches/bench_cache.py
    python benches/bench_cache.py --settings none pab pab-pyramid fastercache --repeats 2
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
from bench_teacache import ATTRIBUTES, psnr, ssim  # noqa: E402
from common import cpu_label, host, write_results  # noqa: E402


def settings() -> dict:
    """Named cache settings: each a (label, factory) pair."""
    import latte_rs

    return {
        "none": ("none", lambda: None),
        "teacache": ("TeaCache 0.1 (default)", lambda: latte_rs.TeaCache(0.1)),
        "pab": ("PAB (default: spatial 2)", lambda: latte_rs.PyramidAttentionBroadcast()),
        "pab-pyramid": ("PAB spatial 2, temporal 3, cross 4", lambda: latte_rs.PyramidAttentionBroadcast(2, 3, 4)),
        "pab-wide": ("PAB 4/6/8 in (50, 950)", lambda: latte_rs.PyramidAttentionBroadcast(
            4, 6, 8, spatial_attention_timestep_skip_range=(50, 950),
            temporal_attention_timestep_skip_range=(50, 950), cross_attention_timestep_skip_range=(50, 950))),
        "fastercache": ("FasterCache (default)", lambda: latte_rs.FasterCache()),
        "fastercache-temporal": ("FasterCache + temporal 2",
                                 lambda: latte_rs.FasterCache(temporal_attention_block_skip_range=2)),
    }


def skipped_text(report, steps: int) -> str:
    if report is None:
        return f"{steps}/{steps} steps"
    if report.policy == "teacache":
        return f"{report.steps_computed}/{steps} steps"
    parts = []
    for kind in ("spatial", "temporal", "cross"):
        total = report.attention_computed.get(kind, 0) + report.attention_skipped.get(kind, 0)
        if total and report.attention_skipped.get(kind, 0):
            parts.append(f"{kind} {report.attention_skipped[kind]}/{total} reused")
    if report.uncond_skipped:
        parts.append(f"uncond {report.uncond_skipped}/{steps} approximated")
    return ", ".join(parts) or "nothing"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(settings()), choices=list(settings()))
    parser.add_argument("--videos", type=int, default=4, help="videos per held-out prompt (evaluate's default)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="the time the speed-up is from")
    args = parser.parse_args()

    from latte_rs import tiny_t2v
    from latte_rs.data.synthetic import HELD_OUT, synthetic_caption
    from latte_rs.evaluation.prompt_following import prompt_following

    pipe = tiny_t2v.pipeline()
    combos = list(HELD_OUT)
    prompts = [synthetic_caption(*c) for c in combos]
    wanted = [c for c in combos for _ in range(args.videos)]
    named = settings()
    order = ["none"] + [s for s in args.settings if s != "none"]

    tiny_t2v.generate(prompts[:1], num_inference_steps=2, seed=args.seed, progress=False, pipe=pipe)
    results, reference = [], None
    for name in order:
        label, make = named[name]
        best, best_wall, out = None, None, None
        for _ in range(args.repeats):
            cache = make()
            start, start_cpu = time.perf_counter(), time.process_time()
            out = tiny_t2v.generate(prompts, num_videos_per_prompt=args.videos, num_inference_steps=args.steps,
                                    seed=args.seed, progress=False, pipe=pipe, cache=cache)
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            seconds = cpu if args.clock == "cpu" else wall
            best = seconds if best is None else min(best, seconds)
            best_wall = wall if best_wall is None else min(best_wall, wall)
        scores = prompt_following(list(out.frames), wanted)
        if reference is None:
            reference = (best, out, scores)
        report = out.cache_report
        row = {"setting": name, "label": label, "seconds": best, "clock": args.clock, "wall_s": best_wall,
               "scores": scores,
               "skipped": skipped_text(report, args.steps),
               "cache_mib": None if report is None else report.cache_bytes / 2**20,
               "summary": None if report is None else report.summary(),
               "speedup": reference[0] / best, "psnr": psnr(out.frames, reference[1].frames),
               "ssim": ssim(out.frames, reference[1].frames),
               "latent_mse": float(np.mean((out.latents - reference[1].latents) ** 2)),
               "following_ratio": {k: (scores[k] / reference[2][k] if reference[2][k] else None)
                                   for k in ATTRIBUTES if k in scores}}
        results.append(row)
        print(json.dumps(row), flush=True)

    stamp = host()
    workload = (f"built-in text-to-video model, {len(wanted)} videos (held-out prompts x {args.videos}), "
                f"{args.steps} DDPM steps, guidance {tiny_t2v.GUIDANCE}")
    print(f"\n## Caches: {workload}\n")
    print(f"host: {cpu_label(stamp)}, {os.cpu_count()} logical CPUs\n")
    print(f"| cache | skipped | {args.clock} s | speed-up | PSNR dB | SSIM | latent MSE | cache MiB | colour | shape | "
          "direction |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        psnr_text = "∞" if np.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        mib = "–" if r["cache_mib"] is None else f"{r['cache_mib']:.1f}"
        attrs = " | ".join(f"{r['scores'][k]:.3f}" for k in ATTRIBUTES)
        print(f"| {r['label']} | {r['skipped']} | {r['seconds']:.1f} | {r['speedup']:.2f}x | {psnr_text} | "
              f"{r['ssim']:.3f} | {r['latent_mse']:.2e} | {mib} | {attrs} |")
    rows = [{"workload": workload, "engine": r["setting"], "median_s": r["seconds"], "peak_rss_mib": None,
             "ratio": r["speedup"], **{k: v for k, v in r.items() if k not in ("seconds", "psnr")},
             "psnr": None if np.isinf(r["psnr"]) else r["psnr"]} for r in results]
    print(f"\nwrote {write_results('bench_cache', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
