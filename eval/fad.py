"""Fréchet distance between embedding sets: FAD, FAD-inf and per-clip FAD (docs/metrics.md).

Every embedder returns per-window embeddings `[S, D]` per clip; a set's statistics are the mean and the
unbiased covariance over all windows of all its clips (as fadtk does), so a few hundred clips suffice.

    d^2 = ||mu_1 - mu_2||^2 + Tr(C_1) + Tr(C_2) - 2 Tr(sqrtm(C_1 C_2))

- `frechet_distance`: the formula above with the usual safeguards (Google's FAD, pytorch-fid): sqrtm in
  float64; if it is not finite, eps * I is added to both covariances and it is retried; an imaginary part
  beyond 1e-3 on the diagonal is an error, a smaller one is dropped.
- `Statistics.from_embeddings`: mean + covariance, `covariance="full"` (np.cov, needs at least D + 1
  windows), `"diagonal"` (per-dimension variances) or `"shrinkage"` (Ledoit-Wolf, well conditioned with
  fewer windows than dimensions).
- `fad_inf`: fadtk's extrapolation to an infinite set: FD of random subsets of n windows for n from
  `min_n` to N, a line fitted against 1/n; the intercept is FAD-inf (with slope and R^2).
- `per_clip_fad`: each clip's windows against the reference statistics, to find the worst clips.

The maths is kept apart from I/O; errors are one-line ValueErrors that name what is missing.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

COVARIANCES = ("full", "diagonal", "shrinkage")
EPS = 1e-6  # diagonal offset of the retry (pytorch-fid, gudgud96, fadtk)
IMAG_ATOL = 1e-3  # largest imaginary part of sqrtm's diagonal that is treated as rounding


@dataclass(frozen=True)
class Statistics:
    """Gaussian statistics of one embedding set: mean `[D]`, covariance `[D, D]` (float64), rows `n`."""

    mu: np.ndarray
    cov: np.ndarray
    n: int
    covariance: str = "full"

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, *, covariance: str = "full", what: str = "embedding set"
                        ) -> Statistics:
        """`[N, D]` rows (windows) -> statistics. `what` names the set in errors.

        Raises ValueError for an empty or non-finite set, and for a full covariance with fewer than D + 1
        rows (its estimate would be singular: the error says which n is needed and the other options).
        """
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{what}: expected embeddings shaped [windows, dim] with at least one window, "
                             f"got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{what}: embeddings contain NaN or infinite values")
        n, d = x.shape
        need = min_windows(d, covariance)
        if n < need:
            hint = ("; add clips or pass --covariance diagonal or --covariance shrinkage" if covariance == "full"
                    else "; add clips")
            raise ValueError(f"{what}: {n} embedding windows, but a {covariance} covariance of {d}-d embeddings "
                             f"needs at least {need}{hint}")
        mu = x.mean(0)
        if covariance == "full":
            cov = np.cov(x, rowvar=False)
        elif covariance == "diagonal":
            cov = np.diag(x.var(0, ddof=1))
        else:
            from sklearn.covariance import LedoitWolf

            # Ledoit-Wolf shrinks the sample covariance towards a scaled identity by the amount that
            # minimises the expected error: invertible and well conditioned even with n < D.
            cov = LedoitWolf(assume_centered=False).fit(x).covariance_ * (n / (n - 1))  # unbiased scale
        return cls(mu=mu, cov=np.atleast_2d(cov), n=n, covariance=covariance)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mu": self.mu, "cov": self.cov, "n": np.array(self.n), "covariance": np.array(self.covariance)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Statistics:
        return cls(mu=np.asarray(arrays["mu"], dtype=np.float64), cov=np.asarray(arrays["cov"], dtype=np.float64),
                   n=int(arrays["n"]), covariance=str(arrays["covariance"]))


def min_windows(dim: int, covariance: str = "full") -> int:
    """Fewest rows a covariance of `dim`-d embeddings needs: D + 1 for a full (non-singular) one, 2 otherwise."""
    return dim + 1 if covariance == "full" else 2


# ------------------------------------------------------------------------------------------ the distance


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, *,
                     eps: float = EPS) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), in float64 (see the module docstring)."""
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: means {mu1.shape} / {mu2.shape}, covariances {cov1.shape} / "
                         f"{cov2.shape} (were both sets embedded with the same model?)")
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    def product_sqrt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # "Matrix is singular": judged below by finiteness instead
            warnings.simplefilter("ignore")
            return scipy.linalg.sqrtm(a @ b)

    covmean = product_sqrt(cov1, cov2)
    if not np.isfinite(covmean).all():
        log.warning("Frechet distance: sqrtm(C1 C2) is not finite (near-singular covariances); adding %g * I to both",
                    eps)
        offset = np.eye(cov1.shape[0]) * eps
        covmean = product_sqrt(cov1 + offset, cov2 + offset)
        if not np.isfinite(covmean).all():
            raise ValueError("Frechet distance: sqrtm(C1 C2) is not finite even after adding eps * I; the "
                             "covariances are degenerate (silent or identical clips?)")
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > IMAG_ATOL:
            raise ValueError(f"Frechet distance: sqrtm(C1 C2) has an imaginary part of {imag:.3g} on its diagonal "
                             f"(> {IMAG_ATOL}): the covariances are ill-conditioned; try --covariance shrinkage")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def fad(stats_a: Statistics, stats_b: Statistics) -> float:
    """`frechet_distance` of two `Statistics`."""
    return frechet_distance(stats_a.mu, stats_a.cov, stats_b.mu, stats_b.cov)


# ------------------------------------------------------------------------------------------------ FAD-inf


@dataclass(frozen=True)
class FadInf:
    """FAD extrapolated to an infinite set: FD(n) ~ value + slope / n, fitted on `points` (n, FD(n))."""

    value: float
    slope: float
    r2: float
    points: list[tuple[int, float]]


def fad_inf(embeddings: np.ndarray, reference: Statistics, *, steps: int = 25, min_n: int | None = None,
            seed: int = 0, what: str = "generated set") -> FadInf:
    """fadtk's FAD-inf: for `steps` subset sizes n in [min_n, N], draw n rows of `embeddings` `[N, D]`
    uniformly with replacement (seeded), take FD against `reference`, and fit FD = a + b / n.

    `min_n` defaults to the larger of what the covariance needs and N / 4 (fadtk's 500 when N is large).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n_all, dim = x.shape
    need = min_windows(dim, reference.covariance)
    if min_n is None:
        min_n = max(need, min(500, n_all // 4))
    if min_n < need:
        raise ValueError(f"FAD-inf: min_n={min_n}, but a {reference.covariance} covariance of {dim}-d embeddings "
                         f"needs at least {need} windows")
    if steps < 2:
        raise ValueError(f"FAD-inf: steps must be >= 2, got {steps}")
    if n_all <= min_n:
        raise ValueError(f"FAD-inf: {what} has {n_all} windows; the fit needs more than {min_n} "
                         f"(subsets from {min_n} to N windows)")
    rng = np.random.default_rng(seed)
    sizes = sorted(set(np.linspace(min_n, n_all, steps).astype(int).tolist()))
    points = []
    for n in sizes:
        rows = x[rng.integers(0, n_all, size=n)]
        stats = Statistics.from_embeddings(rows, covariance=reference.covariance, what=f"{what} subset of {n}")
        points.append((n, fad(stats, reference)))
    inv = np.array([1.0 / n for n, _ in points])
    fd = np.array([v for _, v in points])
    slope, intercept = np.polyfit(inv, fd, 1)
    residual = fd - (intercept + slope * inv)
    total = ((fd - fd.mean()) ** 2).sum()
    r2 = 1.0 - float((residual ** 2).sum() / total) if total > 0 else 1.0
    return FadInf(value=float(intercept), slope=float(slope), r2=r2, points=points)


# ----------------------------------------------------------------------------------------------- per clip


def per_clip_fad(clips: Sequence[np.ndarray], reference: Statistics) -> list[float]:
    """FD of each clip's windows `[S, D]` (its own mean and covariance) against `reference`.

    A clip has few windows, so its covariance has rank r <= S - 1 and sqrtm(C_clip C_ref) is singular and
    ill-conditioned. Written by hand because no library does it: with C_clip = X^T X / (S - 1) for the
    centred windows X `[S, D]`, the non-zero eigenvalues of C_clip C_ref are those of the small
    `X C_ref X^T / (S - 1)` `[S, S]`, which is symmetric PSD, so Tr(sqrtm(C_clip C_ref)) is the sum of the
    square roots of its eigenvalues: exact, and cheap. One window: a point mass (zero covariance).
    """
    ref_trace = float(np.trace(reference.cov))
    out = []
    for i, emb in enumerate(clips):
        x = np.asarray(emb, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != reference.dim or x.shape[0] == 0:
            raise ValueError(f"clip {i}: embeddings shaped {x.shape}, expected [windows, {reference.dim}]")
        mu = x.mean(0)
        diff = mu - reference.mu
        dist = float(diff @ diff) + ref_trace
        if x.shape[0] > 1:
            centred = (x - mu) / np.sqrt(x.shape[0] - 1)  # [S, D]
            if reference.covariance == "diagonal":
                centred_var = (centred ** 2).sum(0)  # the clip's own variances, as the reference is diagonal
                dist += float(centred_var.sum() - 2 * np.sqrt(centred_var * np.diag(reference.cov)).sum())
            else:
                gram = centred @ reference.cov @ centred.T  # [S, S]
                eig = np.clip(np.linalg.eigvalsh((gram + gram.T) / 2), 0.0, None)
                dist += float((centred ** 2).sum() - 2 * np.sqrt(eig).sum())
        out.append(dist)
    return out
