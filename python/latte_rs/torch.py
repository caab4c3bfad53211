"""latte-rs inside PyTorch code: a ``torch.nn.Module`` whose forward and backward run in the Rust core.

:class:`LatteModule` has the official Latte model's interface: ``forward(x, t, y)`` on torch tensors in the official
layout, ``forward_with_cfg``, and its parameters are torch ``Parameter`` s under the official checkpoint's names
(``state_dict()`` has the official keys; ``load_state_dict`` takes an official checkpoint). The parameters share
their memory with the Rust model: an optimiser's in-place update is what the next forward computes with, and the
gradients the backward hands to torch are the Rust gradients' own memory (no copies per step beyond the inputs and
the output). So the official training step runs on it by swapping the model constructor::

    import torch, latte_rs
    from latte_rs.torch import LatteModule, create_diffusion, update_ema
    model = LatteModule(latte_rs.LatteConfig.preset("Latte-S/2", num_classes=101, image_size=256))
    ema = copy.deepcopy(model).requires_grad_(False)
    model = torch.nn.parallel.DistributedDataParallel(model)      # under torchrun, gloo on the CPU
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    diffusion = create_diffusion(timestep_respacing="")           # the official create_diffusion's arguments
    for x, y in loader:
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],))
        loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step(); opt.zero_grad(); update_ema(ema, model.module)

torch stays an optional dependency of latte-rs (``pip install latte-rs[torch]``); this module imports it. The
module runs float32 (or float64) on the CPU; the native :class:`latte_rs.Trainer` is the faster way to train
(fused optimiser, no autograd-engine round trips), this one is the way to plug latte-rs into existing torch code.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("latte_rs.torch needs PyTorch: pip install 'latte-rs[torch]'") from e

from ._native import GaussianDiffusion, LatteConfig, LatteModel, LatteT2VConfig, LatteT2VTransformer

__all__ = ["LatteModule", "LatteT2VModule", "TorchDiffusion", "create_diffusion", "update_ema", "requires_grad"]

# The official modules' attribute order, so that parameters() / state_dict() list the parameters in the official
# model's order (which fixes the summation order of clip_grad_norm_ and DDP's buckets as in the official code).
_ORDER = {name: i for i, name in enumerate([
    "pos_embed", "temp_embed", "x_embedder", "t_embedder", "y_embedder", "blocks", "final_layer",
    "norm1", "attn", "attn_temp", "norm2", "mlp", "norm_final", "linear", "adaLN_modulation",
    "qkv", "proj", "fc1", "fc2", "embedding_table", "weight", "bias",
])}


# diffusers' LatteTransformer3DModel's submodule order (a module's own parameters come first in torch anyway), so
# that LatteT2VModule lists its parameters exactly as diffusers' transformer does.
_T2V_ORDER = {name: i for i, name in enumerate([
    "scale_shift_table", "pos_embed", "proj", "transformer_blocks", "temporal_transformer_blocks", "norm1", "attn1",
    "norm2", "attn2", "norm3", "ff", "net", "to_q", "to_k", "to_v", "to_out", "proj_out", "adaln_single", "emb",
    "timestep_embedder", "linear_1", "linear_2", "linear", "caption_projection", "weight", "bias",
])}


def _order_key(name: str, order: Mapping[str, int] = _ORDER) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, order.get(p, len(order)), p) for p in name.split("."))


def _numpy(t: Any, arg: str, dtype=None) -> np.ndarray:
    """A torch tensor (CPU) as NumPy without a copy where it can; other array-likes as they are."""
    if isinstance(t, torch.Tensor):
        if t.device.type != "cpu":
            raise ValueError(f"{arg}: latte_rs.torch runs on the CPU; got a tensor on {t.device} (move it with .cpu())")
        t = t.detach()
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t.contiguous().numpy()
    return t


class _Container(nn.Module):
    """A node of the parameter tree (``blocks`` / ``blocks.0`` / ``blocks.0.attn`` ...), only for the names."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("a parameter container of a latte_rs.torch module is not callable")


def _share_parameters(module: nn.Module, core: Any, order: Mapping[str, int]) -> list[nn.Parameter]:
    """Registers every parameter of the Rust model ``core`` on ``module`` under its own dotted name, as torch
    ``Parameter`` s over the Rust memory (no copy), in ``order``; returns the trainable ones in the order of
    ``core.forward_graph``'s gradients and records each parameter's address for :func:`_check_shared`."""
    trainable = list(core.trainable_parameter_names)
    shared = core.shared_parameters()
    for name in sorted(shared, key=lambda n: _order_key(n, order)):
        *path, leaf = name.split(".")
        parent: nn.Module = module
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                child = _Container()
                parent.add_module(part, child)
            parent = child
        parent.register_parameter(leaf, nn.Parameter(torch.from_numpy(shared[name]), requires_grad=name in trainable))
    params = dict(module.named_parameters())
    module._addresses = {n: p.data_ptr() for n, p in params.items()}
    return [params[n] for n in trainable]


def _check_shared(module: nn.Module, dtype: torch.dtype) -> None:
    """Refuses to compute when a parameter no longer is the Rust model's memory (the Rust side would compute with
    stale weights)."""
    for name, p in module.named_parameters():
        if p.data_ptr() != module._addresses[name] or p.dtype != dtype or p.device.type != "cpu":
            kind = type(module).__name__
            raise RuntimeError(
                f"{kind} parameter {name!r} no longer shares memory with the latte-rs model (it was "
                f"replaced, converted or moved: now {p.dtype} on {p.device}). Update parameters in place "
                f"(optimisers, load_state_dict and copy_ do); for float64 build {kind}(dtype='float64')")


def _keep_graph(ctx, graph, dtype: torch.dtype) -> None:
    """Ties the Rust graph's lifetime to torch's saved tensors (see :class:`_LatteFunction`)."""
    ctx.save_for_backward(torch.from_numpy(graph.token()))
    ctx.graph = weakref.ref(graph)
    ctx.dtype = dtype


def _graph_backward(ctx, grad_out, kind: str) -> tuple:
    """The Rust backward of a graph kept by :func:`_keep_graph`: (gradient towards the input or None, the
    parameters' gradients as tensors over the Rust gradients' memory)."""
    if torch.is_grad_enabled():  # create_graph=True: a derivative of the backward was asked for
        raise RuntimeError("latte-rs computes first derivatives only: backward with create_graph=True "
                           f"(double backward, gradient penalties) is not supported through {kind}")
    _token = ctx.saved_tensors  # raises torch's error when the graph was freed  # noqa: F841
    graph = ctx.graph()
    gx, grads = graph.backward(_numpy(grad_out, "grad_output", ctx.dtype))
    return None if gx is None else torch.from_numpy(gx), [torch.from_numpy(g) for g in grads]


class _LatteFunction(torch.autograd.Function):
    """The Rust forward (keeping its graph) and its backward, as one node of torch's autograd graph.

    The Rust graph lives as long as the tensor saved for backward (its ``token``), so torch's own rules apply:
    freed by a backward pass unless ``retain_graph=True``, after which a second backward raises torch's error.
    """

    @staticmethod
    def forward(ctx, module: LatteModule, x, t, y, y_image, *params):
        out, graph = module.core.forward_graph(
            _numpy(x, "x", module._dtype), _numpy(t, "t"), None if y is None else _numpy(y, "y"),
            None if y_image is None else _numpy(y_image, "y_image"), input_grad=ctx.needs_input_grad[1])
        _keep_graph(ctx, graph, module._dtype)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        gx, grads = _graph_backward(ctx, grad_out, "LatteModule")
        return (None, gx, None, None, None, *grads)


class LatteModule(nn.Module):
    """The official ``Latte`` model's interface over a :class:`latte_rs.LatteModel` (see the module docs).

    Args:
        config: a :class:`latte_rs.LatteConfig` (or a preset name, with ``overrides`` as LatteConfig fields).
        model: wrap this existing model instead (the module then shares its weights).
        seed: the initialisation seed for a new model (the DiT/Latte recipe).
        dtype: "float32" (default) or "float64".

    >>> import torch, latte_rs
    >>> from latte_rs.torch import LatteModule
    >>> m = LatteModule(latte_rs.LatteConfig(depth=2, hidden_size=32, num_heads=2, input_size=8, num_frames=2))
    >>> out = m(torch.randn(1, 2, 4, 8, 8), torch.tensor([10]))
    >>> tuple(out.shape), "blocks.0.attn.qkv.weight" in m.state_dict()
    ((1, 2, 8, 8, 8), True)
    """

    def __init__(self, config: LatteConfig | str | None = None, *, model: LatteModel | None = None, seed: int = 0,
                 dtype: str = "float32", **overrides: Any) -> None:
        super().__init__()
        if model is None:
            if config is None:
                config = LatteConfig(**overrides)
            elif isinstance(config, str):
                config = LatteConfig.preset(config, **overrides)
            elif not isinstance(config, LatteConfig):
                raise TypeError(f"config: expected a LatteConfig or a preset name, got {type(config).__name__}")
            elif overrides:
                config = config.replace(**overrides)
            model = LatteModel(config, seed=seed, dtype=dtype)
        elif not isinstance(model, LatteModel):
            raise TypeError(f"model: expected a latte_rs.LatteModel, got {type(model).__name__}")
        if model.dtype not in ("float32", "float64"):
            raise TypeError(f"model: LatteModule runs float32 or float64 models, got {model.dtype} (half precision "
                            "training is the native Trainer's mixed precision)")
        if model.device != "cpu":
            raise ValueError(f"model: LatteModule runs on the CPU, got a model on {model.device}")
        self.core = model
        self._dtype = torch.float64 if model.dtype == "float64" else torch.float32
        self._trainable = _share_parameters(self, model, _ORDER)

    @property
    def config(self) -> LatteConfig:
        return self.core.config

    @classmethod
    def from_checkpoint(cls, path, *, use_ema: bool = True, **overrides: Any) -> LatteModule:
        """An official ``.pt``, a safetensors file or a latte-rs checkpoint, local or a Hugging Face Hub id (see
        ``LatteModel.from_checkpoint``)."""
        return cls(model=LatteModel.from_checkpoint(path, use_ema=use_ema, **overrides))

    def _check_shared(self) -> None:
        _check_shared(self, self._dtype)

    def _drop_labels(self, y, y_image):
        """Classifier-free-guidance label dropout in training mode, drawn from torch's generator exactly as the
        official LabelEmbedder (one draw per clip for y, then one per clip for its image labels)."""
        cfg = self.core.config
        p = cfg.class_dropout_prob
        if not (self.training and cfg.num_classes > 0 and p > 0):
            return y, y_image
        if y is not None:
            y = torch.as_tensor(y)
            y = torch.where(torch.rand(y.shape[0], device=y.device) < p, cfg.num_classes, y)
        if y_image is not None:
            rows = [torch.as_tensor(r).reshape(1, -1) for r in y_image]
            y_image = torch.cat([torch.where(torch.rand(1, device=r.device) < p, cfg.num_classes, r) for r in rows])
        return y, y_image

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, text_embedding=None,
                use_fp16: bool = False, y_image=None, use_image_num: int | None = None) -> torch.Tensor:
        """The official ``Latte.forward``: x (N, F, C, H, W), t (N,), y (N,) class labels; returns
        (N, F, C_out, H, W). ``y_image`` and ``use_image_num`` are ``latte_img``'s (image-video joint clips)."""
        if text_embedding is not None:
            raise TypeError("text_embedding: this class-conditional/unconditional Latte takes no text (the "
                            "text-to-video model is latte_rs.LatteT2V)")
        if use_fp16:
            raise ValueError("use_fp16: expected False (LatteModule runs float32/float64; half precision is the "
                             "native Trainer's mixed precision), got True")
        want = self.core.config.use_image_num
        if use_image_num is not None and use_image_num not in (0, want):
            raise ValueError(f"use_image_num: this model was built with use_image_num={want}, got {use_image_num}")
        if isinstance(y_image, (list, tuple)):
            y_image = torch.stack([torch.as_tensor(r).reshape(-1) for r in y_image])
        self._check_shared()
        y, y_image = self._drop_labels(y, y_image)
        if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in self._trainable)):
            out = self.core(_numpy(x, "x", self._dtype), _numpy(t, "t"), None if y is None else _numpy(y, "y"),
                            None if y_image is None else _numpy(y_image, "y_image"))
            return torch.from_numpy(out)
        return _LatteFunction.apply(self, x, t, y, y_image, *self._trainable)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                         cfg_scale: float = 7.0, use_fp16: bool = False, text_embedding=None) -> torch.Tensor:
        """The official ``forward_with_cfg``: the first half of the batch is guided with the second half's labels
        (the null class), on the first ``in_channels`` channels."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y=y, use_fp16=use_fp16, text_embedding=text_embedding)
        c = self.core.config.in_channels
        eps, rest = out[:, :, :c], out[:, :, c:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=2)

    def __deepcopy__(self, memo: dict) -> LatteModule:
        """A copy with its own Rust model (``copy.deepcopy(model)`` for the EMA, as the official code does)."""
        core = LatteModel(self.core.config, seed=0, dtype=self.core.dtype)
        with torch.no_grad():
            core.load_state_dict({n: p.detach().numpy() for n, p in self.named_parameters()})
        new = type(self)(model=core)
        for (_, p), (_, q) in zip(self.named_parameters(), new.named_parameters(), strict=True):
            q.requires_grad_(p.requires_grad)
        new.train(self.training)
        for k, v in self.__dict__.items():  # user attributes (not torch's own state or ours)
            if k not in new.__dict__:
                new.__dict__[k] = copy.deepcopy(v, memo)
        memo[id(self)] = new
        return new

    def __getstate__(self):
        raise TypeError("LatteModule does not pickle (its weights live in the Rust model); save state_dict() "
                        "with torch.save, or the model with module.core.save(path)")

    def extra_repr(self) -> str:
        c = self.core.config
        return (f"depth={c.depth}, hidden_size={c.hidden_size}, num_heads={c.num_heads}, variant={c.variant}, "
                f"params={self.core.num_parameters():,}, dtype={self.core.dtype}")


class _T2VFunction(torch.autograd.Function):
    """The text-to-video transformer's Rust forward (keeping its graph) and backward as one node of torch's
    autograd graph; the graph's lifetime follows torch's saved tensors, as :class:`_LatteFunction`'s."""

    @staticmethod
    def forward(ctx, module: LatteT2VModule, hidden_states, timestep, encoder_hidden_states, temporal: bool,
                *params):
        out, graph = module.core.forward_graph(
            _numpy(hidden_states, "hidden_states", module._dtype), _numpy(timestep, "timestep"),
            _numpy(encoder_hidden_states, "encoder_hidden_states", module._dtype),
            enable_temporal_attentions=temporal, input_grad=ctx.needs_input_grad[1])
        _keep_graph(ctx, graph, module._dtype)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        gx, grads = _graph_backward(ctx, grad_out, "LatteT2VModule")
        return (None, gx, None, None, None, *grads)


_OUTPUT_CLASS: list[type] = []


def _transformer_output(sample: torch.Tensor) -> Any:
    """diffusers' ``Transformer2DModelOutput(sample=...)`` (a stand-in with ``.sample`` and ``[0]`` without
    diffusers), imported on first use: importing diffusers takes seconds."""
    if not _OUTPUT_CLASS:
        try:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput
        except ImportError:
            Transformer2DModelOutput = _Output
        _OUTPUT_CLASS.append(Transformer2DModelOutput)
    return _OUTPUT_CLASS[0](sample=sample)


class _Output(NamedTuple):
    """``Transformer2DModelOutput`` without diffusers: ``.sample``, or ``[0]``."""

    sample: torch.Tensor


def _keeps_every_token(mask: torch.Tensor) -> bool:
    """Whether an ``encoder_attention_mask`` masks nothing: a (B, S) keep-mask of all ones/True or a
    (B, 1, S) additive bias of zeros (diffusers' two formats)."""
    mask = torch.as_tensor(mask)
    if mask.ndim == 3:
        return bool((mask == 0).all())
    return bool((mask != 0).all())


class LatteT2VModule(nn.Module):
    """diffusers' ``LatteTransformer3DModel`` (Latte-1's text-to-video transformer) over a
    :class:`latte_rs.LatteT2VTransformer`: its ``forward`` signature and output type, ``config``, ``dtype`` and
    ``device``, and its parameters as torch ``Parameter`` s under diffusers' names and in diffusers' order, over
    the Rust model's own memory (no copies). Forward and backward run in Rust as one ``torch.autograd.Function``,
    so ``diffusers.LattePipeline(..., transformer=LatteT2VModule.from_pretrained(folder))`` samples with it and
    plain PyTorch fine-tunes it.

    Args:
        config: a :class:`latte_rs.LatteT2VConfig` or a dict of diffusers config keys (missing keys: Latte-1's),
            with ``overrides`` as config keys; None: Latte-1's config with ``overrides``.
        model: wrap this existing transformer instead (the module then shares its weights).
        seed: the initialisation seed for a new model; ``init`` its recipe ("normal" or "pixart", as
            :class:`latte_rs.LatteT2VTransformer`).
        dtype: "float32" (default) or "float64".

    >>> import torch
    >>> from latte_rs.torch import LatteT2VModule
    >>> m = LatteT2VModule(num_attention_heads=2, attention_head_dim=8, num_layers=1, cross_attention_dim=16,
    ...                    sample_size=8, caption_channels=12, video_length=3)
    >>> out = m(torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([500]),
    ...         encoder_hidden_states=torch.randn(1, 5, 12)).sample
    >>> tuple(out.shape), m.config.in_channels, "transformer_blocks.0.attn1.to_q.weight" in m.state_dict()
    ((1, 8, 3, 8, 8), 4, True)
    """

    def __init__(self, config: LatteT2VConfig | Mapping[str, Any] | None = None, *,
                 model: LatteT2VTransformer | None = None, seed: int = 0, dtype: str = "float32",
                 init: str = "normal", **overrides: Any) -> None:
        super().__init__()
        if model is None:
            if config is None:
                config = LatteT2VConfig(**overrides)
            elif isinstance(config, Mapping):
                config = LatteT2VConfig.from_dict({**config, **overrides})
            elif not isinstance(config, LatteT2VConfig):
                raise TypeError(f"config: expected a LatteT2VConfig or a dict of diffusers config keys, got "
                                f"{type(config).__name__}")
            elif overrides:
                config = config.replace(**overrides)
            model = LatteT2VTransformer(config, seed=seed, dtype=dtype, init=init)
        elif not isinstance(model, LatteT2VTransformer):
            raise TypeError(f"model: expected a latte_rs.LatteT2VTransformer, got {type(model).__name__}")
        if model.dtype not in ("float32", "float64"):
            raise TypeError(f"model: LatteT2VModule runs float32 or float64 models, got {model.dtype} (load "
                            "half-precision files with torch_dtype=torch.float32, as diffusers does by default)")
        if model.device != "cpu":
            raise ValueError(f"model: LatteT2VModule runs on the CPU, got a model on {model.device}")
        self.core = model
        self._dtype = torch.float64 if model.dtype == "float64" else torch.float32
        self._trainable = _share_parameters(self, model, _T2V_ORDER)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, subfolder: str | None = None,
                        revision: str | None = None, torch_dtype: torch.dtype | str | None = None
                        ) -> LatteT2VModule:
        """A diffusers transformer folder (``config.json`` + safetensors, sharded or not) or a Hub id (with
        ``subfolder`` and ``revision``, see :mod:`latte_rs.hub`), as diffusers'
        ``LatteTransformer3DModel.from_pretrained(path, subfolder=..., torch_dtype=...)``: float32 unless
        ``torch_dtype`` says float64 (diffusers' default too, whatever the file holds)."""
        if torch_dtype is None:
            torch_dtype = torch.float32
        if isinstance(torch_dtype, str):
            torch_dtype = getattr(torch, torch_dtype, torch_dtype)
        dtypes = {torch.float32: "float32", torch.float64: "float64"}
        if torch_dtype not in dtypes:
            raise TypeError(f"torch_dtype: LatteT2VModule runs torch.float32 or torch.float64, got {torch_dtype}")
        return cls(model=LatteT2VTransformer.from_pretrained(pretrained_model_name_or_path, dtype=dtypes[torch_dtype],
                                                             subfolder=subfolder, revision=revision))

    @property
    def config(self) -> LatteT2VConfig:
        """diffusers' config keys, as attributes or as a mapping (``config.in_channels``, ``config["sample_size"]``)."""
        return self.core.config

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def out_channels(self) -> int:
        """The output channels (``in_channels`` when the config leaves them out), as diffusers' attribute."""
        c = self.core.config
        return c.in_channels if c.out_channels is None else c.out_channels

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                enable_temporal_attentions: bool = True, return_dict: bool = True) -> Any:
        """diffusers' ``LatteTransformer3DModel.forward``: latents ``(B, C, F, H, W)``, timesteps ``(B,)``, T5
        features ``(B, S, caption_channels)``; returns ``Transformer2DModelOutput(sample=(B, C_out, F, H, W))``, or
        ``(sample,)`` with ``return_dict=False``. Gradients flow to the parameters and ``hidden_states``."""
        if timestep is None or encoder_hidden_states is None:
            missing = "timestep" if timestep is None else "encoder_hidden_states"
            raise ValueError(f"{missing}: required (Latte-1 is conditioned on the timestep and a caption's T5 "
                             "features)")
        if encoder_attention_mask is not None and not _keeps_every_token(encoder_attention_mask):
            raise ValueError("encoder_attention_mask: a mask that drops caption tokens is not supported (diffusers' "
                             "LattePipeline passes none; it zeroes padded features, mask_feature=True, or cuts them "
                             "off); zero or cut the padded features of encoder_hidden_states instead")
        grad = torch.is_grad_enabled()
        if grad and isinstance(encoder_hidden_states, torch.Tensor) and encoder_hidden_states.requires_grad:
            raise ValueError("encoder_hidden_states: gradients towards the caption features are not computed by "
                             "LatteT2VModule (only towards hidden_states and the parameters); pass them detached")
        _check_shared(self, self._dtype)
        if not grad or not (hidden_states.requires_grad or any(p.requires_grad for p in self._trainable)):
            out = torch.from_numpy(self.core(
                _numpy(hidden_states, "hidden_states", self._dtype), _numpy(timestep, "timestep"),
                _numpy(encoder_hidden_states, "encoder_hidden_states", self._dtype), enable_temporal_attentions))
        else:
            out = _T2VFunction.apply(self, hidden_states, timestep, encoder_hidden_states,
                                     bool(enable_temporal_attentions), *self._trainable)
        return _transformer_output(out) if return_dict else (out,)

    #: diffusers' flag: this module keeps every activation for backward (the native ``latte_rs.Trainer``
    #: checkpoints activations), so ``enable_gradient_checkpointing`` refuses as diffusers' models without it do.
    _supports_gradient_checkpointing = False

    def enable_gradient_checkpointing(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' switch for activation checkpointing: a ``ValueError``, as diffusers raises for a model whose
        ``_supports_gradient_checkpointing`` is False."""
        raise ValueError(f"{type(self).__name__} does not support gradient checkpointing (it keeps every activation "
                         "for backward); latte_rs.Trainer(..., gradient_checkpointing=True) trains with it")

    def __deepcopy__(self, memo: dict) -> LatteT2VModule:
        """A copy with its own Rust model (``copy.deepcopy(model)`` for an EMA)."""
        core = LatteT2VTransformer(self.core.config, seed=0, dtype=self.core.dtype)
        with torch.no_grad():
            core.load_state_dict({n: p.detach().numpy() for n, p in self.named_parameters()})
        new = type(self)(model=core)
        for (_, p), (_, q) in zip(self.named_parameters(), new.named_parameters(), strict=True):
            q.requires_grad_(p.requires_grad)
        new.train(self.training)
        for k, v in self.__dict__.items():
            if k not in new.__dict__:
                new.__dict__[k] = copy.deepcopy(v, memo)
        memo[id(self)] = new
        return new

    def __getstate__(self):
        raise TypeError("LatteT2VModule does not pickle (its weights live in the Rust model); save state_dict() "
                        "with torch.save")

    def extra_repr(self) -> str:
        c = self.core.config
        return (f"num_layers={c.num_layers}, inner_dim={c.inner_dim}, video_length={c.video_length}, "
                f"params={self.core.num_parameters():,}, dtype={self.core.dtype}")


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """The official ``update_ema``: every parameter of ``ema_model`` moves towards ``model``'s (in place)."""
    ema = dict(ema_model.named_parameters())
    for name, param in model.named_parameters():
        ema[name].mul_(decay).add_(param.data, alpha=1 - decay)


def requires_grad(model: nn.Module, flag: bool = True) -> None:
    """The official ``requires_grad`` helper."""
    for p in model.parameters():
        p.requires_grad = flag


def _normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x):
    """The tanh approximation of Φ the reference (IDDPM) uses."""
    return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * torch.pow(x, 3))))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] discretised to 8 bits under N(means, e^(2 log_scales))."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def _mean_flat(x):
    return x.mean(dim=list(range(1, x.ndim)))


class TorchDiffusion:
    """A :class:`latte_rs.GaussianDiffusion` whose ``training_losses`` runs in torch (differentiable through the
    model), with the official ``SpacedDiffusion.training_losses`` signature and numbers: ε prediction, MSE plus
    the variational-bound term with the mean detached when the variance is learned.

    Args:
        diffusion: the process (its tables and options); default ``GaussianDiffusion()`` (the official one).
    """

    def __init__(self, diffusion: GaussianDiffusion | None = None, *, learn_sigma: bool | None = None,
                 rescale_learned_sigmas: bool = False) -> None:
        self.diffusion = GaussianDiffusion() if diffusion is None else diffusion
        d = self.diffusion
        if d.prediction_type != "epsilon" or d.loss_type not in ("mse", "rescaled_mse"):
            raise ValueError(f"diffusion: expected an ε-prediction process with the MSE/hybrid loss (what "
                             f"TorchDiffusion computes; latte_rs.Trainer trains the others), got {d!r}")
        self.learn_sigma = d.variance_type in ("learned", "learned_range") if learn_sigma is None else learn_sigma
        self.rescale = d.loss_type == "rescaled_mse" or rescale_learned_sigmas
        self._fixed_large = d.variance_type == "fixed_large"
        self.tables = {k: torch.from_numpy(v) for k, v in self.diffusion.tables().items()}
        self.tables["log_betas"] = torch.log(self.tables["betas"])  # the learned range's upper end, in float64
        self.timestep_map = torch.from_numpy(self.diffusion.timestep_map)
        self.num_timesteps = self.diffusion.num_timesteps

    def _extract(self, name: str, t, shape):
        """Table values at ``t`` as float32, broadcast to ``shape`` (the reference's _extract_into_tensor)."""
        v = self.tables[name].to(t.device)[t].float()
        return v.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)

    def q_sample(self, x_start, t, noise):
        return (self._extract("sqrt_alphas_cumprod", t, x_start.shape) * x_start
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.shape) * noise)

    def _posterior(self, x_start, x_t, t):
        mean = (self._extract("posterior_mean_coef1", t, x_t.shape) * x_start
                + self._extract("posterior_mean_coef2", t, x_t.shape) * x_t)
        return mean, self._extract("posterior_log_variance_clipped", t, x_t.shape)

    def _vb(self, eps, var_values, x_start, x_t, t):
        """The variational-bound term of a learned-range variance (``var_values`` in [-1, 1])."""
        true_mean, true_logvar = self._posterior(x_start, x_t, t)
        frac = (var_values + 1) / 2
        logvar = frac * self._extract("log_betas", t, x_t.shape) + (1 - frac) * true_logvar
        pred_x0 = (self._extract("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t
                   - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.shape) * eps)
        mean, _ = self._posterior(pred_x0, x_t, t)
        kl = _mean_flat(_normal_kl(true_mean, true_logvar, mean, logvar)) / np.log(2.0)
        nll = -_mean_flat(_discretized_gaussian_log_likelihood(x_start, mean, 0.5 * logvar)) / np.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model, x_start: torch.Tensor, t: torch.Tensor,
                        model_kwargs: Mapping[str, Any] | None = None, noise: torch.Tensor | None = None) -> dict:
        """{"loss", "mse"[, "vb"]}, each (N,): the official training loss for clean latents ``x_start``
        (N, F, C, H, W) at step indices ``t`` (N,); ``model`` is called on the model's timesteps."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, self.timestep_map.to(t.device)[t], **(model_kwargs or {}))
        c = x_t.shape[2]
        terms = {}
        if self.learn_sigma:
            if out.shape[2] != 2 * c:
                raise ValueError(f"model output: expected {2 * c} channels (learn_sigma), got {out.shape[2]}")
            eps, var_values = torch.split(out, c, dim=2)
            terms["vb"] = self._vb(eps.detach(), var_values, x_start, x_t, t)
            if self.rescale:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        else:
            eps = out
        terms["mse"] = _mean_flat((noise - eps) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms


def create_diffusion(timestep_respacing="", noise_schedule: str = "linear", use_kl: bool = False,
                     sigma_small: bool = False, predict_xstart: bool = False, learn_sigma: bool = True,
                     rescale_learned_sigmas: bool = False, diffusion_steps: int = 1000) -> TorchDiffusion:
    """The official ``create_diffusion`` (same arguments and defaults), as a :class:`TorchDiffusion`."""
    if use_kl or predict_xstart:
        raise ValueError(f"use_kl, predict_xstart: expected False (TorchDiffusion computes the ε-prediction "
                         f"MSE/hybrid loss; latte_rs.Trainer trains the others), got {use_kl}, {predict_xstart}")
    if isinstance(timestep_respacing, (list, tuple)):
        timestep_respacing = ",".join(str(s) for s in timestep_respacing)
    d = GaussianDiffusion(timestep_respacing=str(timestep_respacing or ""), noise_schedule=noise_schedule,
                          learn_sigma=learn_sigma, sigma_small=sigma_small,
                          rescale_learned_sigmas=rescale_learned_sigmas, diffusion_steps=diffusion_steps)
    return TorchDiffusion(d)
