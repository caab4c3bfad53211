"""FIFO denoising (issue 32): one timestep per frame through every model kind, and FIFO-Diffusion's diagonal
denoising checked against an independent Python queue built on the model's own forward pass and the scheduler's
own step; bounded memory of long runs; bad settings refused by name."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import latte_rs
from conftest import perturbed
from latte_rs.tiny_t2v import TINY_T2V


def _model(variant: int = 1, frames: int = 4, **kw) -> latte_rs.LatteModel:
    cfg = latte_rs.LatteConfig.preset("Latte-S/8", num_frames=frames, input_size=16, in_channels=3, num_classes=3,
                                      variant=variant, **kw)
    return perturbed(latte_rs.LatteModel(cfg, seed=1))


KINDS = [dict(variant=1), dict(variant=2), dict(variant=3), dict(variant=4),
         dict(variant=1, patch_embed="tubelet", tubelet_size=2), dict(variant=3, temporal_position="rope")]


@pytest.mark.parametrize("kw", KINDS)
def test_one_timestep_per_frame_equal_everywhere_is_one_per_clip(kw):
    """t (B, F) holding the clip's timestep in every frame gives the (B,) output (the per-frame path broadcasts
    its modulation without the fused kernels, so equal to rounding)."""
    model = _model(**kw)
    tokens = 4 // (2 if kw.get("patch_embed") == "tubelet" else 1)
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 2])
    t = np.array([700.0, 30.0], np.float32)
    one = model.forward(x, t, y)
    per_frame = model.forward(x, np.repeat(t[:, None], tokens, axis=1), y)
    np.testing.assert_allclose(per_frame, one, rtol=1e-5, atol=1e-5)
    other = model.forward(x, np.array([[700.0] * tokens, [30.0] * (tokens - 1) + [900.0]], np.float32), y)
    assert np.array_equal(other[0], per_frame[0]) or np.allclose(other[0], per_frame[0], atol=1e-5)
    assert not np.allclose(other[1], per_frame[1], atol=1e-3)


@pytest.mark.parametrize("variant", [1, 3, 4])
def test_each_frame_carries_its_own_timestep_through_time(variant):
    """Without temporal positions the network is equivariant under a permutation of the frames: frames and their
    timesteps permuted together permute the output. A per-frame modulation applied along the wrong axis of a
    temporal sequence (or a frame's timestep given to another frame) breaks it."""
    model = _model(variant)
    state = model.state_dict()
    state["temp_embed"] = np.zeros_like(state["temp_embed"])
    model.load_state_dict(state)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 3, 16, 16)).astype(np.float32)
    t = np.array([[10.0, 400.0, 650.0, 990.0]], np.float32)
    y = np.array([1])
    perm = [2, 0, 3, 1]
    out = model.forward(x, t, y)
    permuted = model.forward(x[:, perm], t[:, perm], y)
    np.testing.assert_allclose(permuted, out[:, perm], rtol=1e-4, atol=1e-5)


def test_the_text_to_video_transformer_takes_one_timestep_per_frame():
    pipe = latte_rs.LatteT2VPipeline.from_pretrained(TINY_T2V)
    model = pipe.transformer
    cfg = model.config
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, cfg["in_channels"], cfg["video_length"], 16, 16)).astype(np.float32)
    caption = rng.standard_normal((1, 6, cfg["caption_channels"])).astype(np.float32)
    t = np.array([500.0], np.float32)
    one = model(x, t, caption)
    per_frame = model(x, np.full((1, cfg["video_length"]), 500.0, np.float32), caption)
    np.testing.assert_allclose(per_frame, one, rtol=1e-5, atol=1e-5)
    # Without temporal attention frames are independent: frame i at its own timestep is frame i of the pass at
    # that timestep for all.
    ts = np.linspace(20, 980, cfg["video_length"]).astype(np.float32)
    frames = model(x, ts[None], caption, enable_temporal_attentions=False)
    for i in (0, 3, cfg["video_length"] - 1):
        alone = model(x, ts[i:i + 1], caption, enable_temporal_attentions=False)
        np.testing.assert_allclose(frames[:, :, i], alone[:, :, i], rtol=1e-5, atol=1e-5)


def fifo_reference(model, y, frames, steps, lookahead, seed, scheduler_factory):
    """FIFO-Diffusion written out in NumPy over the model's own forward pass and the scheduler's own step: the
    first clip sampled as usual; a queue of `steps` frames, frame j at the j-th lowest level, initialised with the
    clip's frames noised diagonally (the slots ahead of the clip's last `window` hold its first frame); each
    iteration runs windows of the trained length with one timestep per frame (with lookahead: half a window apart,
    after `window/2` frames of context, the frames that left last, at the lowest level), each frame updated by the
    window in whose later part it sits, then the head leaves (into the video after the warm-up) and fresh noise
    enters. The random draws follow the generator in the order the method documents."""
    w = model.config.num_frames
    g = latte_rs.Generator(seed)
    b = len(y)
    noise = g.randn([b, frames, 3, 16, 16])
    sched = scheduler_factory()
    queue_len = max(steps, w)
    first = latte_rs.sample(model, scheduler_factory(), noise=noise[:, :w], y=y, num_inference_steps=queue_len,
                            progress=False)
    sched.set_timesteps(queue_len)
    levels = list(np.asarray(sched.timesteps)[::-1])
    stride = w // 2 if lookahead and w % 2 == 0 and w >= 2 else w
    ctx = w - stride
    queue = []
    for j in range(queue_len):
        clean = first[:, [max(0, j - (queue_len - w))]]
        queue.append(np.asarray(sched.add_noise(clean, g.randn([b, 1, 3, 16, 16]), np.array([levels[j]]))))
    context = [first[:, [0]]] * ctx
    video, k = [], 0
    while len(video) < frames:
        slots = context + queue
        slot_t = [levels[0]] * ctx + levels
        new = list(queue)
        for m in range(math.ceil(queue_len / stride)):
            st = min(m * stride, ctx + queue_len - w)
            x = np.concatenate(slots[st:st + w], axis=1)
            t = np.array([slot_t[st:st + w]] * b, np.float32)
            out = model.forward(x, t, y)[:, :, :3]
            for j in range(m * stride, min((m + 1) * stride, queue_len)):
                p = j + ctx - st
                new[j] = np.asarray(sched.step(out[:, [p]], levels[j], queue[j]).prev_sample)
        queue = new
        head = queue.pop(0)
        if k >= queue_len - w:
            video.append(head)
        if ctx:
            context = context[1:] + [head]
        entering = k + w
        queue.append(noise[:, [entering]] if entering < frames else g.randn([b, 1, 3, 16, 16]))
        k += 1
    return np.concatenate(video, axis=1)


@pytest.mark.parametrize("lookahead, steps, frames", [(True, 6, 11), (False, 6, 11), (True, 4, 9), (False, 5, 8)])
def test_fifo_equals_an_independent_queue(lookahead, steps, frames):
    model = _model()
    y = np.array([2, 0])
    ddim = lambda: latte_rs.DDIMScheduler(clip_sample=False)  # noqa: E731
    got = latte_rs.sample(model, ddim(), 2, y=y, num_frames=frames, num_inference_steps=steps, long_video="fifo",
                          lookahead_denoising=lookahead, seed=7, progress=False)
    want = fifo_reference(model, y, frames, steps, lookahead, 7, ddim)
    assert got.shape == (2, frames, 3, 16, 16)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "euler", "dpm"])
def test_fifo_runs_every_scheduler_with_guidance_reproducibly(scheduler):
    """Each frame carries its own copy of the scheduler through its steps, so multistep solvers keep their own
    history per frame."""
    make = {"ddpm": latte_rs.DDPMScheduler, "ddim": latte_rs.DDIMScheduler,
            "euler": latte_rs.EulerDiscreteScheduler, "dpm": latte_rs.DPMSolverMultistepScheduler}[scheduler]
    model = _model()
    run = dict(y=np.array([1]), num_frames=10, num_inference_steps=6, long_video="fifo", seed=3, cfg_scale=2.0,
               progress=False)
    out = latte_rs.sample(model, make(), **run)
    assert out.shape == (1, 10, 3, 16, 16) and np.isfinite(out).all()
    assert np.array_equal(out, latte_rs.sample(model, make(), **run))
    assert not np.array_equal(out, latte_rs.sample(model, make(), **{**run, "seed": 4}))


@pytest.mark.parametrize("kw", [dict(variant=2), dict(variant=4), dict(variant=1, patch_embed="tubelet",
                                                                        tubelet_size=2)])
def test_fifo_samples_the_other_variants(kw):
    model = _model(**kw)
    out = latte_rs.sample(model, latte_rs.DDIMScheduler(), y=np.array([0]), num_frames=12, num_inference_steps=6,
                          long_video="fifo", seed=1, progress=False)
    assert out.shape == (1, 12, 3, 16, 16) and np.isfinite(out).all()


def test_fifo_within_the_trained_length_changes_nothing():
    model = _model()
    sched = latte_rs.DDPMScheduler()
    base = latte_rs.sample(model, sched, y=np.array([1]), num_inference_steps=5, seed=3, progress=False)
    again = latte_rs.sample(model, sched, y=np.array([1]), num_inference_steps=5, seed=3, progress=False,
                            long_video="fifo", num_frames=4)
    assert np.array_equal(base, again)


def test_fifo_of_the_text_to_video_pipeline():
    pipe = latte_rs.LatteT2VPipeline.from_pretrained(TINY_T2V)
    run = dict(video_length=20, num_inference_steps=8, output_type="uint8", progress=False, long_video="fifo")
    out = pipe("a red square moving right", **run)
    assert out.frames.shape == (1, 20, 16, 16, 3)
    assert np.array_equal(out.frames, pipe("a red square moving right", **run).frames)


def test_bad_fifo_settings_are_refused_by_name():
    model = _model()
    sched = latte_rs.DDIMScheduler()
    y = np.array([0])
    run = dict(y=y, num_frames=8, progress=False)
    with pytest.raises(ValueError, match="window_stride: expected nothing with long_video=\"fifo\""):
        latte_rs.sample(model, sched, long_video="fifo", window_stride=2, **run)
    with pytest.raises(ValueError, match="lookahead_denoising: FIFO's option"):
        latte_rs.sample(model, sched, long_video="windows", lookahead_denoising=True, **run)
    with pytest.raises(ValueError, match="cache: not with long_video=\"fifo\""):
        latte_rs.sample(model, sched, long_video="fifo", cache=latte_rs.TeaCache(0.1), **run)
    with pytest.raises(ValueError, match="injection \"tokens\""):
        latte_rs.sample(_model(injection="tokens"), sched, long_video="fifo", **run)
    tubelet = _model(patch_embed="tubelet", tubelet_size=2)
    with pytest.raises(ValueError, match="num_frames: expected a multiple of 2"):
        latte_rs.sample(tubelet, sched, y=y, num_frames=9, long_video="fifo", progress=False)
    with pytest.raises(ValueError, match="t: expected shape \\(1,\\) \\(one timestep per clip\\) or \\(1, 4\\)"):
        model.forward(np.zeros((1, 4, 3, 16, 16), np.float32), np.zeros((1, 3), np.float32), y)


_PEAK = """
import json, resource, sys
import latte_rs
from latte_rs import tiny_t2v
method, frames = sys.argv[1], int(sys.argv[2])
tiny_t2v.generate(["a green disc moving right"], video_length=frames, num_inference_steps=8, long_video=method,
                  progress=False)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


@pytest.mark.parametrize("method", ["windows", "fifo"])
def test_memory_of_a_128_frame_run_is_bounded(method):
    """Peak memory does not grow with the frame count: 128 frames of the built-in text-to-video model take at
    most 48 MiB more than 16 (the video's latents and frames are a few MiB; one window's activations, or the
    queue's, are the rest)."""
    peaks = {}
    for frames in (16, 128):
        out = subprocess.run([sys.executable, "-c", _PEAK, method, str(frames)], capture_output=True, text=True,
                             check=True)
        peaks[frames] = json.loads(out.stdout.strip().splitlines()[-1]) / 1024  # KiB -> MiB
    assert peaks[128] - peaks[16] <= 48, peaks
