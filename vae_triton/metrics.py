"""Evaluation that makes every term of log p(x) = ELBO + KL[q(z|x) ‖ p(z|x)] measurable.

Any model that follows the model protocol (docs/design.md) works: `encode(x) -> (mu, logvar)` of a diagonal
Gaussian q(z|x), `decode(z) -> output`, `recon_nll(output, x) -> (B,)` nats, with the prior N(0, I).
Every per-image number is in nats, shape (B,).

- `elbo`: E_q[log p(x|z)] − β·KL[q(z|x) ‖ p(z)], Monte Carlo recon term, analytic KL.
- `iw_log_likelihood`: the importance-weighted bound (Burda et al. 2016)
      log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x),
  which rises to log p(x) as K grows; `iw − elbo` estimates KL[q(z|x) ‖ p(z|x)].
- `posterior_on_grid`, `gap_decomposition` (from `vae_triton.posterior`): for 2-latent models, every term
  of the identity by quadrature, and the gap split into its approximation and amortisation parts.
- `bits_per_dim`, `mse`, `psnr`, `kl_per_dim`, `active_units`, `mig`, and `evaluate_model`, which runs
  all of them over a dataset in batches.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ops
from .likelihoods import DEQUANTIZED, DISCRETE_BINARY, BpdConvention, Gaussian, Likelihood, likelihood_for
from .posterior import GapDecomposition, PosteriorGrid, gap_decomposition, posterior_on_grid  # noqa: F401
from .reference import DEFAULT_LOGVAR_CLAMP

# One decoder pass of the IW bound decodes about this many (image, sample) pairs when chunk=None.
ROWS_PER_PASS = 1024
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016
MIG_BINS = 20  # Chen et al. 2018 / Locatello et al. 2019 discretise each latent into 20 bins
BPD_DEQUANTIZED = DEQUANTIZED.formula
BPD_DISCRETE = DISCRETE_BINARY.formula


# ---------------------------------------------------------------------------------------- helpers


def _check_count(name: str, value, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer ({hint}), got {value!r}")
    return int(value)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _logvar_clamp(model) -> tuple[float, float]:
    """The clamp the model trains with (its config's), so q here is the q it was trained as."""
    return tuple(getattr(getattr(model, "config", None), "logvar_clamp", DEFAULT_LOGVAR_CLAMP))


def _repeat_rows(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, ...) → (k·B, ...), sample-major: row s·B + b is the s-th copy of row b."""
    return t.repeat(k, *([1] * (t.dim() - 1)))


def _draw_eps(shape: tuple[int, int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device.type != like.device.type:
        raise ValueError(
            f"`generator` is on {generator.device} but the latents are on {like.device}: "
            f"create it with torch.Generator(device={str(like.device)!r})"
        )
    return torch.randn(shape, generator=generator, device=like.device, dtype=_compute_dtype(like))


def _sample_q(mu, logvar, k: int, clamp, eps):
    """k draws of z ~ q(z|x) per row, as one launch of the fused op over k·B rows: (z (k·B, D), kl (B,)).

    eps=None lets the kernel draw ε (Philox seeded from torch's RNG, so `torch.manual_seed` reproduces it).
    """
    z, kl = ops.reparameterize_kl(_repeat_rows(mu, k), _repeat_rows(logvar, k), eps=eps, logvar_clamp=clamp)
    return z, kl[: mu.shape[0]]


# ------------------------------------------------------------------------------- ELBO and IW bound


class ElboTerms(NamedTuple):
    """recon_nll: −E_q[log p(x|z)] (Monte Carlo); kl: KL[q(z|x) ‖ N(0, I)] (analytic). (B,) nats each."""

    recon_nll: torch.Tensor
    kl: torch.Tensor


def elbo_terms(model, x: torch.Tensor, *, num_samples: int = 1, generator=None) -> ElboTerms:
    """The two ELBO terms per image; the recon term averages `num_samples` draws of z ~ q(z|x)."""
    s = _check_count("num_samples", num_samples, "draws of z per image for the reconstruction term")
    mu, logvar = model.encode(x)
    eps = None if generator is None else _draw_eps((s * mu.shape[0], mu.shape[1]), mu, generator)
    z, kl = _sample_q(mu, logvar, s, _logvar_clamp(model), eps)
    recon = model.recon_nll(model.decode(z), _repeat_rows(x, s))
    return ElboTerms(recon.view(s, -1).mean(dim=0), kl)


def elbo(model, x: torch.Tensor, beta: float = 1.0, *, num_samples: int = 1, generator=None) -> torch.Tensor:
    """ELBO per image, (B,) nats: −recon_nll − β·KL (β = 1 is the bound on log p(x)). Differentiable."""
    terms = elbo_terms(model, x, num_samples=num_samples, generator=generator)
    return -(terms.recon_nll + beta * terms.kl)


class IWEstimate(NamedTuple):
    """From one importance-sampling pass, (B,) nats each.

    log_likelihood: the IWAE bound with K samples. recon_nll: −log p(x|z) averaged over the same K
    samples; kl: the analytic KL[q ‖ p(z)]. So `elbo` = −(recon_nll + kl) is the K-sample ELBO estimate and
    `gap` = log_likelihood − elbo estimates KL[q(z|x) ‖ p(z|x)] (biased low for finite K).
    """

    log_likelihood: torch.Tensor
    recon_nll: torch.Tensor
    kl: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.recon_nll + self.kl)

    @property
    def gap(self) -> torch.Tensor:
        return self.log_likelihood - self.elbo


def _log_weight_chunks(model, x, num_samples: int, chunk: int | None, generator):
    """Yield (log_w (k, B), recon_nll (k, B), kl (B,)) for successive chunks of the K importance samples.

    log w = log p(x|z) − [log q(z|x) − log p(z)], z ~ q(z|x), in the compute dtype (fp64 for fp64 models);
    the bracket is `ops.reparameterize_iw`'s log ratio, computed from ε itself in the same launch as z.
    """
    k_total = _check_count("num_samples", num_samples, "importance samples K per image")
    mu, logvar = model.encode(x)
    batch, dim = mu.shape
    step = (
        max(1, ROWS_PER_PASS // max(batch, 1))
        if chunk is None
        else _check_count("chunk", chunk, "importance samples decoded per pass for each image")
    )
    clamp = _logvar_clamp(model)
    cdt = _compute_dtype(mu)
    kl = kl_to_prior(mu, logvar, clamp).sum(dim=1)
    for start in range(0, k_total, step):
        k = min(step, k_total - start)
        eps = _draw_eps((k * batch, dim), mu, generator).view(k, batch, dim)
        z, log_ratio = ops.reparameterize_iw(mu, logvar, k, eps=eps, logvar_clamp=clamp)
        recon = model.recon_nll(model.decode(z.view(k * batch, dim)), _repeat_rows(x, k))
        recon = recon.to(cdt).view(k, batch)
        yield -recon - log_ratio.to(cdt), recon, kl


@torch.no_grad()
def importance_weighted(
    model,
    x: torch.Tensor,
    num_samples: int,
    chunk: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> IWEstimate:
    """K = `num_samples` importance samples per image, streamed `chunk` at a time (running logsumexp).

    Memory is that of one decoder pass over chunk·B images, whatever K is (K = 5000 is fine). `chunk`
    defaults to max(1, 1024 // B). Each chunk is one launch of `ops.reparameterize_iw` for its chunk·B
    samples, which returns z and log q(z|x) − log p(z) = Σ_d [−½ε² − ½ log σ² + ½ z²] together, computed
    from ε itself (recovering ε as (z − μ)/σ would cancel catastrophically where σ ≪ |μ|, σ = e⁻¹⁵ at the
    logvar clamp). ε is drawn with torch.randn (from `generator` if given) and injected, so a generator
    reproduces the estimate on any device. kl is the analytic KL[q ‖ N(0, I)] (`kl_to_prior`).
    Evaluation only (no gradients).
    """
    log_sum_w, recon_sum, kl = None, None, None
    for log_w, recon, kl in _log_weight_chunks(model, x, num_samples, chunk, generator):
        if log_sum_w is None:
            log_sum_w = torch.full_like(kl, -math.inf)
            recon_sum = torch.zeros_like(kl)
        log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_w, dim=0))
        recon_sum += recon.sum(dim=0)
    return IWEstimate(log_sum_w - math.log(num_samples), recon_sum / num_samples, kl)


@torch.no_grad()
def log_importance_weights(
    model, x: torch.Tensor, num_samples: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """All S = `num_samples` log importance weights log p(x, z_s) − log q(z_s|x), z_s ~ q(z|x): (S, B) nats.

    E[log w] is the ELBO and log E[w] = log p(x); `iw_bounds_by_k` groups them into IW bounds.
    """
    return torch.cat([log_w for log_w, _, _ in _log_weight_chunks(model, x, num_samples, None, generator)])


class IWBounds(NamedTuple):
    """IW bounds for several K from one set of S log weights, each (len(ks), B) nats.

    mean[i]: the average over the S // K_i disjoint groups of K_i weights of log (1/K_i) Σ w, an unbiased
    estimate of the K_i-sample bound E[log (1/K) Σ_k w_k]; sem[i]: its standard error over the groups
    (NaN with a single group).
    """

    ks: tuple[int, ...]
    mean: torch.Tensor
    sem: torch.Tensor


def iw_bounds_by_k(log_w: torch.Tensor, ks) -> IWBounds:
    """Estimates of the K-sample IW bound for each K in `ks` from (S, B) log weights (S ≥ max(ks)).

    By Jensen's inequality E[log (1/K) Σ w] ≤ log E[w] = log p(x), and the bound rises with K
    (Burda et al. 2016, Theorem 1): K = 1 is the ELBO.
    """
    ks = tuple(_check_count("K", k, "importance samples per bound") for k in ks)
    s = log_w.shape[0]
    if not ks or max(ks) > s:
        raise ValueError(f"every K must be in [1, {s}] (the number of log weights), got {ks}")
    means, sems = [], []
    for k in ks:
        groups = s // k
        per_group = torch.logsumexp(log_w[: groups * k].view(groups, k, -1), dim=1) - math.log(k)
        means.append(per_group.mean(dim=0))
        sem = per_group.std(dim=0) / math.sqrt(groups) if groups > 1 else torch.full_like(means[-1], math.nan)
        sems.append(sem)
    return IWBounds(ks, torch.stack(means), torch.stack(sems))


def iw_log_likelihood(
    model,
    x: torch.Tensor,
    num_samples: int,
    chunk: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The importance-weighted lower bound on log p(x) with K = `num_samples`, (B,) nats.

    K = 1 is an (unbiased) ELBO estimate; the bound rises toward log p(x) as K grows and equals it, for
    any K, when q(z|x) is the exact posterior. See `importance_weighted` for chunking and the noise.
    """
    return importance_weighted(model, x, num_samples, chunk, generator=generator).log_likelihood


# ------------------------------------------------------------------------ per-image and latent stats


def bits_per_dim(nll_nats, num_dims: int, *, dequantized: bool = True):
    """Nats per image → bits per dimension (float or tensor in, same out).

    dequantized=True: the model is a density on [0, 1]^D scored on 8-bit data; with uniform
    dequantization −log P(x) ≤ NLL + D·ln 256, so bpd = (NLL + D·ln 256) / (D·ln 2). A uniform density
    gives 8. dequantized=False: the model is already a probability mass function over the pixel values
    (a Bernoulli decoder on binary images): bpd = NLL / (D·ln 2).
    """
    d = _check_count("num_dims", num_dims, "D = C·H·W of one image")
    shift = d * math.log(256.0) if dequantized else 0.0
    return (nll_nats + shift) / (d * math.log(2.0))


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error over pixels, (B,) (a pixel mean: PSNR is defined on it)."""
    if x.shape != x_hat.shape:
        raise ValueError(
            f"`x_hat` has shape {tuple(x_hat.shape)} but `x` has {tuple(x.shape)}; they must match"
        )
    diff = x.float() - x_hat.float()
    return (diff * diff).flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, x_hat: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, 10·log10(max² / MSE), (B,). MSE is floored at 1e-10 (≤ 100 dB for max 1)."""
    return 10.0 * torch.log10(max_value**2 / mse(x, x_hat).clamp(min=1e-10))


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor, logvar_clamp=DEFAULT_LOGVAR_CLAMP) -> torch.Tensor:
    """KL[N(μ, σ²) ‖ N(0, 1)] = ½(σ² + μ² − 1 − log σ²) of each element, same shape, in nats.

    The one per-dimension KL of the toolkit (`kl_per_dim`, `free_bits_kl`, `posterior_on_grid`): log σ² is
    clamped to `logvar_clamp` as the fused op clamps it, so these numbers sum to the op's per-image KL.
    Computed in float32 (float64 stays float64).
    """
    cdt = torch.float64 if logvar.dtype == torch.float64 else torch.float32
    lv = logvar.to(cdt).clamp(*logvar_clamp)
    m = mu.to(cdt)
    return 0.5 * (lv.exp() + m * m - 1.0 - lv)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor, logvar_clamp=DEFAULT_LOGVAR_CLAMP) -> torch.Tensor:
    """KL[q(z_d|x) ‖ N(0, 1)] of each latent dimension averaged over the rows (the data), (D,) fp32 nats."""
    return kl_to_prior(mu.float(), logvar.float(), logvar_clamp).mean(dim=0)


def free_bits_kl(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float, logvar_clamp=DEFAULT_LOGVAR_CLAMP):
    """Σ_d max(mean_b KL_bd, λ): the free-bits KL term (Kingma et al. 2016), a float32 scalar, nats."""
    return kl_per_dim(mu, logvar, logvar_clamp).clamp(min=free_bits).sum()


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Burda et al. 2016: latent d is active when Cov_x(E_q[z_d|x]) = Var over data of μ_d(x) > threshold.

    mu: (N, D) posterior means of N ≥ 2 images. The variance is the population variance of the N
    evaluated images (divisor N, `correction=0`): the statistic describes that set of images, as Burda et
    al.'s Cov_x over the data does, so the same images give the same count in the training log and in
    `train.evaluate`. (With N = 512 the unbiased divisor N − 1 moves the threshold by 0.2 %.)
    Raises ValueError for another shape or N < 2.
    """
    if mu.dim() != 2 or mu.shape[0] < 2:
        raise ValueError(f"`mu` must be (N, D) posterior means of N ≥ 2 images, got shape {tuple(mu.shape)}")
    return int((mu.float().var(dim=0, correction=0) > threshold).sum().item())


def is_binary(x: torch.Tensor) -> bool:
    """True when every value of the images `x` is exactly 0 or 1 (one reduction, one host sync)."""
    return bool(((x == 0) | (x == 1)).all().item())


def likelihood_of(model) -> Likelihood:
    """The model's `Likelihood` object: `model.likelihood`, else built from `model.config`, else a
    Gaussian (a model outside this toolkit is scored as a density)."""
    lik = getattr(model, "likelihood", None)
    if isinstance(lik, Likelihood):
        return lik
    config = getattr(model, "config", None)
    return likelihood_for(config) if hasattr(config, "likelihood") else Gaussian()


def bpd_convention(model, binary: bool) -> BpdConvention | None:
    """The bits/dim convention for `model` on data that is (`binary`) or is not all {0, 1} pixels.

    The likelihood decides (`Likelihood.bpd_convention`): a density (Gaussian) is dequantized, a pmf over
    binary pixels (Bernoulli) is not, and a Bernoulli decoder on grey pixels gets None (no bits/dim: its
    NLL is a cross-entropy, not a normalised likelihood). The training log and `evaluate_model` both ask
    here, so they cannot disagree.
    """
    return likelihood_of(model).bpd_convention(binary)


# ----------------------------------------------------------------------------------------------- MIG


def discretize(codes, num_bins: int = MIG_BINS) -> np.ndarray:
    """Each column of (N, D) codes into `num_bins` equal-width bins over its observed range: int (N, D)."""
    codes = np.asarray(codes, dtype=np.float64)
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], bins=num_bins)
        out[:, d] = np.digitize(codes[:, d], edges[1:-1])
    return out


def _entropy(labels: np.ndarray) -> float:
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(-(p * np.log(p)).sum())


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in I(a; b) in nats of two integer label arrays: H(a) + H(b) − H(a, b)."""
    joint = a.astype(np.int64) * (int(b.max()) + 1) + b
    return max(_entropy(a) + _entropy(b) - _entropy(joint), 0.0)


def mutual_information_matrix(codes, factors, num_bins: int = MIG_BINS) -> np.ndarray:
    """I(z_d; v_f) in nats, (D, F), with each latent discretised into `num_bins` bins."""
    codes, factors = _check_codes_factors(codes, factors)
    binned = discretize(codes, _check_count("num_bins", num_bins, "histogram bins per latent"))
    return np.array(
        [
            [_mutual_information(binned[:, d], factors[:, f]) for f in range(factors.shape[1])]
            for d in range(binned.shape[1])
        ]
    )


def mig_per_factor(codes, factors, num_bins: int = MIG_BINS) -> np.ndarray:
    """(I(z_j*; v_f) − max_{j≠j*} I(z_j; v_f)) / H(v_f) per factor, (F,); NaN for a constant factor."""
    codes, factors = _check_codes_factors(codes, factors)
    mi = mutual_information_matrix(codes, factors, num_bins)
    top = -np.sort(-mi, axis=0)
    second = top[1] if mi.shape[0] > 1 else np.zeros(mi.shape[1])
    entropies = np.array([_entropy(factors[:, f]) for f in range(factors.shape[1])])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(entropies > 0, (top[0] - second) / entropies, np.nan)


def mig(codes, factors, num_bins: int = MIG_BINS) -> float:
    """Mutual Information Gap (Chen et al. 2018), averaged over the non-constant factors; in [0, 1].

    codes: (N, D) latent codes (the posterior means μ(x), as in disentanglement_lib); factors: (N, F)
    integer ground-truth factor values of the same images.
    """
    return _average_mig(mig_per_factor(codes, factors, num_bins))


def _average_mig(per_factor: np.ndarray) -> float:
    if np.all(np.isnan(per_factor)):
        raise ValueError("every factor is constant over these images: MIG needs factors that vary")
    return float(np.nanmean(per_factor))


def _check_codes_factors(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    codes = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    factors = factors.detach().cpu().numpy() if isinstance(factors, torch.Tensor) else np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors) or len(codes) < 2:
        raise ValueError(
            f"`codes` must be (N, D) and `factors` (N, F) for the same N ≥ 2 images, got "
            f"{codes.shape} and {factors.shape}"
        )
    if not np.issubdtype(factors.dtype, np.integer) or factors.min() < 0:
        raise ValueError(
            f"`factors` must hold non-negative integer factor indices, got dtype {factors.dtype}"
        )
    if not np.isfinite(codes).all():
        raise ValueError("`codes` contains NaN or inf: the encoder diverged")
    return codes, factors


# ------------------------------------------------------------------------------ over a whole dataset


def _model_device(model) -> torch.device:
    return next(iter(model.parameters())).device


def iter_batches(images, batch_size: int, device) -> Iterator[torch.Tensor]:
    """Float batches in [0, 1] on `device` from uint8 (N, C, H, W) arrays/memmaps, or float tensors as is."""
    size = _check_count("batch_size", batch_size, "images per batch")
    for start in range(0, len(images), size):
        block = images[start : start + size]
        if isinstance(block, np.ndarray):
            block = torch.from_numpy(np.array(block))  # a copy: memmaps are read-only
        block = block.to(device)
        # uint8 → [0, 1]; float tensors keep their dtype (a float64 model gets float64 data).
        yield block.float().div_(255.0) if block.dtype == torch.uint8 else block


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not enabled)


class _EvalMode:
    """Eval mode (BatchNorm running stats) for the block, the previous mode restored after."""

    def __init__(self, model):
        self.model, self.was_training = model, getattr(model, "training", False)

    def __enter__(self):
        if hasattr(self.model, "eval"):
            self.model.eval()

    def __exit__(self, *exc):
        if hasattr(self.model, "train"):
            self.model.train(self.was_training)
        return False


@torch.no_grad()
def encode_images(
    model, images, *, batch_size: int = 256, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (μ, log σ²) of every image, each (N, D) float32 on the CPU."""
    mus, logvars = [], []
    with _EvalMode(model), _progress(len(images), "encode", progress) as bar:
        for x in iter_batches(images, batch_size, _model_device(model)):
            mu, logvar = model.encode(x)
            mus.append(mu.float().cpu())
            logvars.append(logvar.float().cpu())
            bar.update(len(x))
    return torch.cat(mus), torch.cat(logvars)


def latent_metrics(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    factors=None,
    *,
    factor_names=None,
    logvar_clamp=DEFAULT_LOGVAR_CLAMP,
    num_bins: int = MIG_BINS,
) -> dict:
    """Per-dimension KL, active units and (given factors) MIG of the posteriors (μ, log σ²) of N images."""
    per_dim = kl_per_dim(mu, logvar, logvar_clamp)
    result = {
        "latent_images": int(mu.shape[0]),
        "latent_dim": int(mu.shape[1]),
        "kl_per_dim": [round(v, 5) for v in per_dim.tolist()],
        "active_units": active_units(mu),
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
    }
    if factors is not None:
        per_factor = mig_per_factor(mu, factors, num_bins)
        names = list(factor_names) if factor_names else [f"factor{f}" for f in range(len(per_factor))]
        if len(names) != len(per_factor):
            raise ValueError(f"`factor_names` has {len(names)} names for {len(per_factor)} factor columns")
        result["mig"] = _average_mig(per_factor)
        result["mig_per_factor"] = {
            n: (None if math.isnan(v) else round(float(v), 5)) for n, v in zip(names, per_factor, strict=True)
        }
        result["mig_bins"] = num_bins
    return result


def _mean_sem(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    sem = v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return v.mean().item(), sem


@torch.no_grad()
def likelihood_metrics(
    model,
    images,
    *,
    iw_samples: int = 0,
    iw_chunk: int | None = None,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict:
    """Recon NLL, KL, ELBO, IW log-likelihood (iw_samples = K > 0), the gap, bits/dim, MSE and PSNR.

    Means over the images in nats, with standard errors (`*_sem`). With K > 0 the ELBO's recon term
    averages the same K samples the IW bound uses, so the gap IW − ELBO is a low-noise estimate of
    KL[q(z|x) ‖ p(z|x)]; with K = 0 it is a one-sample estimate and there is no IW bound.
    Reconstructions for MSE/PSNR decode the posterior mean (`model.reconstruct`), when the model has one.
    """
    if isinstance(iw_samples, bool) or not isinstance(iw_samples, numbers.Integral) or iw_samples < 0:
        raise ValueError(f"`iw_samples` must be 0 (ELBO only) or a positive K, got {iw_samples!r}")
    columns: dict[str, list[torch.Tensor]] = {"recon_nll": [], "kl": [], "iw": [], "mse": [], "psnr": []}
    binary, num_dims = True, None
    with (
        _EvalMode(model),
        _progress(len(images), f"IW K={iw_samples}" if iw_samples else "ELBO", progress) as bar,
    ):
        for x in iter_batches(images, batch_size, _model_device(model)):
            num_dims = x[0].numel()
            binary = binary and is_binary(x)
            if iw_samples:
                est = importance_weighted(model, x, iw_samples, iw_chunk, generator=generator)
                columns["iw"].append(est.log_likelihood.double().cpu())
                recon, kl = est.recon_nll, est.kl
            else:
                recon, kl = elbo_terms(model, x, generator=generator)
            columns["recon_nll"].append(recon.double().cpu())
            columns["kl"].append(kl.double().cpu())
            if hasattr(model, "reconstruct"):
                x_hat = model.reconstruct(x)
                columns["mse"].append(mse(x, x_hat).cpu())
                columns["psnr"].append(psnr(x, x_hat).cpu())
            bar.update(len(x))
    if num_dims is None:
        raise ValueError("`images` is empty: nothing to evaluate")
    cols = {k: torch.cat(v) for k, v in columns.items() if v}
    elbo_values = -(cols["recon_nll"] + cols["kl"])
    result = {"images": len(elbo_values), "num_dims": num_dims, "iw_samples": int(iw_samples)}
    for name, values in (("recon_nll", cols["recon_nll"]), ("kl", cols["kl"]), ("elbo", elbo_values)):
        result[name], result[f"{name}_sem"] = _mean_sem(values)
    if "iw" in cols:
        result["iw_log_likelihood"], result["iw_log_likelihood_sem"] = _mean_sem(cols["iw"])
        result["gap"], result["gap_sem"] = _mean_sem(cols["iw"] - elbo_values)
    for name in ("mse", "psnr"):
        if name in cols:
            result[name] = cols[name].double().mean().item()
    result.update(_bpd_fields(model, result, binary))
    return result


def _bpd_fields(model, result: dict, binary: bool) -> dict:
    """bits/dim of the ELBO and (if computed) the IW bound, under the convention that applies."""
    convention = bpd_convention(model, binary)
    if convention is None:
        label = likelihood_of(model).label
        return {"bpd_convention": f"none: a {label} decoder on grey pixels is not a normalised likelihood"}
    dims, dequantized = result["num_dims"], convention.dequantized
    fields = {"bpd_convention": convention.formula}
    fields["bpd_elbo"] = bits_per_dim(-result["elbo"], dims, dequantized=dequantized)
    if "iw_log_likelihood" in result:
        fields["bpd_iw"] = bits_per_dim(-result["iw_log_likelihood"], dims, dequantized=dequantized)
    return fields


def evaluate_model(
    model,
    images,
    factors=None,
    *,
    factor_names=None,
    iw_samples: int = 0,
    iw_chunk: int | None = None,
    batch_size: int = 32,
    num_bins: int = MIG_BINS,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict:
    """Every metric of this module on the same images: `likelihood_metrics` + `latent_metrics`.

    images: uint8 (N, C, H, W) array/memmap or a float tensor in [0, 1]; factors: optional (N, F) ints.
    """
    result = likelihood_metrics(
        model,
        images,
        iw_samples=iw_samples,
        iw_chunk=iw_chunk,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
    )
    mu, logvar = encode_images(model, images, batch_size=max(batch_size, 64), progress=progress)
    result.update(
        latent_metrics(
            mu,
            logvar,
            factors,
            factor_names=factor_names,
            logvar_clamp=_logvar_clamp(model),
            num_bins=num_bins,
        )
    )
    return result
