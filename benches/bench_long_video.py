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


def motion(frames: np.ndarray, combos) -> dict[str, float]:
    """Motion over long videos, per 8-frame window: `axis`, the fraction of windows moving along the prompted axis
    (either way: the training clips bounce off the borders, so after a bounce the prompted direction's opposite is
    right); `moving`, the fraction of windows whose object travels at least 1 px (a video that stalls fails it)."""
    from latte_rs.data.synthetic import DIRECTIONS
    from latte_rs.evaluation.prompt_following import measure

    opposite = {"up": "down", "down": "up", "left": "right", "right": "left"}
    axis, moving = [], []
    for video, (_, _, d) in zip(frames, combos, strict=True):
        for s in range(0, video.shape[0] - 7, 8):
            window = video[s:s + 8]
            got = measure(window)[2]
            axis.append(got is not None and DIRECTIONS[got] in (DIRECTIONS[d], opposite[DIRECTIONS[d]]))
            cs = [c for c in centroids(window) if c is not None]
            moving.append(len(cs) >= 2 and float(np.hypot(cs[-1][0] - cs[0][0], cs[-1][1] - cs[0][1])) >= 1.0)
    return {"axis": float(np.mean(axis)), "moving": float(np.mean(moving))}


def class_worker(length: int, steps: int, stride: int | None, seed: int, noise: str, method: str,
                 lookahead: bool) -> dict:
    """The built-in class model (classes 0-3, two videos each): the class colour of every 8-frame window."""
    import latte_rs
    from latte_rs import demo

    model = demo.tiny_model()
    if method == "single-pass":
        # The naive baseline: the model rebuilt for `length` frames, the trained temporal table repeated.
        table = model.state_dict()["temp_embed"]
        long = latte_rs.LatteModel(model.config.replace(num_frames=length))
        state = dict(model.state_dict())
        state["temp_embed"] = np.tile(table, (1, -(-length // table.shape[1]), 1))[:, :length]
        long.load_state_dict(state)
        model = long
    pipe = latte_rs.LattePipeline(model)
    labels = np.repeat(np.arange(4), 2)
    latents = None
    if noise == "independent":
        latents = np.random.default_rng(seed).standard_normal((len(labels), length, 3, 16, 16)).astype(np.float32)
    pipe(class_labels=[0], num_inference_steps=2, progress=False)  # warm-up
    start = time.perf_counter()
    out = pipe(class_labels=list(range(4)), num_videos=2, num_inference_steps=steps,
               guidance_scale=demo.TINY_GUIDANCE, seed=seed, progress=False, latents=latents,
               num_frames=None if method == "single-pass" else length,
               long_video=None if method == "single-pass" else method, window_stride=stride,
               lookahead_denoising=lookahead if method == "fifo" else None)
    seconds = time.perf_counter() - start
    frames = np.asarray(out.frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    windows = [demo.class_colour_accuracy(frames[:, s:s + 8], labels) for s in range(0, length - 7, 8)]
    row = {"class_colour": float(np.mean(windows)), "class_colour_worst_window": float(np.min(windows))}
    row.update(seams(frames))
    row.update(frames=length, windows_scored=len(windows), videos=len(labels), seconds=seconds,
               seconds_per_video=seconds / len(labels), peak_rss_mib=peak_rss_mib(), stride=stride, steps=steps,
               noise=noise, method=method, lookahead=lookahead, model="class", latte_rs=latte_rs.__version__)
    return row


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
    if method == "single-pass":
        # The naive baseline: the transformer rebuilt for `length` frames with the same weights, its sin-cos
        # temporal table computed for the new length (positions past the trained ones), one pass over every frame.
        stretched = latte_rs.LatteT2VTransformer(pipe.transformer.config.replace(video_length=length))
        stretched.load_state_dict(pipe.transformer.state_dict())
        pipe.transformer = stretched
    embeds, negative = tiny_t2v.encode_prompts(pipe, [synthetic_caption(*c) for c in combos])
    start = time.perf_counter()
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=tiny_t2v.GUIDANCE,
               num_inference_steps=steps, seed=seed, output_type="uint8", progress=False, video_length=length,
               window_stride=stride, latents=latents, long_video=None if method == "single-pass" else method,
               lookahead_denoising=lookahead if method == "fifo" else None)
    seconds = time.perf_counter() - start
    frames = np.asarray(out.frames)
    per_window = [prompt_following(list(frames[:, s:s + 8]), combos) for s in range(0, length - 7, 8)]
    row = {a: float(np.mean([w[a] for w in per_window])) for a in (*ATTRIBUTES, "all")}
    row.update(motion(frames, combos))
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
    ap.add_argument("--method", choices=("windows", "fifo", "single-pass"), default="windows",
                    help="long_video: sliding windows (the default) or FIFO-Diffusion's diagonal denoising; or the "
                         "baseline single-pass: the model rebuilt for all the frames, its temporal table extended")
    ap.add_argument("--no-lookahead", action="store_true", help="FIFO without lookahead denoising")
    ap.add_argument("--model", choices=("t2v", "class"), default="t2v",
                    help="the built-in text-to-video model (the default) or the built-in class model")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        run = class_worker if args.model == "class" else worker
        print(json.dumps(run(args.worker, args.steps, args.stride, args.seed, args.noise, args.method,
                             not args.no_lookahead)))
        return
    rows = []
    print(f"CPU: {cpu_label(host())}")
    if args.model == "class":
        print("| frames | class colour | worst window | presence | max jump / median | max change / median | "
              "s / video | peak MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("| frames | colour | shape | direction | all | axis | moving | presence | max jump / median | "
              "max change / median | s / video | peak MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        cmd = [sys.executable, __file__, "--worker", str(length), "--steps", str(args.steps), "--seed", str(args.seed),
               "--noise", args.noise, "--method", args.method, "--model", args.model]
        if args.no_lookahead:
            cmd.append("--no-lookahead")
        if args.stride is not None:
            cmd += ["--stride", str(args.stride)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        if args.model == "class":
            head = f"| {length} | {r['class_colour']:.2f} | {r['class_colour_worst_window']:.2f} |"
        else:
            head = (f"| {length} | {r['colour']:.2f} | {r['shape']:.2f} | {r['direction']:.2f} | {r['all']:.2f} | "
                    f"{r['axis']:.2f} | {r['moving']:.2f} |")
        print(f"{head} {r['presence']:.3f} | {r['max_jump_over_median']:.1f} | {r['max_change_over_median']:.1f} | "
              f"{r['seconds_per_video']:.2f} | {r['peak_rss_mib']:.0f} |", flush=True)
        setting = {"windows": f"stride {args.stride or 'default'}, {args.noise} noise",
                   "fifo": f"fifo{'' if args.no_lookahead else ' with lookahead'}, {args.noise} noise",
                   "single-pass": f"single pass, temporal table extended, {args.noise} noise"}[args.method]
        name = "tiny class model" if args.model == "class" else "tiny_t2v"
        rows.append({"workload": f"{name} long video {length} frames, {args.steps} steps, {setting}",
                     "engine": "latte-rs",
                     "median_s": r["seconds"], **r})
    print(f"\nwrote {write_results('bench_long_video', rows)}")


if __name__ == "__main__":
    main()
