"""KID: the unbiased squared MMD between Inception features with the cubic polynomial kernel.

k(x, y) = (x . y / d + 1) ** 3, as torch-fidelity and clean-fid compute it (Binkowski et al.,
2018). Unlike FID it has no bias from the sample size, so it compares fairly on the small val sets
where FID does not. Reported as the mean and standard deviation over random subsets of equal size
(min of both set sizes and eval.kid_subset_size), drawn from a seeded generator: repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KidResult:
    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equally large samples: the diagonals of k(x, x) and k(y, y) left out."""
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def canonical(features: np.ndarray) -> np.ndarray:
    """The rows in an order of their values, not of their arrival: sharded evaluations merge
    their rows in any order, and the seeded subsets must pick the same features regardless."""
    features = np.asarray(features)
    return features[np.lexsort((features.sum(axis=1), features[:, 0]))]


def kid(features_a: np.ndarray, features_b: np.ndarray, *, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> KidResult:
    """Mean and std of mmd2_unbiased over subsets drawn without replacement from each set (in
    canonical row order, so the result does not depend on the order of the rows)."""
    a = canonical(np.asarray(features_a, dtype=np.float64))
    b = canonical(np.asarray(features_b, dtype=np.float64))
    size = min(len(a), len(b), subset_size)
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(a[rng.choice(len(a), size, replace=False)],
                                     b[rng.choice(len(b), size, replace=False)])
                       for _ in range(subsets)])
    return KidResult(float(values.mean()), float(values.std()), subsets, size)
