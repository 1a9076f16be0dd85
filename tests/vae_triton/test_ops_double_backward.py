"""Second derivatives through the fused ops: right or refused, never silently wrong.

The Triton kernels compute first-order gradients outside autograd, so differentiating those gradients
(`create_graph=True`, then a backward through them) must raise a RuntimeError that names double backward
and the fix — through the light autograd.Function and through the custom ops alike. The torch reference
path supports double backward: `gradgradcheck` in float64, and float32 second derivatives held to the
torch.distributions / BCE-with-logits oracles in float64.
"""

import pytest
import torch
from op_oracles import (
    bernoulli_oracle,
    gaussian_logits_oracle,
    gaussian_oracle,
    kl_oracle,
    leaves,
    needs_triton,
)

from vae_triton import ops

REFUSAL = r"double backward.*VAE_TRITON_BACKEND=torch"


def _kl_loss(fn):
    """(mu, logvar) -> Σ z² + Σ kl, for `fn`(mu, logvar) -> (z, kl) like reparameterize_kl."""

    def loss(mu, logvar):
        z, kl = fn(mu, logvar)
        return z.double().square().sum() + kl.double().sum()

    return loss


def _mixed_second_derivative(loss, inputs):
    """∂/∂inputs[0] of Σ_i (∂loss/∂input_i)² + Σ inputs[0]³: a gradient penalty mixed with another term
    (the term that hid the missing part of the answer)."""
    first = torch.autograd.grad(loss(*inputs), inputs, create_graph=True)
    mixed = sum(g.double().square().sum() for g in first) + inputs[0].double().pow(3).sum()
    return torch.autograd.grad(mixed, inputs[0])[0]


def test_issue_regression_reparameterize_kl_second_derivative_is_refused_or_right(monkeypatch):
    """The reported case: through the Triton kernels ∂²/∂logvar was missing and the mixed second
    derivative came back wrong without an error. Now: a clear refusal on the Triton path, and the torch
    path's answer equals torch.distributions' in float64."""
    mu, logvar, eps = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    oracle = _kl_loss(lambda m, lv: kl_oracle(m, lv, eps))
    want = _mixed_second_derivative(oracle, leaves(mu.double(), logvar.double()))
    fused = _kl_loss(lambda m, lv: ops.reparameterize_kl(m, lv, eps=eps))
    if ops.backend_for(mu) == "triton":
        for kind in ("function", "custom_op"):
            with ops.eager_wrapper(kind), pytest.raises(RuntimeError, match=REFUSAL):
                _mixed_second_derivative(fused, leaves(mu, logvar))
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    got = _mixed_second_derivative(fused, leaves(mu, logvar))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def _cases():
    """(name, op on leaves, float64 oracle on leaves, leaves): every op, σ fixed and learned."""
    images, x = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    ls = 0.3 * torch.randn(3)
    mu, logvar, eps = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    w = torch.randn(2)
    return [
        ("reparameterize_kl, eps", _kl_loss(lambda m, lv: ops.reparameterize_kl(m, lv, eps=eps)),
         _kl_loss(lambda m, lv: kl_oracle(m, lv, eps)), (mu, logvar)),
        ("reparameterize_kl, seed", _kl_loss(lambda m, lv: ops.reparameterize_kl(m, lv, seed=3)),
         None, (mu, logvar)),
        ("gaussian_nll, σ fixed", lambda m, t: (w * ops.gaussian_nll(m, t, -0.5)).sum(),
         lambda m, t: (w.double() * gaussian_oracle(m, t, -0.5)).sum(), (images.sigmoid(), x)),
        ("gaussian_nll, σ learned", lambda m, t, s: (w * ops.gaussian_nll(m, t, s)).sum(),
         lambda m, t, s: (w.double() * gaussian_oracle(m, t, s)).sum(), (images.sigmoid(), x, ls)),
        ("gaussian_nll_logits", lambda lg, t, s: (w * ops.gaussian_nll_logits(lg, t, s)).sum(),
         lambda lg, t, s: (w.double() * gaussian_logits_oracle(lg, t, s)).sum(), (images, x, ls)),
        ("bernoulli_nll", lambda lg, t: (w * ops.bernoulli_nll(lg, t)).sum(),
         lambda lg, t: (w.double() * bernoulli_oracle(lg, t)).sum(), (images, x)),
    ]  # fmt: skip


CASES = [name for name, *_ in _cases()]


@needs_triton
@pytest.mark.parametrize("kind", ["function", "custom_op"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_triton_path_refuses_double_backward_clearly(kind, case):
    """First-order gradients taken with create_graph=True are the usual ones (bitwise); differentiating
    them — alone, or mixed with another term — raises the refusal, never a silently wrong number."""
    _, loss, _, inputs = _cases()[case]
    with ops.eager_wrapper(kind):
        args = leaves(*inputs)
        expected = torch.autograd.grad(loss(*args), args)
        args = leaves(*inputs)
        first = torch.autograd.grad(loss(*args), args, create_graph=True)
        for a, b in zip(first, expected, strict=True):
            assert torch.equal(a.detach(), b)
        with pytest.raises(RuntimeError, match=REFUSAL):
            torch.autograd.grad(first[0].sum(), args[0])
        with pytest.raises(RuntimeError, match=REFUSAL):
            _mixed_second_derivative(loss, leaves(*inputs))


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_torch_path_second_derivatives_gradgradcheck_and_match_the_oracle(monkeypatch, case):
    """float64 runs the reference: gradgradcheck it. Then float32 on VAE_TRITON_BACKEND=torch: the mixed
    second derivative equals the float64 oracle's (torch.distributions / BCE with logits)."""
    _, loss, oracle, inputs = _cases()[case]
    if oracle is None:  # a seed draws torch's noise on this path: nothing to hold it to but itself
        monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
        assert _mixed_second_derivative(loss, leaves(*inputs)).isfinite().all()
        return
    assert torch.autograd.gradgradcheck(loss, tuple(leaves(*(t.double() for t in inputs))))
    want = _mixed_second_derivative(oracle, leaves(*(t.double() for t in inputs)))
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    got = _mixed_second_derivative(loss, leaves(*inputs))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
