"""Long videos from the built-in 8-frame text-to-video model: sliding windows (``video_length`` beyond the trained
length), measured on the pixels.

For each length (8 = the trained length, then 32, 64, 128 frames) every held-out prompt of ``latte-rs tiny-t2v
evaluate`` (combinations the model never saw) is sampled once, with the model's standard sampler and guidance,
windows ``--stride`` frames apart. Each length runs in a worker process of its own, so its peak memory is its own.
Reported per length:

- prompt following of every 8-frame window (0-7, 8-15, ...), each attribute's accuracy as ``tiny_t2v evaluate``
  reads it off the pixels, averaged over the windows (direction is read from a window's first frames; the training
  clips bounce off the borders, so a later window may rightly move the other way: its accuracy is a lower bound);
- presence: the fraction of frames in which the object is visible (at least 3 foreground pixels);
- seams: the largest jump of the object's centroid between consecutive frames over the median jump (a seam between
  windows would show as one jump many times the usual step), and the largest mean frame-to-frame pixel change over
  the median one (flicker);
- wall time of sampling per video and the worker's peak resident memory.

    python benches/bench_long_video.py                      # 8, 32, 64, 128 frames
    python benches/bench_long_video.py --lengths 8 32 --steps 20
    python benches/bench_long_video.py --method fifo --lengths 32 64 128      # FIFO-Diffusion
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_label, host, peak_rss_mib, write_results  # noqa: E402

ATTRIBUTES = ("colour", "shape", "direction")


def centroids(video: np.ndarray) -> list[tuple[float, float] | None]:
    """The foreground centroid of each frame (None where the object is not visible)."""
    from latte_rs.evaluation.prompt_following import _BACKGROUND01, FOREGROUND

    v = video.astype(np.float64) / 255.0
    fg = np.abs(v - _BACKGROUND01).max(axis=-1) > FOREGROUND
    out = []
    for frame in fg:
        ys, xs = np.nonzero(frame)
        out.append((ys.mean(), xs.mean()) if len(ys) >= 3 else None)
    return out


def seams(videos: np.ndarray) -> dict[str, float]:
    jumps, changes, present, frames = [], [], 0, 0
    for video in videos:
        cs = centroids(video)
        present += sum(c is not None for c in cs)
        frames += len(cs)
        jumps += [float(np.hypot(b[0] - a[0], b[1] - a[1])) for a, b in zip(cs[:-1], cs[1:], strict=True) if a and b]
        v = video.astype(np.float64) / 255.0
        changes += list(np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3)))
    med_jump = float(np.median(jumps)) if jumps else float("nan")
    med_change = float(np.median(changes))
    return {"presence": present / frames,
            "max_jump_over_median": float(max(jumps) / med_jump) if jumps and med_jump > 0 else float("nan"),
            "median_jump_px": med_jump,
            "max_change_over_median": float(max(changes) / med_change) if med_change > 0 else float("nan")}


def worker(length: int, steps: int, stride: int | None, seed: int, noise: str = "freenoise",
           method: str = "windows", lookahead: bool = True) -> dict:
    import latte_rs
    from latte_rs import tiny_t2v
    from latte_rs.data.synthetic import HELD_OUT, synthetic_caption
    from latte_rs.evaluation.prompt_following import prompt_following

    combos = list(HELD_OUT)
    pipe = tiny_t2v.pipeline()
    tiny_t2v.generate([synthetic_caption(*combos[0])], num_inference_steps=2, progress=False, pipe=pipe)  # warm-up
    latents = None
    if noise == "independent":  # every frame's noise drawn on its own: the ablation of FreeNoise's rescheduling
        shape = (len(combos), pipe.transformer.config["in_channels"], length, 16, 16)
        latents = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    embeds, negative = tiny_t2v.encode_prompts(pipe, [synthetic_caption(*c) for c in combos])
    start = time.perf_counter()
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=tiny_t2v.GUIDANCE,
               num_inference_steps=steps, seed=seed, output_type="uint8", progress=False, video_length=length,
               window_stride=stride, latents=latents, long_video=method,
               lookahead_denoising=None if method == "windows" else lookahead)
    seconds = time.perf_counter() - start
    frames = np.asarray(out.frames)
    per_window = [prompt_following(list(frames[:, s:s + 8]), combos) for s in range(0, length - 7, 8)]
    row = {a: float(np.mean([w[a] for w in per_window])) for a in (*ATTRIBUTES, "all")}
    row.update(seams(frames))
    row.update(frames=length, windows_scored=len(per_window), videos=len(combos), seconds=seconds,
               seconds_per_video=seconds / len(combos), peak_rss_mib=peak_rss_mib(),
               stride=stride, steps=steps, noise=noise, method=method, lookahead=lookahead,
               latte_rs=latte_rs.__version__)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[8, 32, 64, 128])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--stride", type=int, default=None, help="window stride (default: half the trained length)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", choices=("freenoise", "independent"), default="freenoise",
                    help="starting noise: FreeNoise's rescheduling (the default) or every frame drawn on its own")
    ap.add_argument("--method", choices=("windows", "fifo"), default="windows",
                    help="long_video: sliding windows (the default) or FIFO-Diffusion's diagonal denoising")
    ap.add_argument("--no-lookahead", action="store_true", help="FIFO without lookahead denoising")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.steps, args.stride, args.seed, args.noise, args.method,
                                not args.no_lookahead)))
        return
    rows = []
    print(f"CPU: {cpu_label(host())}")
    print("| frames | colour | shape | direction | all | presence | max jump / median | max change / median | "
          "s / video | peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        cmd = [sys.executable, __file__, "--worker", str(length), "--steps", str(args.steps), "--seed", str(args.seed),
               "--noise", args.noise, "--method", args.method]
        if args.no_lookahead:
            cmd.append("--no-lookahead")
        if args.stride is not None:
            cmd += ["--stride", str(args.stride)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"| {length} | {r['colour']:.2f} | {r['shape']:.2f} | {r['direction']:.2f} | {r['all']:.2f} | "
              f"{r['presence']:.3f} | {r['max_jump_over_median']:.1f} | {r['max_change_over_median']:.1f} | "
              f"{r['seconds_per_video']:.2f} | {r['peak_rss_mib']:.0f} |", flush=True)
        setting = (f"stride {args.stride or 'default'}, {args.noise} noise" if args.method == "windows"
                   else f"fifo{'' if args.no_lookahead else ' with lookahead'}, {args.noise} noise")
        rows.append({"workload": f"tiny_t2v long video {length} frames, {args.steps} steps, {setting}",
                     "engine": "latte-rs",
                     "median_s": r["seconds"], **r})
    print(f"\nwrote {write_results('bench_long_video', rows)}")


if __name__ == "__main__":
    main()
