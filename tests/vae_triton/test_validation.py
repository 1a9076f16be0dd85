"""Bad input at the library's boundaries: images outside [0, 1], a non-finite temperature, and
malformed config.json files — each a ValueError that says what is wrong and how to fix it."""

import json
import math

import pytest
import torch

from train import evaluate
from vae_triton import metrics
from vae_triton.model import VAE, ConfigError, VAEConfig


@pytest.fixture(scope="module")
def model():
    return VAE(VAEConfig.preset("small", image_size=16, channels=(4, 8), hidden_dim=8, latent_dim=2)).eval()


def images(n=2):
    return torch.rand(n, 3, 16, 16)


# ---- images outside [0, 1] ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, fix",
    [
        (lambda: images() * 255, "x / 255"),  # 0-255 pixels as floats
        (lambda: images() * 2 - 1, "(x + 1) / 2"),  # [-1, 1] (tanh-style) data
        (lambda: images() * 1000 - 500, "rescale"),
        (lambda: images().index_fill_(3, torch.tensor([5]), float("nan")), "NaN or inf"),
        (lambda: images().index_fill_(2, torch.tensor([0]), float("inf")), "NaN or inf"),
    ],
)
def test_every_entry_point_refuses_images_outside_the_unit_range(model, make, fix):
    x = make()
    calls = {
        "forward": lambda: model(x),
        "encode": lambda: model.encode(x),
        "reconstruct": lambda: model.reconstruct(x),
        "metrics.elbo": lambda: metrics.elbo(model, x),
        "metrics.iw_log_likelihood": lambda: metrics.iw_log_likelihood(model, x, num_samples=2),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"\[0, 1\]") as e:
            call()
        assert fix in str(e.value), (name, str(e.value))


def test_images_at_the_ends_of_the_range_pass_and_the_check_can_be_turned_off(model):
    x = images()
    x[0].fill_(0.0)
    x[1].fill_(1.0)
    out = model(x)
    assert torch.isfinite(out.loss)
    model.check_inputs = False  # what the training loop does: its data is in [0, 1] by construction
    try:
        assert model(images() * 255).loss.isfinite()  # unchecked: the caller's responsibility
    finally:
        model.check_inputs = True


def test_the_check_is_skipped_while_torch_compile_traces(model, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model(images() * 255)  # no host sync is possible inside a traced graph; nothing raised


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -float("inf"), -0.5])
def test_sample_refuses_a_temperature_that_is_not_finite_and_non_negative(model, temperature):
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=temperature)


def test_sample_at_temperature_zero_decodes_the_prior_mean(model):
    a, b = model.sample(2, temperature=0.0)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


# ---- config.json --------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    VAE(VAEConfig.preset("small")).save_pretrained(folder, metadata={"dataset": "folder", "beta": 1.0})
    return folder


def _edit(folder, change):
    path = folder / "config.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc)))
    return path


BROKEN = {
    "a wrong type": (lambda d: {**d, "config": {**d["config"], "latent_dim": "ten"}}, "config.latent_dim"),
    "no config key": (lambda d: {k: v for k, v in d.items() if k != "config"}, "config"),
    "a list at top level": (lambda d: [d], "top level"),
    "a list in metadata": (lambda d: {**d, "metadata": [1, 2]}, "metadata"),
    "channels as a string": (
        lambda d: {**d, "config": {**d["config"], "channels": "abc"}},
        "config.channels",
    ),
    "a bad value": (lambda d: {**d, "config": {**d["config"], "likelihood": "poisson"}}, "likelihood"),
    "an unknown field": (lambda d: {**d, "config": {**d["config"], "depth": 3}}, "depth"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_config_json_names_the_file_and_the_field(saved, case):
    change, field = BROKEN[case]
    path = _edit(saved, change)
    with pytest.raises(ConfigError) as e:
        VAE.from_pretrained(saved)
    assert str(path) in str(e.value) and field in str(e.value), str(e.value)


@pytest.mark.parametrize("case", BROKEN)
def test_evaluate_shows_a_broken_config_as_one_line(saved, case, capsys):
    change, field = BROKEN[case]
    path = _edit(saved, change)
    code = evaluate.main(["--checkpoint", str(saved), "--no-progress", "--iw-samples", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(path) in err and field in err, err


@pytest.mark.parametrize("name", sorted(VAEConfig().to_dict()))
def test_every_config_field_rejects_a_value_of_the_wrong_type(name):
    good = VAEConfig().to_dict()
    for wrong in ("abc", [1.5], {"a": 1}, None):
        if isinstance(good[name], str) and isinstance(wrong, str):
            continue  # a string field takes any string; `validate` judges the value (tested above)
        with pytest.raises(ConfigError, match=rf"config\.{name}|{name}") as e:
            VAEConfig.from_dict({**good, name: wrong}, source="x/config.json")
        assert "x/config.json" in str(e.value)
    assert VAEConfig.from_dict(good) == VAEConfig()


def test_integers_are_accepted_where_floats_are_expected():
    cfg = VAEConfig.from_dict({**VAEConfig().to_dict(), "log_sigma": 0, "logvar_clamp": [-30, 20]})
    assert cfg.log_sigma == 0 and cfg.logvar_clamp == (-30.0, 20.0)
    with pytest.raises(ConfigError, match="finite"):
        VAEConfig.from_dict({**VAEConfig().to_dict(), "log_sigma": math.inf})
