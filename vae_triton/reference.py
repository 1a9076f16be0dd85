"""Pure-torch versions of every fused op: the CPU path and the test oracle.

Conventions: every loss term is a per-image sum in nats, shape (B,), float32, computed in
float32 (float64 stays float64, so `gradcheck` can use these functions directly). Built from torch ops
only, so they are differentiable twice (double backward, gradient penalties), which the Triton kernels'
first-order gradients are not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
DEFAULT_LOGVAR_CLAMP = (-30.0, 20.0)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _row_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


def reparameterize_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    logvar_clamp: tuple[float, float] | None = DEFAULT_LOGVAR_CLAMP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + exp(½·logvar)·eps and KL[N(mu, diag exp(logvar)) ‖ N(0, I)] per row.

    `eps` defaults to fresh N(0, I) noise (from `generator` when given). z has mu's dtype; kl is (B,)
    float32 (float64 for float64 input). logvar is clamped with `torch.clamp` (zero gradient outside).
    """
    cdt = _compute_dtype(mu)
    if eps is None:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=cdt)
    lv = logvar.to(cdt)
    if logvar_clamp is not None:
        lv = lv.clamp(*logvar_clamp)
    m = mu.to(cdt)
    z = m + torch.exp(0.5 * lv) * eps.to(cdt)
    kl = 0.5 * _row_sum(torch.exp(lv) + m * m - 1.0 - lv)
    return z.to(mu.dtype), kl


def reparameterize_iw(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    logvar_clamp: tuple[float, float] | None = DEFAULT_LOGVAR_CLAMP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K draws z_k = mu + exp(½·lv)·eps_k of q(z|x) = N(mu, diag exp(lv)), and log q(z_k|x) − log p(z_k).

    mu, logvar: (B, D); eps: (K, B, D). lv = clamp(logvar, *logvar_clamp) (`torch.clamp`'s gradient).
    Returns z (K, B, D) in mu's dtype, contiguous, and log_ratio (K, B), float32 (float64 for float64 mu),
    in nats:
        log N(z; mu, exp(lv)) − log N(z; 0, I) = Σ_d [−½ε² − ½ lv + ½ z²]
    (the ½ log 2π of the two densities cancel). The log importance weight of z_k is
    log p(x|z_k) − log_ratio_k (Burda et al. 2016).
    """
    cdt = _compute_dtype(mu)
    lv = logvar.to(cdt)
    if logvar_clamp is not None:
        lv = lv.clamp(*logvar_clamp)
    m, e = mu.to(cdt), eps.to(cdt)
    z = m + torch.exp(0.5 * lv) * e
    log_ratio = 0.5 * (z * z - e * e).sum(dim=2) - 0.5 * lv.sum(dim=1)
    return z.to(mu.dtype).contiguous(), log_ratio  # contiguous as the kernels', so z.view(K * B, D) works


def _broadcast_log_sigma(log_sigma, like: torch.Tensor) -> torch.Tensor | float:
    """A float stays a float; a tensor is a scalar or per-channel (C,) over dim 1 of `like`."""
    if not isinstance(log_sigma, torch.Tensor):
        return float(log_sigma)
    ls = log_sigma.to(_compute_dtype(like))
    if ls.numel() == 1:
        return ls.reshape(())
    return ls.reshape((1, -1) + (1,) * (like.dim() - 2))


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, log_sigma=0.0) -> torch.Tensor:
    """Σ_i [(x_i − m_i)² / (2σ²) + log σ + ½ log 2π] per image, in nats, (B,).

    `log_sigma` is a float (fixed σ) or a tensor: a scalar or one value per channel (dim 1).
    """
    cdt = _compute_dtype(mean)
    diff = x.to(cdt) - mean.to(cdt)
    ls = _broadcast_log_sigma(log_sigma, mean)
    if isinstance(ls, float):
        nll = 0.5 * diff * diff * math.exp(-2.0 * ls) + (ls + HALF_LOG_2PI)
    else:
        nll = 0.5 * diff * diff * torch.exp(-2.0 * ls) + (ls + HALF_LOG_2PI)
    return _row_sum(nll)


def gaussian_nll_logits(logits: torch.Tensor, x: torch.Tensor, log_sigma=0.0) -> torch.Tensor:
    """`gaussian_nll(sigmoid(logits), x, log_sigma)`: NLL of x under N(sigmoid(logits), σ²), in nats, (B,).

    The sigmoid runs in the compute dtype (float32, or float64 for float64 logits).
    """
    return gaussian_nll(torch.sigmoid(logits.to(_compute_dtype(logits))), x, log_sigma)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−Σ_i [x_i log p_i + (1 − x_i) log(1 − p_i)], p = sigmoid(logits), per image, in nats, (B,).

    x may be any value in [0, 1] (the continuous "binary cross-entropy" used on grey images).
    """
    cdt = _compute_dtype(logits)
    bce = F.binary_cross_entropy_with_logits(logits.to(cdt), x.to(cdt), reduction="none")
    return _row_sum(bce)
