"""`reparameterize_iw`: K draws z_k = mu + exp(½·lv)·ε_k of q(z|x) and their log q(z_k|x) − log p(z_k), fused
(kernels in `vae_triton/kernels/reparameterize_iw.py`, reference in `vae_triton.reference.reparameterize_iw`):
the latent step of the importance-weighted bound (Burda et al. 2016)."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .. import reference
from . import _common
from ._common import FusedOp, backend_for, check_float, fused, launching_on
from .reparameterization import _SEED_HIGH, _check_clamp, _check_seed

# K·B·D beyond the int32 range is refused before any work: the backward kernel steps its Philox counters
# by B·D in int32, and z that large (8 GiB in float32) means the samples should be taken in chunks.
INDEX_LIMIT = 2**31 - 1


def _forward(
    mu: Tensor, logvar: Tensor, seed: Tensor | None, eps: Tensor | None, k: int, lo: float, hi: float
) -> tuple[Tensor, Tensor]:
    with launching_on(mu):
        return _common.iw_kernels.reparameterize_iw_fwd(mu, logvar, seed, eps, k, lo, hi)


def _backward(
    grad_z: Tensor,
    grad_ratio: Tensor,
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor | None,
    eps: Tensor | None,
    k: int,
    lo: float,
    hi: float,
) -> tuple[Tensor, Tensor]:
    with launching_on(grad_z):
        return _common.iw_kernels.reparameterize_iw_bwd(grad_z, grad_ratio, mu, logvar, seed, eps, k, lo, hi)


def _fake(mu, logvar, seed, eps, k, lo, hi):
    return mu.new_empty((k, *mu.shape)), mu.new_empty((k, mu.shape[0]), dtype=torch.float32)


def _backward_fake(grad_z, grad_ratio, mu, logvar, seed, eps, k, lo, hi):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _save(ctx, inputs, output=None):
    mu, logvar, seed, eps, k, lo, hi = inputs
    ctx.save_for_backward(mu, logvar, seed, eps)
    ctx.k, ctx.clamp = k, (lo, hi)


def _grads(backward, ctx, grad_z, grad_ratio):
    mu, logvar, seed, eps = ctx.saved_tensors
    lo, hi = ctx.clamp
    grad_mu, grad_logvar = backward(grad_z, grad_ratio, mu, logvar, seed, eps, ctx.k, lo, hi)
    grad_eps = None
    if eps is not None and ctx.needs_input_grad[3]:  # rare (ε is noise): plain torch is fine here
        sigma = torch.exp(0.5 * logvar.float().clamp(lo, hi))
        e, g_r = eps.float(), grad_ratio.float()[..., None]
        grad_eps = (sigma * (grad_z.float() + g_r * (mu.float() + sigma * e)) - g_r * e).to(eps.dtype)
    return grad_mu, grad_logvar, None, grad_eps, None, None, None


_fused = fused(FusedOp("reparameterize_iw", _forward, _backward, _fake, _backward_fake, _save, _grads))


def reparameterize_iw(
    mu, logvar, num_samples, *, seed=None, eps=None, logvar_clamp=reference.DEFAULT_LOGVAR_CLAMP
):
    """K = `num_samples` draws z_k = mu + σ·ε_k of q(z|x) = N(mu, diag σ²), σ = exp(½·clamp(logvar)), and
    log_ratio_k = log q(z_k|x) − log p(z_k) = Σ_d [−½ε² − ½ log σ² + ½ z²] with p(z) = N(0, I) (the
    ½ log 2π terms cancel), so the log importance weight of z_k is log p(x|z_k) − log_ratio_k.

    mu, logvar: (B, D) float tensors (float32, bfloat16, float16 or float64; strided views are fine).
    num_samples: K ≥ 1, a Python int; K·B·D must stay ≤ 2³¹ − 1.
    seed: None (drawn from torch's RNG, so `torch.manual_seed` reproduces it), an int in [0, 2⁶³), or a
        1-element integer tensor on mu's device; same inputs and seed → bitwise-equal outputs. The noise
        is that of `reparameterize_kl` on K stacked copies of the rows with the same seed.
    eps: inject the noise instead, (K, B, D) (then `seed` must be None).
    logvar_clamp: as for `reparameterize_kl` ((low, high), high ≤ 88, or None).
    Returns z (K, B, D) in mu's dtype, contiguous (so `z.view(K * B, D)` feeds a decoder), and log_ratio
    (K, B) float32 (float64 for float64 input), nats.
    Gradients flow through both outputs into mu and logvar (and into an injected eps); first order on the
    Triton path (double backward raises RuntimeError), any order on the torch path. Backward keeps only
    mu, logvar and the seed (or the injected eps) and regenerates ε: nothing K×B×D is saved.
    Bytes the Triton kernels move (s = dtype size; `vae_triton/kernels/reparameterize_iw.py`): forward
    (K + 2)·B·D·s + 4·K·B, backward (K + 4)·B·D·s + 4·K·B, one launch each (a latent ≤ 8192 wide).
    Raises ValueError naming the argument for a bad K, a non-tensor, non-float, mismatched or out-of-range
    input.
    """
    op = "reparameterize_iw"
    check_float(op, "mu", mu)
    if mu.dim() != 2:
        raise ValueError(f"{op}: `mu` must be 2-D (batch, latent_dim), got shape {tuple(mu.shape)}")
    check_float(op, "logvar", logvar, like=mu, like_name="mu")
    k = _check_num_samples(op, num_samples, mu)
    if eps is not None:
        check_float(op, "eps", eps)
        if eps.shape != (k, *mu.shape) or eps.device != mu.device:
            raise ValueError(
                f"{op}: `eps` must have shape (num_samples, *mu.shape) = {(k, *mu.shape)} on {mu.device}, "
                f"got {tuple(eps.shape)} on {eps.device}"
            )
        if seed is not None:
            raise ValueError(f"{op}: pass `seed` or `eps`, not both (`eps` fixes the noise, `seed` draws it)")
    lo, hi = _check_clamp(op, logvar_clamp)
    seed = _check_seed(op, seed, mu.device)

    tensors = (mu, logvar) if eps is None else (mu, logvar, eps)
    if backend_for(*tensors) == "torch":
        if eps is None:
            eps = _torch_noise(mu, k, seed)
        return reference.reparameterize_iw(mu, logvar, eps, logvar_clamp=logvar_clamp)

    if eps is None:
        if seed is None:
            seed = torch.randint(0, _SEED_HIGH, (1,), dtype=torch.int64, device=mu.device)
        elif not isinstance(seed, torch.Tensor):
            seed = torch.full((1,), seed, dtype=torch.int64, device=mu.device)  # a fill: no host sync
    return _fused(mu, logvar, seed, eps, k, lo, hi)


def _torch_noise(mu: Tensor, k: int, seed) -> Tensor:
    """ε (K, B, D) for the torch path: `torch.randn`, from a generator seeded with `seed` when given (the
    stream `reparameterize_kl`'s torch path draws for K stacked copies of the rows)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=mu.device)
        generator.manual_seed(int(seed.item()) if isinstance(seed, torch.Tensor) else seed)
    cdt = torch.float64 if mu.dtype == torch.float64 else torch.float32
    return torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=cdt)


def _check_num_samples(op: str, num_samples, mu: torch.Tensor) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(
            f"{op}: `num_samples` (K, samples of z per row) must be an int ≥ 1, got {num_samples!r}"
        )
    k = int(num_samples)
    if k * mu.numel() > INDEX_LIMIT:
        raise ValueError(
            f"{op}: `num_samples` = {k} gives K·B·D = {k * mu.numel()} latent values, over the int32 index "
            f"range ({INDEX_LIMIT}); lower num_samples or the batch (evaluate in chunks of samples)"
        )
    return k
