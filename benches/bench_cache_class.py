"""Caches on the built-in class model: FVD against real clips with each cache setting, beside the speed-up and
the fidelity to the uncached samples, in one run.

Attention broadcast is known to hurt class-conditional Latte's FVD far more than text-to-video quality, so each
setting is scored against held-out real clips of the model's own data (the demo's synthetic recipe) by the
project's FVD protocol (I3D, float64 statistics, the clip count recorded: far below the protocol's 2048, so only
differences between rows mean anything; the model's 8-frame clips are shown to I3D with every frame twice, real
and generated alike, since I3D needs at least 9 frames), the download-free pixel Fréchet distance and the class
colour accuracy, plus PSNR / SSIM / latent MSE to the uncached samples of the same seed. Timings are the process's
CPU time of the sampling loop (the steadier measure on a shared machine), after one untimed warm-up.

    python benches/bench_cache_class.py
    python benches/bench_cache_class.py --clips 128 --settings none teacache pab fastercache
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
from bench_cache import settings as cache_settings  # noqa: E402
from bench_cache import skipped_text  # noqa: E402
from bench_teacache import psnr, ssim  # noqa: E402
from common import cpu_label, host, write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    import latte_rs

    named = {k: v for k, v in cache_settings().items() if k != "pab-pyramid"}  # no cross attention here
    # The shipped model's fitted TeaCache coefficients skip nothing at the default threshold: larger ones too.
    named.update({f"teacache-{t}": (f"TeaCache {t}", lambda t=t: latte_rs.TeaCache(t)) for t in (0.3, 0.6)})
    parser.add_argument("--settings", nargs="+", default=list(named), choices=list(named))
    parser.add_argument("--clips", type=int, default=64, help="generated and real clips per set")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fvd", action="store_true", help="skip FVD (the I3D features)")
    args = parser.parse_args()

    from latte_rs import LattePipeline
    from latte_rs.demo import TINY_GUIDANCE, class_colour_accuracy, demo_config, pixel_fd, real_clips, tiny_model
    from latte_rs.evaluation import Protocol, feature_stats, fvd

    cfg = demo_config()
    pipe = LattePipeline(tiny_model())
    real, labels = real_clips(args.clips, cfg, seed=args.seed + 1000)
    other, _ = real_clips(args.clips, cfg, seed=args.seed + 2000)
    frames_per_clip = 2 * cfg["num_frames"]  # every frame twice: I3D needs at least 9

    def doubled(videos):
        return np.repeat(np.asarray(videos), 2, axis=1)

    stats = None
    floor = {"pixel_fd": pixel_fd(real, other)}
    if not args.no_fvd:
        proto = Protocol(num_real=args.clips, num_fake=args.clips, num_frames=frames_per_clip)
        stats = feature_stats(doubled(real), protocol=proto, progress=False)
        floor["fvd"] = fvd(stats, doubled(other), num_clips=args.clips, num_frames=frames_per_clip, progress=False).fvd

    sample = dict(class_labels=labels, num_inference_steps=args.steps, guidance_scale=TINY_GUIDANCE,
                  seed=args.seed, progress=False)
    pipe(class_labels=labels[:2], num_inference_steps=2, guidance_scale=TINY_GUIDANCE, progress=False)
    order = ["none"] + [s for s in args.settings if s != "none"]
    results, reference = [], None
    for name in order:
        label, make = named[name]
        start = time.process_time()
        out = pipe(**sample, cache=make())
        seconds = time.process_time() - start
        if reference is None:
            reference = (seconds, out)
        row = {"setting": name, "label": label, "seconds": seconds, "speedup": reference[0] / seconds,
               "skipped": skipped_text(out.cache_report, args.steps),
               "psnr": psnr(out.frames, reference[1].frames), "ssim": ssim(out.frames, reference[1].frames),
               "latent_mse": float(np.mean((out.latents - reference[1].latents) ** 2)),
               "pixel_fd": pixel_fd(real, out.frames),
               "colour": class_colour_accuracy(out.frames, labels)}
        if stats is not None:
            row["fvd"] = fvd(stats, doubled(out.frames), num_clips=args.clips, num_frames=frames_per_clip,
                             progress=False).fvd
        results.append(row)
        print(json.dumps(row), flush=True)

    stamp = host()
    workload = (f"built-in class model (demo recipe, 8000 steps), {args.clips} clips (classes 0-3), {args.steps} "
                f"DDPM steps, guidance {TINY_GUIDANCE}")
    print(f"\n## Caches on the class model: {workload}\n")
    print(f"host: {cpu_label(stamp)}, {os.cpu_count()} logical CPUs; real clips against other real clips: "
          + ", ".join(f"{k} {v:.2f}" for k, v in floor.items()) + "\n")
    print("| cache | skipped | CPU s | speed-up | PSNR dB | SSIM | FVD | ΔFVD | pixel FD | colour |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_fvd = results[0].get("fvd")
    for r in results:
        psnr_text = "∞" if np.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        fvd_text = f"{r['fvd']:.1f}" if "fvd" in r else "–"
        delta = f"{r['fvd'] - base_fvd:+.1f}" if "fvd" in r and base_fvd is not None else "–"
        print(f"| {r['label']} | {r['skipped']} | {r['seconds']:.1f} | {r['speedup']:.2f}x | {psnr_text} | "
              f"{r['ssim']:.3f} | {fvd_text} | {delta} | {r['pixel_fd']:.2f} | {r['colour']:.2f} |")
    rows = [{"workload": workload, "engine": r["setting"], "median_s": r["seconds"], "peak_rss_mib": None,
             "ratio": r["speedup"], **{k: v for k, v in r.items() if k not in ("seconds", "psnr")},
             "psnr": None if np.isinf(r["psnr"]) else r["psnr"]} for r in results]
    print(f"\nwrote {write_results('bench_cache_class', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
