"""CPU train-step benchmark: the official PyTorch Latte recipe against latte-rs's Trainer, in one run.

One train step is what the official ``train.py`` does per batch of latents: sample timesteps, compute the hybrid
loss with the official ``diffusion`` package (``training_losses``: MSE + variational bound), backward,
``clip_grad_norm_`` (the norm is computed every step), ``AdamW.step``, ``zero_grad`` and ``update_ema``. latte-rs
runs ``Trainer.step`` (the same, plus classifier-free-guidance dropout when conditional). Each engine runs in its
own subprocess so that its peak resident memory (VmHWM) is its own; ``latte-ckpt`` is latte-rs with activation
checkpointing.

Both start from the same weights (the official init with ``torch.manual_seed(3407)``, plus ``0.02 * randn`` so
that adaLN and the final layer are not zero) and the same batch.

    python benches/bench_train.py --latte-repo /path/to/Latte          # or LATTE_REPO=...
    python benches/bench_train.py --latte-repo ../Latte --batch 1 --repeat 2 --engines torch latte

Default workload: Latte-S/2, batch 2, 16 frames of 32x32x4 latents, learn_sigma, unconditional.
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
from bench_forward import (  # noqa: E402
    IN_CHANNELS,
    build_official,
    cpu_name,
    load_official,
    perturbed_official,
    run_json_worker,
    time_calls,
)
from common import peak_rss_mib, result_rows, write_results  # noqa: E402

ENGINES = ("torch", "latte", "latte-ckpt")
LABELS = {"torch": "PyTorch (official train.py step)", "latte": "latte-rs Trainer",
          "latte-ckpt": "latte-rs Trainer, gradient checkpointing"}
ROW_LABELS = {"torch": "PyTorch (official)", "latte": "latte-rs", "latte-ckpt": "latte-rs, checkpointed"}


def run_torch(data, meta: dict, args) -> tuple[list[float], list[float], dict, float]:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sys.path.insert(0, str(args.latte_repo))
    from copy import deepcopy

    from diffusion import create_diffusion

    mod = load_official(args.latte_repo)
    x = torch.from_numpy(data["x"])
    rss_before = peak_rss_mib()
    model = build_official(mod, meta)
    state = {k[len("param/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("param/")}
    model.load_state_dict(state, strict=True)
    del state
    ema = deepcopy(model).requires_grad_(False)
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    model.train()
    losses = []

    def step():
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],))
        loss = diffusion.training_losses(model, x, t, dict(y=None))["loss"].mean()
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


def run_latte(data, meta: dict, args, checkpointing: bool) -> tuple[list[float], list[float], dict, float]:
    import latte_rs

    x = np.ascontiguousarray(data["x"], dtype=np.float32)
    rss_before = peak_rss_mib()
    cfg = latte_rs.LatteConfig.preset(meta["model"], num_frames=meta["frames"], input_size=meta["latent"],
                                      num_classes=0, learn_sigma=True)
    model = latte_rs.LatteModel(cfg, seed=0)
    model.load_state_dict({k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")})
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-4,
                               gradient_checkpointing=checkpointing, seed=0)
    losses = []

    def step():
        losses.append(trainer.step(x)["loss"])

    _, times = time_calls(step, args.warmup, args.repeat)
    threads = int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1))
    return times, losses, {"version": latte_rs.__version__, "threads": threads}, rss_before


def worker(args) -> None:
    data = np.load(args.data)
    meta = json.loads(str(data["meta"]))
    if args.worker == "torch":
        times, losses, info, rss_before = run_torch(data, meta, args)
    else:
        times, losses, info, rss_before = run_latte(data, meta, args, args.worker == "latte-ckpt")
    peak = peak_rss_mib()
    print(json.dumps({"engine": args.worker, "median_s": statistics.median(times), "min_s": min(times),
                      "times_s": times, "losses": losses, "peak_rss_mib": peak,
                      "model_rss_mib": peak - rss_before, **info}), flush=True)


def make_data(args, path: Path) -> None:
    import torch

    meta, arrays = perturbed_official(args)
    x = torch.randn(args.batch, args.frames, IN_CHANNELS, args.latent, args.latent)
    np.savez(path, x=x.numpy(), meta=np.array(json.dumps(meta)), **arrays)


def run_worker(engine: str, data: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--data", str(data),
           "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--threads", str(args.threads),
           "--latte-repo", str(args.latte_repo)]
    return run_json_worker(cmd, engine, LABELS[engine], args.threads)


def parent(args) -> int:
    if args.latte_repo is None:
        sys.exit("error: pass --latte-repo PATH (an official Vchitect/Latte checkout) or set LATTE_REPO")
    args.latte_repo = Path(args.latte_repo).resolve()
    with tempfile.TemporaryDirectory(prefix="latte_bench_train_") as tmp:
        data = Path(tmp) / "data.npz"
        make_data(args, data)
        results = [run_worker(e, data, args) for e in args.engines]
    print(f"\n## Latte train step, CPU: {args.model}, batch {args.batch}, {args.frames} frames, "
          f"{args.latent}x{args.latent}x{IN_CHANNELS} latents, learn_sigma, unconditional, AdamW + EMA\n")
    print(f"host: {cpu_name()}, {os.cpu_count()} logical CPUs; warmup {args.warmup}, repeat {args.repeat}")
    ok = [r for r in results if "error" not in r]
    for r in ok:
        print(f"- {LABELS[r['engine']]}: version {r['version']}, {r['threads']} threads, "
              f"losses {', '.join(f'{v:.4f}' for v in r['losses'])}")
    base = next((r["median_s"] for r in ok if r["engine"] == "torch"), None)
    print("\n| engine | median s/step | min s | peak RSS MiB | model+training RSS MiB | speed ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in ok:
        ratio = f"{base / r['median_s']:.2f}x" if base else "n/a"
        print(f"| {LABELS[r['engine']]} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['peak_rss_mib']:.0f} "
              f"| {r['model_rss_mib']:.0f} | {ratio} |")
    print("\nspeed ratio = PyTorch median / engine median (above 1: faster than PyTorch).")
    for r in results:
        if "error" in r:
            print(f"\n{LABELS[r['engine']]} failed: {r['error']}")
    workload = f"{args.model} train step, batch {args.batch}, {args.frames}x{args.latent}x{args.latent}"
    print(f"\nwrote {write_results('bench_train', result_rows(workload, results, ROW_LABELS))}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                               "results": results}, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU train-step benchmark: official PyTorch Latte vs latte-rs",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="Latte-S/2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--latte-repo", default=os.environ.get("LATTE_REPO"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        sys.exit(parent(args))


if __name__ == "__main__":
    main()
