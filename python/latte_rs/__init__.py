"""latte-rs: Latte (Latent Diffusion Transformer for video generation) with a Rust core on candle.

>>> import numpy as np, latte_rs
>>> cfg = latte_rs.LatteConfig.preset("Latte-S/8", num_frames=4, input_size=16)
>>> model = latte_rs.LatteModel(cfg, seed=0)
>>> x = np.zeros((1, 4, 4, 16, 16), np.float32)
>>> model(x, np.array([10])).shape
(1, 4, 8, 16, 16)
"""

from . import ablation, data, demo, evaluation, hub
from ._autocast import autocast
from ._native import (
    BF16_AUTOCAST_SUPPORTED,
    CUDA_AVAILABLE,
    FLASH_ATTN_AVAILABLE,
    I3D,
    GaussianDiffusion,
    Generator,
    LatteConfig,
    LatteModel,
    LatteT2VConfig,
    LatteT2VTransformer,
    OpenedModel,
    T5TextEncoder,
    Trainer,
    VideoVAE,
    __version__,
    open_model,
    set_kernel_path,
)
from .ablation import ablate
from .cache import CacheReport, FasterCache, PyramidAttentionBroadcast, TeaCache
from .evaluation import fvd
from .pipelines import LatteOutput, LattePipeline, LatteT2VPipeline
from .sampling import sample
from .schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SchedulerOutput,
)
from .training import TrainResult, train

__all__ = [
    "BF16_AUTOCAST_SUPPORTED",
    "CacheReport",
    "CUDA_AVAILABLE",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "FLASH_ATTN_AVAILABLE",
    "FasterCache",
    "GaussianDiffusion",
    "Generator",
    "I3D",
    "LatteConfig",
    "LatteModel",
    "LatteOutput",
    "LattePipeline",
    "LatteT2VConfig",
    "LatteT2VPipeline",
    "LatteT2VTransformer",
    "OpenedModel",
    "PyramidAttentionBroadcast",
    "SchedulerOutput",
    "TeaCache",
    "T5TextEncoder",
    "TrainResult",
    "Trainer",
    "VideoVAE",
    "__version__",
    "ablate",
    "ablation",
    "autocast",
    "data",
    "demo",
    "evaluation",
    "fvd",
    "hub",
    "open_model",
    "sample",
    "set_kernel_path",
    "train",
]
