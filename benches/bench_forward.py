"""CPU forward-pass benchmark: the official PyTorch Latte against latte-rs, in one run.

The parent process builds the official model (https://github.com/Vchitect/Latte) with
``torch.manual_seed(3407)``, adds ``0.02 * randn`` to every trainable parameter (the official
init zeroes adaLN and the final layer, so the untouched model outputs zeros and the outputs
could not be compared) and writes its state dict plus one fixed input to a temporary ``.npz``.
Each engine then runs in its own subprocess::

    python bench_forward.py --worker torch|latte --data FILE

so that its peak resident memory (``ru_maxrss``) is its own. A worker reads the input, notes
``ru_maxrss`` (the baseline: interpreter, engine import and input), builds the model and loads
the weights, runs ``--warmup`` untimed and ``--repeat`` timed forward passes, saves the output
to an ``.npz`` and prints a JSON line on stdout. The parent checks that both outputs agree and
prints a Markdown table.

Usage (needs torch, timm, einops, numpy, an official checkout, and latte_rs built with
``maturin develop --release``)::

    python benches/bench_forward.py --latte-repo /path/to/Latte          # or LATTE_REPO=...
    python benches/bench_forward.py --latte-repo ../Latte --batch 1 --frames 8 --json res.json

The default workload is Latte-S/2, batch 2, 16 frames of 32x32x4 latents, learn_sigma,
unconditional. If ``latte_rs`` cannot be imported the torch row and the error are still printed.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from common import cpu_name, host, peak_rss_mib, result_rows, write_results  # noqa: E402

SEED = 3407
IN_CHANNELS = 4
ENGINES = ("torch", "latte")
LABELS = {"torch": "PyTorch (official)", "latte": "latte-rs"}


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def load_official(latte_repo: Path):
    """Import the official ``models/latte.py`` by path (``models/__init__`` needs diffusers)."""
    path = Path(latte_repo) / "models" / "latte.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; --latte-repo must be an official checkout")
    spec = importlib.util.spec_from_file_location("official_latte", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_official(mod, meta: dict):
    """The official model for the benchmark workload (unconditional: extras=1)."""
    return mod.Latte_models[meta["model"]](
        input_size=meta["latent"],
        num_frames=meta["frames"],
        in_channels=IN_CHANNELS,
        learn_sigma=True,
        extras=1,
    ).float()


def time_calls(fn, warmup: int, repeat: int):
    """Run ``fn`` warmup + repeat times; return (last output, list of timed seconds)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


# --------------------------------------------------------------------------------------------
# Workers (one engine per process)
# --------------------------------------------------------------------------------------------


def run_torch(data, meta: dict, args) -> tuple[np.ndarray, list[float], dict, float]:
    import torch

    torch.set_num_threads(args.threads)
    mod = load_official(args.latte_repo)
    x = torch.from_numpy(data["x"])
    t = torch.from_numpy(data["t"])
    rss_before = peak_rss_mib()

    model = build_official(mod, meta).eval()
    names = [k for k in data.files if k.startswith("param/")]
    state = {k[len("param/") :]: torch.from_numpy(data[k]) for k in names}
    model.load_state_dict(state, strict=True)
    del state

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        out, times = time_calls(lambda: model(x, t), args.warmup, args.repeat)
    info = {"version": torch.__version__, "threads": torch.get_num_threads()}
    return out.float().numpy(), times, info, rss_before


def run_latte(data, meta: dict, args) -> tuple[np.ndarray, list[float], dict, float]:
    import latte_rs

    x = np.ascontiguousarray(data["x"], dtype=np.float32)
    t = np.ascontiguousarray(data["t"], dtype=np.int64)
    rss_before = peak_rss_mib()

    cfg = latte_rs.LatteConfig.preset(
        meta["model"],
        num_frames=meta["frames"],
        input_size=meta["latent"],
        num_classes=0,
        learn_sigma=True,
    )
    model = latte_rs.LatteModel(cfg, device="cpu", seed=0)
    state = {k[len("param/") :]: data[k] for k in data.files if k.startswith("param/")}
    model.load_state_dict(state, strict=True)
    del state

    with latte_rs.autocast("bfloat16", enabled=args.bf16):
        out, times = time_calls(lambda: model(x, t), args.warmup, args.repeat)
    info = {
        "version": getattr(latte_rs, "__version__", "unknown"),
        "threads": int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1)),
    }
    return np.asarray(out, dtype=np.float32), times, info, rss_before


def worker(args) -> None:
    """Benchmark one engine and print its result as one JSON line on stdout."""
    data = np.load(args.data)
    meta = json.loads(str(data["meta"]))
    run = run_torch if args.worker == "torch" else run_latte
    out, times, info, rss_before = run(data, meta, args)
    peak = peak_rss_mib()
    out_path = args.worker_out or str(Path(args.data).with_name(f"out_{args.worker}.npz"))
    np.savez(out_path, out=out)
    result = {
        "engine": args.worker,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_rss_mib": peak,
        "rss_before_model_mib": rss_before,
        "model_rss_mib": peak - rss_before,
        "output": out_path,
        "output_shape": list(out.shape),
        **info,
    }
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def perturbed_official(args) -> tuple[dict, dict[str, np.ndarray]]:
    """The seeded official model with 0.02 * randn added to its trainable parameters: (meta, state arrays)."""
    import torch

    torch.manual_seed(SEED)
    meta = {"model": args.model, "batch": args.batch, "frames": args.frames, "latent": args.latent}
    model = build_official(load_official(args.latte_repo), meta)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # pos_embed / temp_embed are fixed sin-cos tables
                p.add_(torch.randn_like(p) * 0.02)
    return meta, {f"param/{k}": v.float().numpy() for k, v in model.state_dict().items()}


def make_data(args, path: Path) -> None:
    """Save the perturbed official model's weights and one input."""
    import torch

    meta, arrays = perturbed_official(args)
    x = torch.randn(args.batch, args.frames, IN_CHANNELS, args.latent, args.latent)
    t = torch.randint(0, 1000, (args.batch,), dtype=torch.int64)
    np.savez(path, x=x.numpy(), t=t.numpy(), meta=np.array(json.dumps(meta)), **arrays)


def run_worker(engine: str, data: Path, args) -> dict:
    """Run one worker subprocess; return its JSON result or {"engine", "error"}."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        engine,
        "--data",
        str(data),
        "--worker-out",
        str(data.with_name(f"out_{engine}.npz")),
        "--warmup",
        str(args.warmup),
        "--repeat",
        str(args.repeat),
        "--threads",
        str(args.threads),
    ]
    if engine == "torch":
        cmd += ["--latte-repo", str(args.latte_repo)]
    if args.bf16:
        cmd.append("--bf16")
    return run_json_worker(cmd, engine, LABELS[engine], args.threads)


def run_json_worker(cmd: list[str], engine: str, label: str, threads: int) -> dict:
    """Run a worker subprocess that prints its result as a JSON line; return it, or {"engine", "error"}."""
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", str(threads))
    print(f"running {label} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"engine": engine, "error": f"exit code {proc.returncode}\n{tail}"}
    return json.loads(lines[-1])


def compare(ref: np.ndarray, out: np.ndarray) -> dict:
    """Max absolute difference, and the same relative to the largest reference magnitude."""
    if ref.shape != out.shape:
        return {"shape_mismatch": [list(ref.shape), list(out.shape)]}
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    scale = float(np.abs(ref).max()) or 1.0
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / scale),
        "max_elem_rel_diff": float((diff / (np.abs(ref) + 1e-3 * scale)).max()),
        "max_abs_ref": scale,
    }


def markdown_table(results: list[dict]) -> str:
    ok = [r for r in results if "error" not in r]
    torch_median = next((r["median_s"] for r in ok if r["engine"] == "torch"), None)
    rows = [
        "| engine | median s | min s | peak RSS MiB | model RSS MiB | speed ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in ok:
        ratio = f"{torch_median / r['median_s']:.2f}x" if torch_median else "n/a"
        rows.append(
            f"| {LABELS[r['engine']]} | {r['median_s']:.3f} | {r['min_s']:.3f} "
            f"| {r['peak_rss_mib']:.0f} | {r['model_rss_mib']:.0f} | {ratio} |"
        )
    return "\n".join(rows)


def parent(args) -> int:
    if args.latte_repo is None:
        sys.exit("error: pass --latte-repo PATH (an official Vchitect/Latte checkout) or set LATTE_REPO")
    args.latte_repo = Path(args.latte_repo).resolve()
    if args.tol is None:
        args.tol = 5e-2 if args.bf16 else 1e-3

    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="latte_bench_") as tmp:
        data = Path(tmp) / "data.npz"
        make_data(args, data)
        for engine in args.engines:
            results.append(run_worker(engine, data, args))
        outputs = {r["engine"]: np.load(r["output"])["out"] for r in results if "error" not in r}

    cpu = cpu_name()
    print(
        f"\n## Latte forward, CPU: {args.model}, batch {args.batch}, {args.frames} frames, "
        f"{args.latent}x{args.latent}x{IN_CHANNELS} latents, learn_sigma, unconditional\n"
    )
    print(f"host: {cpu}, {os.cpu_count()} logical CPUs; warmup {args.warmup}, repeat {args.repeat}")
    for r in results:
        if "error" not in r:
            print(f"- {LABELS[r['engine']]}: version {r['version']}, {r['threads']} threads")
    print()
    print(markdown_table(results))
    print("\nspeed ratio = PyTorch median / engine median (above 1: faster than PyTorch);")
    print("model RSS = peak RSS minus the RSS before the model was built (after imports + input).")

    agreement = None
    if "torch" in outputs and "latte" in outputs:
        agreement = compare(outputs["torch"], outputs["latte"])
        if "shape_mismatch" in agreement:
            print(f"\noutputs DIFFER in shape: {agreement['shape_mismatch']}")
        else:
            agreement["agree"] = agreement["max_rel_diff"] <= args.tol
            print(
                f"\noutputs: max |torch| {agreement['max_abs_ref']:.4f}, "
                f"max abs diff {agreement['max_abs_diff']:.3e}, "
                f"max rel diff {agreement['max_rel_diff']:.3e} (of max |torch|), "
                f"max elementwise rel diff {agreement['max_elem_rel_diff']:.3e} -> "
                f"{'agree' if agreement['agree'] else 'DISAGREE'} (tol {args.tol:g})"
            )
    for r in results:
        if "error" in r:
            print(f"\n{LABELS[r['engine']]} failed: {r['error']}")

    workload = f"{args.model} forward, batch {args.batch}, {args.frames}x{args.latent}x{args.latent}"
    if args.bf16:
        workload += ", bf16 autocast"
    print(f"\nwrote {write_results('bench_forward', result_rows(workload, results, LABELS))}")
    if args.json:
        record = {
            "workload": {
                "model": args.model,
                "batch": args.batch,
                "frames": args.frames,
                "latent": args.latent,
                "in_channels": IN_CHANNELS,
                "learn_sigma": True,
                "num_classes": 0,
                "seed": SEED,
            },
            "host": host(),
            "warmup": args.warmup,
            "repeat": args.repeat,
            "results": [{k: v for k, v in r.items() if k != "output"} for r in results],
            "agreement": agreement,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwrote {args.json}")

    failed = any("error" in r for r in results)
    return 1 if failed or (agreement is not None and not agreement.get("agree", False)) else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description="CPU forward benchmark: official PyTorch Latte vs latte-rs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="Latte-S/2", help="preset name, e.g. Latte-S/2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=32, help="latent height = width")
    parser.add_argument(
        "--latte-repo",
        default=os.environ.get("LATTE_REPO"),
        help="official Vchitect/Latte checkout (default: $LATTE_REPO)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch.set_num_threads, and RAYON_NUM_THREADS for latte-rs unless already set",
    )
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        help="max abs diff / max |torch output| for the outputs to agree (default 1e-3, with --bf16 5e-2)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="both engines under bf16 autocast: torch.autocast('cpu', torch.bfloat16) and latte_rs.autocast()",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    if args.worker:
        if not args.data:
            parser.error("--worker needs --data")
        worker(args)
    else:
        sys.exit(parent(args))


if __name__ == "__main__":
    main()
