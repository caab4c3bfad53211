"""TeaCache in the one sampling loop: which steps compute, predicted to the step by an independent reimplementation
of the rule; the watched signal recomputed in NumPy along an uncached trajectory; skipped work really skipped;
threshold 0 equal to no cache bit for bit; reproducibility; every scheduler, with and without guidance; the class
model in all four variants and the text-to-video transformer; coefficients from the call, the model or its
``teacache.json``; fitting; bad arguments refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

import latte_rs
from conftest import perturbed, tiny_config

#: An identity rescaling (the raw change is what accumulates), so that thresholds are easy to pick.
IDENTITY = [1.0, 0.0]


def class_model(variant: int = 1, injection: str = "adaln"):
    cfg = tiny_config(num_classes=3, variant=variant, injection=injection)
    return perturbed(latte_rs.LatteModel(cfg, seed=variant))


T2V_CONFIG = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                  cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=12, video_length=3)


def t2v_model():
    return perturbed(latte_rs.LatteT2VTransformer(T2V_CONFIG, seed=0))


SCHEDULERS = {
    "ddpm": lambda: latte_rs.DDPMScheduler(),
    "ddim": lambda: latte_rs.DDIMScheduler(),
    "dpm": lambda: latte_rs.DPMSolverMultistepScheduler(),
}


def run(model, scheduler: str, guidance: float, cache=None, steps: int = 12, seed: int = 3) -> np.ndarray:
    """Samples two clips with `model` (a class model with labels, or the text model with caption features)."""
    sched = SCHEDULERS[scheduler]()
    if isinstance(model, latte_rs.LatteModel):
        return latte_rs.sample(model, sched, 2, y=np.array([0, 2]), cfg_scale=guidance, num_inference_steps=steps,
                               seed=seed, progress=False, cache=cache)
    rng = np.random.default_rng(7)
    text = rng.standard_normal((2, 5, 12)).astype(np.float32)
    negative = np.zeros_like(text)
    pipe = latte_rs.LatteT2VPipeline(model, sched)
    return pipe(prompt_embeds=text, negative_prompt_embeds=negative, guidance_scale=guidance,
                num_inference_steps=steps, seed=seed, output_type="latent", progress=False, cache=cache).latents


def predict_computed(input_changes, coefficients, threshold: float, input_range=None) -> list[bool]:
    """TeaCache's rule, written from the paper's description (and its Latte script): the first and last step
    compute; otherwise the rescaled change (the change clamped into ``input_range`` first) accumulates, and a
    step is skipped while the sum is below the threshold; a computed step resets the sum. Threshold 0 skips
    nothing."""
    n = len(input_changes)
    computed, accumulated = [], 0.0
    for i, change in enumerate(input_changes):
        if i == 0 or i == n - 1:
            compute = True
        else:
            if input_range is not None:
                change = min(max(change, input_range[0]), input_range[1])
            accumulated += float(np.polyval(coefficients, change))
            compute = not (threshold > 0 and accumulated < threshold)
        if compute:
            accumulated = 0.0
        computed.append(compute)
    return computed


def models():
    return {
        "v1": lambda: class_model(1),
        "v2": lambda: class_model(2),
        "v3": lambda: class_model(3),
        "v4": lambda: class_model(4),
        "v1-tokens": lambda: class_model(1, "tokens"),
        "t2v": t2v_model,
    }


def blocks_per_pass(name: str) -> int:
    if name == "t2v":
        return 2 * T2V_CONFIG["num_layers"]  # a spatial and a temporal block per layer
    return 4 if name in ("v1", "v2", "v1-tokens") else 2  # V3/V4 put both attentions in one block: depth/2


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", list(models()))
def test_the_rule_predicts_which_steps_compute(name: str, scheduler: str, guidance: float) -> None:
    model = models()[name]()
    probe = latte_rs.TeaCache(0.0, coefficients=IDENTITY)
    run(model, scheduler, guidance, probe)
    changes = [c for c in probe.report.input_changes[1:]]
    assert all(c is not None and c > 0 for c in changes)
    # A threshold that skips some steps but not all: a few times a typical step's change.
    threshold = 2.5 * float(np.median(changes))
    cache = latte_rs.TeaCache(threshold, coefficients=IDENTITY)
    out = run(model, scheduler, guidance, cache)
    report = cache.report
    assert report.computed == predict_computed(report.input_changes, IDENTITY, threshold)
    assert report.input_changes[0] is None and report.computed[0] and report.computed[-1]
    assert 0 < report.steps_skipped < len(report.computed) - 2
    # Skipped work is skipped: the block calls that ran are counted where they run.
    assert report.blocks_per_pass == blocks_per_pass(name)
    assert report.blocks_computed == report.steps_computed * report.blocks_per_pass
    assert report.blocks_skipped == report.steps_skipped * report.blocks_per_pass
    assert report.cache_bytes > 0
    uncached = run(model, scheduler, guidance)
    assert np.all(np.isfinite(out)) and not np.array_equal(out, uncached)


def test_the_change_is_clamped_into_the_input_range() -> None:
    """A polynomial that is negative below its range would skip every step if evaluated there."""
    model = class_model(2)
    probe = latte_rs.TeaCache(0.0, coefficients=IDENTITY)
    run(model, "ddim", 2.0, probe)
    top = max(probe.report.input_changes[1:])
    coefficients, input_range = [1.0, -top], [top + 0.1, top + 1.0]  # <= 0 at every change seen; 0.1 in range
    cache = latte_rs.TeaCache(0.35, coefficients=coefficients, input_range=input_range)
    run(model, "ddim", 2.0, cache)
    report = cache.report
    assert report.input_range == input_range
    assert report.computed == predict_computed(report.input_changes, coefficients, 0.35, input_range)
    assert all(r == pytest.approx(0.1) for r in report.rescaled[1:])
    assert report.computed[:5] == [True, False, False, False, True]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", ["v1", "v3", "v4", "v1-tokens", "t2v"])
def test_threshold_zero_is_the_uncached_output_bit_for_bit(name: str, guidance: float) -> None:
    model = models()[name]()
    for scheduler in ("ddim", "ddpm"):
        cache = latte_rs.TeaCache(0.0)
        np.testing.assert_array_equal(run(model, scheduler, guidance, cache), run(model, scheduler, guidance))
        assert cache.report.steps_skipped == 0 and cache.report.blocks_skipped == 0


def test_same_seed_same_cache_same_numbers() -> None:
    model = class_model(1)
    a = run(model, "ddpm", 2.0, latte_rs.TeaCache(0.05, coefficients=IDENTITY), seed=4)
    b = run(model, "ddpm", 2.0, latte_rs.TeaCache(0.05, coefficients=IDENTITY), seed=4)
    c = run(model, "ddpm", 2.0, latte_rs.TeaCache(0.05, coefficients=IDENTITY), seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --- the watched signal, recomputed in NumPy ----------------------------------------------------------------------

def timestep_features(t: np.ndarray, dim: int = 256) -> np.ndarray:
    """DiT's sinusoidal timestep features: [cos, sin] of t · 10000^(-k/half)."""
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    args = t[:, None].astype(np.float64) * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def first_block_input(state: dict, cfg, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first (spatial) block's modulated input of a variant-1 adaLN Latte, from its state dict alone:
    patch embedding + positions, t + y conditioning, adaLN shift/scale, LayerNorm without affine (eps 1e-6)."""
    b, f, c, h, w = x.shape
    p, d = cfg.patch_size, cfg.hidden_size
    patches = x.reshape(b, f, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4, 6).reshape(b, f, -1, c * p * p)
    weight = state["x_embedder.proj.weight"].reshape(d, -1)
    tokens = patches @ weight.T + state["x_embedder.proj.bias"] + state["pos_embed"][0]
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    hidden = silu(timestep_features(t) @ state["t_embedder.mlp.0.weight"].T + state["t_embedder.mlp.0.bias"])
    t_emb = hidden @ state["t_embedder.mlp.2.weight"].T + state["t_embedder.mlp.2.bias"]
    cond = t_emb + state["y_embedder.embedding_table.weight"][y]  # (B, D)
    mods = silu(cond) @ state["blocks.0.adaLN_modulation.1.weight"].T + state["blocks.0.adaLN_modulation.1.bias"]
    shift, scale = mods[:, :d], mods[:, d:2 * d]
    mean = tokens.mean(-1, keepdims=True)
    var = tokens.var(-1, keepdims=True)
    normed = (tokens - mean) / np.sqrt(var + 1e-6)
    return normed * (1 + scale[:, None, None]) + shift[:, None, None]


def test_the_watched_signal_is_the_first_blocks_modulated_input() -> None:
    """Along an uncached DDIM trajectory stepped here (model calls and scheduler steps from Python), the relative
    L1 change of the NumPy first-block input equals what the core's report measured, step by step, with guidance
    (the decision input is the whole [cond | uncond] batch)."""
    model = class_model(1)
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    cfg, steps, scale = model.config, 8, 3.0
    noise = np.random.default_rng(0).standard_normal((2, 4, 4, 8, 8)).astype(np.float32)
    y = np.array([0, 2])
    cache = latte_rs.TeaCache(0.0, coefficients=IDENTITY)
    core = latte_rs.sample(model, latte_rs.DDIMScheduler(), noise=noise, y=y, cfg_scale=scale,
                           num_inference_steps=steps, progress=False, cache=cache)
    sched = latte_rs.DDIMScheduler()
    sched.set_timesteps(steps)
    x, previous, changes = noise.copy(), None, []
    both = np.concatenate([y, np.full_like(y, cfg.num_classes)])
    for t in sched.timesteps:
        batch = np.concatenate([x, x])
        ts = np.full(4, int(t))
        m = first_block_input(state, cfg, batch.astype(np.float64), ts, both)
        changes.append(None if previous is None else np.abs(m - previous).mean() / np.abs(previous).mean())
        previous = m
        out = model(batch, ts, both)[:, :, :4]
        eps = out[2:] + scale * (out[:2] - out[2:])
        x = sched.step(eps, t, x).prev_sample
    np.testing.assert_allclose(x, core, rtol=1e-4, atol=1e-4)
    reported = cache.report.input_changes
    assert reported[0] is None and changes[0] is None
    np.testing.assert_allclose(reported[1:], changes[1:], rtol=1e-4)


# --- coefficients: from the call, the model, its teacache.json; fitting ------------------------------------------

def test_coefficients_come_from_the_call_then_the_model_then_latte1(tmp_path) -> None:
    model = class_model(1)
    cache = latte_rs.TeaCache(0.1)
    run(model, "ddim", 1.0, cache, steps=4)
    assert cache.report.coefficients_source == "latte-1"
    assert cache.report.coefficients == latte_rs.TeaCache.LATTE1_COEFFICIENTS
    assert latte_rs.TeaCache.LATTE1_COEFFICIENTS == [-2.46434137e3, 3.08044764e2, 8.07447667e1, -4.11385132,
                                                      1.11001402e-1]
    model.teacache_coefficients = [2.0, 0.0]
    run(model, "ddim", 1.0, cache, steps=4)
    assert (cache.report.coefficients_source, cache.report.coefficients) == ("model", [2.0, 0.0])
    explicit = latte_rs.TeaCache(0.1, coefficients=[3.0, 0.0])
    run(model, "ddim", 1.0, explicit, steps=4)
    assert (explicit.report.coefficients_source, explicit.report.coefficients) == ("argument", [3.0, 0.0])

    # A model file carries them in <stem>.teacache.json; a model folder in teacache.json.
    path = tmp_path / "model.safetensors"
    model.save(str(path))
    assert latte_rs.LatteModel.load(str(path)).teacache_coefficients is None
    written = latte_rs.TeaCache(0.2, coefficients=[1.5, 0.25]).save(path, fitted_on="a test")
    assert written == tmp_path / "model.teacache.json"
    assert json.loads(written.read_text())["fitted_on"] == "a test"
    assert latte_rs.LatteModel.load(str(path)).teacache_coefficients == [1.5, 0.25]
    assert latte_rs.LatteModel.load(str(path)).teacache_input_range is None
    assert latte_rs.open_model(str(path)).model.teacache_coefficients == [1.5, 0.25]
    folder = tmp_path / "transformer"
    folder.mkdir()
    t2v = t2v_model()
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in t2v.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "LatteTransformer3DModel", **t2v.config}))
    latte_rs.TeaCache(coefficients=[4.0, 0.5]).save(folder)
    assert latte_rs.LatteT2VTransformer.from_pretrained(str(folder)).teacache_coefficients == [4.0, 0.5]
    (folder / "teacache.json").write_text("{\"coefficients\": \"no\"}")
    with pytest.raises(ValueError, match="teacache.json"):
        latte_rs.LatteT2VTransformer.from_pretrained(str(folder))


def test_fit_returns_numpys_polyfit_of_the_recorded_changes() -> None:
    model = class_model(1)
    pipe = latte_rs.LattePipeline(model, latte_rs.DDIMScheduler())
    fitted = latte_rs.TeaCache.fit(pipe, runs=2, degree=2, threshold=0.3, class_labels=[0, 1], num_inference_steps=8,
                                   guidance_scale=2.0, output_type="latent")
    x, y = fitted.fit_data
    assert len(x) == 2 * 6 and fitted.threshold == 0.3  # steps 1..6 of 8 per run
    assert fitted.input_range == [x.min(), x.max()]
    np.testing.assert_allclose(fitted.coefficients, np.polyfit(x, y, 2))
    on_model = latte_rs.TeaCache.fit(model, runs=1, degree=1, diffusion=latte_rs.DDIMScheduler(), y=[0],
                                     num_inference_steps=6)
    assert len(on_model.coefficients) == 2
    with pytest.raises(ValueError, match="diffusion"):
        latte_rs.TeaCache.fit(model, runs=1)
    with pytest.raises(ValueError, match="degree"):
        latte_rs.TeaCache.fit(pipe, runs=1, degree=9, class_labels=[0], num_inference_steps=4,
                              output_type="latent")


def test_the_built_in_models_ship_their_coefficients() -> None:
    model = latte_rs.demo.tiny_model()
    assert len(model.teacache_coefficients) == 5 and len(model.teacache_input_range) == 2
    from latte_rs import tiny_t2v
    transformer = tiny_t2v.pipeline().transformer
    assert len(transformer.teacache_coefficients) == 5 and len(transformer.teacache_input_range) == 2


def test_pipelines_report_what_the_cache_skipped() -> None:
    pipe = latte_rs.LattePipeline(class_model(1), latte_rs.DDIMScheduler())
    out = pipe(class_labels=[1], num_inference_steps=10, guidance_scale=2.0, output_type="latent", progress=False,
               cache=latte_rs.TeaCache(0.5, coefficients=IDENTITY))
    assert out.cache_report.steps_computed + out.cache_report.steps_skipped == 10
    assert out.cache_report.summary()["steps_skipped"] == out.cache_report.steps_skipped
    assert pipe(class_labels=[1], num_inference_steps=2, output_type="latent", progress=False).cache_report is None


# --- bad arguments -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "name"), [
    ({"threshold": -0.1}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"threshold": float("inf")}, "threshold"),
    ({"coefficients": []}, "coefficients"),
    ({"coefficients": [1.0, float("nan")]}, "coefficients"),
    ({"input_range": [0.5, 0.1]}, "input_range"),
    ({"input_range": [0.0, float("inf")]}, "input_range"),
])
def test_bad_settings_are_refused_by_name(kwargs, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: expected .*, got"):
        latte_rs.TeaCache(**kwargs)


def test_bad_cache_arguments_are_refused_by_name() -> None:
    model = class_model(1)
    with pytest.raises(TypeError, match="^cache: expected a latte_rs.TeaCache"):
        latte_rs.sample(model, latte_rs.DDIMScheduler(), y=[0], num_inference_steps=2, progress=False,
                        cache="teacache")
    with pytest.raises(ValueError, match="^teacache_coefficients: expected"):
        model.teacache_coefficients = []
    with pytest.raises(ValueError, match="coefficients: this TeaCache has none"):
        latte_rs.TeaCache().save("x.json")
