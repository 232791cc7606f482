"""KID against a direct computation of the unbiased MMD^2, and its behaviour on known pairs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stargan_ray.metrics import kid


def _direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The U-statistic written out pair by pair: the definition, no matrix algebra."""
    d, m = x.shape[1], len(x)

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_mmd2_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 5)), rng.standard_normal((9, 5)) + 0.4
    assert kid.mmd2_unbiased(x, y) == pytest.approx(_direct_mmd2(x, y), rel=1e-12)


def test_kid_is_the_mean_and_std_over_seeded_subsets():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((30, 6)), rng.standard_normal((20, 6)) * 1.2
    result = kid.kid(a, b, subsets=7, subset_size=12, seed=3)
    assert kid.kid(a[::-1], b[::-1], subsets=7, subset_size=12, seed=3) == result
    a, b = kid.canonical(a), kid.canonical(b)
    draw = np.random.default_rng(3)
    direct = [_direct_mmd2(a[draw.choice(30, 12, replace=False)], b[draw.choice(20, 12, replace=False)])
              for _ in range(7)]
    assert (result.subsets, result.subset_size) == (7, 12)
    assert result.mean == pytest.approx(np.mean(direct), rel=1e-12)
    assert result.std == pytest.approx(np.std(direct), rel=1e-10)
    assert kid.kid(a, b, subsets=7, subset_size=50).subset_size == 20  # capped by the smaller set


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((400, 16))
    same = kid.kid(base, rng.standard_normal((400, 16)), subsets=20, subset_size=200)
    near = kid.kid(base, rng.standard_normal((400, 16)) + 0.3, subsets=20, subset_size=200)
    far = kid.kid(base, rng.standard_normal((400, 16)) + 1.0, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3  # unbiased: no offset from the sample size
    assert same.mean < near.mean < far.mean
    with pytest.raises(ValueError, match="at least 2"):
        kid.kid(base[:1], base)
