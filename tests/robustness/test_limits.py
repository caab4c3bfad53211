"""Memory limits: a workload that cannot fit is a MemoryError naming its estimate and the limit, never an abort
(issue 30).

Each case runs in a child process, so that a regression (the allocator aborting the interpreter with SIGABRT, or a
request for hundreds of GB) fails the test instead of ending the test run. Process limits (``ulimit -v`` /
``ulimit -d``, what batch schedulers set) are applied to the child with ``preexec_fn``, a little above what the
child uses after importing latte_rs. The cgroup v1 and v2 readers are unit-tested in Rust (src/limits.rs) on
directories laid out like /sys/fs/cgroup.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import T2V_VIDEO, TINY_VAE

TESTS = Path(__file__).resolve().parents[1]
# What the child prints when the call raised MemoryError; anything else (a result, another exception, a signal)
# fails the test with the child's output.
PRELUDE = """
import sys
import numpy as np
import latte_rs
sys.path.insert(0, {tests!r})
from conftest import tiny_config
"""
REPORT = """
try:
{body}
    print("no error")
except MemoryError as e:
    print("MemoryError:", e)
"""
LIMITS = {"RLIMIT_AS": ("VmSize", resource.RLIMIT_AS), "RLIMIT_DATA": ("VmData", resource.RLIMIT_DATA)}
# Room above the child's own use: enough for the tiny models and a batch's input, far below Latte-XL/2's 2.7 GB.
MARGIN = 1 << 30


def child_source(body: str) -> str:
    return PRELUDE.format(tests=str(TESTS)) + REPORT.format(body=textwrap.indent(textwrap.dedent(body), "    "))


def baseline(field: str) -> int:
    """Bytes of `field` (/proc/self/status) in a child that has imported latte_rs and run a tiny model."""
    probe = child_source("latte_rs.LatteModel(tiny_config(), seed=0)") + (
        f"print([l.split()[1] for l in open('/proc/self/status') if l.startswith('{field}:')][0])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1]) * 1024


def run_child(body: str, limit: str | None = None) -> str:
    """Runs `body` in a child (under `limit` set MARGIN above the child's use) and returns its MemoryError."""
    preexec = None
    if limit is not None:
        field, which = LIMITS[limit]
        cap = baseline(field) + MARGIN

        def preexec() -> None:
            resource.setrlimit(which, (cap, resource.getrlimit(which)[1]))

    env = dict(os.environ, RUST_BACKTRACE="0")
    out = subprocess.run([sys.executable, "-c", child_source(body)], preexec_fn=preexec, capture_output=True,
                         text=True, timeout=600, env=env)
    detail = f"exit status {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr[-2000:]}"
    assert out.returncode == 0, detail  # not SIGABRT (-6) nor the OOM killer (-9)
    assert "MemoryError:" in out.stdout, detail
    return out.stdout.split("MemoryError:", 1)[1].strip()


needs_linux_limits = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


@needs_linux_limits
@pytest.mark.parametrize("limit", list(LIMITS))
def test_building_a_model_larger_than_a_process_limit_is_a_memory_error(limit):
    msg = run_child('latte_rs.LatteModel(latte_rs.LatteConfig.preset("Latte-XL/2"), seed=0)', limit)
    assert "parameters need more than" in msg and limit in msg, msg


@needs_linux_limits
@pytest.mark.parametrize("limit", list(LIMITS))
def test_a_batch_larger_than_a_process_limit_is_a_memory_error(limit):
    # 2^16 clips of the tiny model: 256 MiB of latents, more than 3 GiB of activations.
    body = """
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    model(np.zeros((65536, 4, 4, 8, 8), np.float32), np.zeros(65536, np.int64))
    """
    msg = run_child(body, limit)
    assert "a forward pass on latents of shape [65536, 4, 4, 8, 8] needs about" in msg and limit in msg, msg


@needs_linux_limits
@pytest.mark.parametrize("limit", list(LIMITS))
def test_sampling_a_batch_larger_than_a_process_limit_is_a_memory_error(limit):
    body = """
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    latte_rs.sample(model, latte_rs.DDIMScheduler(), 65536, num_inference_steps=2, progress=False)
    """
    msg = run_child(body, limit)
    assert "needs about" in msg and limit in msg, msg


def test_text_to_video_attention_over_non_square_latents_is_estimated():
    # One row of 2^19 patches per frame: spatial attention scores of 2^38 values per (frame, head), 1 TiB, which
    # the estimate missed (it counted tokens × width), so the kernel asked for its score buffer and aborted.
    body = f"""
    model = latte_rs.LatteT2VTransformer.from_pretrained({str(T2V_VIDEO)!r})
    x = np.zeros((1, 4, 4, 2, 2**20), np.float32)
    model(x, np.array([3]), np.zeros((1, 3, 12), np.float32))
    """
    msg = run_child(body)
    assert "a forward pass on latents of shape [1, 4, 4, 2, 1048576] needs about" in msg, msg


@needs_linux_limits
@pytest.mark.parametrize("limit", list(LIMITS))
def test_text_to_video_cross_attention_over_a_long_caption_is_estimated(limit):
    # 2^21 caption tokens for each frame's 64 patches: 2^27 cross-attention scores per (frame, head) and the
    # caption projected once per frame, about 2 GB that the estimate (latents only) did not see.
    body = f"""
    model = latte_rs.LatteT2VTransformer.from_pretrained({str(T2V_VIDEO)!r})
    caption = np.zeros((1, 2**21, 12), np.float32)
    model(np.zeros((1, 4, 4, 16, 16), np.float32), np.array([3]), caption)
    """
    msg = run_child(body, limit)
    assert "encoder_hidden_states of shape [1, 2097152, 12]" in msg and "needs about" in msg and limit in msg, msg


def test_vae_attention_of_wide_frames_is_estimated():
    # Latents one row of 2^17 wide: the mid-block attention over 2^18 positions has 2^36 scores (256 GiB) that
    # the estimate (activations only) missed.
    body = f"""
    vae = latte_rs.VideoVAE.from_pretrained({str(TINY_VAE)!r})
    vae.decode(np.zeros((1, 4, 2, 2**17), np.float32))
    """
    msg = run_child(body)
    assert "the VAE on latents of shape [1, 4, 2, 131072] needs about" in msg, msg
