"""The Frechet trace term: every method against scipy's sqrtm on official-size problems.

2048 feature dimensions, as Inception's pool features; small sets of 100, 1,000 and 3,000 samples
(rows known) against the covariance of 28,000 samples. The 28,000-sample covariance is drawn from
its exact distribution (Bartlett's decomposition of the Wishart distribution) instead of from
28,000 rows, which would cost 235 GFLOP per case on a 2-core machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from stargan_ray.metrics import frechet

DIM = 2048
REL = 1e-6  # docs/evaluation.md's bound for every method against sqrtm


def _basis(rng: np.random.Generator, spectrum: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((DIM, len(spectrum))))
    return q * np.sqrt(spectrum)


def _wishart_cov(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
    """The covariance of n Gaussian samples with covariance basis basis^T, without the samples."""
    k = basis.shape[1]
    a = np.tril(rng.standard_normal((k, k)), -1)
    a[np.diag_indices(k)] = np.sqrt(rng.chisquare(n - 1 - np.arange(k)))
    f = basis @ a
    return f @ f.T / (n - 1)


def _case(seed: int, spectrum: np.ndarray, n_small: int):
    rng = np.random.default_rng(seed)
    basis = _basis(rng, spectrum)
    cov_big = _wishart_cov(rng, basis, 28_000)
    mu_big = rng.standard_normal(DIM) * 0.1
    rows = rng.standard_normal((n_small, basis.shape[1])) @ basis.T * 1.1 + 0.05
    return rows.mean(0), np.cov(rows, rowvar=False), rows, mu_big, cov_big


DECAYING = np.arange(1, DIM + 1) ** -1.5  # condition number 9e4, like Inception features
CASES = {
    "100 vs 28000": (0, DECAYING, 100),
    "1000 vs 28000": (1, DECAYING, 1000),
    "3000 vs 28000": (2, DECAYING, 3000),
    # both sets in a 1,500-dimensional subspace: neither covariance has full rank
    "rank-deficient": (3, np.arange(1, 1501) ** -1.0, 3000),
    # eigenvalues over twelve decades: positive definite in theory, barely in floating point
    "near-singular": (4, np.logspace(0, -12, DIM), 3000),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_fast_traces_equal_scipy_sqrtm_at_official_size(name):
    mu1, cov1, rows1, mu2, cov2 = _case(*CASES[name])
    official = frechet.frechet_distance(mu1, cov1, mu2, cov2, method="sqrtm").value
    auto = frechet.frechet_distance(mu1, cov1, mu2, cov2, method="auto", rows1=rows1).value
    without_rows = frechet.frechet_distance(mu1, cov1, mu2, cov2, method="auto").value
    assert abs(auto - official) <= REL * abs(official), (auto, official)
    assert abs(without_rows - official) <= REL * abs(official), (without_rows, official)


def test_the_factor_reproduces_the_covariance_on_every_branch():
    rng = np.random.default_rng(5)
    dim = 64
    few = rng.standard_normal((20, dim))  # fewer rows than dimensions: centred rows
    many = rng.standard_normal((500, dim))  # full rank: Cholesky
    flat = rng.standard_normal((500, 10)) @ rng.standard_normal((10, dim))  # rank 10: eigh
    for rows in (few, many, flat):
        cov = np.cov(rows, rowvar=False)
        factor = frechet.covariance_factor(cov, rows)
        assert np.allclose(factor @ factor.T, cov, atol=1e-10 * np.abs(cov).max())
    assert frechet.covariance_factor(np.cov(few, rowvar=False), few).shape == (dim, 20)
    assert frechet.covariance_factor(np.cov(flat, rowvar=False)).shape[1] < dim


def test_auto_factors_the_smaller_set_whichever_side_it_is_on():
    rng = np.random.default_rng(6)
    dim = 128
    small = rng.standard_normal((30, dim))
    big = rng.standard_normal((1000, dim)) * 1.3
    cov_s, cov_b = np.cov(small, rowvar=False), np.cov(big, rowvar=False)
    values = [frechet.trace_sqrt_auto(cov_s, cov_b, rows1=small),
              frechet.trace_sqrt_auto(cov_b, cov_s, rows2=small),
              frechet.trace_sqrt_auto(cov_b, cov_s, rows1=big, rows2=small)]
    assert max(values) - min(values) <= 1e-12 * values[0]  # the same 30 x 30 problem each time
    # sqrtm and eigh of this rank-29 product add sqrt(rounding noise) of ~100 zero eigenvalues
    official = frechet.trace_sqrtm_official(cov_s, cov_b)[0]
    assert abs(values[0] - official) <= REL * official


def test_an_unknown_method_names_the_allowed_ones():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="auto, eigh, sqrtm"):
        frechet.frechet_distance(np.zeros(3), eye, np.zeros(3), eye, method="schur")
