"""Latent caching: encode a video dataset with the VAE once, train from the stored latents every epoch.

``encode_dataset`` writes ``shard-NNNNN.safetensors`` files (``latents`` (n, F, C, h, w) float32, ``labels`` (n,)
int64) and, last, ``index.json`` (shard sizes, shapes, the VAE's scaling factor, the seed). Each shard is written
to a temporary name and renamed, and the index only lists complete shards, so an interrupted run leaves a readable
cache of what was done. ``LatentClips`` reads a cache back as a dataset of ``(latents, label)``.

Captioned datasets (dict items with a ``"caption"``, as :class:`~latte_rs.data.CaptionedVideos` yields) add the
text side:

- every shard's safetensors metadata holds ``"captions"``: a JSON list of its n captions, in clip order;
- with a text encoder and tokenizer, every shard also holds ``text_embeddings`` (n, L, d) (float32, or float16
  with ``text_dtype="float16"``) and ``text_mask`` (n, L) int64: the captions encoded once, as the text-to-video
  pipeline encodes prompts (:func:`latte_rs.text.encode_captions`, L = ``max_length``);
- ``null_caption.safetensors`` holds the empty prompt ``""`` encoded the same way (``text_embeddings`` (1, L, d),
  ``text_mask`` (1, L)): the unconditional branch of classifier-free guidance and of caption dropout;
- ``index.json`` says ``"captions": true`` and, with text, ``"text": {"max_length": L, "d_model": d, "dtype":
  "float32" | "float16", "null": "null_caption.safetensors"}``.

``LatentClips`` then yields dicts ``{"video": latents, "caption": str, "video_name": label}``, with
``"text_embedding"`` (L, d) float32 and ``"text_mask"`` (L,) int64 when the cache has text. The cache stores
videos only: image-video joint training draws its image frames from other cached clips
(``batches(use_image_num=...)``), so joint datasets are encoded without ``use_image_num``.

>>> from latte_rs.data import UCF101, encode_dataset, LatentClips  # doctest: +SKIP
>>> vae = latte_rs.VideoVAE.from_pretrained("Latte/vae")  # doctest: +SKIP
>>> encode_dataset(UCF101("UCF-101/"), vae, "ucf101-latents")  # doctest: +SKIP
>>> ds = LatentClips("ucf101-latents")  # doctest: +SKIP
>>> encoder = latte_rs.T5TextEncoder.from_pretrained("Latte-1/text_encoder")  # doctest: +SKIP
>>> tokenizer = latte_rs.text.T5Tokenizer("Latte-1/tokenizer")  # doctest: +SKIP
>>> encode_dataset(CaptionedVideos("webvid.csv"), vae, "webvid-latents", text_encoder=encoder,
...                tokenizer=tokenizer)  # doctest: +SKIP
>>> LatentClips("webvid-latents")[0]["text_embedding"].shape  # doctest: +SKIP
(120, 4096)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from .._files import atomic_write, atomic_write_text
from .._inputs import check_int, load_json, read_text
from ..text import encode_captions

INDEX = "index.json"
NULL_CAPTION = "null_caption.safetensors"
TEXT_DTYPES = ("float32", "float16")


def _save_atomic(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _write_shard(path: Path, latents: np.ndarray, labels: np.ndarray, captions: list[str] | None = None,
                 text: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    tensors = {"latents": np.ascontiguousarray(latents, np.float32), "labels": labels.astype(np.int64)}
    if text is not None:
        tensors["text_embeddings"], tensors["text_mask"] = text
    metadata = None if captions is None else {"captions": json.dumps(captions, ensure_ascii=False)}
    _save_atomic(path, tensors, metadata)


def _write_index(out: Path, index: dict[str, Any]) -> None:
    atomic_write_text(out / INDEX, json.dumps(index, indent=2))


def _stored_text(features: np.ndarray, text_dtype: str) -> np.ndarray:
    """Text features as stored: float32, or float16 when every value fits (a value float16 cannot hold would
    become inf, silently)."""
    if text_dtype == "float16":
        peak = float(np.abs(features).max()) if features.size else 0.0
        limit = float(np.finfo(np.float16).max)
        if peak > limit:
            raise ValueError(f"text_dtype: 'float16' cannot hold these text features (largest |value| {peak:g} > "
                             f"{limit:g}); use text_dtype='float32'")
        return np.ascontiguousarray(features, np.float16)
    return np.ascontiguousarray(features, np.float32)


def _encode_texts(text_encoder, tokenizer, captions: Sequence[str], max_length: int, chunk_size: int,
                  text_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, L, d) in `text_dtype`, mask (n, L) int64) of `captions`, `chunk_size` at a time."""
    parts = [encode_captions(text_encoder, tokenizer, list(captions[k:k + chunk_size]), max_length)
             for k in range(0, len(captions), chunk_size)]
    features = np.concatenate([f for f, _ in parts])
    mask = np.concatenate([m for _, m in parts]).astype(np.int64)
    return _stored_text(features, text_dtype), mask


def _joint_refusal(what: str) -> ValueError:
    return ValueError(f"dataset: {what} is image-video joint (use_image_num > 0); the latent cache stores videos "
                      "only: encode the dataset without use_image_num, and batches(use_image_num=...) draws the "
                      "image frames (and their captions) from other cached clips")


def _cache_item(item: Any, i: int) -> tuple[np.ndarray, int, str | None]:
    """(clip, label, caption or None) of dataset item `i`: a (clip, label) pair, a bare clip, or a dict
    {"video", "video_name", "caption"} (the official format, as CaptionedVideos yields it)."""
    if isinstance(item, Mapping):
        if item.get("image_captions") is not None or item.get("image_labels") is not None:
            raise _joint_refusal(f"item {i}")
        if "video" not in item:
            raise ValueError(f"dataset: item {i} is a dict without 'video'; keys: {sorted(item)}")
        caption = item.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"dataset: item {i}'s caption: expected str, got {type(caption).__name__}")
        label = item.get("video_name")
        return item["video"], 0 if label is None else int(label), caption
    if isinstance(item, (tuple, list)):
        return item[0], int(item[1]), None
    return item, 0, None


def encode_dataset(dataset, vae, output_dir: str | os.PathLike, *, shard_size: int = 256, sample: bool = True,
                   seed: int = 0, chunk_size: int = 16, progress: bool = True, text_encoder=None, tokenizer=None,
                   max_length: int = 120, text_dtype: str = "float32") -> Path:
    """Encodes every clip of `dataset` ((F, 3, H, W) in [-1, 1], label) with `vae` (a ``VideoVAE``) into a latent
    cache under `output_dir`; returns its path. Latents are sampled (clip i with seed ``seed + i``) or, with
    ``sample=False``, the distribution means; both are scaled by the VAE's scaling factor.

    Items that are dicts with a ``"caption"`` (``CaptionedVideos``) store their captions too, and with
    `text_encoder` (a ``T5TextEncoder``) and `tokenizer` (a ``T5Tokenizer``) their T5 features of `max_length`
    tokens, stored as `text_dtype` ("float32" or "float16"), and the null caption (see the module docs). Captions
    are encoded once, `chunk_size` at a time; `chunk_size` is also the VAE's frames per call."""
    check_int("shard_size", shard_size, 1)
    check_int("seed", seed, 0)  # clip i is encoded with seed + i
    if (text_encoder is None) != (tokenizer is None):
        given, needed = ("text_encoder", "tokenizer") if tokenizer is None else ("tokenizer", "text_encoder")
        raise ValueError(f"{needed}: encoding captions needs a text encoder and its tokenizer; got {given} only")
    if text_dtype not in TEXT_DTYPES:
        raise ValueError(f"text_dtype: expected 'float32' or 'float16', got {text_dtype!r}")
    if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"max_length: expected an int >= 1, got {max_length!r}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    if int(getattr(dataset, "use_image_num", 0) or 0) > 0:
        raise _joint_refusal(f"{type(dataset).__name__}(use_image_num={dataset.use_image_num})")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: it is empty")
    bar = None
    if progress:
        bar = tqdm(total=n, desc="encode", unit="clip", dynamic_ncols=True)
    index: dict[str, Any] = {"format": "latte-rs-latents", "version": 1, "num_clips": 0, "shards": [],
                             "scaling_factor": vae.scaling_factor, "sample": sample, "seed": seed,
                             "dataset": repr(dataset)}
    latents, labels, captions = [], [], []
    captioned = False
    try:
        for i in range(n):
            clip, label, caption = _cache_item(dataset[i], i)
            if i == 0:
                captioned = caption is not None
                if text_encoder is not None and not captioned:
                    raise ValueError("text_encoder: the dataset's items carry no captions (expected dicts with a "
                                     "'caption', as CaptionedVideos yields)")
                if captioned:
                    index["captions"] = True
                if text_encoder is not None:
                    null, null_mask = _encode_texts(text_encoder, tokenizer, [""], int(max_length), 1, text_dtype)
                    _save_atomic(out / NULL_CAPTION, {"text_embeddings": null, "text_mask": null_mask})
                    index["text"] = {"max_length": int(max_length), "d_model": int(null.shape[-1]),
                                     "dtype": text_dtype, "null": NULL_CAPTION}
            elif (caption is not None) != captioned:
                first, this = ("has", "has none") if captioned else ("has none", "has one")
                raise ValueError(f"dataset: item 0 {first} caption and item {i} {this}; a cache is captioned "
                                 "throughout or not at all")
            z = vae.encode(np.asarray(clip, np.float32)[None], sample=sample, seed=seed + i, chunk_size=chunk_size)
            latents.append(z[0])
            labels.append(int(label))
            if captioned:
                captions.append(caption)
            if len(latents) == shard_size or i == n - 1:
                name = f"shard-{len(index['shards']):05d}.safetensors"
                text = None
                if text_encoder is not None:
                    text = _encode_texts(text_encoder, tokenizer, captions, int(max_length), int(chunk_size),
                                         text_dtype)
                _write_shard(out / name, np.stack(latents), np.asarray(labels), captions if captioned else None,
                             text)
                index["shards"].append({"file": name, "count": len(latents)})
                index["num_clips"] += len(latents)
                index["clip_shape"] = list(latents[0].shape)
                _write_index(out, index)
                latents, labels, captions = [], [], []
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


class LatentClips:
    """A latent cache written by ``encode_dataset``, as a dataset of ``(latents (F, C, h, w) float32, label)``,
    or, for a captioned cache, of dicts ``{"video": latents, "caption": str, "video_name": label}`` with
    ``"text_embedding"`` (L, d) float32 and ``"text_mask"`` (L,) int64 when it has text (see the module docs).

    Shards are opened lazily (memory-mapped), so the dataset works in a ``DataLoader`` with workers.

    Attributes:
        has_captions: whether the cache stores captions.
        text: the index's ``"text"`` entry (max_length, d_model, dtype, null) or None.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"path: {index_path} not found (not a latent cache written by encode_dataset)")
        try:
            self.index = load_json(read_text(index_path), "it")
        except (ValueError, OSError) as e:  # not JSON, nested too deeply, not UTF-8, not a regular file
            raise ValueError(f"{index_path}: unreadable ({e})") from None
        try:
            self.shards = list(self.index["shards"])
            files = [str(s["file"]) for s in self.shards]
            counts = [int(s["count"]) for s in self.shards]
            self.scaling_factor = float(self.index["scaling_factor"])
            self.has_captions = bool(self.index.get("captions", False))
            text = self.index.get("text")
            self.text: dict[str, Any] | None = None if text is None else {
                "max_length": int(text["max_length"]), "d_model": int(text["d_model"]),
                "dtype": str(text["dtype"]), "null": str(text["null"])}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{index_path}: not a latent cache index ({type(e).__name__}: {e})") from None
        for name, count in zip(files, counts, strict=True):
            if Path(name).name != name or count < 0:
                raise ValueError(f"{index_path}: shard {name!r} with {count} clips is not a shard of this cache")
            if not (self.path / name).is_file():
                raise FileNotFoundError(f"{self.path / name}: listed in {INDEX} but missing")
        if self.text is not None:
            null = self.text["null"]
            if Path(null).name != null or not self.has_captions:
                raise ValueError(f"{index_path}: text entry {self.text} does not describe this cache's captions")
            if not (self.path / null).is_file():
                raise FileNotFoundError(f"{self.path / null}: listed in {INDEX} but missing")
        self.offsets = np.cumsum([0] + counts)
        self._open: dict[int, Any] = {}
        self._captions: dict[int, list[str]] = {}
        self._null: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, k: int):
        if k not in self._open:
            self._open[k] = safe_open(str(self.path / self.shards[k]["file"]), framework="numpy")
        return self._open[k]

    def _shard_captions(self, k: int) -> list[str]:
        """Shard `k`'s captions; ValueError naming the shard when its metadata holds no list of them."""
        if k not in self._captions:
            shard_path = self.path / self.shards[k]["file"]
            try:
                captions = load_json((self._shard(k).metadata() or {})["captions"], "its captions metadata")
            except Exception as e:  # safetensors' SafetensorError, no "captions" key, not JSON
                raise ValueError(f"{shard_path}: unreadable shard ({type(e).__name__}: {e})") from None
            if not isinstance(captions, list) or len(captions) != int(self.shards[k]["count"]):
                raise ValueError(f"{shard_path}: expected {self.shards[k]['count']} captions in the metadata")
            self._captions[k] = [str(c) for c in captions]
        return self._captions[k]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int] | dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} clips")
        index %= n
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        j = index - int(self.offsets[k])
        try:
            shard = self._shard(k)
            latents = shard.get_slice("latents")[j:j + 1][0]
            label = int(shard.get_slice("labels")[j:j + 1][0])
            if self.has_captions:
                item: dict[str, Any] = {"video": np.asarray(latents, np.float32),
                                        "caption": self._shard_captions(k)[j], "video_name": label}
                if self.text is not None:
                    item["text_embedding"] = np.asarray(shard.get_slice("text_embeddings")[j:j + 1][0], np.float32)
                    item["text_mask"] = np.asarray(shard.get_slice("text_mask")[j:j + 1][0], np.int64)
        except Exception as e:  # safetensors' SafetensorError, a missing key, fewer rows than the index says
            shard_path = self.path / self.shards[k]["file"]
            raise ValueError(f"{shard_path}: unreadable shard ({type(e).__name__}: {e})") from None
        if self.has_captions:
            return item
        return np.asarray(latents, np.float32), label

    def caption(self, index: int) -> str:
        """The caption of clip `index` (no latents read); ValueError for a cache without captions."""
        if not self.has_captions:
            raise ValueError(f"index: {self.path} stores no captions (encoded from a dataset without them)")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} clips")
        index %= n
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self._shard_captions(k)[index - int(self.offsets[k])]

    @property
    def null_caption(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The empty prompt's features (1, L, d) float32 and mask (1, L) int64, encoded as the captions were;
        None for a cache without text."""
        if self.text is None:
            return None
        if self._null is None:
            path = self.path / self.text["null"]
            try:
                tensors = load_file(str(path))
                self._null = (np.asarray(tensors["text_embeddings"], np.float32),
                              np.asarray(tensors["text_mask"], np.int64))
            except Exception as e:  # safetensors' SafetensorError, a missing key
                raise ValueError(f"{path}: unreadable null caption ({type(e).__name__}: {e})") from None
        return self._null[0].copy(), self._null[1].copy()

    def __getstate__(self) -> dict:  # open shard handles do not pickle; workers reopen them
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def __repr__(self) -> str:
        extra = ""
        if self.has_captions:
            extra = ", captions" if self.text is None else f", text=({self.text['max_length']}, {self.text['d_model']})"
        return f"LatentClips({str(self.path)!r}, clips={len(self)}, clip_shape={self.index.get('clip_shape')}{extra})"
