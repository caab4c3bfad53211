"""The `latte-rs` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _forward_demo(args: argparse.Namespace) -> int:
    import latte_rs

    cfg = latte_rs.LatteConfig.preset(args.model, num_frames=args.frames, input_size=args.latent)
    model = latte_rs.LatteModel(cfg, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, args.frames, cfg.in_channels, args.latent, args.latent), np.float32)
    t = rng.integers(0, 1000, size=args.batch)
    start = time.perf_counter()
    out = model(x, t)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "model": args.model,
                "parameters": model.num_parameters(),
                "input": list(x.shape),
                "output": list(out.shape),
                "seconds": round(seconds, 3),
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latte-rs", description="Latte video diffusion transformers in Rust.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build a Latte model and run one forward pass on random latents")
    demo.add_argument("--model", default="Latte-S/2", help="preset name (default: Latte-S/2)")
    demo.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    demo.add_argument("--latent", type=int, default=32, help="latent height and width (default: 32)")
    demo.add_argument("--batch", type=int, default=1, help="clips per batch (default: 1)")
    demo.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default: 0)")
    args = parser.parse_args(argv)
    try:
        return _forward_demo(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"latte-rs: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
