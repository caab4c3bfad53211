"""One command that checks and times latte-rs's CUDA build against the official PyTorch Latte on the same GPU.

    python benches/gpu_check.py --latte-repo /path/to/Latte            # or LATTE_REPO=...; --device cuda
    python benches/gpu_check.py --sections a b --latte-repo ../Latte   # rerun some sections
    python benches/gpu_check.py --dry-run --output /tmp/gpu.json       # CPU, tiny model, < 60 s (CI)

Sections (each a function; an exception is recorded as ``{"error": ...}`` and the run goes on):

a. Forward parity. The official model (``models/latte.py`` loaded by path, ``torch.manual_seed(3407)`` init plus
   ``0.02 * randn`` on every trainable parameter, ``attention_mode="math"``) against ``LatteModel`` with the same
   weights, on the same device. float32 with TF32 off in torch: max|a - b| / max|b| <= 1e-4 on a GPU, 1e-5 on the
   CPU. bfloat16: latte-rs's bf16 model keeps bf16 weights and bf16 activations, so its honest twin is the official
   model *cast* to bf16 (``.to(torch.bfloat16)``; a pre-hook casts the f32 sin-cos timestep features, which the
   official code only does for fp16), pass at 3e-2. Both bf16 models are also compared with the f32 reference, and
   the official model under ``torch.autocast`` (f32 weights, f32 norms/softmax) is reported beside them.
b. Gradient parity, float32: ``Trainer.forward_backward(x0, timesteps=t, noise=noise)`` against PyTorch autograd of
   the official ``create_diffusion(timestep_respacing="").training_losses(...)["loss"].mean()`` on the same batch;
   the worst per-parameter max|a - b| / max|b| (parameters whose reference gradient is ~0 are skipped), and the
   loss, mse and vb terms.
c. Training parity: 50 steps (dry run 10) from the same weights on the same precomputed (x0, t, noise), AdamW lr
   1e-4, weight decay 0, gradient clipping at 0.1 from the first step (``clip_grad_norm_`` as the official
   ``train.py``; its ``start_clip_iter`` is reached at once so the clipping is exercised). Max relative difference
   of the two loss sequences <= 1e-3.
d. FlashAttention vs math inside latte-rs, bfloat16 inference: max rel err <= 2e-2. Where flash cannot run (the
   CPU, a build without ``flash-attn``) the exception text is recorded as ``{"skipped": ...}``, not a failure.
e. Timings, bf16, batch ``--batch``: forward, train step and 50-step DDPM sampling for Latte-S/2 and Latte-XL/2
   (16 frames of 32x32x4 latents, learn_sigma, unconditional). latte-rs: ``LatteModel(dtype="bfloat16")``
   (attention "auto"), ``Trainer.step`` on that model (it keeps f32 master weights for a bf16 model),
   ``latte_rs.sample`` with ``GaussianDiffusion(timestep_respacing="50")``. Official: ``attention_mode="flash"``
   (``F.scaled_dot_product_attention``) under ``torch.autocast(bf16)`` with f32 weights; the train step is the
   official recipe's (hybrid loss, backward, clip, AdamW, EMA) under autocast, the sampler ``p_sample_loop`` under
   ``inference_mode``. Median of ``--repeat`` (train at most 3, sampling 1) after one warmup call (for sampling, one
   forward pass); ``torch.cuda.synchronize()`` around torch calls (latte-rs returns host arrays: synchronous).
   A sampling run estimated (steps x forward median) above ``--sample-budget`` seconds is skipped, not run.
   The timing weights are not the parity weights (timings do not depend on values): latte-rs's own init, and
   N(0, 0.02) for the official model (built on the device without its CPU init, which is slow at XL).
f. Model FLOPs, counted analytically for variant 1 (2mnk for every linear and both attention matmuls; the adaLN
   linears on the rows the official code feeds them: one per frame in spatial blocks, one per patch in temporal
   blocks), checked against ``torch.utils.flop_counter.FlopCounterMode`` on the official model (on the meta
   device, no compute) and the parameter count against ``LatteConfig.num_parameters``. A train step counts 3
   forwards, sampling one forward per step. MFU = FLOPs / median time / peak (``--peak-tflops`` or a table by
   ``torch.cuda.get_device_name()``: H100/H200 SXM 989.5 dense bf16, A100 312); on the CPU only achieved TFLOP/s.
g. Peak memory. Every timing workload runs in its own worker subprocess (``--worker``); the parent polls
   ``nvidia-smi --query-compute-apps=pid,used_memory`` for the worker's pid every 50 ms (process memory, CUDA
   context included, the same measure for both engines). Where the pid is not listed (a container's pid
   namespace) it falls back to the device's ``memory.used`` minus its value before the worker started
   (``device_delta``); without nvidia-smi the value is null. Torch workers also report
   ``torch.cuda.max_memory_allocated`` (reset at the start). On the CPU: the worker's peak RSS (VmHWM).

Without an official checkout (``--latte-repo`` / ``LATTE_REPO``), a, b, c, the official timing rows and the
FLOP-counter check record ``{"skipped": "no --latte-repo"}``; d, the latte-rs rows, f and g still run (CI's dry run).
Exit code 1 when a parity check (a-d) fails or errors, else 0. Prints a Markdown table; writes JSON to
``--output`` (default ``benches/results/gpu_check.json``; a dry run never writes there).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import load_official  # noqa: E402
from common import RESULTS, host, peak_rss_mib  # noqa: E402

SEED = 3407
DEFAULT_OUTPUT = RESULTS / "gpu_check.json"
FULL_MODELS = ("Latte-S/2", "Latte-XL/2")
# The dry run's model: 2 blocks (1 spatial + 1 temporal) of width 64, 4 frames of 8x8x4 latents.
TINY = dict(depth=2, hidden_size=64, num_heads=2, patch_size=2, input_size=8, num_frames=4)
SECTIONS = ("a", "b", "c", "d", "e", "f")
SECTION_KEYS = {"a": "a_forward_parity", "b": "b_gradient_parity", "c": "c_train_parity", "d": "d_flash_vs_math",
                "e": "e_timings", "f": "f_flops", "g": "g_peak_memory"}
PARITY = ("a", "b", "c", "d")
WORKLOADS = ("forward", "train", "sample")
ENGINE_LABELS = {"official": "PyTorch (official, SDPA)", "latte": "latte-rs"}
# Dense bf16 tensor-core peaks (TFLOP/s) by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H200", 989.5), ("H100", 989.5), ("GH200", 989.5), ("A100", 312.0),
               ("L40S", 362.0), ("A10G", 70.0))
TOL = {"f32_gpu": 1e-4, "f32_cpu": 1e-5, "bf16": 3e-2, "train_loss": 1e-3, "flash": 2e-2}
NO_REPO = {"skipped": "no --latte-repo"}
# The gradient of the timestep MLP's first weight is (output grad) x (sin-cos features of t). Those are f32
# cos/sin of t * freq with t up to 999, and torch's vectorised expf and Rust's libm expf round 3 of the 128
# frequencies to neighbouring f32 values: the features then differ by up to 6e-5 (absolute) in both engines'
# correct f32 arithmetic. This one parameter is held to the GPU tolerance (1e-4), all others to the device's.
SINUSOID_FED = ("t_embedder.mlp.0.weight",)
SINUSOID_NOTE = ("t_embedder.mlp.0.weight is checked at 1e-4: its gradient is an outer product with f32 sin-cos "
                 "features of t < 1000, which differ by up to 6e-5 between torch's and Rust's f32 exp of the "
                 "frequency table (1 ulp in 3 of 128 entries)")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Models, weights, comparisons
# --------------------------------------------------------------------------------------------


def model_config(name: str, dry_run: bool) -> dict:
    """A latte-rs config as a dict (the keys both engines are built from): a preset, or the dry run's tiny model."""
    import latte_rs

    common = dict(num_classes=0, learn_sigma=True, in_channels=4)
    if name == "tiny":
        return latte_rs.LatteConfig(**TINY, **common).to_dict()
    frames, latent = (4, 8) if dry_run else (16, 32)
    return latte_rs.LatteConfig.preset(name, num_frames=frames, input_size=latent, **common).to_dict()


def official_kwargs(cfg: dict) -> dict:
    """The official ``Latte(...)`` arguments of a latte-rs config (unconditional: extras=1)."""
    if cfg["variant"] != 1 or cfg["patch_embed"] != "frame" or cfg["injection"] != "adaln" or cfg["num_classes"]:
        raise ValueError("the official model is variant 1, frame patches, adaLN, unconditional here")
    keys = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
            "num_frames", "learn_sigma")
    return {**{k: cfg[k] for k in keys}, "extras": 1}


def build_official(mod, cfg: dict, attention_mode: str = "math"):
    """The official model, initialised as the official code does (on the CPU), float32."""
    return mod.Latte(**official_kwargs(cfg), attention_mode=attention_mode).float()


def build_official_uninit(mod, cfg: dict, attention_mode: str, device):
    """The official model built directly on ``device`` (``"meta"`` for FLOP counting) without its CPU init."""
    import torch

    init = mod.Latte.initialize_weights
    mod.Latte.initialize_weights = lambda self: None
    try:
        with torch.device(device):
            model = mod.Latte(**official_kwargs(cfg), attention_mode=attention_mode).float()
    finally:
        mod.Latte.initialize_weights = init
    return model


def perturbed_official(mod, cfg: dict) -> dict[str, np.ndarray]:
    """The official init with ``torch.manual_seed(3407)`` plus ``0.02 * randn`` on every trainable parameter (the
    init zeroes adaLN and the final layer): its state dict as float32 arrays, as bench_forward.py makes it."""
    import torch

    torch.manual_seed(SEED)
    model = build_official(mod, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # pos_embed / temp_embed are fixed sin-cos tables
                p.add_(torch.randn_like(p) * 0.02)
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def perturbed_latte(cfg: dict) -> dict[str, np.ndarray]:
    """latte-rs's own init (seed 0) plus ``0.02 * randn`` (NumPy, seed 3407) on the trainable parameters."""
    import latte_rs

    model = latte_rs.LatteModel(latte_rs.LatteConfig.from_dict(cfg), seed=0)
    trainable = set(model.trainable_parameter_names)
    rng = np.random.default_rng(SEED)
    state = model.state_dict()
    for name in sorted(trainable):
        state[name] = (state[name] + 0.02 * rng.standard_normal(state[name].shape)).astype(np.float32)
    return state


def latte_model(cfg: dict, state: dict | None, device: str, dtype: str):
    import latte_rs

    model = latte_rs.LatteModel(latte_rs.LatteConfig.from_dict(cfg), device=device, seed=0, dtype=dtype)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def batch(cfg: dict, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latents x (n, F, C, H, W), timesteps t (n,) in [0, 1000) and noise like x, from NumPy."""
    rng = np.random.default_rng(seed)
    shape = (n, cfg["num_frames"], cfg["in_channels"], cfg["input_size"], cfg["input_size"])
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, 1000, n).astype(np.int64)
    noise = rng.standard_normal(shape).astype(np.float32)
    return x, t, noise


def rel_err(got, want) -> float:
    """max|got - want| / max|want| (float64)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape mismatch: {got.shape} vs {want.shape}")
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(got - want).max() / scale)


def check(value: float, threshold: float) -> dict:
    ok = bool(np.isfinite(value) and value <= threshold)
    return {"value": value, "threshold": threshold, "pass": ok}


def finish(checks: dict, **extra) -> dict:
    return {"checks": checks, "pass": all(c["pass"] for c in checks.values()), **extra}


class Context:
    """What the sections share: options, the official module and diffusion, the parity config and weights."""

    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.on_gpu = not args.device.startswith("cpu")
        self.repo = Path(args.latte_repo).resolve() if args.latte_repo else None
        if self.repo is not None and not (self.repo / "models" / "latte.py").is_file():
            log(f"warning: {self.repo}/models/latte.py not found; running without the official code")
            self.repo = None
        self.parity_cfg = model_config(args.parity_model, args.dry_run)
        self.f32_tol = TOL["f32_gpu"] if self.on_gpu else TOL["f32_cpu"]
        self._mod = self._state = None

    def torch(self):
        import torch

        if self.on_gpu:  # f32 parity means true f32 matmuls
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return torch

    @property
    def mod(self):
        if self._mod is None:
            self._mod = load_official(self.repo)
        return self._mod

    def official_diffusion(self, respacing: str = ""):
        if str(self.repo) not in sys.path:
            sys.path.insert(0, str(self.repo))
        from diffusion import create_diffusion  # the official package (needs the checkout on sys.path)

        return create_diffusion(timestep_respacing=respacing)

    @property
    def state(self) -> dict[str, np.ndarray]:
        if self._state is None:
            self._state = perturbed_official(self.mod, self.parity_cfg)
        return self._state

    def official_model(self, dtype=None, attention_mode: str = "math"):
        """The official model with the perturbed parity weights, on the device (float32, or cast to ``dtype``)."""
        torch = self.torch()
        model = build_official(self.mod, self.parity_cfg, attention_mode)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()}, strict=True)
        model = model.to(self.device)
        if dtype is not None:
            model = model.to(dtype)
            # The official TimestepEmbedder feeds f32 sin-cos features to its MLP (it casts only for fp16).
            model.t_embedder.mlp.register_forward_pre_hook(lambda m, a: (a[0].to(m[0].weight.dtype), *a[1:]))
        return model


# --------------------------------------------------------------------------------------------
# a. forward parity
# --------------------------------------------------------------------------------------------


def section_a(ctx: Context) -> dict:
    if ctx.repo is None:
        return dict(NO_REPO)
    torch = ctx.torch()
    cfg = ctx.parity_cfg
    x, t, _ = batch(cfg, ctx.args.batch, seed=1)
    xt, tt = torch.from_numpy(x).to(ctx.device), torch.from_numpy(t).to(ctx.device)
    ref = ctx.official_model().eval()
    with torch.inference_mode():
        want = ref(xt, tt).float().cpu().numpy()
        with torch.autocast(torch.device(ctx.device).type, dtype=torch.bfloat16):
            autocast_out = ref(xt, tt).float().cpu().numpy()
    del ref
    cast = ctx.official_model(torch.bfloat16).eval()
    with torch.inference_mode():
        cast_out = cast(xt.to(torch.bfloat16), tt).float().cpu().numpy()
    del cast
    got32 = np.asarray(latte_model(cfg, ctx.state, ctx.device, "float32")(x, t))
    got16 = np.asarray(latte_model(cfg, ctx.state, ctx.device, "bfloat16")(x, t))
    checks = {
        "float32": check(rel_err(got32, want), ctx.f32_tol),
        "bfloat16_vs_official_bf16_cast": check(rel_err(got16, cast_out), TOL["bf16"]),
    }
    info = {
        "latte_bf16_vs_official_f32": rel_err(got16, want),
        "official_bf16_cast_vs_official_f32": rel_err(cast_out, want),
        "official_autocast_vs_official_f32": rel_err(autocast_out, want),
        "latte_bf16_vs_official_autocast": rel_err(got16, autocast_out),
    }
    return finish(checks, model=cfg, batch=ctx.args.batch, max_abs_ref=float(np.abs(want).max()),
                  bf16_reference="the official model cast to bf16 (bf16 weights and activations, as latte-rs's bf16 "
                                 "model); autocast numbers for information", info=info)


# --------------------------------------------------------------------------------------------
# b. gradient parity
# --------------------------------------------------------------------------------------------


def unflatten(trainer, flat: np.ndarray) -> dict[str, np.ndarray]:
    sizes = [int(np.prod(s)) for s in trainer.parameter_shapes]
    if flat.shape != (sum(sizes),):
        raise ValueError(f"flat gradient has shape {flat.shape}, parameters {sum(sizes)}")
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return {n: p.reshape(s) for n, p, s in zip(trainer.parameter_names, parts, trainer.parameter_shapes, strict=True)}


def section_b(ctx: Context) -> dict:
    if ctx.repo is None:
        return dict(NO_REPO)
    import latte_rs

    torch = ctx.torch()
    cfg = ctx.parity_cfg
    x0, t, noise = batch(cfg, ctx.args.batch, seed=2)
    model = ctx.official_model().train()
    terms = ctx.official_diffusion().training_losses(
        model, torch.from_numpy(x0).to(ctx.device), torch.from_numpy(t).to(ctx.device), dict(y=None),
        noise=torch.from_numpy(noise).to(ctx.device))
    terms["loss"].mean().backward()
    want = {n: p.grad.float().cpu().numpy() for n, p in model.named_parameters() if p.grad is not None}
    ref_terms = {k: float(terms[k].detach().double().mean()) for k in ("loss", "mse", "vb")}
    del model, terms

    trainer = latte_rs.Trainer(latte_model(cfg, ctx.state, ctx.device, "float32"), latte_rs.GaussianDiffusion())
    flat, losses = trainer.forward_backward(x0, timesteps=t, noise=noise)
    got = unflatten(trainer, np.asarray(flat))
    if set(got) != set(want):
        raise ValueError(f"parameter sets differ: only latte-rs {sorted(set(got) - set(want))}, "
                         f"only official {sorted(set(want) - set(got))}")
    top = max(float(np.abs(w).max()) for w in want.values())
    per, skipped = {}, []
    for name, w in want.items():
        scale = float(np.abs(w).max())
        if scale <= 1e-6 * top:  # no gradient but rounding in the reference (e.g. softmax-invariant biases)
            skipped.append(name)
            continue
        per[name] = float(np.abs(got[name].astype(np.float64) - w).max() / scale)
    worst = max((n for n in per if n not in SINUSOID_FED), key=per.get)
    checks = {"gradients": check(per[worst], ctx.f32_tol)}
    for name in SINUSOID_FED:
        checks[name] = check(per[name], max(ctx.f32_tol, TOL["f32_gpu"]))
    for k in ("loss", "mse", "vb"):
        checks[k] = check(abs(float(losses[k]) - ref_terms[k]) / max(abs(ref_terms[k]), 1e-12), ctx.f32_tol)
    top5 = sorted(per.items(), key=lambda kv: -kv[1])[:5]
    return finish(checks, worst_parameter=worst, worst_five=dict(top5), parameters=len(per),
                  skipped_near_zero=skipped, sinusoid_fed_note=SINUSOID_NOTE,
                  losses={"latte": {k: losses[k] for k in ("loss", "mse", "vb")}, "official": ref_terms})


# --------------------------------------------------------------------------------------------
# c. training parity
# --------------------------------------------------------------------------------------------


def section_c(ctx: Context) -> dict:
    if ctx.repo is None:
        return dict(NO_REPO)
    import latte_rs

    torch = ctx.torch()
    cfg, steps, clip = ctx.parity_cfg, ctx.args.train_steps, 0.1
    x0, _, _ = batch(cfg, ctx.args.batch, seed=3)
    rng = np.random.default_rng(4)
    ts = rng.integers(0, 1000, (steps, ctx.args.batch)).astype(np.int64)
    noises = rng.standard_normal((steps, *x0.shape)).astype(np.float32)

    model = ctx.official_model().train()
    diffusion = ctx.official_diffusion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    xt = torch.from_numpy(x0).to(ctx.device)
    official, official_norms = [], []
    for k in range(steps):
        loss = diffusion.training_losses(model, xt, torch.from_numpy(ts[k]).to(ctx.device), dict(y=None),
                                         noise=torch.from_numpy(noises[k]).to(ctx.device))["loss"].mean()
        loss.backward()
        official_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad()
        official.append(float(loss.detach()))
    del model, opt

    trainer = latte_rs.Trainer(latte_model(cfg, ctx.state, ctx.device, "float32"), latte_rs.GaussianDiffusion(),
                               lr=1e-4, weight_decay=0.0, grad_clip=clip, clip_start_step=0, seed=0)
    stats = [trainer.step(x0, timesteps=ts[k], noise=noises[k]) for k in range(steps)]
    latte = [s["loss"] for s in stats]
    diffs = [abs(a - b) / abs(b) for a, b in zip(latte, official, strict=True)]
    norms = [abs(s["grad_norm"] - n) / n for s, n in zip(stats, official_norms, strict=True)]
    return finish({"losses": check(max(diffs), TOL["train_loss"])}, steps=steps, grad_clip=clip,
                  max_grad_norm_rel_diff=max(norms), losses_latte=latte, losses_official=official,
                  grad_norms_latte=[s["grad_norm"] for s in stats], grad_norms_official=official_norms)


# --------------------------------------------------------------------------------------------
# d. flash vs math attention
# --------------------------------------------------------------------------------------------


def section_d(ctx: Context) -> dict:
    cfg = ctx.parity_cfg
    state = perturbed_latte(cfg)
    x, t, _ = batch(cfg, ctx.args.batch, seed=5)
    import latte_rs

    try:
        flash = latte_model({**cfg, "attention": "flash"}, state, ctx.device, "bfloat16")
        out_flash = np.asarray(flash(x, t))
    except Exception as e:
        # No flash-attn feature, the CPU, an old GPU: flash cannot run here, which is not a failure. A flash build
        # on a GPU that fails is one (the exception reaches the section's error record).
        if not latte_rs.FLASH_ATTN_AVAILABLE or ctx.device == "cpu" or "cannot run" in str(e):
            return {"skipped": f"{type(e).__name__}: {e}"}
        raise
    math = latte_model({**cfg, "attention": "math"}, state, ctx.device, "bfloat16")
    out_math = np.asarray(math(x, t))
    times = {}
    for name, model in (("flash", flash), ("math", math)):
        model(x, t)
        times[name] = statistics.median(timed(lambda m=model: m(x, t), 0, 3))
    return finish({"flash_vs_math": check(rel_err(out_flash, out_math), TOL["flash"])}, median_forward_s=times)


# --------------------------------------------------------------------------------------------
# f. FLOPs
# --------------------------------------------------------------------------------------------


def forward_flops(cfg: dict, batch_size: int) -> dict[str, int]:
    """Forward FLOPs of Latte variant 1 (frame patches, adaLN), 2mnk per matmul, as the official code computes them:
    the conditioning rows of a spatial block's adaLN are one per frame (B*F), of a temporal block's one per patch
    (B*N); softmax, norms and elementwise ops are not counted."""
    b, f, d, p = batch_size, cfg["num_frames"], cfg["hidden_size"], cfg["patch_size"]
    n = (cfg["input_size"] // p) ** 2  # patches per frame
    tokens = b * f * n
    hidden = int(d * cfg["mlp_ratio"])
    out = cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1)
    spatial = (cfg["depth"] + 1) // 2  # blocks alternate spatial, temporal
    temporal = cfg["depth"] // 2
    flops = {
        "patch_embed": 2 * tokens * cfg["in_channels"] * p * p * d,
        "timestep_embed": 2 * b * (256 * d + d * d),
        "block_linears": cfg["depth"] * 2 * tokens * (3 * d * d + d * d + 2 * d * hidden),
        "attention": spatial * 4 * tokens * n * d + temporal * 4 * tokens * f * d,  # QK^T and AV
        "adaln": 2 * 6 * d * d * (spatial * b * f + temporal * b * n),
        "final_adaln": 2 * b * f * d * 2 * d,
        "final_linear": 2 * tokens * d * p * p * out,
    }
    flops["total"] = sum(flops.values())
    return flops


def analytic_parameters(cfg: dict) -> int:
    """Trainable parameters of the architecture ``forward_flops`` counts (cross-checks its reading of the config)."""
    d, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
    hidden = int(d * cfg["mlp_ratio"])
    out = c * (2 if cfg["learn_sigma"] else 1)
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + (6 * d * d + 6 * d)
    return ((c * p * p * d + d) + (256 * d + d + d * d + d) + cfg["depth"] * block
            + (2 * d * d + 2 * d) + (d * p * p * out + p * p * out))


def per_token_linear_parameters(cfg: dict) -> int:
    """Weights applied once per token (patch embed, qkv/proj/mlp, final linear): 2 * this * tokens is their FLOPs."""
    d, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
    hidden = int(d * cfg["mlp_ratio"])
    out = c * (2 if cfg["learn_sigma"] else 1)
    return c * p * p * d + cfg["depth"] * (4 * d * d + 2 * d * hidden) + d * p * p * out


def flop_counter(ctx: Context, cfg: dict, batch_size: int) -> dict:
    """FlopCounterMode on the official model (SDPA attention) on the meta device."""
    torch = ctx.torch()
    from torch.utils.flop_counter import FlopCounterMode

    model = build_official_uninit(ctx.mod, cfg, "flash", "meta")
    shape = (batch_size, cfg["num_frames"], cfg["in_channels"], cfg["input_size"], cfg["input_size"])
    x = torch.zeros(shape, device="meta")
    t = torch.zeros(batch_size, dtype=torch.int64, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t)
    return {"total": int(counter.get_total_flops()),
            "by_op": {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}}


def section_f(ctx: Context) -> dict:
    import latte_rs

    out = {}
    for name in ctx.models:
        cfg = model_config(name, ctx.args.dry_run)
        flops = forward_flops(cfg, ctx.args.batch)
        tokens = ctx.args.batch * cfg["num_frames"] * (cfg["input_size"] // cfg["patch_size"]) ** 2
        params = latte_rs.LatteConfig.from_dict(cfg).num_parameters()
        linear = flops["patch_embed"] + flops["block_linears"] + flops["final_linear"]
        row = {"batch": ctx.args.batch, "tokens": tokens, "analytic": flops,
               "parameters": {"latte_rs": params, "analytic": analytic_parameters(cfg)},
               "per_token_linear_flops_over_2_params_tokens": linear / (2 * per_token_linear_parameters(cfg) * tokens),
               "total_over_2_params_tokens": flops["total"] / (2 * params * tokens)}
        checks = {"parameters": {"value": params, "threshold": analytic_parameters(cfg),
                                 "pass": params == analytic_parameters(cfg)}}
        if ctx.repo is None:
            row["flop_counter"] = dict(NO_REPO)
        else:
            try:
                row["flop_counter"] = flop_counter(ctx, cfg, ctx.args.batch)
                ratio = flops["total"] / row["flop_counter"]["total"]
                checks["flop_counter"] = {"value": ratio, "threshold": "within 1%", "pass": abs(ratio - 1) <= 0.01}
            except Exception as e:
                row["flop_counter"] = {"error": f"{type(e).__name__}: {e}"}
        row["checks"] = checks
        out[name] = row
    return {"models": out}


# --------------------------------------------------------------------------------------------
# e/g. timings in worker subprocesses, with their peak memory
# --------------------------------------------------------------------------------------------


def timed(fn, warmup: int, repeat: int, sync=None) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones (``sync`` before and after each)."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def worker_latte(args, cfg: dict) -> dict:
    import latte_rs

    x, t, _ = batch(cfg, args.batch, seed=6)
    model = latte_model(cfg, None, args.device, args.dtype)
    if args.workload == "forward":
        times = timed(lambda: model(x, t), 1, args.repeat)
    elif args.workload == "train":
        trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-4, grad_clip=0.1, seed=0)
        times = timed(lambda: trainer.step(x), 1, args.repeat)
    else:
        diffusion = latte_rs.GaussianDiffusion(timestep_respacing=str(args.steps))
        model(x, t)  # warmup: one forward pass
        out = []
        times = timed(lambda: out.append(latte_rs.sample(model, diffusion, noise=x, progress=False, seed=0)), 0,
                      args.repeat)
        if not np.isfinite(out[-1]).all():
            raise FloatingPointError("latte-rs sample is not finite")
    return {"times_s": times, "version": latte_rs.__version__}


def worker_official(args, cfg: dict) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.backends.cuda.sdp_kernel in latte.py
    sys.path.insert(0, str(args.latte_repo))
    from diffusion import create_diffusion

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else None
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = build_official_uninit(load_official(args.latte_repo), cfg, "flash", dev)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    x_np, t_np, _ = batch(cfg, args.batch, seed=6)
    x, t = torch.from_numpy(x_np).to(dev), torch.from_numpy(t_np).to(dev)
    if args.workload == "forward":
        model.eval()

        def fn():
            with torch.inference_mode(), torch.autocast(**amp):
                model(x, t)

        times = timed(fn, 1, args.repeat, sync)
    elif args.workload == "train":
        model.train()
        ema = copy.deepcopy(model).requires_grad_(False)
        diffusion = create_diffusion(timestep_respacing="")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)

        def fn():
            ts = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=dev)
            with torch.autocast(**amp):
                loss = diffusion.training_losses(model, x, ts, dict(y=None))["loss"].mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                    e.mul_(0.9999).add_(p, alpha=1e-4)

        times = timed(fn, 1, args.repeat, sync)
    else:
        model.eval()
        diffusion = create_diffusion(timestep_respacing=str(args.steps))
        out = []

        def fn():
            with torch.inference_mode(), torch.autocast(**amp):
                out.append(diffusion.p_sample_loop(model.forward, x.shape, x, clip_denoised=False, model_kwargs={},
                                                   progress=False, device=dev))

        with torch.inference_mode(), torch.autocast(**amp):
            model(x, t)  # warmup: one forward pass
        times = timed(fn, 0, args.repeat, sync)
        if not torch.isfinite(out[-1]).all():
            raise FloatingPointError("official sample is not finite")
    result = {"times_s": times, "version": torch.__version__}
    if cuda:
        result["torch_max_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        result["torch_max_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / 2**20
    return result


def worker_main(args) -> None:
    cfg = json.loads(args.config_json)
    result = (worker_latte if args.worker == "latte" else worker_official)(args, cfg)
    result.update(median_s=statistics.median(result["times_s"]), peak_rss_mib=peak_rss_mib())
    print(json.dumps(result), flush=True)


def nvidia_smi(query: list[str]) -> list[list[str]] | None:
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def gpu_index(device: str) -> int:
    """nvidia-smi's index of a torch/latte-rs device string, through CUDA_VISIBLE_DEVICES when it is numeric."""
    n = int(device.split(":", 1)[1]) if ":" in device else 0
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and all(v.strip().isdigit() for v in visible) and n < len(visible):
        return int(visible[n])
    return n


def device_used_mib(index: int) -> float | None:
    rows = nvidia_smi(["--query-gpu=index,memory.used"])
    for row in rows or []:
        if len(row) == 2 and row[0] == str(index):
            return float(row[1])
    return None


class MemoryPoller(threading.Thread):
    """Polls nvidia-smi every 50 ms: the peak memory of process ``pid`` and of GPU ``index``."""

    def __init__(self, pid: int, index: int):
        super().__init__(daemon=True)
        self.pid, self.index = str(pid), index
        self.stop = threading.Event()
        self.peak_pid: float | None = None
        self.peak_device: float | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            for row in nvidia_smi(["--query-compute-apps=pid,used_memory"]) or []:
                if len(row) == 2 and row[0] == self.pid and row[1].isdigit():
                    self.peak_pid = max(self.peak_pid or 0.0, float(row[1]))
            used = device_used_mib(self.index)
            if used is not None:
                self.peak_device = max(self.peak_device or 0.0, used)
            self.stop.wait(0.05)


def run_worker(ctx: Context, engine: str, workload: str, cfg: dict, repeat: int, steps: int) -> dict:
    """One timing workload in a subprocess; its JSON result plus peak memory, or {"error": ...}."""
    args = ctx.args
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--workload", workload,
           "--config-json", json.dumps(cfg), "--device", args.device, "--dtype", args.dtype, "--batch",
           str(args.batch), "--repeat", str(repeat), "--steps", str(steps)]
    if engine == "official":
        cmd += ["--latte-repo", str(ctx.repo)]
    smi = ctx.on_gpu and shutil.which("nvidia-smi") is not None
    index = gpu_index(args.device)
    baseline = device_used_mib(index) if smi else None
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        poller = MemoryPoller(proc.pid, index) if smi else None
        if poller:
            poller.start()
        try:
            stdout, _ = proc.communicate(timeout=args.worker_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {"error": f"timed out after {args.worker_timeout} s"}
        finally:
            if poller:
                poller.stop.set()
                poller.join()
        err.seek(0)
        stderr = err.read()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-6:])
        return {"error": f"exit code {proc.returncode}: {tail}"}
    result = json.loads(lines[-1])
    if not ctx.on_gpu:
        result.update(peak_mib=result["peak_rss_mib"], peak_method="VmHWM (peak RSS)")
    elif poller is None:
        result.update(peak_mib=None, peak_method="no nvidia-smi")
    elif poller.peak_pid is not None:
        result.update(peak_mib=poller.peak_pid, peak_method="nvidia-smi process used_memory")
    elif poller.peak_device is not None and baseline is not None:
        result.update(peak_mib=poller.peak_device - baseline, peak_method="nvidia-smi device memory.used delta")
    else:
        result.update(peak_mib=None, peak_method="nvidia-smi gave nothing")
    return result


def peak_tflops(ctx: Context) -> tuple[float | None, str]:
    if ctx.args.peak_tflops:
        return ctx.args.peak_tflops, "--peak-tflops"
    if not ctx.on_gpu:
        return None, "cpu"
    name = ctx.device_name or ""
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"table ({key} dense bf16)"
    return None, f"unknown device {name!r}: pass --peak-tflops"


def section_e(ctx: Context) -> dict:
    args = ctx.args
    peak, peak_source = peak_tflops(ctx)
    if ctx.on_gpu and ctx.repo is not None:
        torch = ctx.torch()
        torch.cuda.empty_cache()  # the parent's cached blocks stay constant while the workers run
    rows, forward_s = [], {}
    for name in ctx.models:
        cfg = model_config(name, args.dry_run)
        fwd = forward_flops(cfg, args.batch)["total"]
        for workload in WORKLOADS:
            repeat = {"forward": args.repeat, "train": min(args.repeat, 3), "sample": 1}[workload]
            flops = fwd * {"forward": 1, "train": 3, "sample": args.sampling_steps}[workload]
            results = {}
            for engine in ("official", "latte"):
                label = f"{name} {workload} ({ENGINE_LABELS[engine]})"
                if engine == "official" and ctx.repo is None:
                    results[engine] = dict(NO_REPO)
                    continue
                estimate = forward_s.get((name, engine), 0.0) * args.sampling_steps
                if workload == "sample" and estimate > args.sample_budget:
                    results[engine] = {"skipped": f"estimated {estimate:.0f} s (steps x forward median) > "
                                                  f"--sample-budget {args.sample_budget:g} s"}
                    continue
                log(f"[e] {label} ...")
                start = time.perf_counter()
                results[engine] = run_worker(ctx, engine, workload, cfg, repeat, args.sampling_steps)
                log(f"[e] {label}: {results[engine].get('median_s', results[engine].get('error'))} "
                    f"({time.perf_counter() - start:.1f} s wall)")
                if workload == "forward" and "median_s" in results[engine]:
                    forward_s[(name, engine)] = results[engine]["median_s"]
            base = results["official"].get("median_s")
            for engine, r in results.items():
                row = {"model": name, "workload": workload, "engine": engine, "batch": args.batch,
                       "dtype": args.dtype, "repeat": repeat, "flops": flops, **r}
                if "median_s" in r:
                    tflops = flops / r["median_s"] / 1e12
                    row.update(ratio_vs_official=(base / r["median_s"]) if base else None, achieved_tflops=tflops,
                               mfu=(tflops / peak) if peak else None)
                if workload == "sample":
                    row["sampling_steps"] = args.sampling_steps
                rows.append(row)
    return {"rows": rows, "peak_tflops": peak, "peak_source": peak_source, "attention": "latte-rs: config "
            "'auto' (flash for bf16 inference where built); official: attention_mode='flash' (SDPA)"}


def section_g(timings: dict) -> dict:
    if "rows" not in timings:
        return {"skipped": "needs section e"}
    return {"rows": [{k: r.get(k) for k in ("model", "workload", "engine", "peak_mib", "peak_method",
                                              "torch_max_allocated_mib", "error", "skipped")}
                     for r in timings["rows"]]}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"## latte-rs GPU check: device {report['device']} ({report['device_name']}), batch "
             f"{report['args']['batch']}, {report['args']['dtype']}{', DRY RUN' if report['dry_run'] else ''}", ""]
    timings = report["sections"].get(SECTION_KEYS["e"], {})
    if "rows" in timings:
        lines += ["| workload | engine | median s | ratio vs official | TFLOP/s | MFU | peak MiB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in timings["rows"]:
            workload = f"{r['model']} {r['workload']}"
            engine = ENGINE_LABELS[r["engine"]]
            if "median_s" not in r:
                lines.append(f"| {workload} | {engine} | {r.get('skipped') or r.get('error', '?')[:60]} | | | | |")
                continue
            ratio = fmt(r.get("ratio_vs_official"), ".2f") + ("x" if r.get("ratio_vs_official") else "")
            mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
            lines.append(f"| {workload} | {engine} | {r['median_s']:.4f} | {ratio} | "
                         f"{fmt(r.get('achieved_tflops'), '.3g')} | {mfu} | {fmt(r.get('peak_mib'), '.0f')} |")
        lines += ["", "ratio = official median / this median (above 1: faster than the official code); peak: "
                  + ", ".join(sorted({str(r.get("peak_method")) for r in timings["rows"] if "median_s" in r})), ""]
    else:
        lines += [f"timings: {timings}", ""]
    lines += ["| check | value | threshold | result |", "|---|---:|---:|---|"]
    for key in PARITY:
        sec = report["sections"].get(SECTION_KEYS[key])
        if sec is None:
            continue
        if "checks" not in sec:
            if "error" in sec:
                status = "ERROR: " + sec["error"].splitlines()[0][:80]
            else:
                status = "skipped: " + str(sec.get("skipped", ""))[:80]
            lines.append(f"| {SECTION_KEYS[key]} | | | {status} |")
            continue
        for name, c in sec["checks"].items():
            lines.append(f"| {SECTION_KEYS[key]}: {name} | {c['value']:.3e} | {c['threshold']:g} | "
                         f"{'pass' if c['pass'] else 'FAIL'} |")
    for name, row in report["sections"].get(SECTION_KEYS["f"], {}).get("models", {}).items():
        counter = row["flop_counter"].get("total")
        lines.append(f"\nFLOPs {name} forward (batch {row['batch']}): analytic {row['analytic']['total']:.4g}, "
                     f"FlopCounterMode {fmt(counter, '.4g')}; parameters {row['parameters']['latte_rs']:,}")
    return "\n".join(lines)


def build_info(ctx: Context) -> dict:
    info = {}
    try:
        import latte_rs

        info["latte_rs"] = {"version": latte_rs.__version__,
                            **{k.lower(): getattr(latte_rs, k, None)
                               for k in ("CUDA_AVAILABLE", "FLASH_ATTN_AVAILABLE", "BF16_AUTOCAST_SUPPORTED")},
                            "kernels_env": os.environ.get("LATTE_RS_KERNELS")}
    except Exception as e:
        info["latte_rs"] = {"error": f"{type(e).__name__}: {e}"}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        if ctx.on_gpu:
            info["device_name"] = torch.cuda.get_device_name(torch.device(ctx.device))
    except Exception as e:
        info["torch"] = None
        if ctx.on_gpu:
            info["device_name"] = f"unknown ({type(e).__name__}: {e})"
    if not ctx.on_gpu:
        info["device_name"] = host()["cpu"]
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda; the dry run: cpu)")
    p.add_argument("--dry-run", action="store_true", help="tiny model, 10 train steps, 2 sampling steps, repeat 1")
    p.add_argument("--latte-repo", default=os.environ.get("LATTE_REPO"), help="official checkout ($LATTE_REPO)")
    p.add_argument("--output", type=Path, default=None, help=f"JSON file (default {DEFAULT_OUTPUT})")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeat", type=int, default=None, help="timed calls (default 5, dry run 1)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--models", nargs="+", default=None, help="timed presets (default Latte-S/2 Latte-XL/2)")
    p.add_argument("--parity-model", default=None, help="preset of sections a-d (default Latte-S/2)")
    p.add_argument("--worker-timeout", type=float, default=300.0, help="seconds per timing subprocess")
    p.add_argument("--sample-budget", type=float, default=150.0,
                   help="skip a sampling run whose estimate (steps x forward median) exceeds this many seconds")
    p.add_argument("--kernels", choices=("auto", "generic"), default=None,
                   help="sets LATTE_RS_KERNELS (generic: the CPU runs the device-generic ops a GPU runs)")
    p.add_argument("--worker", choices=("latte", "official"), help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    p.add_argument("--config-json", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=50, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.repeat = args.repeat or (1 if args.dry_run else 5)
    args.models = args.models or (["tiny"] if args.dry_run else list(FULL_MODELS))
    args.parity_model = args.parity_model or ("tiny" if args.dry_run else "Latte-S/2")
    args.train_steps = 10 if args.dry_run else 50
    args.sampling_steps = 2 if args.dry_run else 50
    if args.output is None:
        args.output = Path(tempfile.gettempdir()) / "gpu_check.dry-run.json" if args.dry_run else DEFAULT_OUTPUT
    if args.dry_run and args.output.resolve() == DEFAULT_OUTPUT.resolve():
        p.error(f"--dry-run does not overwrite {DEFAULT_OUTPUT}")
    if args.repeat < 1 or args.batch < 1:
        p.error("--repeat and --batch must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.kernels:
        os.environ["LATTE_RS_KERNELS"] = args.kernels
    if args.worker:
        worker_main(args)
        return 0
    started = time.perf_counter()
    ctx = Context(args)
    ctx.models = args.models
    info = build_info(ctx)
    ctx.device_name = info.get("device_name")
    if ctx.on_gpu and info["latte_rs"].get("cuda_available") is False:
        log("warning: this latte_rs build has no CUDA (latte_rs.CUDA_AVAILABLE is False); its sections will fail")
    report = {"host": host(), "device": args.device, "dry_run": args.dry_run, **info,
              "latte_repo": str(ctx.repo) if ctx.repo else None,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("worker", "workload", "config_json", "steps")},
              "thresholds": TOL, "sections": {}}
    functions = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e, "f": section_f}
    for key in SECTIONS:
        if key not in args.sections:
            continue
        log(f"[{key}] {SECTION_KEYS[key]} ...")
        start = time.perf_counter()
        try:
            result = functions[key](ctx)
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc().splitlines()[-8:]}
        result["seconds"] = time.perf_counter() - start
        report["sections"][SECTION_KEYS[key]] = result
        status = "error" if "error" in result else "skipped" if "skipped" in result else \
            ("pass" if result.get("pass", True) else "FAIL")
        log(f"[{key}] {status} ({result['seconds']:.1f} s)")
    if "e" in args.sections:
        report["sections"][SECTION_KEYS["g"]] = section_g(report["sections"][SECTION_KEYS["e"]])
    failed = [SECTION_KEYS[k] for k in PARITY if k in args.sections
              and ("error" in report["sections"][SECTION_KEYS[k]]
                   or report["sections"][SECTION_KEYS[k]].get("pass") is False)]
    report.update(failed=failed, wall_s=time.perf_counter() - started)
    print(markdown(report), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(args.output)
    print(f"\nwrote {args.output}; {'FAILED: ' + ', '.join(failed) if failed else 'parity checks passed'} "
          f"({report['wall_s']:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
