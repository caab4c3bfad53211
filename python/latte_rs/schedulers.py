"""Schedulers with diffusers' API (`DDPMScheduler`, `DDIMScheduler`, `EulerDiscreteScheduler`,
`DPMSolverMultistepScheduler`), computed by the Rust core.

Code written for diffusers runs unchanged and gives the same numbers: the same config keys (and
`scheduler_config.json` files), `set_timesteps` with "leading" / "trailing" / "linspace" spacing and
`steps_offset`, `step(...)` returning `prev_sample` and `pred_original_sample`, `add_noise`,
`scale_model_input`, `init_noise_sigma`, `timesteps`. Random draws come from a `latte_rs.Generator`: pass
`generator=` to `step`, or the scheduler's own generator (seeded 0 at construction) is used. Every `step`
returns `(prev_sample, pred_original_sample)` (a `SchedulerOutput`, or a tuple with ``return_dict=False``).

The arithmetic, the choice of when a step draws noise, and the draws themselves are the Rust core's; these
classes only give them diffusers' names and signatures.

>>> import numpy as np, latte_rs
>>> s = latte_rs.DDIMScheduler(clip_sample=False)
>>> s.set_timesteps(10)
>>> s.timesteps[:3]
array([900, 800, 700])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_write_text
from ._inputs import load_json, read_text
from ._native import Generator, Scheduler

CONFIG_NAME = "scheduler_config.json"


@dataclass
class SchedulerOutput:
    """One step's result (diffusers' `DDPMSchedulerOutput` / `DDIMSchedulerOutput`); for DPM-Solver,
    `pred_original_sample` is the converted model output (x0 for DPM-Solver++)."""

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray


def read_config(path: Path) -> dict[str, Any]:
    """A `scheduler_config.json`: FileNotFoundError if there is none, ValueError naming it if it is not a regular
    file holding a JSON object."""
    if not path.exists():
        raise FileNotFoundError(f"config: no scheduler config at {path}")
    try:
        config = load_json(read_text(path), str(path))
    except (ValueError, OSError) as e:  # not a regular file, not UTF-8, not JSON, nested too deeply
        raise ValueError(f"config: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config: {path} holds a JSON {type(config).__name__}, not an object of settings")
    return config


def _json_value(key: str, value: Any) -> Any:
    """A config value as JSON takes it: NumPy numbers and arrays (``trained_betas``) as Python numbers and lists;
    TypeError naming `key` for anything JSON cannot hold."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(f"{key}: expected a number, string, bool, list or None, got {type(value).__name__}") from None
    return value


class _DiffusersScheduler:
    """The diffusers face shared by the schedulers; ``core`` is the Rust scheduler it delegates to (what the
    native sampling loop runs)."""

    _kind = ""
    #: Config keys that differ from the shared defaults for this scheduler (as diffusers' signatures).
    _defaults: dict[str, Any] = {}
    order = 1

    def __init__(self, **config: Any) -> None:
        config = {k: _json_value(k, v) for k, v in config.items() if k not in ("_class_name", "_diffusers_version")}
        self.core = Scheduler(self._kind, json.dumps({**self._defaults, **config}))
        self._generator = Generator(0)

    @classmethod
    def from_config(cls, config: dict[str, Any] | str | os.PathLike[str], **overrides: Any):
        """From a config dict, a `scheduler_config.json` file, or a folder holding one (e.g. Latte-1's
        `scheduler/`). Keys for other schedulers are kept and ignored, as in diffusers."""
        if not isinstance(config, dict):
            path = Path(config)
            if path.is_dir():
                path = path / CONFIG_NAME
            config = read_config(path)
        return cls(**{**config, **overrides})

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.core.config_json())

    def save_config(self, save_directory: str | os.PathLike[str]) -> Path:
        """Writes `scheduler_config.json` (diffusers' format) into `save_directory`; returns its path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": type(self).__name__, **self.config}
        return atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")

    @property
    def timesteps(self) -> np.ndarray:
        return self.core.timesteps

    @property
    def num_inference_steps(self) -> int | None:
        return self.core.num_inference_steps

    @property
    def init_noise_sigma(self) -> float:
        return self.core.init_noise_sigma

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self.core.alphas_cumprod

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """Chooses the inference timesteps (`device` is accepted for diffusers compatibility)."""
        self.core.set_timesteps(int(num_inference_steps))

    def scale_model_input(self, sample: Any, timestep: Any = None) -> Any:
        return sample

    def add_noise(self, original_samples: Any, noise: Any, timesteps: Any) -> np.ndarray:
        """q(x_t | x0) at `timesteps`: one per sample, or one (a scalar) for the whole batch."""
        return self.core.add_noise(original_samples, noise, timesteps)

    def _step(self, model_output: Any, timestep: Any, sample: Any, return_dict: bool, generator: Any = None,
              variance_noise: Any = None, **options: Any):
        if variance_noise is None and generator is None:
            generator = self._generator
        prev, x0 = self.core.step(model_output, float(np.asarray(timestep)), sample, generator=generator,
                                     variance_noise=variance_noise, **options)
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)

    def __len__(self) -> int:
        return len(self.core)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.config, sort_keys=True)})"


class DDPMScheduler(_DiffusersScheduler):
    """Denoising diffusion probabilistic models (Ho et al.), as diffusers' `DDPMScheduler`.

    `variance_type` "learned_range" takes a model output with twice the sample's channels (on axis 1 as in
    diffusers, or axis 2 for latte-rs's (B, F, C, H, W) videos).
    """

    _kind = "ddpm"

    def step(self, model_output: Any, timestep: Any, sample: Any, generator: Generator | None = None,
             return_dict: bool = True):
        return self._step(model_output, timestep, sample, return_dict, generator)


class DDIMScheduler(_DiffusersScheduler):
    """Denoising diffusion implicit models (Song et al.), as diffusers' `DDIMScheduler`."""

    _kind = "ddim"

    def step(self, model_output: Any, timestep: Any, sample: Any, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Generator | None = None, variance_noise: Any = None,
             return_dict: bool = True):
        return self._step(model_output, timestep, sample, return_dict, generator, variance_noise, eta=eta,
                          use_clipped_model_output=use_clipped_model_output)


class _SigmaScheduler(_DiffusersScheduler):
    """A scheduler parameterised by noise levels σ (Euler, DPM-Solver): it exposes `sigmas`, not `alphas_cumprod`."""

    _defaults = {"timestep_spacing": "linspace"}

    @property
    def sigmas(self) -> np.ndarray:
        return self.core.sigmas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        raise AttributeError(f"{type(self).__name__} exposes sigmas, not alphas_cumprod")


class EulerDiscreteScheduler(_SigmaScheduler):
    """Euler sampling (Karras et al., Algorithm 2), as diffusers' `EulerDiscreteScheduler`: call
    `scale_model_input` before the model, then `step`. Supports "linear" / "log_linear" interpolation, Karras
    sigmas, final sigma "zero" / "sigma_min", and churn (`s_churn`, with noise from the generator)."""

    _kind = "euler"

    def scale_model_input(self, sample: Any, timestep: Any) -> np.ndarray:
        return self.core.scale_model_input(sample, float(np.asarray(timestep)))

    def step(self, model_output: Any, timestep: Any, sample: Any, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator: Generator | None = None,
             return_dict: bool = True):
        return self._step(model_output, timestep, sample, return_dict, generator, s_churn=s_churn, s_tmin=s_tmin,
                          s_tmax=s_tmax, s_noise=s_noise)


class DPMSolverMultistepScheduler(_SigmaScheduler):
    """DPM-Solver++ / DPM-Solver multistep (orders 1-2, midpoint or Heun) and their SDE forms
    (``algorithm_type="sde-dpmsolver++"``, whose steps draw noise from `generator`), as diffusers'
    `DPMSolverMultistepScheduler`: Karras sigmas, lower-order final steps, final sigma "zero" / "sigma_min".
    `step` also returns the converted model output (x0 for DPM-Solver++) as `pred_original_sample`. With a learned
    variance the solver uses the first half of the channels (diffusers slices three channels there)."""

    _kind = "dpmsolver"

    def step(self, model_output: Any, timestep: Any, sample: Any, generator: Generator | None = None,
             variance_noise: Any = None, return_dict: bool = True):
        return self._step(model_output, timestep, sample, return_dict, generator, variance_noise)
