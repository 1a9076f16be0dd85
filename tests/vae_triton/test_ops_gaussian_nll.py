"""gaussian_nll against torch.distributions.Normal.log_prob: fixed, scalar and per-channel σ, three dtypes,
strided / channels_last / odd-sized images, gradients for mean, x and log σ (Triton interpreter on CPU)."""

import pytest
import torch
from op_oracles import (
    DTYPES,
    as64,
    check_nll,
    gaussian_oracle,
    gradcheck_nll,
    image_layouts,
    needs_triton,
    sigma_for,
    small_tiles,
)

import vae_triton.kernels.gaussian_nll as gaussian_kernels
from vae_triton import ops

pytestmark = needs_triton


def check(mean, x, log_sigma, dtype=torch.float32):
    check_nll(ops.gaussian_nll, gaussian_oracle, [mean, x, log_sigma], dtype)


@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
@pytest.mark.parametrize("dtype", DTYPES)
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
    layouts = image_layouts(mean_chunk, x_chunk)
    layouts.append((layouts[1][0], x_chunk.clone().requires_grad_()))  # ∂x written to a scratch copy
    for mean, x in layouts:
        check(mean.detach().requires_grad_(), x, log_sigma)  # gradients laid out like the input


def test_flat_rows_and_odd_sizes():
    check(torch.rand(5, 13, requires_grad=True), torch.rand(5, 13), sigma_for("channel", 13))
    check(torch.rand(1, 1, 1, 1, requires_grad=True), torch.rand(1, 1, 1, 1), 0.3)
    check(torch.rand(3, 2, 1, 5, 7, requires_grad=True), torch.rand(3, 2, 1, 5, 7), sigma_for("channel", 2))


@pytest.mark.parametrize("sigma", ["scalar", "channel"])
def test_many_chunks_per_channel(monkeypatch, sigma):
    """Small tiles so each channel spans several column chunks and row blocks are ragged."""
    small_tiles(monkeypatch, gaussian_kernels)
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
    assert gradcheck_nll(ops.gaussian_nll, mean, x, as64(sigma_for(sigma, 3)))


def test_empty_batch():
    assert ops.gaussian_nll(torch.zeros(0, 3, 2, 2), torch.zeros(0, 3, 2, 2), torch.zeros(3)).shape == (0,)
