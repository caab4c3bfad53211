"""Feature statistics and the Fréchet distance, the numerical core of FVD.

The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) is ``|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½``.
The usual implementation takes ``scipy.linalg.sqrtm(Σ₁ Σ₂)`` of a non-symmetric product, which returns complex
values or NaN when a covariance is singular (fewer clips than feature dimensions) and needs ad-hoc fixes. Here
everything is symmetric: Σ₁^½ comes from an eigen-decomposition of Σ₁ (negative round-off eigenvalues clamped to
0), and tr (Σ₁^½ Σ₂ Σ₁^½)^½ is the sum of the square roots of that symmetric matrix's eigenvalues. It is the same
quantity (the nonzero eigenvalues of Σ₁Σ₂ and of Σ₁^½Σ₂Σ₁^½ coincide), finite and symmetric in its arguments for
any covariances, and computed in float64 throughout.

>>> import numpy as np
>>> from latte_rs.evaluation.metrics import RunningStats, frechet_distance
>>> feats = np.random.default_rng(0).normal(size=(100, 8))
>>> stats = RunningStats(8)
>>> stats.update(feats[:50]); stats.update(feats[50:])
>>> mu, sigma = stats.mean_cov()
>>> round(frechet_distance(mu, sigma, mu, sigma), 9)
0.0
"""

from __future__ import annotations

import numpy as np


def _check(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    for arg, value in ((f"mu{name}", mu), (f"sigma{name}", sigma)):
        kind = np.asarray(value).dtype.kind
        if kind not in "fiub":
            raise TypeError(f"{arg}: expected a real-valued array, got dtype {np.asarray(value).dtype}")
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{name}: expected a vector (d,), got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"sigma{name}: expected shape ({d}, {d}) to match mu{name}, got {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{name}/sigma{name}: expected finite values")
    return mu, (sigma + sigma.T) / 2


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a (numerically) positive semi-definite matrix."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    root = _psd_sqrt(a)
    inner = root @ b @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians given by mean vectors and covariance matrices (see module docs)."""
    mu1, sigma1 = _check(mu1, sigma1, "1")
    mu2, sigma2 = _check(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2: expected the same dimension, got {mu1.shape[0]} and {mu2.shape[0]}")
    # tr (Σ₁^½ Σ₂ Σ₁^½)^½ = tr (Σ₂^½ Σ₁ Σ₂^½)^½; the mean of both orders makes the value exactly symmetric in
    # its arguments (each alone agrees with the other to ~1e-9 relative, round-off of near-singular roots).
    trace_sqrt = (_trace_sqrt_product(sigma1, sigma2) + _trace_sqrt_product(sigma2, sigma1)) / 2
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    if not np.isfinite(value):
        raise ValueError("mu/sigma: values too large for a float64 Fréchet distance (it overflowed); expected feature "
                         "statistics of a sensible magnitude")
    return max(value, 0.0)


class RunningStats:
    """Mean and covariance of feature vectors fed in batches, in float64, with memory independent of their number.

    ``mean_cov(ddof=1)`` gives the unbiased covariance (``numpy.cov``'s default, which the FVD implementations
    use); ``ddof=0`` the maximum-likelihood one.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim: expected >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self._sum = np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)

    def update(self, features) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features: expected shape (n, {self.dim}), got {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("features: expected finite values")
        # Shifted by the first batch's mean, so the sums stay well conditioned for features far from zero.
        if self.count == 0:
            self._shift = f.mean(axis=0) if len(f) else np.zeros(self.dim)
        g = f - self._shift
        self.count += len(f)
        self._sum += g.sum(axis=0)
        self._outer += g.T @ g

    def mean_cov(self, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if self.count <= ddof:
            raise ValueError(f"features: need more than {ddof} vectors for a covariance, got {self.count}")
        mean_shifted = self._sum / self.count
        cov = (self._outer - self.count * np.outer(mean_shifted, mean_shifted)) / (self.count - ddof)
        return mean_shifted + self._shift, (cov + cov.T) / 2


def psnr(frames, reference) -> float:
    """PSNR in dB of videos or images `frames` against `reference` (same shape), uint8 or floats in [0, 1], over
    all their values; inf where they are equal.

    >>> import numpy as np
    >>> round(psnr(np.full((2, 2), 10, np.uint8), np.zeros((2, 2), np.uint8)), 2)
    28.13
    """
    a, b = (np.asarray(x) for x in (frames, reference))
    if a.shape != b.shape:
        raise ValueError(f"frames: expected the reference's shape {b.shape}, got {a.shape}")
    a, b = (x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64) for x in (a, b))
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))
