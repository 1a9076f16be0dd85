"""Public fused ops (DESIGN §3): the reparameterization with its KL, and the two reconstruction NLLs.

    reparameterize_kl(mu, logvar, *, seed=None, eps=None, logvar_clamp=(-30., 20.)) -> (z, kl)
    gaussian_nll(mean, x, log_sigma=0.0) -> (B,) float32 nats
    gaussian_nll_logits(logits, x, log_sigma=0.0) -> (B,) float32 nats   (mean = sigmoid(logits), fused)
    bernoulli_nll(logits, x) -> (B,) float32 nats

Dispatch (`backend_for`): CUDA tensors run the Triton kernels; CPU tensors run `vae_triton.reference`,
except when the kernels were defined under TRITON_INTERPRET=1 (then Triton's interpreter runs them, which
is how CPU CI tests the real kernels). `VAE_TRITON_BACKEND=triton|torch` forces one. float64 always runs
the reference: the kernels compute in fp32 and would silently drop the precision asked for. Under
`torch.compile` the choice is made once, while tracing.

The Triton path has two autograd wrappers around the same launchers, so their values and gradients are
bitwise equal (tested):
- under `torch.compile` (`torch.compiler.is_compiling()`), `torch.library.custom_op`s (namespace
  `vae_triton`) with fake kernels and registered autograd, so `torch.compile(fullgraph=True)` traces them
  and `torch.library.opcheck` passes;
- in eager mode, plain `torch.autograd.Function`s: the custom-op dispatch and its generated autograd
  wrapper cost far more host time per call than the kernels' own launches (DESIGN §8), and a training
  step outside a CUDA graph is host-bound. `LIGHT_EAGER = False` routes eager calls through the custom
  ops too (benchmarks and tests compare the two).
Per call the host validates Python scalars and tensor metadata only (nothing allocated, no sync); what
depends only on shapes and strides is cached; σ, fixed or learned, is computed inside the Gaussian kernels
(one launch forward, one backward, per op).
The random seed travels as a 1-element int64 tensor on the device (drawn there with `torch.randint`
when `seed=None`), so there is no host sync and no recompilation per seed.

Value ranges (outside them a ValueError names the argument and the range; inside them no op returns NaN
for finite inputs — images with x − mean finite in float32, Bernoulli targets in [0, 1]): `log_sigma`
within LOG_SIGMA_RANGE = [−40, 40] (σ² and 1/σ² stay finite normal float32 numbers); a tensor
`log_sigma` is clamped to that range on the device (in the kernel, or by `torch.clamp` on the torch path:
no host sync, `torch.clamp`'s gradient). `logvar_clamp` high ≤ LOGVAR_MAX = 88 (exp(logvar) finite in
float32); with `logvar_clamp=None`, logvar itself must stay ≤ 88. Sums that exceed float32 give ±inf.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os

import torch

from . import reference

try:  # Triton missing or broken (no driver, bad install) must not break the torch path.
    from .kernels import bernoulli_nll as _bernoulli_kernels
    from .kernels import gaussian_nll as _gaussian_kernels
    from .kernels import reparameterize_kl as _reparameterize_kernels
    from .kernels.common import INTERPRETED

    TRITON_IMPORT_ERROR: Exception | None = None
except Exception as err:  # noqa: BLE001 — any import failure means "no Triton here"
    TRITON_IMPORT_ERROR = err
    INTERPRETED = False

TRITON_AVAILABLE = TRITON_IMPORT_ERROR is None
BACKEND_ENV = "VAE_TRITON_BACKEND"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEED_HIGH = 2**62  # exclusive bound of drawn seeds; any int64 ≥ 0 is accepted from the caller
LOG_SIGMA_RANGE = (-40.0, 40.0)  # σ² ≥ e⁻⁸⁰ ≈ 1.8e-35 and 1/σ² ≤ e⁸⁰ ≈ 5.5e34: both normal float32
LOGVAR_MAX = 88.0  # exp(88) ≈ 1.7e38 < float32 max ≈ 3.4e38
LIGHT_EAGER = True  # eager Triton calls use autograd.Function (False: the custom ops, as under compile)
_NO_CONTEXT = contextlib.nullcontext()


# --------------------------------------------------------------------------------------- dispatch


def _backend_choice(value: str | None) -> str:
    if not value:  # the common case, kept cheap: unset
        return "auto"
    choice = value.strip().lower() or "auto"
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"{BACKEND_ENV}={choice!r} is not a backend; use 'triton', 'torch' or unset it")
    return choice


def backend_for(*tensors: torch.Tensor) -> str:
    """'triton' or 'torch': which implementation an op would run on these (already validated) tensors."""
    choice = _backend_choice(os.environ.get(BACKEND_ENV))  # read per call: it may change at run time
    if choice == "torch":
        return "torch"
    for t in tensors:
        if t.dtype is torch.float64:
            return "torch"
    device = tensors[0].device
    runs_here = TRITON_AVAILABLE and (device.type == "cuda" or (device.type == "cpu" and INTERPRETED))
    if choice == "triton" and not runs_here:
        if not TRITON_AVAILABLE:
            why = f"Triton failed to import ({TRITON_IMPORT_ERROR!r})"
        else:
            why = f"Triton kernels need a CUDA device, or TRITON_INTERPRET=1 set before import (got {device})"
        raise RuntimeError(f"{BACKEND_ENV}=triton, but {why}; unset it to use the torch reference")
    return "triton" if runs_here else "torch"


def _launching_on(t: torch.Tensor):
    """Triton launches on torch's current CUDA device, so make it the tensor's (multi-GPU, DDP); switching
    devices costs host time, so only when it differs."""
    if not TRITON_AVAILABLE:
        raise RuntimeError(f"the vae_triton Triton kernels are unavailable: {TRITON_IMPORT_ERROR!r}")
    if t.device.type != "cuda" or t.device.index == torch.cuda.current_device():
        return _NO_CONTEXT
    return torch.cuda.device(t.device)


def _eager_light() -> bool:
    """Whether this call takes the light autograd.Function path (eager, not being traced)."""
    return LIGHT_EAGER and not torch.compiler.is_compiling()


# ------------------------------------------------------------------------------------- validation


def _check_float(op: str, name: str, t, *, like: torch.Tensor | None = None, like_name: str = "") -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{op}: `{name}` has dtype {t.dtype}; expected float16, bfloat16, float32 or float64 "
            f"(convert images with x.float() / 255)"
        )
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"{op}: `{name}` is on {t.device} but `{like_name}` is on {like.device}")
        if t.shape != like.shape:
            raise ValueError(
                f"{op}: `{name}` has shape {tuple(t.shape)} but `{like_name}` has {tuple(like.shape)}; "
                f"they must match"
            )


def _check_clamp(op: str, logvar_clamp) -> tuple[float, float]:
    if logvar_clamp is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(v) for v in logvar_clamp)
    except (TypeError, ValueError):
        raise ValueError(
            f"{op}: `logvar_clamp` must be None or a (low, high) pair, got {logvar_clamp!r}"
        ) from None
    if not lo <= hi:  # also rejects NaN
        raise ValueError(f"{op}: `logvar_clamp` needs low ≤ high, got ({lo}, {hi})")
    if hi > LOGVAR_MAX:
        raise ValueError(
            f"{op}: `logvar_clamp` high must be ≤ {LOGVAR_MAX:g} so exp(logvar) stays finite in float32, "
            f"got {hi}"
        )
    return lo, hi


def _check_seed(op: str, seed, device: torch.device):
    """None, a Python int in [0, 2⁶³), or a 1-element integer tensor on `device` (returned as int64 (1,))."""
    if seed is None:
        return None
    if isinstance(seed, torch.Tensor):
        if (
            seed.numel() != 1
            or seed.dtype.is_floating_point
            or seed.dtype.is_complex
            or seed.dtype == torch.bool
        ):
            raise ValueError(
                f"{op}: a tensor `seed` must hold one integer, got shape {tuple(seed.shape)}, {seed.dtype}"
            )
        if seed.device != device:
            raise ValueError(f"{op}: `seed` is on {seed.device} but `mu` is on {device}; draw it on {device}")
        return seed.reshape(1).to(torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            f"{op}: `seed` must be None, an int or a 1-element int64 tensor, got {type(seed).__name__}"
        )
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"{op}: `seed` must be in [0, 2**63), got {seed}")
    return int(seed)


def _check_images(op: str, first: str, a, second: str, b) -> None:
    _check_float(op, first, a)
    _check_float(op, second, b, like=a, like_name=first)
    if a.dim() < 2:
        raise ValueError(
            f"{op}: `{first}` must be a batch (B, ...) with at least 2 dims, got {tuple(a.shape)}"
        )


def _check_log_sigma(op: str, mean: torch.Tensor, log_sigma):
    """A float in LOG_SIGMA_RANGE, or a float tensor holding one value or one per channel (dim 1 of `mean`)
    (the ops clamp a tensor to LOG_SIGMA_RANGE on its device: no host sync)."""
    if isinstance(log_sigma, torch.Tensor):
        _check_float(op, "log_sigma", log_sigma)
        if log_sigma.device != mean.device:
            raise ValueError(
                f"{op}: `log_sigma` is on {log_sigma.device} but the images are on {mean.device}"
            )
        channels = mean.shape[1]
        if log_sigma.numel() != 1 and tuple(log_sigma.shape) != (channels,):
            raise ValueError(
                f"{op}: `log_sigma` must be a float, a one-element tensor or shape ({channels},) — one per "
                f"channel of the images {tuple(mean.shape)} — got shape {tuple(log_sigma.shape)}"
            )
        return log_sigma
    if isinstance(log_sigma, bool) or not isinstance(log_sigma, numbers.Real):
        raise ValueError(f"{op}: `log_sigma` must be a float or a tensor, got {type(log_sigma).__name__}")
    lo, hi = LOG_SIGMA_RANGE
    if isinstance(log_sigma, float) and not math.isfinite(log_sigma):
        raise ValueError(f"{op}: `log_sigma` must be finite, got {log_sigma}")
    if not lo <= log_sigma <= hi:  # compares before float(): a huge int would overflow it
        raise ValueError(
            f"{op}: `log_sigma` must be in [{lo:g}, {hi:g}] (σ = exp(log_sigma) with σ² and 1/σ² finite in "
            f"float32), got {log_sigma}"
        )
    return float(log_sigma)


# ------------------------------------------------------------------------------------ launchers
# Each custom op and each autograd.Function below calls these, so both wrappers run the same kernels.

Tensor = torch.Tensor


def _reparameterize_kl_fwd(mu, logvar, seed, eps, lo, hi):
    with _launching_on(mu):
        return _reparameterize_kernels.reparameterize_kl_fwd(mu, logvar, seed, eps, lo, hi)


def _reparameterize_kl_bwd(grad_z, grad_kl, mu, logvar, seed, eps, lo, hi):
    with _launching_on(grad_z):
        return _reparameterize_kernels.reparameterize_kl_bwd(grad_z, grad_kl, mu, logvar, seed, eps, lo, hi)


def _gaussian_fwd(images, x, log_sigma, value, sigmoid):
    with _launching_on(images):
        return _gaussian_kernels.gaussian_nll_fwd(images, x, log_sigma, value, *LOG_SIGMA_RANGE, sigmoid)


def _gaussian_bwd(grad, images, x, log_sigma, value, need_images, need_x, need_sigma, sigmoid):
    with _launching_on(grad):
        return _gaussian_kernels.gaussian_nll_bwd(
            grad, images, x, log_sigma, value, *LOG_SIGMA_RANGE, need_images, need_x, need_sigma, sigmoid
        )


def _bernoulli_fwd(logits, x):
    with _launching_on(logits):
        return _bernoulli_kernels.bernoulli_nll_fwd(logits, x)


def _bernoulli_bwd(grad, logits, x, need_logits, need_x):
    with _launching_on(grad):
        return _bernoulli_kernels.bernoulli_nll_bwd(grad, logits, x, need_logits, need_x)


# Saving for backward and turning the kernels' outputs into gradients is the same on both paths (the
# custom ops below, the light autograd.Functions after them); only the backward they call differs.
def _reparameterize_kl_setup(ctx, inputs, output=None):
    mu, logvar, seed, eps, lo, hi = inputs
    ctx.save_for_backward(mu, logvar, seed, eps)
    ctx.clamp = (lo, hi)


def _reparameterize_kl_grads(backward, ctx, grad_z, grad_kl):
    mu, logvar, seed, eps = ctx.saved_tensors
    lo, hi = ctx.clamp
    grad_mu, grad_logvar = backward(grad_z, grad_kl, mu, logvar, seed, eps, lo, hi)
    grad_eps = None
    if eps is not None and ctx.needs_input_grad[3]:  # rare (ε is noise): plain torch is fine here
        grad_eps = (grad_z.float() * torch.exp(0.5 * logvar.float().clamp(lo, hi))).to(eps.dtype)
    return grad_mu, grad_logvar, None, grad_eps, None, None


def _gaussian_setup(ctx, inputs, output=None):
    images, x, log_sigma, value, sigmoid = inputs
    ctx.save_for_backward(images, x, log_sigma)
    ctx.args = (value, sigmoid)


def _gaussian_grads(backward, ctx, grad):
    images, x, log_sigma = ctx.saved_tensors
    value, sigmoid = ctx.args
    needs = ctx.needs_input_grad[:3]
    grads = backward(grad, images, x, log_sigma, value, *needs, sigmoid)
    return (*_pair(grads, needs), None, None)


def _bernoulli_setup(ctx, inputs, output=None):
    ctx.save_for_backward(inputs[0], inputs[1])


def _bernoulli_grads(backward, ctx, grad):
    logits, x = ctx.saved_tensors
    needs = ctx.needs_input_grad[:2]
    return _pair(backward(grad, logits, x, *needs), needs)


def _pair(grads, needs):
    """Gradients of (images, x[, log σ]): None where not asked for (the kernels return empty placeholders)."""
    return tuple(g if need else None for g, need in zip(grads, needs, strict=True))


# ------------------------------------------------------------- custom ops (torch.compile, opcheck)


@torch.library.custom_op("vae_triton::reparameterize_kl", mutates_args=())
def _reparameterize_kl_op(
    mu: Tensor, logvar: Tensor, seed: Tensor | None, eps: Tensor | None, lo: float, hi: float
) -> tuple[Tensor, Tensor]:
    return _reparameterize_kl_fwd(mu, logvar, seed, eps, lo, hi)


@_reparameterize_kl_op.register_fake
def _(mu, logvar, seed, eps, lo, hi):
    return mu.new_empty(mu.shape), mu.new_empty(mu.shape[0], dtype=torch.float32)


@torch.library.custom_op("vae_triton::reparameterize_kl_backward", mutates_args=())
def _reparameterize_kl_backward_op(
    grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor, seed: Tensor | None, eps: Tensor | None,
    lo: float, hi: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    return _reparameterize_kl_bwd(grad_z, grad_kl, mu, logvar, seed, eps, lo, hi)


@_reparameterize_kl_backward_op.register_fake
def _(grad_z, grad_kl, mu, logvar, seed, eps, lo, hi):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


_reparameterize_kl_op.register_autograd(
    functools.partial(_reparameterize_kl_grads, _reparameterize_kl_backward_op),
    setup_context=_reparameterize_kl_setup,
)


@torch.library.custom_op("vae_triton::gaussian_nll", mutates_args=())
def _gaussian_op(images: Tensor, x: Tensor, log_sigma: Tensor | None, value: float, sigmoid: bool) -> Tensor:
    return _gaussian_fwd(images, x, log_sigma, value, sigmoid)


@_gaussian_op.register_fake
def _(images, x, log_sigma, value, sigmoid):
    return images.new_empty(images.shape[0], dtype=torch.float32)


@torch.library.custom_op("vae_triton::gaussian_nll_backward", mutates_args=())
def _gaussian_backward_op(
    grad: Tensor, images: Tensor, x: Tensor, log_sigma: Tensor | None, value: float,
    need_images: bool, need_x: bool, need_sigma: bool, sigmoid: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return _gaussian_bwd(grad, images, x, log_sigma, value, need_images, need_x, need_sigma, sigmoid)


@_gaussian_backward_op.register_fake
def _(grad, images, x, log_sigma, value, need_images, need_x, need_sigma, sigmoid):
    grad_images, grad_x = _grads_like_fake(images, x, need_images, need_x)
    need_sigma = need_sigma and log_sigma is not None
    return grad_images, grad_x, torch.empty_like(log_sigma) if need_sigma else images.new_empty(0)


def _grads_like_fake(images, x, need_images, need_x):
    return (
        torch.empty_like(images) if need_images else images.new_empty(0),
        torch.empty_like(x) if need_x else x.new_empty(0),
    )


_gaussian_op.register_autograd(
    functools.partial(_gaussian_grads, _gaussian_backward_op), setup_context=_gaussian_setup
)


@torch.library.custom_op("vae_triton::bernoulli_nll", mutates_args=())
def _bernoulli_nll_op(logits: Tensor, x: Tensor) -> Tensor:
    return _bernoulli_fwd(logits, x)


@_bernoulli_nll_op.register_fake
def _(logits, x):
    return logits.new_empty(logits.shape[0], dtype=torch.float32)


@torch.library.custom_op("vae_triton::bernoulli_nll_backward", mutates_args=())
def _bernoulli_nll_backward_op(
    grad: Tensor, logits: Tensor, x: Tensor, need_logits: bool, need_x: bool
) -> tuple[Tensor, Tensor]:
    return _bernoulli_bwd(grad, logits, x, need_logits, need_x)


@_bernoulli_nll_backward_op.register_fake
def _(grad, logits, x, need_logits, need_x):
    return _grads_like_fake(logits, x, need_logits, need_x)


_bernoulli_nll_op.register_autograd(
    functools.partial(_bernoulli_grads, _bernoulli_nll_backward_op), setup_context=_bernoulli_setup
)


# ------------------------------------------------------------ light eager path: autograd.Function


class _ReparameterizeKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        _reparameterize_kl_setup(ctx, inputs)
        return _reparameterize_kl_fwd(*inputs)

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        return _reparameterize_kl_grads(_reparameterize_kl_bwd, ctx, grad_z, grad_kl)


class _Gaussian(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        _gaussian_setup(ctx, inputs)
        return _gaussian_fwd(*inputs)

    @staticmethod
    def backward(ctx, grad):
        return _gaussian_grads(_gaussian_bwd, ctx, grad)


class _BernoulliNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        _bernoulli_setup(ctx, inputs)
        return _bernoulli_fwd(*inputs)

    @staticmethod
    def backward(ctx, grad):
        return _bernoulli_grads(_bernoulli_bwd, ctx, grad)


# ------------------------------------------------------------------------------------ public API


def reparameterize_kl(mu, logvar, *, seed=None, eps=None, logvar_clamp=reference.DEFAULT_LOGVAR_CLAMP):
    """z = mu + exp(½·lv)·ε and KL[N(mu, diag exp(lv)) ‖ N(0, I)] per row, lv = clamp(logvar, *logvar_clamp).

    mu, logvar: (B, D) float tensors (row-strided views such as `params.chunk(2, dim=1)` are fine).
    seed: None (a fresh seed drawn on the device from torch's RNG, so `torch.manual_seed` reproduces it),
        an int in [0, 2⁶³), or a 1-element integer tensor on mu's device — pass a tensor under
        `torch.compile` to avoid a recompilation per value. Same inputs and seed → bitwise-equal outputs.
        The Triton stream (Philox, `tl.randn`) differs from `torch.randn`'s, which the torch path uses.
    eps: inject the noise instead (same shape as mu); then `seed` must be None.
    logvar_clamp: (low, high) with low ≤ high ≤ 88 (exp(high) finite in float32; low may be −inf), or None
        (then logvar must stay ≤ 88); the gradient is `torch.clamp`'s (zero outside the range).
    Returns z (B, D) in mu's dtype and kl (B,) float32 (nats). In float16, z overflows to ±inf where
    |mu + std·ε| > 65504 (std reaches e¹⁰ at the default upper clamp), as the reference does.
    Raises ValueError naming the argument for a non-tensor, non-float, mismatched or out-of-range input.
    """
    op = "reparameterize_kl"
    _check_float(op, "mu", mu)
    if mu.dim() != 2:
        raise ValueError(f"{op}: `mu` must be 2-D (batch, latent_dim), got shape {tuple(mu.shape)}")
    _check_float(op, "logvar", logvar, like=mu, like_name="mu")
    if eps is not None:
        _check_float(op, "eps", eps, like=mu, like_name="mu")
        if seed is not None:
            raise ValueError(f"{op}: pass `seed` or `eps`, not both (`eps` fixes the noise, `seed` draws it)")
    lo, hi = _check_clamp(op, logvar_clamp)
    seed = _check_seed(op, seed, mu.device)

    tensors = (mu, logvar) if eps is None else (mu, logvar, eps)
    if backend_for(*tensors) == "torch":
        generator = None
        if seed is not None:
            generator = torch.Generator(device=mu.device)
            generator.manual_seed(int(seed.item()) if isinstance(seed, torch.Tensor) else seed)
        return reference.reparameterize_kl(
            mu, logvar, eps=eps, generator=generator, logvar_clamp=logvar_clamp
        )

    if eps is None:
        if seed is None:
            seed = torch.randint(0, _SEED_HIGH, (1,), dtype=torch.int64, device=mu.device)
        elif not isinstance(seed, torch.Tensor):
            seed = torch.full((1,), seed, dtype=torch.int64, device=mu.device)  # a fill: no host sync
    if _eager_light():
        return _ReparameterizeKL.apply(mu, logvar, seed, eps, lo, hi)
    return _reparameterize_kl_op(mu, logvar, seed, eps, lo, hi)


def _gaussian(op: str, images, x, log_sigma, sigmoid: bool):
    _check_images(op, "logits" if sigmoid else "mean", images, "x", x)
    log_sigma = _check_log_sigma(op, images, log_sigma)
    learned = isinstance(log_sigma, torch.Tensor)
    if backend_for(*((images, x, log_sigma) if learned else (images, x))) == "torch":
        ref = reference.gaussian_nll_logits if sigmoid else reference.gaussian_nll
        return ref(images, x, log_sigma.clamp(*LOG_SIGMA_RANGE) if learned else log_sigma)
    # σ lives in the kernels, fixed (a float) or learned (a tensor, clamped there): one launch each way
    tensor, value = (log_sigma, 0.0) if learned else (None, log_sigma)
    if _eager_light():
        return _Gaussian.apply(images, x, tensor, value, sigmoid)
    return _gaussian_op(images, x, tensor, value, sigmoid)


def gaussian_nll(mean, x, log_sigma=0.0):
    """Σ_i [(x_i − m_i)²/(2σ²) + log σ + ½ log 2π] per image, (B,) float32 nats (constant included).

    mean, x: (B, ...) float tensors of one shape (NCHW images: contiguous, channels_last or strided).
    log_sigma: a float in [−40, 40] (fixed σ), or a tensor with one element (learned scalar σ) or shape
    (C,) (one σ per channel, dim 1 of `mean`); a tensor gets its gradient and is clamped to [−40, 40]
    (`torch.clamp`'s gradient; no host sync). Formula: the Gaussian log-density (−Normal(m, σ).log_prob(x)).
    Raises ValueError naming the argument: non-float or mismatched tensors, a bad `log_sigma` shape or type,
    a `log_sigma` float outside [−40, 40].
    """
    return _gaussian("gaussian_nll", mean, x, log_sigma, sigmoid=False)


def gaussian_nll_logits(logits, x, log_sigma=0.0):
    """NLL of x under N(sigmoid(logits), σ²) per image: `gaussian_nll(torch.sigmoid(logits), x, log_sigma)`,
    (B,) float32 nats, with the sigmoid fused into the kernels.

    logits: (B, ...) float tensor (a decoder's last pre-activation; any finite value, ±40 saturates fine);
    x: same shape, the target images (normally in [0, 1]). log_sigma: as in `gaussian_nll` (float in
    [−40, 40], or a one-element or per-channel (C,) tensor, learned, clamped to [−40, 40]).
    Forward reads logits and x; backward writes ∂logits (and ∂x when x requires grad): the mean image
    sigmoid(logits) is never stored, 5 B×N passes instead of 10 (byte counts in
    `vae_triton/kernels/gaussian_nll.py`). Raises ValueError as `gaussian_nll` does.
    """
    return _gaussian("gaussian_nll_logits", logits, x, log_sigma, sigmoid=True)


def bernoulli_nll(logits, x):
    """−Σ_i [x_i log p_i + (1 − x_i) log(1 − p_i)], p = sigmoid(logits), per image, (B,) float32 nats.

    x may be any value in [0, 1] (continuous binary cross-entropy on grey images); x gets a gradient
    when it requires one. Raises ValueError naming the argument for non-float or mismatched tensors.
    """
    op = "bernoulli_nll"
    _check_images(op, "logits", logits, "x", x)
    if backend_for(logits, x) == "torch":
        return reference.bernoulli_nll(logits, x)
    if _eager_light():
        return _BernoulliNLL.apply(logits, x)
    return _bernoulli_nll_op(logits, x)
