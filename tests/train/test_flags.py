"""`python -m train`'s flags, declared once on RunConfig's fields (train/config.py, train/flags.py): the
parser and the `--resume` / reproduce-line sets are made from the declarations, and every value a flag
cannot take is refused in one line that names it, before any data is loaded or anything is written."""

import argparse
import math
from dataclasses import fields

import pytest

from train import command_line
from train.__main__ import main
from train.config import RunConfig, build_parser, parse_args

# ---- bad values: one line naming the flag, before any work ----------------------------------------
QUICK = (
    "--limit 64 --batch-size 16 --preset small --latent-dim 2 --eval-images 16 --num-threads 1 --no-progress"
).split()
BAD = {
    # each case: (its arguments, the flag the message must name)
    "beta nan": (["--steps", "1", "--beta", "nan"], "--beta"),
    "beta inf": (["--steps", "1", "--beta", "inf"], "--beta"),
    "free-bits nan": (["--steps", "1", "--free-bits", "nan"], "--free-bits"),
    "grad-clip nan": (["--steps", "1", "--grad-clip", "nan"], "--grad-clip"),
    "lr inf": (["--steps", "1", "--lr", "inf"], "--lr"),
    "device foo": (["--steps", "1", "--device", "foo"], "--device"),
    "epochs inf": (["--epochs", "inf"], "--epochs"),
    "seed 2**70": (["--steps", "1", "--seed", str(2**70)], "--seed"),
    "weight-decay nan": (["--steps", "1", "--weight-decay", "nan"], "--weight-decay"),
    "split-seed -1": (["--steps", "1", "--split-seed", "-1"], "--split-seed"),
    # celeba: the preset takes any multiple of 32, so only a bound on the size stops the decoder from
    # allocating 99968² px per image (or, offline, a data error that does not name the flag).
    "resolution 99968": (["--dataset", "celeba", "--steps", "1", "--resolution", "99968"], "--resolution"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_value_is_one_line_naming_the_flag_before_any_work(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args, named = BAD[case]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main([*QUICK, *args, "--out", str(out)])
    std = capsys.readouterr()
    lines = std.err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in std.err, std.err
    assert named in lines[0] and std.out == "", std.err
    assert not out.exists()


@pytest.mark.parametrize(
    "value, fine",
    [
        ("grad_clip", math.inf),
        ("time_limit", math.inf),
        ("seed", 2**32 - 1),
        ("split_seed", 0),
        ("beta", 0.0),
    ],
)
def test_values_that_mean_something_stay_accepted(value, fine):
    """inf is 'no clipping' for --grad-clip and 'no limit' for --time-limit; the bounds are inclusive."""
    assert getattr(RunConfig(**{value: fine}), value) == fine


@pytest.mark.parametrize("value", [math.nan, -1.0])
def test_the_python_api_refuses_the_same_values(value):
    with pytest.raises(ValueError, match="--free-bits"):
        RunConfig(free_bits=value)


# ---- one declaration per flag ---------------------------------------------------------------------
def _options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_run_config_field_is_exactly_one_flag_with_help_and_a_group():
    parser = build_parser()
    actions = _options(parser)
    assert sorted(a.dest for a in actions) == sorted(f.name for f in fields(RunConfig))
    for a in actions:
        assert a.option_strings[0] == "--" + a.dest.replace("_", "-"), a.option_strings
        assert a.help and len(a.help) > 10, a.dest
    grouped = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert {grouped[a.dest] for a in actions} == {"data", "model", "optimisation", "hardware", "output"}
    titles = [g.title for g in parser._action_groups if g._group_actions and g.title != "options"]
    assert titles == ["data", "model", "optimisation", "hardware", "output"]  # the --help order
    words = [o for a in actions for o in a.option_strings]
    assert len(words) == len(set(words))


def test_switches_keep_their_no_form_and_store_true_flags_do_not_gain_one():
    options = {o for a in _options(build_parser()) for o in a.option_strings}
    for name in ("hflip", "compile", "channels-last", "cuda-graph", "progress", "keep-best"):
        assert {f"--{name}", f"--no-{name}"} <= options, name
    assert "--no-quiet" not in options
    assert parse_args(["--no-channels-last", "--quiet"]).channels_last is False


# The sets as they were kept by hand (before the flags were declared on the fields): the behaviour
# `--resume` and the model card's reproduce line must keep.
OLD_RESUMABLE = {
    "steps",
    "epochs",
    "time_limit",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "eval_images",
    "max_bad_steps",
    "progress",
    "quiet",
    "device",
    "num_threads",
    "compile",
    "cuda_graph",
    "push_to_hub",
    "cache_dir",
    "data_dir",
    "out",
    "resume",
}
OLD_NOT_IN_RECIPE = {"resume", "progress", "quiet", "cache_dir", "push_to_hub"}
OLD_PRESENTATION = {"progress", "quiet", "resume", "out"}
OLD_ALWAYS_IN_RECIPE = {"dataset", "preset", "beta", "seed", "out"}


def test_the_generated_sets_equal_the_hand_kept_ones():
    assert command_line.RESUMABLE == OLD_RESUMABLE
    assert command_line.NOT_IN_RECIPE == OLD_NOT_IN_RECIPE
    assert command_line.PRESENTATION == OLD_PRESENTATION
    assert set(command_line.ALWAYS_IN_RECIPE) == OLD_ALWAYS_IN_RECIPE


def test_parser_defaults_are_the_field_defaults():
    defaults = vars(build_parser().parse_args([]))
    assert defaults == {f.name: f.default for f in fields(RunConfig)}
    assert isinstance(build_parser(), argparse.ArgumentParser)


@pytest.mark.parametrize(
    "given, message",
    [
        (dict(beta=math.nan), "--beta nan: must be a finite number >= 0 (β multiplies the KL term)"),
        (dict(seed=-1), "--seed -1: must be an integer from 0 to 4294967295"),
        (dict(batch_size=0), "--batch-size 0: must be a positive integer"),
        (dict(lr=math.inf), "--lr inf: must be a finite positive number"),
        (
            dict(dataset="folder", test_fraction=1.5),
            "--test-fraction 1.5: must be a number strictly between 0",
        ),
    ],
)
def test_the_message_says_what_the_flag_must_be(given, message):
    with pytest.raises(ValueError) as e:
        RunConfig(**given)
    assert str(e.value).startswith(message), str(e.value)
