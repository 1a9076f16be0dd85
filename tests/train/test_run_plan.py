"""A run without --steps / --epochs plans its length from the data (issue 18, item 1): PLAN_EPOCHS passes
over the training split, at most DEFAULT_STEPS steps, fitted to --time-limit by timing the first steps.
The planned steps are written to run_config.json, so the reproduce line and --resume give the same run,
bit for bit. Tiny folders, a few dozen steps each."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from train import config, loop
from train.__main__ import main
from train.config import (
    DEFAULT_STEPS,
    default_batch_size,
    default_eval_every,
    parse_args,
    plan_epochs,
    plan_steps,
)

DSPRITES_TRAIN = 737_280 - 36_864  # the 95 % training split (train/dsprites.py)
CELEBA_TRAIN = 162_770  # the official training split


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    monkeypatch.setenv("VAE_TRITON_CACHE", str(tmp_path / "cache"))


def digits_folder(root: Path, n_train: int, n_test: int = 20, size: int = 12) -> Path:
    """Binary grey PNGs in train/ and test/ (random strokes: something to fit and over-fit)."""
    rng = np.random.default_rng(n_train)
    for split, n in (("train", n_train), ("test", n_test)):
        if not n:
            continue  # no test split
        (root / split).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((size, size), np.uint8)
            r, c = rng.integers(0, size - 4, 2)
            img[r : r + 4, c : c + rng.integers(1, 4)] = 255
            Image.fromarray(img).save(root / split / f"{i:04d}.png")
    return root


def run_config(out: Path) -> dict:
    return json.loads((out / "run_config.json").read_text())


def common(data: Path) -> list[str]:
    cache = str(data.parent / "cache")
    return [
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        "--no-progress",
        "--eval-images",
        "16",
        "--cache-dir",
        cache,
    ]


def test_the_plan_is_passes_over_the_data_capped_for_large_data():
    # A data set 4× smaller gets 2× the passes and half the steps, never 4× the passes.
    assert plan_epochs(4000) == plan_epochs(40_000) == config.PLAN_EPOCHS == 100
    assert (
        plan_epochs(1000) == pytest.approx(2 * plan_epochs(4000))
        and plan_epochs(10) == config.PLAN_MAX_EPOCHS
    )
    assert plan_steps(4000, 100) == 4000 and plan_steps(1000, 100) == 2000 == plan_steps(4000, 100) // 2
    # dSprites and CelebA keep today's length and batch.
    assert plan_steps(DSPRITES_TRAIN, 64) == DEFAULT_STEPS == 10_000
    assert plan_steps(CELEBA_TRAIN, 256) == DEFAULT_STEPS
    assert default_batch_size("cpu", DSPRITES_TRAIN) == 64 and default_batch_size("cuda", 4000) == 256
    assert default_batch_size("cpu", 4000) == 100 and default_batch_size("cpu") == 64
    # --eval-every follows the length: 20 evaluations, 50 to 500 steps apart (10,000 steps: every 500).
    assert [default_eval_every(n) for n in (6, 1000, 3600, 10_000, 10**6)] == [50, 50, 180, 500, 500]


def test_two_data_sizes_get_their_passes_and_a_cosine_rate_that_ends_with_the_run(tmp_path, monkeypatch):
    # The rule at a test's length: 3 passes over 400 images or more, 3·sqrt(400 / N) below.
    monkeypatch.setattr(config, "PLAN_EPOCHS", 3)
    monkeypatch.setattr(config, "PLAN_REFERENCE_IMAGES", 400)
    steps = {}
    for n in (400, 100):
        data = digits_folder(tmp_path / f"d{n}", n)
        out = tmp_path / f"run{n}"
        assert main([*common(data), "--batch-size", "10", "--out", str(out)]) == 0
        rc = run_config(out)
        # A folder with a test split picks its model there: no validation split is carved out of train/.
        passes = 3 * (400 / n) ** 0.5
        assert rc["val_fraction"] is None and rc["keep_best"] is True and rc["steps"] == passes * (n // 10)
        assert rc["epochs"] is None and rc["length_plan"] == "data" and rc["lr_schedule"] == "cosine"
        assert rc["kl_warmup_steps"] == round(0.1 * rc["steps"]) and rc["eval_every"] == 50
        lrs = [
            r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r
        ]
        last = rc["steps"] - 1  # the rate of the last step: cosine over the planned steps, near 0
        assert lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * last / rc["steps"])), rel=1e-5)
        card = (out / "README.md").read_text()
        assert (
            f"Length: {rc['steps']} steps, planned from the data: {passes:g} passes over {n} images" in card
        )
        assert f"--steps {rc['steps']}" in card  # the reproduce line names the planned length
        steps[n] = rc["steps"]
    assert steps == {400: 120, 100: 60}  # 4× less data: half the steps, twice the passes


def test_a_length_fitted_to_the_time_limit_reproduces_bit_exactly(tmp_path, monkeypatch, capsys):
    """The first steps are timed and rewound: the run is the one its reproduce line (`--steps N`) trains."""
    monkeypatch.setattr(config, "PLAN_EPOCHS", 10**6)  # the time limit comes first
    monkeypatch.setattr(config, "PLAN_MAX_EPOCHS", 10**6)
    monkeypatch.setattr(config, "PLAN_TIME_SHARE", 0.25)  # room for a busy machine: no cut by the limit
    data = digits_folder(tmp_path / "d", 200)
    out = tmp_path / "timed"
    assert main([*common(data), "--batch-size", "10", "--time-limit", "4", "--out", str(out)]) == 0
    rc = run_config(out)
    steps = rc["steps"]
    assert rc["length_plan"] == "time-limit" and 1 <= steps < DEFAULT_STEPS  # fewer on a busy machine
    assert rc["lr_schedule"] == "cosine" and rc["kl_warmup_steps"] == round(0.1 * steps)
    assert "--time-limit 4 s reached" not in capsys.readouterr().err  # it ended at its planned step
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta["steps"] == steps and meta["length_plan"] == "time-limit"
    card = (out / "README.md").read_text()
    command = card.split("```bash\n")[1].split("\n```")[0]
    assert f"--steps {steps}" in command and "--time-limit" not in command
    words = shlex.split(command)
    words[words.index("--out") + 1] = str(tmp_path / "again")
    assert main([*words[3:], "--no-progress", "--eval-images", "16"]) == 0
    for name in ("model.safetensors", f"checkpoints/step-{steps:08d}.safetensors"):
        a, b = load_file(out / name), load_file(tmp_path / "again" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_planned_run_stopped_and_resumed_equals_the_straight_run(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "PLAN_EPOCHS", 4)
    monkeypatch.setattr(config, "PLAN_REFERENCE_IMAGES", 200)
    data = digits_folder(tmp_path / "d", 200)
    args = [*common(data), "--batch-size", "10", "--eval-every", "9", "--checkpoint-every", "10"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*args, "--out", str(straight)]) == 0
    assert loop.train(parse_args([*args, "--out", str(split)]), stop_at=30) == {"step": 30}
    assert run_config(split)["steps"] == 80  # written before the stop: --resume continues this plan
    assert main([*args, "--out", str(split), "--resume"]) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta_a = json.loads((straight / "config.json").read_text())["metadata"]
    meta_b = json.loads((split / "config.json").read_text())["metadata"]
    for key in ("steps", "kept_step", "kept_by", "best_heldout_elbo", "eval_elbo", "length_plan"):
        assert meta_a[key] == meta_b[key], key
