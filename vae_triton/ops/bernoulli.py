"""`bernoulli_nll`: the Bernoulli reconstruction NLL per image from logits, fused (kernels in
`vae_triton/kernels/bernoulli_nll.py`, reference in `vae_triton.reference.bernoulli_nll`)."""

from __future__ import annotations

from torch import Tensor

from .. import reference
from . import _common
from ._common import FusedOp, backend_for, check_images, fused, launching_on


def _forward(logits: Tensor, x: Tensor) -> Tensor:
    with launching_on(logits):
        return _common.bernoulli_kernels.bernoulli_nll_fwd(logits, x)


def _backward(
    grad: Tensor, logits: Tensor, x: Tensor, need_logits: bool, need_x: bool
) -> tuple[Tensor, Tensor]:
    with launching_on(grad):
        return _common.bernoulli_kernels.bernoulli_nll_bwd(grad, logits, x, need_logits, need_x)


def _fake(logits, x):
    return _common.per_image_fake(logits)


def _backward_fake(grad, logits, x, need_logits, need_x):
    return _common.grad_fake(logits, need_logits), _common.grad_fake(x, need_x)


def _save(ctx, inputs, output=None):
    ctx.save_for_backward(*inputs)


def _grads(backward, ctx, grad):
    logits, x = ctx.saved_tensors
    needs = ctx.needs_input_grad[:2]
    return _common.asked_for(backward(grad, logits, x, *needs), needs)


_fused = fused(FusedOp("bernoulli_nll", _forward, _backward, _fake, _backward_fake, _save, _grads))


def bernoulli_nll(logits, x):
    """−Σ_i [x_i log p_i + (1 − x_i) log(1 − p_i)], p = sigmoid(logits), per image, (B,) float32 nats.

    logits, x: (B, ...) float tensors of one shape. x may be any value in [0, 1] (continuous binary
    cross-entropy on grey images); x gets a gradient when it requires one. Raises ValueError naming the
    argument for non-float or mismatched tensors. Gradients: first order on the Triton path (double
    backward raises RuntimeError); the torch path (`VAE_TRITON_BACKEND=torch`, float64) supports it.
    """
    op = "bernoulli_nll"
    check_images(op, "logits", logits, "x", x)
    if backend_for(logits, x) == "torch":
        return reference.bernoulli_nll(logits, x)
    return _fused(logits, x)
