"""The exact posterior of a 2-latent model by quadrature, and where the variational gap comes from.

- `posterior_on_grid`: p(z|x), log p(x), the ELBO and KL[q(z|x) ‖ p(z|x)] on an adaptive 2-D grid, so the
  identity log p(x) = ELBO + KL[q(z|x) ‖ p(z|x)] is shown with no estimate in it.
- `gap_decomposition`: the gap KL[q_φ(z|x) ‖ p(z|x)] split into the approximation gap (the cost of the
  diagonal Gaussian family) and the amortisation gap (the cost of one encoder for every image), after
  Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders" (ICML).

Both are re-exported by `vae_triton.metrics`. Any model that follows the model protocol works
(`encode`, `decode`, `recon_nll`, prior N(0, I)); every number is in nats.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from .reference import DEFAULT_LOGVAR_CLAMP, HALF_LOG_2PI

GRID_ROWS_PER_PASS = 1024  # grid points decoded per decoder pass by default
Q_STAR_BOX = 6.0  # q*'s ELBO is integrated on a grid over μ ± 6σ, as q_φ's is
Q_STAR_STILL = 0.05  # q* has converged when a round moves μ by < 0.05 σ and log σ² by < 0.05
Q_STAR_STEP_MU, Q_STAR_STEP_LOGVAR = 1.5, math.log(3.0)  # one round's trust region (σ of its grid)


def _logvar_clamp(model) -> tuple[float, float]:
    """The clamp the model trains with (its config's), so q here is the q it was trained as."""
    return tuple(getattr(getattr(model, "config", None), "logvar_clamp", DEFAULT_LOGVAR_CLAMP))


class PosteriorGrid(NamedTuple):
    """Quadrature of a 2-latent model's posterior, per image (`posterior_on_grid`). All in nats.

    log_px (B,): log p(x) = log ∫ p(x|z) p(z) dz by the rectangle rule on the grid.
    elbo (B,): E_q[log p(x|z)] (quadrature on q's own grid, μ ± 6σ) − KL[q(z|x) ‖ p(z)] (closed form).
    kl_to_posterior (B,): KL[q(z|x) ‖ p(z|x)] = ∫ q (log q − log p(x, z)) dz + log p(x), the integral on
        q's grid.
    log_posterior (B, n, n): log p(z|x) at the grid points, a log density (nats, per unit area of z).
    log_q (B, n, n): log q(z|x) at the same points.
    z (B, n, n, 2): the grid of each image, z[b, i, j] = (z1_i, z2_j); each image gets its own window
        (posteriors of image models are narrow and lie in different places). For B = 1, z[0] is (n, n, 2).
    q_mass (B,): ∫ q over the posterior's window, ≈ 1 when it holds q (what `log_q` shows of q).
    log_px − (elbo + kl_to_posterior) is the quadrature error of ∫ q (a 64² grid over μ ± 6σ: ~1e-8) and
    of KL[q ‖ p(z)]: the identity log p(x) = ELBO + KL[q ‖ p(z|x)] holds to quadrature accuracy.
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    kl_to_posterior: torch.Tensor
    log_posterior: torch.Tensor
    log_q: torch.Tensor
    z: torch.Tensor
    q_mass: torch.Tensor


def _axis_points(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """n cell centres per axis of the window [lo, hi] (2,): (2, n)."""
    frac = (torch.arange(n, dtype=lo.dtype, device=lo.device) + 0.5) / n
    return lo[:, None] + (hi - lo)[:, None] * frac


def _log_normal_2d(
    z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """log N(z; μ, diag σ²) at the points z (..., 2)."""
    return (-0.5 * ((z - mu) / std) ** 2 - 0.5 * logvar - HALF_LOG_2PI).sum(dim=-1)


def _mesh(axes: torch.Tensor) -> torch.Tensor:
    """(2, n) axis points → (n, n, 2) grid with [i, j] = (axes[0, i], axes[1, j])."""
    return torch.stack(torch.meshgrid(axes[0], axes[1], indexing="ij"), dim=-1)


def _log_joint_on(model, x1: torch.Tensor, zs: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x, z) and −log p(x|z) of one image x1 (1, C, H, W) at the points zs (m, 2): fp64 (m,) each."""
    recon = []
    param = next(iter(model.parameters()))
    for start in range(0, zs.shape[0], chunk):
        z = zs[start : start + chunk]
        out = model.decode(z.to(param.dtype))
        recon.append(model.recon_nll(out, x1.expand(z.shape[0], *x1.shape[1:])).double())
    recon_nll = torch.cat(recon)
    log_pz = -0.5 * (zs * zs).sum(dim=1) - 2 * HALF_LOG_2PI
    return log_pz - recon_nll, recon_nll


def _mass_window(model, x1, q_lo, q_hi, *, span, coarse, threshold, max_levels, chunk):
    """Zoom from the prior's box to the box holding the posterior's mass: (lo, hi) (2,) fp64.

    Each level evaluates log p(x, z) on a coarse² grid and keeps the cells within `threshold` nats of the
    best one, plus one cell around them. Mass at the window's edge widens the window; a box that no
    longer shrinks by half ends the zoom. q's box (μ ± 6σ) is always included, for KL[q ‖ p(z|x)].
    """
    lo = torch.minimum(torch.full_like(q_lo, -span), q_lo)
    hi = torch.maximum(torch.full_like(q_hi, span), q_hi)
    for _ in range(max_levels):
        axes = _axis_points(lo, hi, coarse)
        log_joint = _log_joint_on(model, x1, _mesh(axes).reshape(-1, 2), chunk)[0].view(coarse, coarse)
        keep = log_joint > log_joint.max() - threshold
        step = (hi - lo) / coarse
        rows = keep.any(dim=1).nonzero().flatten()
        cols = keep.any(dim=0).nonzero().flatten()
        first = torch.stack([rows.min(), cols.min()])
        last = torch.stack([rows.max(), cols.max()])
        at_edge = (first == 0) | (last == coarse - 1)
        if at_edge.any():  # mass runs off the window: widen it on that side and look again
            width = hi - lo
            lo = torch.where(first == 0, lo - width / 2, lo)
            hi = torch.where(last == coarse - 1, hi + width / 2, hi)
            continue
        new_lo = torch.minimum(axes[torch.arange(2), first] - 1.5 * step, q_lo)
        new_hi = torch.maximum(axes[torch.arange(2), last] + 1.5 * step, q_hi)
        done = bool(((new_hi - new_lo) > 0.5 * (hi - lo)).all())
        lo, hi = new_lo, new_hi
        if done:
            break
    return lo, hi


@torch.no_grad()
def posterior_on_grid(
    model,
    x: torch.Tensor,
    *,
    n: int = 64,
    coarse: int = 24,
    span: float = 5.0,
    threshold: float = 30.0,
    max_levels: int = 8,
    chunk: int = GRID_ROWS_PER_PASS,
) -> PosteriorGrid:
    """The exact posterior p(z|x) ∝ p(x|z) N(z; 0, I) of a model with 2 latents, by quadrature on a grid.

    x: (B, C, H, W) images as the model takes them. Returns a `PosteriorGrid` (shapes and units there).
    The grid adapts to where the mass is: a coarse grid (coarse², over [−span, span]² and q's box
    μ ± 6σ) finds the cells within `threshold` nats of the best, and zooms onto them until the box stops
    shrinking; the final n × n grid covers that box and q's; expectations under q use a second n × n grid
    over q's μ ± 6σ, so a q much narrower than the posterior is still resolved. With threshold = 30 nats
    the mass left outside is below e⁻³⁰ per cell; the rectangle rule converges geometrically for smooth,
    decaying integrands, so a posterior several cells wide is integrated to ~1e-6 nats. A second mode more
    than `threshold` nats below the first, or narrower than a coarse cell, can be missed.
    Cost: about (levels·coarse² + 2n²)·B decoder passes, `chunk` at a time.

    Raises ValueError for an empty batch `x`, a model whose latent space is not 2-D (the grid is 2-D), or
    bad options.
    Formulas: log p(x) = log Σ_ij p(x, z_ij) ΔA; log p(z|x) = log p(x, z) − log p(x);
    KL[q ‖ p(z|x)] = Σ_ij q_ij ΔA_q (log q_ij − log p(x, z_ij)) + log p(x) on q's grid; the ELBO's KL to
    N(0, I) is the closed form.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"`x` must be a batch of at least one image, got {shape}")
    mu, logvar = model.encode(x)
    if mu.dim() != 2 or mu.shape[1] != 2:
        raise ValueError(
            f"posterior_on_grid needs a model with 2 latent dimensions (a 2-D grid), got latent_dim "
            f"{mu.shape[-1]}: train one with --latent-dim 2"
        )
    for name, value, low in (("n", n, 2), ("coarse", coarse, 4), ("max_levels", max_levels, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"`{name}` must be an integer ≥ {low}, got {value!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer (grid points decoded per pass), got {chunk!r}")
    for name, value in (("span", span), ("threshold", threshold)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive number, got {value!r}")
    clamp = _logvar_clamp(model)
    mu, logvar = mu.double(), logvar.double().clamp(*clamp)
    std = (0.5 * logvar).exp()
    results = []
    for b in range(x.shape[0]):
        x1 = x[b : b + 1]
        lo, hi = _mass_window(
            model,
            x1,
            mu[b] - 6 * std[b],
            mu[b] + 6 * std[b],
            span=span,
            coarse=coarse,
            threshold=threshold,
            max_levels=max_levels,
            chunk=chunk,
        )
        grid = _mesh(_axis_points(lo, hi, n))
        log_joint = _log_joint_on(model, x1, grid.reshape(-1, 2), chunk)[0].view(n, n)
        log_area = torch.log((hi - lo).prod() / n**2)
        log_px = torch.logsumexp(log_joint.flatten(), 0) + log_area
        log_q = _log_normal_2d(grid, mu[b], std[b], logvar[b])
        # Expectations under q on q's own grid (μ ± 6σ, n² points): resolved however narrow q is next to
        # the posterior's window, so the ELBO and KL[q ‖ p(z|x)] do not inherit the window's spacing.
        q_lo, q_hi = mu[b] - 6 * std[b], mu[b] + 6 * std[b]
        q_grid = _mesh(_axis_points(q_lo, q_hi, n))
        q_joint, q_recon = (t.view(n, n) for t in _log_joint_on(model, x1, q_grid.reshape(-1, 2), chunk))
        q_log = _log_normal_2d(q_grid, mu[b], std[b], logvar[b])
        q_w = (q_log + torch.log((q_hi - q_lo).prod() / n**2)).exp()
        kl_prior = (0.5 * (logvar[b].exp() + mu[b] * mu[b] - 1.0 - logvar[b])).sum()  # closed form
        results.append(
            (
                log_px,
                -(q_w * q_recon).sum() - kl_prior,
                (q_w * (q_log - (q_joint - log_px))).sum(),
                log_joint - log_px,
                log_q,
                grid,
                (log_q + log_area).exp().sum(),
            )
        )
    return PosteriorGrid(*(torch.stack(column) for column in zip(*results, strict=True)))


# ------------------------------------------------------------------ the gap: approximation + amortisation


class GapDecomposition(NamedTuple):
    """Where KL[q_φ(z|x) ‖ p(z|x)] comes from, per image (`gap_decomposition`). (B,) float64 nats unless
    stated.

    log_px: log p(x) by quadrature; elbo: ELBO(q_φ), the encoder's q; best_elbo: ELBO(q*), q* the best
        diagonal Gaussian for this one image.
    approximation_gap = log p(x) − ELBO(q*) = KL[q* ‖ p(z|x)] ≥ 0: the cost of the Gaussian family.
    amortisation_gap = ELBO(q*) − ELBO(q_φ) ≥ 0: the cost of one encoder for all images.
    kl_to_posterior: KL[q_φ ‖ p(z|x)] on q_φ's grid; approximation_gap + amortisation_gap equals it to
        quadrature accuracy (log p(x) − ELBO(q_φ) exactly).
    best_mu, best_logvar (B, 2): q*'s mean and log σ².
    grid: the `PosteriorGrid` the numbers come from (p(z|x), q_φ, the windows).
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    best_elbo: torch.Tensor
    approximation_gap: torch.Tensor
    amortisation_gap: torch.Tensor
    kl_to_posterior: torch.Tensor
    best_mu: torch.Tensor
    best_logvar: torch.Tensor
    grid: PosteriorGrid


def _elbo_on_grid(points, log_joint, mu, logvar) -> torch.Tensor:
    """ELBO(N(μ, diag e^logvar)) = E_q[log p(x, z)] + H[q], E_q by q's normalised weights at `points`
    (m, 2) where log p(x, z) is `log_joint` (m,). Differentiable in μ and logvar."""
    log_q = _log_normal_2d(points, mu, (0.5 * logvar).exp(), logvar)
    w = torch.softmax(log_q, dim=0)
    return (w * (log_joint - log_q)).sum()


def _maximise_elbo(points, log_joint, start, lo, hi, *, iterations: int = 60) -> torch.Tensor:
    """argmax of `_elbo_on_grid` over θ = (μ₁, μ₂, log σ₁², log σ₂²) in the box [lo, hi] (4,), by damped
    Newton steps projected on the box, from `start` (4,). The box matters: on a fixed grid a q wider than
    the grid would see uniform weights and an entropy growing without bound; inside it q stays resolved.
    (Four parameters: the exact Hessian is cheap, and torch.optim would import the compiler stack.)"""

    def value(theta):
        return _elbo_on_grid(points, log_joint, theta[:2], theta[2:])

    theta = torch.minimum(torch.maximum(start, lo), hi)
    best = value(theta)
    for _ in range(iterations):
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(value(t), t, create_graph=True)
            hess = torch.stack([torch.autograd.grad(grad[i], t, retain_graph=True)[0] for i in range(4)])
        grad, hess = grad.detach(), 0.5 * (hess.detach() + hess.detach().T)
        top = torch.linalg.eigvalsh(hess).max()  # damp until −H + λI is positive definite
        damping = torch.clamp(1.1 * top, min=0.0) + 1e-9 * (1.0 + hess.abs().max())
        step = torch.linalg.solve(damping * torch.eye(4, dtype=hess.dtype) - hess, grad)
        for _ in range(30):  # backtrack until the projected step raises the ELBO
            trial = torch.minimum(torch.maximum(theta + step, lo), hi)
            trial_value = value(trial)
            if torch.isfinite(trial_value) and trial_value >= best:
                break
            step = step / 2
        else:
            break
        gain = trial_value - best
        theta, best = trial, trial_value
        if gain < 1e-12:
            break
    return theta


def _round_box(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One round's trust region around θ: μ ± Q_STAR_STEP_MU σ, log σ² ± Q_STAR_STEP_LOGVAR."""
    std = (0.5 * theta[2:]).exp()
    step = torch.cat([Q_STAR_STEP_MU * std, torch.full_like(std, Q_STAR_STEP_LOGVAR)])
    return theta - step, theta + step


def _window_fit(grid_z: torch.Tensor, log_joint: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """A first q* on the posterior's own window (no decoder pass): μ inside the window, σ between a
    quarter cell and an eighth of the window, so q stays on it."""
    points = grid_z.reshape(-1, 2)
    w_lo, w_hi = points.min(0).values, points.max(0).values
    width, n = w_hi - w_lo, grid_z.shape[0]
    lo = torch.cat([w_lo, 2 * torch.log(width / (4 * n))])
    hi = torch.cat([w_hi, 2 * torch.log(width / 8)])
    inside = torch.minimum(torch.maximum(start, lo), hi)
    return _maximise_elbo(points, log_joint.flatten(), inside, lo, hi)


def _best_gaussian(model, x1, theta, *, n, chunk, rounds) -> tuple[torch.Tensor, ...]:
    """q* from a start θ = (μ, log σ²): each round decodes an n² grid over μ ± 6σ, maximises the ELBO on
    it within `_round_box`, and stops once q* stays where the grid was centred (so the grid resolves q*).
    Returns (ELBO(q*), μ*, log σ²*), the ELBO on a grid centred on q*."""

    def grid_of(theta):
        std = (0.5 * theta[2:]).exp()
        points = _mesh(_axis_points(theta[:2] - Q_STAR_BOX * std, theta[:2] + Q_STAR_BOX * std, n))
        return points.reshape(-1, 2), _log_joint_on(model, x1, points.reshape(-1, 2), chunk)[0]

    for _ in range(rounds):
        points, log_joint = grid_of(theta)
        new = _maximise_elbo(points, log_joint, theta, *_round_box(theta))
        std = (0.5 * theta[2:]).exp()
        still = ((new[:2] - theta[:2]).abs() / std).max() < Q_STAR_STILL
        still = still and (new[2:] - theta[2:]).abs().max() < Q_STAR_STILL
        theta = new
        if still:
            return _elbo_on_grid(points, log_joint, theta[:2], theta[2:]), theta[:2], theta[2:]
    points, log_joint = grid_of(theta)  # not settled in `rounds`: integrate the last q* on its own grid
    return _elbo_on_grid(points, log_joint, theta[:2], theta[2:]), theta[:2], theta[2:]


def _moment_start(z: torch.Tensor, log_posterior: torch.Tensor) -> torch.Tensor | None:
    """The diagonal Gaussian minimising KL[q ‖ N(m, S)] for the posterior's mean m and covariance S on the
    grid: mean m, variances 1 / (S⁻¹)_ii. The optimum when p(z|x) is Gaussian; a start otherwise."""
    p = torch.softmax(log_posterior.flatten(), 0)
    points = z.reshape(-1, 2)
    m = p @ points
    d = points - m
    cov = (p[:, None] * d).T @ d
    precision_diag = torch.linalg.inv(cov).diagonal() if torch.linalg.det(cov) > 0 else None
    if precision_diag is None or not (torch.isfinite(precision_diag).all() and (precision_diag > 0).all()):
        return None
    return torch.cat([m, -precision_diag.log()])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two fits θ = (μ, log σ²) within Q_STAR_STILL of each other (μ in units of σ)."""
    std = (0.5 * a[2:]).exp()
    return bool(
        ((a[:2] - b[:2]).abs() / std).max() < Q_STAR_STILL and (a[2:] - b[2:]).abs().max() < Q_STAR_STILL
    )


@torch.no_grad()
def gap_decomposition(model, x: torch.Tensor, *, rounds: int = 8, **options) -> GapDecomposition:
    """Split the variational gap of a 2-latent model into its approximation and amortisation parts.

    x: (B, C, H, W) images as the model takes them. `options` go to `posterior_on_grid` (n, coarse, span,
    threshold, max_levels, chunk); `rounds`: at most this many re-centred grids per start of q*.
    Returns a `GapDecomposition`: (B,) float64 nats per image, q*'s (B, 2) mean and log σ².

    q* = argmax over (μ, log σ²) of ELBO(N(μ, diag σ²)) for this one image, computed deterministically:
    the ELBO E_q[log p(x, z)] + H[q] by quadrature (normalised q weights on an n² grid over μ ± 6σ, the
    decoder evaluated once per grid), maximised by L-BFGS. Two starts: the encoder's q_φ and the Gaussian
    matched to the grid posterior (mean m, variances 1/(S⁻¹)_ii: exact when p(z|x) = N(m, S)); the better
    wins, and q_φ itself when neither beats it, so both gaps are ≥ 0. A posterior with separated modes
    makes q* the best single-mode fit the starts reach (a local optimum of a non-concave problem).
    approximation gap = log p(x) − ELBO(q*); amortisation gap = ELBO(q*) − ELBO(q_φ); they add up to
    KL[q_φ ‖ p(z|x)] (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders").
    Each round keeps q* in a trust region of its grid (μ ± 1.5σ, σ × 3^±½), so a start far from q* takes
    several rounds. Cost: `posterior_on_grid` plus 2–4 more n² grids of decoder passes per image typically.

    Raises ValueError as `posterior_on_grid` does (an empty batch, latent_dim ≠ 2, bad options), and for
    `rounds` that is not a positive integer.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
        raise ValueError(
            f"`rounds` must be a positive integer (re-centred grids per start of q*), got {rounds!r}"
        )
    grid = posterior_on_grid(model, x, **options)
    n, chunk = options.get("n", 64), options.get("chunk", GRID_ROWS_PER_PASS)
    mu, logvar = model.encode(x)
    mu, logvar = mu.double(), logvar.double().clamp(*_logvar_clamp(model))
    best = []
    for b in range(x.shape[0]):
        x1 = x[b : b + 1]
        candidates = [(grid.elbo[b], mu[b], logvar[b])]  # q_φ: q* is never worse than the encoder
        log_joint = grid.log_posterior[b] + grid.log_px[b]
        starts = [torch.cat([mu[b], logvar[b]]), _moment_start(grid.z[b], grid.log_posterior[b])]
        fits = [_window_fit(grid.z[b], log_joint, s) for s in starts if s is not None]
        if len(fits) == 2 and _same(fits[0], fits[1]):  # both starts reach one optimum: refine it once
            fits = fits[1:]
        for theta in fits:
            candidates.append(_best_gaussian(model, x1, theta, n=n, chunk=chunk, rounds=rounds))
        best.append(max(candidates, key=lambda c: float(c[0])))
    best_elbo, best_mu, best_logvar = (torch.stack(column) for column in zip(*best, strict=True))
    return GapDecomposition(
        log_px=grid.log_px,
        elbo=grid.elbo,
        best_elbo=best_elbo,
        approximation_gap=grid.log_px - best_elbo,
        amortisation_gap=best_elbo - grid.elbo,
        kl_to_posterior=grid.kl_to_posterior,
        best_mu=best_mu,
        best_logvar=best_logvar,
        grid=grid,
    )
