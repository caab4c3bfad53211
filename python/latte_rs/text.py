"""Text for text-to-video: the T5 tokenizer of prompts and captions, and their encoding into T5 features.

``encode_captions`` is the one place text becomes features: the pipeline's prompts, the latent cache's captions
(``latte-rs encode --text-encoder``), the trainer's captions without cached features and the built-in
text-to-video model all go through it, so a model is sampled with the features it was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import sentencepiece

from . import hub
from ._native import T5TextEncoder

#: Tokens per prompt, as diffusers' ``LattePipeline``.
MAX_LENGTH = 120


class T5Tokenizer:
    """transformers' ``T5Tokenizer`` for prompts: SentencePiece pieces of ``spiece.model``, ``</s>`` appended,
    truncated and right-padded with ``<pad>`` to ``max_length``, with the attention mask. ``path``: a folder
    with ``spiece.model``, the file, or a Hugging Face Hub id (``org/name``, with ``subfolder`` and ``revision``;
    only ``spiece.model`` is fetched; see :mod:`latte_rs.hub`)."""

    def __init__(self, path: str | os.PathLike, *, subfolder: str | None = None,
                 revision: str | None = None) -> None:
        names_file = Path(path).is_file() or str(path).endswith(".model")
        path = hub.resolve(path, subfolder=subfolder, revision=revision,
                           filename=None if names_file else "spiece.model", arg="tokenizer")
        model = path / "spiece.model" if path.is_dir() else path
        if not model.is_file():
            raise FileNotFoundError(f"tokenizer: no such file {model}")
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        self.eos_id = self.sp.piece_to_id("</s>")
        self.pad_id = self.sp.piece_to_id("<pad>")

    def __call__(self, texts: str | list[str], max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.full((len(texts), max_length), self.pad_id, np.int64)
        mask = np.zeros((len(texts), max_length), np.int64)
        for i, text in enumerate(texts):
            tokens = self.sp.encode(text)[: max_length - 1] + [self.eos_id]
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def encode_captions(text_encoder: T5TextEncoder, tokenizer: T5Tokenizer, texts: str | list[str],
                    max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """T5 features ``(B, max_length, d_model)`` float32 and attention mask ``(B, max_length)`` int64 of `texts`,
    as the text-to-video pipeline encodes prompts: lower-cased and stripped, ``</s>`` appended, truncated and
    right-padded to `max_length`. The one place captions and prompts become features, for sampling and for the
    latent cache alike; ``[""]`` gives ``text_encoder.empty_prompt(max_length)``, the null caption.

    >>> encoder = T5TextEncoder.from_pretrained("Latte-1/text_encoder")  # doctest: +SKIP
    >>> features, mask = encode_captions(encoder, T5Tokenizer("Latte-1/tokenizer"), ["A cat", "a dog "])
    ... # doctest: +SKIP
    >>> features.shape, mask.shape  # doctest: +SKIP
    ((2, 120, 4096), (2, 120))
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("texts: expected at least one text, got none")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts: expected str items, got {type(text).__name__} at position {i}")
    if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"max_length: expected an int >= 1, got {max_length!r}")
    tokens = tokenizer([t.lower().strip() for t in texts], max_length=int(max_length))
    mask = np.asarray(tokens["attention_mask"], np.int64)
    features = np.asarray(text_encoder(tokens["input_ids"], mask), np.float32)
    return features, mask
