"""What every benchmark shares: the host's description (CPU model, cores, vector extensions) and the
machine-readable results file ``benches/results/<name>.json``."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions of FLAGS this CPU has."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def host() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "flags": cpu_flags(), "python": sys.version.split()[0],
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this reads VmHWM, which starts afresh at exec; ``ru_maxrss`` would carry the parent's peak into
    a worker (Linux keeps it across fork + exec), hiding a smaller worker's own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


def result_rows(workload: str, results: list[dict], labels: dict[str, str], reference: str = "torch") -> list[dict]:
    """One results row per engine of ``results`` (worker dicts with ``engine``, ``median_s``, ``peak_rss_mib``, or
    ``error``): ``ratio`` is the reference engine's median over this one's (above 1: faster than the reference)."""
    base = next((r["median_s"] for r in results if r["engine"] == reference and "error" not in r), None)
    rows = []
    for r in results:
        row = {"workload": workload, "engine": labels.get(r["engine"], r["engine"])}
        if "error" in r:
            row.update(median_s=None, peak_rss_mib=None, ratio=None, error=r["error"].splitlines()[-1])
        else:
            row.update(median_s=r["median_s"], peak_rss_mib=r.get("peak_rss_mib"),
                       ratio=base / r["median_s"] if base else None)
        rows.append(row)
    return rows


def write_results(name: str, rows: list[dict]) -> Path:
    """Adds ``rows`` (dicts with workload, engine, median_s, peak_rss_mib, ratio, ...) to ``results/<name>.json``,
    each stamped with this host, replacing earlier rows of the same workload and engine (so that runs of one
    bench at several sizes accumulate), atomically."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamp = host()
    rows = [{**r, "host": stamp} for r in rows]
    new = {(r["workload"], r["engine"]) for r in rows}
    kept = []
    if path.is_file():
        try:
            kept = [r for r in json.loads(path.read_text()).get("rows", []) if (r["workload"], r["engine"]) not in new]
        except (json.JSONDecodeError, KeyError, TypeError):
            kept = []
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"host": stamp, "rows": kept + rows}, indent=2) + "\n")
    tmp.replace(path)
    return path
