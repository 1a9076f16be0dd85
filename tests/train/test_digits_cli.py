"""The digits-recipe flags of `python -m train` through the CLI: --likelihood, the data-driven preset
default, --time-limit, held-out tracking (--eval-every, --keep-best), the KL warm-up default, the thread
default and the non-binary warning. Tiny data, a few steps each."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train import threads
from train.__main__ import main
from train.config import MLP_MAX_SIZE, build_parser, default_preset
from train.report import heldout_trend
from vae_triton.model import VAE

SPRITES = "--dataset dsprites --limit 64 --batch-size 16 --no-progress --eval-images 32".split()


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch, tmp_path):
    # These tests are about the trainer's flags; the kernels have their own tests.
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    monkeypatch.setenv("VAE_TRITON_CACHE", str(tmp_path / "cache"))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def run_config(out: Path) -> dict:
    return json.loads((out / "run_config.json").read_text())


@pytest.mark.parametrize(
    "preset, likelihood", [("mlp", "gaussian"), ("small", "bernoulli"), ("dsprites", "gaussian")]
)
def test_likelihood_flag_reaches_every_preset(tmp_path, preset, likelihood):
    out = tmp_path / "run"
    args = [*SPRITES, "--preset", preset, "--likelihood", likelihood, "--latent-dim", "3", "--steps", "2"]
    assert main([*args, "--out", str(out)]) == 0
    model = VAE.from_pretrained(out)
    assert run_config(out)["preset"] == preset and (model.config.arch == "mlp") == (preset == "mlp")
    assert model.config.likelihood == likelihood and run_config(out)["likelihood"] == likelihood
    final = records(out)[-1]
    # bits/dim over the data's true D = 1·64·64, in the likelihood's own convention
    d = 64 * 64
    nll = final["eval_recon"] + final["eval_kl"]
    ln256 = d * np.log(256) if likelihood == "gaussian" else 0.0
    assert final["eval_bpd"] == pytest.approx((nll + ln256) / (d * np.log(2)), rel=1e-6)


def test_preset_default_follows_the_data_and_help_says_how():
    assert default_preset("folder", (1, 28, 28)) == "mlp"
    assert default_preset("folder", (1, MLP_MAX_SIZE, MLP_MAX_SIZE)) == "mlp"
    assert default_preset("folder", (1, 64, 64)) == "celeba64"
    assert default_preset("folder", (3, 28, 28)) == "celeba64"
    assert default_preset("dsprites", (1, 64, 64)) == "dsprites"
    text = " ".join(build_parser().format_help().split())
    assert f"mlp (two fully connected hidden layers) for grey images of at most {MLP_MAX_SIZE} px" in text


def _grey_folder(root: Path, n: int, grey_rows: int) -> float:
    """n binary 28×28 PNGs whose first `grey_rows` rows are mid-grey; returns the grey share."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((28, 28)) > 0.5).astype(np.uint8) * 255
        img[:grey_rows] = 128
        Image.fromarray(img).save(root / f"{i:03d}.png")
    return grey_rows / 28


def test_bernoulli_on_grey_pixels_warns_with_the_share(tmp_path, capsys):
    share = _grey_folder(tmp_path / "digits", 16, grey_rows=2)
    common = [
        "--dataset",
        "folder",
        "--data-dir",
        str(tmp_path / "digits"),
        "--resolution",
        "28",
        "--preset",
        "mlp",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
        "--eval-images",
        "8",
    ]
    assert main([*common, "--likelihood", "bernoulli", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "not binary" in err and f"{share:.1%} of the pixels" in err and "--binarize" in err
    assert main([*common, "--likelihood", "gaussian", "--out", str(tmp_path / "g")]) == 0
    assert "not binary" not in capsys.readouterr().err


def test_time_limit_stops_cleanly_with_a_checkpoint_and_a_model_card(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*SPRITES, "--preset", "mlp", "--steps", "1000000", "--time-limit", "1.5", "--out", str(out)]
    assert main(args) == 0
    assert "--time-limit 1.5 s reached" in capsys.readouterr().err
    model = VAE.from_pretrained(out)
    steps = model.metadata["steps"]
    assert 0 < steps < 1_000_000 and model.metadata["finished"]
    assert model.metadata["time_limit_s"] == 1.5 and model.metadata["planned_steps"] == 1_000_000
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert str(steps) in json.dumps(latest)
    card = (out / "README.md").read_text()
    assert f"Stopped by `--time-limit 1.5` after {steps} of 1000000" in card
    assert records(out)[-1]["final"] and records(out)[-1]["eval_split"] == "test"


def test_eval_every_reports_the_test_split_and_keep_best_saves_the_best(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*SPRITES, "--preset", "mlp", "--steps", "6", "--eval-every", "2", "--keep-best", "--lr", "3e-3"]
    assert main([*args, "--out", str(out)]) == 0
    held = [r for r in records(out) if "heldout_elbo" in r]
    assert [r["step"] for r in held] == [2, 4, 6]
    printed = [ln for ln in capsys.readouterr().out.splitlines() if "held-out ELBO" in ln]
    assert [ln.split()[1] for ln in printed] == ["2/6", "4/6", "6/6"]
    assert f"held-out ELBO {held[0]['heldout_elbo']:.2f} nats on 32 test images" in printed[0]
    assert {r["heldout_split"] for r in held} == {"test"} and {r["heldout_images"] for r in held} == {32}
    for r in held:
        assert r["heldout_elbo"] == pytest.approx(-(r["heldout_recon"] + r["heldout_kl"]))
    best = max(held, key=lambda r: r["heldout_elbo"])
    # OUT/ holds the best model (on the test split here: dSprites has no validation split).
    from train.data import get_dataset
    from train.heldout import evaluate_fixed

    kept = VAE.from_pretrained(out)
    test_x = get_dataset("dsprites", "test", limit=32).tensor(range(32))
    assert evaluate_fixed(kept, test_x)["eval_elbo"] == pytest.approx(best["heldout_elbo"], rel=1e-5)
    final = kept.metadata
    assert final["best_step"] == best["step"] and final["heldout_split"] == "test"
    assert final["kept_step"] == best["step"] and final["kept_by"] == "best"
    card = (out / "README.md").read_text()
    assert "the table above is on the `test` split" in card and "`heldout_*` lines on the test split" in card
    assert f"**Model kept: step {best['step']} of 6**" in card and "numbers there are optimistic" in card
    # The convergence check: the held-out ELBO over the last 20 % of the steps (the evaluation at step ≤ 4.8).
    change = held[2]["heldout_elbo"] - held[1]["heldout_elbo"]
    assert final["heldout_trend_from_step"] == 4 and final["heldout_trend_change"] == pytest.approx(change)
    assert f"at step 4 → {held[2]['heldout_elbo']:.2f} at step 6, a change of {change:+.2f} nats" in card


def test_the_held_out_trend_needs_an_evaluation_before_the_last_fifth():
    rows = [{"step": s, "heldout_elbo": e} for s, e in [(10, -90.0), (80, -60.0), (90, -59.5), (100, -59.0)]]
    assert heldout_trend(rows) == {
        "heldout_trend_from_step": 80,
        "heldout_trend_from": -60.0,
        "heldout_trend_change": 1.0,
    }
    assert heldout_trend(rows[2:]) == {} and heldout_trend([{"step": 5, "loss": 1.0}]) == {}


def test_held_out_elbo_is_the_elbo_of_the_test_images(tmp_path):
    """The tracked number is the model's ELBO on the first test images, not on training images."""
    from train.data import get_dataset
    from train.heldout import evaluate_fixed

    out = tmp_path / "run"
    assert main([*SPRITES, "--preset", "mlp", "--steps", "2", "--eval-every", "2", "--out", str(out)]) == 0
    held = [r for r in records(out) if "heldout_elbo" in r][-1]
    model = VAE.from_pretrained(out)
    test = get_dataset("dsprites", "test", limit=32)
    x = test.tensor(range(32))
    assert evaluate_fixed(model, x)["eval_elbo"] == pytest.approx(held["heldout_elbo"], rel=1e-5)
    train_x = get_dataset("dsprites", "train", limit=32).tensor(range(32))
    assert evaluate_fixed(model, train_x)["eval_elbo"] != pytest.approx(held["heldout_elbo"], rel=1e-5)


def test_kl_warmup_is_on_by_default_and_zero_turns_it_off(tmp_path):
    args = [*SPRITES, "--preset", "mlp", "--steps", "20", "--log-every", "1", "--eval-every", "20"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    assert run_config(tmp_path / "default")["kl_warmup_steps"] == 2  # 10 % of 20 steps
    betas = [r["beta"] for r in records(tmp_path / "default") if "beta" in r]
    assert betas[:3] == [0.5, 1.0, 1.0]
    assert main([*args, "--kl-warmup-steps", "0", "--out", str(tmp_path / "off")]) == 0
    assert {r["beta"] for r in records(tmp_path / "off") if "beta" in r} == {1.0}


def test_thread_default_takes_the_free_cores(monkeypatch):
    cores = threads.available_cores()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.default_num_threads() == min(threads.TORCH_DEFAULT_THREADS, cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 3.0, 0.0, 0.0))
    assert threads.default_num_threads() == 1
    before = torch.get_num_threads()
    try:
        assert threads.set_num_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="--num-threads"):
            threads.set_num_threads(0)
    finally:
        torch.set_num_threads(before)


def test_num_threads_is_recorded_and_bad_values_are_refused(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        args = [*SPRITES, "--preset", "mlp", "--steps", "1", "--num-threads", "1", "--out", str(out)]
        assert main(args) == 0
        assert VAE.from_pretrained(out).metadata["num_threads"] == 1
    finally:
        torch.set_num_threads(before)
    for bad in (["--num-threads", "0"], ["--time-limit", "0"], ["--likelihood", "laplace"]):
        with pytest.raises(SystemExit) as e:
            main([*SPRITES, *bad, "--out", str(tmp_path / "bad")])
        assert e.value.code == 2
        assert bad[0] in capsys.readouterr().err
