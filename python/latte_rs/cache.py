"""Faster sampling without retraining: caching policies for the one sampling loop (``cache=`` of
:func:`latte_rs.sample`, ``LattePipeline.__call__`` and ``LatteT2VPipeline.__call__``).

**TeaCache** skips the transformer's block stack at steps where the first block's modulated input barely changed,
reusing the residual (stack output minus stack input) of the last computed step. Per step it measures the relative
L1 change of that input, rescales it by a polynomial (fitted on uncached runs: :meth:`TeaCache.fit`), and
accumulates it; below ``threshold`` the step is skipped, otherwise it computes and the sum restarts. The first and
the last step always compute; with guidance the decision is one per step for the whole [cond | uncond] batch.
``threshold=0`` skips nothing and gives the uncached output bit for bit. The rule runs in the Rust core.

>>> import numpy as np, latte_rs
>>> cache = latte_rs.TeaCache(threshold=0.1)
>>> latents = latte_rs.sample(latte_rs.demo.tiny_model(), latte_rs.DDIMScheduler(), y=np.array([0]),
...                           cfg_scale=2.0, num_inference_steps=10, progress=False, cache=cache)
>>> cache.report.steps_computed + cache.report.steps_skipped, cache.report.coefficients_source
(10, 'model')

Coefficients: ``TeaCache()`` without ``coefficients`` uses the model's own, read from a ``teacache.json`` beside
it when it was loaded (in a model folder, ``<stem>.teacache.json`` beside a model file; the built-in models ship
theirs), else TeaCache's published Latte-1 polynomial (which fits Latte-1, not other models).

**PyramidAttentionBroadcast** and **FasterCache** reuse attention outputs instead of whole steps, with diffusers'
setting names and defaults (``PyramidAttentionBroadcastConfig``, ``FasterCacheConfig``); their rules are in
``docs/caching.md``. Their reports say, per step and per attention layer, whether it was computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _native
from ._files import atomic_write_text

#: The file a model folder carries its fitted coefficients in (``<stem>.teacache.json`` beside a model file).
COEFFICIENTS_FILE = "teacache.json"


@dataclass(frozen=True)
class CacheReport:
    """What a cached sampling run computed and skipped: per step whether the blocks ran (``computed``), the
    first block's input change, its rescaled value, the accumulator after the decision, and the model output's
    change; block calls counted as they ran (``blocks_computed``) and skipped; the most bytes the cache held."""

    policy: str
    threshold: float
    coefficients: list[float]
    input_range: list[float] | None
    coefficients_source: str
    computed: list[bool]
    input_changes: list[float | None]
    rescaled: list[float | None]
    accumulated: list[float]
    output_changes: list[float | None]
    blocks_per_pass: int
    blocks_computed: int
    blocks_skipped: int
    cache_bytes: int
    #: Each step's timestep.
    timesteps: list[float] = field(default_factory=list)
    #: Attention policies: per step, per kind ("spatial", "temporal", "cross"), per layer in the order the pass
    #: runs them, whether the attention was computed (False: reused or extrapolated).
    attention: list[dict[str, list[bool]]] = field(default_factory=list)
    #: FasterCache with guidance: per step, whether the unconditional branch ran (else None per step).
    uncond_computed: list[bool | None] = field(default_factory=list)
    attentions_per_pass: dict[str, int] = field(default_factory=dict)
    attention_computed: dict[str, int] = field(default_factory=dict)
    attention_skipped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheReport:
        steps = d["steps"]
        return cls(policy=d["policy"], threshold=d["threshold"], coefficients=list(d["coefficients"]),
                   input_range=d["input_range"],
                   coefficients_source=d["coefficients_source"], computed=[s["computed"] for s in steps],
                   input_changes=[s["input_change"] for s in steps], rescaled=[s["rescaled"] for s in steps],
                   accumulated=[s["accumulated"] for s in steps], output_changes=[s["output_change"] for s in steps],
                   blocks_per_pass=d["blocks_per_pass"], blocks_computed=d["blocks_computed"],
                   blocks_skipped=d["blocks_skipped"], cache_bytes=d["cache_bytes"],
                   timesteps=[s["timestep"] for s in steps], attention=[s["attention"] for s in steps],
                   uncond_computed=[s["uncond_computed"] for s in steps],
                   attentions_per_pass=d["attentions_per_pass"], attention_computed=d["attention_computed"],
                   attention_skipped=d["attention_skipped"])

    @property
    def steps_computed(self) -> int:
        return sum(self.computed)

    @property
    def steps_skipped(self) -> int:
        return len(self.computed) - self.steps_computed

    @property
    def uncond_skipped(self) -> int:
        """Steps whose unconditional branch was approximated (FasterCache with guidance)."""
        return sum(1 for u in self.uncond_computed if u is False)

    def summary(self) -> dict[str, Any]:
        """The counts, for logs and JSON."""
        if self.policy != "teacache":
            return {"policy": self.policy, "steps": len(self.computed), "blocks_computed": self.blocks_computed,
                    "attention_computed": dict(self.attention_computed),
                    "attention_skipped": dict(self.attention_skipped), "uncond_skipped": self.uncond_skipped,
                    "cache_bytes": self.cache_bytes}
        return {"policy": self.policy, "threshold": self.threshold, "coefficients_source": self.coefficients_source,
                "steps_computed": self.steps_computed, "steps_skipped": self.steps_skipped,
                "blocks_computed": self.blocks_computed, "blocks_skipped": self.blocks_skipped,
                "cache_bytes": self.cache_bytes}


class TeaCache(_native.TeaCache):
    """TeaCache (see the module docs): ``threshold`` (default 0.1, TeaCache's for Latte; 0 skips nothing), the
    rescaling polynomial ``coefficients``, highest power first as ``numpy.polyval`` (None: the model's fitted
    ones, else the published Latte-1 ones), and ``input_range`` ``[low, high]`` the change is clamped into before
    the polynomial (None: the model's fitted range with its coefficients, else none). After a sampling run,
    :attr:`report` says what it computed."""

    @property
    def report(self) -> CacheReport | None:
        """The report of the last sampling run this cache served (None before any)."""
        raw = self.last_report
        return None if raw is None else CacheReport.from_dict(raw)

    @classmethod
    def fit(cls, target: Any, *, runs: int = 3, degree: int = 4, threshold: float = 0.1, seed: int = 0,
            **sample_kwargs: Any) -> TeaCache:
        """Fits the rescaling polynomial for a model from ``runs`` uncached samplings and returns a ``TeaCache``
        with it: each step's relative L1 change of the first block's modulated input against that of the model's
        output, fitted with ``numpy.polyfit(inputs, outputs, degree)`` (steps 1 to n-2: the first has no change and
        the last always computes). The range of input changes seen becomes ``input_range``: a degree-4 polynomial
        swings outside its data, so changes outside it are clamped into it.

        ``target``: a ``LattePipeline`` or ``LatteT2VPipeline`` (called with ``sample_kwargs``, e.g.
        ``class_labels=`` or ``prompt_embeds=``), or a model, sampled with :func:`latte_rs.sample` (pass the
        scheduler as ``diffusion=``). Run ``i`` uses seed ``seed + i``. Save the result beside the model with
        :meth:`save` so that ``TeaCache()`` finds it."""
        from .sampling import sample

        if not isinstance(runs, int) or runs < 1:
            raise ValueError(f"runs: expected an int >= 1, got {runs!r}")
        if not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree: expected an int >= 0, got {degree!r}")
        inputs, outputs = [], []
        for i in range(runs):
            probe = cls(0.0, coefficients=[0.0])  # computes every step; records both changes
            if isinstance(target, (_native.LatteModel, _native.LatteT2VTransformer)):
                kwargs = dict(sample_kwargs)
                diffusion = kwargs.pop("diffusion", None)
                if diffusion is None:
                    raise ValueError("diffusion: required to fit on a model (the scheduler to sample with)")
                sample(target, diffusion, seed=seed + i, cache=probe, progress=False, **kwargs)
            else:
                target(**sample_kwargs, seed=seed + i, cache=probe, progress=False)
            report = probe.report
            # The last step always computes, and its output (the final denoising) jumps unlike any other: left out.
            for x, y in zip(report.input_changes[:-1], report.output_changes[:-1], strict=True):
                if x is not None and y is not None:
                    inputs.append(x)
                    outputs.append(y)
        if len(inputs) <= degree:
            raise ValueError(f"degree: {degree} needs more than {degree} (input, output) pairs; the runs gave "
                             f"{len(inputs)} (sample more steps or more runs)")
        coefficients = np.polyfit(np.asarray(inputs), np.asarray(outputs), degree)
        fitted = cls(threshold, coefficients=[float(c) for c in coefficients],
                     input_range=[float(min(inputs)), float(max(inputs))])
        fitted.fit_data = (np.asarray(inputs), np.asarray(outputs))
        return fitted

    def save(self, path: str | os.PathLike, **notes: Any) -> Path:
        """Writes the coefficients where loading a model finds them: ``path/teacache.json`` for a model folder (a
        diffusers ``transformer/``, a checkpoint folder), ``<stem>.teacache.json`` beside a model file, or ``path``
        itself when it ends in ``.json``. ``notes`` (how it was fitted) are stored beside the coefficients."""
        if self.coefficients is None:
            raise ValueError("coefficients: this TeaCache has none to save (fit one first)")
        path = Path(path)
        if path.suffix == ".json":
            target = path
        elif path.is_dir():
            target = path / COEFFICIENTS_FILE
        else:
            target = path.with_name(f"{path.stem}.{COEFFICIENTS_FILE}")
        content = {"coefficients": list(self.coefficients), "input_range": self.input_range,
                   "threshold": self.threshold, **notes}
        return atomic_write_text(target, json.dumps(content, indent=2) + "\n")


class PyramidAttentionBroadcast(_native.PyramidAttentionBroadcast):
    """Pyramid Attention Broadcast (Zhao et al. 2024), with diffusers' ``PyramidAttentionBroadcastConfig`` names
    and defaults: each attention layer of a kind with a ``*_block_skip_range`` ``n`` computes at its first call,
    at every ``n``-th, and whenever the timestep is outside its kind's ``*_timestep_skip_range`` ``(low, high)``
    (both ends excluded); in between it returns its last output. Spatial 2, temporal and cross ``None`` (never
    reused), every range ``(100, 800)``. ``n = 1`` (or all ``None``) skips nothing and gives the uncached output
    bit for bit. After a sampling run, :attr:`report` says which layers computed at each step.

    >>> import numpy as np, latte_rs
    >>> pab = latte_rs.PyramidAttentionBroadcast(spatial_attention_block_skip_range=2)
    >>> latents = latte_rs.sample(latte_rs.demo.tiny_model(), latte_rs.DDIMScheduler(), y=np.array([0]),
    ...                           num_inference_steps=10, progress=False, cache=pab)
    >>> pab.report.attention_skipped["spatial"] > 0
    True
    """

    @property
    def report(self) -> CacheReport | None:
        """The report of the last sampling run this cache served (None before any)."""
        return cache_report(self)


class FasterCache(_native.FasterCache):
    """FasterCache (Lv et al. 2024), with diffusers' ``FasterCacheConfig`` names and defaults. With guidance, the
    unconditional branch runs at the first step, at every ``unconditional_batch_skip_range``-th step and outside
    ``unconditional_batch_timestep_skip_range``; elsewhere only the conditional half runs and the unconditional
    output is the conditional one plus the last measured difference, split into low and high spatial frequencies
    and weighted by ``alpha_low_frequency`` / ``alpha_high_frequency`` inside their timestep ranges. Each spatial
    attention layer (temporal too with ``temporal_attention_block_skip_range``) may, in a conditional-only pass
    (any pass without guidance), return ``o1 + attention_weight * (o1 - o2)`` from its last two outputs instead of
    computing, except at every ``n``-th call and outside its timestep range. The full rules and where they depart
    from diffusers are in ``docs/caching.md``."""

    @property
    def report(self) -> CacheReport | None:
        """The report of the last sampling run this cache served (None before any)."""
        return cache_report(self)


#: The policies by name, as ``latte-rs sample --cache`` and ``latte-rs demo --cache`` take them.
CACHES = ("none", "teacache", "fastercache", "pab")


def make_cache(name: str, threshold: float | None = None) -> Any:
    """A fresh caching policy from its name (one of ``CACHES``; None for ``"none"``), each with its defaults:
    FasterCache and PAB with diffusers', TeaCache with the model's fitted coefficients and ``threshold`` (0.1 by
    default; it applies to TeaCache only).

    >>> type(make_cache("fastercache")).__name__, make_cache("none")
    ('FasterCache', None)
    """
    if name not in CACHES:
        raise ValueError(f"cache: expected one of {', '.join(CACHES)}, got {name!r}")
    if name != "teacache" and threshold is not None:
        raise ValueError(f"cache_threshold: applies to the teacache cache only, got {threshold!r} with {name!r}")
    if name == "none":
        return None
    if name == "pab":
        return PyramidAttentionBroadcast()
    if name == "fastercache":
        return FasterCache()
    return TeaCache() if threshold is None else TeaCache(threshold)


def cache_report(cache: Any) -> CacheReport | None:
    """The report a ``cache=`` argument holds after a run (None without a cache)."""
    if cache is None:
        return None
    raw = cache.last_report
    return None if raw is None else CacheReport.from_dict(raw)
