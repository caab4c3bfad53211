"""Training batches from a dataset: a seeded order per epoch (the same batches after a resume), drop_last as the
official loader, and image-video joint clips (frames from other clips appended, their labels as image labels).

Captioned datasets (``CaptionedVideos``, a captioned ``LatentClips``) also fill a batch's text fields: the
captions and, from a latent cache with text, the T5 features and masks; the image frames of joint clips drawn
from other clips bring those clips' captions and features along."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._inputs import check_int


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


def caption_and_text(item: Any) -> tuple[str | None, np.ndarray | None, np.ndarray | None, list[str] | None]:
    """(caption, text features (L, d) float32, text mask (L,) int64, image captions) of a dataset item, None
    where the item has none: dicts from ``CaptionedVideos`` ("caption", "image_captions") and captioned
    ``LatentClips`` ("caption", "text_embedding", "text_mask"); other items have no text.

    >>> caption_and_text({"video": np.zeros((2, 4, 1, 1)), "caption": "a cat", "video_name": 0})
    ('a cat', None, None, None)
    >>> caption_and_text((np.zeros((2, 4, 1, 1)), 3))
    (None, None, None, None)
    """
    if not isinstance(item, Mapping):
        return None, None, None, None
    caption = item.get("caption")
    features, mask, image_captions = item.get("text_embedding"), item.get("text_mask"), item.get("image_captions")
    if features is not None:
        features = np.asarray(features.detach().cpu().numpy() if hasattr(features, "detach") else features,
                              np.float32)
    if mask is not None:
        mask = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask, np.int64)
    return (None if caption is None else str(caption), features, mask,
            None if image_captions is None else [str(c) for c in image_captions])


@dataclass
class Batch:
    """One training batch: clips (B, F, C, H, W), labels (B,) or None, image labels (B, use_image_num) or None;
    for captioned datasets the captions (B strings), the image frames' captions (B lists of use_image_num) and,
    from a latent cache with text, T5 features (B, L, d) and masks (B, L), or for joint batches (B, 1 + n, L, d)
    and (B, 1 + n, L): the video caption's first, then each image frame's. Absent fields are None."""

    latents: np.ndarray
    labels: np.ndarray | None
    image_labels: np.ndarray | None
    text_embeddings: np.ndarray | None = None
    text_mask: np.ndarray | None = None
    captions: list[str] | None = None
    image_captions: list[list[str]] | None = None


def _all_or_none(values: list) -> list | None:
    return values if all(v is not None for v in values) else None


def _check_order(*, rank: int, world_size: int, **at_least_0: int) -> None:
    """ValueError naming the first argument of the order of clips that NumPy's generator or the sharding cannot
    take: seeds, epochs, steps and counts are ints >= 0, the world size >= 1 and the rank in [0, world_size)."""
    for name, value in at_least_0.items():
        check_int(name, value, 0)
    check_int("world_size", world_size, 1)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank!r}")


def shard(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The clip indices rank `rank` of `world_size` reads in `epoch`, as torch's DistributedSampler (shuffle,
    no drop_last) does: a seeded permutation of all `n`, padded by repeating its start to a multiple of the world
    size, and every `world_size`-th index from `rank` on. One process reads the whole permutation."""
    _check_order(n=n, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
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

    Captioned items fill the text fields of :class:`Batch`; the frames drawn from other clips bring those clips'
    captions (``image_captions``) and features (``text_embeddings`` (B, 1 + n, L, d), the clip's own first).

    The arguments are checked here, when it is called, not when the first batch is drawn.
    """
    check_int("batch_size", batch_size, 1)
    _check_order(seed=seed, start_step=start_step, use_image_num=use_image_num, rank=rank, world_size=world_size)
    return _batches(dataset, int(batch_size), seed=seed, start_step=int(start_step), use_image_num=use_image_num,
                    num_frames=num_frames, rank=int(rank), world_size=int(world_size))


def _batches(dataset, batch_size: int, *, seed: int, start_step: int, use_image_num: int, num_frames: int | None,
             rank: int, world_size: int) -> Iterator[Batch]:
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
        raw = [dataset[int(i)] for i in idx]
        items = [clip_and_label(r) for r in raw]
        texts = [caption_and_text(r) for r in raw]
        clips = [c for c, _, _ in items]
        labels = [lab for _, lab, _ in items]
        image_labels = [il for _, _, il in items] if all(il is not None for _, _, il in items) else None
        captions = _all_or_none([t[0] for t in texts])
        features = _all_or_none([t[1] for t in texts])
        masks = _all_or_none([t[2] for t in texts])
        image_captions = _all_or_none([t[3] for t in texts])  # joint clips the dataset made itself
        if image_labels is None and use_image_num and num_frames is not None and clips[0].shape[0] == num_frames:
            key = [seed, epoch, offset, 1] + ([rank] if world_size > 1 else [])
            rng = np.random.default_rng(key)
            image_labels, drawn_texts = [], []
            for j, clip in enumerate(clips):
                frames, labs, others = [], [], []
                for _ in range(use_image_num):
                    other = int(rng.integers(n))
                    oitem = dataset[other]
                    oclip, olab, _ = clip_and_label(oitem)
                    frames.append(oclip[int(rng.integers(oclip.shape[0]))])
                    labs.append(olab)
                    others.append(caption_and_text(oitem))
                clips[j] = np.concatenate([clip, np.stack(frames)], axis=0)
                image_labels.append(labs)
                drawn_texts.append(others)
            if captions is not None:
                image_captions = _all_or_none([_all_or_none([t[0] for t in ts]) for ts in drawn_texts])
            if features is not None and masks is not None:
                drawn = [(_all_or_none([t[1] for t in ts]), _all_or_none([t[2] for t in ts])) for ts in drawn_texts]
                if all(f is not None and m is not None for f, m in drawn):
                    features = [np.stack([f, *fs]) for f, (fs, _) in zip(features, drawn, strict=True)]
                    masks = [np.stack([m, *ms]) for m, (_, ms) in zip(masks, drawn, strict=True)]
                else:
                    features = masks = None
        x = np.stack(clips)
        has_labels = all(lab is not None for lab in labels)
        y = np.asarray(labels, dtype=np.int64) if has_labels else None
        yi = np.asarray(image_labels, dtype=np.int64) if (image_labels is not None and has_labels) else None
        text = (np.stack(features), np.stack(masks)) if features is not None and masks is not None else (None, None)
        yield Batch(x, y, yi, text[0], text[1], captions, image_captions)
        step += 1
