"""Training batches from a dataset: a seeded order per epoch (the same batches after a resume), drop_last as the
official loader, and image-video joint clips (frames from other clips appended, their labels as image labels)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def clip_and_label(item: Any) -> tuple[np.ndarray, int | None, np.ndarray | None]:
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


def shard(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The clip indices rank `rank` of `world_size` reads in `epoch`, as torch's DistributedSampler (shuffle,
    no drop_last) does: a seeded permutation of all `n`, padded by repeating its start to a multiple of the world
    size, and every `world_size`-th index from `rank` on. One process reads the whole permutation."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if world_size == 1:
        return order
    total = -(-n // world_size) * world_size
    padded = np.resize(order, total)  # repeats the permutation from its start, as the sampler's padding
    return padded[rank:total:world_size]


def batches(dataset, batch_size: int, *, seed: int, start_step: int = 0, use_image_num: int = 0,
            num_frames: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """Endless batches over `dataset` in a seeded random order per epoch (drop_last, as the official loader).

    With `world_size` > 1 each rank reads its own shard (:func:`shard`, DistributedSampler semantics) in batches
    of `batch_size`. The order depends only on (seed, epoch), so a resumed run at step `start_step` sees exactly
    the batches an uninterrupted run would; datasets with a ``set_epoch`` method are told the epoch (new random
    crops). With `use_image_num`, clips of `num_frames` frames get that many frames appended, each drawn from a
    random other clip, with those clips' labels as image labels (image-video joint training), unless the dataset
    already yields joint clips (``VideoClips(use_image_num=...)``).
    """
    n = len(dataset)
    per_rank = -(-n // world_size)
    per_epoch = per_rank // batch_size
    if per_epoch == 0:
        where = f" per rank ({world_size} ranks)" if world_size > 1 else ""
        raise ValueError(f"dataset: {per_rank} clips{where}, fewer than one batch of {batch_size}")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = shard(n, seed, epoch, rank, world_size)
        idx = order[offset * batch_size:(offset + 1) * batch_size]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        items = [clip_and_label(dataset[int(i)]) for i in idx]
        clips = [c for c, _, _ in items]
        labels = [lab for _, lab, _ in items]
        image_labels = [il for _, _, il in items] if all(il is not None for _, _, il in items) else None
        if image_labels is None and use_image_num and num_frames is not None and clips[0].shape[0] == num_frames:
            key = [seed, epoch, offset, 1] + ([rank] if world_size > 1 else [])
            rng = np.random.default_rng(key)
            image_labels = []
            for j, clip in enumerate(clips):
                frames, labs = [], []
                for _ in range(use_image_num):
                    other = int(rng.integers(n))
                    oclip, olab, _ = clip_and_label(dataset[other])
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
