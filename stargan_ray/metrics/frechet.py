"""The Frechet distance between two Gaussians, with its trace term at its arithmetic cost.

FID = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2). The last term needs no general matrix
square root. If S1 = L L^T (any factor L of shape d x k), then S1 S2 = L (L^T S2) and L^T S2 L share
their nonzero eigenvalues, and L^T S2 L is symmetric positive semi-definite, so
tr sqrt(S1 S2) = sum of sqrt(eigvalsh(L^T S2 L)). Exact, not an approximation. The factor is

- the set's own centred features / sqrt(n - 1) when it has fewer samples n than dimensions d
  (every small val-set FID): L^T S2 L is then n x n;
- a Cholesky factor of S1 when S1 is positive definite;
- V sqrt(W) from S1's eigen-decomposition otherwise (rank-deficient, numerically singular).

method "auto" (the default) takes the first that applies to either covariance, the one with the
smaller factor; "eigh" is the earlier symmetric path (two eigen-decompositions); "sqrtm" is the
official code's scipy path, with its safeguards, for anyone who wants that exact code path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

METHODS = ("auto", "eigh", "sqrtm")


@dataclass
class FrechetResult:
    value: float
    warnings: list[str] = field(default_factory=list)


def covariance_factor(cov: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """L with L @ L.T == cov (up to rounding): from rows when fewer than the dimensions, else a
    Cholesky factor, else the eigen-decomposition (negative rounding eigenvalues count as 0)."""
    if rows is not None and len(rows) <= cov.shape[0]:
        rows = np.asarray(rows, dtype=np.float64)
        centred = rows - rows.mean(axis=0)
        return centred.T / np.sqrt(len(rows) - 1)
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(cov)
        keep = w > 0
        return v[:, keep] * np.sqrt(w[keep])


def trace_sqrt_factored(factor1: np.ndarray, cov2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for S1 = factor1 factor1^T: eigenvalues of the small symmetric factor1^T S2
    factor1."""
    inner = factor1.T @ cov2 @ factor1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def trace_sqrt_auto(cov1: np.ndarray, cov2: np.ndarray, rows1: np.ndarray | None = None,
                    rows2: np.ndarray | None = None) -> float:
    """tr sqrt(S1 S2), factoring the covariance whose set has fewer samples (when below d)."""
    dim = cov1.shape[0]
    n1 = len(rows1) if rows1 is not None else dim + 1
    n2 = len(rows2) if rows2 is not None else dim + 1
    if n2 < n1:  # tr sqrt(S1 S2) = tr sqrt(S2 S1): factor the smaller set
        cov1, cov2, rows1 = cov2, cov1, rows2
    return trace_sqrt_factored(covariance_factor(cov1, rows1), cov2)


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr sqrtm(cov1 cov2) from two eigh calls (method "eigh").

    cov1 cov2 is similar to R cov2 R with R = cov1^(1/2), a symmetric PSD matrix whose square
    roots of eigenvalues sum to the trace. Rounding makes tiny eigenvalues negative; they count as 0.
    """
    w, v = np.linalg.eigh(cov1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root @ cov2 @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def trace_sqrtm_official(cov1: np.ndarray, cov2: np.ndarray, eps: float = 1e-6
                         ) -> tuple[float, list[str]]:
    """tr sqrtm(cov1 cov2) as the official code computes it (scipy's sqrtm), with its safeguards.

    A non-finite sqrtm is retried with eps added to both diagonals; an imaginary part that is not
    negligible becomes a warning, and the real part is the value (what the official code reports).
    """
    from scipy import linalg

    notes: list[str] = []

    def sqrtm(a: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", linalg.LinAlgWarning)
            root = linalg.sqrtm(a)
        notes.extend(f"sqrtm: {w.message}" for w in caught
                     if issubclass(w.category, linalg.LinAlgWarning))
        return root

    covmean = sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        notes.append(f"sqrtm(cov1 cov2) was not finite; retried with {eps:g} added to the "
                     "covariance diagonals")
        offset = np.eye(cov1.shape[0]) * eps
        covmean = sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        imag = float(np.abs(np.diagonal(covmean).imag).max())
        if imag > 1e-3:
            notes.append(f"sqrtm has an imaginary component (max {imag:.3g} on the diagonal); "
                         "the real part is reported, as the official code does")
        covmean = covmean.real
    return float(np.trace(covmean)), notes


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                     eps: float = 1e-6, method: str = "auto", rows1: np.ndarray | None = None,
                     rows2: np.ndarray | None = None) -> FrechetResult:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 sqrt(cov1 cov2)) with the trace term by method.

    rows1 / rows2: the features behind a covariance, when known; "auto" uses them for sets with
    fewer samples than dimensions.
    """
    if method == "auto":
        trace, notes = trace_sqrt_auto(cov1, cov2, rows1, rows2), []
    elif method == "sqrtm":
        trace, notes = trace_sqrtm_official(cov1, cov2, eps)
    elif method == "eigh":
        trace, notes = trace_sqrt_product(cov1, cov2), []
    else:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace)
    return FrechetResult(value, notes)
