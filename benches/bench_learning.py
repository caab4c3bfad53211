"""Does latte-rs learn as fast as the official code? Both train the same tiny class-conditional Latte from the same
initial weights on the same batches of the built-in synthetic videos, then both are scored on the same noised
clips: the noise-prediction error at several timesteps (the quantity sampling depends on). Wall time per step is
reported too, as a ratio, in the same run on the same machine.

PyTorch runs the official ``models/latte.py`` and ``diffusion`` package with ``torch.optim.AdamW``, the same
linear warm-up (``Trainer.lr_at``) and ``clip_grad_norm_``; latte-rs runs ``Trainer.step``. The two differ only in
their random draws of timesteps, noise and label dropout.

    python benches/bench_learning.py --latte-repo /path/to/Latte         # or LATTE_REPO=...
    python benches/bench_learning.py --latte-repo ../Latte --steps 1000 --clips 256

Default workload: the built-in tiny model's recipe (``assets/tiny_synthetic.yaml``: Latte-S/4, depth 4, width 96,
8 frames of 16x16 pixels, 4 classes), batch 8, 400 steps, 8 clips (a memorisation run: the error can go to zero).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name, write_results  # noqa: E402

TIMESTEPS = (1, 50, 200, 400, 600, 800, 999)


def official(latte_repo: Path):
    """The official ``models/latte.py`` module and ``diffusion.create_diffusion``."""
    path = latte_repo / "models" / "latte.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; --latte-repo must be an official checkout")
    spec = importlib.util.spec_from_file_location("official_latte", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.path.insert(0, str(latte_repo))
    from diffusion import create_diffusion

    return mod, create_diffusion


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latte-repo", type=Path, default=os.environ.get("LATTE_REPO"), help="official Latte checkout")
    p.add_argument("--steps", type=int, default=400, help="training steps (default: 400)")
    p.add_argument("--clips", type=int, default=8, help="distinct training clips (default: 8)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    args = p.parse_args()
    if args.latte_repo is None:
        p.error("--latte-repo (or LATTE_REPO) is required")

    import torch

    import latte_rs
    from latte_rs.demo import demo_config
    from latte_rs.training import make_dataset, model_config

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    mod, create_diffusion = official(args.latte_repo)
    cfg = {**demo_config(), "num_clips": args.clips}
    mcfg = model_config(cfg)
    dataset = make_dataset(cfg)

    torch.manual_seed(0)
    ref = mod.Latte(input_size=mcfg.input_size, patch_size=mcfg.patch_size, in_channels=3,
                    hidden_size=mcfg.hidden_size, depth=mcfg.depth, num_heads=mcfg.num_heads,
                    num_frames=mcfg.num_frames, class_dropout_prob=mcfg.class_dropout_prob,
                    num_classes=mcfg.num_classes, learn_sigma=True, extras=2, attention_mode="math").float()
    ours = latte_rs.LatteModel(mcfg, seed=0)
    state = ours.state_dict()
    state.update({k: v.detach().numpy() for k, v in ref.state_dict().items() if k in state})
    ours.load_state_dict(state)  # the same initial weights (the official init) in both
    trainer = latte_rs.Trainer(ours, latte_rs.GaussianDiffusion(), lr=args.lr, warmup_steps=50, grad_clip=1.0)
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(ref.parameters(), lr=args.lr, weight_decay=0.0)

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.steps):
        idx = rng.integers(args.clips, size=args.batch)
        clips, labels = zip(*(dataset[int(i)] for i in idx), strict=True)
        batches.append((np.stack(clips), np.asarray(labels, np.int64)))

    seconds = {"PyTorch (official)": [], "latte-rs": []}
    for step, (x, y) in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = trainer.lr_at(step + 1)
        t0 = time.perf_counter()
        t = torch.randint(0, 1000, (len(y),))
        loss = diffusion.training_losses(ref, torch.from_numpy(x), t, {"y": torch.from_numpy(y)})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        t1 = time.perf_counter()
        trainer.step(x, y)
        t2 = time.perf_counter()
        seconds["PyTorch (official)"].append(t1 - t0)
        seconds["latte-rs"].append(t2 - t1)

    clips, labels = zip(*(dataset[i % args.clips] for i in range(8)), strict=True)
    x0, y = np.stack(clips), np.asarray(labels, np.int64)
    process = latte_rs.GaussianDiffusion()
    noise_rng = np.random.default_rng(1)
    ref.eval()
    rows = []
    for t in TIMESTEPS:
        noise = noise_rng.standard_normal(x0.shape).astype(np.float32)
        tt = np.full(len(y), t)
        xt = process.q_sample(x0, tt, noise)
        with torch.no_grad():
            e_ref = ref(torch.from_numpy(xt), torch.from_numpy(tt), y=torch.from_numpy(y))[:, :, :3].numpy()
        e_ours = trainer.model.forward(xt, tt, y)[:, :, :3]
        rows.append((t, float(((e_ref - noise) ** 2).mean()), float(((e_ours - noise) ** 2).mean())))

    print(f"\n## Learning: {args.steps} steps, batch {args.batch}, {args.clips} clips, lr {args.lr}, "
          f"Latte-S/{mcfg.patch_size} depth {mcfg.depth} width {mcfg.hidden_size}, 8 frames of 16x16 pixels\n")
    print("noise-prediction MSE on the same noised training clips (lower is better)\n")
    print("| timestep | PyTorch (official) | latte-rs |\n|---:|---:|---:|")
    for t, a, b in rows:
        print(f"| {t} | {a:.5f} | {b:.5f} |")
    median = {name: statistics.median(times) for name, times in seconds.items()}
    base = median["PyTorch (official)"]
    print("\n| engine | median ms/step | speed ratio |\n|---|---:|---:|")
    for name, per in median.items():
        print(f"| {name} | {1000 * per:.1f} | {base / per:.2f}x |")
    print("\nspeed ratio = PyTorch ms/step / engine ms/step (above 1: faster than PyTorch).")
    print(f"host: {cpu_name()}, {len(os.sched_getaffinity(0))} threads")
    workload = f"demo model (Latte-S/{mcfg.patch_size}, depth {mcfg.depth}, width {mcfg.hidden_size}) train step, " \
               f"batch {args.batch}, 8x16x16 px"
    # Both engines run in this one process (on the same batches, alternating), so peak memory is not per engine.
    rows = [{"workload": workload, "engine": name, "median_s": per, "peak_rss_mib": None, "ratio": base / per,
             "steps": args.steps} for name, per in median.items()]
    print(f"wrote {write_results('bench_learning', rows)}")


if __name__ == "__main__":
    main()
