"""The lecture note's parts 1–3 in numbers, on two 1-D distributions (numpy/scipy only, no Gradio).

- `Mixture`: a mixture of two Gaussians, its log density and its samples.
- `kl_quadrature`: KL[p ‖ q] = ∫ p log(p/q) dx on a fine grid (composite Simpson).
- `kl_monte_carlo`: the same KL from N samples of p, with its standard error, and the sampled points of
  Jensen's picture (g = q/p, f = −log).
- `fit_forward` (maximum likelihood: argmax of the average log-likelihood of N samples, which tends to
  argmin KL[p ‖ q_θ]) and `fit_reverse` (argmin KL[q_θ ‖ p], the direction variational inference takes):
  one Gaussian fitted to a mixture.

Every number is in nats. Formulas: KL of two Gaussians, Bishop, *Pattern Recognition and Machine
Learning* (2006), ex. 1.30; Gauss–Hermite quadrature, Abramowitz & Stegun 25.4.46.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize
from scipy.special import logsumexp

GRID_STEP = 0.2  # grid spacing, in units of the narrowest scale: Simpson's error ~ step⁴, far below 1e-6 nats
GRID_POINTS = (2001, 40_001)  # at least / at most this many Simpson nodes
GRID_SCALES = 14.0  # the grid covers every component's mean ± 14 σ
HERMITE_NODES = 96
MAX_SAMPLES = 100_000
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Mixture:
    """w₁·N(m₁, s₁²) + w₂·N(m₂, s₂²) on the real line; the weights are normalised here.

    Build it with `Mixture.of(...)`, which checks its arguments (ValueError naming the one to fix)."""

    weights: tuple[float, float]
    means: tuple[float, float]
    scales: tuple[float, float]

    @classmethod
    def of(cls, w1, m1, s1, w2, m2, s2, name: str = "p") -> Mixture:
        """Weights ≥ 0 with a positive sum (normalised), finite means, scales > 0; else ValueError."""
        values = {"w₁": w1, "m₁": m1, "s₁": s1, "w₂": w2, "m₂": m2, "s₂": s2}
        for label, v in values.items():
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}'s {label} must be a finite number, got {v!r}")
        for label in ("s₁", "s₂"):
            if values[label] <= 0:
                raise ValueError(
                    f"{name}'s scale {label} must be > 0, got {values[label]:g}: a Gaussian needs a width"
                )
        if w1 < 0 or w2 < 0 or w1 + w2 <= 0:
            raise ValueError(
                f"{name}'s weights w₁ = {w1:g}, w₂ = {w2:g} must be ≥ 0 with a positive sum "
                "(they are normalised)"
            )
        total = float(w1 + w2)
        return cls((w1 / total, w2 / total), (float(m1), float(m2)), (float(s1), float(s2)))

    @classmethod
    def gaussian(cls, mean: float, scale: float) -> Mixture:
        return cls.of(1.0, mean, scale, 0.0, mean, scale)

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        """log density (nats) at x, any shape; float64."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        w, m, s = (np.asarray(v) for v in (self.weights, self.means, self.scales))
        with np.errstate(divide="ignore"):  # a weight of 0 is a component that is not there
            log_w = np.log(w)
        parts = log_w - 0.5 * ((x - m) / s) ** 2 - np.log(s) - 0.5 * LOG_2PI
        return logsumexp(parts, axis=-1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws, float64 (n,)."""
        pick = rng.random(n) < self.weights[1]
        m, s = np.asarray(self.means), np.asarray(self.scales)
        return m[pick.astype(int)] + s[pick.astype(int)] * rng.standard_normal(n)

    @property
    def mean(self) -> float:
        return float(np.dot(self.weights, self.means))

    @property
    def std(self) -> float:
        """Standard deviation: E[x²] − E[x]² of the mixture."""
        second = np.dot(self.weights, np.square(self.scales) + np.square(self.means))
        return float(math.sqrt(max(second - self.mean**2, 0.0)))

    def span(self) -> tuple[float, float]:
        """Where the components live: min and max of mean ± scale over components with weight > 0."""
        live = [(m, s) for w, m, s in zip(self.weights, self.means, self.scales, strict=True) if w > 0]
        return min(m - s for m, s in live), max(m + s for m, s in live)


def gaussian_kl(m1: float, s1: float, m2: float, s2: float) -> float:
    """KL[N(m1, s1²) ‖ N(m2, s2²)] in nats, closed form: log(s2/s1) + (s1² + (m1−m2)²)/(2 s2²) − ½."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def grid_for(*mixtures: Mixture) -> np.ndarray:
    """A uniform grid (odd number of points, for Simpson) covering each component of each mixture over its
    mean ± GRID_SCALES·scale, so both densities' mass and the tails that matter to log(p/q) are on it,
    with a spacing of GRID_STEP narrowest scales (within GRID_POINTS)."""
    parts = [(m, s) for mix in mixtures for m, s in zip(mix.means, mix.scales, strict=True)]
    lo = min(m - GRID_SCALES * s for m, s in parts)
    hi = max(m + GRID_SCALES * s for m, s in parts)
    points = (hi - lo) / (GRID_STEP * min(s for _, s in parts))
    return np.linspace(lo, hi, int(np.clip(points, *GRID_POINTS)) | 1)


def expectation(p: Mixture, values: np.ndarray, x: np.ndarray) -> float:
    """∫ p(x) values(x) dx on the grid x (composite Simpson)."""
    return float(integrate.simpson(np.exp(p.log_pdf(x)) * values, x=x))


def kl_quadrature(p: Mixture, q: Mixture, x: np.ndarray | None = None) -> float:
    """KL[p ‖ q] = ∫ p log(p/q) dx in nats, by Simpson's rule on `x` (default: `grid_for(p, q)`)."""
    x = grid_for(p, q) if x is None else x
    return expectation(p, p.log_pdf(x) - q.log_pdf(x), x)


def neg_entropy(p: Mixture, x: np.ndarray | None = None) -> float:
    """E_p[log p] in nats (the constant that separates maximum likelihood from KL)."""
    x = grid_for(p) if x is None else x
    return expectation(p, p.log_pdf(x), x)


@dataclass(frozen=True)
class MonteCarloKL:
    """KL[p ‖ q] from N samples x_i ~ p: `estimate` = mean of log p(x_i)/q(x_i), `sem` its standard error
    (sample std / √N, nats). Jensen's picture: `g` = q(x_i)/p(x_i) (E_p[g] = 1), `f_g` = −log g."""

    estimate: float
    sem: float
    g: np.ndarray
    f_g: np.ndarray

    @property
    def mean_g(self) -> float:
        return float(self.g.mean())


def _sample_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not float(n).is_integer():
        raise ValueError(f"N (samples) must be a whole number, got {n!r}")
    if not 2 <= n <= MAX_SAMPLES:
        raise ValueError(f"N (samples) must be between 2 and {MAX_SAMPLES:,}, got {n:g}")
    return int(n)


def _seed(seed) -> int:
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, float))
        or not float(seed).is_integer()
        or seed < 0
    ):
        raise ValueError(f"seed must be a whole number ≥ 0, got {seed!r}")
    return int(seed)


def kl_monte_carlo(p: Mixture, q: Mixture, n: int, seed: int = 0) -> MonteCarloKL:
    """The Monte-Carlo estimate of KL[p ‖ q] from n samples of p (seeded: numpy's PCG64)."""
    x = p.sample(_sample_count(n), np.random.default_rng(_seed(seed)))
    log_ratio = p.log_pdf(x) - q.log_pdf(x)  # f(g(x)) = −log(q/p) = log(p/q)
    sem = float(log_ratio.std(ddof=1) / math.sqrt(len(x)))
    return MonteCarloKL(float(log_ratio.mean()), sem, np.exp(-log_ratio), log_ratio)


@dataclass(frozen=True)
class GaussianFit:
    """One Gaussian N(mean, std²) fitted to p, with both KLs (quadrature, nats)."""

    mean: float
    std: float
    forward_kl: float  # KL[p ‖ q_θ]
    reverse_kl: float  # KL[q_θ ‖ p]

    @property
    def q(self) -> Mixture:
        return Mixture.gaussian(self.mean, self.std)


def _with_kls(p: Mixture, mean: float, std: float) -> GaussianFit:
    q = Mixture.gaussian(mean, std)
    return GaussianFit(mean, std, kl_quadrature(p, q), kl_quadrature(q, p))


def fit_forward(p: Mixture, n: int, seed: int = 0) -> tuple[GaussianFit, float]:
    """Maximum likelihood: the Gaussian maximising (1/N) Σ log q_θ(x_n) over N samples of p is their mean
    and their (1/N) standard deviation. As N grows it tends to argmin KL[p ‖ q_θ] (p's own mean and std:
    mode-covering). Returns the fit and its average log-likelihood (nats)."""
    x = p.sample(_sample_count(n), np.random.default_rng(_seed(seed)))
    mean, std = float(x.mean()), float(x.std())
    if std <= 0:
        raise ValueError("the samples of p are all equal: give p a positive scale")
    avg_loglik = float(Mixture.gaussian(mean, std).log_pdf(x).mean())
    return _with_kls(p, mean, std), avg_loglik


@functools.cache
def _hermite() -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.hermite.hermgauss(HERMITE_NODES)


def reverse_kl_gaussian(p: Mixture, mean: float, log_std: float) -> float:
    """KL[N(mean, e^{2 log_std}) ‖ p] = −H[q] − E_q[log p], E_q by Gauss–Hermite quadrature (nats): fast
    and accurate where log p is smooth over q's mass (near the reverse fit's optimum); off it, where q
    spans both modes, it can be off by ~0.1 nats. The KLs the tabs report come from `kl_quadrature`."""
    nodes, weights = _hermite()
    std = math.exp(log_std)
    expected_log_p = float(np.dot(weights, p.log_pdf(mean + math.sqrt(2) * std * nodes)) / math.sqrt(math.pi))
    entropy = 0.5 * (1 + LOG_2PI) + log_std
    return -entropy - expected_log_p


def fit_reverse(p: Mixture) -> GaussianFit:
    """argmin over (μ, log σ) of KL[q_θ ‖ p], the direction variational inference minimises: started
    from each component and from p's moments (L-BFGS), the best of the three. Mode-seeking: with two
    separated modes it sits on one of them."""
    starts = [(m, math.log(s)) for w, m, s in zip(p.weights, p.means, p.scales, strict=True) if w > 0]
    starts.append((p.mean, math.log(max(p.std, 1e-6))))
    best = None
    for start in starts:
        result = optimize.minimize(
            lambda v: reverse_kl_gaussian(p, v[0], v[1]), np.asarray(start), method="L-BFGS-B"
        )
        if best is None or result.fun < best.fun:
            best = result
    return _with_kls(p, float(best.x[0]), float(math.exp(best.x[1])))
