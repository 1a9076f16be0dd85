"""`gap_decomposition` against closed forms (torch.distributions), not against our own code.

Oracle: a linear-Gaussian decoder p(x|z) = N(Wz + b, σ²I) with p(z) = N(0, I) has the posterior
N(m, S), S = σ²(WᵀW + σ²I)⁻¹, and log p(x) = log N(x; b, WWᵀ + σ²I). The diagonal Gaussian closest to it
under KL[q ‖ p] has mean m and variances 1/(S⁻¹)_ii, so the approximation gap is
½[log det S + Σ_i log (S⁻¹)_ii]; the amortisation gap is KL[q_φ ‖ N(m, S)] minus that.
"""

import math

import pytest
import torch
from test_metrics import LinearGaussianVAE
from torch.distributions import MultivariateNormal, kl_divergence

from vae_triton import metrics
from vae_triton.posterior import gap_decomposition as direct

F64 = torch.float64


class LinearDecoderVAE(LinearGaussianVAE):
    """test_metrics' PPCA model with its posterior N(m, S) and marginal as torch.distributions objects."""

    def posterior(self, x) -> MultivariateNormal:
        eye = torch.eye(self.W.shape[1], dtype=F64)
        cov = self.sigma**2 * torch.linalg.inv(self.W.T @ self.W + self.sigma**2 * eye)
        return MultivariateNormal((x - self.b) @ (cov @ self.W.T).T / self.sigma**2, cov)

    def marginal(self) -> MultivariateNormal:
        eye = torch.eye(self.W.shape[0], dtype=F64)
        return MultivariateNormal(self.b, self.W @ self.W.T + self.sigma**2 * eye)


def correlated_vae(seed=0, n=5, sigma=0.6, shift=0.7):
    """Columns of W nearly parallel → a strongly correlated posterior; q_φ shifted and too wide."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=g, dtype=F64)
    W = torch.stack([u, 0.8 * u + 0.45 * torch.randn(n, generator=g, dtype=F64)], dim=1)
    b = torch.randn(n, generator=g, dtype=F64)
    cov = sigma**2 * torch.linalg.inv(W.T @ W + sigma**2 * torch.eye(2, dtype=F64))
    A = cov @ W.T / sigma**2
    c = shift * cov.diagonal().sqrt()
    return LinearDecoderVAE(W, b, sigma, A, c, cov.diagonal().log()).double()


def closed_form(model, x):
    post = model.posterior(x)
    S = post.covariance_matrix
    precision = torch.linalg.inv(S).diagonal(dim1=-2, dim2=-1)  # (B, 2): (S⁻¹)_ii
    approx = 0.5 * (torch.logdet(S) + precision.log().sum(-1))
    mu, logvar = model.encode(x)
    q = MultivariateNormal(mu, torch.diag_embed(logvar.exp()))
    return approx, kl_divergence(q, post), post.mean, -precision.log()


def test_matches_the_closed_form_of_a_correlated_linear_gaussian_posterior():
    model = correlated_vae()
    x = model.marginal().sample((3,))
    d = metrics.gap_decomposition(model, x)
    approx, kl, m, logvar_star = closed_form(model, x)
    assert approx.min() > 0.3  # a strongly correlated posterior: the Gaussian family costs something real
    torch.testing.assert_close(d.approximation_gap, approx, rtol=0, atol=1e-3)
    torch.testing.assert_close(d.amortisation_gap, kl - approx, rtol=0, atol=1e-3)
    torch.testing.assert_close(d.log_px, model.marginal().log_prob(x), rtol=0, atol=1e-3)
    torch.testing.assert_close(d.best_mu, m, rtol=0, atol=1e-3)
    torch.testing.assert_close(d.best_logvar, logvar_star, rtol=0, atol=1e-3)
    # The two gaps add up to the total gap, KL[q_φ ‖ p(z|x)].
    torch.testing.assert_close(d.approximation_gap + d.amortisation_gap, d.kl_to_posterior, rtol=0, atol=1e-3)
    torch.testing.assert_close(d.kl_to_posterior, kl, rtol=0, atol=1e-3)
    assert d.approximation_gap.dtype == F64 and d.best_mu.shape == (3, 2)


@pytest.mark.parametrize("seed", [1, 2])
def test_other_posteriors_and_encoders(seed):
    model = correlated_vae(seed=seed, sigma=0.3 + 0.3 * seed, shift=-1.5)
    x = model.marginal().sample((2,))
    d = direct(model, x, n=48)
    approx, kl, _, _ = closed_form(model, x)
    torch.testing.assert_close(d.approximation_gap, approx, rtol=0, atol=1e-3)
    torch.testing.assert_close(d.amortisation_gap, kl - approx, rtol=0, atol=1e-3)


def test_an_encoder_that_is_already_optimal_has_no_amortisation_gap():
    model = correlated_vae(seed=3)
    x = model.marginal().sample((2,))
    _, _, m, logvar_star = closed_form(model, x)
    with torch.no_grad():  # q_φ = q*: the best diagonal Gaussian for every x (a linear map reaches m)
        model.c.zero_()
        model.q_logvar.copy_(logvar_star[0])
    d = metrics.gap_decomposition(model, x)
    assert d.amortisation_gap.abs().max() < 1e-3
    assert (d.amortisation_gap >= 0).all()


def test_a_diagonal_posterior_has_no_approximation_gap():
    g = torch.Generator().manual_seed(4)
    W = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=F64))[0] * torch.tensor([1.5, 0.7], dtype=F64)
    sigma = 0.5
    cov = sigma**2 * torch.linalg.inv(W.T @ W + sigma**2 * torch.eye(2, dtype=F64))
    model = LinearDecoderVAE(
        W,
        torch.zeros(6, dtype=F64),
        sigma,
        cov @ W.T / sigma**2,
        torch.ones(2, dtype=F64),
        torch.zeros(2, dtype=F64),
    ).double()
    x = model.marginal().sample((2,))
    d = metrics.gap_decomposition(model, x)
    assert d.approximation_gap.abs().max() < 1e-3
    assert d.amortisation_gap.min() > 0.1


def test_bad_input_is_one_clear_error():
    model = correlated_vae()
    x = model.marginal().sample((1,))
    with pytest.raises(ValueError, match="`rounds`"):
        metrics.gap_decomposition(model, x, rounds=0)
    with pytest.raises(ValueError, match="`n`"):
        metrics.gap_decomposition(model, x, n=1)
    three = LinearDecoderVAE(
        torch.randn(5, 3, dtype=F64),
        torch.zeros(5, dtype=F64),
        0.5,
        torch.randn(3, 5, dtype=F64),
        torch.zeros(3, dtype=F64),
        torch.zeros(3, dtype=F64),
    )
    with pytest.raises(ValueError, match="2 latent dimensions"):
        metrics.gap_decomposition(three, x)
    assert math.isfinite(metrics.gap_decomposition(model, x, rounds=1).approximation_gap.item())
