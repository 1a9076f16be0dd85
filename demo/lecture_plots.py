"""The figures of the Divergence and Fit tabs (matplotlib object API on an Agg canvas, as demo/plots.py:
no pyplot state shared between the requests the queue runs at once).

- `densities_figure`: p and q, and below them the integrand p·log(p/q) whose area is KL[p ‖ q].
- `jensen_figure`: the note's picture of KL ≥ 0: f(t) = −log t, the sampled (g(x_i), f(g(x_i))) with
  g = q/p, their mean above f(E_p[g]) = f(1) = 0, and a chord.
- `fits_figure`: the mixture p with its maximum-likelihood and its reverse-KL Gaussian.
- `training_figure`: the held-out average ELBO (a lower bound on the average log-likelihood) over
  training, one line per model.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

P_COLOR = "#c2410c"  # orange: p (as the true posterior in demo/plots.py)
Q_COLOR = "#1d4ed8"  # blue: q
FORWARD_COLOR = "#15803d"  # green: the maximum-likelihood fit
MAX_POINTS = 400  # sampled points drawn in Jensen's picture (the numbers use all N)
CURVE_POINTS = 600  # curves are drawn through at most this many of the quadrature grid's points


def _thin(*arrays: np.ndarray) -> list[np.ndarray]:
    """Every k-th point of same-length arrays (k so that at most CURVE_POINTS remain): the quadrature
    grid can hold 40,000 points, which cost render time and add nothing a screen shows."""
    step = max(1, len(arrays[0]) // CURVE_POINTS)
    return [a[::step] for a in arrays]


def _figure(width: float, height: float, rows: int = 1, **kwargs):
    """Fixed margins, no layout engine: a constrained layout would double the render time (the
    Divergence tab renders two figures per event, within 1 s on 2 cores)."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.11, right=0.98, top=0.92, bottom=0.12, hspace=0.45)
    return fig, fig.subplots(rows, 1, **kwargs)


def densities_figure(x: np.ndarray, log_p: np.ndarray, log_q: np.ndarray, kl: float) -> Figure:
    """Top: the densities p and q on the grid x; bottom: p·log(p/q), its area (shaded) KL[p ‖ q] nats."""
    fig, (top, bottom) = _figure(7.2, 4.6, rows=2, sharex=True, height_ratios=(3, 2))
    x, log_p, log_q = _thin(x, log_p, log_q)
    p, q = np.exp(log_p), np.exp(log_q)
    keep = (p > 1e-4 * p.max()) | (q > 1e-4 * q.max())  # the x range where either density has mass
    lo, hi = x[keep].min(), x[keep].max()
    top.plot(x, p, color=P_COLOR, lw=2, label="p(x)")
    top.plot(x, q, color=Q_COLOR, lw=2, ls="--", label="q(x)")
    top.set_ylabel("density")
    top.legend(loc="upper right", fontsize=9)
    integrand = p * (log_p - log_q)
    bottom.fill_between(x, integrand, color=P_COLOR, alpha=0.3, lw=0)
    bottom.plot(x, integrand, color=P_COLOR, lw=1.5)
    bottom.axhline(0, color="0.4", lw=0.8)
    bottom.set_ylabel("p·log(p/q)")
    bottom.set_xlabel("x")
    bottom.set_title(f"area = KL[p ‖ q] = {kl:.3f} nats (negative where q > p)", fontsize=10)
    bottom.set_xlim(lo, hi)
    return fig


def jensen_figure(g: np.ndarray, f_g: np.ndarray, kl: float) -> Figure:
    """Jensen's inequality for f(t) = −log t (convex) and t = g(x) = q(x)/p(x), x ~ p: the sampled points
    lie on f; their mean (E[g], E[f(g)]) = (≈1, ≈KL) lies above f(E[g]) = f(1) = 0, inside the chord
    between the outermost points. With p = q every point is (1, 0)."""
    fig, ax = _figure(7.2, 4.2)
    shown = np.linspace(0, len(g) - 1, min(len(g), MAX_POINTS)).astype(int)
    finite = np.isfinite(g) & np.isfinite(f_g)
    top = float(np.quantile(g[finite], 0.98)) if finite.any() else 1.0
    t_max = max(2.0, 1.15 * top)
    t = np.linspace(t_max / 400, t_max, 400)
    ax.plot(t, -np.log(t), color="0.2", lw=1.8, label="f(t) = −log t")
    ax.scatter(g[shown], f_g[shown], s=14, color=Q_COLOR, alpha=0.45, label="(g(xᵢ), f(g(xᵢ))), xᵢ ~ p")
    if finite.any():  # a chord between the 2nd and the 98th percentile of g: on screen, above f between
        a, b = np.quantile(g[finite], [0.02, 0.98])
        if b > a * (1 + 1e-9):
            ax.plot([a, b], [-np.log(a), -np.log(b)], color=Q_COLOR, lw=1.2, ls=":", label="a chord: above f")
    mean_g, mean_f = float(np.mean(g[finite])), float(np.mean(f_g[finite]))
    ax.plot([mean_g, mean_g], [-np.log(mean_g), mean_f], color=P_COLOR, lw=2)
    ax.plot(
        mean_g,
        mean_f,
        "o",
        color=P_COLOR,
        ms=9,
        label=f"mean: (E[g], E[f(g)]) = ({mean_g:.2f}, {mean_f:.3f})",
    )
    ax.plot(1.0, 0.0, "s", color="0.1", ms=7, label="f(E_p[g]) = f(1) = 0")
    ax.axhline(kl, color=P_COLOR, lw=0.8, ls="--")
    ax.annotate(f"KL[p ‖ q] = {kl:.3f}", (t_max, kl), ha="right", va="bottom", color=P_COLOR, fontsize=9)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.axvline(1, color="0.6", lw=0.6)
    span = max(1.0, kl * 1.6, float(np.quantile(np.abs(f_g[finite]), 0.98)) if finite.any() else 1.0)
    ax.set_xlim(0, t_max)
    ax.set_ylim(-min(span, np.log(t_max) * 1.3 + 0.2), span)
    ax.set_xlabel("t = g(x) = q(x)/p(x)")
    ax.set_ylabel("f(t) = −log t")
    ax.set_title("E_p[f(g)] = KL[p ‖ q]  ≥  f(E_p[g]) = f(1) = 0", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def fits_figure(x: np.ndarray, log_p: np.ndarray, forward: tuple, reverse: tuple, samples=None) -> Figure:
    """The mixture p, the maximum-likelihood Gaussian (forward KL, green) and the reverse-KL one (blue).
    forward / reverse: (log density on x, label)."""
    fig, ax = _figure(7.2, 3.8)
    (x, log_p, log_forward, log_reverse), forward_label, reverse_label = (
        _thin(x, log_p, forward[0], reverse[0]),
        forward[1],
        reverse[1],
    )
    p = np.exp(log_p)
    ax.fill_between(x, p, color=P_COLOR, alpha=0.25, lw=0)
    ax.plot(x, p, color=P_COLOR, lw=2, label="p: the mixture (the 'data')")
    ax.plot(x, np.exp(log_forward), color=FORWARD_COLOR, lw=2, label=forward_label)
    ax.plot(x, np.exp(log_reverse), color=Q_COLOR, lw=2, ls="--", label=reverse_label)
    if samples is not None:
        ax.plot(samples[:MAX_POINTS], np.zeros(min(len(samples), MAX_POINTS)), "|", color="0.3", ms=10)
    keep = p > 1e-4 * p.max()
    pad = 0.15 * (x[keep].max() - x[keep].min())
    ax.set_xlim(x[keep].min() - pad, x[keep].max() + pad)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def training_figure(curves: list[tuple[str, list[int], list[float]]], split: str = "held-out") -> Figure:
    """One line per model: (label, steps, average ELBO in nats per image) over training."""
    fig, ax = _figure(7.2, 3.6)
    for label, steps, elbo in curves:
        ax.plot(steps, elbo, marker=".", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("nats per image")
    ax.set_title(f"(1/N) Σₙ ELBO(xₙ) ≤ (1/N) Σₙ log p_θ(xₙ) on {split} images, climbing", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig
