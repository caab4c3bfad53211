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


def write_results(name: str, rows: list[dict]) -> Path:
    """Writes ``results/<name>.json``: the rows (workload, engine, median_s, peak_rss_mib, ratio, ...) and the host,
    atomically."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"host": host(), "rows": rows}, indent=2) + "\n")
    tmp.replace(path)
    return path
