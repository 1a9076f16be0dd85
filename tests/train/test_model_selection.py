"""Held-out model selection by default (issue 18, item 2): a folder gets a seeded validation split carved
from its training files (recorded in run_config.json), the model written to OUT/ is the one with the best
ELBO on it at the --eval-every evaluations, the test split keeps the reported numbers, and the card and
the final block say which step was kept, on which split, and what the curve did after it. dSprites (no
validation split) keeps the last step's model. Bad input is refused in one line naming the flag, before
anything is written."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_run_plan import common, digits_folder

from train import heldout, loop
from train.__main__ import main
from train.config import parse_args
from train.data import dataset_for_split
from train.folder import split_files
from train.heldout import evaluate_fixed
from train.report import after_kept
from vae_triton.model import VAE


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    monkeypatch.setenv("VAE_TRITON_CACHE", str(tmp_path / "cache"))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def tree(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def test_the_validation_split_is_seeded_disjoint_and_leaves_the_test_split_alone(tmp_path):
    data = digits_folder(tmp_path / "d", 200, n_test=30)
    train, _ = split_files(data, "train", None, 0, 0.1)
    valid, rule = split_files(data, "valid", None, 0, 0.1)
    everything, _ = split_files(data, "train", None, 0)
    assert len(valid) == 20 and len(train) == 180 and "--val-fraction 0.1 (seed 0): 20 of 200" in rule
    assert not set(train) & set(valid) and sorted(set(train) | set(valid)) == everything
    assert split_files(data, "valid", None, 0, 0.1)[0] == valid  # the same on every run
    assert split_files(data, "valid", None, 1, 0.1)[0] != valid  # --split-seed moves it
    assert split_files(data, "test", None, 0, 0.1)[0] == split_files(data, "test", None, 0)[0]
    # With --test-fraction too, the validation split comes out of the training part only.
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in everything:
        (flat / p.name).write_bytes(p.read_bytes())
    test = set(split_files(flat, "test", 0.2, 0)[0])
    valid = set(split_files(flat, "valid", 0.2, 0, 0.1)[0])
    assert len(test) == 40 and len(valid) == 16 and not test & valid


def test_which_split_picks_the_model_by_default(tmp_path):
    """A folder with a test split picks on it (no carve: the training images are worth more); one without
    gets a seeded validation split; dSprites-sized data keeps the last model (next test)."""
    args = ["--batch-size", "10", "--steps", "4", "--eval-every", "2"]
    for n_test, val_fraction, picked, reported in ((20, None, "test", "test"), (0, 0.1, "valid", "valid")):
        data = digits_folder(tmp_path / f"d{n_test}", 200, n_test=n_test)
        out = tmp_path / f"run{n_test}"
        assert main([*common(data), *args, "--out", str(out)]) == 0
        rc = json.loads((out / "run_config.json").read_text())
        assert rc["val_fraction"] == val_fraction and rc["keep_best"] is True
        meta = VAE.from_pretrained(out).metadata
        assert (
            meta["heldout_split"] == picked and meta["eval_split"] == reported and meta["kept_by"] == "best"
        )
        assert "numbers there are optimistic" in (out / "README.md").read_text()  # chosen where reported


def test_the_model_kept_is_the_best_on_the_validation_split_and_the_card_says_so(tmp_path, capsys):
    data = digits_folder(tmp_path / "d", 200)
    out = tmp_path / "run"
    args = [*common(data), "--batch-size", "10", "--steps", "40", "--eval-every", "8", "--lr", "3e-3"]
    assert main([*args, "--val-fraction", "0.1", "--out", str(out)]) == 0
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["val_fraction"] == 0.1 and rc["keep_best"] is True
    held = [r for r in records(out) if "heldout_elbo" in r]
    assert [r["step"] for r in held] == [8, 16, 24, 32, 40] and {r["heldout_split"] for r in held} == {
        "valid"
    }
    best = max(held, key=lambda r: r["heldout_elbo"])
    # OUT/ holds the best weights: their ELBO on the validation images is the best evaluation's.
    kept = VAE.from_pretrained(out)
    valid = dataset_for_split(rc, "valid", limit=16)
    assert valid.split == "valid" and len(valid) == 16
    assert evaluate_fixed(kept, valid.tensor(range(16)))["eval_elbo"] == pytest.approx(best["heldout_elbo"])
    meta = kept.metadata
    assert meta["kept_step"] == best["step"] and meta["kept_by"] == "best" and meta["eval_split"] == "test"
    assert meta["steps"] == 40 and meta["heldout_evaluations"] == 5
    card = (out / "README.md").read_text()
    assert f"**Model kept: step {best['step']} of 40**" in card
    assert "of 5 evaluations (every 8 steps) on 16 images of the `valid` split (held out of the" in card
    assert "the table above is on the `test` split" in card
    final_block = capsys.readouterr().out.split("done: 40 steps")[1]
    assert (
        f"step {best['step']}, the best ELBO on the valid split ({best['heldout_elbo']:.2f})" in final_block
    )


def test_a_later_decline_is_not_kept_and_is_reported(tmp_path, monkeypatch, capsys):
    """An ELBO that falls after the first evaluation: OUT/ gets the first evaluation's weights, and the
    card and final block give the decline after it."""
    real = heldout.evaluate_fixed
    calls = []

    def falling(model, x, **kw):  # the real numbers, with an ELBO that falls by 2 nats per evaluation
        r = real(model, x, **kw)
        calls.append(r["eval_elbo"])
        return {**r, "eval_elbo": -100.0 - 2 * len(calls)}

    monkeypatch.setattr(heldout, "evaluate_fixed", falling)
    data = digits_folder(tmp_path / "d", 200)
    out = tmp_path / "run"
    args = [*common(data), "--batch-size", "10", "--steps", "30", "--eval-every", "10"]
    assert main([*args, "--out", str(out), "--checkpoint-every", "10"]) == 0
    meta = VAE.from_pretrained(out).metadata
    assert meta["kept_step"] == 10 and meta["best_heldout_elbo"] == -102.0
    assert meta["after_kept_last"] == -106.0 and meta["after_kept_change"] == -4.0
    # The kept weights are step 10's checkpoint... which was replaced by later ones; they are the weights
    # the checkpoint carries as the best, and not the last step's.
    last = load_file(out / "checkpoints" / "step-00000030.safetensors")
    state = torch.load(out / "checkpoints" / "step-00000030.state.pt", weights_only=True)
    written = load_file(out / "model.safetensors")
    assert all(torch.equal(written[k], state["best_model"][k]) for k in written)
    assert any(not torch.equal(written[k], last[k]) for k in written)
    card = (out / "README.md").read_text()
    assert "After it the held-out ELBO fell to -106.00 at step 30 (-3.9 % over 2 evaluations)" in card
    assert "after it -3.9 % by step 30" in capsys.readouterr().out


def test_the_best_model_survives_a_stop_and_resume(tmp_path, monkeypatch):
    """The best evaluation (step 10, by a falling ELBO) lies before the stop at step 25: the resumed run
    keeps step 10's weights, from the checkpoint, exactly as the straight run does."""
    real = heldout.evaluate_fixed

    def falling(model, x, **kw):
        r = real(model, x, **kw)
        return {**r, "eval_elbo": -100.0 - 1e-3 * falling.step}

    monkeypatch.setattr(heldout, "evaluate_fixed", falling)
    evaluate = heldout.HeldOutTracker.evaluate

    def at_step(self, step):
        falling.step = step
        return evaluate(self, step)

    monkeypatch.setattr(heldout.HeldOutTracker, "evaluate", at_step)
    data = digits_folder(tmp_path / "d", 200)
    args = [
        *common(data),
        "--batch-size",
        "10",
        "--steps",
        "40",
        "--eval-every",
        "10",
        "--checkpoint-every",
        "20",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*args, "--out", str(straight)]) == 0
    assert loop.train(parse_args([*args, "--out", str(split)]), stop_at=25) == {"step": 25}
    assert main([*args, "--out", str(split), "--resume"]) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for out in (straight, split):
        meta = VAE.from_pretrained(out).metadata
        assert (
            meta["kept_step"] == 10
            and meta["heldout_evaluations"] == 4
            and meta["after_kept_evaluations"] == 3
        )
    last = load_file(split / "checkpoints" / "step-00000040.safetensors")
    assert any(not torch.equal(b[k], last[k]) for k in b)  # not the last step's weights


def test_after_kept_measures_the_curve_after_the_kept_step():
    rows = [
        {"step": s, "heldout_elbo": e} for s, e in [(10, -110.0), (20, -104.0), (30, -106.0), (40, -111.0)]
    ]
    assert after_kept(rows + [{"step": 40, "loss": 1.0}], 20) == {
        "after_kept_evaluations": 2,
        "after_kept_last_step": 40,
        "after_kept_last": -111.0,
        "after_kept_change": -7.0,
    }
    assert after_kept(rows, 40) == {"after_kept_evaluations": 0} and after_kept(rows, 25) == {}


def test_dsprites_keeps_the_last_model_and_says_why(tmp_path):
    out = tmp_path / "run"
    # The whole training split (rendered on demand): 700,416 images, too many to over-fit.
    args = "--dataset dsprites --batch-size 16 --no-progress --eval-images 32 --preset mlp".split()
    assert main([*args, "--steps", "4", "--eval-every", "2", "--out", str(out)]) == 0
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["keep_best"] is False and rc["val_fraction"] is None and rc["lr_schedule"] == "constant"
    meta = VAE.from_pretrained(out).metadata
    assert meta["kept_by"] == "last" and meta["kept_step"] == 4 and meta["heldout_split"] == "test"
    card = (out / "README.md").read_text()
    assert "**Model kept: the last step's (4)**" in card and "the data has no validation split" in card


@pytest.mark.parametrize(
    "extra, flag, words",
    [
        (["--steps", "5", "--epochs", "2"], "--epochs", "give --steps or --epochs, not both (--steps 5"),
        (["--val-fraction", "0.6"], "--val-fraction", "from 0 to 0.5"),
        (["--val-fraction", "0"], "--val-fraction", "from 0 to 0.5"),
        (["--val-fraction", "0.02"], "--val-fraction 0.02", "holds out 4 of the 200 training files"),
        (["--val-fraction", "0.5", "--batch-size", "150"], "--val-fraction 0.5", "leaves 100 training files"),
    ],
)
def test_bad_lengths_and_splits_are_one_line_naming_the_flag_and_write_nothing(
    tmp_path, capsys, extra, flag, words
):
    data = digits_folder(tmp_path / "d", 200)
    out = tmp_path / "run"
    try:  # refused by the parser (SystemExit 2) or by the run before it loads anything (returns 2)
        code = main([*common(data), *extra, "--out", str(out)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and flag in err and words in err and "Traceback" not in err and len(err.splitlines()) == 1
    )
    assert not out.exists() and tree(tmp_path / "cache") == {}  # refused before any decoding or writing


def test_a_tiny_folder_trains_without_a_validation_split_and_says_so(tmp_path, capsys):
    data = digits_folder(tmp_path / "d", 40, n_test=0)  # 0.1 × 40 = 4 images: too few to choose on
    out = tmp_path / "run"
    assert main([*common(data), "--batch-size", "10", "--steps", "4", "--out", str(out)]) == 0
    assert (
        "no validation split: --val-fraction 0.1 holds out 4 of the 40 training files"
        in capsys.readouterr().err
    )
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["val_fraction"] is None and rc["keep_best"] is False
    assert VAE.from_pretrained(out).metadata["kept_by"] == "last"
