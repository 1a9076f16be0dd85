"""`python -m train --objective iwae --iw-k K` (train/objectives.py): the loss is the importance-weighted
bound of Burda et al. 2016, computed here independently with torch.distributions and
F.binary_cross_entropy_with_logits on the same noise; K = 1 is the one-sample ELBO; the flags it cannot
take are refused before any work; the step stays capture-safe; resume stays bit-exact; the card states
the objective and the held-out IW bound."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_step_graph import HostSyncDetector
from torch.distributions import Normal

from train import checkpoint as ckpt
from train import objectives
from train.__main__ import main
from train.config import RunConfig, parse_args
from train.loop import train
from train.step import make_optimizer, make_train_step
from vae_triton.model import VAE, VAEConfig

SPRITES = "--dataset dsprites --limit 64 --batch-size 16 --no-progress --eval-images 32".split()
TINY_MLP = dict(image_size=8, image_channels=1, mlp_hidden=(16, 8))


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    monkeypatch.setenv("VAE_TRITON_CACHE", str(tmp_path / "cache"))


def _model(latent_dim=3, seed=0, dtype=torch.float32) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig.preset("mlp", latent_dim=latent_dim, **TINY_MLP)).to(dtype)


def _images(b=6, seed=1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 1, 8, 8, generator=g) > 0.5).to(dtype)


def reference_log_weights(model, x, eps, beta=1.0):
    """log w_kb = log p(x|z) + β·(log p(z) − log q(z|x)), from torch.distributions, (K, B)."""
    mu, logvar = model.encode(x)
    q = Normal(mu, torch.exp(0.5 * logvar.clamp(*model.config.logvar_clamp)))
    z = q.loc + q.scale * eps  # (K, B, D): the same z as the fused op's for the same ε
    log_q = q.log_prob(z).sum(-1)
    log_p = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
    k, b, d = z.shape
    logits = model.decode(z.reshape(k * b, d)).reshape(k, b, -1)
    log_px = -F.binary_cross_entropy_with_logits(
        logits, x.reshape(1, b, -1).expand_as(logits), reduction="none"
    )
    return log_px.sum(-1) + beta * (log_p - log_q)


def reference_loss(model, x, eps, beta=1.0):
    log_w = reference_log_weights(model, x, eps, beta)
    return -(torch.logsumexp(log_w, dim=0) - math.log(eps.shape[0])).mean()


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ---- the loss is the IW bound ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_loss_and_gradients_equal_a_torch_distributions_iw_bound(k, beta):
    model, x = _model(), _images()
    eps = torch.randn(k, x.shape[0], 3, generator=torch.Generator().manual_seed(2))
    out = objectives.iwae_forward(model, x, k, beta, eps=eps)
    ours = _grads(model, out.loss)
    ref_loss = reference_loss(model, x, eps, beta)
    ref = _grads(model, ref_loss)
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for name, g in ref.items():
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-5, msg=name)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in ours.values())  # every layer learns
    assert out.z.shape == (k * x.shape[0], 3) and out.output.shape == (k * x.shape[0], 1, 8, 8)


def test_the_fused_kernels_give_the_loss_and_gradients_of_the_reference(monkeypatch):
    """The same check through the Triton kernels (the interpreter on CPU, as on a GPU in CI's gpu run):
    reparameterize_iw and the Bernoulli NLL on K·B rows, the noise injected."""
    monkeypatch.setenv("VAE_TRITON_BACKEND", "triton")
    model, x = _model(), _images(4)
    eps = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(6))
    out = objectives.iwae_forward(model, x, 3, eps=eps)
    ours = _grads(model, out.loss)
    ref_loss = reference_loss(model, x, eps)
    ref = _grads(model, ref_loss)
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for name, g in ref.items():
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_beta_as_a_device_tensor_gives_the_same_loss():
    model, x = _model(), _images()
    eps = torch.randn(5, x.shape[0], 3, generator=torch.Generator().manual_seed(3))
    a = objectives.iwae_forward(model, x, 5, 0.7, eps=eps).loss
    b = objectives.iwae_forward(model, x, 5, torch.tensor(0.7), eps=eps).loss
    assert torch.equal(a, b)


def test_k1_is_the_one_sample_elbo_and_averages_to_the_analytic_elbo():
    """K = 1 with the same ε: the ELBO's reconstruction term plus a one-sample KL estimate, whose mean
    over many draws is the analytic KL of VAE.forward (within 4 standard errors)."""
    model = _model()
    x = _images(1).expand(4000, -1, -1, -1)  # one image, 4000 draws of z
    eps = torch.randn(1, 4000, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        iw = objectives.iwae_forward(model, x, 1, eps=eps)
        elbo = model(x, eps=eps[0])
        log_w = reference_log_weights(model, x, eps)[0]
    torch.testing.assert_close(iw.recon_nll, elbo.recon_nll)
    torch.testing.assert_close(iw.kl, elbo.kl)  # the logged KL is the analytic one
    assert iw.loss.item() == pytest.approx(-log_w.mean().item(), rel=1e-6)
    sem = log_w.std().item() / math.sqrt(len(log_w))
    assert abs(iw.loss.item() - elbo.loss.item()) < 4 * sem


def test_the_bound_rises_with_k_and_stays_below_log_px():
    """Burda et al. 2016, Theorem 1: ELBO ≤ L_5 ≤ L_50 ≤ log p(x); log p(x) by quadrature (2 latents)."""
    from vae_triton.metrics import posterior_on_grid

    model = _model(latent_dim=2)
    x1 = _images(1)
    with torch.no_grad():
        # q(z|x) moved off the posterior and a sharper decoder: a gap of several nats for K to close
        model.to_params.bias[:2] += 1.5
        model.to_params.bias[2:] -= 1.0
        model.decoder.weight.mul_(4)
        log_px = posterior_on_grid(model, x1).log_px.item()
        x = x1.expand(400, -1, -1, -1)
        torch.manual_seed(5)
        bounds = [-objectives.iwae_forward(model, x, k).loss.item() for k in (1, 5, 50)]
    # measured: −53.4, −51.1, −49.2 ≤ −46.8; the Monte Carlo noise of each mean is ≈ 0.2 nats
    assert bounds[0] + 1 < bounds[1] and bounds[1] + 1 < bounds[2] < log_px, (bounds, log_px)


# ---- bad input: one line naming the flag, before any work -------------------------------------------
@pytest.mark.parametrize(
    "flags, named",
    [
        ("--objective iwae --iw-k 0", "--iw-k"),
        ("--objective iwae --iw-k -3", "--iw-k"),
        ("--objective iwae --free-bits 0.1", "--free-bits"),
        ("--iw-k 5", "--iw-k"),
        ("--objective elbo --iw-k 5", "--iw-k"),
        ("--objective iwae --iw-k 100000000 --batch-size 64", "--iw-k 100000000 × --batch-size 64"),
        ("--objective iwae --iw-k 2000000 --batch-size 64", "--iw-k 2000000 × --batch-size 64"),
    ],
    ids=["k0", "k-negative", "free-bits", "k-without-iwae", "k-with-elbo", "kb-index", "kb-memory"],
)
def test_bad_objective_flags_get_one_line_before_any_work(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    args = [*SPRITES, "--preset", "mlp", "--steps", "2", *flags.split(), "--out", str(out)]
    try:
        code = main(args)
    except SystemExit as e:  # refused by the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not out.exists()  # nothing written: no run folder, config or checkpoint


def test_the_memory_check_uses_the_decoder_size_and_the_device_memory(monkeypatch):
    cfg = RunConfig(dataset="dsprites", preset="mlp", objective="iwae", iw_k=5, batch_size=64)
    objectives.prepare(cfg)
    model_cfg = cfg.model_config(1)
    per_row = objectives.decoder_bytes_per_row(model_cfg)
    # at least the layer outputs of the decoder (two hidden widths and the image) in float32
    assert per_row >= 4 * (sum(model_cfg.mlp_hidden) + model_cfg.num_pixels)
    device = torch.device("cpu")
    monkeypatch.setattr(objectives, "device_memory", lambda d: 5 * 64 * per_row)
    objectives.check_fits(cfg, model_cfg, 1, device)  # exactly fits
    monkeypatch.setattr(objectives, "device_memory", lambda d: 5 * 64 * per_row - 1)
    with pytest.raises(ValueError, match="--iw-k 5 × --batch-size 64"):
        objectives.check_fits(cfg, model_cfg, 1, device)
    objectives.check_fits(cfg, model_cfg, 2, device)  # two processes: half the rows each


def test_iwae_runs_with_the_default_kl_warmup_and_beta():
    cfg = RunConfig(dataset="dsprites", objective="iwae")
    objectives.prepare(cfg)
    assert cfg.iw_k == objectives.DEFAULT_IW_K and cfg.kl_warmup_steps is None  # warm-up on by default


# ---- the training step ------------------------------------------------------------------------------
def test_the_iwae_step_never_syncs_with_the_host():
    model = _model()
    cfg = RunConfig(dataset="dsprites", preset="mlp", objective="iwae", iw_k=4, batch_size=6, steps=4)
    objectives.prepare(cfg)
    cfg.kl_warmup_steps = 2
    step = make_train_step(model, make_optimizer(model, cfg), cfg, note=lambda line: None)
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        batch = (torch.rand(6, 1, 8, 8, generator=g) > 0.5).to(torch.uint8) * 255
        with HostSyncDetector() as detector:
            result = step(batch, i)
        assert detector.found == [], detector.found
        assert bool(result.ok) and result.loss >= 0


def test_resume_of_an_iwae_run_is_bit_exact(tmp_path):
    common = (
        "--objective iwae --iw-k 3 --steps 7 --kl-warmup-steps 4 --lr-schedule cosine --log-every 1 "
        "--eval-every 100 --checkpoint-every 100 --seed 3 --preset mlp --latent-dim 2"
    ).split()
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(parse_args([*SPRITES, *common, "--out", str(straight)]))
    train(parse_args([*SPRITES, *common, "--out", str(split)]), stop_at=3)  # inside the warm-up
    train(parse_args([*SPRITES, *common, "--out", str(split), "--resume"]))

    def rows(out):
        return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    a, b = rows(straight), rows(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 8))
    assert all((ra["loss"], ra["beta"]) == (rb["loss"], rb["beta"]) for ra, rb in zip(a, b, strict=True))
    sa, sb = ckpt.load_checkpoint(straight), ckpt.load_checkpoint(split)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    for p, state in sa["optimizer"]["state"].items():
        assert all(torch.equal(v, sb["optimizer"]["state"][p][n]) for n, v in state.items())
    saved = json.loads((split / "run_config.json").read_text())
    assert (saved["objective"], saved["iw_k"]) == ("iwae", 3)


def test_the_card_states_the_objective_and_both_held_out_bounds(tmp_path):
    out = tmp_path / "run"
    args = [*SPRITES, "--preset", "mlp", "--latent-dim", "2", "--steps", "3", "--objective", "iwae"]
    assert main([*args, "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    meta = json.loads((out / "config.json").read_text())["metadata"]
    final = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("final")][
        -1
    ]
    assert "# IWAE (K = 5)" in card and "`--objective iwae --iw-k 5`" in card
    assert "--objective iwae --iw-k 5" in card.split("## Reproduce")[1]  # the reproduce line names it
    assert f"| −ELBO (nats/image) | {final['eval_recon'] + final['eval_kl']:.2f} |" in card
    assert f"| −IW bound, K = 5 (nats/image, ≥ −log p(x)) | {-final['eval_iw_bound']:.2f} |" in card
    assert meta["objective"] == "iwae" and meta["iw_k"] == 5
    # The held-out bound is the IW bound of the saved model on the held-out images (K = 5, fixed noise).
    assert final["eval_iw_bound"] >= -(final["eval_recon"] + final["eval_kl"]) - 5.0


def test_an_elbo_run_keeps_its_card_and_config():
    cfg = RunConfig(dataset="dsprites")
    objectives.prepare(cfg)
    assert (cfg.objective, cfg.iw_k) == ("elbo", None)
    assert objectives.training_module(model := _model(), cfg) is model
    assert objectives.final_numbers(model, cfg, _images()) == {}
