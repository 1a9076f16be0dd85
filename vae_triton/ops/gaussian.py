"""`gaussian_nll` and `gaussian_nll_logits`: the Gaussian reconstruction NLL per image, from the mean or
from logits of the mean (the sigmoid fused in). One kernel pair serves both (kernels in
`vae_triton/kernels/gaussian_nll.py`, reference in `vae_triton.reference`)."""

from __future__ import annotations

import math
import numbers

from torch import Tensor

from .. import reference
from . import _common
from ._common import FusedOp, backend_for, check_float, check_images, fused, launching_on

LOG_SIGMA_RANGE = (-40.0, 40.0)  # σ² ≥ e⁻⁸⁰ ≈ 1.8e-35 and 1/σ² ≤ e⁸⁰ ≈ 5.5e34: both normal float32


def _forward(images: Tensor, x: Tensor, log_sigma: Tensor | None, value: float, sigmoid: bool) -> Tensor:
    with launching_on(images):
        return _common.gaussian_kernels.gaussian_nll_fwd(
            images, x, log_sigma, value, *LOG_SIGMA_RANGE, sigmoid
        )


def _backward(
    grad: Tensor,
    images: Tensor,
    x: Tensor,
    log_sigma: Tensor | None,
    value: float,
    need_images: bool,
    need_x: bool,
    need_sigma: bool,
    sigmoid: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    with launching_on(grad):
        return _common.gaussian_kernels.gaussian_nll_bwd(
            grad, images, x, log_sigma, value, *LOG_SIGMA_RANGE, need_images, need_x, need_sigma, sigmoid
        )


def _fake(images, x, log_sigma, value, sigmoid):
    return _common.per_image_fake(images)


def _backward_fake(grad, images, x, log_sigma, value, need_images, need_x, need_sigma, sigmoid):
    need_sigma = need_sigma and log_sigma is not None
    return (
        _common.grad_fake(images, need_images),
        _common.grad_fake(x, need_x),
        _common.grad_fake(log_sigma, True) if need_sigma else images.new_empty(0),
    )


def _save(ctx, inputs, output=None):
    images, x, log_sigma, value, sigmoid = inputs
    ctx.save_for_backward(images, x, log_sigma)
    ctx.args = (value, sigmoid)


def _grads(backward, ctx, grad):
    images, x, log_sigma = ctx.saved_tensors
    value, sigmoid = ctx.args
    needs = ctx.needs_input_grad[:3]
    grads = backward(grad, images, x, log_sigma, value, *needs, sigmoid)
    return (*_common.asked_for(grads, needs), None, None)


_fused = fused(FusedOp("gaussian_nll", _forward, _backward, _fake, _backward_fake, _save, _grads))


def gaussian_nll(mean, x, log_sigma=0.0):
    """Σ_i [(x_i − m_i)²/(2σ²) + log σ + ½ log 2π] per image, (B,) float32 nats (constant included).

    mean, x: (B, ...) float tensors of one shape (NCHW images: contiguous, channels_last or strided).
    log_sigma: a float in [−40, 40] (fixed σ), or a tensor with one element (learned scalar σ) or shape
    (C,) (one σ per channel, dim 1 of `mean`); a tensor gets its gradient and is clamped to [−40, 40]
    (`torch.clamp`'s gradient; no host sync). Formula: the Gaussian log-density (−Normal(m, σ).log_prob(x)).
    Raises ValueError naming the argument: non-float or mismatched tensors, a bad `log_sigma` shape or type,
    a `log_sigma` float outside [−40, 40]. Gradients: first order on the Triton path (double backward
    raises RuntimeError); the torch path (`VAE_TRITON_BACKEND=torch`, float64) supports double backward.
    """
    return _gaussian("gaussian_nll", mean, x, log_sigma, sigmoid=False)


def gaussian_nll_logits(logits, x, log_sigma=0.0):
    """NLL of x under N(sigmoid(logits), σ²) per image: `gaussian_nll(torch.sigmoid(logits), x, log_sigma)`,
    (B,) float32 nats, with the sigmoid fused into the kernels.

    logits: (B, ...) float tensor (a decoder's last pre-activation; any finite value, ±40 saturates fine);
    x: same shape, the target images (normally in [0, 1]). log_sigma: as in `gaussian_nll` (float in
    [−40, 40], or a one-element or per-channel (C,) tensor, learned, clamped to [−40, 40]).
    Forward reads logits and x; backward writes ∂logits (and ∂x when x requires grad): the mean image
    sigmoid(logits) is never stored, 5 B×N passes instead of 10 (byte counts in
    `vae_triton/kernels/gaussian_nll.py`). Raises ValueError as `gaussian_nll` does; double backward as
    there.
    """
    return _gaussian("gaussian_nll_logits", logits, x, log_sigma, sigmoid=True)


def _gaussian(op: str, images, x, log_sigma, sigmoid: bool):
    check_images(op, "logits" if sigmoid else "mean", images, "x", x)
    log_sigma = _check_log_sigma(op, images, log_sigma)
    learned = isinstance(log_sigma, Tensor)
    if backend_for(*((images, x, log_sigma) if learned else (images, x))) == "torch":
        ref = reference.gaussian_nll_logits if sigmoid else reference.gaussian_nll
        return ref(images, x, log_sigma.clamp(*LOG_SIGMA_RANGE) if learned else log_sigma)
    # σ lives in the kernels, fixed (a float) or learned (a tensor, clamped there): one launch each way
    tensor, value = (log_sigma, 0.0) if learned else (None, log_sigma)
    return _fused(images, x, tensor, value, sigmoid)


def _check_log_sigma(op: str, mean: Tensor, log_sigma):
    """A float in LOG_SIGMA_RANGE, or a float tensor holding one value or one per channel (dim 1 of `mean`)
    (the ops clamp a tensor to LOG_SIGMA_RANGE on its device: no host sync)."""
    if isinstance(log_sigma, Tensor):
        check_float(op, "log_sigma", log_sigma)
        if log_sigma.device != mean.device:
            raise ValueError(
                f"{op}: `log_sigma` is on {log_sigma.device} but the images are on {mean.device}"
            )
        channels = mean.shape[1]
        if log_sigma.numel() != 1 and tuple(log_sigma.shape) != (channels,):
            raise ValueError(
                f"{op}: `log_sigma` must be a float, a one-element tensor or shape ({channels},) — one per "
                f"channel of the images {tuple(mean.shape)} — got shape {tuple(log_sigma.shape)}"
            )
        return log_sigma
    if isinstance(log_sigma, bool) or not isinstance(log_sigma, numbers.Real):
        raise ValueError(f"{op}: `log_sigma` must be a float or a tensor, got {type(log_sigma).__name__}")
    lo, hi = LOG_SIGMA_RANGE
    if isinstance(log_sigma, float) and not math.isfinite(log_sigma):
        raise ValueError(f"{op}: `log_sigma` must be finite, got {log_sigma}")
    if not lo <= log_sigma <= hi:  # compares before float(): a huge int would overflow it
        raise ValueError(
            f"{op}: `log_sigma` must be in [{lo:g}, {hi:g}] (σ = exp(log_sigma) with σ² and 1/σ² finite in "
            f"float32), got {log_sigma}"
        )
    return float(log_sigma)
