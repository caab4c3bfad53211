"""The fuzzing campaign: hostile calls to every public entry point, each case isolated so that a crash is named.

Each target draws its arguments with hypothesis (sizes from tiny to absurd, NaN and infinities, wrong dtypes,
ranks and byte orders, damaged files) and calls latte-rs the way a careless or hostile user would. The outcome of
every case is one of:

    ok          the call returned, and every float it returned is finite (or its inputs were not)
    refused     a clear exception: ValueError, TypeError, FileNotFoundError, MemoryError, OSError, OverflowError
    nonfinite   DEFECT: it returned NaN or infinity from finite inputs without an error
    panic       DEFECT: a Rust panic reached Python (PanicException, or the bindings' "internal error")
    unclear     DEFECT: any other exception (RuntimeError from the core, KeyError, ZeroDivisionError, ...)
    crash       DEFECT: the process died (signal, abort); the case is named from the worker's last report
    hang        DEFECT: no answer within the per-case timeout
    deleted     DEFECT: a path the user made (a file, a folder, a link) is gone or changed after the case

Cases run in worker processes (one per target, restarted after a crash or hang at the next case), so a
segmentation fault ends one case, not the campaign. Hypothesis runs seeded without a database: the same ``--seed``
and ``--cases`` give the same cases on every run (after a crash the worker restarts at the next case with a seed
derived from its index, so the sequence stays deterministic), and every case's drawn arguments are recorded as
they are drawn, so that a crash is reported with the arguments that caused it.

    python tests/robustness/campaign.py --cases 1000 --table fuzz.md   # the long run (every target, ~15 min on 2 cores)
    python tests/robustness/campaign.py --cases 30 --json out.json
    python tests/robustness/campaign.py --target trainer --cases 100 --verbose

The data loaders and the command line get crafted files (issue 30): ``data_folder`` builds a dataset folder of good,
damaged and garbage videos and frames, named pipes, device links and folders named like videos, frames and captions,
decompression-bomb PNGs and frames of mixed sizes, and reads it with ``VideoClips``, ``CaptionedVideos``,
``batches`` and FVD's folder reading; ``manifests`` writes CSV / JSON / JSON-lines manifests with hostile rows and
damaged text; ``cli`` runs ``latte-rs train`` with damaged configs, ``--set`` overrides and ``--steps``. Where a case
holds a good source (an intact video, a valid manifest row), a refusal is itself a defect (unclear): one bad file
must never take the good ones down. A ``cli`` case is ok (a run) or refused (one line on stderr that names what it
is about, a non-zero status); anything else is unclear.

Checkpoint folders and process limits (issue 30): ``checkpoint_dirs`` fills an experiment folder with user files and
folders (hidden siblings named like a save's leftovers such as ``.ck.backup-999999``, empty folders, and a file, a
folder, a link or a checkpoint at the checkpoint path), then saves a tiny trainer (once or more, maybe resumed) to the
checkpoint path, its parent, a user folder, a file or a link; every user path recorded before must be there after,
unchanged (a folder may gain entries, an empty folder may become the checkpoint), else the case is ``deleted``.
``limits`` builds a model (a tiny one or a preset) and runs a forward (a drawn batch) in a child process that sets
``RLIMIT_AS`` or ``RLIMIT_DATA`` on itself a drawn amount above what it uses: ok, or ``MemoryError`` (refused); a
signal (abort, OOM kill, segfault) is a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# IndexError is what Python raises for an index past a sequence's end (datasets).
# NotImplementedError: a capability this build lacks (attention="flash" without the flash-attn feature).
EXPECTED = (ValueError, TypeError, FileNotFoundError, MemoryError, OSError, OverflowError, IndexError,
            NotImplementedError)
DEFECTS = ("nonfinite", "panic", "unclear", "crash", "hang", "deleted")

# ----------------------------------------------------------------------------------------------------------------
# Strategies (imported lazily so that the parent process needs neither hypothesis nor latte_rs).


def strategies():
    from hypothesis import strategies as st

    small = st.integers(0, 6)
    hostile_int = st.sampled_from([-1, -(2**31), 2**31, 2**40, 2**62, 2**64 - 1, 2**64, 2**70])
    size = st.one_of(small, small, small, hostile_int)
    floats = st.one_of(
        st.floats(-10, 10, allow_nan=False),
        st.sampled_from([0.0, -0.0, 1e-300, 1e-45, -1.0, 1e30, 1e300, float("nan"), float("inf"), float("-inf")]),
    )
    dtypes = st.sampled_from(["float32", "float32", "float64", "float16", ">f4", "<f8", "int64", "int8", "bool",
                              "uint8", "complex64", "object"])

    @st.composite
    def array(draw, shape=None, dtype=None, finite_bias=0.8):
        if shape is None:
            ndim = draw(st.integers(0, 6))
            shape = [draw(st.integers(0, 5)) for _ in range(ndim)]
        dt = dtype or draw(dtypes)
        n = int(np.prod(shape)) if shape else 1
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if dt == "object":
            return np.array([None] * n, dtype=object).reshape(shape)
        values = rng.standard_normal(n)
        if draw(st.floats(0, 1)) > finite_bias and n:
            k = draw(st.integers(0, n - 1))
            values[k] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e38, 1e300]))
        arr = values.reshape(shape)
        if np.dtype(dt).kind in "iub":
            arr = np.nan_to_num(arr * 3, nan=0, posinf=0, neginf=0)
        with np.errstate(all="ignore"):
            out = arr.astype(dt)
        if draw(st.booleans()) and out.ndim >= 2:
            out = np.swapaxes(out, 0, 1)  # not C-contiguous
        return out

    return st, size, floats, array


# ----------------------------------------------------------------------------------------------------------------
# Targets: each is a function (data, ctx) -> returned values to check for non-finite floats, drawing its arguments
# from hypothesis' `data`. `ctx` holds fixtures built once per worker.


def _tiny_cfg(latte_rs, **kw):
    base = dict(depth=2, hidden_size=16, num_heads=2, patch_size=2, input_size=4, num_frames=2, in_channels=4)
    base.update(kw)
    return latte_rs.LatteConfig(**base)


def t_config(data, ctx):
    st, size, floats, _ = ctx["st"]
    latte_rs = ctx["latte_rs"]
    fields = {
        "depth": size, "hidden_size": size, "num_heads": size, "patch_size": size, "input_size": size,
        "num_frames": size, "in_channels": size, "num_classes": size, "mlp_ratio": floats,
        "class_dropout_prob": floats, "variant": st.one_of(size, st.text(max_size=3)),
        "patch_embed": st.sampled_from(["frame", "tubelet", "x", 3]), "tubelet_size": size,
        "injection": st.sampled_from(["adaln", "tokens", None]), "use_image_num": size,
        "temporal_position": st.sampled_from(["absolute", "rope", ""]), "attention": st.sampled_from(
            ["math", "chunked", "flash", "fused"]), "attention_chunk_size": size, "learn_sigma": st.booleans(),
        "image_size": size, "bogus": small_text(st),
    }
    keys = data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=5, unique=True))
    kw = {k: data.draw(fields[k]) for k in keys}
    if data.draw(st.booleans()):
        cfg = latte_rs.LatteConfig.preset(data.draw(st.sampled_from(["Latte-S/2", "Latte-XL/8", "Latte-Q/2"])), **kw)
    else:
        cfg = latte_rs.LatteConfig(**kw)
    cfg.num_parameters()
    back = latte_rs.LatteConfig.from_json(cfg.to_json())
    assert back == cfg, "config JSON round trip"
    return []


def small_text(st):
    return st.text(alphabet="abc{}\":,0-9 \x00", max_size=8)


def t_config_json(data, ctx):
    st = ctx["st"][0]
    latte_rs = ctx["latte_rs"]
    base = json.loads(_tiny_cfg(latte_rs).to_json())
    key = data.draw(st.sampled_from(sorted(base)))
    base[key] = data.draw(st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=4),
                                    st.lists(st.integers(), max_size=2)))
    text = json.dumps(base)
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut]
    latte_rs.LatteConfig.from_json(text)
    return []


def t_model_forward(data, ctx):
    st, size, floats, array = ctx["st"]
    model = data.draw(st.sampled_from(ctx["models"]))
    cfg = model.config
    good = [1, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size]
    shape = data.draw(st.one_of(st.just(good), st.lists(st.integers(0, 5), max_size=6)))
    x = data.draw(array(shape=shape))
    t = data.draw(st.one_of(array(shape=[shape[0] if shape else 1], dtype="int64"), array()))
    y = data.draw(st.one_of(st.none(), array(shape=[shape[0] if shape else 1], dtype="int64"), array()))
    if data.draw(st.booleans()):
        cfg_scale = data.draw(floats)
        out = model.forward_with_cfg(x, t, y, cfg_scale)
    else:
        out = model(x, t, y)
    return [(out, [x])]


def t_state_dict(data, ctx):
    st, size, floats, array = ctx["st"]
    latte_rs = ctx["latte_rs"]
    model = latte_rs.LatteModel(_tiny_cfg(latte_rs), seed=0)
    sd = model.state_dict()
    key = data.draw(st.sampled_from(sorted(sd) + ["bogus.weight"]))
    sd[key] = data.draw(st.one_of(array(), array(shape=list(sd.get(key, np.zeros(2)).shape))))
    model.load_state_dict(sd, strict=data.draw(st.booleans()))
    return []


def t_diffusion(data, ctx):
    st, size, floats, array = ctx["st"]
    latte_rs = ctx["latte_rs"]
    kw = {}
    if data.draw(st.booleans()):
        kw["diffusion_steps"] = data.draw(st.one_of(st.integers(1, 50), size))
    if data.draw(st.booleans()):
        kw["timestep_respacing"] = data.draw(st.sampled_from(["", "5", "ddim3", "10,10", "ddim0", "x", "0", "999999"]))
    if data.draw(st.booleans()):
        kw["noise_schedule"] = data.draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "bad"]))
    if data.draw(st.booleans()):
        kw["beta_start"] = data.draw(floats)
    if data.draw(st.booleans()):
        kw["prediction_type"] = data.draw(st.sampled_from(["epsilon", "sample", "v_prediction", "eps"]))
    kw["learn_sigma"] = data.draw(st.booleans())
    d = latte_rs.GaussianDiffusion(**kw)
    c = 2 if data.draw(st.booleans()) else 4
    shape = [2, 2, c, 2, 2]
    x0 = data.draw(array(shape=shape))
    noise = data.draw(array(shape=shape))
    t = data.draw(st.one_of(array(shape=[2], dtype="int64"), array()))
    which = data.draw(st.sampled_from(["q_sample", "losses", "p_mean", "p_sample", "ddim"]))
    out_shape = [2, 2, 2 * c if kw["learn_sigma"] else c, 2, 2]
    mo = data.draw(array(shape=out_shape))
    if which == "q_sample":
        return [(d.q_sample(x0, t, noise), [x0, noise])]
    if which == "losses":
        return [(v, [mo, x0, noise]) for v in d.training_losses(mo, x0, t, noise).values()]
    if which == "p_mean":
        return [(v, [mo, x0]) for v in d.p_mean_variance(mo, x0, t).values()]
    if which == "p_sample":
        return [(v, [mo, x0, noise]) for v in d.p_sample(mo, x0, t, noise)]
    return [(v, [mo, x0, noise]) for v in d.ddim_sample(mo, x0, t, noise, eta=data.draw(floats))]


def t_scheduler(data, ctx):
    st, size, floats, array = ctx["st"]
    latte_rs = ctx["latte_rs"]
    kind = data.draw(st.sampled_from(["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                                      "DPMSolverMultistepScheduler"]))
    kw = {}
    for key, strat in [("num_train_timesteps", st.one_of(st.integers(1, 100), size)), ("beta_start", floats),
                       ("beta_end", floats), ("beta_schedule", st.sampled_from(["linear", "scaled_linear",
                        "squaredcos_cap_v2", "x"])), ("prediction_type", st.sampled_from(
                        ["epsilon", "sample", "v_prediction"])), ("timestep_spacing", st.sampled_from(
                        ["leading", "trailing", "linspace"])), ("trained_betas", st.lists(floats, max_size=4))]:
        if data.draw(st.integers(0, 7)) == 7:
            kw[key] = data.draw(strat)
    s = getattr(latte_rs, kind)(**kw)
    s.set_timesteps(data.draw(st.one_of(st.integers(1, 30), size)))
    shape = data.draw(st.sampled_from([[1, 4, 2, 2], [2, 3], [1, 4, 2, 2]]))
    sample = data.draw(array(shape=shape))
    out = data.draw(array(shape=data.draw(st.sampled_from([shape, [1], shape]))))
    ts = [int(v) for v in np.asarray(s.timesteps)][:3] or [0]
    t = data.draw(st.one_of(st.sampled_from(ts), floats, size))
    if data.draw(st.booleans()):
        r = s.add_noise(sample, out, data.draw(st.one_of(array(shape=[shape[0]], dtype="int64"), array())))
        return [(np.asarray(r), [sample, out])]
    gen = latte_rs.Generator(data.draw(st.integers(0, 2**64 - 1)))
    r = s.step(out, t, sample, generator=gen)
    return [(np.asarray(r.prev_sample), [sample, out])]


def t_generator(data, ctx):
    st, size, _, _ = ctx["st"]
    latte_rs = ctx["latte_rs"]
    g = latte_rs.Generator(data.draw(st.one_of(st.integers(0, 2**64 - 1), size)))
    shape = data.draw(st.lists(size, max_size=4))
    return [(g.randn(shape), [])]


def t_trainer(data, ctx):
    st, size, floats, array = ctx["st"]
    latte_rs = ctx["latte_rs"]
    cfg = _tiny_cfg(latte_rs, num_classes=data.draw(st.sampled_from([0, 3])))
    model = latte_rs.LatteModel(cfg, seed=0)
    d = latte_rs.GaussianDiffusion(timestep_respacing="")
    opts = {}
    for key, strat in [("lr", floats), ("eps", floats), ("weight_decay", floats), ("ema_decay", floats),
                       ("grad_clip", st.one_of(st.none(), floats)), ("grad_accumulation", size),
                       ("warmup_steps", size), ("betas", st.tuples(floats, floats)), ("seed", size),
                       ("clip_start_step", size), ("gradient_checkpointing", st.booleans()),
                       ("skip_nonfinite", st.booleans())]:
        if data.draw(st.integers(0, 7)) == 7:
            opts[key] = data.draw(strat)
    trainer = latte_rs.Trainer(model, d, **opts)
    good = [2, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size]
    shape = data.draw(st.one_of(st.just(good), st.just(good), st.lists(st.integers(0, 4), max_size=6)))
    x = data.draw(array(shape=shape))
    labels = data.draw(st.one_of(st.none(), array(shape=[2], dtype="int64"), array()))
    stats = trainer.step(x, labels)
    params = list(trainer.model.state_dict().values())
    finite_in = [x] if not opts.get("skip_nonfinite") else []
    return [(np.array([stats["loss"]]) if not stats["skipped"] else np.zeros(1), finite_in)] + [
        (p, [x]) for p in params]


def t_sampling(data, ctx):
    st, size, floats, array = ctx["st"]
    latte_rs = ctx["latte_rs"]
    model = data.draw(st.sampled_from(ctx["models"]))
    sched = data.draw(st.sampled_from(["ddpm", "ddim", "euler", "dpm", "diffusion"]))
    if sched == "diffusion":
        s = latte_rs.GaussianDiffusion(timestep_respacing=data.draw(st.sampled_from(["3", "ddim2"])))
    else:
        s = {"ddpm": latte_rs.DDPMScheduler, "ddim": latte_rs.DDIMScheduler, "euler": latte_rs.EulerDiscreteScheduler,
             "dpm": latte_rs.DPMSolverMultistepScheduler}[sched]()
    kw = dict(num_inference_steps=data.draw(st.one_of(st.none(), st.integers(1, 3), size)) if sched != "diffusion"
              else None, seed=data.draw(st.integers(0, 2**64 - 1)))
    if data.draw(st.booleans()):
        kw["num_samples"] = data.draw(size)
    if data.draw(st.booleans()):
        kw["cfg_scale"] = data.draw(floats)
    if data.draw(st.booleans()):
        kw["y"] = data.draw(array(shape=[kw.get("num_samples", 1) if isinstance(kw.get("num_samples"), int) and
                                         0 <= kw.get("num_samples", 1) < 6 else 1], dtype="int64"))
    if data.draw(st.integers(0, 3)) == 0:
        kw["noise"] = data.draw(array())
    if data.draw(st.integers(0, 3)) == 0:
        kw["eta"] = data.draw(floats)
    if kw.get("num_inference_steps") is None:
        kw.pop("num_inference_steps")
        if sched != "diffusion":
            kw["num_inference_steps"] = 2
    out = latte_rs.sample(model, s, progress=False, **kw)
    return [(out, [kw.get("noise")] if kw.get("noise") is not None else [])]


def t_vae(data, ctx):
    st, size, floats, array = ctx["st"]
    vae = ctx["vae"]
    if data.draw(st.booleans()):
        shape = data.draw(st.one_of(st.just([1, 2, 3, 8, 8]), st.lists(st.integers(0, 9), max_size=6)))
        x = data.draw(array(shape=shape))
        out = vae.encode(x, sample=data.draw(st.booleans()), chunk_size=data.draw(st.one_of(st.integers(1, 4), size)))
    else:
        shape = data.draw(st.one_of(st.just([1, 2, 4, 2, 2]), st.lists(st.integers(0, 5), max_size=6)))
        x = data.draw(array(shape=shape))
        out = vae.decode(x, chunk_size=data.draw(st.one_of(st.integers(1, 4), size)))
    return [(out, [x])]


def t_t2v(data, ctx):
    st, size, floats, array = ctx["st"]
    latte_rs = ctx["latte_rs"]
    cfg = dict(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8, num_layers=1,
               cross_attention_dim=8, sample_size=4, patch_size=2, caption_channels=6, video_length=2)
    if data.draw(st.integers(0, 2)) == 0:
        key = data.draw(st.sampled_from(sorted(cfg) + ["norm_eps", "norm_type", "activation_fn"]))
        cfg[key] = data.draw(st.one_of(size, floats, st.text(max_size=3), st.none()))
    model = latte_rs.LatteT2VTransformer(cfg, seed=0)
    shape = data.draw(st.one_of(st.just([1, 4, 2, 4, 4]), st.lists(st.integers(0, 5), max_size=6)))
    x = data.draw(st.one_of(array(shape=shape, dtype="float32"), array(shape=shape)))
    t = data.draw(st.one_of(array(shape=[1], dtype="int64"), array()))
    cap_shape = [1, data.draw(st.integers(0, 4)), 6]
    cap = data.draw(st.one_of(array(shape=cap_shape, dtype="float32"), array(shape=cap_shape), array()))
    out = model(x, t, cap)
    return [(out, [x, cap])]


def t_t5(data, ctx):
    st, size, floats, array = ctx["st"]
    t5 = ctx["t5"]
    ids = data.draw(st.one_of(array(shape=[1, data.draw(st.integers(0, 6))], dtype="int64"), array(),
                              st.just(np.array([[2**40, -1]], np.int64))))
    mask = data.draw(st.one_of(st.none(), array(shape=list(np.shape(ids)), dtype="int64"), array()))
    out = t5(ids, mask)
    if data.draw(st.booleans()):
        t5.empty_prompt(data.draw(size))
    return [(out, [])]


def t_fvd(data, ctx):
    st, size, floats, array = ctx["st"]
    from latte_rs.evaluation import metrics

    n = data.draw(st.integers(0, 4))
    mu1, mu2 = data.draw(array(shape=[n])), data.draw(array(shape=[n]))
    s1, s2 = data.draw(array(shape=[n, n])), data.draw(array(shape=[n, n]))
    if data.draw(st.booleans()):
        s1 = np.asarray(s1, np.float64) @ np.asarray(s1, np.float64).T if np.asarray(s1).dtype.kind == "f" else s1
    d = metrics.frechet_distance(mu1, s1, mu2, s2)
    return [(np.array([d]), [mu1, mu2, s1, s2])]


def t_i3d_preprocess(data, ctx):
    st, size, floats, array = ctx["st"]
    latte_rs = ctx["latte_rs"]
    shape = data.draw(st.one_of(st.just([1, 9, 8, 8, 3]), st.just([1, 2, 8, 8, 3]),
                                st.lists(st.integers(0, 9), max_size=6)))
    clips = data.draw(st.one_of(array(shape=shape, dtype="uint8"), array(shape=shape)))
    vr = data.draw(st.one_of(st.none(), st.tuples(floats, floats)))
    out = latte_rs.I3D.preprocess(clips, vr)
    return [(out, [clips])]


def t_synthetic(data, ctx):
    st, size, floats, array = ctx["st"]
    from latte_rs.data import SyntheticVideos

    kw = {}
    for key, strat in [("num_clips", size), ("num_frames", size), ("image_size", size), ("num_classes", size),
                       ("num_shapes", size), ("speed", floats), ("shape_size", st.tuples(floats, floats)),
                       ("label_by", st.sampled_from(["shape", "motion", "x"]))]:
        if data.draw(st.integers(0, 2)) == 0:
            kw[key] = data.draw(strat)
    kw.setdefault("image_size", 8)
    kw.setdefault("num_frames", 2)
    kw.setdefault("num_clips", 2)
    ds = SyntheticVideos(**kw)
    i = data.draw(st.one_of(st.integers(-3, 3), size))
    item = ds[i]
    clip = item[0] if isinstance(item, tuple) else item
    return [(np.asarray(clip, np.float32), [])]


def _mutate(data, st, blob: bytes) -> bytes:
    b = bytearray(blob)
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice", "zero", "header"]))
    if not b:
        return bytes(b)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        b = b[: data.draw(st.integers(0, len(b)))]
    elif kind == "splice":
        i = data.draw(st.integers(0, len(b)))
        b[i:i] = data.draw(st.binary(max_size=64))
    elif kind == "zero":
        i = data.draw(st.integers(0, len(b) - 1))
        b[i : i + data.draw(st.integers(1, 64))] = b"\0" * len(b[i : i + 64])
    else:  # rewrite a number in the first kilobyte (safetensors header sizes, JSON fields, zip offsets)
        head = b[:1024].decode("latin-1")
        nums = list(re.finditer(r"\d+", head))
        if nums:
            m = data.draw(st.sampled_from(nums))
            new = str(data.draw(st.sampled_from([0, 1, 2**31, 2**40, 2**63, 10**30])))
            edited = head[: m.start()] + new + head[m.end() :]
            b = bytearray(edited.encode("latin-1")) + b[1024:]
    return bytes(b)


def t_files(data, ctx):
    """Damaged copies of every file kind latte-rs reads: a model file, a trainer checkpoint, an official .pt,
    diffusers folders (VAE, T5, transformer), a latent cache, a video folder (mp4 and PNG frames), FVD
    statistics (.npz)."""
    st = ctx["st"][0]
    latte_rs = ctx["latte_rs"]
    src = ctx["files"]
    kind = data.draw(st.sampled_from(sorted(src)))
    tmp = Path(ctx["tmp"]) / f"case{ctx['case']}"
    import shutil

    if tmp.exists():
        shutil.rmtree(tmp)
    path, load = src[kind]
    if path.is_dir():
        shutil.copytree(path, tmp)
        names = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        target = tmp / data.draw(st.sampled_from(names))
        root = tmp
    else:
        tmp.mkdir(parents=True)
        target = tmp / path.name
        shutil.copy(path, target)
        root = target
    target.write_bytes(_mutate(data, st, target.read_bytes()))
    returned = load(latte_rs, root)
    return returned if isinstance(returned, list) else []  # loaders that return values to check list them


# ----------------------------------------------------------------------------------------------------------------
# Data loaders and the command line, given crafted files (issue 30): named pipes and devices named like videos,
# frames and captions, decompression bombs, damaged media, hostile manifests and configs. Each case makes its own
# folder under the worker's temporary one.


def _case_dir(ctx) -> Path:
    import shutil

    folder = Path(ctx["tmp"]) / f"case{ctx['case']}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _mp4_bytes(frames: int = 10, size: int = 16) -> bytes:
    """A small mpeg4 clip (frames brightening), as bytes."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        stream = c.add_stream("mpeg4", rate=10)
        stream.height = stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), i * 20 % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return buf.getvalue()


def _image_bytes(value: int, size: int = 8, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares `width` x `height` RGB pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(
        b"IEND", b"")


def _media(ctx) -> dict:
    """Good media, made once per worker: a 10-frame mp4, PNG and JPEG frames."""
    if "media" not in ctx:
        ctx["media"] = {"mp4": _mp4_bytes(), "png": [_image_bytes(25 * i) for i in range(10)],
                        "jpeg": _image_bytes(90, fmt="JPEG")}
    return ctx["media"]


def _not_a_file(data, st, path: Path) -> None:
    """Something at `path` that is not a regular file: a named pipe, a link to a device, a link to nothing, or a
    folder."""
    kind = data.draw(st.sampled_from(["fifo", "device", "dangling", "folder"]))
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device" and os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", path)
    elif kind == "dangling":
        os.symlink(path.parent / "nowhere", path)
    else:
        path.mkdir()


ENTRY_KINDS = ("video", "video", "video_damaged", "video_garbage", "video_empty", "video_not_a_file", "frames",
               "frames", "frames_damaged", "frames_not_a_file", "frames_bomb", "frames_mixed_sizes")


def _entry(data, st, ctx, folder: Path, name: str) -> tuple[str, str]:
    """One crafted dataset entry `name` in `folder` (a video file or a frame folder), maybe with a caption; returns
    the kinds of both."""
    media = _media(ctx)
    folder.mkdir(parents=True, exist_ok=True)
    kind = data.draw(st.sampled_from(ENTRY_KINDS))
    ext = data.draw(st.sampled_from([".mp4", ".avi", ".mkv", ".MP4"]))
    if kind.startswith("video"):
        path = folder / f"{name}{ext}"
        if kind == "video_not_a_file":
            _not_a_file(data, st, path)
        elif kind == "video_damaged":
            path.write_bytes(_mutate(data, st, media["mp4"]))
        elif kind == "video_garbage":
            path.write_bytes(data.draw(st.binary(max_size=2048)))
        else:
            path.write_bytes(media["mp4"] if kind == "video" else b"")
    else:
        path = folder / name
        path.mkdir()
        count = data.draw(st.integers(1, 10))
        for i in range(count):
            (path / f"{i:03d}.png").write_bytes(media["png"][i])
        k = data.draw(st.integers(0, count - 1))
        frame = path / f"{k:03d}.png"
        if kind == "frames_damaged":
            frame.write_bytes(_mutate(data, st, data.draw(st.sampled_from([media["png"][k], media["jpeg"]]))))
        elif kind == "frames_not_a_file":
            frame.unlink()
            _not_a_file(data, st, frame)
        elif kind == "frames_bomb":
            frame.write_bytes(_png_declaring(*data.draw(st.sampled_from(
                [(20000, 20000), (10000, 9000), (2**31 - 1, 1), (1, 2**31 - 1), (0, 0)]))))
        elif kind == "frames_mixed_sizes":
            frame.write_bytes(_image_bytes(7, size=data.draw(st.sampled_from([4, 9, 64]))))
    caption = data.draw(st.sampled_from(["text", "text", "none", "empty", "binary", "not_a_file", "huge"]))
    text = path.parent / f"{path.name if path.is_dir() else path.stem}.txt"
    if caption == "not_a_file":
        _not_a_file(data, st, text)
    elif caption != "none":
        text.write_bytes({"text": b"a red fox", "empty": b" \n", "binary": b"\xff\xfe\x00a",
                          "huge": b"x" * 300_000}[caption])
    return kind, caption


def _must_serve(expected: bool, make):
    """`make()`; where the case holds a source every loader must serve, a refusal is a defect (one bad file must
    never take the good ones down with it), reported as an AssertionError (unclear)."""
    try:
        return make()
    except EXPECTED as e:
        if expected:
            raise AssertionError(f"refused although a good source is there: {type(e).__name__}: {e}") from None
        raise


def _read_dataset(ds, limit: int = 12) -> list:
    """Every item of `ds` (at most `limit`) as clips checked for non-finite values."""
    out = []
    for i in range(min(len(ds), limit)):
        item = ds[i]
        clip = item["video"] if isinstance(item, dict) else item[0]
        out.append((np.asarray(clip), []))
    return out


def t_data_folder(data, ctx):
    """A dataset folder of crafted entries (good and damaged videos and frames, named pipes, device links, folders
    named like videos, decompression bombs, frames of mixed sizes, odd captions), read by every loader: VideoClips,
    CaptionedVideos, batches() and FVD's folder reading (without the network)."""
    import warnings

    from latte_rs.data import CaptionedVideos, VideoClips
    from latte_rs.data.batching import batches
    from latte_rs.evaluation import Protocol
    from latte_rs.evaluation.sources import plan

    st, size, _, _ = ctx["st"]
    root = _case_dir(ctx) / "data"
    root.mkdir()
    entries = [_entry(data, st, ctx, root / f"class{k % 2}", f"e{k}") for k in range(data.draw(st.integers(1, 5)))]
    kinds = [kind for kind, _ in entries]
    warnings.simplefilter("ignore")  # bad sources are reported as warnings and skipped: the outcome is what counts
    # One case in five also gets hostile numbers (seeds, epochs, batch sizes, ranks); the rest reach the files.
    hostile = data.draw(st.integers(0, 4)) == 0

    def number(good):
        return data.draw(st.one_of(good, size) if hostile else good)

    loader = data.draw(st.sampled_from(["videos", "captions", "batches", "fvd"]))
    if loader == "fvd":
        proto = Protocol(num_real=2, num_fake=2, num_frames=9, real_stride=1, fake_stride=1,
                         image_size=data.draw(st.sampled_from([None, 8])))
        side = plan(str(root), data.draw(st.sampled_from(["real", "fake"])), proto, "NFHWC")
        return [(clips, []) for clips, _ in side.batches(2)]
    clip = dict(num_frames=data.draw(st.integers(1, 4)), frame_interval=data.draw(st.integers(1, 3)),
                image_size=data.draw(st.sampled_from([4, 8])), seed=number(st.integers(0, 9)),
                use_image_num=data.draw(st.sampled_from([0, 0, 1, 2])),
                resize=data.draw(st.sampled_from(["resize_crop", "crop_resize", "none"])))
    if clip["resize"] == "none" and len({k.startswith("frames") for k in kinds}) > 1:
        clip["resize"] = "crop_resize"  # videos (16x16) and frames (8x8) of one batch must share a size
    # A good mp4 (with its caption, for captions) serves every clip: the others are skipped and replaced by it.
    served = not hostile and any(kind == "video" and (loader != "captions" or caption == "text")
                                 for kind, caption in entries)
    kind = CaptionedVideos if loader == "captions" else VideoClips
    ds = _must_serve(served, lambda: kind(root, **clip))
    ds.set_epoch(number(st.integers(0, 3)))
    if loader != "batches":
        return _must_serve(served, lambda: _read_dataset(ds))
    world_size = number(st.sampled_from([1, 2]))
    batch_size = number(st.integers(1, 3))
    it = batches(ds, batch_size, seed=number(st.integers(0, 9)), world_size=world_size,
                 rank=number(st.integers(0, max(0, min(int(world_size), 2) - 1))))
    served = served and -(-len(ds) // int(world_size)) >= int(batch_size)
    return _must_serve(served, lambda: [(next(it).latents, []) for _ in range(2)])


_DEEP_JSON = "[" * 50_000 + "]" * 50_000


def t_manifests(data, ctx):
    """CSV, JSON and JSON-lines manifests with hostile rows (missing, empty, huge, non-text and deeply nested
    values, paths to named pipes, devices, folders and outside the root) and damaged text (NUL bytes, bad UTF-8,
    truncation), read by CaptionedVideos."""
    import csv
    import io
    import warnings

    from latte_rs.data import CaptionedVideos

    st = ctx["st"][0]
    root = _case_dir(ctx)
    (root / "a.mp4").write_bytes(_media(ctx)["mp4"])
    _not_a_file(data, st, root / "odd.mp4")
    paths = st.sampled_from(["a.mp4", "a.mp4", "odd.mp4", "missing.mp4", "../a.mp4", "/dev/zero", "", " ",
                             str(root / "a.mp4"), "a.mp4\x00x", "x" * 5000])
    values = st.one_of(st.text(max_size=20), st.sampled_from(["a red fox", "", "x" * 200_000, "\x00"]),
                       st.none(), st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    keys = st.sampled_from(["path", "video", "caption", "text", "name", "page_dir", "videoid", "bogus", ""])
    rows = []
    for _ in range(data.draw(st.integers(0, 5))):
        row = {"path": data.draw(paths), "caption": data.draw(st.sampled_from(["a red fox", "a cat"]))}
        for _ in range(data.draw(st.integers(0, 2))):
            row[data.draw(keys)] = data.draw(st.one_of(paths, values))
        rows.append(row)
    kind = data.draw(st.sampled_from(["csv", "json", "jsonl"]))

    def readable(row) -> bool:  # the csv module refuses a whole row with a NUL byte or a field past its limit
        return kind != "csv" or all("\x00" not in str(v) and len(str(v)) < csv.field_size_limit() for v in row.values())

    good = any(row["path"] in ("a.mp4", str(root / "a.mp4")) and row["caption"] in ("a red fox", "a cat")
               and readable(row) for row in rows)
    if kind == "csv":
        columns = sorted({k for row in rows for k in row}) or ["path", "caption"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    elif kind == "json":
        text = json.dumps(rows)
    else:
        text = "\n".join(json.dumps(row) for row in rows)
    damage = data.draw(st.sampled_from(["none", "none", "deep", "nul", "utf8", "bytes", "truncate", "not_a_list"]))
    blob = text.encode()
    if damage == "deep":
        blob = (text[:-1] + ", " + _DEEP_JSON + "]" if kind == "json" and rows else text + "\n" + _DEEP_JSON).encode()
    elif damage == "nul":
        blob = blob.replace(b",", b",\x00", 1)
    elif damage == "utf8":
        blob = blob + b"\xff\xfe"
    elif damage in ("bytes", "truncate"):
        blob = _mutate(data, st, blob)
    elif damage == "not_a_list":
        blob = data.draw(st.sampled_from([b"{}", b"3", b"null", b'"x"']))
    manifest = root / f"m.{kind}"
    manifest.write_bytes(blob)
    warnings.simplefilter("ignore")
    path_key = data.draw(st.sampled_from([None, None, "path", "bogus", "video"]))
    caption_key = data.draw(st.sampled_from([None, None, "caption", "name", "bogus"]))
    # An undamaged manifest with a good row gives a dataset, whatever its other rows hold.
    served = good and damage == "none" and path_key in (None, "path") and caption_key in (None, "caption")
    ds = _must_serve(served, lambda: CaptionedVideos(manifest, num_frames=2, frame_interval=1, image_size=8,
                                                     path_key=path_key, caption_key=caption_key))
    return _must_serve(served, lambda: _read_dataset(ds))


#: The tiny pixel-space training run the CLI target starts from (a step takes well under a second).
CLI_CONFIG = {"dataset": "synthetic", "model": "Latte-S/2", "num_frames": 2, "image_size": 8, "pixel_space": True,
              "model_config": {"depth": 2, "hidden_size": 16, "num_heads": 2}, "local_batch_size": 2,
              "num_clips": 4, "max_train_steps": 1, "ckpt_every": 1, "log_every": 1, "global_seed": 0}
_YAML_SNIPPETS = ["[16", "!!python/name:os.system", "!!python/object/apply:os.system ['true']", "{a: 1", "&a [*a]",
                  "'unterminated", "[" * 3000 + "]" * 3000, "-1", "0", "3", "1e3", "2.5", "nan", ".inf", "null",
                  "true", "x", "[1, 2]", "{depth: 100000000000000000000}", "18446744073709551616", "\x00", "~"]


def t_cli(data, ctx):
    """`latte-rs train` with a hostile config file, --set overrides and --steps: every outcome is a run (status 0)
    or one line on stderr with a non-zero status; anything else (a traceback, several lines, an exception out of
    main) is a defect."""
    import contextlib
    import io

    import yaml

    from latte_rs.cli import main

    st, size, floats, _ = ctx["st"]
    case = _case_dir(ctx)
    cfg = json.loads(json.dumps(CLI_CONFIG))
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(cfg) + ["model_config.depth", "model_config.bogus", "bogus",
                                                       "learning_rate", "gradient_accumulation_steps", "ema_decay",
                                                       "keep_checkpoints", "use_image_num", "frame_interval",
                                                       "data_path", "pretrained_model_path", "shape_size"]))
        value = data.draw(st.one_of(st.sampled_from([-1, 0, 1, 3, 2**64, 2**70, 1e300, "x", None, True, [], {},
                                                     "nan", float("nan"), float("inf"), "Latte-XL/2", "LatteT2V",
                                                     "folder", "ucf101", "/dev/zero", str(case / "missing")]),
                                    st.text(max_size=4)))
        if key.startswith("model_config."):
            cfg["model_config"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    text = yaml.safe_dump(cfg)
    damage = data.draw(st.sampled_from(["none", "none", "none", "snippet", "bytes", "not_a_mapping"]))
    if damage == "snippet":
        text = text + f"num_frames: {data.draw(st.sampled_from(_YAML_SNIPPETS))}\n"
    blob = text.encode()
    if damage == "bytes":
        blob = _mutate(data, st, blob)
    elif damage == "not_a_mapping":
        blob = data.draw(st.sampled_from([b"- a\n", b"3\n", b"'x'\n", b"[" * 3000]))
    config = case / "config.yaml"
    if data.draw(st.integers(0, 9)) == 0:
        _not_a_file(data, st, config)
    else:
        config.write_bytes(blob)
    argv = ["train", "--config", str(config), "--output-dir", str(case / "run"), "--no-progress"]
    for _ in range(data.draw(st.sampled_from([0, 0, 0, 1, 2]))):
        argv += ["--set", f"{data.draw(st.sampled_from(sorted(CLI_CONFIG) + ['bogus', '']))}="
                          f"{data.draw(st.sampled_from(_YAML_SNIPPETS))}"]
    # Never a long run: --steps is always given, and small when valid.
    good = data.draw(st.integers(0, 3)) < 3  # hypothesis favours 0: three in four runs get a valid --steps
    argv += ["--steps", data.draw(st.sampled_from(["1", "2"] if good else ["0", "-1", "x", "1.5", "", "inf"]))]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's refusals
            code = e.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code == 0:
        return []
    # A refusal is one line that names what it is about first ("config: ...", "--set KEY: ...", "argument --steps:").
    if len(lines) == 1 and re.match(r"latte-rs( [\w-]+)?: error: (argument )?[^\s:]+( [^\s:]+)?: ", lines[0]):
        raise ValueError(lines[0])
    raise AssertionError(f"exit status {code} with {len(lines)} lines on stderr, or one naming nothing: "
                         f"{err.getvalue()[-300:]!r}")


# Checkpoint folders and process limits (issue 30): saving must never touch what the user put beside or at the
# checkpoint path, and a limit on the process's memory must end a too-large call in MemoryError, never a signal.


class Outcome(Exception):
    """A case's outcome decided by the target itself (lost user data, a child process's signal or result)."""

    def __init__(self, outcome: str, detail: str):
        super().__init__(detail)
        self.outcome = outcome


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every path under `root` (links not followed, `skip` and what is under it left out) with its kind and content."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p in skip or any(s in p.parents for s in skip):
                continue
            if p.is_symlink():
                found[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                found[str(p)] = ("dir",)
            else:
                found[str(p)] = ("file", p.read_bytes())
    return found


def _now(p: Path) -> tuple | None:
    if p.is_symlink():
        return ("link", os.readlink(p))
    if p.is_dir():
        return ("dir",)
    return ("file", p.read_bytes()) if p.is_file() else None


def t_checkpoint_dirs(data, ctx):
    """An experiment folder of user files and folders (hidden siblings named like a save's leftovers, empty folders,
    a file, a folder, a link at the checkpoint path) and a tiny trainer saving (once or twice, maybe resumed) to drawn
    paths: the checkpoint path, its parent, a user folder, a file, a link. Every user path must survive with its
    content (a folder may gain entries); one lost or changed is a defect (deleted). Only a checkpoint this case saved,
    or a folder that was empty, may be replaced."""
    st = ctx["st"][0]
    latte_rs = ctx["latte_rs"]
    exp = _case_dir(ctx) / "exp"
    (exp / "data").mkdir(parents=True)
    (exp / "data" / "clip.txt").write_text("user data")
    (exp / "notes.md").write_text("# notes")
    (exp / "empty").mkdir()
    leftovers = [".ck.backup-999999", ".ck.tmp-1-2", ".ck.old-999999-0", f".ck.tmp-{os.getpid()}-0", ".ck.old-1",
                 ".ck.partial-0", ".data.tmp-999999-1", ".exp.old-1-1"]
    for name in data.draw(st.lists(st.sampled_from(leftovers), max_size=4, unique=True)):
        if data.draw(st.booleans()):
            (exp / name).mkdir()
            if data.draw(st.booleans()):
                (exp / name / "model.safetensors").write_bytes(b"user's own copy")
        else:
            (exp / name).write_text("user's file named like a leftover")
    ck = exp / "ck"
    at_ck = data.draw(st.sampled_from(["nothing", "nothing", "empty", "folder", "file", "link_dir", "link_file",
                                       "dangling", "checkpoint"]))
    trainer = latte_rs.Trainer(latte_rs.LatteModel(_tiny_cfg(latte_rs), seed=0), latte_rs.GaussianDiffusion())
    ours: set[Path] = set()  # checkpoints this case wrote: replacing them is allowed
    if at_ck == "empty":
        ck.mkdir()
    elif at_ck == "folder":
        ck.mkdir()
        (ck / "trainer.json").write_text('{"not": "a latte-rs checkpoint"}')
        (ck / "keep.txt").write_text("keep")
    elif at_ck == "file":
        ck.write_text("a file where the checkpoint goes")
    elif at_ck == "link_dir":
        ck.symlink_to(exp / "data")
    elif at_ck == "link_file":
        ck.symlink_to(exp / "notes.md")
    elif at_ck == "dangling":
        ck.symlink_to(exp / "missing")
    elif at_ck == "checkpoint":
        trainer.save(ck)
        ours.add(ck)
    before = _snapshot(exp, ours)
    if at_ck == "empty":  # an empty folder is the one user path a save may fill
        before.pop(str(ck))
    targets = {"checkpoint": ck, "parent": exp, "user_folder": exp / "data", "file": exp / "notes.md",
               "link": ck, "empty": exp / "empty", "new_nested": exp / "runs" / "0000001",
               "leftover": exp / ".ck.backup-999999"}
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["save", "save", "step_save", "resume_save"]),
                                       st.sampled_from(sorted(targets))), min_size=1, max_size=3))
    error: BaseException | None = None
    try:
        for op, where in ops:
            path = targets[where]
            if op == "step_save":
                trainer.step(np.zeros((1, 2, 4, 4, 4), np.float32), None)
            elif op == "resume_save" and ours:
                trainer = latte_rs.Trainer.resume(sorted(ours)[0])
            if where == "empty":
                before.pop(str(path), None)
            trainer.save(path)
            ours.add(path)
            latte_rs.Trainer.resume(path)  # what was saved reads back
    except EXPECTED as e:  # a refused save: user data must be intact all the same
        error = e
    lost = [os.path.relpath(p, exp) for p, was in before.items() if _now(Path(p)) != was]
    if lost:
        raise Outcome("deleted", f"{len(lost)} user paths lost or changed: {lost[:5]}")
    if error is not None:
        raise error
    return []


# The child of a `limits` case: builds what it is given, sets the limit on itself (after its imports, relative to
# what it already uses, so that the limit bites on the call, not on Python's start), calls, and prints one line.
_LIMITS_CHILD = r"""
import json, resource, sys
import numpy as np
import latte_rs
a = json.loads(sys.argv[1])
x = np.zeros([a["batch"], a["frames"], 4, a["size"], a["size"]], np.float32) if a["forward"] else None
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
used = int(status["VmSize" if a["kind"] == "AS" else "VmData"].split()[0]) * 1024
limit = max(used // 2, used + a["headroom"]) if a["headroom"] >= 0 else used // 2
res = getattr(resource, "RLIMIT_" + a["kind"])
resource.setrlimit(res, (limit, resource.getrlimit(res)[1]))
try:
    if a["preset"] == "tiny":
        cfg = latte_rs.LatteConfig(depth=2, hidden_size=a["hidden"], num_heads=2, patch_size=2,
                                   input_size=a["size"], num_frames=a["frames"], in_channels=4)
    else:
        cfg = latte_rs.LatteConfig.preset(a["preset"], input_size=a["size"], num_frames=a["frames"])
    model = latte_rs.LatteModel(cfg, seed=0)
    if a["forward"]:
        out = np.asarray(model(x, np.zeros(a["batch"], np.int64), None))
        if not np.isfinite(out).all():
            print("RESULT nonfinite " + str(int((~np.isfinite(out)).sum())), flush=True)
            sys.exit(0)
    print("RESULT ok", flush=True)
except BaseException as e:
    name = type(e).__name__
    kind = "panic" if name == "PanicException" or "internal error" in str(e) else (
        "refused" if isinstance(e, (MemoryError, ValueError, OSError)) else "unclear")
    print("RESULT " + kind + " " + name + ": " + (str(e).splitlines() or [""])[0][:300], flush=True)
"""


def t_limits(data, ctx):
    """Model construction (a drawn preset and size) and a forward (a drawn batch) in a child process under a drawn
    RLIMIT_AS or RLIMIT_DATA: each ends ok or in MemoryError (refused); a signal (abort, OOM kill, segfault) is a
    crash, no answer a hang."""
    st = ctx["st"][0]
    preset = data.draw(st.sampled_from(["tiny", "tiny", "tiny", "Latte-S/2", "Latte-B/2", "Latte-XL/2"]))
    args = {
        "preset": preset, "kind": data.draw(st.sampled_from(["AS", "DATA"])),
        # bytes above what the child already uses; -1: half of what it uses (every new allocation fails)
        "headroom": data.draw(st.sampled_from([-1, 0, 2**20, 2**24, 2**26, 2**28, 2**30])),
        "size": data.draw(st.sampled_from([4, 8, 16] if preset == "tiny" else [4, 8, 32])),
        "frames": data.draw(st.sampled_from([2, 4, 16])),
        "hidden": data.draw(st.sampled_from([16, 64])),
        # large batches only for the tiny model; the presets' forwards would be minutes of compute where they fit
        "forward": preset == "tiny" or data.draw(st.integers(0, 3)) == 0,
        "batch": data.draw(st.sampled_from([1, 2, 256, 4096, 65536] if preset == "tiny" else [1])),
    }
    try:
        proc = subprocess.run([sys.executable, "-c", _LIMITS_CHILD, json.dumps(args)], capture_output=True,
                              text=True, timeout=ctx.get("child_timeout", 45.0))
    except subprocess.TimeoutExpired as e:
        raise Outcome("hang", f"no answer in {e.timeout} s") from None
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode < 0:
        raise Outcome("crash", f"exit status {proc.returncode}: {_last_line(proc.stderr)}")
    if proc.returncode != 0 or not results:
        raise Outcome("unclear", f"exit status {proc.returncode}: {_last_line(proc.stderr)}")
    outcome, _, detail = results[-1][len("RESULT "):].partition(" ")
    if outcome == "nonfinite":
        return [(np.full(1, np.nan), [])]
    if outcome != "ok":
        raise Outcome(outcome, detail)
    return []


TARGETS: dict[str, Callable[[Any, dict], list]] = {
    "config": t_config,
    "config_json": t_config_json,
    "model_forward": t_model_forward,
    "state_dict": t_state_dict,
    "diffusion": t_diffusion,
    "scheduler": t_scheduler,
    "generator": t_generator,
    "trainer": t_trainer,
    "sampling": t_sampling,
    "vae": t_vae,
    "t2v": t_t2v,
    "t5": t_t5,
    "fvd": t_fvd,
    "i3d_preprocess": t_i3d_preprocess,
    "synthetic_data": t_synthetic,
    "files": t_files,
    "data_folder": t_data_folder,
    "manifests": t_manifests,
    "cli": t_cli,
    "checkpoint_dirs": t_checkpoint_dirs,
    "limits": t_limits,
}

# ----------------------------------------------------------------------------------------------------------------
# The worker: runs cases start .. start+count of one target and reports each on stdout.


def _fixtures():
    """The shared test fixtures' paths (tests/conftest.py), imported in the worker only: the parent process needs
    neither latte_rs nor pytest."""
    sys.path.insert(0, str(HERE.parent))
    import conftest

    return conftest


def _context(target: str, tmp: str) -> dict:
    import latte_rs

    ctx: dict[str, Any] = {"latte_rs": latte_rs, "st": strategies(), "tmp": tmp, "case": 0}
    if target in ("model_forward", "sampling"):
        ctx["models"] = [
            latte_rs.LatteModel(_tiny_cfg(latte_rs), seed=0),
            latte_rs.LatteModel(_tiny_cfg(latte_rs, num_classes=3, variant=3, injection="tokens"), seed=1),
            latte_rs.LatteModel(_tiny_cfg(latte_rs, patch_embed="tubelet", tubelet_size=2, variant=4,
                                          temporal_position="rope"), seed=2),
        ]
    if target == "vae":
        ctx["vae"] = latte_rs.VideoVAE.from_pretrained(_fixtures().TINY_VAE)
    if target == "t5":
        ctx["t5"] = latte_rs.T5TextEncoder.from_pretrained(_fixtures().T5_GATED)
    if target == "files":
        ctx["files"] = _file_sources(latte_rs, Path(tmp) / "sources")
    return ctx


def _file_sources(latte_rs, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cfg = _tiny_cfg(latte_rs, num_classes=3)
    model = latte_rs.LatteModel(cfg, seed=0)
    model.save(out / "model.safetensors")
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion())
    trainer.step(np.zeros((1, 2, 4, 4, 4), np.float32), np.array([1]))
    trainer.save(out / "ckpt")
    fixtures = _fixtures()
    sources = {
        "model_file": (out / "model.safetensors", lambda m, p: m.LatteModel.load(p)),
        "checkpoint_resume": (out / "ckpt", lambda m, p: m.Trainer.resume(p)),
        "checkpoint_model": (out / "ckpt", lambda m, p: m.LatteModel.from_checkpoint(p)),
        "vae_folder": (fixtures.TINY_VAE, lambda m, p: m.VideoVAE.from_pretrained(p)),
        "t5_folder": (fixtures.T5_GATED, lambda m, p: m.T5TextEncoder.from_pretrained(p)),
        "t2v_folder": (fixtures.T2V_VIDEO, lambda m, p: m.LatteT2VTransformer.from_pretrained(p)),
    }
    videos = _video_folder(out / "videos")
    if videos is not None:
        sources["video_folder"] = (videos, _read_videos)
    sources["latent_cache"] = (_latent_cache(latte_rs, out / "latents"), _read_latents)
    sources["feature_stats"] = (_feature_stats(out / "stats.npz"), _read_feature_stats)
    pt = _official_pt(out)
    if pt is not None:
        sources["official_pt"] = (pt, lambda m, p: m.LatteModel.from_checkpoint(
            p, preset="Latte-S/2", num_frames=2, input_size=4, depth=2, hidden_size=16, num_heads=2,
            in_channels=4, patch_size=2))
    return sources


def _video_folder(out: Path) -> Path | None:
    """Two classes of two short mp4 clips (needs PyAV; skipped without it)."""
    try:
        import av
    except ImportError:
        return None
    for cls in ("run", "walk"):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for k in range(2):
            with av.open(str(out / cls / f"{k}.mp4"), "w") as c:
                stream = c.add_stream("mpeg4", rate=10)
                stream.height, stream.width, stream.pix_fmt = 16, 24, "yuv420p"
                for i in range(6):
                    img = np.full((16, 24, 3), (i * 37 + k * 11) % 256, np.uint8)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        c.mux(packet)
                for packet in stream.encode():
                    c.mux(packet)
    frames = out / "walk" / "frames"  # a frame folder: damaged PNGs reach Pillow
    frames.mkdir(exist_ok=True)
    for i in range(4):
        (frames / f"{i:03d}.png").write_bytes(_image_bytes(40 * i, size=16))
    return out


def _feature_stats(path: Path) -> Path:
    """FVD statistics as feature_stats saves them (the .npz `latte-rs fvd` takes for REAL or FAKE)."""
    from latte_rs.evaluation import FeatureStats, Protocol

    features = np.random.default_rng(0).standard_normal((8, 400))
    return FeatureStats(features.mean(0), np.cov(features, rowvar=False), 8,
                        {"protocol": Protocol().side("real")}).save(path)


def _read_feature_stats(latte_rs, path: Path) -> list:
    from latte_rs.evaluation import FeatureStats

    stats = FeatureStats.load(path)
    return [(stats.mean, []), (stats.cov, [])]


def _read_videos(latte_rs, root: Path) -> None:
    import warnings

    from latte_rs.data import VideoClips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged files are reported once as warnings and skipped
        ds = VideoClips(root, num_frames=3, frame_interval=1, image_size=8, seed=0)
        for i in range(len(ds)):
            ds[i]


def _latent_cache(latte_rs, out: Path) -> Path:
    from latte_rs.data import SyntheticVideos
    from latte_rs.data.latents import encode_dataset

    vae = latte_rs.VideoVAE.from_pretrained(_fixtures().TINY_VAE)
    encode_dataset(SyntheticVideos(num_clips=3, num_frames=2, image_size=8), vae, out, shard_size=2)
    return out


def _read_latents(latte_rs, root: Path) -> None:
    from latte_rs.data.latents import LatentClips

    ds = LatentClips(root)
    for i in range(len(ds)):
        ds[i]


def _official_pt(out: Path) -> Path | None:
    """A small checkpoint in the official .pt layout (needs torch; skipped without it)."""
    try:
        import torch
    except ImportError:
        return None
    import latte_rs

    model = latte_rs.LatteModel(_tiny_cfg(latte_rs), seed=0)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    path = out / "official.pt"
    torch.save({"model": sd, "ema": sd}, path)
    return path


def _nonfinite(returned: list) -> str | None:
    for value, inputs in returned:
        arr = np.asarray(value)
        if arr.dtype.kind != "f" or np.isfinite(arr).all():
            continue
        clean = all(np.asarray(i).dtype.kind not in "fc" or np.isfinite(np.asarray(i)).all() for i in inputs)
        if clean:
            return f"{int((~np.isfinite(arr)).sum())} non-finite of {arr.size}"
    return None


def classify(exc: BaseException) -> str:
    if isinstance(exc, Outcome):
        return exc.outcome
    name = type(exc).__name__
    if name == "PanicException" or "internal error" in str(exc):
        return "panic"
    if isinstance(exc, EXPECTED):
        return "refused"
    return "unclear"


def worker(target: str, start: int, count: int, seed: int, tmp: str) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    ctx = _context(target, tmp)
    fn = TARGETS[target]
    index = [start]
    out = sys.stdout

    @hseed(seed)
    @settings(max_examples=count, database=None, derandomize=False, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate], report_multiple_bugs=False)
    @given(st.data())
    def case(data):
        i = index[0]
        index[0] += 1
        draws: list[str] = []
        orig = data.draw

        def draw(strategy, label=None):
            v = orig(strategy, label)
            draws.append(_short(v))
            out.write("ARG " + json.dumps(draws[-1]) + "\n")
            return v

        data.draw = draw
        ctx["case"] = i
        out.write(f"BEGIN {i}\n")
        out.flush()
        t0 = time.perf_counter()
        try:
            with np.errstate(all="ignore"):
                returned = fn(data, ctx)
            bad = _nonfinite(returned or [])
            outcome, detail = ("nonfinite", bad) if bad else ("ok", "")
        except BaseException as e:  # noqa: BLE001 - every outcome is recorded, including PanicException
            if type(e).__name__ in ("StopTest", "Frozen", "UnsatisfiedAssumption"):
                raise
            outcome, detail = classify(e), f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        dt = time.perf_counter() - t0
        rec = {"i": i, "outcome": outcome, "detail": detail, "s": round(dt, 4), "args": " | ".join(draws)[:600]}
        out.write("END " + json.dumps(rec) + "\n")
        out.flush()

    case()
    out.write("DONE\n")
    out.flush()


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}:{v.dtype.str}"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ----------------------------------------------------------------------------------------------------------------
# The parent: one worker per target at a time, restarted after a crash or a hang.


def run_target(target: str, cases: int, seed: int, timeout: float, start: int = 0, verbose: bool = False) -> list:
    """Runs cases start .. start+cases of `target` in worker processes and returns one record per case."""
    records: list[dict] = []
    end = start + cases
    i = start
    with tempfile.TemporaryDirectory(prefix=f"latte-fuzz-{target}-") as tmp:
        while i < end:
            # A worker restarted after case i-1 crashed draws from a seed derived from i: the sequence stays
            # deterministic, and hypothesis never replays a case that killed its process.
            worker_seed = seed if i == start else seed * 1_000_003 + i
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", target, "--start", str(i),
                   "--cases", str(end - i), "--seed", str(worker_seed), "--tmp", tmp]
            env = dict(os.environ, RUST_BACKTRACE="0")
            # stderr goes to a file: a pipe nobody reads would fill up and stall the worker.
            err_path = Path(tmp) / f"stderr-{i}.txt"
            err_file = err_path.open("w")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, env=env, text=True)
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            current, args, finished = None, [], False
            deadline = time.monotonic() + 180.0  # the worker's start (imports, fixtures)
            while True:
                if not sel.select(timeout=max(0.05, deadline - time.monotonic())):
                    if time.monotonic() < deadline:
                        continue
                    proc.kill()
                    proc.wait()
                    if current is None:
                        raise RuntimeError(f"{target}: the worker did not start or stalled between cases")
                    records.append({"i": current, "outcome": "hang", "detail": f"no answer in {timeout} s",
                                    "s": timeout, "args": " | ".join(args)})
                    i = current + 1
                    break
                line = proc.stdout.readline()
                if not line:  # the worker ended
                    rc = proc.wait()
                    err_file.flush()
                    err = err_path.read_text(errors="replace")
                    if current is not None:
                        records.append({"i": current, "outcome": "crash", "s": 0.0, "args": " | ".join(args),
                                        "detail": f"exit status {rc}: {_last_line(err)}"})
                        print(f"  {target} #{current}: crash ({rc}) [{' | '.join(args)}]", file=sys.stderr)
                        i = current + 1
                    elif not finished:
                        raise RuntimeError(f"{target}: the worker failed (status {rc}):\n{err[-3000:]}")
                    else:
                        i = end
                    break
                if line.startswith("BEGIN "):
                    current, args = int(line.split()[1]), []
                    deadline = time.monotonic() + timeout
                elif line.startswith("ARG "):
                    args.append(json.loads(line[4:]))
                elif line.startswith("END "):
                    rec = json.loads(line[4:])
                    records.append(rec)
                    if verbose or rec["outcome"] in DEFECTS:
                        print(f"  {target} #{rec['i']}: {rec['outcome']} {rec['detail']} [{rec['args']}]",
                              file=sys.stderr)
                    current = None
                    i = rec["i"] + 1
                    deadline = time.monotonic() + timeout
                elif line.startswith("DONE"):
                    finished = True
            sel.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err_file.close()
    # hypothesis may run a few examples more than asked (after a restart): report exactly the cases asked for.
    return [r for r in records if r["i"] < end]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def summarise(results: dict[str, list]) -> dict:
    table = {}
    for target, recs in results.items():
        c = Counter(r["outcome"] for r in recs)
        table[target] = {"cases": len(recs), **{k: c.get(k, 0) for k in ("ok", "refused", *DEFECTS)}}
    return table


def format_table(table: dict) -> str:
    cols = ["cases", "ok", "refused", *DEFECTS]
    lines = ["| entry point | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    total = Counter()
    for target, row in table.items():
        lines.append(f"| {target} | " + " | ".join(str(row[c]) for c in cols) + " |")
        total.update({c: row[c] for c in cols})
    lines.append("| **all** | " + " | ".join(f"**{total[c]}**" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=30, help="cases per target")
    ap.add_argument("--target", action="append", help="only these targets (repeatable); default: all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--json", help="write every case's record and the table here")
    ap.add_argument("--table", help="also write the outcome table (Markdown) here")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.start, args.cases, args.seed, args.tmp)
        return 0
    targets = args.target or list(TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    results = {}
    t0 = time.time()
    for target in targets:
        t1 = time.time()
        results[target] = run_target(target, args.cases, args.seed, args.timeout, args.start, args.verbose)
        print(f"{target}: {len(results[target])} cases in {time.time() - t1:.0f} s", file=sys.stderr)
    table = summarise(results)
    print(format_table(table))
    if args.table:
        Path(args.table).write_text(format_table(table) + "\n")
    print(f"\n{sum(r['cases'] for r in table.values())} cases in {time.time() - t0:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "cases": results}, indent=1))
    return 1 if any(row[d] for row in table.values() for d in DEFECTS) else 0


if __name__ == "__main__":
    sys.exit(main())
