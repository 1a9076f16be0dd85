"""Decoder likelihoods p(x|z): one small object per likelihood, and a registry by name.

A likelihood turns the decoder's output (B, C, H, W) into everything the rest of the toolkit needs:

- `nll(output, x, parameter)`: −log p(x|z) per image, (B,) float32 nats, through the fused ops of
  `vae_triton.ops` (Triton kernels on CUDA, the torch reference elsewhere);
- `mean(output)`: the mean image in [0, 1], what `VAE.sample` and `VAE.reconstruct` show;
- whether it has a scale σ, and the shape of a learned log σ parameter (`scale_shape`);
- its bits/dim convention (`bpd_convention`): a density on [0, 1]^D is scored on 8-bit data with uniform
  dequantization, a probability mass function is not;
- a one-line `description` (for `--help`, model cards and the demo) and a `label` ("gaussian (σ channel)").

The objects are stateless apart from their options: a learned σ stays a parameter of the model (the
`log_sigma` entry of `model.safetensors`), passed in as `parameter`. The design follows diffusers'
`DiagonalGaussianDistribution` (a distribution object built from a network's output, with `nll` and
`mode`) and VDVAE's output net (`DmolNet.nll` / `.sample` on the decoder's features).

`VAEConfig.likelihood` stays a string in config.json; `likelihood_for(config)` builds the object from it.
Adding a likelihood means a class here, an entry in `LIKELIHOODS`, and (optionally) a fused op.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, NamedTuple

import torch

from . import ops


class BpdConvention(NamedTuple):
    """How nats per image become bits per dimension for one likelihood.

    dequantized: True when the likelihood is a density on [0, 1]^D scored on 8-bit data, so that
    bpd = (NLL + D·ln 256) / (D·ln 2); False when it is a probability mass function over the pixel
    values, bpd = NLL / (D·ln 2). label: a short name (training log); formula: the formula in words.
    """

    dequantized: bool
    label: str
    formula: str


DEQUANTIZED = BpdConvention(
    True,
    "dequantized 8-bit",
    "bpd = (NLL_nats + D·ln 256) / (D·ln 2): density on [0,1]^D, uniform dequantization of 8-bit data",
)
DISCRETE_BINARY = BpdConvention(
    False,
    "binary pixels, a pmf",
    "bpd = NLL_nats / (D·ln 2): a probability mass function over binary pixels",
)


class Likelihood(abc.ABC):
    """Base class: a decoder likelihood p(x|z) whose parameters are the decoder output (logits).

    Class attributes: `name` (the key in `LIKELIHOODS` and in config.json), `description` (one line),
    `has_scale` (a σ enters the NLL), `binary_only` (a pmf normalised over {0, 1} pixels only: on grey
    pixels its NLL is a cross-entropy, not a likelihood, and has no bits/dim), `bpd` (the convention).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    has_scale: ClassVar[bool] = False
    binary_only: ClassVar[bool] = False
    bpd: ClassVar[BpdConvention]

    @classmethod
    def from_config(cls, config: Any) -> Likelihood:
        """The likelihood a `VAEConfig` asks for (reads only the fields this likelihood uses)."""
        return cls()

    @property
    def label(self) -> str:
        """Short name with the options that matter (cards, logs): "bernoulli", "gaussian (σ channel)"."""
        return self.name

    def scale_shape(self, channels: int) -> tuple[int, ...] | None:
        """Shape of the learned log σ parameter the model must own, or None (no learned scale)."""
        return None

    def log_scale(self, parameter: torch.Tensor | None) -> torch.Tensor | float | None:
        """The log σ the NLL uses, from the model's parameter (None when there is no learned one)."""
        return None

    @abc.abstractmethod
    def nll(self, output: torch.Tensor, x: torch.Tensor, parameter: torch.Tensor | None = None):
        """−log p(x | output) per image, (B,) float32 nats; `parameter` is the model's learned log σ."""

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        """The mean image E[x|z] in [0, 1], float32, same shape as `output`: sigmoid(output)."""
        return torch.sigmoid(output.float())

    def bpd_convention(self, binary: bool) -> BpdConvention | None:
        """The bits/dim convention on data that is (`binary` True) or is not all {0, 1} pixels; None when
        the NLL is no normalised likelihood of that data (a `binary_only` likelihood on grey pixels)."""
        if self.binary_only and not binary:
            return None
        return self.bpd

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with p = sigmoid(logits): −Σ_i [x_i log p_i + (1 − x_i) log(1 − p_i)].

    Equal to `torch.distributions.Bernoulli(logits=output).log_prob(x)` summed per image (negated), and to
    `F.binary_cross_entropy_with_logits(output, x, reduction="none")` summed per image. A pmf over binary
    pixels: its bits/dim are NLL / (D·ln 2), and on grey pixels there are none.
    """

    name = "bernoulli"
    description = "Bernoulli pixels, p = sigmoid(decoder output); a likelihood of binary images"
    binary_only = True
    bpd = DISCRETE_BINARY

    def nll(self, output, x, parameter=None):
        return ops.bernoulli_nll(output, x)


class Gaussian(Likelihood):
    """N(x; sigmoid(logits), σ²) per pixel: Σ_i [(x_i − m_i)² / 2σ² + log σ + ½ log 2π].

    `sigma`: "fixed" (σ = exp(`log_sigma`), no parameter), "scalar" (one learned log σ) or "channel" (one
    per image channel, the calibrated "σ-VAE" choice of Rybkin et al. 2021). A learned log σ is floored at
    `min_log_sigma`: a perfect fit on 8-bit data would otherwise drive σ → 0 and the NLL → −∞.
    A density on [0, 1]^D: bits/dim use uniform dequantization of 8-bit data (+ D·ln 256).
    """

    name = "gaussian"
    description = "Gaussian pixels, mean = sigmoid(decoder output), σ fixed or learned (one or per channel)"
    has_scale = True
    bpd = DEQUANTIZED
    SIGMA_MODES: ClassVar[tuple[str, ...]] = ("fixed", "scalar", "channel")

    def __init__(self, sigma: str = "fixed", log_sigma: float = 0.0, min_log_sigma: float = -6.0):
        if sigma not in self.SIGMA_MODES:
            raise ValueError(f"sigma={sigma!r} is invalid: use one of {self.SIGMA_MODES}")
        if not (math.isfinite(log_sigma) and math.isfinite(min_log_sigma)):
            raise ValueError(f"log_sigma and min_log_sigma must be finite, got {log_sigma}, {min_log_sigma}")
        self.sigma, self.log_sigma, self.min_log_sigma = sigma, float(log_sigma), float(min_log_sigma)

    @classmethod
    def from_config(cls, config):
        return cls(config.sigma, config.log_sigma, config.min_log_sigma)

    @property
    def label(self) -> str:
        return f"{self.name} (σ {self.sigma})"

    def scale_shape(self, channels):
        return None if self.sigma == "fixed" else (channels,) if self.sigma == "channel" else ()

    def log_scale(self, parameter):
        """A float when σ is fixed; the parameter floored at `min_log_sigma` (with gradient) when learned."""
        if self.sigma == "fixed":
            return self.log_sigma
        if parameter is None:
            raise ValueError(f"the {self.label} likelihood needs its learned log σ parameter, got None")
        return parameter.clamp(min=self.min_log_sigma)

    def nll(self, output, x, parameter=None):
        return ops.gaussian_nll_logits(output, x, self.log_scale(parameter))


LIKELIHOODS: dict[str, type[Likelihood]] = {cls.name: cls for cls in (Gaussian, Bernoulli)}


def get_likelihood(name: str) -> type[Likelihood]:
    """The likelihood class registered as `name`; ValueError listing the registered names otherwise."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}: use one of {tuple(LIKELIHOODS)}")
    return LIKELIHOODS[name]


def likelihood_for(config: Any) -> Likelihood:
    """The likelihood object a `VAEConfig` (its `likelihood` name and options) describes."""
    return get_likelihood(config.likelihood).from_config(config)
