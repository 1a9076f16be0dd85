"""`python -m train` as a user meets it: what it prints, what --resume does, and how it fails.

Each test runs the CLI in-process (`train.__main__.main`) on tiny dSprites runs and reads what a user
would read: stdout, stderr, the exit code and the files in --out.
"""

import argparse
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train.loop as loop
from train.__main__ import main
from train.command_line import RESUMABLE, explicit_fields, reproduce_command
from train.config import RunConfig, build_parser, parse_args
from train.report import read_metrics

SPRITES = ["--dataset", "dsprites", "--limit", "64", "--batch-size", "16"]
TINY = ["--preset", "small", "--latent-dim", "4", "--eval-images", "32", "--num-threads", "1"]
TQDM_BAR = re.compile(r"\d+%\||it/s|img/s\]|step/s")


@pytest.fixture(autouse=True)
def torch_ops(monkeypatch):
    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")  # the kernels have their own tests


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def tree(folder: Path) -> dict:
    """Every file under `folder` with its bytes: to assert that a refused command wrote nothing."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


# ---- a CLI that talks ----------------------------------------------------------------------------
def test_no_progress_prints_a_start_block_log_lines_and_a_final_block_and_no_bar(tmp_path, capsys):
    out = tmp_path / "run"
    # A folder dataset builds its cache on this run: its bar must be silenced too.
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(8):
        Image.new("RGB", (20 + i, 24), (30 * i, 90, 200)).save(images / f"{i}.png")
    folder = ["--dataset", "folder", "--data-dir", images, "--cache-dir", tmp_path / "cache"]
    code, stdout, stderr = run(
        capsys,
        *folder,
        "--resolution",
        "16",
        "--batch-size",
        "4",
        "--preset",
        "small",
        "--steps",
        "6",
        "--log-every",
        "2",
        "--eval-images",
        "8",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, stderr
    assert not TQDM_BAR.search(stderr), stderr
    start = stdout.split("step 2/6")[0]
    for word in (
        "device",
        "CPU",
        "folder/train: 8 images of 3×16×16",
        "small preset",
        "parameters",
        "batch   4",
        "steps   6",
        str(out.resolve()),
        "cache",
        "KB",
    ):
        assert word in start, (word, start)
    assert [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("step ")] == ["2/6", "4/6", "6/6"]
    final = stdout.split("done: 6 steps")[1]
    files = [str(out / name) for name in ("model.safetensors", "README.md", "metrics.jsonl")]
    commands = [f"python -m train.evaluate --checkpoint {out}", f"python -m demo --checkpoint {out}"]
    for word in ("recon NLL", "KL", "ELBO", "elapsed", "img/s", *files, *commands):
        assert word in final, (word, final)
    elbo = float(re.search(r"ELBO\s+(-?[\d.]+)", final).group(1))
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert elbo == pytest.approx(-(meta["eval_recon"] + meta["eval_kl"]), abs=0.01)


def test_progress_bar_replaces_the_log_lines(tmp_path, capsys):
    code, stdout, stderr = run(
        capsys, *SPRITES, *TINY, "--steps", "4", "--log-every", "2", "--out", tmp_path / "run"
    )
    assert code == 0
    assert "train" in stderr and "4/4" in stderr  # tqdm's bar
    assert not [ln for ln in stdout.splitlines() if ln.startswith("step ")]


def test_quiet_prints_nothing_but_still_trains(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run(capsys, *SPRITES, *TINY, "--steps", "3", "--out", out, "--quiet")
    assert code == 0 and stdout == "" and stderr == ""
    assert (out / "model.safetensors").is_file()


def test_resume_on_a_finished_run_says_so_and_how_to_train_longer(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*SPRITES, *TINY, "--steps", "4", "--out", out, "--no-progress"]
    assert run(capsys, *args)[0] == 0
    before = tree(out)
    code, stdout, stderr = run(capsys, *args, "--resume")
    assert code == 0
    hint = stderr[stderr.index("python -m train") :].split("\n")[0]
    assert "already finished" in stderr and hint.endswith(" --resume"), stderr
    assert hint.count("--steps") == 1 and "--steps 8 " in hint, hint  # one --steps: the larger one
    assert tree(out) == before  # nothing re-evaluated or rewritten


# ---- the reproduce line --------------------------------------------------------------------------
def test_the_card_reproduces_a_resumed_run_from_scratch(tmp_path, capsys):
    split = tmp_path / "split"
    common = [*SPRITES, *TINY, "--log-every", "2", "--checkpoint-every", "2", "--beta", "2", "--hflip"]
    loop.train(parse_args([*common, "--steps", "4", "--out", str(split), "--no-progress"]), stop_at=3)
    assert run(capsys, *common, "--steps", "6", "--out", split, "--resume", "--quiet")[0] == 0
    card = (split / "README.md").read_text()
    command = re.search(r"```bash\n(python -m train .*)\n```", card).group(1)
    for word in ("--resume", "progress", "--quiet"):
        assert word not in command, command
    words = shlex.split(command)
    fresh = tmp_path / "fresh"
    words[words.index("--out") + 1] = str(fresh)
    assert words[:3] == ["python", "-m", "train"]
    assert run(capsys, *words[3:], "--quiet")[0] == 0
    a, b = load_file(split / "model.safetensors"), load_file(fresh / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_command_parses_back_to_the_same_run():
    cfg = parse_args([*SPRITES, "--beta", "4", "--no-channels-last", "--compile", "--resume", "--quiet"])
    again = parse_args(shlex.split(reproduce_command(cfg))[3:])
    ignore = {"resume", "quiet", "progress"}
    assert {k: v for k, v in again.to_dict().items() if k not in ignore} == {
        k: v for k, v in cfg.to_dict().items() if k not in ignore
    }
    assert "--preset dsprites" in reproduce_command(cfg)  # resolved, not left to a default


# ---- --help ----------------------------------------------------------------------------------------
def test_help_states_one_true_default_per_flag():
    parser = build_parser()
    text = parser.format_help()
    assert "(default: None)" not in text and "default: False" not in text
    defaults = RunConfig()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        helped = parser._get_formatter()._expand_help(action) if action.help else ""
        assert helped.lower().count("default") <= 1, (action.dest, helped)
        shown = re.search(r"\(default: ([^)]*)\)", helped)
        value = getattr(defaults, action.dest, None)
        if shown and action.default is not None and not isinstance(action.default, bool):
            assert shown.group(1) == str(value), (action.dest, shown.group(1), value)
        if isinstance(action, argparse.BooleanOptionalAction) and action.default is not None:
            assert shown and shown.group(1) == ("on" if value else "off"), (action.dest, helped)
    assert vars(parser.parse_args([])).keys() <= set(RunConfig().to_dict())
    assert parse_args([]) == RunConfig()  # the defaults the help shows are the ones a run uses


def test_evaluate_help_states_each_default_once():
    from train import evaluate

    parser = evaluate.build_parser()
    assert "(default: None)" not in parser.format_help()
    parsed = vars(parser.parse_args(["--checkpoint", "x"]))
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        helped = parser._get_formatter()._expand_help(action) if action.help else ""
        assert helped.lower().count("default") <= 1, (action.dest, helped)
        shown = re.search(r"\(default: ([^)]*)\)", helped)
        if shown and isinstance(parsed[action.dest], bool):
            assert shown.group(1) == ("on" if parsed[action.dest] else "off"), (action.dest, helped)
        elif shown and isinstance(parsed[action.dest], int | float | str):
            assert shown.group(1) == str(parsed[action.dest]), (action.dest, helped)


# ---- --resume with changed flags ---------------------------------------------------------------
@pytest.fixture
def stopped_run(tmp_path):
    """A run stopped at step 2 of 4 (checkpoint written), as Ctrl-C leaves it."""
    out = tmp_path / "run"
    args = [*SPRITES, *TINY, "--steps", "4", "--beta", "4", "--out", str(out), "--no-progress"]
    loop.train(parse_args(args), stop_at=2)
    return out, args


@pytest.mark.parametrize(
    "changed",
    [
        ["--batch-size", "8"],
        ["--beta", "2"],
        ["--lr", "0.01"],
        ["--latent-dim", "6"],
        ["--seed", "3"],
        ["--preset", "dsprites"],
        ["--lr-schedule", "cosine"],
    ],
)
def test_resume_refuses_flags_that_change_the_experiment(stopped_run, capsys, changed):
    out, args = stopped_run
    before = tree(out)
    code, _, err = run(capsys, *args, *changed, "--resume")
    assert code == 2 and "Traceback" not in err
    assert f"{changed[0]} {changed[1]}" in err and "the run used" in err and "--out" in err, err
    assert tree(out) == before


def test_resume_lists_every_difference_at_once(stopped_run, capsys):
    out, args = stopped_run
    code, _, err = run(capsys, *args, "--beta", "1", "--lr", "0.01", "--resume")
    assert code == 2 and "--beta 1.0 (the run used 4.0)" in err and "--lr 0.01 (the run used 0.001)" in err


def test_resume_applies_safe_flags_with_a_notice(stopped_run, capsys):
    out, args = stopped_run
    code, stdout, err = run(
        capsys, *args, "--steps", "6", "--log-every", "3", "--eval-every", "6", "--resume"
    )
    assert code == 0, err
    assert "--resume: applying" in err and "--steps 6 (was 4)" in err and "--log-every 3 (was 50)" in err
    assert json.loads((out / "config.json").read_text())["metadata"]["steps"] == 6
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r][-2:] == [3, 6]


@pytest.mark.parametrize("length", [["--steps", "6"], ["--epochs", "3"]])
def test_resume_of_a_cosine_run_refuses_another_length(tmp_path, capsys, length):
    """Cosine's rate is a function of step / planned steps: another length would change every later
    step's rate, so the run would no longer be the one its card's reproduce line trains."""
    out = tmp_path / "run"
    args = [*SPRITES, *TINY, "--steps", "4", "--lr-schedule", "cosine", "--out", str(out), "--no-progress"]
    loop.train(parse_args(args), stop_at=2)
    before = tree(out)
    at = args.index("--steps")
    again = args[:at] + args[at + 2 :]
    code, _, err = run(capsys, *again, *length, "--resume")
    assert code == 2 and "Traceback" not in err
    shown = float(length[1]) if length[0] == "--epochs" else length[1]
    assert f"{length[0]} {shown} (the run used" in err and "cosine spans the planned steps" in err, err
    assert tree(out) == before
    assert run(capsys, *args, "--resume", "--quiet")[0] == 0  # the same length continues


def test_a_finished_cosine_run_points_to_a_new_longer_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*SPRITES, *TINY, "--steps", "4", "--lr-schedule", "cosine", "--out", out, "--no-progress"]
    assert run(capsys, *args)[0] == 0
    code, _, err = run(capsys, *args, "--resume")
    hint = err[err.index("python -m train") :].split("\n")[0]
    assert code == 0 and "start a new run with more --steps" in err and "--resume" not in hint, err
    assert "--steps 8 " in hint and f"--out {out}-longer" in hint, hint


def test_every_run_config_field_is_either_resumable_or_guarded():
    # A new flag must be classified: guarded by default (refused on --resume when it differs).
    names = {f for f in RunConfig().to_dict()}
    assert explicit_fields(["--beta", "2", "--no-progress"]) == {"beta", "progress"}
    assert {"steps", "log_every", "eval_every", "checkpoint_every", "progress"} <= RESUMABLE
    assert not {"batch_size", "beta", "lr", "latent_dim", "preset", "seed", "dataset"} & RESUMABLE
    assert names - RESUMABLE  # the experiment-defining ones are refused


# ---- refused before anything is written ----------------------------------------------------------
def test_batch_size_one_with_batchnorm_is_refused_up_front(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (50 * i, 20, 90)).save(images / f"{i}.png")
    out = tmp_path / "run"
    code, _, err = run(
        capsys,
        "--dataset",
        "folder",
        "--data-dir",
        images,
        "--cache-dir",
        tmp_path / "c",
        "--resolution",
        "32",
        "--batch-size",
        "1",
        "--steps",
        "2",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 2 and "BatchNorm" in err and "--batch-size 2" in err and "Traceback" not in err
    assert not out.exists()
    # The fix works: the same command with batch size 2 trains.
    code, _, err = run(
        capsys,
        "--dataset",
        "folder",
        "--data-dir",
        images,
        "--cache-dir",
        tmp_path / "c",
        "--resolution",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--out",
        out,
        "--quiet",
        "--eval-images",
        "4",
    )
    assert code == 0, err


def _read_only_target(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new files to everyone
        return Path("/sys/vae-triton-run")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "run"


@pytest.mark.parametrize("kind", ["a file", "under a file", "read-only"])
def test_out_that_cannot_be_a_folder_fails_first_and_writes_nothing(tmp_path, capsys, kind):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    out = {"a file": a_file, "under a file": a_file / "run", "read-only": _read_only_target(tmp_path)}[kind]
    before = tree(tmp_path)
    code, stdout, err = run(capsys, *SPRITES, *TINY, "--steps", "2", "--out", out, "--no-progress")
    assert code == 2 and "--out" in err and str(out) in err and "Traceback" not in err, err
    assert stdout == ""  # refused before the start block: no work done
    assert tree(tmp_path) == before


# ---- failures while training -------------------------------------------------------------------
def _scripted_steps(monkeypatch, bad_at):
    """Replace the step by one that reports a non-finite loss at the steps where `bad_at(i)`."""
    real = loop.make_train_step

    def make(*a, **k):
        inner = real(*a, **k)

        def step(batch, i):
            result = inner(batch, i)
            if bad_at(i):
                return loop.StepResult(
                    torch.tensor(False),
                    torch.tensor(float("nan")),
                    result.recon,
                    result.kl,
                    torch.tensor(float("inf")),
                    result.beta,
                )
            return result

        return step

    monkeypatch.setattr(loop, "make_train_step", make)


def test_lr_10_stops_and_claims_no_checkpoint_that_does_not_exist(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*SPRITES, "--preset", "dsprites", "--steps", "40", "--lr", "10", "--max-bad-steps", "3"]
    code, _, err = run(
        capsys,
        *args,
        "--log-every",
        "1",
        "--eval-images",
        "32",
        "--num-threads",
        "1",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 3 and "No checkpoint was written" in err and "Traceback" not in err, err
    assert not (out / "checkpoints").exists() and not (out / "model.safetensors").exists()


def test_divergence_before_the_first_checkpoint_claims_no_checkpoint(tmp_path, capsys, monkeypatch):
    _scripted_steps(monkeypatch, lambda i: True)  # what --lr 10 does on step 1
    out = tmp_path / "run"
    code, _, err = run(
        capsys,
        *SPRITES,
        *TINY,
        "--steps",
        "20",
        "--lr",
        "10",
        "--max-bad-steps",
        "3",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 3 and "No checkpoint was written" in err and "checkpoint (step" not in err, err
    assert not (out / "checkpoints").exists() and not (out / "model.safetensors").exists()
    assert "failed" in (out / "README.md").read_text().lower()


def test_divergence_after_a_checkpoint_names_it(tmp_path, capsys, monkeypatch):
    _scripted_steps(monkeypatch, lambda i: i >= 4)
    out = tmp_path / "run"
    code, _, err = run(
        capsys,
        *SPRITES,
        *TINY,
        "--steps",
        "20",
        "--checkpoint-every",
        "2",
        "--max-bad-steps",
        "3",
        "--out",
        out,
        "--no-progress",
    )
    named = int(re.search(r"last good checkpoint \(step (\d+)\)", err).group(1))
    assert code == 3 and named >= 4, err
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == named


def test_a_run_that_skipped_most_steps_ends_non_zero_and_its_card_says_so(tmp_path, capsys, monkeypatch):
    _scripted_steps(monkeypatch, lambda i: i % 4 != 0)  # 3 of every 4 steps skipped
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        *SPRITES,
        *TINY,
        "--steps",
        "12",
        "--max-bad-steps",
        "100",
        "--log-every",
        "4",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 3 and "9 of its 12 steps were skipped" in err, err
    card = (out / "README.md").read_text()
    assert "failed" in card.lower() and "9 of its 12 steps" in card and "ELBO" not in card
    assert not (out / "model.safetensors").exists() and "done:" not in stdout


def test_skipped_steps_beyond_max_bad_steps_in_all_stop_the_run(tmp_path, capsys, monkeypatch):
    _scripted_steps(monkeypatch, lambda i: i % 2 == 1)  # never two in a row
    code, _, err = run(
        capsys,
        *SPRITES,
        *TINY,
        "--steps",
        "40",
        "--max-bad-steps",
        "4",
        "--log-every",
        "2",
        "--out",
        tmp_path / "run",
        "--no-progress",
    )
    assert code == 3 and "in all (more than --max-bad-steps)" in err, err


# ---- metrics.jsonl ---------------------------------------------------------------------------------
def test_resume_drops_a_torn_last_metrics_line_with_a_notice(stopped_run, capsys):
    out, args = stopped_run
    metrics = out / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "loss": 12')  # the process died mid-append
    code, _, err = run(capsys, *args, "--resume")
    assert code == 0, err
    assert str(metrics) in err and "torn last line" in err
    assert all(isinstance(r, dict) for r in read_metrics(metrics))


def test_a_damaged_metrics_line_in_the_middle_is_named(stopped_run, capsys):
    out, args = stopped_run
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{oops", *lines]) + "\n")
    code, _, err = run(capsys, *args, "--resume")
    assert code == 2 and f"{metrics} line 1" in err and "Traceback" not in err, err
