"""Training: official Latte YAML configs in, checkpoints, a loss log (CSV) and a loss plot (PNG) out. The config
schema is :mod:`latte_rs.training.config`, the loop :mod:`latte_rs.training.loop`, the log and plot
:mod:`latte_rs.training.history`; batches come from :mod:`latte_rs.data.batching`.

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
mixed_precision                 False, or "bf16" / "fp16" / True (= "bf16"). bf16: the steps run under
                                ``latte_rs.autocast`` (bf16 GEMM operands with f32 accumulation, forward
                                and backward, on AVX512-BF16; f32 master weights, optimiser and
                                reductions; a warning and f32 where the CPU lacks AVX512-BF16). fp16: a
                                float16 model with f32 master weights and loss scaling
resume_from_checkpoint          resume from the newest checkpoint of the experiment
==============================  ==========================================================================

``dataset`` and ``data_path`` pick the loader (``latte_rs.data``): synthetic, synthetic_time (the built-in setting
where time matters, ``SyntheticVideos.setting("time")``), ucf101, ffs, sky, taichi (and the
``_img`` forms) or folder. Ours: ``pixel_space`` (train on pixels, 3 channels, no VAE), ``model_config``
(LatteConfig overrides, e.g. a tiny depth), ``ema_decay`` (default 0.9999), ``weight_decay`` (0), ``num_clips``,
``prediction_type`` (what the model predicts, diffusers' names: ``epsilon``, the official noise;
``v_prediction``, the velocity, whose loss keeps weighing the clip's content at high noise, where layout and motion
are decided; ``sample``; checkpoints record it and pipelines made from them sample with it), ``dist_timeout``
(seconds a rank waits for the others in a collective before it raises ``RankFailure``; default 300), ``label_by``,
``shape_size`` (radius range as fractions of the frame), ``shape_speed`` (fraction of the frame per frame) and
``class_colours`` (synthetic dataset, see ``SyntheticVideos``), ``keep_checkpoints`` (an int N >= 1: keep the
checkpoint just written and the N - 1 before it, removing older ones; default all).

Text-to-video (``model: LatteT2V``, the official text-to-video configs' name; Latte-1's transformer, diffusers'
``LatteTransformer3DModel``):

==============================  ==========================================================================
key                             meaning
==============================  ==========================================================================
pretrained_model_path           a Latte-1 folder (its ``transformer/``) or a ``transformer/`` folder, local
                                or a Hugging Face Hub id (``maxin-cn/Latte-1``): fine-tune from its
                                weights; unset: a new model from ``model_config`` (diffusers config keys
                                over Latte-1's) trained from scratch
revision                        the Hub revision (branch, tag or commit) of a Hub ``pretrained_model_path``
video_length                    the official name of num_frames
text_encoder_path               a T5 ``text_encoder/`` folder or Hub id (default: ``<pretrained>/text_encoder``)
tokenizer_path                  a folder with ``spiece.model`` or Hub id (default: ``tokenizer/`` beside the
                                encoder)
model_max_length                caption tokens (120, as Latte-1)
caption_dropout_prob            captions replaced by the empty prompt's features (0.1): the unconditional
                                branch of classifier-free guidance
use_image_num                   image frames per clip, each with its own caption (joint training)
dataset, data_path              ``latents`` (a cache made by ``latte-rs encode --text-encoder``: features
                                computed once) or ``captions`` (videos with ``.txt`` captions or a CSV/JSON
                                manifest; with ``pixel_space``, or encode them first)
caption_key, path_key,          manifest columns and the folder relative paths resolve against
video_root
==============================  ==========================================================================

Items with captions but no features get them from the text encoder, each distinct caption encoded once.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` in the environment) the same call trains data-parallel
(:mod:`latte_rs.distributed`): ``local_batch_size`` clips per rank and step, each rank its own shard of the data,
gradients averaged with gloo, rank 0 writing the folder.
"""

from ..data.batching import Batch, batches
from .config import DEFAULTS, load_config, make_dataset, model_config
from .history import plot_loss
from .loop import TrainResult, latest_checkpoint, resume_latest, train

__all__ = [
    "DEFAULTS",
    "Batch",
    "TrainResult",
    "batches",
    "latest_checkpoint",
    "load_config",
    "make_dataset",
    "model_config",
    "plot_loss",
    "resume_latest",
    "train",
]
