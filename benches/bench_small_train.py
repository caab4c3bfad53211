"""The small-model regime on the CPU: one train step of the official PyTorch Latte recipe against latte-rs's
Trainer, in f32 and in bf16 mixed precision, side by side in one run.

Engines (each in its own subprocess, so that its peak resident memory is its own):

- ``torch``: the official ``models/latte.py`` and ``diffusion`` package, f32 (``training_losses``, backward,
  ``clip_grad_norm_``, ``AdamW.step``, EMA);
- ``torch-bf16``: the same step under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (f32 weights and optimiser,
  bf16 matmuls), as PyTorch users train in mixed precision on a CPU;
- ``latte``: ``latte_rs.Trainer.step``, f32;
- ``latte-bf16``: the same under ``latte_rs.autocast("bfloat16")`` (what the training config's
  ``mixed_precision: bf16`` turns on for a CPU run): bf16 GEMM operands with f32 accumulation on AVX512-BF16, f32
  master weights, optimiser state and reductions;
- ``latte-ckpt``: f32 with gradient checkpointing (block activations recomputed in the backward pass).

Both engines start from the same weights (the official init under ``torch.manual_seed(3407)`` plus
``0.02 * randn``, so that adaLN and the final layer are not zero) and train on the same batch.

    python benches/bench_small_train.py --latte-repo /path/to/Latte             # or LATTE_REPO=...
    python benches/bench_small_train.py --latte-repo ../Latte --workload s2 --engines torch latte latte-bf16

Workloads: ``demo`` (the demo's model: Latte-S/4 at depth 4, width 96, 4 classes, batch 32 of 8x16x16 pixel
clips; the default) and ``s2`` (Latte-S/2, unconditional, batch 1 of 16 frames of 32x32x4 latents).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import load_official, run_json_worker, time_calls  # noqa: E402
from common import cpu_label, host, peak_rss_mib, result_rows, write_results  # noqa: E402

ENGINES = ("torch", "torch-bf16", "latte", "latte-bf16", "latte-ckpt")
LABELS = {
    "torch": "PyTorch (official), f32",
    "torch-bf16": "PyTorch (official), torch.autocast bf16",
    "latte": "latte-rs Trainer, f32",
    "latte-bf16": "latte-rs Trainer, latte_rs.autocast bf16",
    "latte-ckpt": "latte-rs Trainer, f32, gradient checkpointing",
}
SEED = 3407


def workload(name: str) -> dict:
    """The model and batch of a workload, in the official constructor's words."""
    if name == "demo":
        from latte_rs.demo import demo_config
        from latte_rs.training import model_config

        m = model_config(demo_config())
        return {"name": "demo model (Latte-S/4, depth 4, width 96), batch 32, 8x16x16x3 px",
                "input_size": m.input_size, "patch_size": m.patch_size, "in_channels": m.in_channels,
                "hidden_size": m.hidden_size, "depth": m.depth, "num_heads": m.num_heads,
                "num_frames": m.num_frames, "num_classes": m.num_classes, "batch": 32, "preset": None}
    if name == "s2":
        return {"name": "Latte-S/2, batch 1, 16x32x32x4 latents", "input_size": 32, "patch_size": 2,
                "in_channels": 4, "hidden_size": 384, "depth": 12, "num_heads": 6, "num_frames": 16,
                "num_classes": 0, "batch": 1, "preset": "Latte-S/2"}
    raise ValueError(f"workload: expected 'demo' or 's2', got {name!r}")


def build_official(mod, w: dict):
    extras = 2 if w["num_classes"] else 1
    return mod.Latte(input_size=w["input_size"], patch_size=w["patch_size"], in_channels=w["in_channels"],
                     hidden_size=w["hidden_size"], depth=w["depth"], num_heads=w["num_heads"],
                     num_frames=w["num_frames"], num_classes=max(w["num_classes"], 1), learn_sigma=True,
                     extras=extras, attention_mode="math").float()


def make_data(args, path: Path) -> None:
    import torch

    w = workload(args.workload)
    torch.manual_seed(SEED)
    model = build_official(load_official(args.latte_repo), w)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(w["batch"], w["num_frames"], w["in_channels"], w["input_size"], w["input_size"])
    y = torch.randint(0, max(w["num_classes"], 1), (w["batch"],))
    params = {f"param/{k}": v.float().numpy() for k, v in model.state_dict().items()}
    np.savez(path, x=x.numpy(), y=y.numpy(), **params)


def run_torch(data, w: dict, args, bf16: bool):
    import contextlib
    from copy import deepcopy

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sys.path.insert(0, str(args.latte_repo))
    from diffusion import create_diffusion

    mod = load_official(args.latte_repo)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    rss_before = peak_rss_mib()
    model = build_official(mod, w)
    model.load_state_dict({k[len("param/"):]: torch.from_numpy(data[k]) for k in data.files
                           if k.startswith("param/")}, strict=True)
    ema = deepcopy(model).requires_grad_(False)
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    model.train()
    losses = []
    extras = {"y": y} if w["num_classes"] else {"y": None}

    def step():
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],))
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            loss = diffusion.training_losses(model, x, t, extras)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.mul_(0.9999).add_(p, alpha=1e-4)
        losses.append(float(loss))

    _, times = time_calls(step, args.warmup, args.repeat)
    return times, losses, {"version": torch.__version__, "threads": torch.get_num_threads()}, rss_before


def run_latte(data, w: dict, args, bf16: bool, checkpointing: bool):
    import contextlib

    import latte_rs

    x = np.ascontiguousarray(data["x"], dtype=np.float32)
    y = data["y"] if w["num_classes"] else None
    rss_before = peak_rss_mib()
    cfg = latte_rs.LatteConfig(input_size=w["input_size"], patch_size=w["patch_size"],
                               in_channels=w["in_channels"], hidden_size=w["hidden_size"], depth=w["depth"],
                               num_heads=w["num_heads"], num_frames=w["num_frames"],
                               num_classes=w["num_classes"], learn_sigma=True)
    model = latte_rs.LatteModel(cfg, seed=0)
    model.load_state_dict({k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")})
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-4, grad_clip=1e9,
                               gradient_checkpointing=checkpointing, seed=0)
    losses = []
    cast = latte_rs.autocast("bfloat16") if bf16 else contextlib.nullcontext()

    def step():
        with cast:
            losses.append(trainer.step(x, y)["loss"])

    _, times = time_calls(step, args.warmup, args.repeat)
    threads = int(os.environ.get("RAYON_NUM_THREADS", args.threads))
    return times, losses, {"version": latte_rs.__version__, "threads": threads}, rss_before


def worker(args) -> None:
    data = np.load(args.data)
    w = workload(args.workload)
    e = args.worker
    if e.startswith("torch"):
        times, losses, info, rss_before = run_torch(data, w, args, e == "torch-bf16")
    else:
        times, losses, info, rss_before = run_latte(data, w, args, e == "latte-bf16", e == "latte-ckpt")
    peak = peak_rss_mib()
    print(json.dumps({"engine": e, "median_s": statistics.median(times), "min_s": min(times), "times_s": times,
                      "losses": losses, "peak_rss_mib": peak, "model_rss_mib": peak - rss_before, **info}),
          flush=True)


def pool(rounds: list[dict]) -> dict:
    """One engine's result over its rounds: the median and minimum of every timed step, the largest peak."""
    failed = [r for r in rounds if "error" in r]
    if failed:
        return failed[0]
    times = [t for r in rounds for t in r["times_s"]]
    return {**rounds[0], "median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rounds), "rounds": len(rounds)}


def parent(args) -> int:
    if args.latte_repo is None:
        sys.exit("error: pass --latte-repo PATH (an official Vchitect/Latte checkout) or set LATTE_REPO")
    args.latte_repo = Path(args.latte_repo).resolve()
    w = workload(args.workload)
    with tempfile.TemporaryDirectory(prefix="latte_bench_small_") as tmp:
        data = Path(tmp) / "data.npz"
        make_data(args, data)
        # Engines alternate, round after round, so that a drift in the machine's speed (a shared host) reaches
        # every engine alike; each engine's times are pooled over the rounds.
        runs: dict[str, list[dict]] = {e: [] for e in args.engines}
        for _ in range(args.rounds):
            for e in args.engines:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", e, "--data", str(data),
                       "--workload", args.workload, "--warmup", str(args.warmup), "--repeat", str(args.repeat),
                       "--threads", str(args.threads), "--latte-repo", str(args.latte_repo)]
                runs[e].append(run_json_worker(cmd, e, LABELS[e], args.threads))
        results = [pool(rs) for rs in runs.values()]
    print(f"\n## Train step, CPU: {w['name']}, learn_sigma, AdamW + EMA + clipping\n")
    print(f"host: {cpu_label(host())}, {args.threads} threads; {args.rounds} rounds of warmup {args.warmup}, "
          f"repeat {args.repeat} per engine, engines alternating")
    ok = [r for r in results if "error" not in r]
    for r in ok:
        print(f"- {LABELS[r['engine']]}: version {r['version']}, losses {', '.join(f'{v:.4f}' for v in r['losses'])}")
    by = {r["engine"]: r["median_s"] for r in ok}
    print("\n| engine | median ms/step | min ms | peak RSS MiB | vs PyTorch f32 | vs PyTorch autocast bf16 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in ok:
        ratios = [f"{by[b] / r['median_s']:.2f}x" if b in by else "n/a" for b in ("torch", "torch-bf16")]
        print(f"| {LABELS[r['engine']]} | {1000 * r['median_s']:.1f} | {1000 * r['min_s']:.1f} "
              f"| {r['peak_rss_mib']:.0f} | {ratios[0]} | {ratios[1]} |")
    print("\nratio = PyTorch median / engine median (above 1: faster than PyTorch).")
    for r in results:
        if "error" in r:
            print(f"\n{LABELS[r['engine']]} failed: {r['error']}")
    print(f"\nwrote {write_results('bench_small_train_' + args.workload, result_rows(w['name'], results, LABELS))}")
    return 1 if any("error" in r for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU train step, small models: official PyTorch vs latte-rs, "
                                     "f32 and bf16", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workload", choices=("demo", "s2"), default="demo")
    parser.add_argument("--latte-repo", default=os.environ.get("LATTE_REPO"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all engines, alternating")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        sys.exit(parent(args))


if __name__ == "__main__":
    main()
