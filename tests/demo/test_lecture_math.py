"""demo/lecture.py against references nobody here wrote: the closed-form KL of two Gaussians,
torch.distributions, scipy's adaptive quadrature and scipy.stats; the Monte-Carlo estimate against the
quadrature within 3 standard errors; both fits against what they must converge to."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Normal, kl_divergence

from demo import lecture as lec

GAUSSIAN_PAIRS = [(0.0, 1.0, 0.0, 1.0), (0.3, 1.2, -1.0, 0.7), (2.0, 0.05, -1.0, 3.0), (-4.0, 2.5, 4.0, 0.3)]
MIXTURE_PAIRS = [
    ((0.5, -2.0, 0.6, 0.5, 2.0, 0.6), (1.0, 0.0, 2.1, 0.0, 0.0, 1.0)),
    ((0.7, -1.0, 0.8, 0.3, 2.5, 0.4), (0.4, -1.0, 0.8, 0.6, 3.5, 0.5)),
    ((0.2, 0.0, 1.0, 0.8, 1.0, 0.2), (0.5, -0.5, 1.5, 0.5, 1.5, 1.0)),
]


def scipy_kl(p: lec.Mixture, q: lec.Mixture) -> float:
    """∫ p log(p/q) by scipy's adaptive QUADPACK, with p's and q's densities from scipy.stats."""

    def pdf(mix, x):
        return sum(
            w * stats.norm.pdf(x, m, s) for w, m, s in zip(mix.weights, mix.means, mix.scales, strict=True)
        )

    def logpdf(mix, x):
        terms = [
            math.log(w) + stats.norm.logpdf(x, m, s)
            for w, m, s in zip(mix.weights, mix.means, mix.scales, strict=True)
            if w
        ]
        return float(np.logaddexp.reduce(terms))

    points = sorted({m for m in (*p.means, *q.means)})
    return integrate.quad(
        lambda x: pdf(p, x) * (logpdf(p, x) - logpdf(q, x)), -60, 60, points=points, limit=400, epsabs=1e-10
    )[0]


@pytest.mark.parametrize("mp,sp,mq,sq", GAUSSIAN_PAIRS)
def test_quadrature_kl_of_two_gaussians_matches_the_closed_form_and_torch(mp, sp, mq, sq):
    p, q = lec.Mixture.gaussian(mp, sp), lec.Mixture.gaussian(mq, sq)
    closed = kl_divergence(
        Normal(torch.tensor(mp, dtype=torch.float64), sp), Normal(torch.tensor(mq, dtype=torch.float64), sq)
    )
    assert lec.gaussian_kl(mp, sp, mq, sq) == pytest.approx(closed.item(), abs=1e-12)
    assert lec.kl_quadrature(p, q) == pytest.approx(closed.item(), abs=1e-6)
    reverse = kl_divergence(
        Normal(torch.tensor(mq, dtype=torch.float64), sq), Normal(torch.tensor(mp, dtype=torch.float64), sp)
    )
    assert lec.kl_quadrature(q, p) == pytest.approx(reverse.item(), abs=1e-6)


@pytest.mark.parametrize("pq", MIXTURE_PAIRS)
def test_quadrature_kl_of_mixtures_matches_scipy_quad(pq):
    p, q = (lec.Mixture.of(*v) for v in pq)
    assert lec.kl_quadrature(p, q) == pytest.approx(scipy_kl(p, q), abs=1e-6)
    assert lec.kl_quadrature(q, p) == pytest.approx(scipy_kl(q, p), abs=1e-6)


def test_log_density_and_samples_are_those_of_the_mixture():
    p = lec.Mixture.of(3.0, -1.0, 0.5, 1.0, 2.0, 1.5)  # weights normalised to 0.75 / 0.25
    x = np.linspace(-4, 6, 11)
    expected = np.log(0.75 * stats.norm.pdf(x, -1, 0.5) + 0.25 * stats.norm.pdf(x, 2, 1.5))
    np.testing.assert_allclose(p.log_pdf(x), expected, rtol=1e-12)
    draws = p.sample(200_000, np.random.default_rng(1))
    assert draws.mean() == pytest.approx(p.mean, abs=0.02) and draws.std() == pytest.approx(p.std, abs=0.02)
    cdf = 0.75 * stats.norm.cdf(x, -1, 0.5) + 0.25 * stats.norm.cdf(x, 2, 1.5)
    np.testing.assert_allclose([(draws <= v).mean() for v in x], cdf, atol=5e-3)


def test_kl_is_zero_exactly_when_p_equals_q():
    p = lec.Mixture.of(0.5, -1.5, 0.7, 0.5, 1.5, 0.7)
    assert abs(lec.kl_quadrature(p, p)) < 1e-12
    mc = lec.kl_monte_carlo(p, p, 500, 0)
    assert mc.estimate == 0 and mc.sem == 0 and np.all(mc.g == 1.0)  # Jensen's picture: one point, t = 1
    q = lec.Mixture.of(0.5, -1.5, 0.7, 0.5, 1.6, 0.7)
    assert lec.kl_quadrature(p, q) > 1e-3 and lec.kl_quadrature(q, p) > 1e-3


@pytest.mark.parametrize("pq", MIXTURE_PAIRS)
@pytest.mark.parametrize("seed", range(5))
def test_monte_carlo_kl_agrees_with_quadrature_within_3_standard_errors(pq, seed):
    p, q = (lec.Mixture.of(*v) for v in pq)
    exact = lec.kl_quadrature(p, q)
    mc = lec.kl_monte_carlo(p, q, 2000, seed)
    assert abs(mc.estimate - exact) <= 3 * mc.sem, (mc.estimate, mc.sem, exact)
    assert mc.mean_g == pytest.approx(1.0, abs=5 * mc.g.std() / math.sqrt(2000))  # E_p[q/p] = 1
    np.testing.assert_allclose(mc.f_g, -np.log(mc.g), rtol=1e-9, atol=1e-12)


def test_monte_carlo_standard_error_shrinks_like_one_over_root_n():
    p, q = (lec.Mixture.of(*v) for v in MIXTURE_PAIRS[0])
    small, large = lec.kl_monte_carlo(p, q, 1000, 3), lec.kl_monte_carlo(p, q, 100_000, 3)
    assert large.sem == pytest.approx(small.sem / 10, rel=0.2)
    assert abs(large.estimate - lec.kl_quadrature(p, q)) <= 3 * large.sem


def test_maximum_likelihood_is_the_sample_moments_and_tends_to_argmin_forward_kl():
    p = lec.Mixture.of(0.5, -2.0, 0.6, 0.5, 2.0, 0.6)
    fit, avg = lec.fit_forward(p, 200, 0)
    x = p.sample(200, np.random.default_rng(0))  # the same draws
    assert (fit.mean, fit.std) == pytest.approx((x.mean(), x.std()))
    assert avg == pytest.approx(stats.norm.logpdf(x, x.mean(), x.std()).mean())
    # the average log-likelihood is maximal at the fit (a nudge either way lowers it)
    for dm, ds in [(0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)]:
        assert stats.norm.logpdf(x, fit.mean + dm, fit.std + ds).mean() < avg
    big, _ = lec.fit_forward(p, 100_000, 1)
    assert (big.mean, big.std) == pytest.approx((p.mean, p.std), abs=0.02)
    exact = lec.kl_quadrature(p, lec.Mixture.gaussian(p.mean, p.std))  # argmin of the forward KL
    assert big.forward_kl == pytest.approx(exact, abs=1e-3) and big.forward_kl >= exact - 1e-9


def test_reverse_kl_fit_seeks_one_mode_and_recovers_a_single_gaussian():
    far = lec.Mixture.of(0.5, -5.0, 0.6, 0.5, 5.0, 0.6)  # modes 16 σ apart: on one, KL[q ‖ p] = log 2
    fit = lec.fit_reverse(far)
    assert abs(fit.mean) == pytest.approx(5.0, abs=1e-3) and fit.std == pytest.approx(0.6, abs=1e-3)
    assert fit.reverse_kl == pytest.approx(math.log(2), abs=1e-3)
    assert fit.forward_kl > 10  # mode-seeking: the other mode costs the forward KL dearly
    one = lec.Mixture.gaussian(0.5, 1.2)
    single = lec.fit_reverse(one)
    assert (single.mean, single.std) == pytest.approx((0.5, 1.2), abs=1e-4) and single.reverse_kl < 1e-6
    # a minimum of the reverse KL computed on the grid (not only of the Gauss–Hermite objective it optimises)
    for p in (
        far,
        lec.Mixture.of(0.75, -1.5, 0.7, 0.25, 2.5, 0.5),
        lec.Mixture.of(0.5, -0.8, 0.8, 0.5, 0.8, 0.8),
    ):
        best = lec.fit_reverse(p)
        for dm, ds in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)]:
            nudged = lec.Mixture.gaussian(best.mean + dm, best.std + ds)
            assert lec.kl_quadrature(nudged, p) > best.reverse_kl - 1e-6, (p, dm, ds)


def test_neg_entropy_is_the_gaussians_closed_form():
    assert lec.neg_entropy(lec.Mixture.gaussian(1.0, 0.7)) == pytest.approx(
        -stats.norm(1.0, 0.7).entropy(), abs=1e-9
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        ((0.5, 0.0, 0.0, 0.5, 1.0, 1.0), "scale s₁ must be > 0"),
        ((0.5, 0.0, 1.0, 0.5, 1.0, -1.0), "scale s₂ must be > 0"),
        ((0.0, 0.0, 1.0, 0.0, 1.0, 1.0), "positive sum"),
        ((-1.0, 0.0, 1.0, 0.5, 1.0, 1.0), "positive sum"),
        ((0.5, float("nan"), 1.0, 0.5, 1.0, 1.0), "m₁ must be a finite number"),
        ((0.5, "1", 1.0, 0.5, 1.0, 1.0), "m₁ must be a finite number"),
    ],
)
def test_bad_mixtures_are_one_value_error_naming_the_argument(args, needle):
    with pytest.raises(ValueError, match=needle):
        lec.Mixture.of(*args, name="q")


@pytest.mark.parametrize(
    "n,seed,needle", [(1, 0, "N"), (2.5, 0, "N"), (10**6, 0, "N"), (10, -1, "seed"), (10, 0.5, "seed")]
)
def test_bad_sample_counts_and_seeds_are_value_errors(n, seed, needle):
    p = lec.Mixture.gaussian(0.0, 1.0)
    with pytest.raises(ValueError, match=needle):
        lec.kl_monte_carlo(p, p, n, seed)
