"""The training loop: official Latte YAML configs in, checkpoints, a loss log (CSV) and a loss plot (PNG) out.

>>> import latte_rs
>>> result = latte_rs.train({"dataset": "synthetic", "model": "Latte-S/2", "num_frames": 4, "image_size": 16,
...                          "pixel_space": True, "model_config": {"depth": 2, "hidden_size": 32, "num_heads": 2},
...                          "local_batch_size": 2, "max_train_steps": 3, "log_every": 1, "ckpt_every": 3},
...                         output_dir=tmp_dir, progress=False)  # doctest: +SKIP
>>> result.history[-1]["step"]  # doctest: +SKIP
3

The config takes the official keys (`configs/*/*_train.yaml` of the Latte repository) and a few of ours:

==============================  ==========================================================================
official key                    meaning here
==============================  ==========================================================================
model                           preset, e.g. "Latte-XL/2" (also "LatteIMG-XL/2")
num_frames, image_size          clip length and size in pixels; latents are image_size / 8 unless
                                ``pixel_space``
frame_interval                  passed to the dataset loaders (temporal stride)
learn_sigma, num_classes,       model options; ``extras: 2`` means class-conditional (then
extras                          ``num_classes`` is required)
use_image_num                   image frames per clip for image-video joint training
learning_rate, lr_warmup_steps  AdamW learning rate (constant after the linear warm-up)
clip_max_norm, start_clip_iter  global-norm clipping from step ``start_clip_iter`` on
gradient_accumulation_steps     micro-batches per optimiser step (``local_batch_size`` is the batch)
local_batch_size                clips per optimiser step
max_train_steps                 optimiser steps in total
ckpt_every, log_every           checkpoint and log intervals (steps)
global_seed                     seed of the trainer and of the data order
results_dir                     where experiment folders are made
gradient_checkpointing          activation checkpointing
mixed_precision                 False, or "bf16" / "fp16" / True (= "bf16"): half-precision model with
                                f32 master weights
resume_from_checkpoint          resume from the newest checkpoint of the experiment
==============================  ==========================================================================

``dataset`` and ``data_path`` pick the loader (``latte_rs.data``): synthetic, ucf101, ffs, sky, taichi (and the
``_img`` forms) or folder. Ours: ``pixel_space`` (train on pixels, 3 channels, no VAE), ``model_config``
(LatteConfig overrides, e.g. a tiny depth), ``ema_decay`` (default 0.9999), ``weight_decay`` (0), ``num_clips``,
``label_by``, ``shape_size`` (radius range as fractions of the frame), ``shape_speed`` (fraction of the frame
per frame) and ``class_colours`` (synthetic dataset, see ``SyntheticVideos``), ``keep_checkpoints`` (keep only the
newest N; default all).
"""

from __future__ import annotations

import csv
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._native import GaussianDiffusion, LatteConfig, LatteModel, Trainer

# Keys whose YAML values may arrive as strings ("1e-4" is a string in YAML 1.1) and their types.
_NUMERIC = {
    "num_frames": int,
    "image_size": int,
    "frame_interval": int,
    "num_classes": int,
    "extras": int,
    "use_image_num": int,
    "learning_rate": float,
    "lr_warmup_steps": int,
    "clip_max_norm": float,
    "start_clip_iter": int,
    "gradient_accumulation_steps": int,
    "local_batch_size": int,
    "max_train_steps": int,
    "ckpt_every": int,
    "log_every": int,
    "global_seed": int,
    "ema_decay": float,
    "weight_decay": float,
    "num_clips": int,
    "keep_checkpoints": int,
    "shape_speed": float,
}

DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic",
    "data_path": None,
    "pretrained_model_path": None,
    "model": "Latte-XL/2",
    "num_frames": 16,
    "image_size": 256,
    "frame_interval": 3,
    "learn_sigma": True,
    "extras": 1,
    "num_classes": None,
    "use_image_num": 0,
    "learning_rate": 1e-4,
    "lr_warmup_steps": 0,
    "clip_max_norm": 0.0,
    "start_clip_iter": 0,
    "gradient_accumulation_steps": 1,
    "local_batch_size": 5,
    "max_train_steps": 1000,
    "ckpt_every": 1000,
    "log_every": 50,
    "global_seed": 3407,
    "results_dir": "./results",
    "gradient_checkpointing": False,
    "mixed_precision": False,
    "resume_from_checkpoint": False,
    "pixel_space": False,
    "model_config": {},
    "ema_decay": 0.9999,
    "weight_decay": 0.0,
    "num_clips": 256,
    "label_by": "shape",
    "shape_size": [0.08, 0.16],
    "shape_speed": 1 / 32,
    "class_colours": False,
    "keep_checkpoints": None,
}

# Official keys that change nothing here (logging backends, GPU-only switches, sampling settings).
_IGNORED = {
    "frame_data_path", "frame_data_txt", "save_ceph", "num_workers",
    "use_compile", "enable_xformers_memory_efficient_attention", "num_sampling_steps", "fixed_spatial",
    "attention_bias", "pretrained", "load_from_ceph",
}


def load_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A training config from a YAML file or a mapping, with defaults filled in and values checked.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: a value has the wrong type or range, or a key is unknown (the message names it).
    """
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config: no such file {path}")
        with path.open() as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config: {path} must hold a mapping of keys to values, got {type(raw).__name__}")
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raise TypeError(f"config: expected a YAML path or a mapping, got {type(config).__name__}")
    unknown = sorted(set(raw) - set(DEFAULTS) - _IGNORED)
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if k in DEFAULTS and v is not None})
    for key, kind in _NUMERIC.items():
        value = cfg[key]
        if value is None:
            continue
        try:
            if isinstance(value, bool):
                raise ValueError
            converted = kind(float(value)) if kind is int else float(value)
            if kind is int and float(value) != converted:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"config: {key} expected {kind.__name__}, got {value!r}") from None
        cfg[key] = converted
    for key in ("max_train_steps", "local_batch_size", "ckpt_every", "log_every", "gradient_accumulation_steps",
                "num_frames", "image_size"):
        if cfg[key] < 1:
            raise ValueError(f"config: {key} expected >= 1, got {cfg[key]}")
    if cfg["extras"] == 2 and not cfg["num_classes"]:
        raise ValueError("config: extras: 2 (class-conditional) needs num_classes")
    if cfg["extras"] not in (1, 2):
        raise ValueError(f"config: extras expected 1 (unconditional) or 2 (class-conditional), got {cfg['extras']} "
                         "(text-to-video training is not supported)")
    if not isinstance(cfg["model_config"], Mapping):
        raise ValueError(f"config: model_config expected a mapping, got {cfg['model_config']!r}")
    if cfg["mixed_precision"] not in (False, True, "bf16", "fp16", "no"):
        raise ValueError(
            f"config: mixed_precision expected False, True, 'bf16' or 'fp16', got {cfg['mixed_precision']!r}"
        )
    return cfg


def model_config(cfg: Mapping[str, Any]) -> LatteConfig:
    """The LatteConfig a training config describes."""
    latent = cfg["image_size"] if cfg["pixel_space"] else cfg["image_size"] // 8
    if not cfg["pixel_space"] and cfg["image_size"] % 8:
        raise ValueError(
            f"config: image_size expected a multiple of 8 (the VAE downsamples by 8), got {cfg['image_size']}"
        )
    overrides: dict[str, Any] = dict(
        num_frames=cfg["num_frames"],
        input_size=latent,
        learn_sigma=bool(cfg["learn_sigma"]),
        num_classes=cfg["num_classes"] if cfg["extras"] == 2 else 0,
        use_image_num=cfg["use_image_num"],
    )
    if cfg["pixel_space"]:
        overrides["in_channels"] = 3
    overrides.update(cfg["model_config"])
    return LatteConfig.preset(cfg["model"], **overrides)


def _dtype(cfg: Mapping[str, Any]) -> str:
    mp = cfg["mixed_precision"]
    if mp is True or mp == "bf16":
        return "bfloat16"
    return "float16" if mp == "fp16" else "float32"


def make_dataset(cfg: Mapping[str, Any]):
    """The dataset a config names: "synthetic" (built in), or "ucf101", "ffs", "sky", "taichi" (and their "_img"
    forms) or "folder" read from ``data_path`` with the official transforms."""
    name = str(cfg["dataset"])
    if name == "synthetic":
        from .data import SyntheticVideos

        classes = cfg["num_classes"] if cfg["extras"] == 2 else 4
        return SyntheticVideos(
            num_clips=cfg["num_clips"],
            num_frames=cfg["num_frames"],
            image_size=cfg["image_size"],
            label_by=cfg["label_by"],
            num_classes=min(int(classes), 4),
            shape_size=tuple(cfg["shape_size"]),
            speed=cfg["shape_speed"],
            class_colours=bool(cfg["class_colours"]),
            seed=cfg["global_seed"],
        )
    from . import data

    if name == "latents":  # a cache written by `latte-rs encode`
        if not cfg["data_path"]:
            raise ValueError("data_path: dataset 'latents' needs the folder of a latent cache")
        return data.LatentClips(cfg["data_path"])
    loaders = {"ucf101": data.UCF101, "ffs": data.FaceForensics, "sky": data.SkyTimelapse, "taichi": data.TaichiHD,
               "folder": data.VideoClips}
    base = name.removesuffix("_img")
    if base not in loaders:
        known = ", ".join(loaders)
        raise ValueError(f"dataset: expected one of synthetic, latents, {known} (or their _img forms), got {name!r}")
    if not cfg["data_path"]:
        raise ValueError(f"data_path: dataset {name!r} needs the folder of its videos")
    joint = cfg["use_image_num"] if name.endswith("_img") else 0
    return loaders[base](cfg["data_path"], cfg["num_frames"], cfg["frame_interval"], cfg["image_size"],
                         seed=cfg["global_seed"], use_image_num=joint)


def _clip_and_label(item: Any) -> tuple[np.ndarray, int | None, np.ndarray | None]:
    """(clip, label, image labels) of a dataset item: a (clip, label) pair, a bare clip, or the official dict
    {"video", "video_name"} (with "image_labels" from image-video joint datasets)."""
    image_labels = None
    if isinstance(item, Mapping):  # the official datasets yield {"video": ..., "video_name": label}
        video, label = item["video"], item.get("video_name")
        if item.get("image_labels") is not None:
            image_labels = np.asarray(item["image_labels"], dtype=np.int64)
    elif isinstance(item, (tuple, list)):
        video, label = item[0], item[1] if len(item) > 1 else None
    else:
        video, label = item, None
    if hasattr(video, "detach"):
        video = video.detach().cpu().numpy()
    video = np.asarray(video, dtype=np.float32)
    return video, None if label is None else int(label), image_labels


@dataclass
class Batch:
    """One training batch: clips (B, F, C, H, W), labels (B,) or None, image labels (B, use_image_num) or None."""

    latents: np.ndarray
    labels: np.ndarray | None
    image_labels: np.ndarray | None


def batches(dataset, batch_size: int, *, seed: int, start_step: int = 0, use_image_num: int = 0,
            num_frames: int | None = None) -> Iterator[Batch]:
    """Endless batches over `dataset` in a seeded random order per epoch (drop_last, as the official loader).

    The order depends only on (seed, epoch), so a resumed run at step `start_step` sees exactly the batches an
    uninterrupted run would; datasets with a ``set_epoch`` method are told the epoch (new random crops). With
    `use_image_num`, clips of `num_frames` frames get that many frames appended, each drawn from a random other
    clip, with those clips' labels as image labels (image-video joint training), unless the dataset already
    yields joint clips (``VideoClips(use_image_num=...)``).
    """
    n = len(dataset)
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset: {n} clips, fewer than one batch of {batch_size}")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        idx = order[offset * batch_size:(offset + 1) * batch_size]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        items = [_clip_and_label(dataset[int(i)]) for i in idx]
        clips = [c for c, _, _ in items]
        labels = [lab for _, lab, _ in items]
        image_labels = [il for _, _, il in items] if all(il is not None for _, _, il in items) else None
        if image_labels is None and use_image_num and num_frames is not None and clips[0].shape[0] == num_frames:
            rng = np.random.default_rng([seed, epoch, offset, 1])
            image_labels = []
            for j, clip in enumerate(clips):
                frames, labs = [], []
                for _ in range(use_image_num):
                    other = int(rng.integers(n))
                    oclip, olab, _ = _clip_and_label(dataset[other])
                    frames.append(oclip[int(rng.integers(oclip.shape[0]))])
                    labs.append(olab)
                clips[j] = np.concatenate([clip, np.stack(frames)], axis=0)
                image_labels.append(labs)
        x = np.stack(clips)
        has_labels = all(lab is not None for lab in labels)
        y = np.asarray(labels, dtype=np.int64) if has_labels else None
        yi = np.asarray(image_labels, dtype=np.int64) if (image_labels is not None and has_labels) else None
        yield Batch(x, y, yi)
        step += 1


@dataclass
class TrainResult:
    """What `train` did: the experiment folder, the trainer (with the model and EMA), the logged history."""

    experiment_dir: Path
    trainer: Trainer
    history: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: Path | None = None

    @property
    def model(self) -> LatteModel:
        return self.trainer.model


def _experiment_dir(cfg: Mapping[str, Any], output_dir: str | Path | None, resume: bool) -> Path:
    if output_dir is not None:
        return Path(output_dir)
    results = Path(cfg["results_dir"])
    suffix = f"{cfg['model'].replace('/', '-')}-F{cfg['num_frames']}S{cfg['frame_interval']}-{cfg['dataset']}"
    existing = sorted(p for p in results.glob(f"[0-9][0-9][0-9]-{suffix}") if p.is_dir()) if results.is_dir() else []
    if resume and existing:
        return existing[-1]
    index = len(list(results.glob("*"))) if results.is_dir() else 0
    return results / f"{index:03d}-{suffix}"


_STEP_DIR = re.compile(r"^\d{7}$")


def resume_latest(checkpoint_dir: str | Path) -> tuple[Path, Trainer] | None:
    """The newest complete checkpoint under `checkpoint_dir` that loads, with its trainer; damaged newer ones are
    reported and skipped."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    for path in sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()), reverse=True):
        try:
            return path, Trainer.resume(path)
        except (ValueError, FileNotFoundError, OSError) as e:
            warnings.warn(f"skipping damaged checkpoint {path}: {e}", stacklevel=2)
    return None


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The path of `resume_latest`'s checkpoint."""
    found = resume_latest(checkpoint_dir)
    return None if found is None else found[0]


_CSV_FIELDS = ["step", "loss", "mse", "vb", "grad_norm", "lr", "steps_per_sec", "skipped_steps"]


def plot_loss(history: list[Mapping[str, float]], path: str | Path, title: str = "training loss") -> Path:
    """Writes the loss curve (log scale, with the MSE part when present) as a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [h["loss"] for h in history], label="loss", color="tab:blue")
    if history and history[0].get("mse") is not None:
        ax.plot(steps, [h["mse"] for h in history], label="mse", color="tab:orange", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history and all(h["loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def _read_history(path: Path, upto: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row = {k: (float(v) if v not in ("", "None") else None) for k, v in r.items()}
        row["step"] = int(row["step"])
        if row["step"] <= upto:
            out.append(row)
    return out


def _write_history(path: Path, history: list[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        w.writeheader()
        for h in history:
            w.writerow({k: h.get(k) for k in _CSV_FIELDS})
    tmp.replace(path)


def train(
    config: str | Path | Mapping[str, Any],
    dataset=None,
    *,
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
    resume: bool | None = None,
    model: LatteModel | None = None,
    progress: bool = True,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Trains a Latte model as the official `train.py` does, from an official YAML config (or a mapping).

    Args:
        config: a YAML path or a mapping with the official keys (see the module docs).
        dataset: an indexable of (clip, label) pairs (or the official {"video", "video_name"} dicts), clips
            (F, C, H, W) already in the model's input space (latents, or pixels with ``pixel_space``); default:
            the config's dataset.
        output_dir: the experiment folder (default: a new numbered folder under ``results_dir`` as the official
            code, or the newest matching one when resuming).
        max_steps: overrides ``max_train_steps``.
        resume: continue from the newest checkpoint of the experiment (default: ``resume_from_checkpoint``).
        model: start from this model instead of a fresh one (its config must match the training config's).
        progress: show a progress bar with the loss.
        callback: called with each logged row (step, loss, mse, vb, grad_norm, lr, steps_per_sec).

    Returns:
        TrainResult with the experiment folder, the trainer (``.trainer.ema_model()`` for sampling) and history.

    The folder gets ``config.yaml``, ``loss.csv``, ``loss.png`` and ``checkpoints/<step:07d>/`` (each a
    ``Trainer.save`` directory whose ``model.safetensors`` and ``ema.safetensors`` load with ``LatteModel.load``).
    """
    cfg = load_config(config)
    if max_steps is not None:
        cfg["max_train_steps"] = int(max_steps)
    resume = bool(cfg["resume_from_checkpoint"]) if resume is None else resume
    exp = _experiment_dir(cfg, output_dir, resume)
    ckpt_dir = exp / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, exp / "config.yaml")

    trainer = None
    if resume:
        found = resume_latest(ckpt_dir)
        if found is not None:
            trainer = found[1]
    if trainer is None:
        mcfg = model_config(cfg)
        if model is None:
            model = LatteModel(mcfg, seed=cfg["global_seed"], dtype=_dtype(cfg))
        elif model.config != mcfg:
            raise ValueError(f"model: its config {model.config} differs from the training config's {mcfg}")
        trainer = Trainer(
            model,
            GaussianDiffusion(learn_sigma=bool(cfg["learn_sigma"])),
            lr=cfg["learning_rate"],
            weight_decay=cfg["weight_decay"],
            warmup_steps=cfg["lr_warmup_steps"],
            ema_decay=cfg["ema_decay"],
            grad_clip=cfg["clip_max_norm"] or None,
            clip_start_step=cfg["start_clip_iter"],
            grad_accumulation=cfg["gradient_accumulation_steps"],
            gradient_checkpointing=bool(cfg["gradient_checkpointing"]),
            seed=cfg["global_seed"],
        )
    mcfg = trainer.model.config
    if dataset is None:
        dataset = make_dataset(cfg)
    _check_dataset(dataset, mcfg)

    start = trainer.step_count
    total = cfg["max_train_steps"]
    history = _read_history(exp / "loss.csv", start)
    result = TrainResult(exp, trainer, history)
    data = batches(dataset, cfg["local_batch_size"], seed=cfg["global_seed"], start_step=start,
                   use_image_num=mcfg.use_image_num, num_frames=mcfg.num_frames)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
    window: list[dict] = []
    tick = time.perf_counter()
    try:
        while trainer.step_count < total:
            batch = next(data)
            stats = trainer.step(batch.latents, labels=batch.labels if mcfg.num_classes else None,
                                 image_labels=batch.image_labels if mcfg.num_classes else None)
            if stats["skipped"]:
                continue
            window.append(stats)
            step = stats["step"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", grad=f"{stats['grad_norm']:.3f}")
            if step % cfg["log_every"] == 0 or step == total:
                now = time.perf_counter()
                row = _log_row(window, step, now - tick, stats)
                tick, window = now, []
                history.append(row)
                _write_history(exp / "loss.csv", history)
                if callback is not None:
                    callback(row)
            if step % cfg["ckpt_every"] == 0 or step == total:
                result.last_checkpoint = ckpt_dir / f"{step:07d}"
                trainer.save(result.last_checkpoint)
                _prune(ckpt_dir, cfg["keep_checkpoints"])
    finally:
        if bar is not None:
            bar.close()
        if history:
            plot_loss(history, exp / "loss.png", title=f"{cfg['model']} on {cfg['dataset']}")
    return result


def _log_row(window: list[dict], step: int, seconds: float, last: dict) -> dict[str, float]:
    def mean(key):
        values = [w[key] for w in window if w.get(key) is not None]
        return float(np.mean(values)) if values else None

    return {
        "step": step,
        "loss": mean("loss"),
        "mse": mean("mse"),
        "vb": mean("vb"),
        "grad_norm": mean("grad_norm"),
        "lr": last["lr"],
        "steps_per_sec": len(window) / seconds if seconds > 0 else math.nan,
        "skipped_steps": last["skipped_steps"],
    }


def _prune(ckpt_dir: Path, keep: int | None) -> None:
    if not keep:
        return
    import shutil

    steps = sorted(p for p in ckpt_dir.iterdir() if _STEP_DIR.match(p.name))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _save_config(cfg: Mapping[str, Any], path: Path) -> None:
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    tmp.replace(path)


def _check_dataset(dataset, mcfg: LatteConfig) -> None:
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError("dataset: expected an indexable dataset with len() (e.g. a torch map-style Dataset)") from None
    if n == 0:
        raise ValueError("dataset: it is empty")
    clip, _, _ = _clip_and_label(dataset[0])
    want = (mcfg.num_frames, mcfg.in_channels, mcfg.input_size, mcfg.input_size)
    ok_frames = clip.ndim == 4 and mcfg.num_frames <= clip.shape[0] <= mcfg.num_frames + mcfg.use_image_num
    if not ok_frames or clip.shape[1:] != want[1:]:
        hint = ""
        if clip.ndim == 4 and clip.shape[1] == 3 and mcfg.in_channels == 4:
            hint = ("; these look like RGB frames while the model takes 4-channel VAE latents: encode them first, "
                    "or set pixel_space: true to train on pixels")
        raise ValueError(f"dataset: expected clips of shape {want} (F, C, H, W), got {clip.shape}{hint}")
