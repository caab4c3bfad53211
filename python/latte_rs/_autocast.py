"""``latte_rs.autocast``: bf16 inference and mixed-precision training on the CPU, as
``torch.autocast("cpu", dtype=torch.bfloat16)``."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _native

if TYPE_CHECKING:
    from typing_extensions import Self

F = TypeVar("F", bound=Callable[..., Any])

_DTYPES = ("bfloat16", "bf16")


class autocast:  # noqa: N801 - named as torch.autocast, which it mirrors
    """Run the linear layers of every model call inside the block with bf16 operands and f32 accumulation.

    Inputs, outputs, norms, attention's softmax and the sampler stay float32; only the GEMMs of the linear layers
    round their operands and results to bf16, which is what PyTorch's CPU autocast does to them. It pays where the
    CPU has AVX512-BF16 (``latte_rs.BF16_AUTOCAST_SUPPORTED``); elsewhere the layers stay float32 (with a warning),
    since emulated bf16 would be slower. A train step inside the block trains in mixed precision, as under
    ``torch.autocast``: the backward pass's GEMMs (``dx = g W``, ``dW = gᵀ x``) take bf16 operands too, while
    the weights (the f32 master copy), the optimiser state, the bias gradients and every reduction stay float32
    (the training config's ``mixed_precision: bf16`` does this). The setting is per thread, and blocks nest.

    Also usable as a decorator.

    >>> import numpy as np, latte_rs
    >>> model = latte_rs.LatteModel(latte_rs.LatteConfig.preset("Latte-S/8", num_frames=4, input_size=16), seed=0)
    >>> with latte_rs.autocast("bfloat16"):
    ...     out = model(np.zeros((1, 4, 4, 16, 16), np.float32), np.array([10]))
    >>> out.dtype
    dtype('float32')
    """

    def __init__(self, dtype: str = "bfloat16", enabled: bool = True) -> None:
        dtype = str(dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(f"autocast dtype: expected 'bfloat16', got {dtype!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"autocast enabled: expected a bool, got {type(enabled).__name__}")
        self.dtype = "bfloat16"
        self.enabled = enabled
        self._previous: list[str | None] = []

    def __enter__(self) -> Self:
        if self.enabled and not _native.BF16_AUTOCAST_SUPPORTED:
            warnings.warn(
                "latte_rs.autocast: this CPU lacks AVX512-BF16, so the linear layers stay float32",
                RuntimeWarning,
                stacklevel=2,
            )
        self._previous.append(_native.set_autocast(self.dtype if self.enabled else None))
        return self

    def __exit__(self, *exc: object) -> None:
        _native.set_autocast(self._previous.pop())

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with autocast(self.dtype, self.enabled):
                return fn(*args, **kwargs)

        return wrapped  # type: ignore[return-value]
