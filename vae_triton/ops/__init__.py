"""Public fused ops: the reparameterization with its KL, and the two reconstruction NLLs. Each loss term is
a per-image sum in nats, shape (B,), float32.

    reparameterize_kl(mu, logvar, *, seed=None, eps=None, logvar_clamp=(-30., 20.)) -> (z, kl)
    reparameterize_iw(mu, logvar, K, *, seed=None, eps=None, logvar_clamp=(-30., 20.))
        -> (z (K, B, D), log q(z_k|x) − log p(z_k) (K, B) float32 nats)   (the IW bound's latent step)
    gaussian_nll(mean, x, log_sigma=0.0) -> (B,) float32 nats
    gaussian_nll_logits(logits, x, log_sigma=0.0) -> (B,) float32 nats   (mean = sigmoid(logits), fused)
    bernoulli_nll(logits, x) -> (B,) float32 nats

One file per op (`reparameterization.py`, `reparameterize_iw.py`, `gaussian.py`, `bernoulli.py`) holds its
launchers, its autograd spec and its public function; `_common.py` holds the dispatch (`backend_for`:
Triton on CUDA, the torch reference `vae_triton.reference` on CPU and for float64;
`VAE_TRITON_BACKEND=triton|torch` forces one), the input checks, and the generator of each op's two
autograd wrappers (a light `autograd.Function` in eager mode, a `torch.library.custom_op` under
`torch.compile`; `eager_wrapper("custom_op")` switches eager calls to the latter).

Per call the host validates Python scalars and tensor metadata only (nothing allocated, no sync); what
depends only on shapes and strides is cached; σ, fixed or learned, is computed inside the Gaussian kernels
(one launch forward, one backward, per op). The random seed travels as a 1-element int64 tensor on the
device (drawn there with `torch.randint` when `seed=None`), so there is no host sync and no recompilation
per seed.

Value ranges (outside them a ValueError names the argument and the range; inside them no op returns NaN
for finite inputs — images with x − mean finite in float32, Bernoulli targets in [0, 1]): `log_sigma`
within LOG_SIGMA_RANGE = [−40, 40] (σ² and 1/σ² stay finite normal float32 numbers); a tensor
`log_sigma` is clamped to that range on the device (in the kernel, or by `torch.clamp` on the torch path:
no host sync, `torch.clamp`'s gradient). `logvar_clamp` high ≤ LOGVAR_MAX = 88 (exp(logvar) finite in
float32); with `logvar_clamp=None`, logvar itself must stay ≤ 88. Sums that exceed float32 give ±inf.

Gradients on the Triton path are first order: differentiating a gradient taken with `create_graph=True`
raises a RuntimeError that names the fix. The torch reference path supports double backward.
"""

from ._common import BACKEND_ENV, TRITON_AVAILABLE, TRITON_IMPORT_ERROR, backend_for, eager_wrapper
from .bernoulli import bernoulli_nll
from .gaussian import LOG_SIGMA_RANGE, gaussian_nll, gaussian_nll_logits
from .reparameterization import LOGVAR_MAX, reparameterize_kl
from .reparameterize_iw import reparameterize_iw

__all__ = [
    "BACKEND_ENV",
    "LOGVAR_MAX",
    "LOG_SIGMA_RANGE",
    "TRITON_AVAILABLE",
    "TRITON_IMPORT_ERROR",
    "backend_for",
    "bernoulli_nll",
    "eager_wrapper",
    "gaussian_nll",
    "gaussian_nll_logits",
    "reparameterize_iw",
    "reparameterize_kl",
]
