"""reparameterize_kl against torch.distributions, in the three input dtypes, on strided and odd shapes.

On CPU these run the Triton kernels through TRITON_INTERPRET=1 (tests/conftest.py). The oracle is
torch.distributions (Normal + kl_divergence) in float64 on the same (rounded) inputs, never our reference.
"""

import pytest
import scipy.stats
import torch
from op_oracles import DTYPES, GRAD_RTOL, kl_oracle, leaves, needs_triton, small_tiles, weighted_grads

import vae_triton.kernels.reparameterize_kl as reparam_kernels
from vae_triton import ops

pytestmark = needs_triton

VALUE_RTOL = {**GRAD_RTOL, torch.float32: 2e-6}  # z is stored in the input dtype; fp32 math inside


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (17, 130)])
def test_values_and_gradients_match_torch_distributions(dtype, shape):
    mu = torch.randn(shape).to(dtype)
    logvar = (2 * torch.randn(shape)).to(dtype)
    eps = torch.randn(shape)
    w_z, w_kl = torch.randn(shape).to(dtype), torch.randn(shape[0])  # g_z reaches the kernel in z's dtype
    (z, kl), (g_mu, g_lv) = weighted_grads(
        lambda m, lv: ops.reparameterize_kl(m, lv, eps=eps), leaves(mu, logvar), [w_z, w_kl]
    )
    (z_ref, kl_ref), (g_mu_ref, g_lv_ref) = weighted_grads(
        lambda m, lv: kl_oracle(m, lv, eps), leaves(mu.double(), logvar.double()), [w_z, w_kl]
    )
    rtol, grtol = VALUE_RTOL[dtype], GRAD_RTOL[dtype]
    assert z.dtype == dtype and z.shape == shape and kl.dtype == torch.float32 and kl.shape == shape[:1]
    assert g_mu.dtype == dtype and g_lv.dtype == dtype
    torch.testing.assert_close(z.double(), z_ref, rtol=rtol, atol=rtol)
    torch.testing.assert_close(kl.double(), kl_ref, rtol=2e-6, atol=1e-5)  # fp32 whatever the input dtype
    torch.testing.assert_close(g_mu.double(), g_mu_ref, rtol=grtol, atol=grtol)
    torch.testing.assert_close(g_lv.double(), g_lv_ref, rtol=grtol, atol=grtol)


def test_row_strided_and_column_strided_views_match_contiguous_bitwise():
    batch, dim = 6, 9
    params = torch.randn(batch, 2 * dim)
    mu, logvar = params.chunk(2, dim=1)  # row stride 2·dim
    seed = torch.tensor([1234])
    z_view, kl_view = ops.reparameterize_kl(mu, logvar, seed=seed)
    z_cont, kl_cont = ops.reparameterize_kl(mu.contiguous(), logvar.contiguous(), seed=seed)
    mu_t = mu.contiguous().t().contiguous().t()  # column stride = batch
    z_t, kl_t = ops.reparameterize_kl(mu_t, logvar, seed=seed)
    assert torch.equal(z_view, z_cont) and torch.equal(kl_view, kl_cont)
    assert torch.equal(z_t, z_cont) and torch.equal(kl_t, kl_cont)


def test_noise_stream_does_not_depend_on_tiling(monkeypatch):
    """Small tiles, several column chunks per row: same ε (bitwise z), same KL up to summation order."""
    mu, logvar = torch.randn(5, 37), torch.randn(5, 37)
    z, kl = ops.reparameterize_kl(mu, logvar, seed=99)
    small_tiles(monkeypatch, reparam_kernels)
    z_small, kl_small = ops.reparameterize_kl(mu, logvar, seed=99)
    assert torch.equal(z, z_small)
    torch.testing.assert_close(kl, kl_small, rtol=1e-6, atol=1e-5)
    mu.requires_grad_()
    logvar.requires_grad_()
    z_small, kl_small = ops.reparameterize_kl(mu, logvar, seed=99)
    (z_small.sum() + kl_small.sum()).backward()
    torch.testing.assert_close(mu.grad, 1 + mu.detach())
    eps = (z_small - mu) * torch.exp(-0.5 * logvar)  # ε recovered from the forward
    expect = 0.5 * torch.exp(0.5 * logvar) * eps + 0.5 * (torch.exp(logvar) - 1)
    torch.testing.assert_close(logvar.grad, expect.detach(), rtol=1e-5, atol=1e-5)


def test_extreme_logvar_is_clamped_with_torch_clamp_gradient():
    mu = torch.randn(4, 6)
    logvar = torch.full((4, 6), 40.0)
    logvar[1] = -40.0
    logvar[2] = torch.linspace(-35, 25, 6)
    logvar[3] = torch.tensor([-30.0, 20.0, 0.0, 19.5, -29.5, 3.0])  # on the bounds: gradient passes
    eps = torch.randn(4, 6)
    w_z, w_kl = torch.randn(4, 6), torch.randn(4)
    (z, kl), (g_mu, g_lv) = weighted_grads(
        lambda m, lv: ops.reparameterize_kl(m, lv, eps=eps), leaves(mu, logvar), [w_z, w_kl]
    )
    (z_ref, kl_ref), (g_mu_ref, g_lv_ref) = weighted_grads(
        lambda m, lv: kl_oracle(m, lv, eps), leaves(mu.double(), logvar.double()), [w_z, w_kl]
    )
    assert torch.isfinite(z).all() and torch.isfinite(kl).all()
    torch.testing.assert_close(z.double(), z_ref, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(kl.double(), kl_ref, rtol=2e-6, atol=1e-3)
    torch.testing.assert_close(g_mu.double(), g_mu_ref, rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(g_lv.double(), g_lv_ref, rtol=2e-5, atol=1e-5)
    outside = (logvar < -30) | (logvar > 20)
    assert outside.any() and (g_lv[outside] == 0).all() and (g_lv[~outside] != 0).all()


def test_custom_clamp_and_no_clamp():
    mu, logvar, eps = torch.randn(3, 8), 3 * torch.randn(3, 8), torch.randn(3, 8)
    for clamp in [(-1.0, 2.0), None]:
        z, kl = ops.reparameterize_kl(mu, logvar, eps=eps, logvar_clamp=clamp)
        z_ref, kl_ref = kl_oracle(mu, logvar, eps, clamp or (-float("inf"), float("inf")))
        torch.testing.assert_close(z.double(), z_ref, rtol=2e-6, atol=1e-5)
        torch.testing.assert_close(kl.double(), kl_ref, rtol=2e-6, atol=1e-5)


def test_noise_is_standard_normal():
    """z with mu = 0, logvar = 0 is ε itself: mean 0, variance 1, KS test against N(0, 1), uncorrelated."""
    batch, dim = 64, 256  # 16384 draws
    z, kl = ops.reparameterize_kl(torch.zeros(batch, dim), torch.zeros(batch, dim))
    eps = z.double().flatten()
    n = eps.numel()
    assert torch.equal(kl, torch.zeros(batch))
    assert abs(eps.mean().item()) < 5 / n**0.5
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert scipy.stats.kstest(eps.numpy(), "norm").pvalue > 1e-4
    assert abs(torch.corrcoef(torch.stack([eps[:-1], eps[1:]]))[0, 1].item()) < 5 / n**0.5
    rows = z.double()
    assert (
        abs(torch.corrcoef(torch.stack([rows[:-1].flatten(), rows[1:].flatten()]))[0, 1].item()) < 5 / n**0.5
    )


def test_seed_determinism():
    mu, logvar = torch.randn(4, 10), torch.randn(4, 10)
    seed = int(torch.randint(0, 2**62, ()).item())
    z1, kl1 = ops.reparameterize_kl(mu, logvar, seed=seed)
    z2, kl2 = ops.reparameterize_kl(mu, logvar, seed=torch.tensor([seed]))
    z3, _ = ops.reparameterize_kl(mu, logvar, seed=seed + 1)
    assert torch.equal(z1, z2) and torch.equal(kl1, kl2)
    assert not torch.equal(z1, z3)
    assert (z1 != z3).float().mean() > 0.9
    torch.manual_seed(7)  # seed=None draws from torch's RNG, so torch.manual_seed reproduces it
    z4, _ = ops.reparameterize_kl(mu, logvar)
    torch.manual_seed(7)
    z5, _ = ops.reparameterize_kl(mu, logvar)
    z6, _ = ops.reparameterize_kl(mu, logvar)
    assert torch.equal(z4, z5) and not torch.equal(z5, z6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_regenerates_the_forward_noise(dtype):
    """dz/dlogvar = ½·exp(½·lv)·ε with ε recovered from the forward's z: the backward drew the same ε."""
    mu = torch.randn(5, 33).to(dtype).requires_grad_()
    logvar = (torch.rand(5, 33) * 2 - 1).to(dtype).requires_grad_()
    z, _ = ops.reparameterize_kl(mu, logvar, seed=torch.randint(0, 2**62, (1,)))
    z.sum().backward()
    lv = logvar.detach().double()
    eps = (z.detach().double() - mu.detach().double()) * torch.exp(-0.5 * lv)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # z was rounded to bf16 before ε was recovered
    torch.testing.assert_close(logvar.grad.double(), 0.5 * torch.exp(0.5 * lv) * eps, rtol=tol, atol=tol)
    assert torch.equal(mu.grad, torch.ones_like(mu))


def test_gradient_flows_to_injected_eps():
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4)
    eps = torch.randn(3, 4, requires_grad=True)
    z, _ = ops.reparameterize_kl(mu, logvar, eps=eps)
    w = torch.randn(3, 4)
    (z * w).sum().backward()
    torch.testing.assert_close(eps.grad, w * torch.exp(0.5 * logvar))


def test_float64_gradcheck_and_fp32_kernel_gradients_against_it():
    """The kernels compute in fp32, so float64 runs the reference (a documented dispatch rule):
    gradcheck that path in float64, then hold the fp32 kernel gradients to the float64 ones."""
    mu = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(3, 5, dtype=torch.float64)
    assert ops.backend_for(mu) == "torch"
    assert torch.autograd.gradcheck(lambda m, lv: ops.reparameterize_kl(m, lv, eps=eps), (mu, logvar))
    w_z, w_kl = torch.randn(3, 5), torch.randn(3)
    _, g64 = weighted_grads(
        lambda m, lv: ops.reparameterize_kl(m, lv, eps=eps), leaves(mu, logvar), [w_z, w_kl]
    )
    _, g32 = weighted_grads(
        lambda m, lv: ops.reparameterize_kl(m, lv, eps=eps.float()),
        leaves(mu.float(), logvar.float()),
        [w_z, w_kl],
    )
    for a, b in zip(g32, g64, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-6)


def test_empty_batch_and_empty_latent():
    z, kl = ops.reparameterize_kl(torch.zeros(0, 4), torch.zeros(0, 4))
    assert z.shape == (0, 4) and kl.shape == (0,)
    z, kl = ops.reparameterize_kl(torch.zeros(3, 0), torch.zeros(3, 0))
    assert z.shape == (3, 0) and torch.equal(kl, torch.zeros(3))
