"""`reparameterize_kl`: z = mu + exp(½·lv)·ε and KL[N(mu, diag exp(lv)) ‖ N(0, I)] per row, fused (kernels
in `vae_triton/kernels/reparameterize_kl.py`, reference in `vae_triton.reference.reparameterize_kl`)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .. import reference
from . import _common
from ._common import FusedOp, backend_for, check_float, fused, launching_on

LOGVAR_MAX = 88.0  # exp(88) ≈ 1.7e38 < float32 max ≈ 3.4e38
_SEED_HIGH = 2**62  # exclusive bound of drawn seeds; any int64 ≥ 0 is accepted from the caller


def _forward(
    mu: Tensor, logvar: Tensor, seed: Tensor | None, eps: Tensor | None, lo: float, hi: float
) -> tuple[Tensor, Tensor]:
    with launching_on(mu):
        return _common.reparameterize_kernels.reparameterize_kl_fwd(mu, logvar, seed, eps, lo, hi)


def _backward(
    grad_z: Tensor,
    grad_kl: Tensor,
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor | None,
    eps: Tensor | None,
    lo: float,
    hi: float,
) -> tuple[Tensor, Tensor]:
    with launching_on(grad_z):
        return _common.reparameterize_kernels.reparameterize_kl_bwd(
            grad_z, grad_kl, mu, logvar, seed, eps, lo, hi
        )


def _fake(mu, logvar, seed, eps, lo, hi):
    return mu.new_empty(mu.shape), _common.per_image_fake(mu)


def _backward_fake(grad_z, grad_kl, mu, logvar, seed, eps, lo, hi):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _save(ctx, inputs, output=None):
    mu, logvar, seed, eps, lo, hi = inputs
    ctx.save_for_backward(mu, logvar, seed, eps)
    ctx.clamp = (lo, hi)


def _grads(backward, ctx, grad_z, grad_kl):
    mu, logvar, seed, eps = ctx.saved_tensors
    lo, hi = ctx.clamp
    grad_mu, grad_logvar = backward(grad_z, grad_kl, mu, logvar, seed, eps, lo, hi)
    grad_eps = None
    if eps is not None and ctx.needs_input_grad[3]:  # rare (ε is noise): plain torch is fine here
        grad_eps = (grad_z.float() * torch.exp(0.5 * logvar.float().clamp(lo, hi))).to(eps.dtype)
    return grad_mu, grad_logvar, None, grad_eps, None, None


_fused = fused(FusedOp("reparameterize_kl", _forward, _backward, _fake, _backward_fake, _save, _grads))


def reparameterize_kl(mu, logvar, *, seed=None, eps=None, logvar_clamp=reference.DEFAULT_LOGVAR_CLAMP):
    """z = mu + exp(½·lv)·ε and KL[N(mu, diag exp(lv)) ‖ N(0, I)] per row, lv = clamp(logvar, *logvar_clamp).

    mu, logvar: (B, D) float tensors (row-strided views such as `params.chunk(2, dim=1)` are fine).
    seed: None (a fresh seed drawn on the device from torch's RNG, so `torch.manual_seed` reproduces it),
        an int in [0, 2⁶³), or a 1-element integer tensor on mu's device — pass a tensor under
        `torch.compile` to avoid a recompilation per value. Same inputs and seed → bitwise-equal outputs.
        The Triton stream (Philox, `tl.randn`) differs from `torch.randn`'s, which the torch path uses.
    eps: inject the noise instead (same shape as mu); then `seed` must be None.
    logvar_clamp: (low, high) with low ≤ high ≤ 88 (exp(high) finite in float32; low may be −inf), or None
        (then logvar must stay ≤ 88); the gradient is `torch.clamp`'s (zero outside the range).
    Returns z (B, D) in mu's dtype and kl (B,) float32 (nats). In float16, z overflows to ±inf where
    |mu + std·ε| > 65504 (std reaches e¹⁰ at the default upper clamp), as the reference does.
    Raises ValueError naming the argument for a non-tensor, non-float, mismatched or out-of-range input.
    Gradients: first order on the Triton path (double backward raises RuntimeError); the torch path
    (`VAE_TRITON_BACKEND=torch`, float64) supports double backward.
    """
    op = "reparameterize_kl"
    check_float(op, "mu", mu)
    if mu.dim() != 2:
        raise ValueError(f"{op}: `mu` must be 2-D (batch, latent_dim), got shape {tuple(mu.shape)}")
    check_float(op, "logvar", logvar, like=mu, like_name="mu")
    if eps is not None:
        check_float(op, "eps", eps, like=mu, like_name="mu")
        if seed is not None:
            raise ValueError(f"{op}: pass `seed` or `eps`, not both (`eps` fixes the noise, `seed` draws it)")
    lo, hi = _check_clamp(op, logvar_clamp)
    seed = _check_seed(op, seed, mu.device)

    tensors = (mu, logvar) if eps is None else (mu, logvar, eps)
    if backend_for(*tensors) == "torch":
        generator = None
        if seed is not None:
            generator = torch.Generator(device=mu.device)
            generator.manual_seed(int(seed.item()) if isinstance(seed, torch.Tensor) else seed)
        return reference.reparameterize_kl(
            mu, logvar, eps=eps, generator=generator, logvar_clamp=logvar_clamp
        )

    if eps is None:
        if seed is None:
            seed = torch.randint(0, _SEED_HIGH, (1,), dtype=torch.int64, device=mu.device)
        elif not isinstance(seed, torch.Tensor):
            seed = torch.full((1,), seed, dtype=torch.int64, device=mu.device)  # a fill: no host sync
    return _fused(mu, logvar, seed, eps, lo, hi)


def _check_clamp(op: str, logvar_clamp) -> tuple[float, float]:
    if logvar_clamp is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(v) for v in logvar_clamp)
    except (TypeError, ValueError):
        raise ValueError(
            f"{op}: `logvar_clamp` must be None or a (low, high) pair, got {logvar_clamp!r}"
        ) from None
    if not lo <= hi:  # also rejects NaN
        raise ValueError(f"{op}: `logvar_clamp` needs low ≤ high, got ({lo}, {hi})")
    if hi > LOGVAR_MAX:
        raise ValueError(
            f"{op}: `logvar_clamp` high must be ≤ {LOGVAR_MAX:g} so exp(logvar) stays finite in float32, "
            f"got {hi}"
        )
    return lo, hi


def _check_seed(op: str, seed, device: torch.device):
    """None, a Python int in [0, 2⁶³), or a 1-element integer tensor on `device` (returned as int64 (1,))."""
    if seed is None:
        return None
    if isinstance(seed, torch.Tensor):
        if (
            seed.numel() != 1
            or seed.dtype.is_floating_point
            or seed.dtype.is_complex
            or seed.dtype == torch.bool
        ):
            raise ValueError(
                f"{op}: a tensor `seed` must hold one integer, got shape {tuple(seed.shape)}, {seed.dtype}"
            )
        if seed.device != device:
            raise ValueError(f"{op}: `seed` is on {seed.device} but `mu` is on {device}; draw it on {device}")
        return seed.reshape(1).to(torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            f"{op}: `seed` must be None, an int or a 1-element int64 tensor, got {type(seed).__name__}"
        )
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"{op}: `seed` must be in [0, 2**63), got {seed}")
    return int(seed)
