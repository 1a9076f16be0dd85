"""gaussian_nll_logits against torch.distributions.Normal(sigmoid(l), σ).log_prob: fixed, scalar and
per-channel σ, three dtypes, strided / channels_last inputs, saturated logits, gradients for logits, x and
log σ (Triton interpreter on CPU), float64 gradcheck of the reference, and its bad inputs."""

import pytest
import torch
from op_oracles import (
    DTYPES,
    as64,
    check_nll,
    gaussian_logits_oracle,
    gradcheck_nll,
    image_layouts,
    needs_triton,
    sigma_for,
    small_tiles,
)

import vae_triton.kernels.gaussian_nll as gaussian_kernels
from vae_triton import ops, reference


def check(logits, x, log_sigma, dtype=torch.float32):
    check_nll(ops.gaussian_nll_logits, gaussian_logits_oracle, [logits, x, log_sigma], dtype)


@needs_triton
@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_normal_of_sigmoid(sigma, dtype):
    logits = (3 * torch.randn(3, 3, 5, 7)).to(dtype).requires_grad_()
    check(logits, torch.rand(3, 3, 5, 7).to(dtype), sigma_for(sigma, 3), dtype)


@needs_triton
@pytest.mark.parametrize("sigma", ["fixed", "channel"])
def test_gradient_for_x_too(sigma):
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    x = torch.rand(2, 4, 3, 3, requires_grad=True)
    check(logits, x, sigma_for(sigma, 4))
    check(logits.detach(), x.detach().clone().requires_grad_(), sigma_for(sigma, 4))


@needs_triton
@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_strided_and_channels_last_layouts(sigma):
    params = torch.randn(3, 6, 5, 7)
    l_chunk, x_chunk = params.chunk(2, dim=1)
    x_chunk = torch.sigmoid(x_chunk)
    layouts = image_layouts(l_chunk, x_chunk)
    log_sigma = sigma_for(sigma, 3)
    for logits, x in layouts:
        check(logits.detach().requires_grad_(), x, log_sigma)


@needs_triton
@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_saturated_logits(sigma):
    """±40 (and ±1e4) logits: sigmoid is 0 or 1 to fp32 precision; the values stay finite and the
    gradient is the true p(1 − p)-scaled one (tiny, never NaN), as the float64 oracle gives."""
    logits = torch.tensor([40.0, -40.0, 1e4, -1e4, 0.0, 17.0]).repeat(2, 2, 2, 1)
    x = torch.rand(2, 2, 2, 6)
    x[..., :2] = torch.tensor([1.0, 0.0])
    check(logits.requires_grad_(), x.requires_grad_(), sigma_for(sigma, 2))


@needs_triton
@pytest.mark.parametrize("sigma", ["scalar", "channel"])
def test_many_chunks_per_channel(monkeypatch, sigma):
    """Small tiles so each channel spans several column chunks and row blocks are ragged."""
    small_tiles(monkeypatch, gaussian_kernels)
    logits = torch.randn(5, 3, 4, 5, requires_grad=True)
    check(logits, torch.rand(5, 3, 4, 5, requires_grad=True), sigma_for(sigma, 3))
    check(logits, torch.rand(5, 3, 4, 5), 0.2)
    check(logits.contiguous(memory_format=torch.channels_last), torch.rand(5, 3, 4, 5), sigma_for(sigma, 3))


@needs_triton
def test_equals_gaussian_nll_of_the_sigmoid():
    """The fused op and the unfused chain agree to fp32 rounding (same formula, sigmoid moved)."""
    logits, x = 2 * torch.randn(4, 3, 6, 6), torch.rand(4, 3, 6, 6)
    for ls in (0.0, -2.0, torch.tensor([0.1, -0.4, 0.3])):
        torch.testing.assert_close(
            ops.gaussian_nll_logits(logits, x, ls), ops.gaussian_nll(torch.sigmoid(logits), x, ls)
        )


def test_torch_backend_matches_the_oracle(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    logits = 3 * torch.randn(2, 3, 4, 4)
    x = torch.rand(2, 3, 4, 4)
    ls = torch.tensor([0.2, -0.1, 0.5])
    want = gaussian_logits_oracle(logits, x, ls)
    torch.testing.assert_close(ops.gaussian_nll_logits(logits, x, ls).double(), want, rtol=2e-6, atol=1e-4)


@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_float64_gradcheck_of_the_reference(sigma):
    logits = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    x = torch.rand(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    ls = as64(sigma_for(sigma, 3))
    assert gradcheck_nll(reference.gaussian_nll_logits, logits, x, ls)
    assert gradcheck_nll(ops.gaussian_nll_logits, logits, x, ls)
    want = gaussian_logits_oracle(logits, x, ls)
    torch.testing.assert_close(reference.gaussian_nll_logits(logits, x, ls), want, rtol=1e-12, atol=1e-10)


@needs_triton
def test_deterministic_and_empty_batch():
    logits, x, ls = torch.randn(4, 3, 6, 6), torch.rand(4, 3, 6, 6), torch.randn(3)
    assert torch.equal(ops.gaussian_nll_logits(logits, x, ls), ops.gaussian_nll_logits(logits, x, ls))
    empty = torch.zeros(0, 3, 2, 2)
    assert ops.gaussian_nll_logits(empty, empty, torch.zeros(3)).shape == (0,)
    assert ops.gaussian_nll_logits(empty, empty, 0.5).shape == (0,)


@needs_triton
def test_compile_fullgraph_matches_eager():
    """The traced custom ops and the eager autograd.Function path give the same bits."""
    torch._dynamo.reset()

    def loss(logits, x, ls):
        return (ops.gaussian_nll_logits(logits, x, ls) + ops.gaussian_nll_logits(logits, x, 0.3)).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    logits, x, ls = torch.randn(3, 2, 4, 5), torch.rand(3, 2, 4, 5), 0.3 * torch.randn(2)
    results = []
    for fn in (loss, compiled):
        leaves = [t.clone().requires_grad_() for t in (logits, x, ls)]
        value = fn(*leaves)
        results.append((value.detach(), *torch.autograd.grad(value, leaves)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_triton
def test_opcheck():
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    x = torch.rand(2, 3, 4, 5, requires_grad=True)
    vt = torch.ops.vae_triton
    ls = torch.tensor([0.1, -0.3, 0.2], requires_grad=True)
    torch.library.opcheck(vt.gaussian_nll, (logits, x, None, -0.2, True))
    torch.library.opcheck(vt.gaussian_nll, (logits, x, ls, 0.0, True))
    args = (torch.randn(2), logits.detach(), x.detach(), ls.detach(), 0.0, True, True, True, True)
    torch.library.opcheck(vt.gaussian_nll_backward, args)
