"""Per-step cost of the diffusion sampler next to the model forward it wraps (CPU).

For Latte-S/2 (16 frames, 32x32x4 latents, learn_sigma) and a batch of 2 this reports:
* the model forward alone (median of --repeat runs);
* one ancestral step (`p_sample`) and one DDIM step on the model's output, called from Python;
* a whole `latte_rs.sample` loop of --steps steps, and its overhead per step beyond the forwards.

    python benches/bench_sampling.py --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import latte_rs


def median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Latte-S/2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    cfg = latte_rs.LatteConfig.preset(args.model, num_frames=16, input_size=32)
    model = latte_rs.LatteModel(cfg, seed=0)
    model.load_state_dict({k: v + 0.01 for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 16, 4, 32, 32), dtype=np.float32)
    t = np.full(args.batch, 500)
    diffusion = latte_rs.GaussianDiffusion(timestep_respacing=str(args.steps))
    out = model(x, t)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    step_t = np.full(args.batch, args.steps // 2)

    forward = median_time(lambda: model(x, t), args.repeat)
    p_step = median_time(lambda: diffusion.p_sample(out, x, step_t, noise), args.repeat * 5)
    ddim_step = median_time(lambda: diffusion.ddim_sample(out, x, step_t, noise), args.repeat * 5)
    loop = median_time(lambda: latte_rs.sample(model, diffusion, args.batch, progress=False), max(1, args.repeat // 2))
    per_step_overhead = loop / args.steps - forward

    print(f"## Sampling overhead, {args.model}, batch {args.batch}, CPU\n")
    print("| what | seconds | vs forward |")
    print("|---|---:|---:|")
    print(f"| model forward | {forward:.4f} | 1.000 |")
    print(f"| p_sample step (from Python) | {p_step:.4f} | {p_step / forward:.3f} |")
    print(f"| ddim step (from Python) | {ddim_step:.4f} | {ddim_step / forward:.3f} |")
    print(f"| sample loop, {args.steps} steps | {loop:.3f} | {loop / forward:.2f} |")
    print(f"| loop overhead per step | {per_step_overhead:.4f} | {per_step_overhead / forward:.3f} |")


if __name__ == "__main__":
    main()
