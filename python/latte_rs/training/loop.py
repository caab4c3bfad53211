"""The training loop of `latte_rs.train`: experiment folders, resuming from the newest complete checkpoint,
logging, checkpointing."""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._native import GaussianDiffusion, LatteConfig, LatteModel, Trainer
from ..data.batching import batches, clip_and_label
from ..distributed import world
from .config import load_config, make_dataset, model_config, model_dtype
from .history import plot_loss, read_history, write_history


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
    rank, size = world()
    owns_group = False
    if size > 1:
        from .. import distributed

        owns_group = not _group_initialised()
        rank, size = distributed.init_from_env(timeout=float(cfg.get("dist_timeout") or distributed.DEFAULT_TIMEOUT))
    main = rank == 0
    try:
        result = _train(cfg, dataset, output_dir, resume, model, progress and main, callback if main else None,
                        rank, size)
    except BaseException:
        owns_group = False  # a failed collective leaves the group unusable; the process is ending anyway
        raise
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return result


def _group_initialised() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def _train(cfg, dataset, output_dir, resume, model, progress, callback, rank: int, size: int) -> TrainResult:
    main = rank == 0
    dp = None
    if size > 1:
        from ..distributed import DistributedTrainer, continue_streams, share
    else:
        from ..distributed import continue_streams

        share = lambda obj: obj  # noqa: E731
    exp = share(_experiment_dir(cfg, output_dir, resume) if main else None)
    ckpt_dir = exp / "checkpoints"
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _save_config(cfg, exp / "config.yaml")

    trainer = None
    if resume:
        found = resume_latest(ckpt_dir) if main else None
        path = share(None if found is None else str(found[0]))
        if path is not None:
            trainer = found[1] if main else Trainer.resume(path)
            continue_streams(trainer, cfg["global_seed"], rank, size)
    fresh = trainer is None
    if fresh:
        mcfg = model_config(cfg)
        if model is None:
            model = LatteModel(mcfg, seed=cfg["global_seed"], dtype=model_dtype(cfg))
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
            # The official derivation: each rank draws from global_seed + rank (rank 0 as one process does).
            seed=cfg["global_seed"] + rank,
        )
    if size > 1:
        dp = DistributedTrainer(trainer)
        if fresh:
            dp.broadcast_parameters()  # every rank starts from rank 0's weights, as DDP
    mcfg = trainer.model.config
    if dataset is None:
        dataset = make_dataset(cfg)
    _check_dataset(dataset, mcfg)

    start = trainer.step_count
    total = cfg["max_train_steps"]
    history = read_history(exp / "loss.csv", start) if main else []
    result = TrainResult(exp, trainer, history)
    data = batches(dataset, cfg["local_batch_size"], seed=cfg["global_seed"], start_step=start,
                   use_image_num=mcfg.use_image_num, num_frames=mcfg.num_frames, rank=rank, world_size=size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc="train" if size == 1 else f"train ({size} ranks)", unit="step",
                   dynamic_ncols=True)
    window: list[dict] = []
    tick = time.perf_counter()
    step_fn = trainer.step if dp is None else dp.step
    try:
        while trainer.step_count < total:
            batch = next(data)
            stats = step_fn(batch.latents, labels=batch.labels if mcfg.num_classes else None,
                            image_labels=batch.image_labels if mcfg.num_classes else None)
            if stats["skipped"]:
                continue
            window.append(stats)
            step = stats["step"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", grad=f"{stats['grad_norm']:.3f}")
            if main and (step % cfg["log_every"] == 0 or step == total):
                now = time.perf_counter()
                row = _log_row(window, step, now - tick, stats)
                if size > 1:
                    row["clips_per_sec"] = row["steps_per_sec"] * cfg["local_batch_size"] * size
                tick, window = now, []
                history.append(row)
                write_history(exp / "loss.csv", history)
                if callback is not None:
                    callback(row)
            if step % cfg["ckpt_every"] == 0 or step == total:
                result.last_checkpoint = ckpt_dir / f"{step:07d}"
                if dp is None:
                    trainer.save(result.last_checkpoint)
                else:
                    dp.save(result.last_checkpoint)
                if main:
                    _prune(ckpt_dir, cfg["keep_checkpoints"])
    finally:
        if bar is not None:
            bar.close()
        if main and history:
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
    clip, _, _ = clip_and_label(dataset[0])
    want = (mcfg.num_frames, mcfg.in_channels, mcfg.input_size, mcfg.input_size)
    ok_frames = clip.ndim == 4 and mcfg.num_frames <= clip.shape[0] <= mcfg.num_frames + mcfg.use_image_num
    if not ok_frames or clip.shape[1:] != want[1:]:
        hint = ""
        if clip.ndim == 4 and clip.shape[1] == 3 and mcfg.in_channels == 4:
            hint = ("; these look like RGB frames while the model takes 4-channel VAE latents: encode them first, "
                    "or set pixel_space: true to train on pixels")
        raise ValueError(f"dataset: expected clips of shape {want} (F, C, H, W), got {clip.shape}{hint}")
