"""torch.compile, torch.library.opcheck, backend dispatch and every bad-input path of vae_triton.ops."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from op_oracles import needs_triton
from torch._dynamo.testing import CompileCounterWithBackend

from vae_triton import ops, reference
from vae_triton.ops import _common as dispatch


def elbo_terms(params, x, log_sigma, seed):
    """A VAE loss in miniature: encoder output chunked into (mu, logvar), all three fused ops."""
    mu, logvar = params.chunk(2, dim=1)
    z, kl = ops.reparameterize_kl(mu, logvar, seed=seed)
    decoded = z[:, : x.shape[1], None, None] + x.flip(-1)  # something image-shaped that depends on z
    gauss = ops.gaussian_nll(torch.sigmoid(decoded), x, log_sigma)
    fused = ops.gaussian_nll_logits(decoded, x, log_sigma) + ops.gaussian_nll_logits(decoded, x, -0.5)
    fixed = ops.gaussian_nll(torch.sigmoid(decoded), x, 0.25)
    bern = ops.bernoulli_nll(decoded, x)
    return (gauss + fused + fixed + bern + kl).mean(), z


def run_with_grads(fn, params, x, log_sigma, seed):
    params = params.detach().requires_grad_()
    log_sigma = log_sigma.detach().requires_grad_()
    loss, z = fn(params, x, log_sigma, seed)
    loss.backward()
    return loss.detach(), z.detach(), params.grad, log_sigma.grad


def inputs():
    return torch.randn(3, 10), torch.rand(3, 2, 4, 5), 0.3 * torch.randn(2), torch.randint(0, 2**62, (1,))


@needs_triton
def test_compile_fullgraph_aot_eager_matches_eager_and_does_not_recompile_per_seed():
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(elbo_terms, fullgraph=True, backend=counter)
    params, x, log_sigma, seed = inputs()
    eager = run_with_grads(elbo_terms, params, x, log_sigma, seed)
    traced = run_with_grads(compiled, params, x, log_sigma, seed)
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)
    z_other = run_with_grads(compiled, params, x, log_sigma, seed + 1)[1]
    assert not torch.equal(z_other, eager[1])
    assert counter.frame_count == 1


@needs_triton
@pytest.mark.slow  # ~20 s with a cold inductor cache (C++ codegen), ~3 s warm
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_inductor_matches_eager():
    """Inductor re-fuses the torch ops around the custom ops, so equality is up to fp32 rounding."""
    torch._dynamo.reset()
    compiled = torch.compile(elbo_terms, fullgraph=True, backend="inductor")
    params, x, log_sigma, seed = inputs()
    eager = run_with_grads(elbo_terms, params, x, log_sigma, seed)
    traced = run_with_grads(compiled, params, x, log_sigma, seed)
    for a, b in zip(eager, traced, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(eager[1], traced[1])  # z comes straight from the kernel: same seed, same bits


@needs_triton
@pytest.mark.parametrize("seed", [None, 3])
def test_compile_seed_none_and_int(seed):
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda m, lv: ops.reparameterize_kl(m, lv, seed=seed), fullgraph=True, backend="aot_eager"
    )
    mu, logvar = torch.randn(2, 6), torch.randn(2, 6)
    z, kl = compiled(mu, logvar)
    torch.testing.assert_close(kl, reference.reparameterize_kl(mu, logvar, eps=torch.zeros(2, 6))[1])
    if seed is not None:
        assert torch.equal(z, ops.reparameterize_kl(mu, logvar, seed=seed)[0])


@needs_triton
def test_opcheck_every_custom_op():
    mu, logvar = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    seed = torch.tensor([11])
    mean = torch.rand(2, 3, 4, 5, requires_grad=True)
    x = torch.rand(2, 3, 4, 5, requires_grad=True)
    ls, grad_nll = (0.3 * torch.randn(3)).requires_grad_(), torch.randn(2)
    images = (mean.detach(), x.detach())
    vt = torch.ops.vae_triton
    cases = [
        (vt.reparameterize_kl, (mu, logvar, seed, None, -30.0, 20.0)),
        (vt.reparameterize_kl, (mu, logvar, None, torch.randn(3, 5), -1.0, 1.0)),
        (vt.reparameterize_kl_backward,
         (torch.randn(3, 5), torch.randn(3), mu.detach(), logvar.detach(), seed, None, -30.0, 20.0)),
        (vt.gaussian_nll, (mean, x, ls, 0.0, False)),
        (vt.gaussian_nll, (mean, x, ls[:1].reshape(()), 0.0, True)),
        (vt.gaussian_nll, (mean.contiguous(memory_format=torch.channels_last), x, None, -0.7, True)),
        (vt.gaussian_nll, (mean, x, None, 0.3, False)),
        (vt.gaussian_nll_backward, (grad_nll, *images, ls.detach(), 0.0, True, True, True, True)),
        (vt.gaussian_nll_backward, (grad_nll, *images, None, 0.3, True, False, False, False)),
        (vt.bernoulli_nll, (mean, x)),
        (vt.bernoulli_nll_backward, (grad_nll, mean.detach(), x.detach(), True, False)),
    ]  # fmt: skip
    for op, args in cases:
        torch.library.opcheck(op, args)


def _all_ops(params, x, log_sigma, seed, eps):
    """Every public op, every σ kind, with x requiring grad too: one scalar and z to differentiate."""
    mu, logvar = params.chunk(2, dim=1)
    z, kl = ops.reparameterize_kl(mu, logvar, seed=seed)
    z_eps, kl_eps = ops.reparameterize_kl(mu, logvar, eps=eps, logvar_clamp=(-1.0, 1.0))
    image = z[:, : x.shape[1], None, None] + z_eps[:, : x.shape[1], None, None] * x.flip(-1)
    terms = [
        kl, kl_eps,
        ops.gaussian_nll(torch.sigmoid(image), x, log_sigma), ops.gaussian_nll(torch.sigmoid(image), x, -0.3),
        ops.gaussian_nll(torch.sigmoid(image), x, log_sigma[:1]),
        ops.gaussian_nll_logits(image, x, log_sigma), ops.gaussian_nll_logits(image, x, 0.4),
        ops.gaussian_nll_logits(image.contiguous(memory_format=torch.channels_last), x, log_sigma[1:]),
        ops.bernoulli_nll(image, x),
    ]  # fmt: skip
    return torch.stack(terms).sum(0), z


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_light_eager_path_equals_the_custom_ops_bitwise(dtype):
    """autograd.Function (eager) and custom_op (compile, opcheck) wrap the same launchers: same bits."""
    params, x, log_sigma, seed = inputs()
    params, x = params.to(dtype), x.to(dtype)
    eps = torch.randn(3, 5, dtype=dtype)
    w = torch.randn(3)
    results = {}
    for kind in ("function", "custom_op"):
        with ops.eager_wrapper(kind):
            leaves = [t.detach().clone().requires_grad_() for t in (params, x, log_sigma, eps)]
            nll, z = _all_ops(*leaves[:3], seed, leaves[3])
            assert _wrappers(nll) == {kind}
            grads = torch.autograd.grad((w * nll).sum() + z.float().square().sum(), leaves)
        results[kind] = (nll, z, *grads)
    for a, b in zip(results["function"], results["custom_op"], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a, b)


@needs_triton
def test_eager_wrapper_restores_the_light_path_and_rejects_unknown_kinds():
    logits = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(KeyError), ops.eager_wrapper("custom_op"):
        assert _wrappers(ops.bernoulli_nll(logits, torch.rand(2, 3))) == {"custom_op"}
        raise KeyError("leaves the block early")
    assert _wrappers(ops.bernoulli_nll(logits, torch.rand(2, 3))) == {"function"}
    with pytest.raises(ValueError, match="eager_wrapper: `kind` must be one of"):
        ops.eager_wrapper("fast").__enter__()


# ------------------------------------------------------------------------------------------ dispatch


def _wrappers(t: torch.Tensor) -> set[str]:
    """Which vae_triton autograd wrappers appear in t's autograd graph: 'custom_op' and/or 'function'."""
    stack, seen, found = [t.grad_fn], set(), set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "vae_triton" in type(node).__name__:
            found.add("custom_op")
        elif getattr(getattr(node, "_forward_cls", None), "__module__", "").startswith("vae_triton.ops"):
            found.add("function")
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def _is_custom_op(t: torch.Tensor) -> bool:
    return "custom_op" in _wrappers(t)


def _runs_kernels(t: torch.Tensor) -> bool:
    return bool(_wrappers(t))


def test_env_var_forces_the_torch_reference(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    mu = torch.randn(3, 4, requires_grad=True)
    logvar = torch.randn(3, 4)
    z, _ = ops.reparameterize_kl(mu, logvar, seed=5)
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(z, reference.reparameterize_kl(mu, logvar, generator=generator)[0])
    assert not _runs_kernels(z)
    assert not _runs_kernels(ops.bernoulli_nll(mu, torch.rand(3, 4)))
    assert not _runs_kernels(ops.gaussian_nll_logits(mu, torch.rand(3, 4), torch.zeros(())))
    assert ops.backend_for(mu) == "torch"


@needs_triton
def test_env_var_forces_triton_and_auto_picks_it_when_interpreting(monkeypatch):
    mu = torch.randn(3, 4, requires_grad=True)
    for value in ["triton", "", "auto", " Triton "]:
        monkeypatch.setenv("VAE_TRITON_BACKEND", value)
        assert ops.backend_for(mu) == "triton"
        assert _runs_kernels(ops.reparameterize_kl(mu, torch.zeros(3, 4))[0])
        assert _runs_kernels(ops.gaussian_nll(mu, torch.rand(3, 4)))


def test_float64_always_runs_the_reference(monkeypatch):
    monkeypatch.delenv("VAE_TRITON_BACKEND", raising=False)
    mu = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert ops.backend_for(mu) == "torch"
    assert not _runs_kernels(ops.gaussian_nll(mu, torch.rand(3, 4, dtype=torch.float64)))


def test_cpu_without_interpreter_or_without_triton_uses_torch(monkeypatch):
    monkeypatch.delenv("VAE_TRITON_BACKEND", raising=False)
    cpu = torch.zeros(2, 2)
    monkeypatch.setattr(dispatch, "INTERPRETED", False)
    assert ops.backend_for(cpu) == "torch"
    monkeypatch.setenv("VAE_TRITON_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.backend_for(cpu)
    monkeypatch.setattr(dispatch, "INTERPRETED", True)
    monkeypatch.setattr(dispatch, "TRITON_AVAILABLE", False)
    with pytest.raises(RuntimeError, match="failed to import"):
        ops.backend_for(cpu)
    monkeypatch.delenv("VAE_TRITON_BACKEND")
    assert ops.backend_for(cpu) == "torch"
    z, kl = ops.reparameterize_kl(cpu, cpu)
    assert z.shape == (2, 2) and torch.equal(kl, torch.zeros(2))


def test_unknown_backend_value_is_rejected(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "cuda")
    with pytest.raises(ValueError, match="VAE_TRITON_BACKEND"):
        ops.gaussian_nll(torch.rand(2, 3), torch.rand(2, 3))


def test_package_imports_and_works_when_triton_is_broken():
    """A machine whose Triton cannot import still gets the whole torch path."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from vae_triton import ops\n"
        "assert not ops.TRITON_AVAILABLE and ops.backend_for(torch.zeros(1)) == 'torch'\n"
        "z, kl = ops.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3), seed=1)\n"
        "assert kl.tolist() == [0.0, 0.0]\n"
        "print(float(ops.bernoulli_nll(torch.zeros(1, 4), torch.ones(1, 4))))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "VAE_TRITON_BACKEND": ""}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout) - 4 * 0.6931471805599453) < 1e-5  # 4·log 2


# ---------------------------------------------------------------------------------------- bad input

M = torch.zeros(2, 3)
IMG = torch.zeros(2, 3, 4, 4)
META = torch.zeros(2, 3, device="meta")

BAD_INPUTS = [
    (lambda: ops.reparameterize_kl([[0.0]], M), "`mu` must be a torch.Tensor"),
    (lambda: ops.reparameterize_kl(M.long(), M), "`mu` has dtype torch.int64"),
    (lambda: ops.reparameterize_kl(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)), "`mu` must be 2-D"),
    (lambda: ops.reparameterize_kl(torch.zeros(3), torch.zeros(3)), "`mu` must be 2-D"),
    (lambda: ops.reparameterize_kl(M, torch.zeros(2, 4)), "`logvar` has shape"),
    (lambda: ops.reparameterize_kl(M, M.int()), "`logvar` has dtype"),
    (lambda: ops.reparameterize_kl(M, META), "`logvar` is on meta"),
    (lambda: ops.reparameterize_kl(M, M, eps=torch.zeros(3, 2)), "`eps` has shape"),
    (lambda: ops.reparameterize_kl(M, M, eps=M.bool()), "`eps` has dtype"),
    (lambda: ops.reparameterize_kl(M, M, eps=M, seed=1), "`seed` or `eps`"),
    (lambda: ops.reparameterize_kl(M, M, seed=1.5), "`seed` must be"),
    (lambda: ops.reparameterize_kl(M, M, seed=True), "`seed` must be"),
    (lambda: ops.reparameterize_kl(M, M, seed=-1), "`seed` must be in"),
    (lambda: ops.reparameterize_kl(M, M, seed=2**63), "`seed` must be in"),
    (lambda: ops.reparameterize_kl(M, M, seed=torch.tensor([1, 2])), "tensor `seed` must hold one integer"),
    (lambda: ops.reparameterize_kl(M, M, seed=torch.tensor([1.0])), "tensor `seed` must hold one integer"),
    (lambda: ops.reparameterize_kl(M, M, seed=torch.tensor([1], device="meta")), "`seed` is on meta"),
    (lambda: ops.reparameterize_kl(M, M, logvar_clamp=(3.0, 1.0)), "`logvar_clamp` needs low ≤ high"),
    (lambda: ops.reparameterize_kl(M, M, logvar_clamp=(float("nan"), 1.0)), "`logvar_clamp` needs low"),
    (lambda: ops.reparameterize_kl(M, M, logvar_clamp=5.0), "`logvar_clamp` must be None or a"),
    (lambda: ops.reparameterize_kl(M, M, logvar_clamp=(1.0, 2.0, 3.0)), "`logvar_clamp` must be None or a"),
    (lambda: ops.gaussian_nll(IMG, torch.zeros(2, 3, 4, 5)), "`x` has shape"),
    (lambda: ops.gaussian_nll(IMG.long(), IMG), "`mean` has dtype"),
    (lambda: ops.gaussian_nll(IMG, IMG.to(torch.uint8)), "`x` has dtype torch.uint8"),
    (lambda: ops.gaussian_nll(M, META), "`x` is on meta"),
    (lambda: ops.gaussian_nll(torch.zeros(4), torch.zeros(4)), "`mean` must be a batch"),
    (lambda: ops.gaussian_nll(IMG, IMG, torch.zeros(4)), "`log_sigma` must be a float, a one-element"),
    (lambda: ops.gaussian_nll(IMG, IMG, torch.zeros(3, 1)), "`log_sigma` must be a float, a one-element"),
    (lambda: ops.gaussian_nll(IMG, IMG, torch.zeros(3, dtype=torch.int64)), "`log_sigma` has dtype"),
    (lambda: ops.gaussian_nll(IMG, IMG, torch.zeros(3, device="meta")), "`log_sigma` is on meta"),
    (lambda: ops.gaussian_nll(IMG, IMG, float("nan")), "`log_sigma` must be finite"),
    (lambda: ops.gaussian_nll(IMG, IMG, float("inf")), "`log_sigma` must be finite"),
    (lambda: ops.gaussian_nll(IMG, IMG, "0.5"), "`log_sigma` must be a float or a tensor"),
    (lambda: ops.bernoulli_nll(IMG.int(), IMG), "`logits` has dtype"),
    (lambda: ops.bernoulli_nll(IMG, IMG.bool()), "`x` has dtype torch.bool"),
    (lambda: ops.bernoulli_nll(IMG, torch.zeros(2, 3, 16)), "`x` has shape"),
    (lambda: ops.bernoulli_nll(torch.zeros(5), torch.zeros(5)), "`logits` must be a batch"),
    (lambda: ops.bernoulli_nll(IMG, None), "`x` must be a torch.Tensor"),
    # value ranges: σ with σ² and 1/σ² finite in float32; exp(logvar_clamp high) finite
    (lambda: ops.gaussian_nll(IMG, IMG, -1000.0), "gaussian_nll: `log_sigma` must be in [-40, 40]"),
    (lambda: ops.gaussian_nll(IMG, IMG, 40.5), "`log_sigma` must be in [-40, 40]"),
    (lambda: ops.gaussian_nll(IMG, IMG, -(10**400)), "`log_sigma` must be in [-40, 40]"),
    (lambda: ops.reparameterize_kl(M, M, logvar_clamp=(-30.0, 89.0)), "`logvar_clamp` high must be ≤ 88"),
    (lambda: ops.reparameterize_kl(M, M, logvar_clamp=(0.0, float("inf"))), "`logvar_clamp` high must be"),
    # the fused sigmoid + Gaussian NLL
    (lambda: ops.gaussian_nll_logits(IMG.long(), IMG), "gaussian_nll_logits: `logits` has dtype torch.int64"),
    (lambda: ops.gaussian_nll_logits(IMG, IMG[:, :2]), "`x` has shape"),
    (lambda: ops.gaussian_nll_logits(torch.zeros(4), torch.zeros(4)), "`logits` must be a batch"),
    (lambda: ops.gaussian_nll_logits(IMG, None), "`x` must be a torch.Tensor"),
    (lambda: ops.gaussian_nll_logits(IMG, IMG, torch.zeros(2)), "`log_sigma` must be a float, a one-element"),
    (lambda: ops.gaussian_nll_logits(IMG, IMG, -1000.0), "gaussian_nll_logits: `log_sigma` must be in"),
    (lambda: ops.gaussian_nll_logits(IMG, IMG, float("nan")), "`log_sigma` must be finite"),
    (lambda: ops.gaussian_nll_logits(IMG, IMG, None), "`log_sigma` must be a float or a tensor"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_bad_input_raises_value_error_naming_the_argument(monkeypatch, backend, call, message):
    monkeypatch.setenv("VAE_TRITON_BACKEND", backend)
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# ------------------------------------------------------------------- edges of the documented ranges

EDGE_IMAGES = [  # finite inputs: pixel targets, far-off means, saturated and huge logits
    (torch.tensor([0.0, 1.0, 0.5, 1.0]), torch.tensor([1.0, 0.0, 0.5, 1.0])),
    (torch.tensor([1e4, -1e4, 40.0, -40.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])),
    (torch.tensor([1e30, -1e30, 0.0, 3.0]), torch.tensor([1.0, 0.0, 0.0, 0.5])),
]


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("log_sigma", [-40.0, 40.0, "tensor"])
@pytest.mark.parametrize("images", range(len(EDGE_IMAGES)))
@pytest.mark.parametrize("grad_scale", [0.0, 1.0])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy: to inf
def test_no_nan_at_the_edges_of_the_sigma_range(monkeypatch, backend, log_sigma, images, grad_scale):
    """σ at the ends of [e⁻⁴⁰, e⁴⁰] (tensor σ: −1000 / +1000, clamped there) with finite images: values
    and gradients may reach ±inf in float32, never NaN — also when the upstream gradient is 0."""
    monkeypatch.setenv("VAE_TRITON_BACKEND", backend)
    a, b = (t.repeat(2, 2, 1).reshape(2, 2, 2, 2) for t in EDGE_IMAGES[images])
    ls = torch.tensor([-1000.0, 1000.0], requires_grad=True) if log_sigma == "tensor" else log_sigma
    for op in (ops.gaussian_nll, ops.gaussian_nll_logits, ops.bernoulli_nll):
        if op is ops.bernoulli_nll and (images == 2 or log_sigma != -40.0):
            continue  # its logits carry no σ: one pass over the moderate images is enough
        mean, x = a.clone().requires_grad_(), b.clone().requires_grad_()
        nll = op(mean, x) if op is ops.bernoulli_nll else op(mean, x, ls)
        leaves = [t for t in (mean, x, ls) if isinstance(t, torch.Tensor)]
        grads = torch.autograd.grad((grad_scale * nll).sum(), leaves)
        for t in (nll, *grads):
            assert not t.isnan().any(), (op.__name__, t)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("clamp", [(-30.0, 20.0), (float("-inf"), 88.0), None])
def test_no_nan_at_the_edges_of_the_logvar_range(monkeypatch, backend, clamp):
    """logvar at and past the clamp ends (and up to 88 with no clamp), ε = 0 included: no NaN anywhere."""
    monkeypatch.setenv("VAE_TRITON_BACKEND", backend)
    mu = torch.tensor([[1e3, -1e3, 0.0, 5.0]] * 2, requires_grad=True)
    big = 88.0 if clamp is None else 1e30
    logvar = torch.tensor([[big, -1e30, 88.0, -88.0]] * 2, requires_grad=True)
    eps = torch.tensor([[0.0, 1.0, -1.0, 0.0]] * 2)
    for grad_kl in (0.0, 1.0):
        z, kl = ops.reparameterize_kl(mu, logvar, eps=eps, logvar_clamp=clamp)
        grads = torch.autograd.grad(z.sum() + grad_kl * kl.sum(), (mu, logvar))
        for t in (z, kl, *grads):
            assert not t.isnan().any(), t
