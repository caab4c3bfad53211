"""Latent caching: encode a video dataset with the VAE once, train from the stored latents every epoch.

``encode_dataset`` writes ``shard-NNNNN.safetensors`` files (``latents`` (n, F, C, h, w) float32, ``labels`` (n,)
int64) and, last, ``index.json`` (shard sizes, shapes, the VAE's scaling factor, the seed). Each shard is written
to a temporary name and renamed, and the index only lists complete shards, so an interrupted run leaves a readable
cache of what was done. ``LatentClips`` reads a cache back as a dataset of ``(latents, label)``.

>>> from latte_rs.data import UCF101, encode_dataset, LatentClips  # doctest: +SKIP
>>> vae = latte_rs.VideoVAE.from_pretrained("Latte/vae")  # doctest: +SKIP
>>> encode_dataset(UCF101("UCF-101/"), vae, "ucf101-latents")  # doctest: +SKIP
>>> ds = LatentClips("ucf101-latents")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "index.json"


def _write_shard(path: Path, latents: np.ndarray, labels: np.ndarray) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"latents": np.ascontiguousarray(latents, np.float32), "labels": labels.astype(np.int64)}, str(tmp))
    os.replace(tmp, path)


def _write_index(out: Path, index: dict[str, Any]) -> None:
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out / INDEX)


def encode_dataset(dataset, vae, output_dir: str | os.PathLike, *, shard_size: int = 256, sample: bool = True,
                   seed: int = 0, chunk_size: int = 16, progress: bool = True) -> Path:
    """Encodes every clip of `dataset` ((F, 3, H, W) in [-1, 1], label) with `vae` (a ``VideoVAE``) into a latent
    cache under `output_dir`; returns its path. Latents are sampled (clip i with seed ``seed + i``) or, with
    ``sample=False``, the distribution means; both are scaled by the VAE's scaling factor."""
    if shard_size < 1:
        raise ValueError(f"shard_size: expected >= 1, got {shard_size}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: it is empty")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="encode", unit="clip", dynamic_ncols=True)
    index: dict[str, Any] = {"format": "latte-rs-latents", "version": 1, "num_clips": 0, "shards": [],
                             "scaling_factor": vae.scaling_factor, "sample": sample, "seed": seed,
                             "dataset": repr(dataset)}
    latents, labels = [], []
    try:
        for i in range(n):
            item = dataset[i]
            clip, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, 0)
            z = vae.encode(np.asarray(clip, np.float32)[None], sample=sample, seed=seed + i, chunk_size=chunk_size)
            latents.append(z[0])
            labels.append(int(label))
            if len(latents) == shard_size or i == n - 1:
                name = f"shard-{len(index['shards']):05d}.safetensors"
                _write_shard(out / name, np.stack(latents), np.asarray(labels))
                index["shards"].append({"file": name, "count": len(latents)})
                index["num_clips"] += len(latents)
                index["clip_shape"] = list(latents[0].shape)
                _write_index(out, index)
                latents, labels = [], []
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


class LatentClips:
    """A latent cache written by ``encode_dataset``, as a dataset of ``(latents (F, C, h, w) float32, label)``.

    Shards are opened lazily (memory-mapped), so the dataset works in a ``DataLoader`` with workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"path: {index_path} not found (not a latent cache written by encode_dataset)")
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{index_path}: unreadable ({e})") from None
        try:
            self.shards = list(self.index["shards"])
            files = [str(s["file"]) for s in self.shards]
            counts = [int(s["count"]) for s in self.shards]
            self.scaling_factor = float(self.index["scaling_factor"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{index_path}: not a latent cache index ({type(e).__name__}: {e})") from None
        for name, count in zip(files, counts, strict=True):
            if Path(name).name != name or count < 0:
                raise ValueError(f"{index_path}: shard {name!r} with {count} clips is not a shard of this cache")
            if not (self.path / name).is_file():
                raise FileNotFoundError(f"{self.path / name}: listed in {INDEX} but missing")
        self.offsets = np.cumsum([0] + counts)
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, k: int):
        if k not in self._open:
            from safetensors import safe_open

            self._open[k] = safe_open(str(self.path / self.shards[k]["file"]), framework="numpy")
        return self._open[k]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
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
        except Exception as e:  # safetensors' SafetensorError, a missing key, fewer rows than the index says
            shard_path = self.path / self.shards[k]["file"]
            raise ValueError(f"{shard_path}: unreadable shard ({type(e).__name__}: {e})") from None
        return np.asarray(latents, np.float32), label

    def __getstate__(self) -> dict:  # open shard handles do not pickle; workers reopen them
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def __repr__(self) -> str:
        return f"LatentClips({str(self.path)!r}, clips={len(self)}, clip_shape={self.index.get('clip_shape')})"
