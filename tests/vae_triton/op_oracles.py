"""What the fused-op tests share: float64 oracles nobody here wrote (torch.distributions,
F.binary_cross_entropy_with_logits), per-dtype tolerances, gradient comparison, strided layouts and tiny
tiles. Imported by tests/vae_triton/test_ops_*.py (fresh random inputs come from conftest's per-test seed)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vae_triton import ops
from vae_triton.kernels.common import Tiles

TRITON_ACTIVE = ops.backend_for(torch.zeros(1)) == "triton"
needs_triton = pytest.mark.skipif(not TRITON_ACTIVE, reason="Triton kernels not active")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# gradient rtol (= atol) for gradients stored in each dtype; the math inside the kernels is fp32 for all
GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


# ------------------------------------------------------------------------------------ float64 oracles


def kl_oracle(mu, logvar, eps, clamp=(-30.0, 20.0)):
    """z and per-row KL from torch.distributions, float64, with torch.clamp's gradient on logvar."""
    lv = logvar.double().clamp(*clamp)
    q = Normal(mu.double(), torch.exp(0.5 * lv))
    z = q.loc + q.scale * eps.double()
    kl = kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))).sum(dim=1)
    return z, kl


def iw_oracle(mu, logvar, eps, clamp=(-30.0, 20.0)):
    """z_k = mu + σ·ε_k (K, B, D) and log q(z_k|x) − log p(z_k) (K, B) from torch.distributions' Normal
    log-probs, q = N(mu, σ²), p = N(0, I), float64, with torch.clamp's gradient on logvar."""
    lv = logvar.double().clamp(*clamp)
    q = Normal(mu.double(), torch.exp(0.5 * lv))
    z = q.loc + q.scale * eps.double()
    prior = Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))
    return z, (q.log_prob(z) - prior.log_prob(z)).sum(dim=-1)


def gaussian_oracle(mean, x, log_sigma):
    """−log N(x; mean, σ²) summed per image, float64, σ broadcast over dim 1 when per-channel."""
    if isinstance(log_sigma, torch.Tensor):
        ls = log_sigma.double()
        ls = ls.reshape(()) if ls.numel() == 1 else ls.reshape((1, -1) + (1,) * (mean.dim() - 2))
        scale = torch.exp(ls).expand(mean.shape)
    else:
        scale = torch.full(mean.shape, math.exp(log_sigma), dtype=torch.float64, device=mean.device)
    return -Normal(mean.double(), scale).log_prob(x.double()).flatten(1).sum(dim=1)


def gaussian_logits_oracle(logits, x, log_sigma):
    """−log N(x; sigmoid(l), σ²) summed per image, float64 (Normal.log_prob of the sigmoid)."""
    return gaussian_oracle(torch.sigmoid(logits.double()), x, log_sigma)


def bernoulli_oracle(logits, x):
    """Binary cross-entropy with logits summed per image, float64."""
    return F.binary_cross_entropy_with_logits(logits.double(), x.double(), reduction="none").flatten(1).sum(1)


# ---------------------------------------------------------------------------------------- inputs


def sigma_for(kind: str, channels: int):
    """log σ of each kind: "fixed" (a float), "scalar" (a learned 0-d tensor), "channel" (learned (C,))."""
    if kind == "fixed":
        return float(torch.randn(()) * 0.5)
    if kind == "scalar":
        return (torch.randn(()) * 0.5).requires_grad_()
    return (torch.randn(channels) * 0.5).requires_grad_()


def leaves(*tensors):
    """Fresh leaf copies that require grad."""
    return [t.detach().requires_grad_() for t in tensors]


def as64(t):
    """A float64 leaf copy of a tensor, requiring grad as it does; anything else as it is."""
    return t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t


def image_layouts(a, b):
    """(a, b) pairs of one content in the layouts training meets: as given (e.g. channel-chunk views),
    both channels_last, channels_last with a plain target, and a transposed-then-contiguous mean."""
    cl = torch.channels_last
    return [
        (a, b),
        (a.contiguous(memory_format=cl), b.contiguous(memory_format=cl)),
        (a.contiguous(memory_format=cl), b),
        (a.transpose(2, 3).contiguous().transpose(2, 3), b.contiguous()),
    ]


def small_tiles(monkeypatch, kernels_module):
    """Tiny tiles (2 rows × 4 columns, 2 steps): rows span several column chunks, row blocks are ragged."""
    monkeypatch.setattr(kernels_module, "row_tiles", lambda rows, n: Tiles(2, 4, 2, 4, -(-n // 8)))


# ------------------------------------------------------------------------------------- comparisons


def weighted_grads(fn, inputs, weights):
    """fn(*inputs), and the gradients of Σ_k (w_k·out_k).sum() (in float64) for each tensor input that
    requires grad, in order (an empty tuple when none does)."""
    outs = fn(*inputs)
    outs_tuple = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((w.double() * o.double()).sum() for w, o in zip(weights, outs_tuple, strict=True))
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return outs, (torch.autograd.grad(loss, wanted) if wanted else ())


def gradcheck_nll(op, images, x, log_sigma) -> bool:
    """torch.autograd.gradcheck of op(images, x, log_sigma) over its tensor arguments (float64 leaves);
    a float log σ stays fixed."""
    if isinstance(log_sigma, torch.Tensor):
        return torch.autograd.gradcheck(op, (images, x, log_sigma))
    return torch.autograd.gradcheck(lambda a, b: op(a, b, log_sigma), (images, x))


def check_nll(op, oracle, inputs, dtype=torch.float32):
    """op(*inputs) against oracle(*inputs in float64): (B,) float32 values, and the gradients of Σ w·nll
    for every tensor input that requires grad — dtype, shape and layout (`torch.empty_like`) of the input,
    values within GRAD_RTOL[dtype]."""
    w = torch.randn(inputs[0].shape[0])
    nll, got = weighted_grads(op, inputs, [w])
    ref, want = weighted_grads(oracle, [as64(t) for t in inputs], [w])
    assert nll.dtype == torch.float32 and nll.shape == inputs[0].shape[:1]
    torch.testing.assert_close(nll.double(), ref.detach(), rtol=2e-6, atol=1e-4)
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    for g, g64, leaf in zip(got, want, wanted, strict=True):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        assert g.stride() == torch.empty_like(leaf).stride()
        torch.testing.assert_close(g.double(), g64, rtol=GRAD_RTOL[dtype], atol=GRAD_RTOL[dtype])
