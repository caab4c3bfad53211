"""The training loop of `latte_rs.train`: experiment folders, resuming from the newest complete checkpoint,
logging, checkpointing."""

from __future__ import annotations

import math
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from .. import hub
from .._autocast import autocast
from .._files import atomic_write_text
from .._native import GaussianDiffusion, LatteModel, LatteT2VTransformer, T5TextEncoder, Trainer
from ..data.batching import batches, caption_and_text, clip_and_label
from ..distributed import (
    DEFAULT_TIMEOUT,
    DistributedTrainer,
    continue_streams,
    destroy_group,
    group_initialised,
    init_from_env,
    share,
    world,
)
from ..text import T5Tokenizer, encode_captions
from .config import autocast_dtype, is_text, load_config, make_dataset, model_config, model_dtype, t2v_config
from .history import plot_loss, read_history, write_history


@dataclass
class TrainResult:
    """What `train` did: the experiment folder, the trainer (with the model and EMA), the logged history."""

    experiment_dir: Path
    trainer: Trainer
    history: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: Path | None = None

    @property
    def model(self) -> LatteModel | LatteT2VTransformer:
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
    model: LatteModel | LatteT2VTransformer | None = None,
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
        owns_group = not group_initialised()
        rank, size = init_from_env(timeout=float(cfg.get("dist_timeout") or DEFAULT_TIMEOUT))
    main = rank == 0
    try:
        result = _train(cfg, dataset, output_dir, resume, model, progress and main, callback if main else None,
                        rank, size)
    except BaseException:
        owns_group = False  # a failed collective leaves the group unusable; the process is ending anyway
        raise
    finally:
        if owns_group:
            destroy_group()
    return result


def _train(cfg, dataset, output_dir, resume, model, progress, callback, rank: int, size: int) -> TrainResult:
    main = rank == 0
    dp = None
    # One process shares nothing: its own values are everyone's.
    broadcast = share if size > 1 else lambda obj: obj
    exp = broadcast(_experiment_dir(cfg, output_dir, resume) if main else None)
    ckpt_dir = exp / "checkpoints"
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _save_config(cfg, exp / "config.yaml")

    trainer = None
    if resume:
        found = resume_latest(ckpt_dir) if main else None
        path = broadcast(None if found is None else str(found[0]))
        if path is not None:
            trainer = found[1] if main else Trainer.resume(path)
            continue_streams(trainer, cfg["global_seed"], rank, size)
    fresh = trainer is None
    text = is_text(cfg)
    if dataset is None:
        dataset = make_dataset(cfg)
    if text:
        dataset = _with_caption_features(dataset, cfg)
    if fresh:
        if text:
            model = _text_model(cfg, model)
        else:
            mcfg = model_config(cfg)
            if model is None:
                model = LatteModel(mcfg, seed=cfg["global_seed"], dtype=model_dtype(cfg))
            elif model.config != mcfg:
                raise ValueError(f"model: its config {model.config} differs from the training config's {mcfg}")
        null = _null_caption(cfg, dataset) if text and cfg["caption_dropout_prob"] > 0 else (None, None)
        trainer = Trainer(
            model,
            GaussianDiffusion(learn_sigma=bool(cfg["learn_sigma"]), prediction_type=cfg["prediction_type"]),
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
            caption_dropout_prob=cfg["caption_dropout_prob"],
            null_caption=null[0],
            null_caption_mask=null[1],
        )
    if size > 1:
        dp = DistributedTrainer(trainer)
        if fresh:
            dp.broadcast_parameters()  # every rank starts from rank 0's weights, as DDP
    frames = _check_dataset(dataset, trainer.model, cfg)

    start = trainer.step_count
    total = cfg["max_train_steps"]
    history = read_history(exp / "loss.csv", start) if main else []
    result = TrainResult(exp, trainer, history)
    data = batches(dataset, cfg["local_batch_size"], seed=cfg["global_seed"], start_step=start,
                   use_image_num=cfg["use_image_num"], num_frames=frames, rank=rank, world_size=size)
    classes = not text and trainer.model.config.num_classes > 0
    bar = None
    if progress:
        bar = tqdm(total=total, initial=start, desc="train" if size == 1 else f"train ({size} ranks)", unit="step",
                   dynamic_ncols=True)
    window: list[dict] = []
    tick = time.perf_counter()
    step_fn = trainer.step if dp is None else dp.step
    cast = autocast(autocast_dtype(cfg) or "bfloat16", enabled=autocast_dtype(cfg) is not None)
    try:
        while trainer.step_count < total:
            batch = next(data)
            with cast:
                if text:
                    stats = step_fn(batch.latents, encoder_hidden_states=batch.text_embeddings,
                                    encoder_attention_mask=batch.text_mask)
                else:
                    stats = step_fn(batch.latents, labels=batch.labels if classes else None,
                                    image_labels=batch.image_labels if classes else None)
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
                    _prune(ckpt_dir, cfg["keep_checkpoints"], result.last_checkpoint)
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


def _prune(ckpt_dir: Path, keep: int | None, written: Path) -> None:
    """Keeps the checkpoint just `written` and the ``keep - 1`` newest before it (by step); removes older ones.

    Checkpoints of later steps are left alone: they exist when a run resumed from an earlier checkpoint (the
    newest was damaged, or chosen), and are no older than this run's. Only latte-rs checkpoints are removed
    (a folder of seven digits without its manifest is not ours to delete)."""
    if keep is None:
        return
    step = int(written.name)
    older = sorted((p for p in ckpt_dir.iterdir() if _STEP_DIR.match(p.name) and int(p.name) < step),
                   key=lambda p: int(p.name))
    for old in older[: max(len(older) - (keep - 1), 0)]:
        if (old / "trainer.json").is_file():
            shutil.rmtree(old, ignore_errors=True)


def _save_config(cfg: Mapping[str, Any], path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


def _check_dataset(dataset, model, cfg: Mapping[str, Any]) -> int:
    """Checks the dataset's first clip against the model; returns the video frames per clip."""
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError("dataset: expected an indexable dataset with len() (e.g. a torch map-style Dataset)") from None
    if n == 0:
        raise ValueError("dataset: it is empty")
    item = dataset[0]
    clip, _, _ = clip_and_label(item)
    if isinstance(model, LatteT2VTransformer):
        c = model.config
        frames, channels, size, images = c["video_length"], c["in_channels"], c["sample_size"], cfg["use_image_num"]
        _, features, _, _ = caption_and_text(item)
        if features is None:
            raise ValueError("dataset: a text-to-video model trains on caption features; its items need "
                             "'text_embedding' (a latent cache made by `latte-rs encode --text-encoder`) or a "
                             "'caption' with text_encoder_path set")
        if features.ndim != 2 or features.shape[1] != c["caption_channels"]:
            raise ValueError(f"dataset: caption features expected (L, {c['caption_channels']}) (the model's "
                             f"caption_channels), got {features.shape}")
    else:
        frames, channels, size, images = model.config.num_frames, model.config.in_channels, \
            model.config.input_size, model.config.use_image_num
    want = (frames, channels, size, size)
    ok_frames = clip.ndim == 4 and frames <= clip.shape[0] <= frames + images
    if not ok_frames or clip.shape[1:] != want[1:]:
        hint = ""
        if clip.ndim == 4 and clip.shape[1] == 3 and channels == 4:
            hint = ("; these look like RGB frames while the model takes 4-channel VAE latents: encode them first, "
                    "or set pixel_space: true to train on pixels")
        raise ValueError(f"dataset: expected clips of shape {want} (F, C, H, W), got {clip.shape}{hint}")
    return frames


def _transformer_folder(path: str | Path, revision: str | None = None) -> Path:
    """A diffusers ``transformer/`` folder: the path itself, or its ``transformer/`` (a Latte-1 pipeline folder);
    local or a Hub id (only the transformer is fetched)."""
    try:
        inner = hub.resolve(path, subfolder="transformer", revision=revision, arg="pretrained_model_path")
        if (inner / "config.json").is_file():
            return inner
    except FileNotFoundError:  # a Hub repository without transformer/: the transformer is at its root
        pass
    return hub.resolve(path, revision=revision, arg="pretrained_model_path")


def _text_model(cfg: Mapping[str, Any], model: LatteT2VTransformer | None) -> LatteT2VTransformer:
    """The text-to-video transformer to train: the given one, Latte-1's weights (``pretrained_model_path``,
    fine-tuning) or a new one from ``model_config`` (from scratch, PixArt-α's initialisation)."""
    if model is not None:
        if not isinstance(model, LatteT2VTransformer):
            raise TypeError(f"model: a LatteT2V config trains a LatteT2VTransformer, got {type(model).__name__}")
        return model
    if cfg["pretrained_model_path"]:
        return LatteT2VTransformer.from_pretrained(_transformer_folder(cfg["pretrained_model_path"], cfg["revision"]),
                                                   dtype=model_dtype(cfg))
    return LatteT2VTransformer(t2v_config(cfg), seed=cfg["global_seed"], dtype=model_dtype(cfg), init="pixart")


def _text_encoder(cfg: Mapping[str, Any]):
    """The T5 encoder and tokenizer a config names (``text_encoder_path``, default ``<pretrained>/text_encoder``;
    ``tokenizer_path``, default the ``tokenizer/`` folder beside the encoder), or None. Each may be a Hub id; the
    defaults derived from a Hub ``pretrained_model_path`` take its ``revision``."""
    pretrained, revision = cfg["pretrained_model_path"], cfg["revision"]
    if cfg["text_encoder_path"]:
        path = hub.resolve(cfg["text_encoder_path"], arg="text_encoder_path")
    elif pretrained:
        try:
            path = hub.resolve(pretrained, subfolder="text_encoder", revision=revision, arg="pretrained_model_path")
        except FileNotFoundError:  # a Hub repository without a text encoder: as a local folder without one
            return None
    else:
        return None
    if not path.is_dir():
        return None
    if cfg["tokenizer_path"]:
        tokenizer = T5Tokenizer(cfg["tokenizer_path"])
    elif pretrained and not cfg["text_encoder_path"]:
        tokenizer = T5Tokenizer(pretrained, subfolder="tokenizer", revision=revision)
    else:
        tokenizer = T5Tokenizer(path.parent / "tokenizer")
    return T5TextEncoder.from_pretrained(path), tokenizer


def _null_caption(cfg: Mapping[str, Any], dataset) -> tuple[np.ndarray, np.ndarray]:
    """The null caption of caption dropout: the latent cache's, or the text encoder's empty prompt."""
    null = getattr(dataset, "null_caption", None)
    if null is not None:
        return null
    encoder = _text_encoder(cfg)
    if encoder is None:
        raise ValueError("text_encoder_path: caption dropout (caption_dropout_prob > 0) needs the empty prompt's "
                         "features: a latent cache made with a text encoder, or text_encoder_path (a T5 "
                         "text_encoder/ folder); or set caption_dropout_prob: 0")
    return encoder[0].empty_prompt(cfg["model_max_length"])


class _CaptionFeatures:
    """A captioned dataset whose items gain their caption's T5 features (each distinct caption encoded once)."""

    def __init__(self, dataset, encoder, tokenizer, max_length: int) -> None:
        self.dataset, self.encoder, self.tokenizer, self.max_length = dataset, encoder, tokenizer, max_length
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.null_caption = getattr(dataset, "null_caption", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if not isinstance(item, Mapping) or "caption" not in item or "text_embedding" in item:
            return item
        caption = item["caption"]
        if caption not in self.cache:
            features, mask = encode_captions(self.encoder, self.tokenizer, [caption], self.max_length)
            self.cache[caption] = (features[0], mask[0])
        features, mask = self.cache[caption]
        return {**item, "text_embedding": features, "text_mask": mask}


def _with_caption_features(dataset, cfg: Mapping[str, Any]):
    """`dataset`, with caption features computed by the config's text encoder where items have captions only."""
    try:
        item = dataset[0]
    except (IndexError, TypeError):
        return dataset
    if not isinstance(item, Mapping) or "caption" not in item or "text_embedding" in item:
        return dataset
    encoder = _text_encoder(cfg)
    if encoder is None:
        raise ValueError("text_encoder_path: the dataset has captions but no T5 features; set text_encoder_path "
                         "(a T5 text_encoder/ folder) or cache them with `latte-rs encode --text-encoder`")
    wrapped = _CaptionFeatures(dataset, *encoder, cfg["model_max_length"])
    if wrapped.null_caption is None:
        wrapped.null_caption = encoder[0].empty_prompt(cfg["model_max_length"])
    return wrapped
