"""The built-in text-to-video model's text side, made here without downloads: a SentencePiece tokenizer trained on
the captions of the built-in captioned synthetic videos (``CaptionedSyntheticVideos``: "a red square moving
left", 4 colours × 4 shapes × 4 directions), and a tiny T5 v1.1 encoder (gated GELU, 2 layers, d_model 32) with
T5's initialisation from a fixed seed. The encoder is not trained: its features tell the words and their order
apart, and the transformer's caption projection and cross-attention learn what they mean.

The recipe of the shipped model (``assets/tiny_t2v/``, a Latte-1-shaped folder: ``transformer/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``)::

    latte-rs tiny-t2v text-encoder python/latte_rs/assets/tiny_t2v    # tokenizer/, text_encoder/
    latte-rs train --config python/latte_rs/assets/tiny_t2v.yaml --output-dir tiny-t2v-train
    latte-rs tiny-t2v transformer tiny-t2v-train python/latte_rs/assets/tiny_t2v   # + scheduler/
    latte-rs tiny-t2v evaluate    # prompt following on the held-out combinations (JSON)
    python -c "from latte_rs import tiny_t2v; tiny_t2v.fit_teacache()"   # transformer/teacache.json

The transformer predicts the velocity (``prediction_type: v_prediction``), not the noise as Latte-1 does: with
the noise as target, the loss at high noise levels (where a clip's layout and motion are decided) hardly depends
on the clip at all, and a model trained so learns colour (visible at every noise level) but never the direction
of motion (see the README's "The built-in text-to-video model").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import sentencepiece as spm
from safetensors.numpy import save_file

from ._native import open_model
from .data.synthetic import HELD_OUT, synthetic_caption
from .evaluation.prompt_following import prompt_following
from .pipelines import LatteT2VPipeline, default_scheduler
from .text import encode_captions
from .training import latest_checkpoint

ASSETS = Path(__file__).parent / "assets"
#: The built-in text-to-video pipeline folder.
TINY_T2V = ASSETS / "tiny_t2v"
#: Its training config.
CONFIG_FILE = ASSETS / "tiny_t2v.yaml"
#: Caption tokens (every caption of the dataset has fewer).
MAX_LENGTH = 16
T5_CONFIG = {
    "architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64,
    "num_layers": 2, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
    "layer_norm_epsilon": 1e-6, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
    "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False, "dropout_rate": 0.0,
    "initializer_factor": 1.0,
}


def captions() -> list[str]:
    """Every caption of the captioned synthetic videos (64)."""
    return [synthetic_caption(c, s, d) for c in range(4) for s in range(4) for d in range(4)]


def build_tokenizer(folder: str | Path) -> Path:
    """Trains a word-level SentencePiece model (T5's special pieces: pad 0, eos 1, unk 2) on the captions; writes
    ``folder/spiece.model``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(captions() * 4) + "\n")
    words = sorted({w for c in captions() for w in c.split()})
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"),
                                   vocab_size=len(words) + 4, model_type="word", pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, minloglevel=2, hard_vocab_limit=False)
    corpus.unlink()
    (folder / "spiece.vocab").unlink(missing_ok=True)
    return folder / "spiece.model"


def build_text_encoder(folder: str | Path, vocab_size: int, seed: int = 0) -> Path:
    """A T5 v1.1 encoder with T5's initialisation (transformers' ``T5PreTrainedModel._init_weights``, factor 1)
    from `seed`: ``folder/config.json`` and ``folder/model.safetensors``."""
    cfg = dict(T5_CONFIG, vocab_size=int(vocab_size))
    d, kv, h, ff = cfg["d_model"], cfg["d_kv"], cfg["num_heads"], cfg["d_ff"]
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    state = {"shared.weight": normal((vocab_size, d), 1.0)}
    for i in range(cfg["num_layers"]):
        p = f"encoder.block.{i}.layer."
        state[p + "0.SelfAttention.q.weight"] = normal((h * kv, d), (d * kv) ** -0.5)
        state[p + "0.SelfAttention.k.weight"] = normal((h * kv, d), d ** -0.5)
        state[p + "0.SelfAttention.v.weight"] = normal((h * kv, d), d ** -0.5)
        state[p + "0.SelfAttention.o.weight"] = normal((d, h * kv), (h * kv) ** -0.5)
        if i == 0:
            state[p + "0.SelfAttention.relative_attention_bias.weight"] = normal(
                (cfg["relative_attention_num_buckets"], h), d ** -0.5)
        state[p + "0.layer_norm.weight"] = np.ones(d, np.float32)
        state[p + "1.DenseReluDense.wi_0.weight"] = normal((ff, d), d ** -0.5)
        state[p + "1.DenseReluDense.wi_1.weight"] = normal((ff, d), d ** -0.5)
        state[p + "1.DenseReluDense.wo.weight"] = normal((d, ff), ff ** -0.5)
        state[p + "1.layer_norm.weight"] = np.ones(d, np.float32)
    state["encoder.final_layer_norm.weight"] = np.ones(d, np.float32)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(state, str(folder / "model.safetensors"))
    (folder / "model.safetensors").chmod(0o644)  # safetensors writes 0600; installed copies must be readable
    return folder


def build_text_side(pipeline_folder: str | Path, seed: int = 0) -> Path:
    """The tokenizer and the text encoder of the built-in pipeline folder."""
    root = Path(pipeline_folder)
    model = build_tokenizer(root / "tokenizer")
    vocab = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    build_text_encoder(root / "text_encoder", vocab, seed)
    return root


def install_transformer(experiment: str | Path, pipeline_folder: str | Path) -> Path:
    """Copies the EMA weights of a training run's last checkpoint into ``pipeline_folder/transformer`` (diffusers
    layout: ``config.json`` + ``diffusion_pytorch_model.safetensors``) and writes the sampler for what it
    predicts into ``pipeline_folder/scheduler`` (ancestral DDPM over the training process)."""
    ckpt = latest_checkpoint(Path(experiment) / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"experiment: no checkpoint under {Path(experiment) / 'checkpoints'}")
    opened = open_model(ckpt, kind="text")
    model = opened.model
    out = Path(pipeline_folder) / "transformer"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in model.state_dict().items()},
              str(out / "diffusion_pytorch_model.safetensors"))
    (out / "diffusion_pytorch_model.safetensors").chmod(0o644)
    (out / "config.json").write_text(json.dumps({"_class_name": "LatteTransformer3DModel", **model.config},
                                                indent=2) + "\n")
    default_scheduler(opened.prediction_type).save_config(Path(pipeline_folder) / "scheduler")
    return out


#: Classifier-free guidance for the built-in model (trained with 10% caption dropout).
GUIDANCE = 4.0
#: Denoising steps for the built-in model (ancestral DDPM over the training process, as the class demo).
STEPS = 50


def pipeline(checkpoint: str | Path | None = None):
    """The built-in text-to-video pipeline (``LatteT2VPipeline`` over ``assets/tiny_t2v``; pixel space, no VAE)
    with its sampler: ancestral DDPM for a model that predicts the velocity. With ``checkpoint`` (a checkpoint of
    a run of the recipe), its EMA transformer and a sampler for what it predicts, with the built-in text side."""
    if not (TINY_T2V / "transformer" / "config.json").is_file():
        raise FileNotFoundError(f"{TINY_T2V / 'transformer'}: the built-in text-to-video model's weights are not "
                                "in this install (see latte_rs.tiny_t2v for the recipe)")
    pipe = LatteT2VPipeline.from_pretrained(TINY_T2V)
    if checkpoint is not None:
        opened = open_model(str(checkpoint), kind="text")
        pipe.transformer = opened.model
        pipe.scheduler = default_scheduler(opened.prediction_type)
    return pipe


def encode_prompts(pipe, prompts: list[str], negative_prompt: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The prompts' features as the built-in model was trained on them (``MAX_LENGTH`` tokens, padding zeroed,
    for any batch size; ``LattePipeline.encode_prompt`` cuts a single prompt to its tokens instead), and the
    negative prompt's, the same way (the null caption of its caption dropout for "")."""
    feats, mask = encode_captions(pipe.text_encoder, pipe.tokenizer, list(prompts), MAX_LENGTH)
    neg, neg_mask = encode_captions(pipe.text_encoder, pipe.tokenizer, [negative_prompt], MAX_LENGTH)
    neg = np.repeat(neg * neg_mask[..., None], len(prompts), axis=0)  # one negative prompt, encoded once
    return feats * mask[..., None], neg


def generate(prompts: list[str], *, num_videos_per_prompt: int = 1, guidance_scale: float = GUIDANCE,
             num_inference_steps: int = STEPS, seed: int = 0, progress: bool = True, pipe=None, cache=None,
             video_length: int | None = None, long_video: str | None = None, window_stride: int | None = None,
             lookahead_denoising: bool | None = None):
    """Videos from the built-in text-to-video model: a ``LatteOutput`` of uint8 frames ``(B, 8, 16, 16, 3)``
    (``cache``: a caching policy, e.g. ``latte_rs.TeaCache()``; ``video_length`` beyond 8: sliding windows or
    FIFO, see ``latte_rs.sample``)."""
    pipe = pipe or pipeline()
    embeds, negative = encode_prompts(pipe, [p for p in prompts for _ in range(num_videos_per_prompt)])
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps, seed=seed, output_type="uint8", progress=progress,
                cache=cache, video_length=video_length, long_video=long_video, window_stride=window_stride,
                lookahead_denoising=lookahead_denoising)


def evaluate(combinations: str = "held_out", videos_per_combination: int = 4, seed: int = 0,
             guidance_scale: float = GUIDANCE, num_inference_steps: int = STEPS, progress: bool = False,
             pipe=None, cache=None) -> dict[str, float]:
    """Prompt following of the built-in model on the held-out (or the training) combinations: each attribute's
    accuracy measured on the generated pixels (``latte_rs.evaluation.prompt_following``); chance is 0.25 for
    each attribute and 1/64 for all three."""
    if combinations == "held_out":
        combos = list(HELD_OUT)
    elif combinations == "train":
        combos = [(c, s, d) for c in range(4) for s in range(4) for d in range(4) if (c, s, d) not in HELD_OUT]
    else:
        raise ValueError(f'combinations: expected "held_out" or "train", got {combinations!r}')
    prompts = [synthetic_caption(*c) for c in combos]
    out = generate(prompts, num_videos_per_prompt=videos_per_combination, guidance_scale=guidance_scale,
                   num_inference_steps=num_inference_steps, seed=seed, progress=progress, pipe=pipe, cache=cache)
    wanted = [c for c in combos for _ in range(videos_per_combination)]
    return prompt_following(list(out.frames), wanted)



def fit_teacache(pipe=None, runs: int = 3, seed: int = 0):
    """Fits the built-in model's TeaCache coefficients (``TeaCache.fit``) on its own sampler and guidance, over
    prompts of the training combinations (4 per run, ``runs`` seeds), and writes them to the pipeline folder's
    ``transformer/teacache.json``; returns the fitted ``TeaCache``."""
    from .cache import TeaCache

    pipe = pipe or pipeline()
    train = [(c, s, d) for c in range(4) for s in range(4) for d in range(4) if (c, s, d) not in HELD_OUT]
    prompts = [synthetic_caption(*c) for c in train[5::13][:4]]  # four colours, three shapes
    embeds, negative = encode_prompts(pipe, prompts)
    fitted = TeaCache.fit(pipe, runs=runs, seed=seed, prompt_embeds=embeds, negative_prompt_embeds=negative,
                          guidance_scale=GUIDANCE, num_inference_steps=STEPS, output_type="latent")
    fitted.save(TINY_T2V / "transformer", fitted_on=f"latte_rs.tiny_t2v.fit_teacache(runs={runs}, seed={seed}): "
                f"{len(fitted.fit_data[0])} steps of {STEPS}-step ancestral DDPM, guidance {GUIDANCE}, prompts "
                f"{prompts}")
    return fitted
