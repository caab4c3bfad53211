"""Data-parallel training through torch.distributed: two gloo ranks on loopback against one process.

Each test starts the ranks as separate processes (tests/torch/distributed_worker.py) with torchrun's environment
variables, as ``torchrun --nproc_per_node 2`` would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import latte_rs  # noqa: E402

WORKER = Path(__file__).parent / "distributed_worker.py"
sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as W  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, out, opts: dict | None = None, *, world: int = 2, timeout: float = 120,
           check: bool = True) -> list[subprocess.CompletedProcess]:
    """Runs `world` ranks of the worker to completion; returns each rank's result (stdout, stderr, code)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                   RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
        if world == 1:
            for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(k)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), mode, str(out), json.dumps(opts or {})],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{mode}: the ranks did not finish within {timeout} s") from None
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    if check:
        for rank, r in enumerate(results):
            assert r.returncode == 0, f"rank {rank} failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return results


def _load(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_close_states(got: dict, want: dict, rtol: float, atol: float = 0.0) -> None:
    """Every parameter and EMA entry within rtol of the largest value of its tensor, or within atol."""
    keys = [k for k in want if k.startswith(("param/", "ema/"))]
    assert keys and set(keys) <= set(got)
    for k in keys:
        scale = np.abs(want[k]).max() + 1e-12
        err = np.abs(got[k] - want[k])
        assert np.all((err <= rtol * scale) | (err <= atol)), (k, err.max() / scale, err.max())


def test_one_step_on_two_ranks_equals_one_process_with_the_joint_batch(tmp_path):
    launch("joint", tmp_path / "two.npz")
    two = _load(tmp_path / "two.npz")
    assert int(two["buckets"]) > 1  # small buckets, so that the bucketing itself is exercised
    trainer = W.new_trainer(0)
    b = W.joint_batch(0)
    stats = trainer.step(b["latents"], b["labels"], timesteps=b["timesteps"], noise=b["noise"])
    one = {f"param/{k}": v for k, v in trainer.model.state_dict().items()}
    one.update({f"ema/{k}": v for k, v in trainer.ema_state_dict().items()})
    _assert_close_states(two, one, rtol=1e-6)
    assert float(two["loss"]) == pytest.approx(stats["loss"], rel=1e-6)
    assert float(two["grad_norm"]) == pytest.approx(stats["grad_norm"], rel=1e-6)
    initial = W.new_trainer(0).model.state_dict()
    moved = max(np.abs(one[f"param/{k}"] - v).max() for k, v in initial.items())
    assert moved > 1e-4


def test_twenty_steps_are_reproducible_and_resume_in_one_process(tmp_path):
    opts = {"end": 20, "save_at": 10, "save_path": str(tmp_path / "ckpt")}
    launch("steps", tmp_path / "a.npz", opts)
    launch("steps", tmp_path / "b.npz", dict(opts, save_path=str(tmp_path / "ckpt_b")))
    a, b = _load(tmp_path / "a.npz"), _load(tmp_path / "b.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # run to run: bit for bit
    # The 2-rank checkpoint (step 10) resumes in one process, which continues with the joint batches.
    launch("steps", tmp_path / "one.npz", {"end": 20, "resume": str(tmp_path / "ckpt")}, world=1)
    one = _load(tmp_path / "one.npz")
    # Ten more AdamW steps (lr 1e-3) amplify the float rounding of the averaging where a gradient is near zero
    # (Adam's update is about lr·sign(g) there): within 1e-5 relative, or 1e-3·lr absolute.
    _assert_close_states(one, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["losses"], a["losses"][10:], rtol=1e-5)
    manifest = json.loads((tmp_path / "ckpt" / "trainer.json").read_text())
    assert manifest["step"] == 10 and len(manifest["rank_rngs"]) == 2


def test_train_under_two_ranks_is_reproducible_and_resumes_with_another_world_size(tmp_path):
    launch("train", tmp_path / "a")
    launch("train", tmp_path / "b")
    a, b = _load(tmp_path / "a" / "final.npz"), _load(tmp_path / "b" / "final.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    def logged(run):  # the logged numbers without the timings
        import csv

        with open(tmp_path / run / "loss.csv") as f:
            return [{k: v for k, v in row.items() if not k.endswith("_per_sec")} for row in csv.DictReader(f)]

    assert logged("a") == logged("b")
    assert len(logged("a")) == 20  # one row per step, written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["0000010", "0000020"]
    # Continue the 2-rank run to step 26 in one process, from its checkpoint.
    launch("train", tmp_path / "a", {"max_train_steps": 26, "resume_from_checkpoint": True}, world=1)
    resumed = latte_rs.Trainer.resume(tmp_path / "a" / "checkpoints" / "0000026")
    assert resumed.step_count == 26 and resumed.rank_rng_states == []


def test_a_killed_rank_ends_the_other_with_a_clear_error_and_the_last_checkpoint_resumes(tmp_path):
    start = time.monotonic()
    # Rank 1 reads 2 clips per step: it dies during step 13, after the checkpoint of step 10.
    results = launch("train", tmp_path / "run", {"die_after": 25, "dist_timeout": 60}, check=False, timeout=90)
    elapsed = time.monotonic() - start
    assert results[1].returncode == -9
    assert results[0].returncode != 0
    assert "RankFailure" in results[0].stderr and "rank 0 of 2" in results[0].stderr, results[0].stderr[-2000:]
    assert elapsed < 60
    last = latte_rs.Trainer.resume(tmp_path / "run" / "checkpoints" / "0000010")
    assert last.step_count == 10
    launch("train", tmp_path / "run", {"max_train_steps": 12, "resume_from_checkpoint": True}, world=1)
    assert latte_rs.Trainer.resume(tmp_path / "run" / "checkpoints" / "0000012").step_count == 12


def test_distributed_data_parallel_over_the_torch_module_equals_one_process(tmp_path):
    from latte_rs.torch import LatteModule

    launch("ddp", tmp_path / "ddp.npz")
    two = _load(tmp_path / "ddp.npz")
    m = LatteModule(latte_rs.LatteConfig(**W.CONFIG), seed=5)
    losses = W.official_steps(m, 0, 1)  # one process, the joint batches
    assert abs(losses[0] - losses[-1]) > 1e-4
    # DDP averages the ranks' gradients: the weights are those of the joint batch.
    want = {f"param/{k}": v.detach().numpy() for k, v in m.state_dict().items()}
    _assert_close_states(two, want, rtol=1e-5)


def test_data_shards_follow_distributed_sampler():
    from latte_rs.data.batching import shard

    n, world = 10, 4
    parts = [shard(n, 3, 0, r, world) for r in range(world)]
    assert all(len(p) == 3 for p in parts)  # ceil(10 / 4), padded by repeating the start
    flat = np.concatenate(parts)
    assert set(flat) == set(range(n))
    order = shard(n, 3, 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([p[:2] for p in parts])), np.sort(order[:8]))
    assert not np.array_equal(shard(n, 3, 1, 0, world), parts[0])  # a new order each epoch
    with pytest.raises(ValueError, match="rank"):
        shard(n, 3, 0, 4, world)
