"""The Fréchet distance against scipy's sqrtm formula, singular covariances, symmetry; streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest

from latte_rs.evaluation.metrics import RunningStats, frechet_distance


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    """The formula of the original FVD / pytorch-fid code: sqrtm of the non-symmetric product."""
    linalg = pytest.importorskip("scipy.linalg")
    covmean = np.asarray(linalg.sqrtm(s1 @ s2)).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_cov(rng, d, n):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    return np.cov(x, rowvar=False)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_matches_the_scipy_sqrtm_formula(d):
    rng = np.random.default_rng(d)
    for _ in range(5):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_cov(rng, d, 4 * d), _random_cov(rng, d, 4 * d)
        ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_fd(mu1, s1, mu2, s2)
        assert ours == pytest.approx(ref, rel=1e-6)
        assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-9)  # symmetric


def test_singular_covariances_give_finite_correct_values():
    rng = np.random.default_rng(1)
    d = 40
    a, b = rng.normal(size=(10, d)), rng.normal(size=(12, d)) + 0.5  # fewer clips than dimensions
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(ours) and ours > 0
    # Reference: the eigenvalues of Σ1 Σ2 are real and >= 0 (up to round-off); the sum of their square roots is
    # tr sqrt(Σ1 Σ2), which scipy's sqrtm cannot give here (the product is singular).
    eig = np.linalg.eigvals(s1 @ s2).real
    ref = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))


def test_self_distance_is_zero_and_bad_input_is_named():
    rng = np.random.default_rng(2)
    s = _random_cov(rng, 8, 50)
    mu = rng.normal(size=8)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(mu, s, mu, s[:4, :4])
    with pytest.raises(ValueError, match="mu1"):
        frechet_distance(np.ones((2, 8)), s, mu, s)


def test_running_stats_equal_numpy_in_any_batching():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(101, 6)) * 3 + 1000.0  # far from zero: the shifted sums keep precision
    stats = RunningStats(6)
    for part in np.array_split(f, 7):
        stats.update(part)
    mean, cov = stats.mean_cov()
    np.testing.assert_allclose(mean, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="more than 1"):
        RunningStats(6).mean_cov()
