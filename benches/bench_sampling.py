"""CPU sampling benchmark: a whole DDPM sampling loop of the official PyTorch Latte against latte-rs, in one run.

Both sample the same model (the official init with ``torch.manual_seed(3407)`` plus ``0.02 * randn``, as in
``bench_forward.py``) from the same starting noise with the ancestral sampler over ``--steps`` respaced steps: the
official ``diffusion.p_sample_loop`` (what ``sample/sample.py`` runs for ``sample_method: ddpm``) under
``torch.inference_mode``, and ``latte_rs.sample`` with ``GaussianDiffusion(timestep_respacing=str(steps))``.
Each engine runs in its own subprocess so that its peak resident memory (VmHWM) is its own. The two draw their
per-step noise from different generators, so the samples are not compared (``bench_forward.py`` compares one
forward pass; the step arithmetic is tested against the official code in ``tests/``).

    python benches/bench_sampling.py --latte-repo /path/to/Latte          # or LATTE_REPO=...
    python benches/bench_sampling.py --latte-repo ../Latte --model Latte-B/2 --batch 4 --steps 10

Default workload: Latte-S/2, batch 1, 16 frames of 32x32x4 latents, learn_sigma, unconditional, 50 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import IN_CHANNELS, build_official, load_official, perturbed_official, run_json_worker  # noqa: E402
from common import cpu_name, peak_rss_mib, result_rows, write_results  # noqa: E402

ENGINES = ("torch", "latte")
LABELS = {"torch": "PyTorch (official)", "latte": "latte-rs"}


def run_torch(data, meta: dict, args) -> tuple[float, np.ndarray]:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sys.path.insert(0, str(args.latte_repo))
    from diffusion import create_diffusion

    model = build_official(load_official(args.latte_repo), meta).eval()
    model.load_state_dict({k[len("param/"):]: torch.from_numpy(data[k]) for k in data.files
                           if k.startswith("param/")}, strict=True)
    diffusion = create_diffusion(timestep_respacing=str(args.steps))
    z = torch.from_numpy(data["x"])
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        out = diffusion.p_sample_loop(model.forward, z.shape, z, clip_denoised=False, model_kwargs={}, progress=False,
                                      device="cpu")
    return time.perf_counter() - start, out.numpy()


def run_latte(data, meta: dict, args) -> tuple[float, np.ndarray]:
    import latte_rs

    cfg = latte_rs.LatteConfig.preset(meta["model"], num_frames=meta["frames"], input_size=meta["latent"],
                                      num_classes=0, learn_sigma=True)
    model = latte_rs.LatteModel(cfg, seed=0)
    model.load_state_dict({k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}, strict=True)
    diffusion = latte_rs.GaussianDiffusion(timestep_respacing=str(args.steps))
    z = np.ascontiguousarray(data["x"], dtype=np.float32)
    start = time.perf_counter()
    with latte_rs.autocast("bfloat16", enabled=args.bf16):
        out = latte_rs.sample(model, diffusion, noise=z, progress=False, seed=0)
    return time.perf_counter() - start, np.asarray(out)


def worker(args) -> None:
    data = np.load(args.data)
    meta = json.loads(str(data["meta"]))
    seconds, out = (run_torch if args.worker == "torch" else run_latte)(data, meta, args)
    print(json.dumps({"engine": args.worker, "median_s": seconds, "peak_rss_mib": peak_rss_mib(),
                      "finite": bool(np.isfinite(out).all()), "std": float(out.std())}), flush=True)


def parent(args) -> int:
    if args.latte_repo is None:
        sys.exit("error: pass --latte-repo PATH (an official Vchitect/Latte checkout) or set LATTE_REPO")
    args.latte_repo = Path(args.latte_repo).resolve()
    import torch

    with tempfile.TemporaryDirectory(prefix="latte_bench_sampling_") as tmp:
        data = Path(tmp) / "data.npz"
        meta, arrays = perturbed_official(args)
        z = torch.randn(args.batch, args.frames, IN_CHANNELS, args.latent, args.latent)
        np.savez(data, x=z.numpy(), meta=np.array(json.dumps(meta)), **arrays)
        del arrays
        results = []
        for engine in args.engines:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--data", str(data),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--latte-repo", str(args.latte_repo)]
            cmd += ["--bf16"] if args.bf16 else []
            results.append(run_json_worker(cmd, engine, LABELS[engine], args.threads))
    workload = (f"{args.model} sampling, {args.steps} DDPM steps, batch {args.batch}, "
                f"{args.frames}x{args.latent}x{args.latent}" + (", bf16 autocast" if args.bf16 else ""))
    rows = result_rows(workload, results, LABELS)
    print(f"\n## {workload}, learn_sigma, unconditional\n")
    print(f"host: {cpu_name()}, {os.cpu_count()} logical CPUs, {args.threads} threads\n")
    print("| engine | seconds | s/step | peak RSS MiB | speed ratio | sample std |\n|---|---:|---:|---:|---:|---:|")
    for r, row in zip(results, rows, strict=True):
        if "error" in r:
            print(f"| {row['engine']} | failed: {row['error']} | | | | |")
            continue
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "n/a"
        print(f"| {row['engine']} | {r['median_s']:.1f} | {r['median_s'] / args.steps:.3f} | {r['peak_rss_mib']:.0f} "
              f"| {ratio} | {r['std']:.3f} |")
    print(f"\nwrote {write_results('bench_sampling', rows)}")
    return 1 if any("error" in r or not r.get("finite", False) for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="Latte-S/2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--latte-repo", default=os.environ.get("LATTE_REPO"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--bf16", action="store_true", help="both engines under bf16 autocast (torch.autocast / "
                        "latte_rs.autocast)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.latte_repo = Path(args.latte_repo)
        worker(args)
    else:
        sys.exit(parent(args))


if __name__ == "__main__":
    main()
