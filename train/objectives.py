"""Training objectives of `python -m train --objective`: the β-ELBO (`VAE.forward`) and the
importance-weighted bound (`--objective iwae --iw-k K`; Burda et al. 2016, "Importance Weighted
Autoencoders").

With K posterior samples z_kb ~ q(z|x_b) per image (the fused `vae_triton.ops.reparameterize_iw` draws
them and their log q(z_kb|x_b) − log p(z_kb)), the decoder scores all K·B of them at once and

    log w_kb = log p(x_b|z_kb) − β·[log q(z_kb|x_b) − log p(z_kb)]
    loss     = −mean_b log (1/K) Σ_k w_kb            (a per-image sum in nats, like the ELBO's)

β = 1 is the IW bound L_K(x) ≤ log p(x), which rises with K (Burda et al. 2016, Theorem 1). β tempers the
prior-to-posterior ratio of every weight: K = 1 gives the β-ELBO with a one-sample (Monte Carlo) KL,
whose expectation is `VAE.forward`'s analytic one, and the KL warm-up ramps β from 0 as it does for the
ELBO, so the defaults run unchanged. Free bits floor a per-dimension KL that this bound does not have:
`--free-bits` is refused with it.

The encoder gets the plain reparameterised gradient of the bound (no DReG estimator: not measured here).
The step stays capture-safe (no host sync, static shapes; tests/train/test_iwae_objective.py).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from vae_triton import ops
from vae_triton.metrics import importance_weighted, kl_to_prior
from vae_triton.model import VAE, VAEConfig, VAEOutput

from .flags import option

if TYPE_CHECKING:
    from .config import RunConfig

OBJECTIVES = ("elbo", "iwae")
DEFAULT_IW_K = 5
# The fused ops index K·B·D latent values with int32 (`vae_triton.ops.reparameterize_iw`).
INDEX_LIMIT = 2**31 - 1
FLOAT32_BYTES = 4
HELD_OUT_CHUNK = 256  # images per importance-sampling pass of the final held-out IW bound


def prepare(cfg: RunConfig) -> None:
    """Check the objective flags against each other and fill in the default K (`DEFAULT_IW_K`).

    Raises ValueError naming the flag: `--iw-k` without `--objective iwae`, and `--free-bits` with it.
    Reads the config only (nothing is loaded or written)."""
    if cfg.objective != "iwae":
        if cfg.iw_k is not None:
            raise ValueError(
                f"{option('iw_k')} {cfg.iw_k}: applies to --objective iwae only; add --objective iwae or "
                f"drop {option('iw_k')}"
            )
        return
    if cfg.free_bits > 0:
        raise ValueError(
            f"{option('free_bits')} {cfg.free_bits:g}: free bits floor each latent dimension's KL term, "
            "which the importance-weighted bound does not have; drop --free-bits (β and the KL warm-up "
            "work with --objective iwae) or use --objective elbo"
        )
    if cfg.iw_k is None:
        cfg.iw_k = DEFAULT_IW_K


def check_fits(cfg: RunConfig, model_cfg: VAEConfig, world: int, device: torch.device) -> None:
    """Refuse an --iw-k × --batch-size whose K·B decoder rows cannot fit `device`, before training.

    Two limits: K·B·D latent values within int32 (the fused op's index range), and an estimate of the
    decoder's float32 memory for K·B rows (`decoder_bytes_per_row`) within the device's memory (a CUDA
    device's total memory; on the CPU, the machine's RAM). Raises ValueError naming both flags."""
    if cfg.objective != "iwae":
        return
    rows = cfg.iw_k * max(1, cfg.batch_size // world)
    what = f"{option('iw_k')} {cfg.iw_k} × {option('batch_size')} {cfg.batch_size}"
    fix = f"lower {option('iw_k')} or {option('batch_size')}"
    if rows * model_cfg.latent_dim > INDEX_LIMIT:
        raise ValueError(
            f"{what}: {rows} latent samples of {model_cfg.latent_dim} values per step exceed the fused ops' "
            f"int32 index range ({INDEX_LIMIT}); {fix}"
        )
    need, have = rows * decoder_bytes_per_row(model_cfg), device_memory(device)
    if have is not None and need > have:
        raise ValueError(
            f"{what}: decoding {rows} latent samples a step needs about {need / 2**30:.1f} GiB for the "
            f"decoder's activations and gradients, more than the {have / 2**30:.1f} GiB of {device}; {fix}"
        )


def decoder_bytes_per_row(model_cfg: VAEConfig) -> int:
    """Float32 bytes that one decoded latent row keeps during a training step: the output of every
    decoder layer and its gradient, plus the logits, their gradient and the target image of the NLL.
    Counted by a forward pass on the meta device (no memory, no compute); a lower estimate."""
    with torch.device("meta"):
        model = VAE(model_cfg)
    model.check_inputs = False
    sizes: list[int] = []
    layers = [*model.from_latent.modules(), *model.decoder.modules()]
    leaves = [m for m in layers if not list(m.children()) and not isinstance(m, nn.Identity)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel())) for m in leaves]
    try:
        model.decode(torch.zeros(1, model_cfg.latent_dim, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return FLOAT32_BYTES * (2 * sum(sizes) + 3 * model_cfg.num_pixels)


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory of `device`: a CUDA device's total, the machine's RAM for the CPU; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def iwae_forward(
    model: VAE,
    x: torch.Tensor,
    num_samples: int,
    beta: float | torch.Tensor = 1.0,
    *,
    eps: torch.Tensor | None = None,
) -> VAEOutput:
    """The IWAE loss of a batch (module docstring), as a `VAEOutput` the training step reads.

    x: (B, C, H, W) images in [0, 1]; num_samples: K ≥ 1; beta: a float or a 0-d tensor (the step's
    device scalar: no host sync); eps: inject the noise, (K, B, D) (tests), else the fused op draws it.
    Returns loss = −mean_b log (1/K) Σ_k w_kb (float32 scalar, nats, differentiable); recon_nll: (B,)
    −log p(x|z) averaged over the K samples; kl: (B,) the analytic KL[q(z|x) ‖ p(z)] (both detached,
    for the log: recon + kl is the K-sample ELBO estimate, ≤ the loss's bound for β = 1); z: (K·B, D);
    output: the decoder's (K·B, C, H, W) logits; mu, logvar: (B, D).
    """
    mu, logvar = model.encode(x)
    batch, dim = mu.shape
    clamp = model.config.logvar_clamp
    z, log_ratio = ops.reparameterize_iw(mu, logvar, num_samples, eps=eps, logvar_clamp=clamp)
    z = z.reshape(num_samples * batch, dim)  # sample-major: row k·B + b is z_kb
    output = model.decode(z)
    targets = x.repeat(num_samples, *([1] * (x.dim() - 1)))  # the same sample-major order
    recon = model.recon_nll(output, targets).view(num_samples, batch)
    log_w = -recon - beta * log_ratio.float()
    bound = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    kl = kl_to_prior(mu.detach(), logvar.detach(), clamp).sum(dim=1)
    return VAEOutput(-bound.mean(), recon.detach().mean(dim=0), kl, z, output, mu, logvar)


class IWAEObjective(nn.Module):
    """`VAE` with `forward(x, beta, *, free_bits=0.0, eps=None)` computing `iwae_forward` with K samples.

    The training step wraps this module (DDP, torch.compile) as it wraps the model for the ELBO; its
    parameters are the model's. `free_bits` must be 0 (`prepare` refuses the flag)."""

    def __init__(self, model: VAE, num_samples: int):
        super().__init__()
        self.model, self.num_samples = model, num_samples

    def forward(self, x, beta=1.0, *, free_bits: float = 0.0, eps=None) -> VAEOutput:
        if free_bits:
            raise ValueError("free_bits: not defined for the importance-weighted bound; use 0")
        return iwae_forward(self.model, x, self.num_samples, beta, eps=eps)


def training_module(model: VAE, cfg: RunConfig) -> nn.Module:
    """What the training step calls as `module(x, beta=..., free_bits=...)`: the model itself for the ELBO,
    an `IWAEObjective` for `--objective iwae`."""
    if cfg.objective == "iwae":
        return IWAEObjective(model, cfg.iw_k or DEFAULT_IW_K)
    return model


@torch.no_grad()
def final_numbers(model: VAE, cfg: RunConfig, x: torch.Tensor, *, seed: int = 0) -> dict:
    """The objective's numbers for the final report and the model card: {} for the ELBO; for iwae the
    objective, K and the held-out IW bound with the training K (`eval_iw_bound`, nats/image, mean over
    the images `x`, fixed noise from `seed`), the bound the run maximised."""
    if cfg.objective != "iwae":
        return {}
    k = cfg.iw_k or DEFAULT_IW_K
    was_training = model.training
    model.eval()
    g = torch.Generator(device=x.device).manual_seed(seed)
    bounds = [importance_weighted(model, c, k, generator=g).log_likelihood for c in x.split(HELD_OUT_CHUNK)]
    model.train(was_training)
    return {"objective": "iwae", "iw_k": k, "eval_iw_bound": torch.cat(bounds).mean().item()}
