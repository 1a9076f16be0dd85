"""The ConvVAE: loss terms against torch.distributions, presets, sampling, save/load without pickle."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae_triton import ops
from vae_triton.model import PRESETS, VAE, VAEConfig

SMALL = dict(image_size=16, channels=(4, 8), hidden_dim=16, latent_dim=3)


def small_model(**overrides) -> VAE:
    return VAE(VAEConfig.preset("small", **{**SMALL, **overrides}))


def images(model, n=4):
    c, s = model.config.image_channels, model.config.image_size
    return torch.rand(n, c, s, s)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_keep_their_shapes(name):
    cfg = VAEConfig.preset(name)
    model = VAE(cfg)
    x = torch.rand(2, cfg.image_channels, cfg.image_size, cfg.image_size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, cfg.latent_dim)
    out = model.decode(mu)
    assert out.shape == x.shape and out.dtype == torch.float32


def test_published_architectures():
    ds = VAEConfig.preset("dsprites")
    assert (ds.image_channels, ds.image_size, ds.channels, ds.kernel_size) == (1, 64, (32, 32, 64, 64), 4)
    assert (ds.hidden_dim, ds.latent_dim, ds.likelihood) == (256, 10, "bernoulli")
    ce = VAEConfig.preset("celeba64")
    assert (ce.channels, ce.latent_dim, ce.likelihood, ce.norm) == (
        (32, 64, 128, 256, 512),
        128,
        "gaussian",
        "batch",
    )
    convs = [m for m in VAE(ce).encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.kernel_size, m.stride) for m in convs] == [((3, 3), (2, 2))] * 5


def test_gaussian_terms_match_torch_distributions():
    model = small_model(sigma="channel", log_sigma=-1.0)
    with torch.no_grad():
        model.log_sigma.copy_(torch.randn(3) * 0.3 - 1.0)
    x = images(model)
    eps = torch.randn(x.shape[0], model.config.latent_dim)
    out = model(x, beta=2.5, eps=eps)

    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    torch.testing.assert_close(out.z, mu + std * eps)
    kl_ref = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1)
    mean = torch.sigmoid(model.decode(out.z))  # decode gives logits; the mean image is their sigmoid
    sigma = model.log_sigma.exp().view(1, 3, 1, 1).expand_as(x)
    recon_ref = -Normal(mean, sigma).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(out.kl, kl_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.recon_nll, recon_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out.loss, (recon_ref + 2.5 * kl_ref).mean(), rtol=1e-4, atol=1e-3)
    assert out.recon_nll.shape == out.kl.shape == (x.shape[0],)


@pytest.mark.parametrize("sigma", ["fixed", "scalar", "channel"])
def test_saved_gaussian_model_gives_the_nll_it_gave_when_decode_returned_the_mean(tmp_path, sigma):
    """decode now returns logits for the Gaussian decoder too and the NLL fuses the sigmoid: a model saved
    before (same weights) loads and scores exactly what sigmoid-then-gaussian_nll scored."""
    model = small_model(sigma=sigma, log_sigma=-1.5)
    if model.log_sigma is not None:
        with torch.no_grad():
            model.log_sigma.add_(0.2 * torch.randn(model.log_sigma.shape))
    model.save_pretrained(tmp_path)
    loaded = VAE.from_pretrained(tmp_path)
    x = images(loaded)
    eps = torch.randn(x.shape[0], loaded.config.latent_dim)
    out = loaded(x, eps=eps)
    mean_before = torch.sigmoid(loaded.decode(out.z))  # what the old decode returned
    before = ops.gaussian_nll(mean_before, x, loaded.effective_log_sigma())
    torch.testing.assert_close(out.recon_nll, before, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(loaded.output_to_image(out.output), mean_before)
    assert loaded.reconstruct(x).min() >= 0 and loaded.reconstruct(x).max() <= 1


def test_bernoulli_terms_match_torch_distributions():
    model = small_model(likelihood="bernoulli", sigma="fixed")
    x = (images(model) > 0.5).float()
    out = model(x)
    recon_ref = -Bernoulli(logits=out.output).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(out.recon_nll, recon_ref, rtol=1e-5, atol=1e-3)
    img = model.output_to_image(out.output)
    torch.testing.assert_close(img, torch.sigmoid(out.output))


def test_learned_sigma_gets_gradient_and_fixed_sigma_is_a_constant():
    model = small_model(sigma="channel")
    model(images(model)).loss.backward()
    assert model.log_sigma.shape == (3,) and model.log_sigma.grad.abs().sum() > 0
    scalar = small_model(sigma="scalar")
    assert scalar.log_sigma.shape == ()
    fixed = small_model(sigma="fixed", log_sigma=math.log(0.1))
    assert fixed.log_sigma is None and fixed.effective_log_sigma() == pytest.approx(math.log(0.1))


def test_free_bits_only_changes_the_kl_term_of_the_loss():
    model = small_model()
    x, eps = images(model, 8), torch.randn(8, 3)
    lam = 0.7
    plain, fb = model(x, beta=3.0, eps=eps), model(x, beta=3.0, free_bits=lam, eps=eps)
    torch.testing.assert_close(fb.kl, plain.kl)
    mu, logvar = fb.mu, fb.logvar
    per_dim = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean(0)
    expected = plain.recon_nll.mean() + 3.0 * per_dim.clamp(min=lam).sum()
    torch.testing.assert_close(fb.loss, expected, rtol=1e-5, atol=1e-4)


def test_sample_and_reconstruct_are_images_and_seedable():
    model = small_model().eval()
    a = model.sample(5, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    cold = model.sample(5, temperature=0.0)
    torch.testing.assert_close(cold, cold[:1].expand_as(cold))  # every z = 0 decodes the same
    r = model.reconstruct(images(model))
    assert r.shape == (4, 3, 16, 16) and 0 <= r.min() and r.max() <= 1


def test_bad_inputs_name_the_argument():
    model = small_model()
    with pytest.raises(ValueError, match="x must be"):
        model.encode(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="uint8"):
        model.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="z must"):
        model.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="preset"):
        VAEConfig.preset("mnist")
    with pytest.raises(ValueError, match="image_size"):
        VAEConfig.preset("small", image_size=20)
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig.preset("small", likelihood="laplace")
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)


def test_save_load_round_trip_without_pickle(tmp_path):
    model = small_model(norm="batch", sigma="channel")
    model.train()
    model(images(model, 8))  # move the BN running stats away from their init
    with torch.no_grad():
        model.log_sigma.fill_(-1.3)
    model.save_pretrained(tmp_path, metadata={"beta": 4.0, "dataset": "dsprites", "steps": 10})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["metadata"]["beta"] == 4.0 and doc["config"]["sigma"] == "channel"
    assert "encoder.0.1.running_mean" in load_file(tmp_path / "model.safetensors")

    loaded = VAE.from_pretrained(tmp_path)
    assert not loaded.training and loaded.metadata["dataset"] == "dsprites"
    assert loaded.config == model.config
    model.eval()
    x = images(model)
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_errors_are_clear(tmp_path):
    small_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="safetensors"):
        VAE.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VAE.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    small_model().save_pretrained(tmp_path / "ok")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="model_type"):
        VAE.from_pretrained(tmp_path)
    other = small_model(latent_dim=5)
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(ValueError, match="does not match"):
        VAE.from_pretrained(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        VAE.from_pretrained(tmp_path / "missing" / "dir")


def test_bf16_autocast_keeps_loss_terms_float32():
    model = small_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(model))
    assert out.recon_nll.dtype == out.kl.dtype == torch.float32
    assert torch.isfinite(out.loss)


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["config"] = json.loads((Path(folder_path) / "config.json").read_text())

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    card = tmp_path / "README.md"
    card.write_text("# card")
    model = small_model()
    model.metadata = {"beta": 2.0}
    url = model.push_to_hub("someone/vae", extra_files=[str(card)])
    assert url.endswith("someone/vae") and calls["repo"] == ("someone/vae", False, True)
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert calls["config"]["metadata"] == {"beta": 2.0}


# ---- the mlp preset ---------------------------------------------------------------------------
def test_mlp_preset_is_the_two_hidden_layer_benchmark_net():
    cfg = VAEConfig.preset("mlp")
    model = VAE(cfg)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    d = cfg.image_channels * cfg.image_size**2
    assert (cfg.image_channels, cfg.image_size, cfg.likelihood, d) == (1, 28, "bernoulli", 784)
    h1, h2 = cfg.mlp_hidden
    # encoder 784-h1-h2-(μ, log σ²), decoder latent-h2-h1-784
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, h1), (h1, h2), (h2, 2 * cfg.latent_dim), (cfg.latent_dim, h2), (h2, h1), (h1, 784)
    ]  # fmt: skip


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_mlp_terms_match_torch_distributions_at_any_image_size(likelihood):
    cfg = VAEConfig.preset(
        "mlp",
        image_channels=2,
        image_size=7,
        mlp_hidden=(12, 6),
        latent_dim=3,
        likelihood=likelihood,
        activation="tanh",
    )
    model = VAE(cfg)
    x = (torch.rand(5, 2, 7, 7) > 0.5).float()
    eps = torch.randn(5, 3)
    out = model(x, beta=0.5, eps=eps)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    torch.testing.assert_close(out.z, mu + std * eps)
    kl_ref = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1)
    if likelihood == "bernoulli":
        recon_ref = -Bernoulli(logits=out.output).log_prob(x).flatten(1).sum(1)
    else:  # sigma "fixed" from the preset: log σ = 0
        recon_ref = -Normal(torch.sigmoid(out.output), 1.0).log_prob(x).flatten(1).sum(1)  # decode → logits
    assert out.output.shape == x.shape
    torch.testing.assert_close(out.kl, kl_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.recon_nll, recon_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out.loss, (recon_ref + 0.5 * kl_ref).mean(), rtol=1e-4, atol=1e-3)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_mlp_round_trip_and_old_configs_load_as_conv(tmp_path):
    model = VAE(VAEConfig.preset("mlp", latent_dim=2)).eval()
    model.save_pretrained(tmp_path / "mlp")
    loaded = VAE.from_pretrained(tmp_path / "mlp")
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    assert loaded.config == model.config and loaded.config.arch == "mlp"
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)
    # A config.json written before `arch` existed has neither field: it is a conv net.
    small_model().save_pretrained(tmp_path / "old")
    doc = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("arch", "mlp_hidden"):
        del doc["config"][key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(doc))
    assert VAE.from_pretrained(tmp_path / "old").config.arch == "conv"


def test_mlp_config_errors_name_the_field():
    with pytest.raises(ValueError, match="mlp_hidden"):
        VAEConfig.preset("mlp", mlp_hidden=())
    with pytest.raises(ValueError, match="arch"):
        VAEConfig.preset("mlp", arch="transformer")
    with pytest.raises(ValueError, match="image_size"):
        VAEConfig.preset("celeba64", image_size=28)  # conv size rule still applies to conv nets
