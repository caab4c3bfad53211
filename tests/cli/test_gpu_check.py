"""benches/gpu_check.py's dry run (tiny model, CPU): every section runs and reports, so that the GPU check does not
rot between the runs on a lent GPU. With LATTE_REPO set, the dry run's parity sections must pass against the
official code."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import latte_rs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benches" / "gpu_check.py"
SECTIONS = ("a_forward_parity", "b_gradient_parity", "c_train_parity", "d_flash_vs_math", "e_timings", "f_flops",
            "g_peak_memory")


def _gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(tmp_path: Path, latte_repo: str | None) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k != "LATTE_REPO"}
    if latte_repo:
        env["LATTE_REPO"] = latte_repo
    out = tmp_path / "gpu.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    print(f"dry run: {time.perf_counter() - start:.1f} s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(SECTIONS) <= set(report["sections"]), sorted(report["sections"])
    assert report["dry_run"] and report["device"] == "cpu" and report["failed"] == []
    assert report["latte_rs"]["version"] == latte_rs.__version__
    assert "| workload | engine | median s |" in proc.stdout
    return proc, report


def _rows(report: dict, engine: str) -> dict[str, dict]:
    return {r["workload"]: r for r in report["sections"]["e_timings"]["rows"] if r["engine"] == engine}


def test_dry_run_without_the_official_code(tmp_path):
    _, report = _dry_run(tmp_path, None)
    sections = report["sections"]
    for key in ("a_forward_parity", "b_gradient_parity", "c_train_parity"):
        assert sections[key]["skipped"] == "no --latte-repo", sections[key]
    flash = sections["d_flash_vs_math"]
    assert "error" not in flash and "flash" in flash["skipped"], flash  # the CPU cannot run FlashAttention
    latte = _rows(report, "latte")
    assert set(latte) == {"forward", "train", "sample"}
    for workload, row in latte.items():
        assert row["median_s"] > 0 and row["flops"] > 0 and row["achieved_tflops"] > 0, (workload, row)
        assert row["mfu"] is None  # no peak on the CPU
        assert row["peak_mib"] > 0 and row["peak_method"].startswith("VmHWM"), row
    assert all(r["skipped"] == "no --latte-repo" for r in _rows(report, "official").values())
    assert len(sections["g_peak_memory"]["rows"]) == 6
    flops = sections["f_flops"]["models"]["tiny"]
    assert flops["checks"]["parameters"]["pass"], flops["parameters"]
    assert flops["per_token_linear_flops_over_2_params_tokens"] == pytest.approx(1.0)
    assert flops["flop_counter"]["skipped"] == "no --latte-repo"


def test_flop_count_covers_every_weight():
    """The analytic count's architecture against latte-rs: the parameter total of each preset, and the weights
    applied per token (2 FLOPs per weight per token) by name in a tiny model."""
    gc = _gpu_check()
    for name, params in (("Latte-S/2", 32_480_672), ("Latte-XL/2", 673_681_568)):
        cfg = latte_rs.LatteConfig.preset(name, num_frames=16, input_size=32, num_classes=0, learn_sigma=True)
        assert gc.analytic_parameters(cfg.to_dict()) == cfg.num_parameters() == params, name
    cfg = gc.model_config("tiny", dry_run=True)
    state = latte_rs.LatteModel(latte_rs.LatteConfig.from_dict(cfg), seed=0).state_dict()
    per_token = (".attn.qkv.weight", ".attn.proj.weight", ".mlp.fc1.weight", ".mlp.fc2.weight")
    weights = sum(v.size for k, v in state.items()
                  if k.endswith(per_token) or k in ("x_embedder.proj.weight", "final_layer.linear.weight"))
    assert gc.per_token_linear_parameters(cfg) == weights
    flops = gc.forward_flops(cfg, batch_size=2)
    tokens = 2 * cfg["num_frames"] * (cfg["input_size"] // cfg["patch_size"]) ** 2
    assert flops["patch_embed"] + flops["block_linears"] + flops["final_linear"] == 2 * weights * tokens
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")


@pytest.mark.skipif(not os.environ.get("LATTE_REPO"), reason="set LATTE_REPO to an official Latte checkout")
def test_dry_run_parity_with_the_official_code(tmp_path):
    pytest.importorskip("torch")
    _, report = _dry_run(tmp_path, os.environ["LATTE_REPO"])
    sections = report["sections"]
    for key in ("a_forward_parity", "b_gradient_parity", "c_train_parity"):
        assert sections[key]["pass"], sections[key]
    forward = sections["a_forward_parity"]["checks"]
    assert forward["float32"]["value"] <= 1e-5
    assert forward["bfloat16_vs_official_bf16_cast"]["value"] <= 3e-2
    grads = sections["b_gradient_parity"]["checks"]
    assert grads["gradients"]["value"] <= 1e-5 and grads["loss"]["value"] <= 1e-5
    assert sections["c_train_parity"]["checks"]["losses"]["value"] <= 1e-3
    assert len(sections["c_train_parity"]["losses_latte"]) == 10
    flops = sections["f_flops"]["models"]["tiny"]
    assert flops["flop_counter"]["total"] == flops["analytic"]["total"]
    official = _rows(report, "official")
    assert set(official) == {"forward", "train", "sample"}
    for row in official.values():
        assert row["median_s"] > 0 and row["ratio_vs_official"] == pytest.approx(1.0), row
    for row in _rows(report, "latte").values():
        assert row["ratio_vs_official"] > 0, row
