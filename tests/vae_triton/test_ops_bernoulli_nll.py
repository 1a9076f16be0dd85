"""bernoulli_nll against F.binary_cross_entropy_with_logits and torch.distributions.Bernoulli, three
dtypes, extreme logits, strided / channels_last / odd-sized images (Triton interpreter on CPU)."""

import pytest
import torch
from op_oracles import DTYPES, bernoulli_oracle, check_nll, needs_triton, small_tiles
from torch.distributions import Bernoulli

import vae_triton.kernels.bernoulli_nll as bernoulli_kernels
from vae_triton import ops

pytestmark = needs_triton


def check(logits, x, dtype=torch.float32):
    check_nll(ops.bernoulli_nll, bernoulli_oracle, [logits, x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_bce_with_logits(dtype):
    logits = (3 * torch.randn(3, 1, 5, 7)).to(dtype).requires_grad_()
    check(logits, torch.rand(3, 1, 5, 7).to(dtype), dtype)


def test_binary_targets_match_bernoulli_log_prob():
    logits = 4 * torch.randn(4, 2, 3, 3)
    x = (torch.rand(4, 2, 3, 3) < 0.5).float()
    want = -Bernoulli(logits=logits.double()).log_prob(x.double()).flatten(1).sum(1)
    torch.testing.assert_close(ops.bernoulli_nll(logits, x).double(), want, rtol=2e-6, atol=1e-4)


def test_extreme_logits_are_stable():
    logits = torch.tensor([[-100.0, -30.0, 0.0, 30.0, 100.0, 1e4], [-1e4, 88.0, -88.0, 17.0, -17.0, 0.5]])
    logits.requires_grad_()
    x = torch.rand(2, 6, requires_grad=True)
    check(logits, x)
    nll = ops.bernoulli_nll(logits, x)
    assert torch.isfinite(nll).all()


def test_gradient_for_x_alone_and_together():
    logits = torch.randn(3, 2, 4, 4)
    check(logits, torch.rand(3, 2, 4, 4, requires_grad=True))
    check(logits.clone().requires_grad_(), torch.rand(3, 2, 4, 4, requires_grad=True))


def test_strided_and_channels_last_layouts():
    both = torch.randn(3, 2, 5, 7)
    logits, x = both[:, :1], torch.rand(3, 2, 5, 7)[:, 1:]  # channel slices: row-strided views
    layouts = [
        (logits, x),
        (
            logits.contiguous(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        ),
        (torch.randn(3, 3, 4, 5).contiguous(memory_format=torch.channels_last), torch.rand(3, 3, 4, 5)),
        (torch.randn(3, 3, 5, 4).transpose(2, 3), torch.rand(3, 3, 4, 5)),
    ]
    for lg, t in layouts:
        check(lg.detach().requires_grad_(), t)  # gradients laid out like the input


def test_odd_sizes_and_many_chunks(monkeypatch):
    check(torch.randn(5, 13, requires_grad=True), torch.rand(5, 13))
    small_tiles(monkeypatch, bernoulli_kernels)
    check(torch.randn(5, 1, 5, 7, requires_grad=True), torch.rand(5, 1, 5, 7, requires_grad=True))


def test_deterministic_and_float64_gradcheck():
    logits, x = torch.randn(4, 1, 6, 6), torch.rand(4, 1, 6, 6)
    assert torch.equal(ops.bernoulli_nll(logits, x), ops.bernoulli_nll(logits, x))
    # float64 runs the reference (kernels are fp32); fp32 kernel gradients are held to float64 above.
    l64 = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    x64 = torch.rand(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.bernoulli_nll, (l64, x64))


def test_empty_batch():
    assert ops.bernoulli_nll(torch.zeros(0, 1, 2, 2), torch.zeros(0, 1, 2, 2)).shape == (0,)
