"""The command line as data: which flags a user gave, the command that reproduces a run, and what
`--resume` may change.

A run is defined by its `RunConfig`, not by the words typed: the model card's reproduce line is built
from the resolved config (no `--resume`, no progress flags), and `--resume` compares the flags given
now with the ones the checkpoint was trained with.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import fields

from . import flags
from .config import RunConfig, build_parser
from .flags import option

# From the flags' declarations on RunConfig (train/config.py):
# flags that do not change what is learned, only how long, how it is logged and where it runs: `--resume`
# applies them. Everything else defines the experiment and must match the checkpoint.
RESUMABLE = flags.names(RunConfig, lambda f: f.resumable)
# Not part of the recipe: how the run was started or shown, and where its cache lives.
NOT_IN_RECIPE = flags.names(RunConfig, lambda f: f.recipe == "never")
# In the recipe even at their default values: what the run is, and where it is.
ALWAYS_IN_RECIPE = flags.names(RunConfig, lambda f: f.recipe == "always")
# This invocation's own: how it shows itself and where it writes, never taken from the checkpoint.
PRESENTATION = flags.names(RunConfig, lambda f: f.own)


class ResumeMismatch(ValueError):
    """`--resume` with flags that would change the experiment the checkpoint belongs to."""


def explicit_fields(argv: list[str]) -> set[str]:
    """RunConfig fields the user set on the command line (defaults left out)."""
    # argparse fills in a default only where the namespace has no value yet: pre-fill a marker.
    unset = object()
    given = build_parser().parse_args(
        argv, namespace=argparse.Namespace(**{f.name: unset for f in fields(RunConfig)})
    )
    return {k for k, v in vars(given).items() if v is not unset}


def reproduce_command(cfg: RunConfig) -> str:
    """`python -m train ...` that trains this run from scratch: the resolved values of every flag that
    differs from its default (plus the defining ones), without --resume or progress/quiet flags."""
    words = ["python", "-m", "train"]
    for f, _ in flags.declared(RunConfig):
        name, value = f.name, getattr(cfg, f.name)
        if name in NOT_IN_RECIPE or value is None:
            continue
        if value == f.default and name not in ALWAYS_IN_RECIPE:
            continue
        if isinstance(value, bool):
            words.append(option(name) if value else "--no-" + name.replace("_", "-"))
        else:
            words += [option(name), str(value)]
    return shlex.join(words)


def resume_config(cfg: RunConfig, saved: dict, given: set[str]) -> tuple[RunConfig, list[str]]:
    """The config to continue with: the checkpoint's, plus the flags given now that may change.

    Returns (config, notices about the applied changes). Raises `ResumeMismatch` listing every given
    flag that differs from the checkpoint's run and would change the experiment.
    """
    now = cfg.to_dict()
    # How this invocation shows itself is always its own business, given or not.
    merged = {**now, **{k: v for k, v in saved.items() if k in now and k not in PRESENTATION}}
    changed, refused = [], []
    for name in sorted(given):
        if name not in now or name == "resume" or merged.get(name) == now[name]:
            continue
        was = saved.get(name)
        if name in ("steps", "epochs") and merged.get("lr_schedule") == "cosine":
            # The cosine rate is a function of step / planned steps: another length changes the rate of
            # every step still to come, and the card's reproduce line would no longer reproduce the run.
            refused.append(
                f"{option(name)} {now[name]} (the run used {was}; its --lr-schedule cosine spans the planned "
                "steps, so another length changes the learning rate of every step to come)"
            )
        elif name in RESUMABLE:
            merged[name] = now[name]
            if name not in PRESENTATION:
                changed.append(f"{option(name)} {now[name]} (was {was})")
        else:
            refused.append(f"{option(name)} {now[name]} (the run used {was})")
    if refused:
        raise ResumeMismatch(
            "--resume continues a run with the settings it was started with, and these flags differ: "
            + ", ".join(refused)
            + ". Drop them to continue the run, or start a new run with a different --out."
        )
    # --steps and --epochs are alternatives: the one given now replaces the saved one.
    if "epochs" in given and "steps" not in given:
        merged["steps"] = None
    elif "steps" in given and "epochs" not in given:
        merged["epochs"] = None
    notices = [f"--resume: applying {', '.join(changed)}"] if changed else []
    return RunConfig.from_dict(merged), notices
