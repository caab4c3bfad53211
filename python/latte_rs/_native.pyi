"""Type stubs of the native module (the Rust core's pyo3 classes)."""

from collections.abc import Callable, Iterator, Sequence
from os import PathLike
from typing import Any, Literal, TypeAlias, TypedDict, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Self, disjoint_base

__all__ = [
    "__version__",
    "CUDA_AVAILABLE",
    "FLASH_ATTN_AVAILABLE",
    "LatteConfig",
    "LatteModel",
    "ForwardGraph",
    "_SharedStorage",
    "GaussianDiffusion",
    "Generator",
    "Scheduler",
    "Trainer",
    "VideoVAE",
    "I3D",
    "LatteT2VConfig",
    "LatteT2VTransformer",
    "OpenedModel",
    "TeaCache",
    "PyramidAttentionBroadcast",
    "FasterCache",
    "T5TextEncoder",
    "BF16_AUTOCAST_SUPPORTED",
    "open_model",
    "sample",
    "set_autocast",
    "set_kernel_path",
]

__version__: str
CUDA_AVAILABLE: bool
FLASH_ATTN_AVAILABLE: bool
BF16_AUTOCAST_SUPPORTED: bool  # the CPU has AVX512-BF16, so latte_rs.autocast() multiplies in bf16

def set_autocast(dtype: str | None) -> str | None:
    """Turn CPU bf16 autocast on (``"bfloat16"``) or off (``None``) for this thread; return the previous setting.
    Use :class:`latte_rs.autocast` instead."""

def set_kernel_path(path: Literal["auto", "generic"]) -> Literal["auto", "generic"]:
    """Choose, for the whole process, what the building blocks run; return the previous choice.

    ``"auto"`` (the default): the fused CPU kernels where they apply (CPU tensors of a dtype they handle), the
    device-generic tensor ops elsewhere (CUDA). ``"generic"``: the device-generic ops everywhere, also on the CPU,
    to run on the CPU exactly the code a GPU runs. ``LATTE_RS_KERNELS=generic`` sets it from the environment.

    >>> previous = latte_rs.set_kernel_path("generic")
    >>> latte_rs.set_kernel_path(previous)
    'generic'
    """

ArrayLike: TypeAlias = npt.ArrayLike | Any  # NumPy arrays, or any object with __dlpack__ (torch tensors)

@final
class LatteConfig:
    """Every option of a Latte model. Immutable; ``replace`` returns a changed copy.

    >>> cfg = LatteConfig.preset("Latte-XL/2", num_frames=16, image_size=256, num_classes=101)
    >>> cfg.input_size, cfg.out_channels
    (32, 8)
    """

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    mlp_ratio: float
    input_size: int
    in_channels: int
    num_frames: int
    learn_sigma: bool
    num_classes: int
    class_dropout_prob: float
    variant: Literal[1, 2, 3, 4]
    patch_embed: Literal["frame", "tubelet"]
    tubelet_size: int
    injection: Literal["adaln", "tokens"]
    temporal_position: Literal["absolute", "rope"]
    use_image_num: int
    attention: Literal["auto", "math", "chunked", "flash"]
    attention_chunk_size: int

    def __new__(cls, **kwargs: Any) -> LatteConfig:
        """Defaults are the official Latte-XL/2 (16 frames, 32×32×4 latents, learn_sigma, unconditional).

        Raises ``TypeError`` for an unknown keyword and ``ValueError`` (naming the field) for a bad value or an
        impossible combination. ``image_size`` (pixels) may be given instead of ``input_size``.
        """
    @staticmethod
    def preset(name: str, **kwargs: Any) -> LatteConfig:
        """A size preset by name (``"Latte-S/2"`` ... ``"Latte-XL/8"``) with keyword overrides."""
    @staticmethod
    def preset_names() -> list[str]: ...
    def replace(self, **kwargs: Any) -> LatteConfig:
        """A copy with some fields changed, validated."""
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(s: str) -> LatteConfig: ...
    def to_dict(self) -> dict[str, Any]: ...
    @staticmethod
    def from_dict(d: dict[str, Any]) -> LatteConfig: ...
    def num_parameters(self, trainable_only: bool = True) -> int:
        """Parameter count of the model this config builds (without the fixed sin-cos tables by default)."""
    @property
    def out_channels(self) -> int:
        """``2 * in_channels`` with ``learn_sigma``, else ``in_channels``."""
    def keys(self) -> list[str]:
        """The field names: a config also reads as a mapping (``cfg["num_frames"]``, ``dict(cfg)``)."""
    def __getitem__(self, key: str, /) -> Any: ...
    def __contains__(self, key: str, /) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool:
        """Equal to a config with the same fields and, as diffusers' config objects, to a dict of them."""

@final
class LatteT2VConfig:
    """The text-to-video transformer's config: diffusers' ``LatteTransformer3DModel`` ``config.json`` keys, with
    Latte-1's values as defaults. Immutable; ``replace`` returns a changed copy. Reads as attributes and, like
    diffusers' config objects, as a mapping.

    >>> cfg = LatteT2VConfig(num_layers=2, video_length=8)
    >>> cfg.video_length, cfg["num_attention_heads"], cfg.inner_dim
    (8, 16, 1152)
    >>> LatteT2VConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    num_attention_heads: int
    attention_head_dim: int
    in_channels: int
    out_channels: int | None
    num_layers: int
    cross_attention_dim: int | None
    attention_bias: bool
    sample_size: int
    patch_size: int
    activation_fn: Literal["gelu", "gelu-approximate", "geglu"]
    num_embeds_ada_norm: int | None
    norm_type: Literal["ada_norm_single"]
    norm_elementwise_affine: bool
    norm_eps: float
    caption_channels: int
    video_length: int

    def __new__(cls, **kwargs: Any) -> LatteT2VConfig:
        """Latte-1's config with keyword overrides. Raises ``TypeError`` for an unknown keyword and
        ``ValueError`` (naming the key) for a bad value or an impossible combination."""
    @staticmethod
    def from_pretrained(
        path: str | PathLike[str], *, subfolder: str | None = None, revision: str | None = None
    ) -> LatteT2VConfig:
        """Reads a diffusers ``config.json`` or the ``transformer/`` folder holding it (keys it does not know,
        such as ``_class_name``, are ignored). ``path`` may be a Hugging Face Hub id (``org/name``; only its
        ``config.json`` is fetched; see :mod:`latte_rs.hub`)."""
    def replace(self, **kwargs: Any) -> LatteT2VConfig:
        """A copy with some fields changed, validated."""
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(s: str) -> LatteT2VConfig: ...
    def to_dict(self) -> dict[str, Any]: ...
    @staticmethod
    def from_dict(d: dict[str, Any]) -> LatteT2VConfig: ...
    @property
    def inner_dim(self) -> int:
        """``num_attention_heads * attention_head_dim``: the transformer's width."""
    def keys(self) -> list[str]: ...
    def __getitem__(self, key: str, /) -> Any: ...
    def __contains__(self, key: str, /) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool:
        """Equal to a config with the same fields and, as diffusers' config objects, to a dict of them."""

@final
class OpenedModel:
    """What :func:`open_model` found: the model, its kind, which weights it took and what the file records
    about its training."""

    @property
    def model(self) -> LatteModel | LatteT2VTransformer: ...
    @property
    def kind(self) -> Literal["latte", "text"]:
        """``"latte"`` (class-conditional or unconditional Latte) or ``"text"`` (the text-to-video transformer)."""
    @property
    def weights(self) -> str | None:
        """Which weights of the file were taken (``"ema"``, ``"model"``, ...), None for a bare state dict."""
    @property
    def diffusion(self) -> GaussianDiffusion | None:
        """The diffusion process the model was trained with, where the checkpoint records it (latte-rs trainer
        checkpoints and the model files inside them)."""
    @property
    def prediction_type(self) -> Literal["epsilon", "sample", "v_prediction"]:
        """What the model predicts: the recorded process's, else a diffusers pipeline folder's scheduler's, else
        ``"epsilon"`` (official Latte and Latte-1 checkpoints). What a sampler must be told."""

def open_model(
    path: str | PathLike[str],
    *,
    use_ema: bool = True,
    kind: Literal["latte", "text"] | None = None,
    preset: str | None = None,
    device: str = "cpu",
    subfolder: str | None = None,
    revision: str | None = None,
    filename: str | None = None,
    **overrides: Any,
) -> OpenedModel:
    """Opens any model file: an official Latte checkpoint (``.pt``), a safetensors file (latte-rs's, class or
    text-to-video, or a bare state dict), a latte-rs trainer checkpoint folder or a model file inside one, a
    diffusers ``transformer/`` folder or the pipeline folder above it. Every file of a trainer checkpoint is
    verified against its manifest. ``kind`` refuses the other kind before anything is built; ``preset`` and
    keyword overrides (LatteConfig fields) complete a bare state dict. ``path`` may be a Hugging Face Hub id
    (``org/name``, with ``subfolder``, ``revision`` and ``filename``; see :mod:`latte_rs.hub`).

    >>> import latte_rs
    >>> opened = latte_rs.open_model(latte_rs.demo.TINY_MODEL)
    >>> opened.kind, opened.prediction_type, type(opened.model).__name__
    ('latte', 'epsilon', 'LatteModel')
    """

@final
class LatteModel:
    """A Latte model with its parameters.

    >>> model = LatteModel(LatteConfig.preset("Latte-S/8", num_frames=4, input_size=16), seed=0)
    >>> model(np.zeros((1, 4, 4, 16, 16), np.float32), np.array([10])).shape
    (1, 4, 8, 16, 16)
    """

    @property
    def teacache_coefficients(self) -> list[float] | None:
        """The TeaCache rescaling coefficients fitted for this model (read from its ``teacache.json`` when loaded;
        ``TeaCache()`` without coefficients uses them), or None. Shared with the model's clones."""
    @teacache_coefficients.setter
    def teacache_coefficients(self, coefficients: list[float] | None) -> None: ...
    @property
    def teacache_input_range(self) -> list[float] | None:
        """The range of input changes the fitted coefficients hold for, ``[low, high]`` (None: unbounded or none)."""
    def __new__(
        cls,
        config: LatteConfig,
        device: str = "cpu",
        seed: int = 0,
        dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32",
    ) -> LatteModel:
        """Builds the model and initialises it by the DiT/Latte recipe from ``seed``.

        ``device`` is ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` in a build with the ``cuda`` feature.
        """
    def __call__(
        self, x: ArrayLike, t: ArrayLike, y: ArrayLike | None = None, y_image: ArrayLike | None = None
    ) -> np.ndarray:
        """Predicted noise (and variance values with learn_sigma).

        x: (B, F, C, H, W) float, F = num_frames (+ up to use_image_num image frames); t: (B,) timesteps in
        [0, 1000); y: (B,) int labels in [0, num_classes] (num_classes is the null class) for class-conditional
        models; y_image: (B, F - num_frames) labels of the image frames (default: each clip's y).
        Returns (B, F, out_channels, H, W). Raises ``ValueError`` / ``TypeError`` naming the bad argument.
        """
    def forward(
        self, x: ArrayLike, t: ArrayLike, y: ArrayLike | None = None, y_image: ArrayLike | None = None
    ) -> np.ndarray:
        """Same as calling the model."""
    def forward_with_cfg(self, x: ArrayLike, t: ArrayLike, y: ArrayLike | None, cfg_scale: float) -> np.ndarray:
        """Classifier-free guidance as the official code: the model runs on the first half of ``x`` twice (labels
        ``y``: conditional half, then null-class half) and the first ``in_channels`` channels of both halves become
        ``uncond + cfg_scale * (cond - uncond)``."""
    def num_parameters(self, trainable_only: bool = True) -> int: ...
    def forward_graph(
        self,
        x: ArrayLike,
        t: ArrayLike,
        y: ArrayLike | None = None,
        y_image: ArrayLike | None = None,
        *,
        input_grad: bool = False,
    ) -> tuple[npt.NDArray[np.floating], ForwardGraph]:
        """The forward pass keeping its graph, for an autograd engine outside latte-rs (``latte_rs.torch``):
        ``(output, graph)``. Labels are used as given (the caller does the dropout)."""
    def shared_parameters(self) -> dict[str, npt.NDArray[np.floating]]:
        """Every parameter as a NumPy array over the model's own memory (no copy; writes change the model).
        float32/float64 models on the CPU."""
    @property
    def trainable_parameter_names(self) -> list[str]:
        """The trainable parameters (without the fixed sin-cos tables), sorted: ``forward_graph``'s order."""
    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter by its official name (copies), including ``pos_embed`` / ``temp_embed``."""
    def load_state_dict(self, state_dict: dict[str, ArrayLike], strict: bool = True) -> tuple[list[str], list[str]]:
        """Loads parameters by name; returns ``(missing_keys, unexpected_keys)``.

        Raises ``ValueError`` listing missing, unexpected (when ``strict``) and mis-shaped keys.
        """
    def save(self, path: str | PathLike[str]) -> None:
        """Writes weights and config to one safetensors file, atomically."""
    @staticmethod
    def load(
        path: str | PathLike[str], device: str = "cpu", *, subfolder: str | None = None,
        revision: str | None = None, filename: str | None = None,
    ) -> LatteModel:
        """Reads a file written by ``save``, local or a Hugging Face Hub id (see ``from_checkpoint``). Raises
        ``FileNotFoundError`` if it does not exist."""
    @staticmethod
    def from_checkpoint(
        path: str | PathLike[str], preset: str | None = None, use_ema: bool = True, device: str = "cpu", *,
        subfolder: str | None = None, revision: str | None = None, filename: str | None = None, **overrides: Any,
    ) -> LatteModel:
        """Loads trained weights from the files users have, without PyTorch:

        - official Latte checkpoints (``ffs.pt``, ``ucf101.pt``, ``skytimelapse.pt``, ``taichi-hd.pt``, and
          ``train.py``'s ``{"model", "ema"}`` files): PyTorch zip archives read by candle's pickle reader, which
          interprets the pickle in Rust and never runs Python code; anything in the state dict that is not a tensor
          (a pickled function call) is refused with an error naming it;
        - safetensors files (ours, with the config, or a bare state dict) and latte-rs Trainer checkpoint folders.

        EMA weights are used when present and ``use_ema``. Options a file does not record come from the tensor
        shapes (depth, width, patch, frames, input size, classes, learned sigma); the head count from ``preset`` or
        the width (S 6, B 12, L 16, XL 16); keyword arguments (LatteConfig fields such as ``num_heads``,
        ``class_dropout_prob``, ``attention``) override them.

        ``path`` may be a Hugging Face Hub id (``org/name``, with ``subfolder``, ``revision`` and ``filename``;
        a local path of the same spelling wins; see :mod:`latte_rs.hub`):
        ``LatteModel.from_checkpoint("maxin-cn/Latte", filename="ucf101.pt")``.

        >>> model = LatteModel.from_checkpoint("ucf101.pt")  # doctest: +SKIP
        >>> model.config.num_classes, model.config.num_frames  # doctest: +SKIP
        (101, 16)
        """
    @property
    def config(self) -> LatteConfig: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...

@final
class GaussianDiffusion:
    """The Gaussian diffusion of IDDPM / DiT / Latte (DiT's ``create_diffusion``), optionally respaced.

    Per-timestep tables are float64; tensor math runs in the inputs' dtype (pass float64 for exact comparisons).
    ``t`` arguments are step indices of this (possibly respaced) process; ``timestep_map`` gives the original
    timesteps the model is conditioned on.

    >>> d = GaussianDiffusion(timestep_respacing="250")
    >>> d.num_timesteps, int(d.timestep_map[1])
    (250, 4)
    """

    def __new__(
        cls,
        timestep_respacing: str = "",
        noise_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        learn_sigma: bool = True,
        sigma_small: bool = False,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        rescale_learned_sigmas: bool = False,
        use_kl: bool = False,
        diffusion_steps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ) -> GaussianDiffusion:
        """``timestep_respacing``: "" (all steps), "250" (counts per equal section, e.g. "10,10,10") or "ddim50".
        ``beta_start``/``beta_end`` apply to "scaled_linear" only ("linear" is DiT's 1e-4 → 0.02 scaled by 1000/T).
        Variance: learned-range with ``learn_sigma``, else fixed-small (``sigma_small``) or fixed-large."""
    @staticmethod
    def load(path: str | PathLike[str]) -> GaussianDiffusion:
        """The process of a trainer checkpoint (its folder, or its ``diffusion.json``), checked as a resume
        checks it. ``FileNotFoundError`` if there is none, ``ValueError`` if it is not a valid process."""
    @property
    def prediction_type(self) -> Literal["epsilon", "sample", "v_prediction"]:
        """What the model's output predicts, in diffusers' words: what a sampler must be told."""
    @property
    def variance_type(self) -> Literal["fixed_small", "fixed_large", "learned", "learned_range"]:
        """How each step's variance is chosen; ``"learned_range"`` (Latte's): the model's second half of channels
        interpolates between the two fixed ones."""
    @property
    def loss_type(self) -> Literal["mse", "rescaled_mse", "kl", "rescaled_kl"]:
        """The training objective; ``"mse"`` adds the variational-bound term for a learned variance (the hybrid
        loss)."""
    @property
    def num_timesteps(self) -> int: ...
    @property
    def timestep_map(self) -> np.ndarray: ...
    def tables(self) -> dict[str, np.ndarray]:
        """betas, alphas_cumprod(_prev/_next), posterior_variance, posterior_log_variance_clipped, ... (float64)."""
    def q_sample(self, x_start: ArrayLike, t: ArrayLike, noise: ArrayLike) -> np.ndarray: ...
    def q_posterior_mean_variance(
        self, x_start: ArrayLike, x_t: ArrayLike, t: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def p_mean_variance(
        self, model_output: ArrayLike, x: ArrayLike, t: ArrayLike, clip_denoised: bool = True
    ) -> dict[str, np.ndarray]:
        """Keys: mean, variance, log_variance, pred_xstart. ``model_output`` has 2C channels with learned variance."""
    def training_losses(
        self, model_output: ArrayLike, x_start: ArrayLike, t: ArrayLike, noise: ArrayLike
    ) -> dict[str, np.ndarray]:
        """Per-sample ``loss`` (and ``mse``, ``vb`` for the hybrid loss) for a model output at q_sample(x_start)."""
    def p_sample(
        self, model_output: ArrayLike, x: ArrayLike, t: ArrayLike, noise: ArrayLike, clip_denoised: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """One ancestral step with the given noise: (x_{t-1}, pred_xstart)."""
    def ddim_sample(
        self,
        model_output: ArrayLike,
        x: ArrayLike,
        t: ArrayLike,
        noise: ArrayLike,
        eta: float = 0.0,
        clip_denoised: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One DDIM step with the given noise (unused when ``eta`` = 0): (x_{t-1}, pred_xstart)."""
    def sample(
        self,
        model: LatteModel | LatteT2VTransformer,
        num_samples: int = 1,
        noise: ArrayLike | None = None,
        y: ArrayLike | None = None,
        cfg_scale: float = 1.0,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        eta: float = 0.0,
        seed: int = 0,
        clip_denoised: bool = False,
        callback: Callable[[int, int], object] | None = None,
    ) -> np.ndarray:
        """Runs every step in Rust; ``callback(done, total)`` after each (``latte_rs.sample`` shows a tqdm bar)."""

@final
class Generator:
    """A seeded random generator (ChaCha8): the same seed gives the same numbers on every platform."""

    def __new__(cls, seed: int = 0) -> Generator: ...
    def manual_seed(self, seed: int) -> Generator:
        """Restarts the stream from ``seed``; returns the generator."""
    @property
    def initial_seed(self) -> int: ...
    def randn(self, shape: list[int]) -> np.ndarray:
        """Standard normal float32 draws of the given shape."""

@final
class Scheduler:
    """The Rust core of every diffusers-style scheduler (use ``DDPMScheduler``, ``DDIMScheduler``,
    ``EulerDiscreteScheduler`` or ``DPMSolverMultistepScheduler``)."""

    def __new__(cls, kind: Literal["ddpm", "ddim", "euler", "dpmsolver"], config_json: str) -> Scheduler: ...
    def config_json(self) -> str: ...
    def set_timesteps(self, num_inference_steps: int) -> None: ...
    @property
    def timesteps(self) -> np.ndarray: ...
    @property
    def num_inference_steps(self) -> int | None: ...
    @property
    def alphas_cumprod(self) -> np.ndarray | None:
        """The ᾱ table (DDPM, DDIM; None for the σ-parameterised schedulers)."""
    @property
    def sigmas(self) -> np.ndarray | None:
        """The noise levels (Euler, DPM-Solver; None for DDPM, DDIM)."""
    @property
    def init_noise_sigma(self) -> float: ...
    def scale_model_input(self, sample: ArrayLike, timestep: float) -> np.ndarray: ...
    def step(
        self,
        model_output: ArrayLike,
        timestep: float,
        sample: ArrayLike,
        *,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = ...,
        s_noise: float = 1.0,
        generator: Generator | Any | None = None,
        variance_noise: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One step: (prev_sample, pred_original_sample). The scheduler decides whether the step is stochastic;
        its noise is ``variance_noise``, or drawn from ``generator`` (a ``Generator`` or anything with
        ``randn(shape)``)."""
    def add_noise(self, original_samples: ArrayLike, noise: ArrayLike, timesteps: ArrayLike) -> np.ndarray:
        """q(x_t | x0) at ``timesteps``: one per sample, or one (a scalar) for the batch."""
    def __len__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool:
        """Equal to a config with the same fields and, as diffusers' config objects, to a dict of them."""

class StepStats(TypedDict):
    loss: float
    """Mean loss over the batch (NaN for ``apply_gradients``)."""
    mse: float | None
    vb: float | None
    grad_norm: float
    """Global gradient norm before clipping."""
    lr: float
    step: int
    """Optimiser steps taken so far."""
    skipped: bool
    skipped_steps: int
    loss_scale: float | None
    """The dynamic loss scale of an f16 model."""

@final
class Trainer:
    """Trains a ``LatteModel`` (or the text-to-video ``LatteT2VTransformer``) with a ``GaussianDiffusion`` as the
    official Latte ``train.py``, and more.

    Each ``step`` samples timesteps, noise and classifier-free-guidance label dropout from the trainer's seeded
    generator, computes the hybrid loss (MSE + variational bound), back-propagates, clips the global gradient
    norm (from ``clip_start_step`` on), takes an AdamW step (``torch.optim.AdamW``'s arithmetic, with f32 master
    weights when the model is bfloat16/float16, and dynamic loss scaling for float16) and updates the EMA. The
    model's weights change in place. ``grad_accumulation=k`` cuts each batch into k micro-batches (bounding
    activation memory) and sums their gradients; ``gradient_checkpointing`` recomputes block activations in the
    backward pass instead of storing them.

    >>> import numpy as np, latte_rs
    >>> cfg = latte_rs.LatteConfig(depth=2, hidden_size=32, num_heads=2, input_size=8, num_frames=4)
    >>> model = latte_rs.LatteModel(cfg, seed=0)
    >>> trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-3, seed=0)
    >>> stats = trainer.step(np.random.default_rng(0).normal(size=(2, 4, 4, 8, 8)).astype(np.float32))
    >>> stats["step"], stats["loss"] > 0
    (1, True)
    >>> trainer.save("ckpt/0000001")  # doctest: +SKIP
    >>> trainer = latte_rs.Trainer.resume("ckpt/0000001")  # doctest: +SKIP

    A text-to-video model trains on caption features (T5's, padding zeroed by the mask) with caption dropout to
    ``null_caption``, the empty prompt's features (the unconditional branch of the pipelines' guidance). Latents
    are in the datasets' ``(B, F, C, H, W)`` for both kinds of model:

    >>> t2v = latte_rs.LatteT2VTransformer(dict(num_attention_heads=2, attention_head_dim=4, num_layers=1,
    ...     cross_attention_dim=8, sample_size=4, caption_channels=6, video_length=2), seed=0)
    >>> null = np.zeros((1, 5, 6), np.float32)
    >>> trainer = latte_rs.Trainer(t2v, latte_rs.GaussianDiffusion(), lr=1e-3, null_caption=null)
    >>> x = np.random.default_rng(0).normal(size=(2, 2, 4, 4, 4)).astype(np.float32)
    >>> text = np.random.default_rng(1).normal(size=(2, 5, 6)).astype(np.float32)
    >>> trainer.step(x, encoder_hidden_states=text, encoder_attention_mask=np.ones((2, 5)))["step"]
    1
    """

    def __new__(
        cls,
        model: LatteModel | LatteT2VTransformer,
        diffusion: GaussianDiffusion,
        *,
        lr: float = 1e-4,
        betas: Sequence[float] = ...,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        ema_decay: float = 0.9999,
        grad_clip: float | None = None,
        clip_start_step: int = 0,
        grad_accumulation: int = 1,
        gradient_checkpointing: bool = False,
        skip_nonfinite: bool = False,
        seed: int = 3407,
        caption_dropout_prob: float = 0.1,
        null_caption: ArrayLike | None = None,
        null_caption_mask: ArrayLike | None = None,
    ) -> Trainer:
        """Defaults are the official recipe (AdamW 1e-4, ``betas`` (0.9, 0.999), no weight decay, constant LR, EMA
        0.9999).

        ``warmup_steps``: linear warm-up of the learning rate. ``grad_clip``: max global norm (None: no clipping).
        ``skip_nonfinite``: on a NaN/Inf loss or gradient, skip the step and count it instead of raising
        ``ValueError``; the weights are untouched either way.

        Text models: ``caption_dropout_prob`` of the clips (one draw per clip for its caption, one for all its
        image captions) get ``null_caption`` ``(1, S, C)`` or ``(S, C)`` (the empty prompt's T5 features:
        ``T5TextEncoder.empty_prompt(S)`` or ``LatentClips.null_caption``), masked by ``null_caption_mask``.
        It is kept in checkpoints. Class models drop labels by their config's ``class_dropout_prob``.
        """
    def step(
        self,
        latents: ArrayLike,
        labels: ArrayLike | None = None,
        image_labels: ArrayLike | None = None,
        *,
        encoder_hidden_states: ArrayLike | None = None,
        encoder_attention_mask: ArrayLike | None = None,
        timesteps: ArrayLike | None = None,
        noise: ArrayLike | None = None,
    ) -> StepStats:
        """One optimiser step on clean latents ``(B, F, C, H, W)`` (F = num_frames, plus up to use_image_num image
        frames), with labels ``(B,)`` for a class-conditional model and the image frames' labels
        ``(B, F - num_frames)``. B must be divisible by ``grad_accumulation``. ``timesteps`` ``(B,)`` (indices
        into the diffusion's steps) and ``noise`` (the latents' shape) replace the trainer's own draws (label
        dropout is still drawn). A text model takes ``encoder_hidden_states`` ``(B, S, C)`` instead of labels, or
        ``(B, 1 + n, S, C)`` for clips whose last n frames are images (the video's caption, then one per image),
        with their 0/1 ``encoder_attention_mask`` (the same shape without C)."""
    def forward_backward(
        self,
        latents: ArrayLike,
        labels: ArrayLike | None = None,
        image_labels: ArrayLike | None = None,
        *,
        encoder_hidden_states: ArrayLike | None = None,
        encoder_attention_mask: ArrayLike | None = None,
        timesteps: ArrayLike | None = None,
        noise: ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.floating], dict[str, float | None]]:
        """The first half of ``step`` (data parallelism): ``(gradient, {"loss", "mse", "vb"})`` without changing
        the weights. The gradient is one flat array of every trainable parameter in ``parameter_names`` order
        (unscaled; float32, float64 for a float64 model). Average both over processes and pass them to
        ``apply_gradients`` for one step on the joint batch (``latte_rs.distributed.DistributedTrainer``)."""
    def apply_gradients(
        self,
        grads: dict[str, ArrayLike] | ArrayLike,
        *,
        loss: float | None = None,
        mse: float | None = None,
        vb: float | None = None,
    ) -> StepStats:
        """One optimiser step (clipping, AdamW, EMA) from gradients computed elsewhere: a dict with one per
        trainable parameter, or the flat gradient of ``forward_backward`` with the losses it came from."""
    def save(self, path: str | PathLike[str], *, rank_rng_states: list[str] | None = None) -> None:
        """Writes a checkpoint directory atomically: ``model.safetensors`` and ``ema.safetensors`` (both load with
        ``LatteModel.load``), ``optimizer.safetensors``, ``diffusion.json`` and ``trainer.json`` (options, step,
        RNG state, CRC-32 of every file). A crash mid-save leaves any previous checkpoint intact.
        ``rank_rng_states``: every rank's ``rng_state`` of a data-parallel run, kept for an exact resume.

        Only a latte-rs checkpoint or an empty folder at ``path`` is replaced; anything else there raises
        ``ValueError`` naming the path, with nothing changed. The hidden copies beside ``path`` that are deleted are
        this save's own and those a crashed save left (each holds a marker proving it), never others."""
    @property
    def rng_state(self) -> str:
        """The position of the random stream (timesteps, noise, label dropout), as JSON."""
    def set_rng_state(self, state: str) -> None: ...
    def reseed(self, seed: int) -> None:
        """Restarts the random stream from ``seed``."""
    @property
    def rank_rng_states(self) -> list[str]:
        """Every rank's stream of the data-parallel run this trainer was resumed from (empty for one process)."""
    @property
    def parameter_names(self) -> list[str]:
        """The trainable parameters in the order of ``forward_backward``'s flat gradient."""
    @property
    def parameter_shapes(self) -> list[list[int]]: ...
    @staticmethod
    def resume(path: str | PathLike[str], device: str = "cpu") -> Trainer:
        """The trainer saved at ``path``, continuing bit-exactly. A truncated or corrupted file raises
        ``ValueError`` naming it."""
    def ema_model(self) -> LatteModel | LatteT2VTransformer:
        """The EMA weights as a new model (float32, or float64 for a float64 model)."""
    def ema_state_dict(self) -> dict[str, npt.NDArray[np.floating]]: ...
    @property
    def null_caption(self) -> npt.NDArray[np.floating] | None:
        """A text trainer's null caption ``(1, S, C)`` (padding zeroed), or None."""
    @property
    def model(self) -> LatteModel | LatteT2VTransformer:
        """The model being trained (shares its weights with the trainer)."""
    @property
    def diffusion(self) -> GaussianDiffusion: ...
    @property
    def step_count(self) -> int: ...
    @property
    def skipped_steps(self) -> int: ...
    @property
    def options(self) -> dict[str, Any]:
        """The constructor's keyword arguments."""
    def lr_at(self, step: int) -> float:
        """The learning rate of the 1-based optimiser step ``step``."""

@final
class VideoVAE:
    """The video VAE: diffusers' ``AutoencoderKL`` (the Stable Diffusion VAE Latte uses), applied frame by frame.

    Reads a diffusers ``vae/`` folder as it is. ``encode`` gives latents × ``scaling_factor`` (0.18215 for the SD
    VAE), sampled from the latent distribution with a seeded generator or its mean; ``decode`` inverts the scaling.
    Frames go through in chunks of ``chunk_size`` to bound memory.
    """

    @staticmethod
    def from_pretrained(
        path: str | PathLike[str], device: str = "cpu", dtype: str = "float32", *, subfolder: str | None = None,
        revision: str | None = None,
    ) -> VideoVAE:
        """Loads ``config.json`` and ``diffusion_pytorch_model.safetensors`` from ``path``: a folder or a Hugging
        Face Hub id (``org/name``, with ``subfolder`` and ``revision``; see :mod:`latte_rs.hub`)."""
    def encode(
        self, video: ArrayLike, sample: bool = True, seed: int = 0, chunk_size: int = 16
    ) -> npt.NDArray[np.float32]:
        """``(B, F, 3, H, W)`` (or ``(N, 3, H, W)``) frames in [-1, 1] to ``(B, F, latent_channels, H/f, W/f)``
        latents × scaling_factor, f = ``downsample_factor``."""
    def encode_moments(
        self, video: ArrayLike, chunk_size: int = 16
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The latent distribution's mean and log-variance (unscaled, log-variance clamped to [-30, 20])."""
    def decode(self, latents: ArrayLike, chunk_size: int = 16) -> npt.NDArray[np.float32]:
        """Frames from latents × scaling_factor."""
    @property
    def scaling_factor(self) -> float: ...
    @property
    def latent_channels(self) -> int: ...
    @property
    def downsample_factor(self) -> int: ...

@final
class I3D:
    """The Kinetics-400 I3D network of FVD (TF-Hub ``i3d-kinetics-400``), in Rust on the CPU.

    Made with ``latte_rs.evaluation.load_i3d()``, which fetches and converts the weights on first use.
    ``features`` resizes clips to 224×224 (bilinear, as PyTorch's ``interpolate(align_corners=False)``), maps them
    to [-1, 1] and returns the 400-d logits averaged over time, the features FVD compares.

    >>> clips = np.zeros((2, 16, 64, 64, 3), np.uint8)
    >>> I3D.preprocess(clips).shape
    (2, 16, 224, 224, 3)
    >>> float(I3D.preprocess(clips).min())
    -1.0
    """

    def __new__(cls, path: str | PathLike[str]) -> I3D:
        """Loads converted weights (the file ``latte_rs.evaluation.i3d_weights()`` returns)."""
    def features(
        self, clips: ArrayLike, value_range: Sequence[float] | None = None
    ) -> npt.NDArray[np.float32]:
        """``(N, T >= 9, H, W, 3)`` clips (uint8, or float with ``value_range``) to ``(N, 400)`` features."""
    @staticmethod
    def preprocess(clips: ArrayLike, value_range: Sequence[float] | None = None) -> npt.NDArray[np.float32]:
        """The network input ``features`` makes: ``(N, T, 224, 224, 3)`` float32 in [-1, 1]; values outside
        ``value_range`` raise ValueError."""
    def logits(self, clips: ArrayLike) -> npt.NDArray[np.float32]:
        """The raw network on ``(N, T >= 9, 224, 224, 3)`` float32 clips in [-1, 1]."""

@final
class LatteT2VTransformer:
    """The text-to-video Latte transformer of Latte-1: diffusers' ``LatteTransformer3DModel`` in Rust, with
    diffusers' parameter names and ``config.json`` keys (PixArt-style adaLN-single, caption projection of T5
    features, cross-attention in the spatial blocks, temporal self-attention blocks, sin-cos temporal positions
    over ``video_length`` frames). Layout as in diffusers: ``(B, C, F, H, W)``. Text masking is done the way
    ``LattePipeline`` does it, by passing only the kept caption tokens.

    >>> cfg = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
    ...            cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=12, video_length=3)
    >>> model = LatteT2VTransformer(cfg, seed=0)
    >>> x = np.zeros((1, 4, 3, 8, 8), np.float32)
    >>> model(x, np.array([500]), np.zeros((1, 5, 12), np.float32)).shape
    (1, 8, 3, 8, 8)
    """

    @property
    def teacache_coefficients(self) -> list[float] | None:
        """The TeaCache rescaling coefficients fitted for this model (read from its ``teacache.json`` when loaded;
        ``TeaCache()`` without coefficients uses them), or None. Shared with the model's clones."""
    @teacache_coefficients.setter
    def teacache_coefficients(self, coefficients: list[float] | None) -> None: ...
    @property
    def teacache_input_range(self) -> list[float] | None:
        """The range of input changes the fitted coefficients hold for, ``[low, high]`` (None: unbounded or none)."""
    def __new__(
        cls,
        config: LatteT2VConfig | dict[str, Any] | None = None,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
        init: Literal["normal", "pixart"] = "normal",
    ) -> LatteT2VTransformer:
        """A model from diffusers config keys (missing ones: Latte-1's), initialised from ``seed``: every weight
        N(0, 0.02²) (``init="normal"``), or PixArt-α's recipe for training from scratch (``"pixart"``: xavier
        linears, silent cross-attention outputs and output projection)."""
    @staticmethod
    def from_pretrained(
        path: str | PathLike[str], device: str = "cpu", dtype: str | None = None, *, subfolder: str | None = None,
        revision: str | None = None,
    ) -> LatteT2VTransformer:
        """Loads a diffusers ``transformer/`` folder: ``config.json`` and ``diffusion_pytorch_model.safetensors``
        or its shards with ``diffusion_pytorch_model.safetensors.index.json``. Missing files are named in a
        ``FileNotFoundError``; missing, unexpected or mis-shaped keys in a ``ValueError``. ``path`` may be a Hugging
        Face Hub id (``org/name``, with ``subfolder`` and ``revision``; see :mod:`latte_rs.hub`):
        ``from_pretrained("maxin-cn/Latte-1", subfolder="transformer")``."""
    @staticmethod
    def from_checkpoint(
        path: str | PathLike[str], use_ema: bool = True, device: str = "cpu", *, subfolder: str | None = None,
        revision: str | None = None, filename: str | None = None,
    ) -> LatteT2VTransformer:
        """A trained model: a ``Trainer.save`` folder (its EMA weights when ``use_ema``, verified against the
        manifest), a model file a trainer wrote, or a diffusers ``transformer/`` folder; local or a Hugging Face
        Hub id (``org/name``, with ``subfolder``, ``revision`` and ``filename``)."""
    def __call__(
        self,
        hidden_states: ArrayLike,
        timestep: ArrayLike,
        encoder_hidden_states: ArrayLike,
        enable_temporal_attentions: bool = True,
    ) -> npt.NDArray[np.float32]:
        """``(B, in_channels, F, H, W)`` latents (F = video_length, or 1), timesteps ``(B,)`` or a scalar, T5
        features ``(B, S, caption_channels)`` → ``(B, out_channels, F, H, W)``. Image-video joint clips have
        video_length + n frames (the last n are images, skipped by the temporal blocks) and features
        ``(B, 1 + n, S, caption_channels)``: the video's caption, then one per image."""
    def with_temporal_attentions(self, enabled: bool) -> LatteT2VTransformer:
        """The same transformer (sharing its parameters) with the temporal blocks on or off."""
    def forward_graph(
        self,
        hidden_states: ArrayLike,
        timestep: ArrayLike,
        encoder_hidden_states: ArrayLike,
        *,
        enable_temporal_attentions: bool = True,
        input_grad: bool = False,
    ) -> tuple[npt.NDArray[np.floating], ForwardGraph]:
        """The forward pass keeping its graph, for an autograd engine outside latte-rs
        (``latte_rs.torch.LatteT2VModule``): ``(output, graph)``; ``graph.backward(grad_output)`` gives the
        gradients towards the latents (with ``input_grad``) and every parameter, in ``trainable_parameter_names``
        order."""
    def shared_parameters(self) -> dict[str, npt.NDArray[np.floating]]:
        """Every parameter by its diffusers name as a NumPy array over the model's own memory (no copy; writes
        change the model). float32/float64 models on the CPU."""
    @property
    def trainable_parameter_names(self) -> list[str]:
        """Every parameter's name, sorted: ``forward_graph``'s order of gradients."""
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    def state_dict(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def load_state_dict(self, state_dict: dict[str, ArrayLike]) -> None: ...
    @property
    def config(self) -> LatteT2VConfig:
        """The config (diffusers' ``config.json`` keys; reads as attributes or as a mapping)."""
    def num_parameters(self) -> int: ...

@final
class T5TextEncoder:
    """The T5 text encoder of Latte-1 (transformers' ``T5EncoderModel``: T5 v1.1 gated-GELU or the original
    ReLU T5), read from a ``text_encoder/`` folder (``config.json`` + safetensors, sharded or not). Prompts go
    through ``latte_rs.text.T5Tokenizer`` first."""

    @staticmethod
    def from_pretrained(
        path: str | PathLike[str], device: str = "cpu", dtype: str | None = None, *, subfolder: str | None = None,
        revision: str | None = None,
    ) -> T5TextEncoder:
        """Loads the folder (or a Hugging Face Hub id, ``org/name``, with ``subfolder`` and ``revision``; see
        :mod:`latte_rs.hub`); missing files and mismatched tensors are named in the error."""
    def __call__(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """Hidden states ``(B, L, d_model)`` of token ids ``(B, L)``; the 0/1 mask marks padding."""
    def empty_prompt(self, max_length: int = 120) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The empty prompt's features ``(1, max_length, d_model)`` and 0/1 mask (``</s>`` then padding, as T5's
        tokenizer makes ``""``): the unconditional branch of classifier-free guidance, no tokenizer needed."""
    @property
    def d_model(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...

def sample(
    model: LatteModel | LatteT2VTransformer,
    scheduler: Scheduler | GaussianDiffusion,
    *,
    noise: ArrayLike | None = None,
    num_samples: int = 1,
    latent_shape: list[int] | None = None,
    y: ArrayLike | None = None,
    y_image: ArrayLike | None = None,
    encoder_hidden_states: ArrayLike | None = None,
    negative_encoder_hidden_states: ArrayLike | None = None,
    encoder_attention_mask: ArrayLike | None = None,
    negative_encoder_attention_mask: ArrayLike | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    num_inference_steps: int | None = None,
    sampler: Literal["ddpm", "ddim"] = "ddpm",
    clip_denoised: bool = False,
    seed: int = 0,
    num_frames: int | None = None,
    long_video: Literal["windows", "fifo"] | None = None,
    window_stride: int | None = None,
    lookahead_denoising: bool | None = None,
    callback: Callable[[int, int], object] | None = None,
    cache: TeaCache | PyramidAttentionBroadcast | FasterCache | None = None,
) -> np.ndarray:
    """The one sampling loop, every step in Rust, for any model and any scheduler (a scheduler core, copied so the
    caller's keeps its state, or a ``GaussianDiffusion`` sampled by ``sampler``). The condition is class labels
    ``y`` or a prompt's T5 features ``encoder_hidden_states``; with ``guidance_scale`` > 1 the unconditional
    branch is the null class, or ``negative_encoder_hidden_states``. Without ``noise``, ``num_samples`` clips of
    the model's size (or ``latent_shape``) are drawn from ``seed``, and every step's noise from the same
    generator. ``callback(done, total)`` runs after each step. With ``cache`` the block stack is skipped where
    its policy says so, and the run's report is left on it. ``num_frames`` beyond the model's trained length
    samples over sliding windows ``window_stride`` frames apart (``long_video="windows"``) or by FIFO-Diffusion's
    diagonal denoising (``long_video="fifo"``, with ``lookahead_denoising`` by default). Used by
    ``latte_rs.sample`` and the pipelines."""

@disjoint_base
class TeaCache:
    """TeaCache for the sampling loop (``latte_rs.TeaCache`` adds ``fit``, ``save`` and ``report``):
    ``threshold`` (0 skips nothing), ``coefficients`` of the rescaling polynomial, highest power first (None: the
    model's fitted ones, else ``LATTE1_COEFFICIENTS``), ``input_range`` the change is clamped into. Bad values
    are a ``ValueError`` naming the argument."""

    LATTE1_COEFFICIENTS: list[float]
    def __new__(
        cls, threshold: float = 0.1, coefficients: list[float] | None = None, input_range: list[float] | None = None
    ) -> Self: ...
    @property
    def threshold(self) -> float: ...
    @property
    def coefficients(self) -> list[float] | None: ...
    @property
    def input_range(self) -> list[float] | None: ...
    @property
    def last_report(self) -> dict[str, Any] | None:
        """The report of the last sampling run this cache served, as a dict (None before any)."""

@disjoint_base
class PyramidAttentionBroadcast:
    """Pyramid Attention Broadcast for the sampling loop (``latte_rs.PyramidAttentionBroadcast`` adds ``report``),
    with diffusers' ``PyramidAttentionBroadcastConfig`` names and defaults: per attention kind, compute every
    ``n``-th step inside the kind's timestep range ``(low, high)`` (ends excluded), reuse the last output in
    between; ``None`` never reuses. Defaults (shown as ``...``): spatial skip range 2, every timestep range
    ``(100.0, 800.0)``. Bad values are a ``ValueError`` naming the argument."""

    def __new__(
        cls,
        spatial_attention_block_skip_range: int | None = ...,
        temporal_attention_block_skip_range: int | None = None,
        cross_attention_block_skip_range: int | None = None,
        spatial_attention_timestep_skip_range: tuple[float, float] = ...,
        temporal_attention_timestep_skip_range: tuple[float, float] = ...,
        cross_attention_timestep_skip_range: tuple[float, float] = ...,
    ) -> Self: ...
    @property
    def spatial_attention_block_skip_range(self) -> int | None: ...
    @property
    def temporal_attention_block_skip_range(self) -> int | None: ...
    @property
    def cross_attention_block_skip_range(self) -> int | None: ...
    @property
    def spatial_attention_timestep_skip_range(self) -> tuple[float, float]: ...
    @property
    def temporal_attention_timestep_skip_range(self) -> tuple[float, float]: ...
    @property
    def cross_attention_timestep_skip_range(self) -> tuple[float, float]: ...
    @property
    def last_report(self) -> dict[str, Any] | None:
        """The report of the last sampling run this cache served, as a dict (None before any)."""

@disjoint_base
class FasterCache:
    """FasterCache for the sampling loop (``latte_rs.FasterCache`` adds ``report``), with diffusers'
    ``FasterCacheConfig`` names and defaults (``attention_weight`` is its default weight callback's constant).
    Defaults shown as ``...``: spatial skip range 2, attention timestep ranges ``(-1.0, 681.0)``, low- and
    high-frequency weight ranges ``(99.0, 901.0)`` and ``(-1.0, 301.0)``, unconditional skip range 5 in
    ``(-1.0, 641.0)``. Bad values are a ``ValueError`` naming the argument."""

    def __new__(
        cls,
        spatial_attention_block_skip_range: int | None = ...,
        temporal_attention_block_skip_range: int | None = None,
        spatial_attention_timestep_skip_range: tuple[float, float] = ...,
        temporal_attention_timestep_skip_range: tuple[float, float] = ...,
        low_frequency_weight_update_timestep_range: tuple[float, float] = ...,
        high_frequency_weight_update_timestep_range: tuple[float, float] = ...,
        alpha_low_frequency: float = 1.1,
        alpha_high_frequency: float = 1.1,
        unconditional_batch_skip_range: int | None = ...,
        unconditional_batch_timestep_skip_range: tuple[float, float] = ...,
        attention_weight: float = 0.5,
    ) -> Self: ...
    @property
    def spatial_attention_block_skip_range(self) -> int | None: ...
    @property
    def temporal_attention_block_skip_range(self) -> int | None: ...
    @property
    def spatial_attention_timestep_skip_range(self) -> tuple[float, float]: ...
    @property
    def temporal_attention_timestep_skip_range(self) -> tuple[float, float]: ...
    @property
    def low_frequency_weight_update_timestep_range(self) -> tuple[float, float]: ...
    @property
    def high_frequency_weight_update_timestep_range(self) -> tuple[float, float]: ...
    @property
    def alpha_low_frequency(self) -> float: ...
    @property
    def alpha_high_frequency(self) -> float: ...
    @property
    def unconditional_batch_skip_range(self) -> int | None: ...
    @property
    def unconditional_batch_timestep_skip_range(self) -> tuple[float, float]: ...
    @property
    def attention_weight(self) -> float: ...
    @property
    def last_report(self) -> dict[str, Any] | None:
        """The report of the last sampling run this cache served, as a dict (None before any)."""


@final
class _SharedStorage:
    """Keeps a tensor's storage alive while NumPy arrays (and torch tensors over them) view it: the ``base`` of
    the arrays ``shared_parameters`` and ``ForwardGraph.backward`` return."""

@final
class ForwardGraph:
    """The graph of one ``forward_graph`` (``LatteModel``'s or ``LatteT2VTransformer``'s); it keeps the
    activations until it is dropped."""

    def backward(
        self, grad_output: ArrayLike
    ) -> tuple[npt.NDArray[np.floating] | None, list[npt.NDArray[np.floating]]]:
        """The gradients of ``sum(output * grad_output)``: towards x (with ``input_grad``) and one per trainable
        parameter, as arrays over the gradients' own memory. Can run again until the graph is dropped."""
    def token(self) -> npt.NDArray[np.float32]:
        """A one-element array whose base is this graph (holding it keeps the graph alive)."""
