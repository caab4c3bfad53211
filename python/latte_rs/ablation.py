"""`latte-rs ablate`: Latte's design study with one command.

From a base configuration (the paper's best: variant 1, uniform-frame patch embedding, S-AdaLN, absolute temporal
positions) each study changes one factor, trains every configuration with the same data order, step budget and
seeds (the paper compares at equal training iterations; the FLOPs per step are recorded beside them), evaluates it
at intervals, and writes ``results.json``, ``results.md`` (a table per study) and ``<study>.png`` (score against
training iterations, one line per configuration).

==========  =======================================================================================================
study       configurations (the base first; one factor changed in each other)
==========  =======================================================================================================
variants    variant 1 (interleaved), 2 (late fusion), 3 (factorised attention), 4 (split heads)
patch       uniform frame (2D patches), compression frame (tubelets of 2 frames)
injection   S-AdaLN, all tokens (timestep and class as extra tokens)
temporal    absolute (sin-cos), relative (RoPE)
joint       video only, image-video joint training (``JOINT_IMAGES`` image frames), spatial weights from an image
            model (trained on single frames of the same data for the same steps first)
size        S (the base), B, L, XL: the base's width and depth scaled by the paper's presets' ratios
==========  =======================================================================================================

The base configuration appears in every study and is trained once per seed. Scores: FVD by the project's
protocol (:mod:`latte_rs.evaluation`; with fewer than 2048 clips, the count is recorded with it), the demo's
download-free pixel Fréchet distance, and on the built-in synthetic data the attributes read off the pixels
(:mod:`latte_rs.evaluation.prompt_following`: the direction of motion, which only a model of time gets right,
or the class colour and shape) and the motion consistency of the samples, beside the same measures of real clips.

Everything lives in the output folder and is resumable: each run (configuration × seed) trains in chunks of
``eval_every`` steps through ``latte_rs.train``'s exact resume, its evaluations are kept in ``evals.json``, and
a run that reached the step budget is not touched again; every file is written atomically.

Under ``torchrun`` every rank runs the same study: each run trains data-parallel through ``latte_rs.train``
(``local_batch_size`` clips per rank, so a step's batch is the world size times larger), rank 0 alone evaluates
and writes the files, and the other ranks wait for it where the study needs its results (a failure on rank 0 is
raised on every rank). The world size is a setting of the study: it is recorded, and a folder resumes only with it.

>>> from latte_rs.ablation import study_configurations
>>> [c.key for c in study_configurations("variants")]
['base', 'variant-2', 'variant-3', 'variant-4']
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ._files import atomic_write, atomic_write_text
from ._inputs import check_int, read_text
from ._native import LatteConfig, LatteModel
from .data.synthetic import TARGET_COLOUR
from .demo import pixel_fd, real_clips
from .distributed import destroy_group, group_initialised, init_from_env, share, world
from .evaluation import Protocol, feature_stats, fvd
from .evaluation.prompt_following import measure, motion_consistency
from .evaluation.settings import MIN_FRAMES
from .pipelines import LattePipeline, default_scheduler
from .training import latest_checkpoint, load_config, model_config, train
from .training.config import load_yaml

STUDIES = ("variants", "patch", "injection", "temporal", "joint", "size")
#: Image frames per clip of the joint-training configuration (the paper appends 8 to 16 frames).
JOINT_IMAGES = 4
#: The paper's presets (width, blocks, heads) whose ratios to Latte-S scale the base in the size study.
PAPER_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
#: What the paper found in each study (Latte, Ma et al. 2024, section 4 and its figures).
PAPER_FINDINGS = {
    "variants": "Variant 1 (interleaved spatial and temporal blocks) reaches the lowest FVD; variant 4 (split "
                "heads) is cheapest but worst; variants 2 and 3 fall between.",
    "patch": "Uniform-frame patch embedding beats compression-frame (tubelet) embedding, which loses temporal "
             "detail by merging frames.",
    "injection": "S-AdaLN beats feeding timestep and class as tokens (all-tokens), by a wide margin late in "
                 "training.",
    "temporal": "Absolute sin-cos temporal positions reach a somewhat lower FVD than relative (RoPE) ones.",
    "joint": "Image-video joint training and initialising from an image model (ImageNet DiT) both lower FVD; "
             "together they are the paper's recipe.",
    "size": "FVD falls steadily with model size (S > B > L > XL) at the same iterations.",
}
#: The base training recipe (pixel space, class-conditional on the built-in data, from scratch: velocity
#: prediction, a high learning rate with warm-up, clipping), for the built-in datasets. The EMA is short (0.99, a
#: half-life of 70 steps): with 0.995 the weights of the first few hundred steps still make up a third of the
#: EMA at step 500, and its samples were noise where the raw weights already drew shapes.
BASE_TRAINING: dict[str, Any] = {
    "dataset": "synthetic_time",
    "pixel_space": True,
    "model": "Latte-S/4",
    "num_frames": 16,
    "image_size": 16,
    "extras": 2,
    "num_classes": 4,
    "shape_size": [0.12, 0.2],
    "shape_speed": 0.0625,
    "num_clips": 16384,
    "local_batch_size": 16,
    "learning_rate": 1e-3,
    "lr_warmup_steps": 50,
    "ema_decay": 0.99,
    "clip_max_norm": 1.0,
    "prediction_type": "v_prediction",
    "log_every": 10,
    "keep_checkpoints": 2,
}
#: The base model: the paper's best choices, at a width and depth that train in minutes on two CPU cores.
BASE_MODEL: dict[str, Any] = {"depth": 4, "hidden_size": 64, "num_heads": 4, "variant": 1, "patch_embed": "frame",
                              "injection": "adaln", "temporal_position": "absolute"}
#: The built-in datasets ``ablate`` knows how to score on the pixels, with their training keys.
BUILT_IN = {
    "synthetic_time": {"dataset": "synthetic_time"},
    "synthetic": {"dataset": "synthetic", "label_by": "shape", "class_colours": True, "shape_size": [0.2, 0.3]},
}
#: Seed of the held-out real clips and of the sampling noise (the same for every configuration).
EVAL_SEED = 10_000
#: Seconds a rank waits in a collective under torchrun unless the training config sets ``dist_timeout``: the
#: ranks other than 0 wait through rank 0's evaluations (sampling and FVD), which take longer than a training step.
DIST_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Configuration:
    """One configuration of a study: the base with `changes` applied (model options, ``use_image_num``, or
    ``image_init``: start the spatial blocks from an image model)."""

    key: str
    label: str
    changes: Mapping[str, Any] = field(default_factory=dict)

    def model_options(self, base_model: Mapping[str, Any]) -> dict[str, Any]:
        return {**base_model, **{k: v for k, v in self.changes.items() if k not in ("use_image_num", "image_init")}}

    @property
    def use_image_num(self) -> int:
        return int(self.changes.get("use_image_num", 0))

    @property
    def image_init(self) -> bool:
        return bool(self.changes.get("image_init", False))


def _sizes(base_model: Mapping[str, Any]) -> list[Configuration]:
    width, blocks, heads = (base_model[k] for k in ("hidden_size", "depth", "num_heads"))
    head_dim = width // heads
    s_width, s_blocks, _ = PAPER_SIZES["S"]
    out = []
    for name, (w, b, _) in PAPER_SIZES.items():
        if name == "S":
            out.append(Configuration("base", "S (base)"))
            continue
        new_heads = max(1, round(width * w / s_width / head_dim))
        new_blocks = max(2, 2 * round(blocks * b / s_blocks / 2))  # even: spatial and temporal blocks in pairs
        out.append(Configuration(f"size-{name}", f"{name} ({new_heads * head_dim} wide, {new_blocks} blocks)",
                                 {"hidden_size": new_heads * head_dim, "depth": new_blocks, "num_heads": new_heads}))
    return out


def study_configurations(study: str, base_model: Mapping[str, Any] | None = None) -> list[Configuration]:
    """The configurations of one study (``STUDIES``), the base first; each other changes one factor."""
    if study not in STUDIES:
        raise ValueError(f"study: expected one of {', '.join(STUDIES)} or all, got {study!r}")
    if study == "variants":
        return [Configuration("base", "variant 1 (base)"),
                *(Configuration(f"variant-{v}", f"variant {v}", {"variant": v}) for v in (2, 3, 4))]
    if study == "patch":
        return [Configuration("base", "uniform frame (base)"),
                Configuration("tubelet", "compression frame (tubelet 2)", {"patch_embed": "tubelet",
                                                                           "tubelet_size": 2})]
    if study == "injection":
        return [Configuration("base", "S-AdaLN (base)"), Configuration("all-tokens", "all tokens",
                                                                      {"injection": "tokens"})]
    if study == "temporal":
        return [Configuration("base", "absolute (base)"), Configuration("rope", "relative (RoPE)",
                                                                       {"temporal_position": "rope"})]
    if study == "joint":
        return [Configuration("base", "video only (base)"),
                Configuration("joint", f"image-video joint ({JOINT_IMAGES} images)", {"use_image_num": JOINT_IMAGES}),
                Configuration("image-init", "from an image model", {"image_init": True})]
    return _sizes({**BASE_MODEL, **(base_model or {})})


# --- FLOPs ----------------------------------------------------------------------------------------------------------


def forward_flops(config: LatteConfig) -> int:
    """FLOPs of one clip's forward pass, counted analytically: 2 per multiply-add of the linear layers (patch
    embedding, attention projections, MLPs, adaLN modulations, final layer) and of the attention products
    (QKᵀ and AV); norms, activations and softmax are left out. Image frames of joint training go through the
    spatial blocks only."""
    d, p = config.hidden_size, config.patch_size
    s = config.tubelet_size if config.patch_embed == "tubelet" else 1
    n = (config.input_size // p) ** 2  # tokens per frame
    video = config.num_frames // s
    frames = video + config.use_image_num
    extra = (1 + int(config.num_classes > 0)) if config.injection == "tokens" else 0
    spatial_len, temporal_len = n + extra, video + extra
    spatial_tokens, temporal_tokens = frames * spatial_len, n * temporal_len
    mlp = 2 * 2 * d * int(config.mlp_ratio * d)
    adaln = 2 * d * 6 * d if config.injection == "adaln" else 0

    def attention(tokens: int, length: int, share: float = 1.0) -> int:
        return int(2 * 4 * d * d * tokens + share * 2 * 2 * d * length * tokens)

    total = 2 * frames * n * config.in_channels * p * p * s * d  # patch embedding
    total += 2 * frames * n * d * p * p * s * config.out_channels  # final layer
    pairs = config.depth // 2
    if config.variant in (1, 2):  # depth blocks, half spatial, half temporal
        total += pairs * (attention(spatial_tokens, spatial_len) + mlp * spatial_tokens + adaln * frames)
        total += pairs * (attention(temporal_tokens, temporal_len) + mlp * temporal_tokens + adaln * n)
    elif config.variant == 3:  # depth / 2 blocks: spatial attention, temporal attention, one MLP
        total += pairs * (attention(spatial_tokens, spatial_len) + attention(temporal_tokens, temporal_len)
                          + mlp * spatial_tokens + adaln * frames)
    else:  # depth / 2 blocks: one attention, half the heads over space and half over time
        total += pairs * (int(2 * 4 * d * d * spatial_tokens + 2 * d * (spatial_len + temporal_len) * spatial_tokens)
                          + mlp * spatial_tokens + adaln * frames)
    return int(total)


def flops_per_step(config: LatteConfig, batch_size: int) -> int:
    """Training FLOPs of one optimiser step: ``forward_flops`` × 3 (the backward pass costs about two forward
    passes) × the clips of the batch."""
    return 3 * forward_flops(config) * batch_size


# --- files ----------------------------------------------------------------------------------------------------------


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise ValueError(f"output_dir: {path} is damaged ({e}); remove it to recompute it") from None


# --- the study ------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every run of an ablation shares (recorded in ``ablation.json``; a resumed study must match)."""

    training: dict[str, Any]
    base_model: dict[str, Any]
    steps: int
    eval_every: int
    eval_clips: int
    sampling_steps: int
    guidance_scale: float
    fvd: bool
    #: Processes training each run data-parallel (torchrun's WORLD_SIZE); each reads ``local_batch_size`` clips.
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def run_config(self, configuration: Configuration, seed: int) -> dict[str, Any]:
        """The training config of one run."""
        return {**self.training, "model_config": configuration.model_options(self.base_model),
                "use_image_num": configuration.use_image_num, "global_seed": seed,
                "ckpt_every": self.eval_every}


def _dataset_training(dataset: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The base training keys for `dataset`: a built-in name, or a training config (YAML path or mapping) whose
    keys go over ``BASE_TRAINING`` (its ``model_config`` aside: the study sets the model)."""
    if isinstance(dataset, str) and dataset in BUILT_IN:
        return {**BASE_TRAINING, **BUILT_IN[dataset]}
    if isinstance(dataset, (str, Path)) and Path(dataset).is_file():
        raw = load_yaml(read_text(dataset), f"dataset: {dataset}")
        if not isinstance(raw, Mapping):
            raise ValueError(f"dataset: expected {dataset} to hold a mapping of training keys, got "
                             f"{type(raw).__name__}")
    elif isinstance(dataset, Mapping):
        raw = dataset
    else:
        raise ValueError(f"dataset: expected one of {', '.join(BUILT_IN)} or a training config file, got "
                         f"{dataset!r}")
    training = {**BASE_TRAINING, **{k: v for k, v in raw.items() if k != "model_config"}}
    cfg = load_config(training)  # refuses unknown keys and bad values, naming them
    if not cfg["pixel_space"]:
        raise ValueError("dataset: ablate scores samples as pixels; expected a config with pixel_space: true, got "
                         "pixel_space: false")
    return training


def _check_args(study, steps, seeds, eval_every, eval_clips, sampling_steps, guidance_scale) -> list[str]:
    studies = list(STUDIES) if study == "all" else [study]
    if study != "all" and study not in STUDIES:
        raise ValueError(f"study: expected one of {', '.join(STUDIES)} or all, got {study!r}")
    check_int("steps", steps, 1)
    check_int("seeds", seeds, 1)
    check_int("eval_every", eval_every, 1)
    check_int("sampling_steps", sampling_steps, 1)
    check_int("eval_clips", eval_clips, 2)
    if eval_every > steps:
        raise ValueError(f"eval_every: expected at most steps ({steps}), got {eval_every}")
    if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 1):
        raise ValueError(f"guidance_scale: expected a finite number >= 1, got {guidance_scale!r}")
    return studies


@dataclass
class AblationResult:
    """What ``ablate`` wrote: the output folder, the results (``results.json``'s content) and the files."""

    output_dir: Path
    results: dict[str, Any]
    table: Path
    plots: list[Path]


def ablate(study: str = "all", dataset: str | Path | Mapping[str, Any] = "synthetic_time", *, steps: int = 1000,
           seeds: int = 2, eval_every: int = 250, output_dir: str | Path = "ablation", eval_clips: int = 32,
           sampling_steps: int = 25, guidance_scale: float = 2.0, fvd: bool = True,
           model: Mapping[str, Any] | None = None, progress: bool = True) -> AblationResult:
    """Runs (or resumes) Latte's design study and writes its results (see the module docs).

    Args:
        study: one of ``STUDIES`` or "all".
        dataset: "synthetic_time" (the built-in setting where time matters), "synthetic" (shapes in their class
            colours), or a training config (YAML path or mapping, ``pixel_space: true``) whose keys go over
            ``BASE_TRAINING``.
        steps: optimiser steps of every run (the same for all configurations).
        seeds: runs per configuration (seeds 0 to seeds - 1: the weights, the data and its order).
        eval_every: steps between evaluations (each ends a chunk with a checkpoint).
        output_dir: the study's folder; an existing one is resumed (with the same settings).
        eval_clips: clips per evaluation (real and generated); FVD's count is recorded with it.
        sampling_steps, guidance_scale: ancestral DDPM steps and classifier-free guidance of the samples.
        fvd: compute FVD (the I3D network; clips of at least 9 frames) besides the pixel scores.
        model: overrides of ``BASE_MODEL`` (e.g. a smaller width for a quick run).
        progress: a progress bar over the evaluations of all runs.
    """
    studies = _check_args(study, steps, seeds, eval_every, eval_clips, sampling_steps, guidance_scale)
    training = _dataset_training(dataset)
    base_model = {**BASE_MODEL, **(model or {})}
    model_config({**load_config(training), "model_config": base_model})  # refuses bad model options up front
    rank, size = world()
    owns_group = False
    if size > 1:  # under torchrun: one process group for the whole study (each train call joins it)
        owns_group = not group_initialised()
        rank, size = init_from_env(timeout=float(training.get("dist_timeout") or DIST_TIMEOUT))
    try:
        result = _ablate(studies, training, base_model, steps, seeds, eval_every, output_dir, eval_clips,
                         sampling_steps, guidance_scale, fvd, progress, rank, size)
    except BaseException:
        owns_group = False  # a failed collective leaves the group unusable; the process is ending anyway
        raise
    finally:
        if owns_group:
            destroy_group()
    return result


def _on_main(fn, main: bool, size: int) -> Any:
    """``fn()`` on rank 0, its value on every rank; an error on rank 0 is raised on every rank (the others wait
    for rank 0 here, so nothing they do next can read a file rank 0 has not finished writing). One process: fn()."""
    if size == 1:
        return fn()
    value, error = None, None
    if main:
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised
            error = e
    value, failure = share((value, None if error is None else (type(error).__name__, str(error))))
    if error is not None:
        raise error
    if failure is not None:
        kind, message = failure
        raise (ValueError(message) if kind == "ValueError" else RuntimeError(f"rank 0 failed: {kind}: {message}"))
    return value


def _ablate(studies, training, base_model, steps, seeds, eval_every, output_dir, eval_clips, sampling_steps,
            guidance_scale, fvd, progress, rank: int, size: int) -> AblationResult:
    main = rank == 0
    use_fvd = bool(fvd) and training["num_frames"] >= MIN_FRAMES
    settings = Settings(training, base_model, steps, eval_every, eval_clips, sampling_steps, float(guidance_scale),
                        use_fvd, size)
    out = Path(output_dir)

    def start() -> None:
        _check_resumable(out, settings)
        atomic_write_text(out / "ablation.json", json.dumps(settings.to_dict(), indent=2))

    _on_main(start, main, size)

    plan: list[Configuration] = []
    for name in studies:
        for c in study_configurations(name, base_model):
            if c.key not in {p.key for p in plan}:
                plan.append(c)
    reference = _on_main(lambda: _reference(out, settings), main, size)
    evals_per_run = math.ceil(steps / eval_every)
    bar = tqdm(total=len(plan) * seeds * evals_per_run, desc="ablate" if size == 1 else f"ablate ({size} ranks)",
               unit="eval", disable=not (progress and main), dynamic_ncols=True)
    try:
        for configuration in plan:
            for seed in range(seeds):
                bar.set_postfix_str(f"{configuration.key} seed {seed}")
                if _run(out, settings, configuration, seed, bar, main) and main:
                    # What has finished is readable while the rest trains: the studies with this configuration.
                    touched = [s for s in studies
                               if configuration.key in {c.key for c in study_configurations(s, base_model)}]
                    _write_results(out, settings, studies, seeds, reference, plot=touched)
    finally:
        bar.close()
    results = _on_main(lambda: _write_results(out, settings, studies, seeds, reference, plot=studies), main, size)
    return AblationResult(out, results, out / "results.md", [out / f"{s}.png" for s in studies])


def _check_resumable(out: Path, settings: Settings) -> None:
    saved = _read_json(out / "ablation.json", None)
    if saved is None:
        return
    saved = {"world_size": 1, **saved}  # a study from before world_size was recorded ran in one process
    mine = json.loads(json.dumps(settings.to_dict()))
    for key, value in mine.items():
        if saved.get(key) != value:
            raise ValueError(f"output_dir: {out} holds a study with {key}={saved.get(key)!r}; expected the same "
                             f"settings to resume it, got {key}={value!r} (use another output_dir)")


# --- evaluation -----------------------------------------------------------------------------------------------------


def _synthetic_readout(training: Mapping[str, Any]) -> dict[str, Any] | None:
    """How to read attributes off the pixels of a built-in dataset (None for other datasets)."""
    size = training["image_size"]
    speed = training["shape_speed"] * size
    if training["dataset"] == "synthetic_time":
        return {"attributes": ("direction",), "colour": TARGET_COLOUR, "speed": speed}
    if training["dataset"] == "synthetic" and training.get("label_by", "shape") == "shape":
        return {"attributes": ("colour", "shape") if training.get("class_colours") else ("shape",),
                "colour": None, "speed": speed}
    if training["dataset"] == "synthetic":
        return {"attributes": ("direction",), "colour": None, "speed": speed}
    return None


def _pixel_scores(videos: np.ndarray, labels: np.ndarray, readout: Mapping[str, Any] | None) -> dict[str, float]:
    if readout is None:
        return {}
    index = {"colour": 0, "shape": 1, "direction": 2}
    read = [measure(v, readout["colour"]) for v in videos]
    out = {}
    for name in readout["attributes"]:
        out[name] = float(np.mean([r[index[name]] == int(y) for r, y in zip(read, labels, strict=True)]))
    out["motion_consistency"] = motion_consistency(videos, readout["speed"], readout["colour"])
    return out


def _reference(out: Path, settings: Settings) -> dict[str, Any]:
    """Held-out real clips (``real_clips.npz``), their FVD statistics and the real clips' own scores (the
    scores of a second held-out set: the floor a model can reach), computed once per study folder."""
    path = out / "reference.json"
    saved = _read_json(path, None)
    clips_file = out / "real_clips.npz"
    if saved is not None and clips_file.is_file():
        return saved
    cfg = load_config(settings.training)
    n = settings.eval_clips
    real, labels = real_clips(n, cfg, seed=EVAL_SEED)
    other, other_labels = real_clips(n, cfg, seed=EVAL_SEED + 1)
    atomic_write(clips_file, lambda tmp: np.savez(tmp, videos=real, labels=labels))
    readout = _synthetic_readout(settings.training)
    ref: dict[str, Any] = {"clips": n, "pixel_fd_real_vs_real": pixel_fd(real, other),
                           **{f"real_{k}": v for k, v in _pixel_scores(other, other_labels, readout).items()}}
    if settings.fvd:
        proto = _protocol(settings)
        stats = feature_stats(real, protocol=proto, progress=False)
        stats.save(out / "real_fvd_stats.npz")
        ref["fvd_real_vs_real"] = fvd(stats, other, num_clips=n, num_frames=proto.num_frames, progress=False).fvd
    atomic_write_text(path, json.dumps(ref, indent=2))
    return ref


def _protocol(settings: Settings) -> Protocol:
    return Protocol(num_real=settings.eval_clips, num_fake=settings.eval_clips,
                    num_frames=settings.training["num_frames"])


def _evaluate(model: LatteModel, out: Path, settings: Settings, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    with np.load(out / "real_clips.npz") as z:
        real, labels = z["videos"], z["labels"]
    pipe = LattePipeline(model, default_scheduler(settings.training["prediction_type"]))
    conditional = model.config.num_classes > 0
    frames = pipe(class_labels=labels if conditional else None, num_videos=1 if conditional else len(labels),
                  num_inference_steps=settings.sampling_steps,
                  guidance_scale=settings.guidance_scale if conditional else 1.0, seed=EVAL_SEED + seed,
                  progress=False).frames
    row: dict[str, Any] = {"pixel_fd": pixel_fd(real, frames)}
    if settings.fvd:
        from .evaluation import FeatureStats

        stats = FeatureStats.load(out / "real_fvd_stats.npz")
        row["fvd"] = fvd(stats, frames, num_clips=len(frames), num_frames=settings.training["num_frames"],
                         progress=False).fvd
        row["fvd_clips"] = len(frames)
    row.update(_pixel_scores(frames, labels, _synthetic_readout(settings.training)))
    row["eval_seconds"] = round(time.perf_counter() - start, 2)
    return row


# --- one run --------------------------------------------------------------------------------------------------------


def _run_dir(out: Path, key: str, seed: int) -> Path:
    return out / "runs" / key / f"seed-{seed}"


def _image_model(out: Path, settings: Settings, seed: int) -> LatteModel:
    """The image model of the ``image-init`` configuration: the base model trained on single frames of the same
    data for the same steps (once per seed, resumable as any run)."""
    cfg = {**settings.run_config(Configuration("base", "base"), seed), "num_frames": 1,
           "ckpt_every": settings.steps}
    result = train(cfg, output_dir=out / "runs" / "image-pretrain" / f"seed-{seed}", max_steps=settings.steps,
                   resume=True, progress=False)
    return result.trainer.ema_model()


def _image_initialised(image: LatteModel, cfg: Mapping[str, Any], seed: int) -> LatteModel:
    """A fresh video model whose embeddings, spatial blocks (the even blocks of variant 1) and final layer are
    the image model's; temporal blocks, the label table and the fixed position tables stay as initialised."""
    video = LatteModel(model_config(load_config(cfg)), seed=seed)
    skip = ("temp_embed", "pos_embed", "y_embedder")
    state = {k: v for k, v in image.state_dict().items()
             if not k.startswith(skip) and not (k.startswith("blocks.") and int(k.split(".")[1]) % 2 == 1)}
    video.load_state_dict(state, strict=False)
    return video


def _record(evals: list, evals_file: Path, step: int, train_seconds: float, trainer, out: Path, settings: Settings,
            seed: int) -> None:
    """Evaluates the EMA weights of `trainer` at `step` and appends the row to `evals` and ``evals.json``."""
    evals.append({"step": step, "train_seconds": round(train_seconds, 2),
                  **_evaluate(trainer.ema_model(), out, settings, seed)})
    atomic_write_text(evals_file, json.dumps(evals, indent=2))


def _run(out: Path, settings: Settings, configuration: Configuration, seed: int, bar, main: bool = True) -> bool:
    """Trains and evaluates one run up to the step budget; whether it did any work. Under torchrun every rank
    calls it alike: the training is collective, rank 0 evaluates and writes ``evals.json`` and decides what is
    done (the others take its decisions)."""
    size = settings.world_size
    run = _run_dir(out, configuration.key, seed)
    evals_file = run / "evals.json"
    evals = _on_main(lambda: _read_json(evals_file, []), main, size)
    done = {row["step"] for row in evals}
    targets = [min(s, settings.steps) for s in range(settings.eval_every, settings.steps + settings.eval_every,
                                                     settings.eval_every)]
    bar.update(sum(t in done for t in targets))
    if all(t in done for t in targets):
        return False
    cfg = settings.run_config(configuration, seed)
    for target in targets:
        if target in done:
            continue
        model = None
        if configuration.image_init and _on_main(lambda: latest_checkpoint(run / "checkpoints") is None, main, size):
            model = _image_initialised(_image_model(out, settings, seed), cfg, seed)
        tick = time.perf_counter()
        result = train(cfg, output_dir=run, max_steps=target, resume=True, model=model, progress=False)
        train_seconds = time.perf_counter() - tick
        _on_main(partial(_record, evals, evals_file, target, train_seconds, result.trainer, out, settings, seed),
                 main, size)
        bar.update(1)
    return True


# --- results --------------------------------------------------------------------------------------------------------


def _primary(settings: Settings) -> str:
    return "fvd" if settings.fvd else "pixel_fd"


def _mean_std(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def _configuration_result(out: Path, settings: Settings, c: Configuration, seeds: int) -> dict[str, Any]:
    cfg = settings.run_config(c, 0)
    mcfg = model_config(load_config(cfg))
    score = _primary(settings)
    runs = {seed: _read_json(_run_dir(out, c.key, seed) / "evals.json", []) for seed in range(seeds)}
    finished = [rows for rows in runs.values() if rows and rows[-1]["step"] == settings.steps]
    per_step = {}
    for rows in runs.values():
        for row in rows:
            per_step.setdefault(row["step"], []).append(row)
    curve = [{"step": step, **{k: _mean_std([r[k] for r in rows if r.get(k) is not None])
                               for k in rows[0] if k not in ("step",)}}
             for step, rows in sorted(per_step.items())]
    batch = cfg["local_batch_size"] * settings.world_size  # a step's clips over all ranks
    flops = flops_per_step(mcfg, batch)
    train_seconds = [sum(r["train_seconds"] for r in rows) for rows in finished]
    metrics = [k for k in ("fvd", "pixel_fd", "direction", "colour", "shape", "motion_consistency")
               if finished and k in finished[0][-1]]
    pretrain = 0
    if c.image_init:  # the image model's steps on single frames come first
        pretrain = flops_per_step(mcfg.replace(num_frames=1), batch) * settings.steps
    return {
        "key": c.key, "label": c.label, "changes": dict(c.changes),
        "parameters": mcfg.num_parameters(), "flops_per_step": flops, "train_flops": flops * settings.steps,
        "image_pretrain_flops": pretrain,
        "seeds_finished": len(finished), "seeds": seeds,
        "steps_done": {str(seed): rows[-1]["step"] if rows else 0 for seed, rows in runs.items()},
        "final": {k: _mean_std([rows[-1][k] for rows in finished]) for k in metrics},
        "best": {score: _mean_std([min(r[score] for r in rows) for rows in finished])} if score in metrics else {},
        "seconds_per_step": (float(np.mean(train_seconds)) / settings.steps) if train_seconds else None,
        "curve": curve,
    }


def _fmt(stat: Mapping[str, float] | None, digits: int = 1) -> str:
    if not stat:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _write_results(out: Path, settings: Settings, studies: list[str], seeds: int, reference,
                   plot: list[str]) -> dict[str, Any]:
    score = _primary(settings)
    results: dict[str, Any] = {"settings": settings.to_dict(), "score": score, "reference": reference,
                               "compared_at": "equal training iterations (steps); FLOPs per step recorded beside",
                               "studies": {}}
    name_of = {"fvd": "FVD", "pixel_fd": "pixel FD"}
    real = [f"{name_of[k]} {reference[f'{k}_real_vs_real']:.1f}" for k in ("fvd", "pixel_fd")
            if f"{k}_real_vs_real" in reference]
    real += [f"{k.removeprefix('real_').replace('_', ' ')} {v:.2f}" for k, v in reference.items()
             if k.startswith("real_")]
    ranks = settings.world_size
    processes = f", {ranks} processes" if ranks > 1 else ""
    lines = [f"# Latte design study ({settings.training['dataset']}, {settings.steps} steps, {seeds} seeds{processes})",
             ""]
    if ranks > 1:
        lines += [f"Trained data-parallel on {ranks} processes (torchrun): a step's batch is {ranks} × "
                  f"{settings.training['local_batch_size']} clips (local_batch_size per process).", ""]
    lines += [f"Score: {name_of[score]} over {settings.eval_clips} clips (lower is better), final (at step "
              f"{settings.steps}) and best over the evaluations, mean ± standard deviation over the finished seeds. "
              f"Held-out real clips scored the same way: {', '.join(real)}.", ""]
    for name in studies:
        rows = [_configuration_result(out, settings, c, seeds)
                for c in study_configurations(name, settings.base_model)]
        results["studies"][name] = {"paper": PAPER_FINDINGS[name], "configurations": rows}
        extra = [k for k in ("direction", "colour", "shape", "motion_consistency")
                 if any(k in r["final"] for r in rows)]
        header = ["configuration", "parameters", "GFLOPs/step", "seeds", f"final {name_of[score]}",
                  f"best {name_of[score]}"]
        if score != "pixel_fd":
            header.append("final pixel FD")
        header += [k.replace("_", " ") for k in extra] + ["s/step"]
        lines += [f"## {name}", "", f"Paper: {PAPER_FINDINGS[name]}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for r in rows:
            cells = [r["label"], f"{r['parameters']:,}", f"{r['flops_per_step'] / 1e9:.2f}",
                     f"{r['seeds_finished']}/{seeds}", _fmt(r["final"].get(score)), _fmt(r["best"].get(score))]
            if score != "pixel_fd":
                cells.append(_fmt(r["final"].get("pixel_fd")))
            cells += [_fmt(r["final"].get(k), 2) for k in extra]
            cells.append(f"{r['seconds_per_step']:.2f}" if r["seconds_per_step"] else "–")
            lines.append("| " + " | ".join(cells) + " |")
        for r in rows:
            if r["image_pretrain_flops"]:
                lines += ["", f"{r['label']}: its image model trained {settings.steps} steps on single frames first "
                          f"({r['image_pretrain_flops'] / r['train_flops']:.0%} of the video training's FLOPs, not "
                          f"in GFLOPs/step)."]
        lines.append("")
        if name in plot:
            _plot(rows, score, out / f"{name}.png", f"{name} ({settings.training['dataset']})")
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "results.md", "\n".join(lines))
    return results


def _plot(rows: list[dict[str, Any]], score: str, path: Path, title: str) -> None:
    """Score against training iterations, one line per configuration (mean over seeds, the band ± 1 std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    for r in rows:
        points = [(p["step"], p[score]) for p in r["curve"] if p.get(score)]
        if not points:
            continue
        steps = np.array([s for s, _ in points])
        mean = np.array([v["mean"] for _, v in points])
        std = np.array([v["std"] for _, v in points])
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=r["label"])
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training iterations")
    ax.set_ylabel({"fvd": "FVD", "pixel_fd": "pixel FD"}[score] + " (lower is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.92)  # fixed: tight_layout costs 10x the plot
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
