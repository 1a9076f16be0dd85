"""The fused ops on a CUDA GPU at training sizes (`pytest -m gpu`; skipped without CUDA).

The same checks as the CPU interpreter tests — against torch.distributions / BCE-with-logits in float64 —
plus > 2³¹-element tensors (int64 offsets), torch.compile with inductor and CUDA graphs, opcheck, the light
eager path (autograd.Function) against the custom ops bit for bit, and the light path inside a CUDA graph.
"""

import math

import pytest
import scipy.stats
import torch
from op_oracles import GRAD_RTOL, bernoulli_oracle, gaussian_oracle, kl_oracle

from vae_triton import ops

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"
TOL = GRAD_RTOL


def _grads(out, leaves, w):
    return torch.autograd.grad((w.double() * out.double()).sum(), leaves)


def test_dispatch_picks_triton_on_cuda():
    assert ops.backend_for(torch.zeros(1, device=DEV)) == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reparameterize_kl_training_size(dtype):
    mu = torch.randn(1024, 128, device=DEV).to(dtype).requires_grad_()
    logvar = (2 * torch.randn(1024, 128, device=DEV)).to(dtype).requires_grad_()
    eps = torch.randn(1024, 128, device=DEV)
    w_z, w_kl = torch.randn(1024, 128, device=DEV).to(dtype), torch.randn(1024, device=DEV)
    z, kl = ops.reparameterize_kl(mu, logvar, eps=eps)
    g = torch.autograd.grad((w_z * z).sum() + (w_kl * kl).sum(), [mu, logvar])
    mu64, lv64 = mu.detach().double().requires_grad_(), logvar.detach().double().requires_grad_()
    z64, kl64 = kl_oracle(mu64, lv64, eps.double())
    g64 = torch.autograd.grad((w_z.double() * z64).sum() + (w_kl.double() * kl64).sum(), [mu64, lv64])
    torch.testing.assert_close(z.double(), z64.detach(), rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(kl.double(), kl64.detach(), rtol=2e-6, atol=1e-3)
    for a, b in zip(g, g64, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=TOL[dtype], atol=TOL[dtype])


def test_noise_statistics_determinism_and_regeneration():
    mu = torch.zeros(4096, 128, device=DEV, requires_grad=True)
    logvar = torch.zeros(4096, 128, device=DEV, requires_grad=True)
    seed = torch.randint(0, 2**62, (1,), device=DEV)
    z, _ = ops.reparameterize_kl(mu, logvar, seed=seed)
    eps = z.detach().double().flatten().cpu()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n**0.5 and abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert scipy.stats.kstest(eps.numpy(), "norm").pvalue > 1e-4
    z.sum().backward()  # dz/dlogvar = ½·ε at logvar = 0
    torch.testing.assert_close(logvar.grad, 0.5 * z.detach())
    assert torch.equal(z, ops.reparameterize_kl(mu, logvar, seed=seed)[0])
    assert not torch.equal(z, ops.reparameterize_kl(mu, logvar, seed=seed + 1)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("entry", ["mean", "logits"])
def test_gaussian_nll_training_size(dtype, sigma, channels_last, entry):
    """gaussian_nll(mean, …), and gaussian_nll_logits(logits, …) with saturated logits among them."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if entry == "mean":
        images = torch.rand(256, 3, 64, 64, device=DEV)
    else:
        images = 3 * torch.randn(256, 3, 64, 64, device=DEV)
        images[:, :, 0, :4] = torch.tensor([40.0, -40.0, 1e4, -1e4], device=DEV)
    images = images.to(dtype).contiguous(memory_format=fmt).requires_grad_()
    x = torch.rand(256, 3, 64, 64, device=DEV).to(dtype)
    ls = {
        "fixed": -1.5,
        "scalar": torch.tensor(-1.0, device=DEV),
        "channel": torch.tensor([-1.0, -2.0, 0.5], device=DEV),
    }[sigma]
    leaves = [images] + ([ls.requires_grad_()] if isinstance(ls, torch.Tensor) else [])
    w = torch.randn(256, device=DEV)
    nll = (ops.gaussian_nll if entry == "mean" else ops.gaussian_nll_logits)(images, x, ls)
    g = _grads(nll, leaves, w)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ls64 = leaves64[1] if len(leaves64) > 1 else ls
    mean64 = leaves64[0] if entry == "mean" else torch.sigmoid(leaves64[0])
    ref = gaussian_oracle(mean64, x.double(), ls64)
    g64 = _grads(ref, leaves64, w)
    torch.testing.assert_close(nll.double(), ref.detach(), rtol=1e-5, atol=1e-2)
    assert g[0].stride() == images.stride()
    for a, b in zip(g, g64, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=TOL[dtype], atol=TOL[dtype] * b.abs().max().item())


def _every_op(params, images, x, log_sigma, seed):
    mu, logvar = params.chunk(2, dim=1)
    z, kl = ops.reparameterize_kl(mu, logvar, seed=seed)
    terms = [
        kl, ops.gaussian_nll(torch.sigmoid(images), x, -1.0),
        ops.gaussian_nll(torch.sigmoid(images), x, log_sigma),
        ops.gaussian_nll_logits(images, x, 0.3), ops.gaussian_nll_logits(images, x, log_sigma),
        ops.gaussian_nll_logits(images, x, log_sigma[:1]), ops.bernoulli_nll(images, x),
    ]  # fmt: skip
    return torch.stack(terms).sum(0).mean(), z


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_light_eager_path_equals_custom_ops_bitwise(dtype):
    params = torch.randn(512, 256, device=DEV).to(dtype)
    images = (2 * torch.randn(512, 3, 64, 64, device=DEV)).to(dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    x = torch.rand(512, 3, 64, 64, device=DEV).to(dtype)
    log_sigma, seed = torch.tensor([-1.0, 0.2, -0.5], device=DEV), torch.tensor([7], device=DEV)
    results = []
    for kind in ("function", "custom_op"):
        with ops.eager_wrapper(kind):
            leaves = [t.clone().requires_grad_() for t in (params, images, x, log_sigma)]
            loss, z = _every_op(*leaves, seed)
            results.append((loss, z, *torch.autograd.grad(loss + z.float().square().mean(), leaves)))
    for a, b in zip(*results, strict=True):
        assert a.stride() == b.stride() and torch.equal(a, b)


def test_light_eager_path_in_a_cuda_graph():
    """The whole fused loss, forward and backward, captured in one CUDA graph: replays match eager."""
    params = torch.randn(256, 256, device=DEV, requires_grad=True)
    images = torch.randn(256, 3, 32, 32, device=DEV, requires_grad=True)
    x = torch.rand(256, 3, 32, 32, device=DEV)
    log_sigma = torch.tensor([-1.0, 0.2, -0.5], device=DEV, requires_grad=True)
    seed = torch.tensor([11], device=DEV)
    leaves = (params, images, log_sigma)

    def step():
        loss, z = _every_op(params, images, x, log_sigma, seed)
        return (loss, z, *torch.autograd.grad(loss + z.square().mean(), leaves))

    eager = [t.clone() for t in step()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(eager, captured, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bernoulli_nll_training_size(dtype):
    logits = (4 * torch.randn(256, 1, 64, 64, device=DEV)).to(dtype).requires_grad_()
    x = (torch.rand(256, 1, 64, 64, device=DEV) < 0.3).to(dtype)
    w = torch.randn(256, device=DEV)
    nll = ops.bernoulli_nll(logits, x)
    (g,) = _grads(nll, [logits], w)
    l64 = logits.detach().double().requires_grad_()
    ref = bernoulli_oracle(l64, x)
    (g64,) = _grads(ref, [l64], w)
    torch.testing.assert_close(nll.double(), ref.detach(), rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(g.double(), g64, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.equal(nll, ops.bernoulli_nll(logits, x))


def _elbo(params, x, log_sigma, seed):
    mu, logvar = params.chunk(2, dim=1)
    z, kl = ops.reparameterize_kl(mu, logvar, seed=seed)
    logits = z[:, :3, None, None] + x
    mean = torch.sigmoid(logits)
    fused = ops.gaussian_nll_logits(logits, x, log_sigma) + ops.gaussian_nll_logits(logits, x, -0.5)
    return (ops.gaussian_nll(mean, x, log_sigma) + fused + ops.bernoulli_nll(x - mean, x) + kl).mean()


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_inductor_and_cuda_graphs_match_eager(mode):
    torch._dynamo.reset()
    compiled = torch.compile(_elbo, fullgraph=True, mode=mode)
    params = torch.randn(256, 256, device=DEV)
    x = torch.rand(256, 3, 32, 32, device=DEV)
    log_sigma = torch.zeros(3, device=DEV)
    results = []
    for fn in (_elbo, compiled, compiled, compiled):  # compiled thrice: CUDA-graph warm-up, record, replay
        p, ls = params.clone().requires_grad_(), log_sigma.clone().requires_grad_()
        loss = fn(p, x, ls, torch.tensor([42], device=DEV))
        loss.backward()
        results.append((loss.detach().clone(), p.grad.clone(), ls.grad.clone()))  # graphs reuse memory
    for got in results[1:]:
        for a, b in zip(results[0], got, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_opcheck_on_cuda():
    mu = torch.randn(64, 128, device=DEV, requires_grad=True)
    seed = torch.tensor([3], device=DEV)
    mean = torch.rand(8, 3, 16, 16, device=DEV, requires_grad=True)
    x = torch.rand(8, 3, 16, 16, device=DEV)
    torch.library.opcheck(
        torch.ops.vae_triton.reparameterize_kl, (mu, mu.detach() * 0.1, seed, None, -30.0, 20.0)
    )
    vt = torch.ops.vae_triton
    ls = torch.tensor([0.1, -0.3, 0.2], device=DEV, requires_grad=True)
    torch.library.opcheck(vt.gaussian_nll, (mean, x, ls, 0.0, False))
    torch.library.opcheck(vt.gaussian_nll, (mean, x, None, -0.5, True))
    mean_cl = mean.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(vt.gaussian_nll, (mean_cl, x, ls[:1].reshape(()), 0.0, True))
    torch.library.opcheck(vt.bernoulli_nll, (mean, x))


@pytest.mark.slow
def test_more_than_2_to_the_31_elements():
    """int64 offsets: a bf16 latent and an image batch with > 2³¹ elements each (≈ 4.3 GB per tensor)."""
    torch.cuda.empty_cache()
    rows = 2**31 // 128 + 3
    mu = torch.zeros(rows, 128, device=DEV, dtype=torch.bfloat16)
    logvar = torch.zeros(rows, 128, device=DEV, dtype=torch.bfloat16)
    z, kl = ops.reparameterize_kl(mu, logvar, seed=5)
    tail = z[-4:].float()  # ε past element 2³¹: finite, normal-sized, not a copy of the head
    assert torch.isfinite(tail).all() and 0.5 < tail.std().item() < 1.5
    assert not torch.equal(z[-4:], z[:4]) and torch.equal(kl[-4:], torch.zeros(4, device=DEV))
    mu[-1] = 2.0
    assert ops.reparameterize_kl(mu, logvar, seed=5)[1][-1].item() == pytest.approx(0.5 * 4 * 128, rel=1e-3)
    del mu, logvar, z, kl
    torch.cuda.empty_cache()
    images = 2**31 // (3 * 128 * 128) + 2
    mean = torch.zeros(images, 3, 128, 128, device=DEV, dtype=torch.bfloat16)
    x = torch.zeros_like(mean)
    x[-1] = 1.0
    nll = ops.gaussian_nll(mean, x, 0.0)
    const = 3 * 128 * 128 * 0.5 * math.log(2 * math.pi)
    assert nll[-1].item() == pytest.approx(0.5 * 3 * 128 * 128 + const, rel=1e-5)
    assert nll[0].item() == pytest.approx(const, rel=1e-5)
    nll = ops.gaussian_nll_logits(mean, x, 0.0)  # sigmoid(0) = ½ everywhere: (x − ½)² = ¼
    assert nll[-1].item() == nll[0].item() == pytest.approx(0.5 * 0.25 * 3 * 128 * 128 + const, rel=1e-5)
