"""Data-parallel training over torch.distributed: the native :class:`latte_rs.Trainer` on several processes.

Each process (rank) runs the Rust forward and backward on its own shard of the batch; the gradients (one flat
array per step, in the trainer's parameter order) are averaged over the ranks with ``all_reduce`` in buckets
(gloo on the CPU), together with the losses; then every rank takes the same optimiser step, so the weights stay
identical everywhere without ever being sent. One step on N ranks with batch b each is one step on the joint
batch N·b (to float rounding, when the random draws are the same: see :meth:`DistributedTrainer.step`).

Under ``torchrun`` nothing needs to change: ``latte_rs.train`` / ``latte-rs train`` see ``WORLD_SIZE`` and
``RANK`` in the environment and train data-parallel::

    torchrun --nproc_per_node 2 -m latte_rs.cli train --config ucf101_train.yaml
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint host0:29500 -m latte_rs.cli train --config ucf101_train.yaml   # and node_rank 1 on host1

The seeds are the official ones (the data order from ``global_seed``, each rank's random draws from
``global_seed + rank``); rank 0 writes the checkpoints (with every rank's random stream) and the logs. A resume
with the same number of ranks continues each stream exactly; with a different number the streams restart from
seeds derived from (seed, world size, rank, step). A rank that dies makes the others' next collective fail, and
they raise :class:`RankFailure`; a hung rank is detected after ``timeout`` seconds.

torch is needed only here (``pip install latte-rs[torch]``).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import numpy as np

from ._native import Trainer

__all__ = ["DistributedTrainer", "RankFailure", "continue_streams", "derived_seed", "destroy_group",
           "group_initialised", "init_from_env", "share", "world"]

DEFAULT_TIMEOUT = 300.0


class RankFailure(RuntimeError):
    """A collective operation failed or timed out: another rank died or hung."""


def _dist():
    try:
        import torch.distributed as dist
    except ImportError as e:  # pragma: no cover - only without torch
        raise ImportError("data-parallel training needs PyTorch's torch.distributed: pip install 'latte-rs[torch]'") \
            from e
    return dist


def group_initialised() -> bool:
    """Whether this process is in an initialised torch.distributed process group (False without torch).

    A process group exists only where something imported torch.distributed to make it, so where it is not imported
    the answer is no without importing torch: a single-process run (``latte-rs demo``, ``latte_rs.train``) must not
    pay torch's import (about 0.5 GB of memory and seconds) to learn that it is alone."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size) of this process: from an initialised process group, else from torchrun's environment
    variables, else (0, 1)."""
    if group_initialised():
        dist = _dist()
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(backend: str = "gloo", timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int]:
    """Joins the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) unless one is initialised already or the world is one process. Returns (rank, world size).

    Raises:
        ValueError: an inconsistent environment (e.g. ``RANK`` >= ``WORLD_SIZE``).
        RankFailure: the other ranks did not join within ``timeout`` seconds.
    """
    rank, size = world()
    if size <= 1:
        return 0, 1
    dist = _dist()
    if dist.is_initialized():
        return rank, size
    if not 0 <= rank < size:
        raise ValueError(f"RANK: expected 0 <= RANK < WORLD_SIZE = {size}, got {rank}")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"{var}: not set; start the processes with torchrun (or set MASTER_ADDR/MASTER_PORT)")
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(seconds=timeout))
    except Exception as e:  # noqa: BLE001 - torch raises several types (DistStoreError, RuntimeError)
        raise RankFailure(f"rank {rank}: could not join the process group of {size} ranks at "
                          f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout:g} s: {e}") from e
    return rank, size


def destroy_group() -> None:
    """Leaves and destroys the default process group (the one ``init_from_env`` joined)."""
    _dist().destroy_process_group()


def share(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable value, e.g. the experiment folder)."""
    dist = _dist()
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=src)
    except Exception as e:  # noqa: BLE001
        raise RankFailure(f"rank {dist.get_rank()}: a broadcast from rank {src} failed: {e}") from e
    return box[0]


def derived_seed(seed: int, world_size: int, rank: int, step: int) -> int:
    """The seed of a rank's random stream after a resume with a different number of ranks."""
    return int(np.random.SeedSequence([seed, world_size, rank, step]).generate_state(1, np.uint64)[0])


def continue_streams(trainer: Trainer, seed: int, rank: int, world_size: int) -> None:
    """After a resume: each rank continues its own saved random stream when the checkpoint has one per rank of
    this world (a single-process checkpoint has its one stream already); otherwise each rank starts a stream
    derived from (seed, world size, rank, step)."""
    states = trainer.rank_rng_states
    if len(states) == world_size:
        trainer.set_rng_state(states[rank])
    elif states or world_size > 1:
        trainer.reseed(derived_seed(seed, world_size, rank, trainer.step_count))


class DistributedTrainer:
    """A :class:`latte_rs.Trainer` that averages gradients over the ranks of a torch.distributed process group.

    Args:
        trainer: this rank's trainer (the same model, options and weights on every rank).
        group: the process group (default: the world).
        bucket_mb: gradient all-reduce bucket size in MiB (the buckets are sent concurrently).

    Every rank must call :meth:`step` and :meth:`save` the same number of times (they are collective).
    """

    def __init__(self, trainer: Trainer, *, group=None, bucket_mb: float = 25.0) -> None:
        if not isinstance(trainer, Trainer):
            raise TypeError(f"trainer: expected a latte_rs.Trainer, got {type(trainer).__name__}")
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb: expected a size > 0, got {bucket_mb}")
        import torch

        self._torch = torch
        self.dist = _dist()
        if not self.dist.is_initialized():
            raise RuntimeError("DistributedTrainer: no torch.distributed process group (call "
                               "latte_rs.distributed.init_from_env() or torch.distributed.init_process_group first)")
        self.trainer = trainer
        self.group = group
        self.rank = self.dist.get_rank(group)
        self.world_size = self.dist.get_world_size(group)
        sizes = [int(np.prod(s)) for s in trainer.parameter_shapes]
        self.num_values = sum(sizes)
        itemsize = 8 if trainer.model.dtype == "float64" else 4
        per_bucket = max(1, int(bucket_mb * 2**20) // itemsize)
        # Bucket boundaries on parameter boundaries where possible (as DDP), splitting only huge parameters.
        self.buckets: list[tuple[int, int]] = []
        start = end = 0
        for n in sizes:
            end += n
            if end - start >= per_bucket:
                while end - start > per_bucket:
                    self.buckets.append((start, start + per_bucket))
                    start += per_bucket
                self.buckets.append((start, end))
                start = end
        if end > start:
            self.buckets.append((start, end))

    def _collective(self, what: str, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - gloo and the store raise RuntimeError, DistBackendError, ...
            raise RankFailure(
                f"rank {self.rank} of {self.world_size}: {what} failed at optimiser step "
                f"{self.trainer.step_count + 1}: {e}. Another rank probably died or hung; the job stops here "
                "(resume from the last checkpoint)") from e

    def broadcast_parameters(self, src: int = 0) -> None:
        """Makes every rank's weights rank ``src``'s (in place, through the model's shared memory), as DDP does
        when it wraps a model. Call it before the first step of a fresh run."""
        torch = self._torch
        params = self.trainer.model.shared_parameters()

        def run():
            works = [self.dist.broadcast(torch.from_numpy(params[n]), src, group=self.group, async_op=True)
                     for n in sorted(params)]
            for w in works:
                w.wait()

        self._collective("the parameter broadcast", run)

    def all_reduce_mean(self, flat: np.ndarray) -> np.ndarray:
        """Averages a flat float array over the ranks, in place: the gradient in its buckets, anything else whole."""
        torch = self._torch
        t = torch.from_numpy(flat)
        buckets = self.buckets if flat.size == self.num_values else [(0, flat.size)]

        def run():
            works = [self.dist.all_reduce(t[a:b], group=self.group, async_op=True) for a, b in buckets]
            for w in works:
                w.wait()

        self._collective("the gradient all-reduce", run)
        t.div_(self.world_size)
        return flat

    def step(self, latents, labels=None, image_labels=None, *, encoder_hidden_states=None,
             encoder_attention_mask=None, timesteps=None, noise=None) -> dict[str, Any]:
        """One optimiser step on this rank's part of the joint batch; returns the joint step's statistics (the
        losses are averaged over the ranks). A text model takes ``encoder_hidden_states`` (and their mask) as
        ``Trainer.step``. ``timesteps`` and ``noise`` replace this rank's draws (for tests and exact
        reproductions: the same draws give the numbers of one process with the joint batch)."""
        grad, losses = self.trainer.forward_backward(
            latents, labels, image_labels, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, timesteps=timesteps, noise=noise)
        parts = np.array([losses["loss"], losses["mse"] or 0.0, losses["vb"] or 0.0], dtype=np.float64)
        self.all_reduce_mean(grad)
        self.all_reduce_mean(parts)
        return self.trainer.apply_gradients(
            grad, loss=float(parts[0]), mse=None if losses["mse"] is None else float(parts[1]),
            vb=None if losses["vb"] is None else float(parts[2]))

    def save(self, path) -> None:
        """Collective: rank 0 writes the checkpoint (atomically) with every rank's random stream; all ranks
        return once it is complete."""
        states: list[Any] = [None] * self.world_size
        self._collective("gathering the random streams",
                         lambda: self.dist.all_gather_object(states, self.trainer.rng_state, group=self.group))
        error = None
        if self.rank == 0:
            try:
                self.trainer.save(path, rank_rng_states=states)
            except Exception as e:  # noqa: BLE001 - reported to every rank below, then raised
                error = e
        flag = [None if error is None else repr(error)]
        self._collective("the checkpoint barrier",
                         lambda: self.dist.broadcast_object_list(flag, src=0, group=self.group))
        if error is not None:
            raise error
        if flag[0] is not None:
            raise RuntimeError(f"rank 0 could not save the checkpoint {path}: {flag[0]}")
