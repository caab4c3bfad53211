"""Videos longer than the model was trained on (issue 32): sliding windows of the trained length over the frames,
the windows' outputs fused per frame with triangular weights, FreeNoise-style starting noise. Checked against an
independent NumPy fusion of the model's own per-window outputs, against sampling each window alone where windows
do not overlap, and bit for bit against the ordinary path within the trained length; every model kind and
variant; bad settings refused by name."""

from __future__ import annotations

import numpy as np
import pytest

import latte_rs
from conftest import perturbed
from latte_rs.tiny_t2v import TINY_T2V


def _model(variant: int = 1, frames: int = 4, **kw) -> latte_rs.LatteModel:
    cfg = latte_rs.LatteConfig.preset("Latte-S/8", num_frames=frames, input_size=16, in_channels=3, num_classes=3,
                                      variant=variant, **kw)
    return perturbed(latte_rs.LatteModel(cfg, seed=1))


def _triangle(window: int) -> np.ndarray:
    return np.minimum(np.arange(window) + 1, window - np.arange(window)).astype(np.float64)


def _starts(frames: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, frames - window + 1, stride))
    return starts if starts[-1] == frames - window else [*starts, frames - window]


@pytest.mark.parametrize("frames, stride", [(10, 2), (9, 3), (12, 4), (7, 1)])
def test_one_step_equals_an_independent_fusion_of_the_windows(frames, stride):
    """One DDIM step from given noise: the model on each window (its own forward), fused in NumPy with the
    triangular weights, then the scheduler's step, equals the windowed sampling loop."""
    model = _model()
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, frames, 3, 16, 16)).astype(np.float32)
    y = np.array([2])
    sched = latte_rs.DDIMScheduler(clip_sample=False)
    got = latte_rs.sample(model, sched, noise=noise, y=y, num_inference_steps=1, window_stride=stride,
                          progress=False)

    ref = latte_rs.DDIMScheduler(clip_sample=False)
    ref.set_timesteps(1)
    t = ref.timesteps[0]
    w = _triangle(4)
    fused, total = np.zeros((1, frames, 3, 16, 16)), np.zeros(frames)
    for s in _starts(frames, 4, stride):
        out = model.forward(noise[:, s:s + 4], np.array([t], dtype=np.float32), y)[:, :, :3]
        fused[:, s:s + 4] += w[None, :, None, None, None] * out
        total[s:s + 4] += w
    eps = (fused / total[None, :, None, None, None]).astype(np.float32)
    want = ref.step(eps, t, noise).prev_sample
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_windows_that_do_not_overlap_sample_as_separate_clips():
    """With the stride equal to the window and a whole number of windows, each window is an ordinary clip:
    deterministic DDIM over the whole video equals sampling each chunk alone."""
    model = _model()
    noise = np.random.default_rng(1).standard_normal((2, 12, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1])
    sched = latte_rs.DDIMScheduler(clip_sample=False)
    whole = latte_rs.sample(model, sched, noise=noise, y=y, num_inference_steps=4, window_stride=4, progress=False,
                            cfg_scale=2.0)
    for s in (0, 4, 8):
        alone = latte_rs.sample(model, sched, noise=noise[:, s:s + 4], y=y, num_inference_steps=4, progress=False,
                                cfg_scale=2.0)
        np.testing.assert_allclose(whole[:, s:s + 4], alone, rtol=1e-5, atol=1e-6)


def test_within_the_trained_length_nothing_changes_bit_for_bit():
    model = _model()
    sched = latte_rs.DDPMScheduler()
    base = latte_rs.sample(model, sched, y=np.array([1]), num_inference_steps=5, seed=3, progress=False)
    for kw in (dict(num_frames=4), dict(num_frames=4, window_stride=1), dict(long_video="windows", window_stride=3)):
        again = latte_rs.sample(model, sched, y=np.array([1]), num_inference_steps=5, seed=3, progress=False, **kw)
        assert np.array_equal(base, again), kw


@pytest.mark.parametrize("kw", [dict(variant=1), dict(variant=2), dict(variant=3), dict(variant=4),
                                dict(variant=1, patch_embed="tubelet", tubelet_size=2),
                                dict(variant=1, temporal_position="rope"), dict(variant=1, injection="tokens")])
def test_every_variant_samples_long_videos_reproducibly(kw):
    model = _model(**{k: v for k, v in kw.items()})
    sched = latte_rs.DDPMScheduler()
    run = dict(y=np.array([0]), num_inference_steps=3, seed=5, progress=False, num_frames=10, window_stride=2,
               cfg_scale=1.5)
    out = latte_rs.sample(model, sched, **run)
    assert out.shape == (1, 10, 3, 16, 16) and np.isfinite(out).all()
    assert np.array_equal(out, latte_rs.sample(model, sched, **run))
    assert not np.array_equal(out, latte_rs.sample(model, sched, **{**run, "seed": 6}))


def test_the_noise_is_rescheduled_freenoise_style():
    """A model that returns zeros makes DDIM's x0 estimate a fixed multiple of the noise frame by frame, so the
    sampled video shows the starting noise: the first window is drawn, every later run of `stride` frames is the
    run one window back, shuffled."""
    model = _model()
    state = {k: np.zeros_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    out = latte_rs.sample(model, latte_rs.DDIMScheduler(clip_sample=False), y=np.array([0]), num_frames=16,
                          num_inference_steps=1, window_stride=2, seed=4, progress=False)
    frames = [out[0, f].tobytes() for f in range(16)]
    assert len(set(frames[:4])) == 4
    for s in range(4, 16, 2):
        assert sorted(frames[s:s + 2]) == sorted(frames[s - 4:s - 2]), s


def test_the_text_to_video_pipeline_makes_32_frames_of_the_built_in_model():
    pipe = latte_rs.LatteT2VPipeline.from_pretrained(TINY_T2V)
    out = pipe("a red square moving right", video_length=32, num_inference_steps=4, output_type="uint8",
               progress=False)
    assert out.frames.shape == (1, 32, 16, 16, 3)
    eight = pipe("a red square moving right", video_length=8, num_inference_steps=4, output_type="uint8",
                 progress=False)
    base = pipe("a red square moving right", num_inference_steps=4, output_type="uint8", progress=False)
    assert np.array_equal(eight.frames, base.frames)


def test_bad_long_video_settings_are_refused_by_name():
    model = _model()
    sched = latte_rs.DDPMScheduler()
    y = np.array([0])
    with pytest.raises(ValueError, match='long_video: expected "windows" or "fifo", got "loop"'):
        latte_rs.sample(model, sched, y=y, num_frames=8, long_video="loop", progress=False)
    with pytest.raises(ValueError, match="window_stride: expected an int in \\[1, 4\\]"):
        latte_rs.sample(model, sched, y=y, num_frames=8, window_stride=5, progress=False)
    with pytest.raises(ValueError, match="window_stride"):
        latte_rs.sample(model, sched, y=y, num_frames=8, window_stride=0, progress=False)
    with pytest.raises(ValueError, match="x: expected"):  # fewer frames: the model's own shape check
        latte_rs.sample(model, sched, y=y, num_frames=3, progress=False)
    noise = np.zeros((1, 8, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="num_frames: 12 asked for, but the noise has 8 frames"):
        latte_rs.sample(model, sched, y=y, noise=noise, num_frames=12, progress=False)


def test_the_cli_samples_long_videos_of_the_built_in_model(tmp_path, capsys):
    from latte_rs import cli

    assert cli.main(["sample", "--prompt", "a blue disc moving up", "--video-length", "16", "--steps", "3",
                     "--format", "png", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert '"frames": 16' in capsys.readouterr().out
    assert cli.main(["sample", "--video-length", "12", "--window-stride", "2", "--steps", "2", "--classes", "1",
                     "--format", "png", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert '"frames": 12' in capsys.readouterr().out
    assert cli.main(["sample", "--prompt", "a red disc", "--video-length", "16", "--long-video", "fifo",
                     "--steps", "8", "--format", "png", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert '"frames": 16' in capsys.readouterr().out
    assert cli.main(["sample", "--video-length", "10", "--long-video", "fifo", "--no-lookahead", "--steps", "4",
                     "--classes", "1", "--format", "png", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert '"frames": 10' in capsys.readouterr().out
    assert cli.main(["sample", "--prompt", "a red disc", "--video-length", "16", "--long-video", "fifo",
                     "--window-stride", "2", "--output-dir", str(tmp_path), "--no-progress"]) == 2
    assert "window_stride" in capsys.readouterr().err


@pytest.mark.parametrize("t2v", [False, True])
def test_teacache_composes_with_windows(t2v):
    """TeaCache over a long video decides once per step for the whole video (the windows' modulated inputs side
    by side): threshold 0 is the uncached windowed output bit for bit; a positive threshold skips steps, each
    skipped step skipping every window's blocks; same seed, same output."""
    if t2v:
        pipe = latte_rs.LatteT2VPipeline.from_pretrained(TINY_T2V)

        def run(cache):
            return pipe("a red square moving right", video_length=20, num_inference_steps=12, output_type="latent",
                        progress=False, cache=cache).frames
    else:
        model = _model(learn_sigma=True)
        # adaLN-Zero starts with a zero final layer (an output of zeros whatever the cache does): random weights.
        rng = np.random.default_rng(0)
        model.load_state_dict({k: (0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
                               for k, v in model.state_dict().items()})
        sched = latte_rs.DDIMScheduler(clip_sample=False)

        def run(cache):
            return latte_rs.sample(model, sched, y=np.array([1]), num_frames=10, window_stride=2, cfg_scale=2.0,
                                   num_inference_steps=12, seed=2, progress=False, cache=cache)
    plain = run(None)
    zero = latte_rs.TeaCache(threshold=0.0, coefficients=[1.0, 0.0])
    assert np.array_equal(run(zero), plain)
    cached = latte_rs.TeaCache(threshold=0.6, coefficients=[1.0, 0.0])
    got = run(cached)
    report = cached.report
    skipped = report.steps_skipped
    assert 0 < skipped < 12
    windows = len(_starts(20, 8, 4)) if t2v else len(_starts(10, 4, 2))
    assert report.blocks_per_pass % windows == 0
    assert report.blocks_skipped == skipped * report.blocks_per_pass
    assert report.blocks_computed == (12 - skipped) * report.blocks_per_pass
    assert np.isfinite(got).all() and not np.array_equal(got, plain)
    assert np.array_equal(run(latte_rs.TeaCache(threshold=0.6, coefficients=[1.0, 0.0])), got)
