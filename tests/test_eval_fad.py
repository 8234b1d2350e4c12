"""Fréchet distance (eval/fad.py): closed forms for Gaussians, an independent computation through the
symmetric square root, the safeguards, the covariance options, FAD-inf and per-clip FAD."""

import numpy as np
import pytest
import scipy.linalg
from soundsmith.eval.fad import (
    Statistics,
    fad,
    fad_inf,
    frechet_distance,
    min_windows,
    per_clip_fad,
)


def fd_symmetric(mu1, cov1, mu2, cov2):
    """Independent route: Tr sqrt(C1 C2) = Tr sqrt(C1^1/2 C2 C1^1/2), a symmetric PSD matrix, by eigh."""
    w, v = np.linalg.eigh(cov1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ cov2 @ root)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def random_spd(d, rng, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def test_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # commuting (diagonal) covariances: ||dmu||^2 + sum (sqrt v1 - sqrt v2)^2
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, abs=1e-10)
    # scaled covariance C1 = a^2 C2: (a - 1)^2 Tr(C2)
    rng = np.random.default_rng(0)
    c = random_spd(6, rng)
    assert frechet_distance(np.zeros(6), 9.0 * c, np.zeros(6), c) == pytest.approx(4.0 * np.trace(c), rel=1e-9)
    # identical Gaussians: 0
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_an_independent_computation(seed):
    rng = np.random.default_rng(seed)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = random_spd(d, rng), random_spd(d, rng, 3.0)  # non-commuting
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(fd_symmetric(mu1, c1, mu2, c2), rel=1e-8)


def test_statistics_and_sample_fad():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 4))
    stats = Statistics.from_embeddings(x)
    np.testing.assert_allclose(stats.mu, x.mean(0))
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False))
    assert stats.n == 400 and stats.dim == 4
    assert fad(stats, stats) == pytest.approx(0.0, abs=1e-9)
    # further shifts -> larger distance; a second sample of the same Gaussian is close
    same = Statistics.from_embeddings(rng.standard_normal((400, 4)))
    values = [fad(Statistics.from_embeddings(rng.standard_normal((400, 4)) + s), stats) for s in (0.25, 0.5, 1.0)]
    assert fad(same, stats) < values[0] < values[1] < values[2]
    assert values[2] == pytest.approx(4.0, rel=0.15)  # ||shift||^2 = 4 * 1^2


def test_too_few_windows_for_a_full_covariance():
    x = np.random.default_rng(0).standard_normal((10, 16))
    with pytest.raises(ValueError, match=r"10 embedding windows.*16-d embeddings needs at least 17.*"
                                         r"--covariance diagonal or --covariance shrinkage"):
        Statistics.from_embeddings(x, what="generated set")
    assert min_windows(16) == 17 and min_windows(16, "shrinkage") == 2
    diag = Statistics.from_embeddings(x, covariance="diagonal")
    np.testing.assert_allclose(np.diag(diag.cov), x.var(0, ddof=1))
    assert np.count_nonzero(diag.cov - np.diag(np.diag(diag.cov))) == 0
    shrunk = Statistics.from_embeddings(x, covariance="shrinkage")
    assert np.linalg.matrix_rank(shrunk.cov) == 16  # invertible with n < D
    other = Statistics.from_embeddings(np.random.default_rng(1).standard_normal((10, 16)) + 1, covariance="shrinkage")
    value = fad(shrunk, other)
    assert np.isfinite(value) and value > 10  # mean shift of 1 in 16 dimensions dominates


@pytest.mark.parametrize("bad,message", [
    (np.zeros((0, 4)), "at least one window"),
    (np.full((20, 2), np.nan), "NaN or infinite"),
    (np.zeros(5), "shaped"),
])
def test_bad_embeddings(bad, message):
    with pytest.raises(ValueError, match=message):
        Statistics.from_embeddings(bad)
    with pytest.raises(ValueError, match="covariance must be one of"):
        Statistics.from_embeddings(np.zeros((5, 2)), covariance="banana")


def test_mismatched_statistics():
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_imaginary_part_is_an_error():
    # an indefinite "covariance" makes sqrtm(C1 C2) complex with a large imaginary diagonal
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


def test_non_finite_sqrtm_retries_with_eps(monkeypatch):
    calls = []
    real = scipy.linalg.sqrtm

    def flaky(a):
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real(a)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky)
    value = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    assert len(calls) == 2 and np.allclose(calls[1], (1 + 1e-6) ** 2 * np.eye(2))
    assert value == pytest.approx(0.0, abs=1e-5)


def test_fad_inf_extrapolates_the_small_sample_bias():
    rng = np.random.default_rng(0)
    d = 16
    reference = Statistics(mu=np.zeros(d), cov=np.eye(d), n=10**9)  # the true distribution
    gen = rng.standard_normal((3000, d))  # drawn from it: true FD = 0, FD(n) biased upwards by ~1/n
    inf = fad_inf(gen, reference, min_n=100, steps=20, seed=0)
    assert inf.r2 > 0.95 and inf.slope > 0
    assert inf.points[0][0] == 100 and inf.points[-1][0] == 3000
    assert inf.points[0][1] > 0.5 and abs(inf.value) < 0.1  # FD(100) ~ 0.8; the intercept ~ 0
    with pytest.raises(ValueError, match="needs at least 17 windows"):
        fad_inf(gen, reference, min_n=5)
    with pytest.raises(ValueError, match="has 17 windows; the fit needs more than 17"):
        fad_inf(gen[:17], reference)


def test_per_clip_fad_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    d = 6
    ref = Statistics.from_embeddings(rng.standard_normal((500, d)) @ random_spd(d, rng))
    many = rng.standard_normal((40, d)) + 0.3  # full-rank clip: the direct sqrtm route applies
    few = rng.standard_normal((3, d))  # rank 2: compare with the symmetric eigen route
    one = rng.standard_normal((1, d))
    values = per_clip_fad([many, few, one], ref)
    direct = Statistics.from_embeddings(many)
    assert values[0] == pytest.approx(fad(direct, ref), rel=1e-7)
    c_few = np.cov(few, rowvar=False)
    assert values[1] == pytest.approx(fd_symmetric(few.mean(0), c_few, ref.mu, ref.cov), rel=1e-7)
    diff = one[0] - ref.mu
    assert values[2] == pytest.approx(diff @ diff + np.trace(ref.cov))
    # a diagonal reference compares variances only
    ref_diag = Statistics.from_embeddings(rng.standard_normal((500, d)), covariance="diagonal")
    v = per_clip_fad([many], ref_diag)[0]
    expected = frechet_distance(many.mean(0), np.diag(many.var(0, ddof=1)), ref_diag.mu, ref_diag.cov)
    assert v == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match=r"clip 0: embeddings shaped \(3, 2\)"):
        per_clip_fad([np.zeros((3, 2))], ref)
