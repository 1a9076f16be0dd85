"""reparameterize_iw (the IW bound's K-sample latent step) against torch.distributions, on both paths.

Every test that can runs on the Triton kernels (through TRITON_INTERPRET=1 on CPU, tests/conftest.py) and
on the torch reference (VAE_TRITON_BACKEND=torch). The oracle is torch.distributions' Normal log-probs in
float64 on the same (rounded) inputs: log N(z; mu, σ²) − log N(z; 0, I) summed over the latent.
"""

import pytest
import torch
from op_oracles import (
    DTYPES,
    GRAD_RTOL,
    TRITON_ACTIVE,
    iw_oracle,
    leaves,
    needs_triton,
    small_tiles,
    weighted_grads,
)
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Normal, kl_divergence

import vae_triton.kernels.reparameterize_iw as iw_kernels
from vae_triton import ops, reference
from vae_triton.kernels.common import Tiles

VALUE_RTOL = {**GRAD_RTOL, torch.float32: 2e-6}  # z is stored in the input dtype; fp32 math inside
REFUSAL = r"double backward.*VAE_TRITON_BACKEND=torch"


@pytest.fixture(params=["triton", "torch"])
def backend(request, monkeypatch):
    """Runs the test on the Triton kernels and on the torch reference."""
    if request.param == "triton" and not TRITON_ACTIVE:
        pytest.skip("Triton kernels not active")
    monkeypatch.setenv("VAE_TRITON_BACKEND", request.param)
    return request.param


def drawn_eps(k, batch, dim, seed):
    """The ε a seed draws for (K, B, D): `reparameterize_kl` on K·B stacked rows with mu = 0, logvar = 0
    returns z = ε exactly (on each path, its own stream)."""
    zeros = torch.zeros(k * batch, dim)
    return ops.reparameterize_kl(zeros, zeros, seed=seed)[0].view(k, batch, dim)


def _iw(mu, logvar, k, **kwargs):
    return ops.reparameterize_iw(mu, logvar, k, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 5), (4, 17, 130)])
def test_values_and_gradients_match_torch_distributions(backend, dtype, shape):
    k, batch, dim = shape
    mu = torch.randn(batch, dim).to(dtype)
    logvar = (2 * torch.randn(batch, dim)).to(dtype)
    eps = torch.randn(shape)
    w_z, w_r = torch.randn(shape).to(dtype), torch.randn(k, batch)  # g_z reaches the op in z's dtype
    (z, ratio), (g_mu, g_lv) = weighted_grads(
        lambda m, lv: _iw(m, lv, k, eps=eps), leaves(mu, logvar), [w_z, w_r]
    )
    (z_ref, ratio_ref), (g_mu_ref, g_lv_ref) = weighted_grads(
        lambda m, lv: iw_oracle(m, lv, eps), leaves(mu.double(), logvar.double()), [w_z, w_r]
    )
    rtol, grtol = VALUE_RTOL[dtype], GRAD_RTOL[dtype]
    assert (
        z.dtype == dtype and z.shape == shape and ratio.dtype == torch.float32 and ratio.shape == (k, batch)
    )
    assert g_mu.dtype == dtype and g_lv.dtype == dtype
    torch.testing.assert_close(z.double(), z_ref, rtol=rtol, atol=rtol)
    torch.testing.assert_close(ratio.double(), ratio_ref, rtol=1e-5, atol=2e-4)  # fp32 whatever the dtype
    torch.testing.assert_close(g_mu.double(), g_mu_ref, rtol=grtol, atol=grtol)
    torch.testing.assert_close(g_lv.double(), g_lv_ref, rtol=grtol, atol=grtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drawn_noise_equals_injected_noise_bitwise(backend, dtype):
    """With a seed the op draws the ε that `reparameterize_kl` draws for K stacked copies of the rows; the
    same ε injected gives the same z, log ratio and gradients, bit for bit."""
    k, batch, dim = 3, 5, 7
    mu, logvar = torch.randn(batch, dim).to(dtype), torch.randn(batch, dim).to(dtype)
    seed = int(torch.randint(0, 2**62, ()).item())
    w_z, w_r = torch.randn(k, batch, dim).to(dtype), torch.randn(k, batch)
    drawn = weighted_grads(lambda m, lv: _iw(m, lv, k, seed=seed), leaves(mu, logvar), [w_z, w_r])
    eps = drawn_eps(k, batch, dim, seed)
    given = weighted_grads(lambda m, lv: _iw(m, lv, k, eps=eps), leaves(mu, logvar), [w_z, w_r])
    for a, b in zip((*drawn[0], *drawn[1]), (*given[0], *given[1]), strict=True):
        assert torch.equal(a, b)
    stacked, _ = ops.reparameterize_kl(mu.repeat(k, 1), logvar.repeat(k, 1), seed=seed)
    assert torch.equal(drawn[0][0].view(k * batch, dim), stacked)


def test_strided_inputs_and_gradients_match_contiguous_bitwise(backend):
    k, batch, dim = 3, 6, 9
    params = torch.randn(batch, 2 * dim)
    w_z = torch.randn(batch, k, dim).transpose(0, 1)  # a strided upstream gradient
    w_r = torch.randn(batch, k).t()
    eps = torch.randn(dim, batch, k).permute(2, 1, 0)  # strides (1, k, k·B)

    def run(mu, logvar, e):
        return weighted_grads(lambda m, lv: _iw(m, lv, k, eps=e), leaves(mu, logvar), [w_z, w_r])

    def same(a, b):  # the kernels: bitwise; torch's own sums may vectorise a strided layout differently
        if backend == "triton":
            assert torch.equal(a, b)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)

    mu, logvar = params.chunk(2, dim=1)  # row stride 2·dim
    want = run(mu.contiguous(), logvar.contiguous(), eps.contiguous())
    col_major = mu.contiguous().t().contiguous().t()  # column stride = batch
    for got in (run(mu, logvar, eps), run(col_major, logvar, eps.contiguous())):
        assert got[0][0].is_contiguous()  # z, whatever the layouts in: the decoder views it (K·B, D)
        for a, b in zip((*got[0], *got[1]), (*want[0], *want[1]), strict=True):
            same(a, b)
    seed = torch.tensor([1234])
    z_view, r_view = _iw(mu, logvar, k, seed=seed)
    z_cont, r_cont = _iw(mu.contiguous(), logvar.contiguous(), k, seed=seed)
    assert torch.equal(z_view, z_cont)
    same(r_view, r_cont)


@needs_triton
def test_noise_stream_and_gradients_do_not_depend_on_tiling(monkeypatch):
    """Tiny tiles, rows spanning several column chunks: same z bitwise, same sums up to their order."""
    mu, logvar = torch.randn(5, 37), torch.randn(5, 37)
    w_z, w_r = torch.randn(3, 5, 37), torch.randn(3, 5)
    (z, ratio), grads = weighted_grads(lambda m, lv: _iw(m, lv, 3, seed=99), leaves(mu, logvar), [w_z, w_r])
    small_tiles(monkeypatch, iw_kernels)
    monkeypatch.setattr(iw_kernels, "backward_tiles", lambda rows, n: Tiles(2, 4, 2, 4, -(-n // 8)))
    (z_s, ratio_s), grads_s = weighted_grads(
        lambda m, lv: _iw(m, lv, 3, seed=99), leaves(mu, logvar), [w_z, w_r]
    )
    assert torch.equal(z, z_s)
    torch.testing.assert_close(ratio_s, ratio, rtol=1e-6, atol=2e-5)
    for a, b in zip(grads_s, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_extreme_logvar_is_clamped_with_torch_clamp_gradient(backend):
    mu = torch.randn(4, 6)
    logvar = torch.full((4, 6), 40.0)
    logvar[1] = -40.0
    logvar[2] = torch.linspace(-35, 25, 6)
    logvar[3] = torch.tensor([-30.0, 20.0, 0.0, 19.5, -29.5, 3.0])  # on the bounds: gradient passes
    eps = torch.randn(2, 4, 6)
    w_z, w_r = torch.randn(2, 4, 6), torch.randn(2, 4)
    (z, ratio), (g_mu, g_lv) = weighted_grads(
        lambda m, lv: _iw(m, lv, 2, eps=eps), leaves(mu, logvar), [w_z, w_r]
    )
    (z_ref, ratio_ref), (g_mu_ref, g_lv_ref) = weighted_grads(
        lambda m, lv: iw_oracle(m, lv, eps), leaves(mu.double(), logvar.double()), [w_z, w_r]
    )
    assert torch.isfinite(z).all() and torch.isfinite(ratio).all()
    torch.testing.assert_close(z.double(), z_ref, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(ratio.double(), ratio_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(g_mu.double(), g_mu_ref, rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(g_lv.double(), g_lv_ref, rtol=2e-5, atol=1e-5)
    outside = (logvar < -30) | (logvar > 20)
    assert outside.any() and (g_lv[outside] == 0).all() and (g_lv[~outside] != 0).all()


def test_custom_clamp_and_no_clamp(backend):
    mu, logvar, eps = torch.randn(3, 8), 3 * torch.randn(3, 8), torch.randn(2, 3, 8)
    for clamp in [(-1.0, 2.0), None]:
        z, ratio = _iw(mu, logvar, 2, eps=eps, logvar_clamp=clamp)
        z_ref, ratio_ref = iw_oracle(mu, logvar, eps, clamp or (-float("inf"), float("inf")))
        torch.testing.assert_close(z.double(), z_ref, rtol=2e-6, atol=1e-5)
        torch.testing.assert_close(ratio.double(), ratio_ref, rtol=1e-5, atol=1e-4)


def test_mean_log_ratio_is_the_kl_to_the_prior(backend):
    """E_q[log q(z|x) − log p(z)] = KL[q ‖ p] (torch.distributions' closed form): within 5 standard errors
    over K = 4000 drawn samples."""
    mu, logvar = torch.randn(2, 3), torch.randn(2, 3)
    _, ratio = _iw(mu, logvar, 4000)
    q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    kl = kl_divergence(q, Normal(torch.zeros_like(q.loc), 1.0)).sum(dim=1)
    sem = ratio.double().std(dim=0) / 4000**0.5
    assert ((ratio.double().mean(dim=0) - kl).abs() < 5 * sem).all()


def test_gradient_flows_to_injected_eps(backend):
    mu, logvar, eps = torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 3, 4)
    w_z, w_r = torch.randn(2, 3, 4), torch.randn(2, 3)
    _, (g_eps,) = weighted_grads(lambda e: _iw(mu, logvar, 2, eps=e), leaves(eps), [w_z, w_r])
    _, (g_ref,) = weighted_grads(lambda e: iw_oracle(mu, logvar, e), leaves(eps.double()), [w_z, w_r])
    torch.testing.assert_close(g_eps.double(), g_ref, rtol=2e-5, atol=1e-5)


def test_one_output_alone_gets_its_gradient(backend):
    """Backward with only z, or only the log ratio, used (autograd passes zeros for the other)."""
    mu, logvar, eps = torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 3, 4)
    w_z, w_r = torch.randn(2, 3, 4), torch.randn(2, 3)
    for pick, w in ((0, w_z), (1, w_r)):
        _, got = weighted_grads(
            lambda m, lv, pick=pick: _iw(m, lv, 2, eps=eps)[pick], leaves(mu, logvar), [w]
        )
        _, want = weighted_grads(
            lambda m, lv, pick=pick: iw_oracle(m, lv, eps)[pick], leaves(mu.double(), logvar.double()), [w]
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-5)


def test_float64_gradcheck_and_fp32_gradients_against_it():
    """The kernels compute in fp32, so float64 runs the reference: gradcheck and gradgradcheck it (through
    the op and directly, ε included), then hold the fp32 gradients of the active path to it."""
    mu = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert ops.backend_for(mu) == "torch"
    assert torch.autograd.gradcheck(lambda m, lv: _iw(m, lv, 2, eps=eps.detach()), (mu, logvar))
    assert torch.autograd.gradcheck(reference.reparameterize_iw, (mu, logvar, eps))
    assert torch.autograd.gradgradcheck(reference.reparameterize_iw, (mu, logvar, eps))
    w_z, w_r = torch.randn(2, 3, 5), torch.randn(2, 3)
    _, g64 = weighted_grads(lambda m, lv: _iw(m, lv, 2, eps=eps.detach()), leaves(mu, logvar), [w_z, w_r])
    _, g32 = weighted_grads(
        lambda m, lv: _iw(m, lv, 2, eps=eps.detach().float()),
        leaves(mu.float(), logvar.float()),
        [w_z, w_r],
    )
    for a, b in zip(g32, g64, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-5)


def test_seed_determinism(backend):
    mu, logvar = torch.randn(4, 10), torch.randn(4, 10)
    seed = int(torch.randint(0, 2**62, ()).item())
    z1, r1 = _iw(mu, logvar, 3, seed=seed)
    z2, r2 = _iw(mu, logvar, 3, seed=torch.tensor([seed]))
    z3, _ = _iw(mu, logvar, 3, seed=seed + 1)
    assert torch.equal(z1, z2) and torch.equal(r1, r2)
    assert (z1 != z3).float().mean() > 0.9
    assert (z1[0] != z1[1]).float().mean() > 0.9  # the K samples are distinct draws
    torch.manual_seed(7)  # seed=None draws from torch's RNG, so torch.manual_seed reproduces it
    z4, _ = _iw(mu, logvar, 3)
    torch.manual_seed(7)
    z5, _ = _iw(mu, logvar, 3)
    z6, _ = _iw(mu, logvar, 3)
    assert torch.equal(z4, z5) and not torch.equal(z5, z6)


def _loss(fn, eps):
    def loss(mu, logvar):
        z, ratio = fn(mu, logvar, 2, eps=eps)
        return z.double().square().sum() + ratio.double().sum()

    return loss


def _mixed_second_derivative(loss, inputs):
    first = torch.autograd.grad(loss(*inputs), inputs, create_graph=True)
    mixed = sum(g.double().square().sum() for g in first) + inputs[0].double().pow(3).sum()
    return torch.autograd.grad(mixed, inputs[0])[0]


def test_second_derivatives_refused_on_triton_and_right_on_torch(monkeypatch):
    mu, logvar, eps = torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 3, 4)
    want = _mixed_second_derivative(
        _loss(lambda m, lv, k, eps: iw_oracle(m, lv, eps), eps), leaves(mu.double(), logvar.double())
    )
    if ops.backend_for(mu) == "triton":
        for kind in ("function", "custom_op"):
            with ops.eager_wrapper(kind):
                args = leaves(mu, logvar)
                first = torch.autograd.grad(_loss(_iw, eps)(*args), args, create_graph=True)
                with pytest.raises(RuntimeError, match=REFUSAL):
                    torch.autograd.grad(first[1].sum(), args[1])
                with pytest.raises(RuntimeError, match=REFUSAL):
                    _mixed_second_derivative(_loss(_iw, eps), leaves(mu, logvar))
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    got = _mixed_second_derivative(_loss(_iw, eps), leaves(mu, logvar))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, lv: _iw(m, lv, 0), r"`num_samples`.*int ≥ 1.*0"),
        (lambda m, lv: _iw(m, lv, -2), r"`num_samples`.*int ≥ 1"),
        (lambda m, lv: _iw(m, lv, 2.0), r"`num_samples`.*int ≥ 1.*2\.0"),
        (lambda m, lv: _iw(m, lv, True), r"`num_samples`.*int ≥ 1"),
        (lambda m, lv: _iw(m, lv, torch.tensor(3)), r"`num_samples`.*int ≥ 1"),
        (lambda m, lv: _iw(m, lv, 2**28), r"`num_samples` = 268435456.*int32 index range"),
        (lambda m, lv: _iw(m, lv[:, :3], 2), r"`logvar` has shape \(2, 3\).*`mu` has \(2, 4\)"),
        (lambda m, lv: _iw(m[0], lv[0], 2), r"`mu` must be 2-D"),
        (lambda m, lv: _iw(m, lv, 2, eps=torch.randn(3, 2, 4)), r"`eps` must have shape .*\(2, 2, 4\)"),
        (lambda m, lv: _iw(m, lv, 2, eps=torch.randn(2, 4)), r"`eps` must have shape"),
        (lambda m, lv: _iw(m, lv, 2, eps=torch.randn(2, 2, 4), seed=1), r"`seed` or `eps`, not both"),
        (lambda m, lv: _iw(m, lv, 2, seed=-1), r"`seed` must be in"),
        (lambda m, lv: _iw(m, lv, 2, logvar_clamp=(1.0, 100.0)), r"`logvar_clamp` high"),
        (lambda m, lv: _iw(m.long(), lv, 2), r"`mu` has dtype torch.int64"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(backend, call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(2, 4), torch.randn(2, 4))


def test_empty_batch_and_empty_latent(backend):
    z, ratio = _iw(torch.zeros(0, 4), torch.zeros(0, 4), 3)
    assert z.shape == (3, 0, 4) and ratio.shape == (3, 0)
    z, ratio = _iw(torch.zeros(2, 0), torch.zeros(2, 0), 3)
    assert z.shape == (3, 2, 0) and torch.equal(ratio, torch.zeros(3, 2))


@needs_triton
def test_custom_ops_pass_opcheck_and_equal_the_light_path_bitwise():
    mu, logvar = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    vt = torch.ops.vae_triton
    for op, args in [
        (vt.reparameterize_iw, (mu, logvar, torch.tensor([11]), None, 4, -30.0, 20.0)),
        (vt.reparameterize_iw, (mu, logvar, None, torch.randn(2, 3, 5), 2, -1.0, 1.0)),
        (vt.reparameterize_iw_backward, (torch.randn(2, 3, 5), torch.randn(2, 3), mu.detach(),
                                         logvar.detach(), torch.tensor([5]), None, 2, -30.0, 20.0)),
    ]:  # fmt: skip
        torch.library.opcheck(op, args)
    w_z, w_r = torch.randn(4, 3, 5), torch.randn(4, 3)
    results = []
    for kind in ("function", "custom_op"):
        with ops.eager_wrapper(kind):
            outs, grads = weighted_grads(lambda m, lv: _iw(m, lv, 4, seed=8), leaves(mu, logvar), [w_z, w_r])
        results.append((*outs, *grads))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_triton
def test_compile_fullgraph_matches_eager_and_does_not_recompile_per_seed():
    def step(mu, logvar, seed):
        z, ratio = ops.reparameterize_iw(mu, logvar, 3, seed=seed)
        log_w = -z.float().square().sum(dim=2) - ratio  # a stand-in for log p(x|z) − log_ratio
        return -(torch.logsumexp(log_w, dim=0)).sum()

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    results = []
    for fn in (step, compiled, compiled):
        args = leaves(mu, logvar)
        seed = torch.tensor([21]) if len(results) < 2 else torch.tensor([22])
        loss = fn(*args, seed)
        results.append((loss.detach(), *torch.autograd.grad(loss, args)))
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(results[2][0], results[0][0])
    assert counter.frame_count == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(50, 256, 128), (2, 3, 10_000)])  # training size; several column chunks
def test_cuda_kernels_match_torch_distributions_and_the_kl_stream(dtype, shape):
    """The compiled kernels (`pytest -m gpu`): the oracle at a training size and with a latent longer
    than one column chunk, and the drawn ε equal to reparameterize_kl's on stacked rows."""
    k, batch, dim = shape
    mu = torch.randn(batch, dim, device="cuda").to(dtype)
    logvar = (2 * torch.randn(batch, dim, device="cuda")).to(dtype)
    eps = torch.randn(shape, device="cuda")
    w_z, w_r = torch.randn(shape, device="cuda").to(dtype), torch.randn(k, batch, device="cuda")
    (z, ratio), grads = weighted_grads(lambda m, lv: _iw(m, lv, k, eps=eps), leaves(mu, logvar), [w_z, w_r])
    (z_ref, ratio_ref), grads_ref = weighted_grads(
        lambda m, lv: iw_oracle(m, lv, eps), leaves(mu.double(), logvar.double()), [w_z, w_r]
    )
    tol = GRAD_RTOL[dtype]
    torch.testing.assert_close(z.double(), z_ref, rtol=VALUE_RTOL[dtype], atol=VALUE_RTOL[dtype])
    torch.testing.assert_close(ratio.double(), ratio_ref, rtol=1e-5, atol=2e-3)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * max(1.0, k / 10))
    seed = torch.tensor([2024], device="cuda")
    z_seed, _ = _iw(mu, logvar, k, seed=seed)
    stacked, _ = ops.reparameterize_kl(mu.repeat(k, 1), logvar.repeat(k, 1), seed=seed)
    assert torch.equal(z_seed.view(k * batch, dim), stacked)
