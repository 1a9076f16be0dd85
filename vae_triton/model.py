"""Convolutional and MLP VAEs, their config dataclass, and safetensors save/load.

Loss terms are per-image sums in nats, shape (B,); the training loss is mean_b(recon_b + β·kl_b). The
reparameterization, the KL and the reconstruction NLL go through `vae_triton.ops` (the fused Triton
kernels on CUDA, the torch reference on CPU).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from einops import rearrange
from safetensors.torch import load_file
from torch import nn

from . import ops
from .io import write_json_atomic, write_safetensors
from .likelihoods import LIKELIHOODS, Gaussian, likelihood_for
from .metrics import free_bits_kl

FORMAT_VERSION = 1
MODEL_TYPE = "vae-triton-conv"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

SIGMA_MODES = Gaussian.SIGMA_MODES
NORMS = ("none", "batch")
ACTIVATIONS = ("relu", "leaky_relu", "tanh")
ARCHITECTURES = ("conv", "mlp")

# Bounds a config.json must keep before anything is allocated: a hostile or mistyped file (hidden_dim
# 1e6) would otherwise ask for gigabytes. Each is far above any model this toolkit trains (the CelebA-64
# preset: widths ≤ 512, latent 128, 64 px, 5 convs, 6.5 M parameters).
MAX_IMAGE_CHANNELS = 64
MAX_IMAGE_SIZE = 4096  # pixels per side
MAX_WIDTH = 65_536  # each of channels, hidden_dim, mlp_hidden
MAX_LATENT_DIM = 65_536
MAX_LAYERS = 64  # len(channels), len(mlp_hidden)
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32 weights: the most `from_pretrained` allocates
MAX_CONFIG_BYTES = 2**20  # config.json (architecture + training metadata) is a few kB
MAX_HEADER_BYTES = 16 * 2**20  # a safetensors header: ~100 bytes per tensor; ours have < 1000 tensors


class ConfigError(ValueError):
    """A saved model's `config.json` (or a config dict) is malformed; the message names the file and field."""


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a `VAE`. Every field is JSON-serialisable; `config.json` stores `asdict(config)`.

    Encoder: `len(channels)` convs of stride 2 (each halves the image), an optional fully connected
    layer of `hidden_dim`, then a linear map to (μ, log σ²). The decoder mirrors it with transposed
    convs. `head="conv"` ends the decoder like the common CelebA reference (one more upsampling block
    at width channels[0], then a 3×3 conv to the image channels); `head="deconv"` ends it with a single
    transposed conv straight to the image channels (the β-VAE paper's net).

    `arch="mlp"` replaces the convs by fully connected layers of widths `mlp_hidden` on the flattened
    C·H·W image (any size; `channels`, `kernel_size`, `hidden_dim` and `head` are then unused); the
    decoder mirrors the widths and ends with a linear map back to C·H·W. Configs saved before `arch`
    existed load as `conv`.
    """

    image_channels: int = 3
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    kernel_size: int = 3
    hidden_dim: int = 0
    latent_dim: int = 128
    norm: str = "batch"
    activation: str = "leaky_relu"
    head: str = "conv"
    likelihood: str = "gaussian"
    sigma: str = "channel"
    log_sigma: float = 0.0
    min_log_sigma: float = -6.0
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)
    arch: str = "conv"
    mlp_hidden: tuple[int, ...] = ()

    def __post_init__(self):
        # JSON gives lists back; keep tuples so configs compare equal after a round trip.
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "mlp_hidden", tuple(int(c) for c in self.mlp_hidden))
        object.__setattr__(self, "logvar_clamp", tuple(float(v) for v in self.logvar_clamp))
        self.validate()

    def validate(self) -> None:
        def bad(name, value, fix):
            raise ValueError(f"VAEConfig.{name}={_short_repr(value)} is invalid: {fix}")

        self._validate_sizes(bad)
        if self.likelihood not in LIKELIHOODS:
            bad("likelihood", self.likelihood, f"use one of {tuple(LIKELIHOODS)}")
        if self.sigma not in SIGMA_MODES:
            bad("sigma", self.sigma, f"use one of {SIGMA_MODES}")
        if self.norm not in NORMS:
            bad("norm", self.norm, f"use one of {NORMS}")
        if self.activation not in ACTIVATIONS:
            bad("activation", self.activation, f"use one of {ACTIVATIONS}")
        if self.arch not in ARCHITECTURES:
            bad("arch", self.arch, f"use one of {ARCHITECTURES}")
        if self.arch == "mlp" and (not self.mlp_hidden or min(self.mlp_hidden) < 1):
            bad("mlp_hidden", self.mlp_hidden, "the mlp architecture needs one positive width per layer")
        if self.head not in ("conv", "deconv"):
            bad("head", self.head, "use 'conv' or 'deconv'")
        if self.kernel_size not in (3, 4):
            bad("kernel_size", self.kernel_size, "use 3 (with output_padding) or 4")
        if self.image_channels < 1:
            bad("image_channels", self.image_channels, "needs at least one channel")
        if self.latent_dim < 1:
            bad("latent_dim", self.latent_dim, "needs at least one latent dimension")
        if not self.channels or min(self.channels) < 1:
            bad("channels", self.channels, "give one positive width per stride-2 conv layer")
        if self.hidden_dim < 0:
            bad("hidden_dim", self.hidden_dim, "use 0 (no hidden layer) or a positive width")
        factor = 2 ** len(self.channels)
        if self.image_size < 1:
            bad("image_size", self.image_size, "needs at least one pixel")
        if self.arch == "conv" and (self.image_size % factor or self.image_size < factor):
            bad("image_size", self.image_size, f"must be a multiple of 2**len(channels) = {factor}")
        lo, hi = self.logvar_clamp
        if not lo < hi:
            bad("logvar_clamp", self.logvar_clamp, "needs (low, high) with low < high")

    def _validate_sizes(self, bad) -> None:
        """Every size is an integer (not a bool) within its MAX_* bound, so no check allocates."""
        limits = {
            "image_channels": MAX_IMAGE_CHANNELS,
            "image_size": MAX_IMAGE_SIZE,
            "kernel_size": MAX_WIDTH,
            "hidden_dim": MAX_WIDTH,
            "latent_dim": MAX_LATENT_DIM,
        }
        for name, limit in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy ints are fine
                bad(name, value, "must be an integer")
            if value > limit:
                bad(name, value, f"must be at most {limit:,}")
        for name in ("channels", "mlp_hidden"):
            widths = getattr(self, name)
            if len(widths) > MAX_LAYERS:
                bad(name, widths, f"has {len(widths)} layers, at most {MAX_LAYERS} are allowed")
            if any(w > MAX_WIDTH for w in widths):
                bad(name, widths, f"each width must be at most {MAX_WIDTH:,}")

    @property
    def bottom_size(self) -> int:
        """Spatial size after the encoder convs."""
        return self.image_size // 2 ** len(self.channels)

    @property
    def num_pixels(self) -> int:
        """D = C·H·W, the data dimension used for bits/dim."""
        return self.image_channels * self.image_size**2

    @classmethod
    def preset(cls, name: str, **overrides) -> VAEConfig:
        """`celeba64`, `dsprites` or `small`, with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown VAEConfig field(s) {sorted(unknown)} in overrides")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["mlp_hidden"] = list(self.mlp_hidden)
        d["logvar_clamp"] = list(self.logvar_clamp)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | os.PathLike | None = None) -> VAEConfig:
        """Build a config from a JSON-style dict, checking every field's type before its value.

        `source` (e.g. the config.json path) prefixes every error. Raises `ConfigError` (a ValueError)
        naming the field: unknown fields, wrong types ("latent_dim": "ten", "channels": "abc") and
        values `validate` rejects.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}the model config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(
                f"{where}config has unknown field(s) {sorted(unknown)}: written by a newer version?"
            )
        kinds = {f.name: str(f.type) for f in fields(cls)}
        for name, value in d.items():
            problem = _field_type_problem(kinds[name], value)
            if problem:
                raise ConfigError(f"{where}field config.{name} = {_short_repr(value)} {problem}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ConfigError(f"{where}{e}") from None


def _short_repr(value: Any, limit: int = 80) -> str:
    """repr for an error message, cut short: a hostile config.json can hold a list of a million widths."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _field_type_problem(kind: str, value: Any) -> str | None:
    """Why `value` cannot fill a field annotated `kind` ("int", "tuple[float, float]"...); None if it can."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "int":
        return None if is_int else "must be an integer"
    if kind == "float":
        return None if _is_number(value) else "must be a finite number"
    if kind == "str":
        return None if isinstance(value, str) else "must be a string"
    if kind.startswith("tuple["):
        if not isinstance(value, list | tuple):
            return "must be a list"
        numbers = "float" in kind
        item_ok = _is_number if numbers else (lambda v: isinstance(v, int) and not isinstance(v, bool))
        if not all(item_ok(v) for v in value):
            return "must be a list of " + ("numbers" if numbers else "integers")
        if "..." not in kind and len(value) != kind.count(",") + 1:
            return f"must be a list of {kind.count(',') + 1} numbers"
    return None


PRESETS: dict[str, VAEConfig] = {
    # The common CelebA-64 reference (conv 32-64-128-256-512, 3×3 stride 2, BN + LeakyReLU, latent 128,
    # mirrored decoder). Gaussian decoder with a learned per-channel σ (the calibrated "σ-VAE" choice):
    # σ is fitted by maximum likelihood, so β keeps its meaning instead of hiding in a fixed σ.
    "celeba64": VAEConfig(),
    # Burgess et al. / Higgins et al. β-VAE net for 1×64² dSprites: 4 convs 32-32-64-64, 4×4 stride 2,
    # fc 256, latent 10, Bernoulli decoder.
    "dsprites": VAEConfig(
        image_channels=1,
        channels=(32, 32, 64, 64),
        kernel_size=4,
        hidden_dim=256,
        latent_dim=10,
        norm="none",
        activation="relu",
        head="deconv",
        likelihood="bernoulli",
        sigma="fixed",
    ),
    # The standard MLP VAE of the MNIST likelihood benchmarks (Burda, Grosse & Salakhutdinov, "Importance
    # Weighted Autoencoders", ICLR 2016, §5 and appendix: 784-200-200-50 with tanh for one stochastic
    # layer; Kingma & Welling 2014 used one hidden layer of 500): two deterministic hidden layers in the
    # encoder, mirrored in the decoder, a Bernoulli decoder on 1×28² binarized digits. Widths 512-256,
    # latent 16 and ReLU-family units train fastest on a CPU within a minute (bench/bench_digits.py).
    "mlp": VAEConfig(
        arch="mlp",
        image_channels=1,
        image_size=28,
        mlp_hidden=(512, 256),
        latent_dim=16,
        norm="none",
        activation="leaky_relu",
        likelihood="bernoulli",
        sigma="fixed",
    ),
    # A tiny net for CPU tests: 3×32², three convs.
    "small": VAEConfig(
        image_size=32,
        channels=(8, 16, 32),
        kernel_size=4,
        hidden_dim=64,
        latent_dim=8,
        norm="none",
        activation="relu",
        head="deconv",
    ),
}


class VAEOutput(NamedTuple):
    """What `VAE.forward` returns. Per-image terms are (B,) float32 nats; `loss` is a scalar."""

    loss: torch.Tensor
    recon_nll: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor
    output: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


def _activation(cfg: VAEConfig) -> nn.Module:
    return {"leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "tanh": nn.Tanh}[cfg.activation]()


def _mlp(cfg: VAEConfig, widths: tuple[int, ...]) -> nn.Sequential:
    """Linear + (BatchNorm1d) + activation for each consecutive pair of `widths`."""
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        norm = nn.BatchNorm1d(b) if cfg.norm == "batch" else nn.Identity()
        layers += [nn.Linear(a, b), norm, _activation(cfg)]
    return nn.Sequential(*layers)


def _block(cfg: VAEConfig, conv: nn.Module, width: int) -> nn.Sequential:
    norm = nn.BatchNorm2d(width) if cfg.norm == "batch" else nn.Identity()
    # A conv followed by BN needs no bias (BN's shift replaces it); keep the layer list uniform anyway.
    return nn.Sequential(conv, norm, _activation(cfg))


def _down(cfg: VAEConfig, cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, cfg.kernel_size, stride=2, padding=1)


def _up(cfg: VAEConfig, cin: int, cout: int) -> nn.ConvTranspose2d:
    # k=4,p=1 doubles the size exactly; k=3,p=1 needs output_padding=1 to do so.
    extra = 1 if cfg.kernel_size == 3 else 0
    return nn.ConvTranspose2d(cin, cout, cfg.kernel_size, stride=2, padding=1, output_padding=extra)


class VAE(nn.Module):
    """Convolutional (or MLP, `config.arch`) VAE with a diagonal-Gaussian posterior and a N(0, I) prior.

    The decoder likelihood is `self.likelihood` (a `vae_triton.likelihoods.Likelihood` built from
    `config.likelihood`); a learned σ is the parameter `log_sigma`.

    Inputs: float images and latents of another float dtype are cast to the model's dtype; integer or bool
    tensors, empty batches, a non-integer `n` and NaN/infinite β, z, temperature are refused with a
    ValueError naming the argument. `model.half()` and `model.to(torch.bfloat16)` run inference (encode,
    decode, forward, sample, reconstruct) on the CPU; outputs stay float32. Measured on the bundled dSprites
    models (β = 1 and 4, 6 example images, 64 prior samples, fixed noise) against float32: float16 changes
    images by at most 4e-3 to 1.5e-2 and the ELBO (≈ −46 to −82 nats) by at most 0.09 nats; bfloat16 by
    at most 2.5e-2 to 1.2e-1 and 0.46 to 1.0 nats. On the MLP digits model: fp16 1.6e-3 to 2.4e-3 and
    0.12 nats, bf16 1.2e-2 to 1.6e-2 and 0.36 nats (ELBO ≈ −126). Train in float32 (with autocast).
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise ValueError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.metadata: dict[str, Any] = {}
        # Check that images are finite and in [0, 1] (one host sync per call). The training loop turns it
        # off: its data is in [0, 1] by construction, and a sync per step would stall the GPU.
        self.check_inputs = True
        if cfg.arch == "mlp":
            self._build_mlp(cfg)
        else:
            self._build_conv(cfg)
        # The likelihood object owns the NLL, the mean image and the bits/dim convention; a learned scale
        # stays a parameter here, so that `log_sigma` keeps its name in model.safetensors.
        self.likelihood = likelihood_for(cfg)
        shape = self.likelihood.scale_shape(cfg.image_channels)
        if shape is not None:
            self.log_sigma = nn.Parameter(torch.full(shape, float(cfg.log_sigma)))
        else:
            self.register_parameter("log_sigma", None)

    def _build_mlp(self, cfg: VAEConfig) -> None:
        # encoder: D → h1 → … → hn → (μ, log σ²); decoder: latent → hn → … → h1 → D (logits or pre-sigmoid).
        widths = (cfg.num_pixels,) + cfg.mlp_hidden
        self.encoder = _mlp(cfg, widths)
        self.to_params = nn.Linear(widths[-1], 2 * cfg.latent_dim)
        self.from_latent = _mlp(cfg, (cfg.latent_dim,) + widths[::-1][:-1])
        self.decoder = nn.Linear(widths[1], cfg.num_pixels)

    def _build_conv(self, cfg: VAEConfig) -> None:
        widths = (cfg.image_channels,) + cfg.channels
        self.encoder = nn.Sequential(
            *[_block(cfg, _down(cfg, a, b), b) for a, b in zip(widths, widths[1:], strict=False)]
        )
        flat = cfg.channels[-1] * cfg.bottom_size**2
        to_params = [nn.Linear(flat, 2 * cfg.latent_dim)]
        from_latent = [nn.Linear(cfg.latent_dim, flat)]
        if cfg.hidden_dim:
            to_params = [
                nn.Linear(flat, cfg.hidden_dim),
                _activation(cfg),
                nn.Linear(cfg.hidden_dim, 2 * cfg.latent_dim),
            ]
            from_latent = [
                nn.Linear(cfg.latent_dim, cfg.hidden_dim),
                _activation(cfg),
                nn.Linear(cfg.hidden_dim, flat),
                _activation(cfg),
            ]
        self.to_params = nn.Sequential(*to_params)
        self.from_latent = nn.Sequential(*from_latent)

        rev = cfg.channels[::-1]
        ups = [_block(cfg, _up(cfg, a, b), b) for a, b in zip(rev, rev[1:], strict=False)]
        if cfg.head == "conv":
            head = [
                _block(cfg, _up(cfg, cfg.channels[0], cfg.channels[0]), cfg.channels[0]),
                nn.Conv2d(cfg.channels[0], cfg.image_channels, 3, padding=1),
            ]
        else:
            head = [_up(cfg, cfg.channels[0], cfg.image_channels)]
        self.decoder = nn.Sequential(*ups, *head)

    # ---- the model protocol -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) in [0, 1] → (μ, log σ²), each (B, latent_dim) in the model's dtype.

        Float images of another dtype are cast to the model's (float64 data on a float32 model, float32 data
        on a `model.half()`). Raises ValueError naming `x` for a wrong shape, an empty batch, an integer or
        bool dtype, and (while `check_inputs` is True) values outside [0, 1] or non-finite ones, with the
        conversion to use.
        """
        return self._encode(self._images(x, "x"))

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.arch == "mlp":
            h = self.encoder(rearrange(x, "b c h w -> b (c h w)"))
        else:
            h = rearrange(self.encoder(x), "b c h w -> b (c h w)")
        # Row-strided views of one tensor: the fused op reads them in place.
        mu, logvar = self.to_params(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_dim) → decoder output (B, C, H, W) float32: logits for both likelihoods; the
        mean image is `output_to_image(output)` = sigmoid(logits) (the Gaussian NLL fuses that sigmoid).

        Float latents of another dtype are cast to the model's. Raises ValueError naming `z` for a wrong
        shape, an empty batch, an integer or bool dtype, and (while `check_inputs` is True: one host sync)
        NaN or infinite values, which would decode to NaN images.
        """
        d = self.config.latent_dim
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != d or z.shape[0] < 1:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a float tensor of shape (B, {d}) with B ≥ 1, got {shape}")
        z = self._as_model_dtype(z, "z", "latents are real numbers: use z.float()")
        if self.check_inputs and not _capturing(z) and not bool(torch.isfinite(z).all()):
            raise ValueError("z holds NaN or infinite values (they decode to NaN images): find their source")
        return self._decode(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        h = self.from_latent(z)
        # fp32 logits: a bf16 sigmoid would quantise the mean the NLL scores.
        if cfg.arch == "mlp":
            s = cfg.image_size
            return rearrange(self.decoder(h).float(), "b (c h w) -> b c h w", h=s, w=s)
        s = cfg.bottom_size
        return self.decoder(rearrange(h, "b (c h w) -> b c h w", h=s, w=s)).float()

    def effective_log_sigma(self) -> torch.Tensor | float:
        """log σ of the decoder likelihood: a float when fixed, a tensor with gradient (floored at
        `config.min_log_sigma`) when learned. A likelihood without a scale (Bernoulli) gives the config's
        `log_sigma`, which its NLL does not use (a Gaussian baseline can still score the mean image)."""
        scale = self.likelihood.log_scale(self.log_sigma)
        return float(self.config.log_sigma) if scale is None else scale

    def recon_nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """−log p(x | z) per image, (B,) float32 nats; `output` is `decode`'s logits (`self.likelihood`)."""
        return self.likelihood.nll(output, x, self.log_sigma)

    def forward(
        self,
        x: torch.Tensor,
        beta: float | torch.Tensor = 1.0,
        *,
        free_bits: float = 0.0,
        eps: torch.Tensor | None = None,
    ) -> VAEOutput:
        """Negative β-ELBO of a batch: loss = mean_b(recon_b + β·kl_b).

        With `free_bits` λ > 0 the KL term of the loss becomes Σ_d max(mean_b KL_bd, λ) (Kingma et al.
        2016): dimensions below λ nats get no pressure. The reported `kl` is always the true KL.
        `eps` injects the reparameterization noise (tests, reproducibility). `x` as in `encode`.
        Raises ValueError for a Python `beta` or `free_bits` that is NaN or infinite; a tensor β is not
        inspected (that would cost a host sync in the training step).
        """
        for name, value in (("beta", beta), ("free_bits", free_bits)):
            if isinstance(value, numbers.Real) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        x = self._images(x, "x")
        mu, logvar = self._encode(x)
        z, kl = ops.reparameterize_kl(mu, logvar, eps=eps, logvar_clamp=self.config.logvar_clamp)
        output = self._decode(z)
        recon = self.recon_nll(output, x)
        kl_term = (
            kl.mean() if free_bits <= 0 else free_bits_kl(mu, logvar, free_bits, self.config.logvar_clamp)
        )
        loss = recon.mean() + beta * kl_term
        return VAEOutput(loss, recon, kl, z, output, mu, logvar)

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        """Decoder output (logits) → the likelihood's mean image in [0, 1], float32 (sigmoid for both)."""
        return self.likelihood.mean(output)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n images from the prior, z ~ N(0, temperature²·I), as mean images (n, C, H, W) float32 in [0, 1].

        Raises ValueError for an `n` that is not a positive integer, a `temperature` that is not a number ≥ 0,
        is NaN or infinite, or so large that z·temperature overflows the model's dtype or the decoder
        (half precision: from a few hundred).
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer number of samples, got {n!r}")
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            t = math.nan
        if isinstance(temperature, bool) or not (math.isfinite(t) and t >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (1 = the prior), got {temperature!r}")
        device = self._device()
        gen_device = generator.device if generator is not None else device
        z = torch.randn(int(n), self.config.latent_dim, generator=generator, device=gen_device).to(device)
        z = (z * t).to(self._dtype())
        images = self.output_to_image(self._decode(z)) if bool(torch.isfinite(z).all()) else None
        if images is None or not bool(torch.isfinite(images).all()):
            raise ValueError(
                f"temperature={temperature!r} is too large: the scaled latents overflow the decoder in "
                f"{self._dtype()} (or its weights are not finite); use a temperature near 1"
            )
        return images

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean μ(x): the deterministic reconstruction, (B, C, H, W) float32 in [0, 1].
        `x` as in `encode`."""
        mu, _ = self.encode(x)
        return self.output_to_image(self._decode(mu))

    # ---- persistence --------------------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | os.PathLike, metadata: dict[str, Any] | None = None
    ) -> Path:
        """Write `model.safetensors` + `config.json` (config and a metadata dict) atomically."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = dict(self.metadata if metadata is None else metadata)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        write_safetensors(out / WEIGHTS_NAME, state, {"format": "pt", "model_type": MODEL_TYPE})
        doc = {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "metadata": meta,
        }
        write_json_atomic(out / CONFIG_NAME, doc, indent=2, default=_json_default)
        self.metadata = meta
        return out

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
    ) -> VAE:
        """Load a directory written by `save_pretrained` (or a Hub repo id), in eval mode.

        Raises FileNotFoundError for a missing folder or file, `ConfigError` (a ValueError naming the file
        and the field) for a malformed config.json or one whose sizes exceed the MAX_* bounds of this module,
        and ValueError (naming the file and the tensor) for a weights file whose safetensors header does not
        hold exactly the config's tensors. All of this is checked before any weight is allocated.
        """
        folder = Path(path)
        if not folder.is_dir():
            folder = _download_from_hub(str(path), revision)
        cfg_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for f in (cfg_file, weights_file):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f} is missing: point at a directory written by VAE.save_pretrained"
                )
        doc = _read_config_file(cfg_file)
        config = VAEConfig.from_dict(doc["config"], source=cfg_file)
        # Nothing is allocated until the weights file's header is known to match the config: the model is
        # built on the meta device (shapes only), counted, and compared tensor by tensor with the header.
        with torch.device("meta"):
            model = cls(config)
        count = sum(t.numel() for t in model.state_dict().values())
        if count > MAX_PARAMETERS:
            raise ConfigError(
                f"{cfg_file}: field config describes a model of {count:,} parameters, more than the "
                f"{MAX_PARAMETERS:,} vae-triton loads (MAX_PARAMETERS); check its sizes"
            )
        check_weights_header(weights_file, model.state_dict(), cfg_file)
        try:
            state = load_file(str(weights_file), device=str(map_location))
        except Exception as e:  # safetensors raises its own error type for truncated/foreign files
            raise ValueError(
                f"{weights_file} is not a readable safetensors file ({e}); re-save the model"
            ) from None
        model = _materialize(cls, model, state)
        model.metadata = dict(doc.get("metadata") or {})
        return model.to(map_location).eval()

    def push_to_hub(
        self, repo_id: str, *, private: bool = False, extra_files: list[str] | None = None
    ) -> str:
        """Upload `save_pretrained` output (plus `extra_files`, e.g. a model card) to a Hub model repo."""
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            for f in extra_files or []:
                Path(tmp, Path(f).name).write_bytes(Path(f).read_bytes())
            api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message="Upload vae-triton model")
        return f"https://huggingface.co/{repo_id}"

    # ---- helpers ------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _as_model_dtype(self, t: torch.Tensor, name: str, fix: str) -> torch.Tensor:
        """A float tensor cast to the model's dtype (the intent is clear); ValueError for any other dtype."""
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got dtype {t.dtype}: {fix}")
        dtype = self._dtype()
        return t if t.dtype == dtype else t.to(dtype)

    def _images(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """`x` checked as a batch of images for this model and cast to its dtype."""
        c, s = self.config.image_channels, self.config.image_size
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must be a float tensor of shape (B, {c}, {s}, {s}) in [0, 1], got {shape}"
            )
        if x.shape[0] < 1:
            raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): pass at least one image")
        x = self._as_model_dtype(x, name, "divide uint8 images by 255")
        if self.check_inputs and not _capturing(x):
            check_unit_range(x, name)
        return x


def _capturing(x: torch.Tensor) -> bool:
    """Inside torch.compile tracing or a CUDA-graph capture a value check (a host sync) cannot run."""
    return torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing())


def check_unit_range(x: torch.Tensor, name: str = "x") -> None:
    """Raise ValueError unless every value of `x` is finite and in [0, 1] (one reduction, one host sync).

    The likelihoods are defined on [0, 1]: a Bernoulli NLL with x = −1 has no lower bound, and 0-255 pixels
    give ELBOs tens of thousands of nats off. The message says how to convert common ranges.
    """
    lo, hi = torch.stack(torch.aminmax(x.detach())).float().tolist()
    if lo >= 0.0 and hi <= 1.0:
        return
    if not (math.isfinite(lo) and math.isfinite(hi)):
        fix = "it holds NaN or inf values; find where they come from (they are not images)"
    elif lo >= 0.0 and hi <= 255.0:
        fix = "it looks like 0-255 pixels: use x / 255"
    elif lo >= -1.0 and hi <= 1.0:
        fix = "it looks like [-1, 1] data: use (x + 1) / 2"
    else:
        fix = "rescale it to [0, 1]"
    raise ValueError(f"{name} must hold images in [0, 1], got values in [{lo:g}, {hi:g}]: {fix}")


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in config.json metadata")


def _read_config_file(path: Path) -> dict[str, Any]:
    """config.json as written by `save_pretrained`, checked key by key; ConfigError names file and key."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config.json may have"
        )
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, a 5000-digit integer, [[[[…
        raise ConfigError(
            f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); re-save the model"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object, got a {type(doc).__name__}")
    if doc.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"{path}: field model_type is {doc.get('model_type')!r}, expected {MODEL_TYPE!r}")
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{path}: field format_version = {version!r} must be an integer")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{path} uses format {version}; upgrade vae-triton to load it")
    if "config" not in doc:
        raise ConfigError(f"{path}: the field config (the architecture) is missing; re-save the model")
    if not isinstance(doc["config"], dict):
        raise ConfigError(f"{path}: field config must be a JSON object, got a {type(doc['config']).__name__}")
    if doc.get("metadata") is not None and not isinstance(doc["metadata"], dict):
        raise ConfigError(
            f"{path}: field metadata must be a JSON object, got a {type(doc['metadata']).__name__}"
        )
    return doc


def _materialize(cls, meta_model: VAE, state: dict[str, torch.Tensor]) -> VAE:
    """The meta-device model with the loaded tensors in place of its shapes (no second copy)."""
    expected = meta_model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}  # fp16/bf16 files load as the model's
    meta_model.load_state_dict(state, assign=True)
    tensors = [*meta_model.parameters(), *meta_model.buffers()]
    if all(not t.is_meta for t in tensors):
        return meta_model
    # A tensor outside the state dict (a non-persistent buffer) has no saved value: build it for real.
    model = cls(meta_model.config)
    model.load_state_dict(state)
    return model


# ---- the safetensors header, read before any tensor ---------------------------------------------------
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype code, shape)} from a safetensors file's header, reading no tensor data.

    The format: 8 bytes little-endian header length n, n bytes of JSON {name: {"dtype", "shape",
    "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data (github.com/huggingface/safetensors).
    Raises ValueError naming the file (and the tensor) for a header over MAX_HEADER_BYTES, malformed JSON,
    an unknown dtype, a bad shape, or data offsets that do not fit the shape or the file.
    """
    path = Path(path)
    size = path.stat().st_size

    def bad(why: str):
        raise ValueError(f"{path} is not a valid safetensors file: {why}; re-save the model")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            bad(f"{size} bytes, too short for a header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            bad(f"its header claims {n:,} bytes (the file has {size:,}; at most {MAX_HEADER_BYTES:,} read)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, a 5000-digit integer
        bad(f"its header is not JSON ({type(e).__name__}: {str(e)[:200]})")
    if not isinstance(header, dict):
        bad(f"its header must be a JSON object, got {type(header).__name__}")
    entries, data_end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        entries[name], end = _header_entry(name, entry, bad)
        data_end = max(data_end, end)
    if 8 + n + data_end != size:
        bad(f"the header describes {data_end:,} bytes of data, the file holds {size - 8 - n:,} (truncated?)")
    return entries


def _header_entry(name: str, entry: Any, bad) -> tuple[tuple[str, tuple[int, ...]], int]:
    def is_count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        bad(f"{where}: its entry must be a JSON object, got {type(entry).__name__}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        bad(f"{where}: field dtype = {dtype!r} is not one of {sorted(SAFETENSORS_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(is_count(d) for d in shape):
        bad(f"{where}: field shape = {shape!r} must be a list of at most 8 non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(o) for o in offsets)):
        bad(f"{where}: field data_offsets = {offsets!r} must be [begin, end], two non-negative integers")
    numel = math.prod(shape)
    itemsize = SAFETENSORS_DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != numel * itemsize:
        bad(
            f"{where}: field data_offsets = {offsets} holds {offsets[1] - offsets[0]} bytes, "
            f"not the {numel * itemsize} of shape {shape} {dtype}"
        )
    return (dtype, tuple(shape)), offsets[1]


def check_weights_header(
    weights_file: str | os.PathLike, expected: dict[str, torch.Tensor], config_file: str | os.PathLike
) -> None:
    """Raise ValueError unless the header of `weights_file` holds exactly the tensors of `expected` (a
    state dict, meta tensors are enough) with their shapes and dtypes (float tensors may be stored in any
    float dtype). Reads only the header, so a config that asks for more than the file holds costs nothing.
    """
    header = read_safetensors_header(weights_file)
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    wrong = []
    for k in sorted(set(expected) & set(header)):
        dtype, shape = header[k]
        want = expected[k]
        same_kind = SAFETENSORS_DTYPES[dtype] == want.dtype or (
            want.dtype.is_floating_point and SAFETENSORS_DTYPES[dtype].is_floating_point
        )
        if shape != tuple(want.shape) or not same_kind:
            wrong.append(
                f"{k}: {dtype}{list(shape)} in the file, {str(want.dtype)[6:]}{list(want.shape)} "
                "in the config"
            )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{weights_file} does not match its config.json ({config_file}): missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}, wrong shape or dtype {_few(wrong)}"
        )


def _few(items: list[str], n: int = 8) -> str:
    """A list for an error message, cut to n items (a hostile header can name a million tensors)."""
    return str(items if len(items) <= n else [*items[:n], f"... {len(items) - n} more"])


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    if Path(repo_id).exists() or repo_id.startswith((".", "/", "~")) or repo_id.count("/") != 1:
        raise FileNotFoundError(f"{repo_id} is not a directory (and not a Hub repo id 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as e:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local directory nor a reachable Hub model repo "
            f"({type(e).__name__}: {e})"
        ) from None
