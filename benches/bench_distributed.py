"""Data-parallel scaling and the torch face's cost, on this machine, in one run.

Engines (each a separate process or group of processes, one thread each):

* ``native-1``: ``Trainer.step`` in one process, batch b.
* ``native-2``: ``DistributedTrainer.step`` on 2 processes (gloo on loopback), batch b each (weak scaling: the
  joint batch is 2b). Scaling efficiency = throughput(2) / (2 × throughput(1)).
* ``module-1``: the official train step (``TorchDiffusion.training_losses``, ``backward``, ``clip_grad_norm_``,
  ``torch.optim.AdamW``, ``update_ema``) with ``latte_rs.torch.LatteModule`` as the model, batch b.
* ``ddp-2``: the same under ``DistributedDataParallel`` on 2 processes (gloo), batch b each.
* ``torch-1`` (with ``--latte-repo``): the same train step with the official PyTorch model and diffusion.

    python benches/bench_distributed.py [--latte-repo /path/to/Latte] [--steps 6]

Default workload: Latte-S/2 (12 blocks, width 384), 4 frames of 16×16×4 latents, learn_sigma, unconditional,
batch 2 per process. Writes ``results/bench_distributed.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import host, peak_rss_mib, write_results  # noqa: E402

WORKLOAD = dict(preset="Latte-S/2", num_frames=4, input_size=16, batch=2)


def _config():
    import latte_rs

    return latte_rs.LatteConfig.preset(WORKLOAD["preset"], num_frames=WORKLOAD["num_frames"],
                                       input_size=WORKLOAD["input_size"])


def _batch(step: int, rank: int):
    g = np.random.default_rng([step, rank])
    w = WORKLOAD
    return g.standard_normal((w["batch"], w["num_frames"], 4, w["input_size"], w["input_size"])).astype(np.float32)


def worker(engine: str, steps: int, latte_repo: str | None) -> dict:
    import torch

    torch.set_num_threads(1)
    import latte_rs
    from latte_rs import distributed

    rank, size = distributed.init_from_env(timeout=600)
    times, comm = [], []
    if engine.startswith("native"):
        trainer = latte_rs.Trainer(latte_rs.LatteModel(_config(), seed=0), latte_rs.GaussianDiffusion(),
                                   grad_clip=0.1, seed=rank)
        dp = distributed.DistributedTrainer(trainer) if size > 1 else None
        for step in range(steps + 2):
            x = _batch(step, rank)
            t0 = time.perf_counter()
            if dp is None:
                trainer.step(x)
            else:
                grad, losses = trainer.forward_backward(x)
                t1 = time.perf_counter()
                dp.all_reduce_mean(grad)
                comm.append(time.perf_counter() - t1)
                trainer.apply_gradients(grad, loss=losses["loss"], mse=losses["mse"], vb=losses["vb"])
            times.append(time.perf_counter() - t0)
    else:
        from latte_rs.torch import LatteModule, create_diffusion, update_ema

        if engine.startswith("torch"):
            import importlib.util

            sys.path.insert(0, latte_repo)
            from diffusion import create_diffusion as official_diffusion

            spec = importlib.util.spec_from_file_location("official_latte", Path(latte_repo) / "models/latte.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            c = _config()
            model = mod.Latte(input_size=c.input_size, patch_size=c.patch_size, in_channels=4,
                              hidden_size=c.hidden_size, depth=c.depth, num_heads=c.num_heads,
                              num_frames=c.num_frames, learn_sigma=True, extras=1, attention_mode="math")
            diffusion = official_diffusion(timestep_respacing="")
        else:
            model = LatteModule(_config(), seed=0)
            diffusion = create_diffusion(timestep_respacing="")
        import copy

        ema = copy.deepcopy(model).requires_grad_(False)
        net = model
        if size > 1:
            net = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0)
        for step in range(steps + 2):
            x = torch.from_numpy(_batch(step, rank))
            t0 = time.perf_counter()
            t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],))
            loss = diffusion.training_losses(net, x, t, {})["loss"].mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
            opt.step()
            opt.zero_grad()
            update_ema(ema, model)
            times.append(time.perf_counter() - t0)
    times = times[2:]  # the first steps warm up (the allocator grows to its working set)
    result = {"engine": engine, "rank": rank, "world": size, "median_s": statistics.median(times),
              "peak_rss_mib": peak_rss_mib()}
    if comm:
        result["all_reduce_s"] = statistics.median(comm[2:])
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def run(engine: str, world: int, steps: int, latte_repo: str | None) -> dict:
    print(f"running {engine} ...", file=sys.stderr, flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        cmd = [sys.executable, __file__, "--worker", engine, "--steps", str(steps)]
        if latte_repo:
            cmd += ["--latte-repo", latte_repo]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate() for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            return {"engine": engine, "error": err.strip().splitlines()[-1] if err.strip() else str(p.returncode)}
        results.append(json.loads(lines[-1]))
    r = dict(results[0])
    r["median_s"] = max(x["median_s"] for x in results)  # a data-parallel step lasts as long as the slowest rank
    r["peak_rss_mib"] = sum(x["peak_rss_mib"] for x in results)
    r["clips_per_s"] = world * WORKLOAD["batch"] / r["median_s"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--latte-repo", default=os.environ.get("LATTE_REPO"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.latte_repo)))
        return 0
    engines = [("native-1", 1), ("native-2", 2), ("module-1", 1), ("ddp-2", 2)]
    if args.latte_repo:
        engines.append(("torch-1", 1))
    results = {e: run(e, w, args.steps, args.latte_repo) for e, w in engines}
    base = results["native-1"]
    workload = (f"{WORKLOAD['preset']} F{WORKLOAD['num_frames']} {WORKLOAD['input_size']}x{WORKLOAD['input_size']} "
                f"b{WORKLOAD['batch']}/process, 1 thread/process")
    rows = []
    print(f"\n{host()['cpu']} ({', '.join(host()['flags'])}); {workload}\n")
    print("| engine | processes | step (s) | clips/s | vs native-1 clips/s | scaling efficiency | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for e, w in engines:
        r = results[e]
        if "error" in r:
            print(f"| {e} | {w} | error: {r['error']} |")
            rows.append({"workload": workload, "engine": e, "error": r["error"], "median_s": None})
            continue
        speed = r["clips_per_s"] / base["clips_per_s"] if "error" not in base else None
        eff = speed / w if speed else None
        extra = f" (all-reduce {r['all_reduce_s'] * 1e3:.0f} ms)" if "all_reduce_s" in r else ""
        print(f"| {e}{extra} | {w} | {r['median_s']:.3f} | {r['clips_per_s']:.2f} | {speed:.2f}× | "
              f"{eff:.0%} | {r['peak_rss_mib']:.0f} |")
        rows.append({"workload": workload, "engine": e, "processes": w, "median_s": r["median_s"],
                     "clips_per_s": r["clips_per_s"], "speedup_vs_native_1": speed, "scaling_efficiency": eff,
                     "all_reduce_s": r.get("all_reduce_s"), "peak_rss_mib": r["peak_rss_mib"]})
    ref = next((r for r in rows if r["engine"] == "torch-1" and r.get("clips_per_s")), None)
    for r in rows:  # run_all's ratio: the reference's (official PyTorch, 1 process) throughput over this one's
        r["ratio"] = r["clips_per_s"] / ref["clips_per_s"] if ref and r.get("clips_per_s") else None
        r.setdefault("peak_rss_mib", None)
    path = write_results("bench_distributed", rows)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
