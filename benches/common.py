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


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux), else what platform knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions of FLAGS this CPU has."""
    have = set(_cpuinfo().get("flags", "").split())
    return [f for f in FLAGS if f in have]


# (vendor, family, model range) -> microarchitecture, for the CPUs whose identity a model name does not give ("AMD
# EPYC", "Intel Xeon Processor" under a hypervisor). Zen 4 executes AVX-512 on 256-bit units (two passes per
# 512-bit op), which halves its AVX-512 throughput per core against Intel's server cores and Zen 5.
_MICROARCH = [
    ("AuthenticAMD", 23, range(0x00, 0x30), "Zen / Zen+"),
    ("AuthenticAMD", 23, range(0x30, 0x100), "Zen 2"),
    ("AuthenticAMD", 25, range(0x00, 0x10), "Zen 3"),
    ("AuthenticAMD", 25, range(0x10, 0x20), "Zen 4"),
    ("AuthenticAMD", 25, range(0x20, 0x60), "Zen 3"),
    ("AuthenticAMD", 25, range(0x60, 0x80), "Zen 4"),
    ("AuthenticAMD", 25, range(0xA0, 0xB0), "Zen 4"),
    ("AuthenticAMD", 26, range(0x00, 0x100), "Zen 5"),
    ("GenuineIntel", 6, range(0x55, 0x56), "Skylake-SP / Cascade Lake"),
    ("GenuineIntel", 6, range(0x6A, 0x6D), "Ice Lake-SP"),
    ("GenuineIntel", 6, range(0x8F, 0x90), "Sapphire Rapids"),
    ("GenuineIntel", 6, range(0xCF, 0xD0), "Emerald Rapids"),
    ("GenuineIntel", 6, range(0xAD, 0xAF), "Granite Rapids"),
]


def cpu_identity() -> dict:
    """Who made the CPU and which one: vendor, family, model, stepping (decimal, as /proc/cpuinfo prints them), the
    microarchitecture where the table above knows it, and the vector units the kernels use. A speed claim names
    this, since the same benchmark differs by 2x between CPUs (see docs/speed.md)."""
    info = _cpuinfo()

    def number(key: str) -> int | None:
        try:
            return int(info[key])
        except (KeyError, ValueError):
            return None

    vendor, family, model = info.get("vendor_id", platform.machine()), number("cpu family"), number("model")
    flags = cpu_flags()
    arch = next((name for v, f, models, name in _MICROARCH
                 if v == vendor and f == family and model is not None and model in models), None)
    if arch in {"Skylake-SP / Cascade Lake", "Ice Lake-SP"} and "amx_tile" in flags:
        arch = None  # a hypervisor's model number: AMX came with Sapphire Rapids
    if "avx512f" in flags:
        vector = "AVX-512 on 256-bit units" if arch == "Zen 4" else "AVX-512"
    elif "avx2" in flags:
        vector = "AVX2"
    else:
        vector = "SSE / NEON"
    extras = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    return {"vendor": vendor, "family": family, "model": model, "stepping": number("stepping"),
            "microarchitecture": arch, "vector_units": ", ".join([vector, *extras])}


def cpu_label(h: dict) -> str:
    """One line naming a host's CPU, e.g. "AMD EPYC (Zen 4, family 25 model 17; AVX-512 on 256-bit units,
    AVX512-BF16), 2 cores". Rows recorded before the identity was kept say so."""
    ident = h.get("cpu_identity")
    if not ident:
        return f"{h.get('cpu', '?')} (family/model not recorded), {h.get('cores', '?')} cores"
    arch = f"{ident['microarchitecture']}, " if ident.get("microarchitecture") else ""
    return (f"{h.get('cpu', '?')} ({arch}family {ident.get('family')} model {ident.get('model')}; "
            f"{ident.get('vector_units')}), {h.get('cores', '?')} cores")


def host() -> dict:
    return {"cpu": cpu_name(), "cpu_identity": cpu_identity(), "cores": os.cpu_count(), "flags": cpu_flags(),
            "python": sys.version.split()[0], "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


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
    each stamped with this host, replacing earlier rows of the same workload and engine on the same CPU (so that
    runs of one bench at several sizes, and on several CPUs, accumulate), atomically."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamp = host()
    rows = [{**r, "host": stamp} for r in rows]
    new = {(r["workload"], r["engine"], cpu_label(stamp)) for r in rows}
    kept = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            kept = [r for r in old.get("rows", [])
                    if (r["workload"], r["engine"], cpu_label(r.get("host") or old.get("host") or {})) not in new]
        except (json.JSONDecodeError, KeyError, TypeError):
            kept = []
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"host": stamp, "rows": kept + rows}, indent=2) + "\n")
    tmp.replace(path)
    return path
