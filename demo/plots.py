"""The demo's figures, drawn with matplotlib (object API, Agg canvas: no pyplot state shared between the
requests the queue runs at once) and shown by `gr.Plot`.

- `posterior_figure`: contours of the exact posterior p(z|x) and of q(z|x) over the decoded latent map.
- `iw_figure`: the IW bound for growing K, climbing towards log p(x).
- `rate_distortion_figure`: the β ladder on the rate–distortion plane with lines of equal ELBO.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

MASS_LEVELS = (0.5, 0.9, 0.99)  # contours enclose these fractions of the probability mass
POSTERIOR_COLOR = "#c2410c"  # orange: the true posterior
Q_COLOR = "#1d4ed8"  # blue: the encoder's q(z|x)
Q_STAR_COLOR = "#15803d"  # green: q*, the best diagonal Gaussian for this one image
ABOVE_COLOR = "#b91c1c"  # red: an IW draw that landed above log p(x)
# The rate–distortion plane spans at least this many nats per axis: one rung (or rungs close together)
# would otherwise be framed ± a fraction of a nat, and every wiggle would look like a cliff.
MIN_PLANE_SPAN = 20.0


def mass_contour_levels(density: np.ndarray, masses=MASS_LEVELS) -> list[float]:
    """Density values whose upper level sets hold `masses` of the total (highest-density regions),
    increasing, as `contour` wants them. `density` is on a uniform grid, so cell areas cancel."""
    values = np.sort(density.ravel())[::-1]
    cumulative = np.cumsum(values) / values.sum()
    levels = {float(values[min(np.searchsorted(cumulative, m), len(values) - 1)]) for m in masses}
    return sorted(levels)


def _latent_axes(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")


def posterior_figure(
    *,
    latent_map: np.ndarray,
    map_extent: float,
    window_map: np.ndarray,
    z: np.ndarray,
    log_posterior: np.ndarray,
    log_q: np.ndarray,
    mu: np.ndarray,
    log_q_star: np.ndarray | None = None,
) -> Figure:
    """Two panels. Left: the decoded latent map over [−L, L]² with q's mean μ(x) and the window the
    posterior is computed on. Right: that window, its decoded map faded, the true posterior p(z|x) filled,
    q(z|x) dashed and (given `log_q_star`) the best diagonal Gaussian q* dotted, each at the 50/90/99 %
    mass contours.

    latent_map, window_map: (H, W) or (H, W, 3) images in [0, 1], top row = largest z₂.
    z: (n, n, 2) grid with z[i, j] = (z1_i, z2_j); log_posterior, log_q, log_q_star: (n, n) nats.
    """
    # Fixed margins, no layout engine: a constrained layout took half of this figure's render time.
    fig = Figure(figsize=(9.6, 4.6))
    fig.subplots_adjust(left=0.06, right=0.99, top=0.92, bottom=0.11, wspace=0.18)
    left, right = fig.subplots(1, 2)
    cmap = "gray" if latent_map.ndim == 2 else None
    lo, hi = z[0, 0], z[-1, -1]
    step = (hi - lo) / (z.shape[0] - 1)
    box = (lo[0] - step[0] / 2, hi[0] + step[0] / 2, lo[1] - step[1] / 2, hi[1] + step[1] / 2)

    left.imshow(latent_map, cmap=cmap, vmin=0, vmax=1, extent=(-map_extent, map_extent) * 2)
    left.add_patch(
        Rectangle((box[0], box[2]), box[1] - box[0], box[3] - box[2], fill=False, ec=POSTERIOR_COLOR, lw=1.5)
    )
    left.plot(*mu, marker="+", color=Q_COLOR, ms=12, mew=2)
    left.set_xlim(-map_extent, map_extent)
    left.set_ylim(-map_extent, map_extent)
    _latent_axes(left, "latent map: decoded z over the prior's range")

    right.imshow(window_map, cmap=cmap, vmin=0, vmax=1, extent=box, alpha=0.35, aspect="auto")
    # contour wants [row = z2, column = z1]: transpose the (z1, z2)-indexed arrays.
    z1, z2 = z[:, 0, 0], z[0, :, 1]
    post = np.exp(log_posterior - log_posterior.max()).T
    q = np.exp(log_q - log_q.max()).T
    post_levels = mass_contour_levels(post)
    right.contourf(z1, z2, post, levels=post_levels + [1.0 + 1e-9], cmap="Oranges", alpha=0.75)
    right.contour(z1, z2, post, levels=post_levels, colors=POSTERIOR_COLOR, linewidths=1.2)
    right.contour(z1, z2, q, levels=mass_contour_levels(q), colors=Q_COLOR, linestyles="--", linewidths=1.4)
    right.plot(*mu, marker="+", color=Q_COLOR, ms=10, mew=2)
    handles = [
        Line2D([], [], color=POSTERIOR_COLOR, lw=1.5, label="true posterior p(z|x)"),
        Line2D([], [], color=Q_COLOR, lw=1.5, ls="--", label="encoder q(z|x)"),
    ]
    if log_q_star is not None:
        q_star = np.exp(log_q_star - log_q_star.max()).T
        if q_star.sum() > 0 and np.isfinite(q_star).all():
            levels = mass_contour_levels(q_star)
            right.contour(z1, z2, q_star, levels=levels, colors=Q_STAR_COLOR, linestyles=":", linewidths=1.6)
            handles.append(Line2D([], [], color=Q_STAR_COLOR, lw=1.6, ls=":", label="best Gaussian q* for x"))
    right.set_xlim(box[0], box[1])
    right.set_ylim(box[2], box[3])
    _latent_axes(right, "posterior window: 50 / 90 / 99 % mass")
    right.legend(
        handles=handles,
        loc="upper right",
        fontsize=8,
        framealpha=0.85,
    )
    return fig


def iw_figure(ks, means, sems, *, log_px: float, elbo: float, draws=None) -> Figure:
    """The IW bound for each K: the mean over disjoint groups (error bars: ± 2 standard errors) and, given
    `draws` (one list of single K-sample bounds per K), each draw as a dot; draws above log p(x) are red.
    log p(x) and the ELBO are lines."""
    fig = Figure(figsize=(5.6, 3.6))
    fig.subplots_adjust(left=0.14, right=0.98, top=0.91, bottom=0.14)
    ax = fig.subplots()
    ks = np.asarray(ks, dtype=float)
    errors = np.nan_to_num(2 * np.asarray(sems, dtype=float))
    ax.axhline(log_px, color=POSTERIOR_COLOR, lw=1.5, label="log p(x) (quadrature)")
    ax.axhline(elbo, color="0.5", lw=1.0, ls=":", label="ELBO")
    if draws is not None:
        offsets = np.exp(np.linspace(-0.12, 0.12, max(len(d) for d in draws)))  # spread the dots sideways
        below = [
            (k * offsets[i], v)
            for k, d in zip(ks, draws, strict=True)
            for i, v in enumerate(d)
            if v <= log_px
        ]
        above = [
            (k * offsets[i], v) for k, d in zip(ks, draws, strict=True) for i, v in enumerate(d) if v > log_px
        ]
        for points, color, label in (
            (below, "0.55", "single draws"),
            (above, ABOVE_COLOR, "draws above log p(x)"),
        ):
            if points:
                ax.plot(
                    *zip(*points, strict=True), "o", ms=3.5, color=color, alpha=0.8, label=label, zorder=2
                )
    ax.errorbar(
        ks, means, yerr=errors, marker="o", color=Q_COLOR, capsize=3, label="IW bound (mean)", zorder=3
    )
    ax.set_xscale("log")
    ax.set_xticks(ks, [f"{int(k):,}" for k in ks])
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("nats")
    ax.set_title("log (1/K) Σ w_k climbs to log p(x)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    return fig


def rate_distortion_figure(
    points, *, current_beta: float, image: tuple[float, float] | None = None
) -> Figure:
    """points: [(β, rate = KL nats, distortion = recon NLL nats)] held-out means of the rungs.
    Lines D + R = const are lines of equal ELBO (−ELBO = D + R); `image` marks one image's (R, D)."""
    fig = Figure(figsize=(4.8, 3.6), layout="constrained")
    ax = fig.subplots()
    pts = sorted(points)
    rates = np.array([r for _, r, _ in pts])
    dists = np.array([d for _, _, d in pts])
    # The plane is framed on the ladder; an image far off it (an upload unlike the training data) is
    # pinned to the border with its numbers, so one outlier does not squash the curve.
    pad_x = 0.2 * np.ptp(rates) + max(0.0, MIN_PLANE_SPAN - 1.4 * np.ptp(rates)) / 2
    pad_y = 0.2 * np.ptp(dists) + max(0.0, MIN_PLANE_SPAN - 1.4 * np.ptp(dists)) / 2
    x0, x1 = max(0.0, rates.min() - pad_x), rates.max() + pad_x
    x1 = max(x1, x0 + MIN_PLANE_SPAN)  # the rate axis stops at 0: the span goes to the right instead
    y0, y1 = dists.min() - pad_y, dists.max() + pad_y
    if image:  # an image near the ladder widens the frame to hold it, with a margin for its marker
        r, d = image
        span_x, span_y = x1 - x0, y1 - y0
        if x0 - span_x <= r <= x1 + span_x and y0 - span_y <= d <= y1 + span_y:
            x0, x1 = max(0.0, min(x0, r - 0.08 * span_x)), max(x1, r + 0.08 * span_x)
            y0, y1 = min(y0, d - 0.08 * span_y), max(y1, d + 0.08 * span_y)
    totals = np.linspace(x0 + y0, x1 + y1, 7)[1:-1]
    for total in totals:
        ax.plot([x0, x1], [total - x0, total - x1], color="0.75", lw=0.8, ls="--", zorder=0)
        ax.annotate(
            f"−ELBO {total:.0f}",
            (x0 + 0.02 * (x1 - x0), total - x0 - 0.02 * (x1 - x0)),
            fontsize=7,
            color="0.45",
            va="bottom",
            annotation_clip=True,
        )
    ax.plot(rates, dists, color="0.4", lw=1, zorder=1)
    for beta, r, d in pts:
        chosen = beta == current_beta
        ax.plot(r, d, "o", color=Q_COLOR if chosen else "0.55", ms=9 if chosen else 6, zorder=2)
        ax.annotate(f"β={beta:g}", (r, d), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if image:
        r, d = image
        inside = x0 <= r <= x1 and y0 <= d <= y1
        shown = (min(max(r, x0), x1), min(max(d, y0), y1))
        label = "this image" if inside else f"this image (R {r:.1f}, D {d:.0f}, off the plane)"
        ax.plot(
            *shown,
            "*",
            color=POSTERIOR_COLOR,
            ms=13,
            zorder=3,
            clip_on=False,
            label=label,
            fillstyle="full" if inside else "none",
        )
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("rate R = KL[q(z|x) ‖ p(z)] (nats)")
    ax.set_ylabel("distortion D = recon NLL (nats)")
    ax.set_title("β on the rate–distortion plane (held out)", fontsize=10)
    return fig
