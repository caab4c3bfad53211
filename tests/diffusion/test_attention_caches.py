"""Pyramid Attention Broadcast and FasterCache in the one sampling loop: which attention layers compute at which
step, predicted to the step by independent reimplementations of the rules (diffusers' hook semantics, written
from their description); FasterCache's unconditional-branch approximation recomputed in NumPy (its FFT bands)
along the trajectory; skipped work counted; settings that skip nothing equal to no cache bit for bit; same seed,
same numbers; every scheduler, with and without guidance, the class model in all four variants and with token
injection, the text-to-video transformer, long videos over windows; bad settings refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from diffusion.test_teacache import SCHEDULERS, T2V_CONFIG, class_model, models, run

import latte_rs

KINDS = ("spatial", "temporal", "cross")


def sites_per_pass(name: str) -> dict[str, int]:
    """Attention layers of each kind in one pass of the tiny models (depth 4: two spatial and two temporal
    attentions in every variant; the text model has two layers, each with a cross-attention)."""
    if name == "t2v":
        layers = T2V_CONFIG["num_layers"]
        return {"spatial": layers, "temporal": layers, "cross": layers}
    return {"spatial": 2, "temporal": 2, "cross": 0}


def inside(t: float, bounds) -> bool:
    return bounds[0] < t < bounds[1]


def predict_pab(timesteps, skip_ranges: dict, ranges: dict, sites: dict) -> list[dict[str, list[bool]]]:
    """PAB, per layer: the i-th call computes at i = 0, at every n-th call, and outside (low, high); otherwise it
    broadcasts its last output. A kind without n always computes."""
    steps = []
    for i, t in enumerate(timesteps):
        flags = {}
        for kind in KINDS:
            n = skip_ranges.get(kind)
            reuse = n is not None and i > 0 and inside(t, ranges[kind]) and i % n != 0
            if sites[kind]:
                flags[kind] = [not reuse] * sites[kind]
        steps.append(flags)
    return steps


def predict_fastercache(timesteps, guided: bool, cfg: dict, sites: dict):
    """FasterCache: the unconditional branch runs at i = 0, every n-th step and outside its range (always without
    guidance: there is none); a spatial/temporal layer reuses (extrapolates) inside its range except at every
    n-th call and the first, and only in a pass without the unconditional half. Cross-attention always computes."""
    uncond, steps = [], []
    for i, t in enumerate(timesteps):
        n_u = cfg["unconditional_batch_skip_range"]
        skip_uncond = guided and i > 0 and inside(t, cfg["unconditional_batch_timestep_skip_range"]) and i % n_u != 0
        uncond.append(not skip_uncond if guided else None)
        flags = {}
        for kind in KINDS:
            n = cfg.get(f"{kind}_attention_block_skip_range")
            in_range = kind != "cross" and inside(t, cfg[f"{kind}_attention_timestep_skip_range"])
            reuse = n is not None and in_range and i > 0 and i % n != 0 and (not guided or skip_uncond)
            if sites[kind]:
                flags[kind] = [not reuse] * sites[kind]
        steps.append(flags)
    return uncond, steps


def scheduler_timesteps(scheduler: str, steps: int = 12) -> list[float]:
    sched = SCHEDULERS[scheduler]()
    sched.set_timesteps(steps)
    return [float(t) for t in sched.timesteps]


def check_counts(report, sites: dict, name: str) -> None:
    """The totals are the per-step flags added up; every block ran at every step."""
    for kind in KINDS:
        flags = [f for step in report.attention for f in step.get(kind, [])]
        assert report.attention_computed[kind] == sum(flags)
        assert report.attention_skipped[kind] == len(flags) - sum(flags)
        assert report.attentions_per_pass[kind] == sites[kind]
    assert report.blocks_computed == len(report.computed) * report.blocks_per_pass
    assert report.blocks_skipped == 0 and all(report.computed)


PAB_SETTINGS = {"spatial": 2, "temporal": 3, "cross": 4}
PAB_RANGES = {"spatial": (100, 800), "temporal": (50, 900), "cross": (100, 950)}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", list(models()))
def test_pab_rule_predicts_which_attentions_compute(name: str, scheduler: str, guidance: float) -> None:
    model = models()[name]()
    pab = latte_rs.PyramidAttentionBroadcast(
        PAB_SETTINGS["spatial"], PAB_SETTINGS["temporal"], PAB_SETTINGS["cross"],
        spatial_attention_timestep_skip_range=PAB_RANGES["spatial"],
        temporal_attention_timestep_skip_range=PAB_RANGES["temporal"],
        cross_attention_timestep_skip_range=PAB_RANGES["cross"])
    out = run(model, scheduler, guidance, pab)
    report = pab.report
    timesteps = scheduler_timesteps(scheduler)
    assert report.timesteps == timesteps and report.policy == "pab"
    sites = sites_per_pass(name)
    assert report.attention == predict_pab(timesteps, PAB_SETTINGS, PAB_RANGES, sites)
    check_counts(report, sites, name)
    assert report.attention_skipped["spatial"] > 0 and report.cache_bytes > 0
    assert all(u is None for u in report.uncond_computed)
    assert np.all(np.isfinite(out)) and not np.array_equal(out, run(model, scheduler, guidance))


def test_pab_defaults_are_diffusers() -> None:
    pab = latte_rs.PyramidAttentionBroadcast()
    assert (pab.spatial_attention_block_skip_range, pab.temporal_attention_block_skip_range,
            pab.cross_attention_block_skip_range) == (2, None, None)
    assert pab.spatial_attention_timestep_skip_range == pab.cross_attention_timestep_skip_range == (100, 800)
    model = models()["t2v"]()
    run(model, "ddim", 3.0, pab, steps=20)
    timesteps = scheduler_timesteps("ddim", 20)
    report = pab.report
    assert report.attention == predict_pab(timesteps, {"spatial": 2}, {"spatial": (100, 800)}, sites_per_pass("t2v"))
    assert report.attention_skipped == {"spatial": 12, "temporal": 0, "cross": 0}  # 6 steps x 2 layers


FC_SETTINGS = dict(spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=3,
                   spatial_attention_timestep_skip_range=(-1, 681), temporal_attention_timestep_skip_range=(-1, 900),
                   unconditional_batch_skip_range=4, unconditional_batch_timestep_skip_range=(-1, 700))


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", list(models()))
def test_fastercache_rule_predicts_which_branches_and_attentions_compute(name: str, scheduler: str,
                                                                          guidance: float) -> None:
    model = models()[name]()
    cache = latte_rs.FasterCache(**FC_SETTINGS)
    out = run(model, scheduler, guidance, cache)
    report = cache.report
    timesteps = scheduler_timesteps(scheduler)
    sites = sites_per_pass(name)
    uncond, attention = predict_fastercache(timesteps, guidance > 1, FC_SETTINGS, sites)
    assert report.policy == "fastercache" and report.timesteps == timesteps
    assert report.uncond_computed == uncond
    assert report.attention == attention
    check_counts(report, sites, name)
    assert report.attention_skipped["spatial"] > 0 and report.attention_skipped["cross"] == 0
    if guidance > 1:
        assert report.uncond_skipped > 0
    assert np.all(np.isfinite(out)) and not np.array_equal(out, run(model, scheduler, guidance))


def test_fastercache_defaults_are_diffusers() -> None:
    cache = latte_rs.FasterCache()
    assert (cache.spatial_attention_block_skip_range, cache.temporal_attention_block_skip_range) == (2, None)
    assert cache.spatial_attention_timestep_skip_range == (-1, 681)
    assert cache.low_frequency_weight_update_timestep_range == (99, 901)
    assert cache.high_frequency_weight_update_timestep_range == (-1, 301)
    assert (cache.alpha_low_frequency, cache.alpha_high_frequency, cache.attention_weight) == (1.1, 1.1, 0.5)
    assert cache.unconditional_batch_skip_range == 5
    assert cache.unconditional_batch_timestep_skip_range == (-1, 641)


# --- FasterCache's unconditional branch, recomputed in NumPy --------------------------------------------------------

def bands(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The FasterCache code's split of (..., H, W) into low and high frequencies: the fft2 spectrum, fftshifted,
    inside / outside a disc of radius min(H, W) // 5 around the centre (written here from its description)."""
    h, w = x.shape[-2:]
    spectrum = np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1))
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    low = (xx - w // 2) ** 2 + (yy - h // 2) ** 2 <= (min(h, w) // 5) ** 2
    return spectrum * low, spectrum * ~low


@pytest.mark.parametrize("name", ["v1", "t2v"])
def test_the_unconditional_branch_is_the_conditional_plus_the_weighted_bands(name: str) -> None:
    """Along a DDIM trajectory stepped here, with the model called from Python on the full guided batch or on the
    conditional half, and the unconditional output approximated by the FFT formula (bands of the last measured
    difference, each weighted by alpha inside its range, the weights compounding over consecutive skips): the
    core's latents to float32 precision. Attention reuse is off, so that the model calls are plain."""
    model = models()[name]()
    steps, scale = 12, 3.0
    settings = dict(spatial_attention_block_skip_range=None, unconditional_batch_skip_range=4,
                    unconditional_batch_timestep_skip_range=(-1, 800),
                    low_frequency_weight_update_timestep_range=(99, 901),
                    high_frequency_weight_update_timestep_range=(-1, 500), alpha_low_frequency=1.3,
                    alpha_high_frequency=0.8)
    cache = latte_rs.FasterCache(**settings)
    rng = np.random.default_rng(0)
    if name == "t2v":
        noise = rng.standard_normal((2, 4, 3, 8, 8)).astype(np.float32)
        text = rng.standard_normal((2, 5, 12)).astype(np.float32)
        cond_args, uncond_args = (text,), (np.zeros_like(text),)
        pipe = latte_rs.LatteT2VPipeline(model, latte_rs.DDIMScheduler())
        core = pipe(prompt_embeds=text, negative_prompt_embeds=uncond_args[0], guidance_scale=scale, latents=noise,
                    num_inference_steps=steps, output_type="latent", progress=False, cache=cache).latents
        channels = slice(None), slice(0, 4)
    else:
        noise = rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)
        y = np.array([0, 2])
        cond_args, uncond_args = (y,), (np.full_like(y, model.config.num_classes),)
        core = latte_rs.sample(model, latte_rs.DDIMScheduler(), noise=noise, y=y, cfg_scale=scale,
                               num_inference_steps=steps, progress=False, cache=cache)
        channels = slice(None), slice(None), slice(0, 4)
    report = cache.report
    sched = latte_rs.DDIMScheduler()
    sched.set_timesteps(steps)
    x, low, high, skipped = noise.copy(), None, None, []
    for i, t in enumerate(sched.timesteps):
        t = int(t)
        skip = i > 0 and inside(t, settings["unconditional_batch_timestep_skip_range"]) and i % 4 != 0
        skipped.append(skip)
        if skip:
            cond = model(x, np.full(2, t), *cond_args)
            low = low * (1.3 if inside(t, (99, 901)) else 1.0)
            high = high * (0.8 if inside(t, (-1, 500)) else 1.0)
            cond_low, cond_high = bands(cond)
            shifted = np.fft.ifftshift(low + cond_low + high + cond_high, axes=(-2, -1))
            uncond = np.fft.ifft2(shifted).real.astype(np.float32)
        else:
            both = [np.concatenate([c, u]) for c, u in zip(cond_args, uncond_args, strict=True)]
            out = model(np.concatenate([x, x]), np.full(4, t), *both)
            cond, uncond = out[:2], out[2:]
            (ul, uh), (cl, ch) = bands(uncond), bands(cond)
            low, high = ul - cl, uh - ch
        c, u = cond[channels], uncond[channels]
        x = sched.step(u + scale * (c - u), t, x).prev_sample
    assert report.uncond_computed == [not s for s in skipped] and any(skipped)
    np.testing.assert_allclose(core, x, rtol=2e-4, atol=2e-4)


# --- skipping nothing, reproducibility, windows ------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", ["v1", "v3", "v4", "v1-tokens", "t2v"])
def test_settings_that_skip_nothing_are_the_uncached_output_bit_for_bit(name: str, guidance: float) -> None:
    model = models()[name]()
    for scheduler in ("ddim", "dpm"):
        uncached = run(model, scheduler, guidance)
        pab = latte_rs.PyramidAttentionBroadcast(1, 1, 1)
        np.testing.assert_array_equal(run(model, scheduler, guidance, pab), uncached)
        assert sum(pab.report.attention_skipped.values()) == 0
        assert sum(pab.report.attention_computed.values()) == 12 * sum(sites_per_pass(name).values())
        fc = latte_rs.FasterCache(spatial_attention_block_skip_range=1, temporal_attention_block_skip_range=1,
                                  unconditional_batch_skip_range=1)
        np.testing.assert_array_equal(run(model, scheduler, guidance, fc), uncached)
        assert sum(fc.report.attention_skipped.values()) == 0 and fc.report.uncond_skipped == 0


def test_same_seed_same_cache_same_numbers() -> None:
    model = models()["t2v"]()
    for make in (lambda: latte_rs.PyramidAttentionBroadcast(2, 2, 3), lambda: latte_rs.FasterCache()):
        a = run(model, "ddpm", 3.0, make(), seed=4)
        b = run(model, "ddpm", 3.0, make(), seed=4)
        c = run(model, "ddpm", 3.0, make(), seed=5)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_long_videos_keep_one_entry_per_layer_per_window() -> None:
    """Beyond the trained length the model runs over windows; each window's layers are their own sites."""
    model = class_model(1)
    frames = model.config.num_frames
    kwargs = dict(y=np.array([1]), cfg_scale=2.0, num_inference_steps=8, seed=0, progress=False,
                  num_frames=frames + frames // 2)
    uncached = latte_rs.sample(model, latte_rs.DDIMScheduler(), **kwargs)
    nothing = latte_rs.PyramidAttentionBroadcast(1, 1)
    np.testing.assert_array_equal(latte_rs.sample(model, latte_rs.DDIMScheduler(), cache=nothing, **kwargs),
                                  uncached)
    pab = latte_rs.PyramidAttentionBroadcast(2, 2)
    latte_rs.sample(model, latte_rs.DDIMScheduler(), cache=pab, **kwargs)
    windows = pab.report.attentions_per_pass["spatial"] // 2
    assert windows == 2 and pab.report.attentions_per_pass["temporal"] == 2 * windows
    assert pab.report.attention_skipped["spatial"] > 0


def test_pipelines_and_the_report_summary() -> None:
    pipe = latte_rs.LattePipeline(class_model(1), latte_rs.DDIMScheduler())
    out = pipe(class_labels=[1], num_inference_steps=10, guidance_scale=2.0, output_type="latent", progress=False,
               cache=latte_rs.FasterCache())
    summary = out.cache_report.summary()
    assert summary["policy"] == "fastercache" and summary["steps"] == 10 and summary["uncond_skipped"] > 0
    assert "FasterCache(" in repr(latte_rs.FasterCache()) and "PyramidAttentionBroadcast(" in repr(
        latte_rs.PyramidAttentionBroadcast())


# --- bad arguments ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "name"), [
    ({"spatial_attention_block_skip_range": 0}, "spatial_attention_block_skip_range"),
    ({"temporal_attention_block_skip_range": -2}, "temporal_attention_block_skip_range"),
    ({"cross_attention_block_skip_range": 0}, "cross_attention_block_skip_range"),
    ({"spatial_attention_timestep_skip_range": (800, 100)}, "spatial_attention_timestep_skip_range"),
    ({"cross_attention_timestep_skip_range": (float("nan"), 100)}, "cross_attention_timestep_skip_range"),
])
def test_bad_pab_settings_are_refused_by_name(kwargs, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: expected .*, got"):
        latte_rs.PyramidAttentionBroadcast(**kwargs)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"spatial_attention_block_skip_range": 0}, "spatial_attention_block_skip_range"),
    ({"unconditional_batch_skip_range": -1}, "unconditional_batch_skip_range"),
    ({"unconditional_batch_timestep_skip_range": (641, -1)}, "unconditional_batch_timestep_skip_range"),
    ({"low_frequency_weight_update_timestep_range": (1, float("inf"))}, "low_frequency_weight_update_timestep_range"),
    ({"alpha_low_frequency": float("nan")}, "alpha_low_frequency"),
    ({"attention_weight": float("inf")}, "attention_weight"),
])
def test_bad_fastercache_settings_are_refused_by_name(kwargs, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: expected .*, got"):
        latte_rs.FasterCache(**kwargs)


def test_a_wrong_cache_object_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="^cache: expected a latte_rs.TeaCache, latte_rs.PyramidAttentionBroadcast"):
        run(class_model(1), "ddim", 1.0, cache="pab", steps=2)
