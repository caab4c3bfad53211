"""The training config: the official Latte YAML keys and ours, their defaults and checks, and what they describe
(the model config, the dataset, the dtype). The keys are listed in :mod:`latte_rs.training`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import data
from .._inputs import read_text
from .._native import LatteConfig, LatteT2VConfig

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
    "dist_timeout": float,
    "video_length": int,
    "model_max_length": int,
    "caption_dropout_prob": float,
}

DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic",
    "data_path": None,
    "pretrained_model_path": None,
    # The Hub revision (branch, tag or commit) of a pretrained_model_path that is a Hub id: diffusers' training
    # scripts' --revision.
    "revision": None,
    "model": "Latte-XL/2",
    "num_frames": 16,
    "image_size": 256,
    "frame_interval": 3,
    "learn_sigma": True,
    "prediction_type": "epsilon",
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
    "dist_timeout": 300.0,
    # Text-to-video (model: LatteT2V).
    "video_length": None,
    "text_encoder_path": None,
    "tokenizer_path": None,
    "model_max_length": 120,
    "caption_dropout_prob": 0.1,
    "caption_key": None,
    "path_key": None,
    "video_root": None,
}

# Official keys that change nothing here (logging backends, GPU-only switches, sampling settings).
_IGNORED = {
    "frame_data_path", "frame_data_txt", "save_ceph", "num_workers",
    "use_compile", "enable_xformers_memory_efficient_attention", "num_sampling_steps", "fixed_spatial",
    "attention_bias", "pretrained", "load_from_ceph",
    # The official sampling config's keys (t2v_sample.yaml), accepted so that it can be a training config's base.
    "save_img_path", "beta_start", "beta_end", "beta_schedule", "variance_type", "use_fp16", "seed", "run_time",
    "guidance_scale", "sample_method", "enable_temporal_attentions", "enable_vae_temporal_decoder", "text_prompt",
}

TEXT_MODELS = ("LatteT2V",)
#: What the model predicts (diffusers' ``prediction_type`` names): the noise (Latte's), the velocity
#: sqrt(alpha_bar)·noise − sqrt(1 − alpha_bar)·x0, or the clean sample.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def is_text(cfg: Mapping[str, Any]) -> bool:
    """Whether a config trains the text-to-video transformer (``model: LatteT2V``)."""
    return str(cfg["model"]) in TEXT_MODELS


def load_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load(text)``; ValueError naming `what` in one line for text that is not YAML, holds a tag safe
    YAML refuses (``!!python/...``), or nests past the parser's recursion limit."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}" if e.problem_mark else ""
        raise ValueError(f"{what}: not valid YAML ({e.problem or e.context}{where})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{what}: not valid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise ValueError(f"{what}: not valid YAML (nested too deeply to read)") from None


def plain(value: Any) -> Any:
    """`value` with NumPy scalars and arrays, inside lists, tuples and mappings too, as the Python numbers and
    lists they hold: what YAML, JSON and the native constructors take."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def _number(key: str, value: Any, kind: type) -> int | float:
    """A config number: `kind` from a number or a YAML string ("1e-4" is a string in YAML 1.1); an int must be
    whole (``2.0`` and ``"1e3"`` are taken, ``2.5`` is not) and is never rounded through a float."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if kind is float:
            return float(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass  # "1e3": whole, written as a float
        whole = float(value)
        if not whole.is_integer():
            raise ValueError
        return int(whole)
    except (TypeError, ValueError):
        raise ValueError(f"config: {key} expected {kind.__name__}, got {value!r}") from None


def load_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A training config from a YAML file or a mapping, with defaults filled in and values checked.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: a value has the wrong type or range, or a key is unknown (the message names it).
    """
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.exists():
            raise FileNotFoundError(f"config: no such file {path}")
        try:
            text = read_text(path, encoding="utf-8")
        except (ValueError, OSError) as e:  # not a regular file, not UTF-8, unreadable
            raise ValueError(f"config: cannot read {path} ({e})") from None
        raw = load_yaml(text, f"config: {path}") or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config: {path} must hold a mapping of keys to values, got {type(raw).__name__}")
    elif isinstance(config, Mapping):
        raw = {}
        for key, value in config.items():
            try:
                raw[key] = plain(value)
            except RecursionError:  # YAML's `&a [*a]` is a list that holds itself
                raise ValueError(f"config: {key} nests too deeply or holds itself") from None
    else:
        raise TypeError(f"config: expected a YAML path or a mapping, got {type(config).__name__}")
    unknown = sorted(set(raw) - set(DEFAULTS) - _IGNORED)
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if k in DEFAULTS and v is not None})
    size = cfg["image_size"]
    if isinstance(size, (list, tuple)):  # the text-to-video configs' [H, W]
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"config: image_size expected one size or [size, size] (square clips), got {size!r}")
        cfg["image_size"] = size[0]
    for key, kind in _NUMERIC.items():
        if cfg[key] is not None:
            cfg[key] = _number(key, cfg[key], kind)
    for key in ("max_train_steps", "local_batch_size", "ckpt_every", "log_every", "gradient_accumulation_steps",
                "num_frames", "image_size"):
        if not 1 <= cfg[key] < 2**63:  # counts the core holds as 64-bit integers
            raise ValueError(f"config: {key} expected an int in [1, 2**63), got {cfg[key]}")
    if not 0 <= cfg["global_seed"] < 2**64:  # a 64-bit seed (the trainer's, the data order's)
        raise ValueError(f"config: global_seed expected an int in [0, 2**64), got {cfg['global_seed']}")
    # How many checkpoints pruning keeps: None keeps all; 0 or fewer would prune the one just written.
    if cfg["keep_checkpoints"] is not None and cfg["keep_checkpoints"] < 1:
        raise ValueError(f"config: keep_checkpoints expected None (keep all) or an int >= 1, got "
                         f"{cfg['keep_checkpoints']}")
    if cfg["video_length"] is not None:  # the official text-to-video name of num_frames
        cfg["num_frames"] = cfg["video_length"]
    if not 0.0 <= cfg["caption_dropout_prob"] <= 1.0:
        raise ValueError(f"config: caption_dropout_prob expected a value in [0, 1], got {cfg['caption_dropout_prob']}")
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"config: prediction_type expected one of {list(PREDICTION_TYPES)}, got "
                         f"{cfg['prediction_type']!r}")
    if cfg["model_max_length"] < 1:
        raise ValueError(f"config: model_max_length expected >= 1, got {cfg['model_max_length']}")
    if is_text(cfg):
        cfg["extras"] = 78  # the official code's number for text conditioning
        return cfg
    if cfg["extras"] == 2 and not cfg["num_classes"]:
        raise ValueError("config: extras: 2 (class-conditional) needs num_classes")
    if cfg["extras"] not in (1, 2):
        raise ValueError(f"config: extras expected 1 (unconditional) or 2 (class-conditional), got {cfg['extras']} "
                         "(text-to-video training: model: LatteT2V)")
    if not isinstance(cfg["model_config"], Mapping):
        raise ValueError(f"config: model_config expected a mapping, got {cfg['model_config']!r}")
    if cfg["mixed_precision"] not in (False, True, "bf16", "fp16", "no"):
        raise ValueError(
            f"config: mixed_precision expected False, True, 'bf16' or 'fp16', got {cfg['mixed_precision']!r}"
        )
    return cfg


def model_config(cfg: Mapping[str, Any]) -> LatteConfig:
    """The LatteConfig a training config describes (latents of image_size / 8 unless ``pixel_space``)."""
    overrides: dict[str, Any] = dict(
        num_frames=cfg["num_frames"],
        learn_sigma=bool(cfg["learn_sigma"]),
        num_classes=cfg["num_classes"] if cfg["extras"] == 2 else 0,
        use_image_num=cfg["use_image_num"],
    )
    if cfg["pixel_space"]:
        overrides.update(in_channels=3, input_size=cfg["image_size"])
    else:
        overrides["image_size"] = cfg["image_size"]
    overrides.update(cfg["model_config"])
    try:
        return LatteConfig.preset(cfg["model"], **overrides)
    except ValueError as e:
        raise ValueError(f"config: {e}") from None
    except TypeError as e:  # an unknown or mistyped key of model_config
        raise TypeError(f"config: model_config: {e}") from None


def t2v_config(cfg: Mapping[str, Any]) -> LatteT2VConfig:
    """The LatteT2VConfig (diffusers' ``LatteTransformer3DModel`` keys) a text-to-video training config
    describes: Latte-1's, with ``video_length``, ``sample_size`` (latents of image_size / 8, or pixels with
    ``pixel_space``), learned sigma and ``model_config``'s keys over it (an unknown key is a TypeError naming it,
    as for LatteConfig)."""
    channels = 3 if cfg["pixel_space"] else 4
    size = cfg["image_size"] if cfg["pixel_space"] else cfg["image_size"] // 8
    out = dict(in_channels=channels, out_channels=2 * channels if cfg["learn_sigma"] else channels,
               sample_size=size, video_length=cfg["num_frames"])
    out.update(cfg["model_config"])
    try:
        return LatteT2VConfig(**out)
    except TypeError as e:  # an unknown or mistyped key of model_config
        raise TypeError(f"config: model_config: {e}") from None


def model_dtype(cfg: Mapping[str, Any]) -> str:
    """The dtype of the model a config trains. ``mixed_precision: bf16`` (or True) trains an f32 model under
    ``latte_rs.autocast("bfloat16")`` (bf16 GEMMs, f32 master weights, see :func:`autocast_dtype`), as
    ``torch.autocast`` does; ``fp16`` keeps a float16 model with f32 master weights and loss scaling."""
    return "float16" if cfg["mixed_precision"] == "fp16" else "float32"


def autocast_dtype(cfg: Mapping[str, Any]) -> str | None:
    """``"bfloat16"`` where the config trains in bf16 mixed precision (``mixed_precision: bf16`` or True): the
    training steps run under ``latte_rs.autocast``; None otherwise."""
    mp = cfg["mixed_precision"]
    return "bfloat16" if mp is True or mp == "bf16" else None


def make_dataset(cfg: Mapping[str, Any]):
    """The dataset a config names: "synthetic", "synthetic_time" (the setting where time matters) and
    "synthetic_captions" (built in), or "ucf101", "ffs", "sky", "taichi" (and their "_img"
    forms) or "folder" read from ``data_path`` with the official transforms."""
    name = str(cfg["dataset"])
    if name == "synthetic":
        classes = cfg["num_classes"] if cfg["extras"] == 2 else 4
        return data.SyntheticVideos(
            num_clips=cfg["num_clips"],
            num_frames=cfg["num_frames"],
            image_size=cfg["image_size"],
            label_by=cfg["label_by"],
            num_classes=min(int(classes), 4),
            shape_size=cfg["shape_size"],
            speed=cfg["shape_speed"],
            class_colours=bool(cfg["class_colours"]),
            seed=cfg["global_seed"],
        )
    if name == "synthetic_time":  # built in: the benchmark where time matters (SyntheticVideos' "time" setting)
        classes = cfg["num_classes"] if cfg["extras"] == 2 else 4
        return data.SyntheticVideos.setting(
            "time", num_clips=cfg["num_clips"], num_frames=cfg["num_frames"], image_size=cfg["image_size"],
            num_classes=min(int(classes), 4), shape_size=cfg["shape_size"], speed=cfg["shape_speed"],
            seed=cfg["global_seed"])
    if name == "synthetic_captions":  # built in: "a red square moving left", the held-out combinations left out
        return data.CaptionedSyntheticVideos(num_clips=cfg["num_clips"], num_frames=cfg["num_frames"],
                                             image_size=cfg["image_size"], speed=cfg["shape_speed"],
                                             shape_size=cfg["shape_size"], seed=cfg["global_seed"])
    if name == "latents":  # a cache written by `latte-rs encode`
        if not cfg["data_path"]:
            raise ValueError("data_path: dataset 'latents' needs the folder of a latent cache")
        return data.LatentClips(cfg["data_path"])
    if name == "captions":  # a folder of videos with .txt captions, or a CSV/JSON manifest
        if not cfg["data_path"]:
            raise ValueError("data_path: dataset 'captions' needs a folder of videos with .txt captions or a "
                             "CSV/JSON manifest")
        return data.CaptionedVideos(cfg["data_path"], cfg["num_frames"], cfg["frame_interval"], cfg["image_size"],
                                    seed=cfg["global_seed"], caption_key=cfg["caption_key"],
                                    path_key=cfg["path_key"], video_root=cfg["video_root"])
    loaders = {"ucf101": data.UCF101, "ffs": data.FaceForensics, "sky": data.SkyTimelapse, "taichi": data.TaichiHD,
               "folder": data.VideoClips}
    base = name.removesuffix("_img")
    if base not in loaders:
        known = ", ".join(loaders)
        raise ValueError(f"dataset: expected one of synthetic, synthetic_time, synthetic_captions, latents, "
                         f"captions, {known} (or their _img forms), got {name!r}")
    if not cfg["data_path"]:
        raise ValueError(f"data_path: dataset {name!r} needs the folder of its videos")
    joint = cfg["use_image_num"] if name.endswith("_img") else 0
    return loaders[base](cfg["data_path"], cfg["num_frames"], cfg["frame_interval"], cfg["image_size"],
                         seed=cfg["global_seed"], use_image_num=joint)
