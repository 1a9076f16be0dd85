"""Likelihood objects against torch.distributions and torch.nn.functional, the registry, and the
evaluation facts that the training log and `train.evaluate` share (one function each in vae_triton)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal, kl_divergence

from vae_triton import metrics
from vae_triton import model as model_module
from vae_triton.likelihoods import (
    DEQUANTIZED,
    DISCRETE_BINARY,
    LIKELIHOODS,
    Bernoulli,
    Gaussian,
    get_likelihood,
    likelihood_for,
)
from vae_triton.model import VAE, VAEConfig

BUNDLED = sorted(
    p.parent for p in (Path(__file__).resolve().parents[2] / "demo" / "models").rglob("config.json")
)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# fp32 accumulation of ~100 terms of a few nats each: relative error ~1e-6 of the sum.
RTOL = 2e-5


def rounded(dtype, shape=(3, 2, 5, 4), scale=3.0):
    """Fresh logits and grey targets in `dtype`, and their exact values in float64 (the oracle's input)."""
    logits = (torch.randn(shape) * scale).to(dtype)
    x = torch.rand(shape).to(dtype)
    return logits, x, logits.double(), x.double()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("binary", [False, True], ids=["grey", "binary"])
def test_bernoulli_nll_matches_torch_distributions_and_bce(dtype, binary):
    logits, x, logits64, x64 = rounded(dtype)
    if binary:
        x = (x > 0.5).to(dtype)
        x64 = x.double()
    nll = Bernoulli().nll(logits, x)
    assert nll.shape == (3,) and nll.dtype == torch.float32
    bce = F.binary_cross_entropy_with_logits(logits64, x64, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(nll.double(), bce, rtol=RTOL, atol=1e-5)
    if binary:  # torch's Bernoulli.log_prob validates its support {0, 1}
        log_p = TorchBernoulli(logits=logits64).log_prob(x64).flatten(1).sum(1)
        torch.testing.assert_close(nll.double(), -log_p, rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_gaussian_nll_matches_torch_normal(dtype, sigma):
    logits, x, logits64, x64 = rounded(dtype)
    channels = x.shape[1]
    lik = Gaussian(sigma, log_sigma=-0.7, min_log_sigma=-2.0)
    shape = lik.scale_shape(channels)
    parameter = None if shape is None else (torch.rand(shape) * 2.0 - 1.5).requires_grad_()
    nll = lik.nll(logits, x, parameter)
    log_s = torch.tensor(-0.7, dtype=torch.float64) if parameter is None else parameter.detach().double()
    log_s = log_s.clamp(min=-2.0) if parameter is not None else log_s
    scale = (
        log_s.exp().reshape(-1, 1, 1) if log_s.dim() else log_s.exp()
    )  # per channel: dim 1 of (B, C, H, W)
    log_p = Normal(torch.sigmoid(logits64), scale).log_prob(x64).flatten(1).sum(1)
    torch.testing.assert_close(nll.double(), -log_p, rtol=RTOL, atol=1e-4)
    if parameter is not None:  # the learned σ gets its gradient through the object
        (grad,) = torch.autograd.grad(nll.sum(), parameter)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gaussian_floors_a_learned_log_sigma():
    lik = Gaussian("scalar", min_log_sigma=-3.0)
    parameter = torch.tensor(-10.0, requires_grad=True)
    assert lik.log_scale(parameter).item() == -3.0
    logits, x = torch.randn(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    expected = -Normal(torch.sigmoid(logits.double()), math.exp(-3.0)).log_prob(x.double()).flatten(1).sum(1)
    torch.testing.assert_close(lik.nll(logits, x, parameter).double(), expected, rtol=RTOL, atol=1e-4)
    with pytest.raises(ValueError, match="log σ"):
        lik.nll(logits, x, None)


@pytest.mark.parametrize("cls", [Bernoulli, Gaussian])
def test_mean_image_is_the_sigmoid_in_float32(cls):
    out = torch.randn(2, 3, 4, 4).half()
    mean = cls().mean(out)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean, torch.sigmoid(out.float()))


def test_registry_names_options_and_errors():
    assert set(LIKELIHOODS) == {"gaussian", "bernoulli"}
    assert get_likelihood("bernoulli") is Bernoulli and get_likelihood("gaussian") is Gaussian
    with pytest.raises(ValueError, match=r"logistic.*'gaussian', 'bernoulli'"):
        get_likelihood("logistic")
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="logistic")
    with pytest.raises(ValueError, match="sigma"):
        Gaussian("learned")
    for cls in LIKELIHOODS.values():
        assert cls.description and "\n" not in cls.description
    assert Bernoulli().has_scale is False and Gaussian().has_scale is True
    assert Bernoulli().label == "bernoulli" and Gaussian("channel").label == "gaussian (σ channel)"


def test_bits_per_dim_convention_is_the_likelihoods():
    assert Gaussian().bpd_convention(binary=False) is DEQUANTIZED
    assert Gaussian().bpd_convention(binary=True) is DEQUANTIZED
    assert Bernoulli().bpd_convention(binary=True) is DISCRETE_BINARY
    assert Bernoulli().bpd_convention(binary=False) is None  # a cross-entropy on grey pixels
    assert DEQUANTIZED.dequantized and not DISCRETE_BINARY.dequantized
    bern = VAE(VAEConfig.preset("dsprites"))
    assert (
        metrics.bpd_convention(bern, True) is DISCRETE_BINARY and metrics.bpd_convention(bern, False) is None
    )

    class Foreign(torch.nn.Module):  # a protocol model with no config: scored as a density
        pass

    assert metrics.bpd_convention(Foreign(), False) is DEQUANTIZED


@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_the_model_holds_the_object_and_its_scale(sigma):
    cfg = VAEConfig.preset("small", image_size=8, channels=(4,), hidden_dim=0, latent_dim=2, sigma=sigma)
    model = VAE(cfg)
    assert isinstance(model.likelihood, Gaussian) and model.likelihood.sigma == sigma
    expected = {"fixed": None, "scalar": (), "channel": (3,)}[sigma]
    assert (None if model.log_sigma is None else tuple(model.log_sigma.shape)) == expected
    x = torch.rand(2, 3, 8, 8)
    out = model(x)
    torch.testing.assert_close(
        model.recon_nll(out.output, x), model.likelihood.nll(out.output, x, model.log_sigma)
    )
    torch.testing.assert_close(model.output_to_image(out.output), torch.sigmoid(out.output))


@pytest.mark.parametrize("folder", BUNDLED, ids=lambda p: p.parent.name + "/" + p.name)
def test_bundled_models_load_with_their_likelihood(folder):
    model = VAE.from_pretrained(folder)
    assert model.likelihood.name == model.config.likelihood
    assert type(model.likelihood) is type(likelihood_for(model.config))
    assert ("log_sigma" in model.state_dict()) == (model.likelihood.scale_shape(1) is not None)


# ---- evaluation facts: one function each ------------------------------------------------------


def test_active_units_use_the_population_variance():
    # Two latents over 4 images: d0 alternates 0, s (population variance s²/4 = 0.00875 < 0.01, but the
    # unbiased one, s²/3 = 0.0117, is above): the count must follow numpy's ddof=0, not ddof=1.
    s = math.sqrt(0.035)
    mu = torch.tensor([[0.0, 0.0], [s, 1.0], [0.0, 2.0], [s, 3.0]])
    expected = int((np.var(mu.numpy().astype(np.float64), axis=0, ddof=0) > 0.01).sum())
    assert expected == 1 and metrics.active_units(mu) == expected
    assert int((mu.var(dim=0, correction=1) > 0.01).sum()) == 2  # the convention not taken
    assert metrics.ACTIVE_UNIT_THRESHOLD == 0.01


def test_per_dimension_kl_is_one_function():
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4) * 2
    closed = kl_divergence(Normal(mu.double(), (0.5 * logvar.double()).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(metrics.kl_to_prior(mu.double(), logvar.double()), closed)
    torch.testing.assert_close(metrics.kl_per_dim(mu, logvar), closed.mean(0).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        metrics.free_bits_kl(mu, logvar, 0.5), closed.mean(0).clamp(min=0.5).sum().float()
    )
    # the clamp is the op's: a log σ² beyond it is scored at the bound
    clamped = metrics.kl_to_prior(torch.zeros(1), torch.tensor([-100.0]), (-30.0, 20.0))
    torch.testing.assert_close(clamped, 0.5 * (torch.tensor([-30.0]).exp() - 1 + 30.0))
    # the model's free-bits term is this one (the training log and train.evaluate import kl_per_dim from here)
    assert model_module.free_bits_kl is metrics.free_bits_kl


def test_is_binary():
    assert metrics.is_binary(torch.tensor([0.0, 1.0, 1.0]))
    assert not metrics.is_binary(torch.tensor([0.0, 0.5]))
    assert metrics.is_binary(torch.tensor([0, 1], dtype=torch.uint8))


def _constructed_mlp_vae(scale: float) -> VAE:
    """1×2×2 images; μ_0 = scale·x_0, μ_1 = 0, log σ² = 0 (identity encoder layer, ReLU on [0, 1])."""
    cfg = VAEConfig(
        arch="mlp",
        image_channels=1,
        image_size=2,
        mlp_hidden=(4,),
        latent_dim=2,
        norm="none",
        activation="relu",
        likelihood="bernoulli",
        sigma="fixed",
    )
    model = VAE(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.encoder[0].weight.copy_(torch.eye(4))
        model.to_params.weight[0, 0] = scale
    return model


def test_training_log_counts_active_units_like_evaluate():
    from train.heldout import evaluate_fixed

    model = _constructed_mlp_vae(math.sqrt(0.035))
    x = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    mu, _ = model.encode(x)
    assert metrics.active_units(mu) == 0
    assert evaluate_fixed(model, x)["active_units"] == metrics.active_units(mu)
