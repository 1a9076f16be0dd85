"""gaussian_nll against torch.distributions.Normal.log_prob: fixed, scalar and per-channel σ, three dtypes,
strided / channels_last / odd-sized images, gradients for mean, x and log σ (Triton interpreter on CPU)."""

import math

import pytest
import torch
from torch.distributions import Normal

import vae_triton.kernels.gaussian_nll as gaussian_kernels
from vae_triton import ops
from vae_triton.kernels.common import Tiles

pytestmark = pytest.mark.skipif(
    ops.backend_for(torch.zeros(1)) != "triton", reason="Triton kernels not active"
)

TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}  # gradient rtol (stored in dtype)


def oracle(mean, x, log_sigma):
    """−log N(x; mean, σ²) summed per image, float64, σ broadcast over dim 1 when per-channel."""
    if isinstance(log_sigma, torch.Tensor):
        ls = log_sigma.double()
        ls = ls.reshape(()) if ls.numel() == 1 else ls.reshape((1, -1) + (1,) * (mean.dim() - 2))
        scale = torch.exp(ls).expand(mean.shape)
    else:
        scale = torch.full(mean.shape, math.exp(log_sigma), dtype=torch.float64)
    return -Normal(mean.double(), scale).log_prob(x.double()).flatten(1).sum(dim=1)


def sigma_for(kind: str, channels: int):
    if kind == "fixed":
        return float(torch.randn(()) * 0.5)
    if kind == "scalar":
        return (torch.randn(()) * 0.5).requires_grad_()
    return (torch.randn(channels) * 0.5).requires_grad_()


def check(mean, x, log_sigma, dtype=torch.float32, op=ops.gaussian_nll, oracle=oracle):
    """Values, and gradients of Σ w·nll for every input that requires grad, against the float64 oracle;
    gradients laid out like their inputs. `op`/`oracle` default to gaussian_nll and Normal.log_prob."""
    w = torch.randn(mean.shape[0])
    leaves = [t for t in (mean, x, log_sigma) if isinstance(t, torch.Tensor) and t.requires_grad]
    nll = op(mean, x, log_sigma)
    got = torch.autograd.grad((w * nll).sum(), leaves) if leaves else ()

    def as64(t):
        return t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t

    mean64, x64, ls64 = as64(mean), as64(x), as64(log_sigma)
    ref = oracle(mean64, x64, ls64)
    leaves64 = [t for t in (mean64, x64, ls64) if isinstance(t, torch.Tensor) and t.requires_grad]
    want = torch.autograd.grad((w.double() * ref).sum(), leaves64) if leaves64 else ()
    assert nll.dtype == torch.float32 and nll.shape == mean.shape[:1]
    torch.testing.assert_close(nll.double(), ref.detach(), rtol=2e-6, atol=1e-4)
    for g, g64, leaf in zip(got, want, leaves, strict=True):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        assert g.stride() == torch.empty_like(leaf).stride()
        torch.testing.assert_close(g.double(), g64, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_normal_log_prob(sigma, dtype):
    mean = torch.rand(3, 3, 5, 7).to(dtype).requires_grad_()
    x = torch.rand(3, 3, 5, 7).to(dtype)
    check(mean, x, sigma_for(sigma, 3), dtype)


@pytest.mark.parametrize("sigma", ["fixed", "channel"])
def test_gradient_for_x_too(sigma):
    mean = torch.rand(2, 4, 3, 3, requires_grad=True)
    x = torch.rand(2, 4, 3, 3, requires_grad=True)
    check(mean, x, sigma_for(sigma, 4))
    x_only = x.detach().clone().requires_grad_()
    check(mean.detach(), x_only, sigma_for(sigma, 4))


@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_strided_and_channels_last_layouts(sigma):
    """Channel-chunk views, channels_last, transposed and mixed layouts: same numbers, grads laid out
    like the input (channels_last in → channels_last gradient out)."""
    params = torch.rand(3, 6, 5, 7)
    mean_chunk, x_chunk = params.chunk(2, dim=1)
    log_sigma = sigma_for(sigma, 3)
    cl = torch.channels_last
    layouts = [
        (mean_chunk, x_chunk),
        (mean_chunk.contiguous(memory_format=cl), x_chunk.contiguous(memory_format=cl)),
        (mean_chunk.contiguous(memory_format=cl), x_chunk),
        (mean_chunk.transpose(2, 3).contiguous().transpose(2, 3), x_chunk.contiguous()),
    ]  # fmt: skip
    layouts.append((mean_chunk.contiguous(memory_format=cl), x_chunk.clone().requires_grad_()))  # ∂x scratch
    for mean, x in layouts:
        mean = mean.detach().requires_grad_()
        check(mean, x, log_sigma)
        (grad,) = torch.autograd.grad(ops.gaussian_nll(mean, x, log_sigma).sum(), mean)
        assert grad.stride() == torch.empty_like(mean).stride()


def test_flat_rows_and_odd_sizes():
    check(torch.rand(5, 13, requires_grad=True), torch.rand(5, 13), sigma_for("channel", 13))
    check(torch.rand(1, 1, 1, 1, requires_grad=True), torch.rand(1, 1, 1, 1), 0.3)
    check(torch.rand(3, 2, 1, 5, 7, requires_grad=True), torch.rand(3, 2, 1, 5, 7), sigma_for("channel", 2))


@pytest.mark.parametrize("sigma", ["scalar", "channel"])
def test_many_chunks_per_channel(monkeypatch, sigma):
    """Small tiles so each channel spans several column chunks and row blocks are ragged."""
    monkeypatch.setattr(gaussian_kernels, "row_tiles", lambda rows, n: Tiles(2, 4, 2, 4, -(-n // 8)))
    mean = torch.rand(5, 3, 4, 5, requires_grad=True)
    check(mean, torch.rand(5, 3, 4, 5, requires_grad=True), sigma_for(sigma, 3))
    check(mean.contiguous(memory_format=torch.channels_last), torch.rand(5, 3, 4, 5), sigma_for(sigma, 3))


def test_deterministic():
    mean, x, ls = torch.rand(4, 3, 6, 6), torch.rand(4, 3, 6, 6), torch.randn(3)
    assert torch.equal(ops.gaussian_nll(mean, x, ls), ops.gaussian_nll(mean, x, ls))


@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_float64_gradcheck(sigma):
    """float64 runs the reference (the kernels compute in fp32); gradcheck it, mean, x and σ together.
    The fp32 kernel gradients are held to float64 ones in the tests above."""
    mean = torch.rand(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    x = torch.rand(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    ls = sigma_for(sigma, 3)
    if isinstance(ls, torch.Tensor):
        ls = ls.detach().double().requires_grad_()
        assert torch.autograd.gradcheck(ops.gaussian_nll, (mean, x, ls))
    else:
        assert torch.autograd.gradcheck(lambda m, t: ops.gaussian_nll(m, t, ls), (mean, x))


def test_empty_batch():
    assert ops.gaussian_nll(torch.zeros(0, 3, 2, 2), torch.zeros(0, 3, 2, 2), torch.zeros(3)).shape == (0,)
