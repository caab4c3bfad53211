"""One rank of the data-parallel tests (tests/torch/test_distributed.py starts WORLD_SIZE of these on loopback).

    python tests/torch/distributed_worker.py MODE OUT [options as JSON]

Modes: ``joint`` (one step of DistributedTrainer on this rank's part of a fixed joint batch), ``steps`` (steps
``start``..``end`` on fixed joint batches and draws, optionally resuming and saving), ``train``
(``latte_rs.train`` on a synthetic config; ``die_after`` items makes rank 1 kill itself), ``ddp`` (the torch
module under DistributedDataParallel).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys

import numpy as np

import latte_rs
from latte_rs import distributed

CONFIG = dict(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, num_frames=2, num_classes=3,
              class_dropout_prob=0.0, learn_sigma=True)
JOINT = 4


def joint_batch(step: int) -> dict[str, np.ndarray]:
    """The joint batch and random draws of global step ``step`` (the same whatever the world size)."""
    g = np.random.default_rng([0, step])
    shape = (JOINT, CONFIG["num_frames"], 4, CONFIG["input_size"], CONFIG["input_size"])
    return {"latents": g.standard_normal(shape).astype(np.float32), "labels": g.integers(0, 3, JOINT),
            "timesteps": g.integers(0, 1000, JOINT), "noise": g.standard_normal(shape).astype(np.float32)}


def part(batch: dict, rank: int, size: int) -> dict:
    n = JOINT // size
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


def new_trainer(rank: int) -> latte_rs.Trainer:
    model = latte_rs.LatteModel(latte_rs.LatteConfig(**CONFIG), seed=5)
    return latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-3, grad_clip=1.0, clip_start_step=2,
                            seed=7 + rank)


def official_steps(model, rank: int, size: int, steps: int = 3) -> list[float]:
    """The official train step (hybrid loss, backward, clipping, AdamW) on this rank's part of fixed batches."""
    import torch

    from latte_rs.torch import create_diffusion

    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    diffusion = create_diffusion(timestep_respacing="")
    losses = []
    for step in range(steps):
        b = {k: torch.from_numpy(v) for k, v in part(joint_batch(step), rank, size).items()}
        loss = diffusion.training_losses(model, b["latents"], b["timesteps"], dict(y=b["labels"]),
                                         noise=b["noise"])["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def write_state(out: str, trainer: latte_rs.Trainer, **extra) -> None:
    arrays = {f"param/{k}": v for k, v in trainer.model.state_dict().items()}
    arrays.update({f"ema/{k}": v for k, v in trainer.ema_state_dict().items()})
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    np.savez(out, **arrays)


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    opts = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    rank, size = distributed.init_from_env(timeout=opts.get("timeout", 60))
    if mode == "joint":
        trainer = new_trainer(rank)
        dp = distributed.DistributedTrainer(trainer, bucket_mb=opts.get("bucket_mb", 0.01))
        b = part(joint_batch(0), rank, size)
        stats = dp.step(b["latents"], b["labels"], timesteps=b["timesteps"], noise=b["noise"])
        if rank == 0:
            write_state(out, trainer, loss=stats["loss"], grad_norm=stats["grad_norm"], buckets=len(dp.buckets))
    elif mode == "steps":
        if opts.get("resume"):
            trainer = latte_rs.Trainer.resume(opts["resume"])
        else:
            trainer = new_trainer(rank)
        dp = distributed.DistributedTrainer(trainer) if size > 1 else None
        losses = []
        for step in range(trainer.step_count, opts["end"]):
            b = part(joint_batch(step), rank, size)
            run = trainer.step if dp is None else dp.step
            losses.append(run(b["latents"], b["labels"], timesteps=b["timesteps"], noise=b["noise"])["loss"])
            if opts.get("save_at") == step + 1:
                (trainer.save if dp is None else dp.save)(opts["save_path"])
        if rank == 0:
            write_state(out, trainer, losses=np.array(losses))
    elif mode == "train":
        from latte_rs.data import SyntheticVideos

        ds = SyntheticVideos(num_clips=16, num_frames=2, image_size=8, seed=0)
        die_after = opts.pop("die_after", None)
        if die_after is not None and rank == 1:
            base = ds

            class Dying:
                count = 0

                def __len__(self):
                    return len(base)

                def __getitem__(self, i):
                    Dying.count += 1
                    if Dying.count > die_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return base[i]

            ds = Dying()
        cfg = {"dataset": "synthetic", "model": "Latte-S/2", "num_frames": 2, "image_size": 8, "pixel_space": True,
               "model_config": {"depth": 2, "hidden_size": 32, "num_heads": 2}, "local_batch_size": 2,
               "max_train_steps": 20, "log_every": 1, "ckpt_every": 10, "global_seed": 3}
        cfg.update(opts)
        result = latte_rs.train(cfg, ds, output_dir=out, progress=False)
        if rank == 0:
            write_state(os.path.join(out, "final.npz"), result.trainer)
    elif mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        from latte_rs.torch import LatteModule

        module = LatteModule(latte_rs.LatteConfig(**CONFIG), seed=5)
        ddp = DDP(module)
        losses = official_steps(ddp, rank, size)
        # DDP's reducer sits in reference cycles: left to the garbage collector, it can be torn down during
        # interpreter finalisation, after the process group, with gloo work still holding tensors whose memory
        # Python owns (a rare abort on CI: "terminate called without an active exception"). Drop it now.
        del ddp
        gc.collect()
        if rank == 0:
            np.savez(out, losses=np.array(losses),
                     **{f"param/{k}": v.detach().numpy() for k, v in module.state_dict().items()})
    else:
        raise SystemExit(f"unknown mode {mode}")
    import torch.distributed as dist

    if dist.is_initialized():  # gloo's threads must be stopped before the interpreter exits
        dist.barrier()  # no rank tears its end down while another still talks to it (rank 0 hosts the store)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
