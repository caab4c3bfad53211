"""Benchmark rows name the CPU they were measured on (issue 34): a speed ratio holds on one CPU, not in general."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parents[2] / "benches"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCHES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHES))
    return module


@pytest.fixture
def common(tmp_path, monkeypatch):
    module = _load("common")
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    return module


def test_every_row_carries_the_cpu_identity(common):
    ident = common.host()["cpu_identity"]
    assert set(ident) == {"vendor", "family", "model", "stepping", "microarchitecture", "vector_units"}
    if Path("/proc/cpuinfo").is_file():
        assert ident["vendor"] and isinstance(ident["family"], int) and isinstance(ident["model"], int)
    path = common.write_results("x", [{"workload": "w", "engine": "e", "median_s": 1.0, "ratio": 1.0}])
    rows = json.loads(path.read_text())["rows"]
    assert rows[0]["host"]["cpu_identity"] == ident


def test_rows_of_another_cpu_are_kept_beside_this_ones(common):
    other = {"cpu": "AMD EPYC", "cores": 2, "cpu_identity": {"vendor": "AuthenticAMD", "family": 25, "model": 17,
             "stepping": 1, "microarchitecture": "Zen 4", "vector_units": "AVX-512 on 256-bit units"}}
    (common.RESULTS / "x.json").write_text(json.dumps({"rows": [
        {"workload": "w", "engine": "e", "median_s": 2.0, "ratio": 1.0, "host": other}]}))
    rows = json.loads(common.write_results("x", [{"workload": "w", "engine": "e", "median_s": 1.0}]).read_text())
    assert [r["median_s"] for r in rows["rows"]] == [2.0, 1.0]
    # The same workload and engine on this CPU replaces its own row only.
    rows = json.loads(common.write_results("x", [{"workload": "w", "engine": "e", "median_s": 0.5}]).read_text())
    assert [r["median_s"] for r in rows["rows"]] == [2.0, 0.5]
    assert common.cpu_label(other) == "AMD EPYC (Zen 4, family 25 model 17; AVX-512 on 256-bit units), 2 cores"
    assert "not recorded" in common.cpu_label({"cpu": "AMD EPYC", "cores": 2})


@pytest.mark.parametrize(("vendor", "family", "model", "flags", "arch", "vector"), [
    ("AuthenticAMD", 25, 17, "avx2 fma avx512f avx512_bf16", "Zen 4", "AVX-512 on 256-bit units, AVX512-BF16"),
    ("AuthenticAMD", 25, 1, "avx2 fma", "Zen 3", "AVX2"),
    ("AuthenticAMD", 26, 2, "avx2 fma avx512f", "Zen 5", "AVX-512"),
    ("GenuineIntel", 6, 143, "avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "Sapphire Rapids",
     "AVX-512, AVX512-BF16, AMX-BF16"),
    ("GenuineIntel", 6, 167, "avx2 avx512f amx_tile", None, "AVX-512"),
])
def test_the_microarchitecture_and_vector_units_are_read(common, monkeypatch, vendor, family, model, flags, arch,
                                                          vector):
    info = {"vendor_id": vendor, "cpu family": str(family), "model": str(model), "stepping": "1", "flags": flags}
    monkeypatch.setattr(common, "_cpuinfo", lambda: info)
    ident = common.cpu_identity()
    assert (ident["microarchitecture"], ident["vector_units"]) == (arch, vector)
