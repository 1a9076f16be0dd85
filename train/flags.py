"""Command-line flags declared once, on the fields of a dataclass.

A field made with `flag(default, help, group=..., ...)` carries everything about its flag: the help text
and `--help` group, its choices and range (checked by `check_fields`), whether `--resume` may change it,
and whether the model card's reproduce line names it. `build_parser` makes the argparse parser from the
fields, in their order; `train.command_line` derives its sets from the same declarations. A bool field
is a `--name / --no-name` switch unless declared `negatable=False` (a plain `--name`).
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields

_KEY = "flag"
RECIPE = ("always", "changed", "never")


@dataclass(frozen=True)
class Flag:
    """One flag's declaration (see `flag`)."""

    help: str
    group: str
    resumable: bool = False
    recipe: str = "changed"
    own: bool = False
    choices: tuple | None = None
    metavar: str | None = None
    negatable: bool = True
    default_text: str | None = None
    const: str | None = None
    finite: bool = False
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    unit: str = ""
    why: str = ""
    check: Callable[[typing.Any], str | None] | None = None

    def problem(self, value, kind: type = float) -> str | None:
        """What is wrong with `value` for this flag (a field of type `kind`), as the fix a user reads;
        None when it is fine."""
        if value is None:
            return None
        if self.choices is not None:
            return None if value in self.choices else f"use one of {', '.join(map(str, self.choices))}"
        if self.check is not None:
            return self.check(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        bad_number = isinstance(value, float) and (math.isnan(value) or self.finite and math.isinf(value))
        in_range = (
            (self.at_least is None or value >= self.at_least)
            and (self.above is None or value > self.above)
            and (self.at_most is None or value <= self.at_most)
            and (self.below is None or value < self.below)
        )
        return None if in_range and not bad_number else self.range_text(kind is float)

    def range_text(self, is_float: bool) -> str:
        """'must be a finite positive number', 'must be an integer from 0 to 9 (why)', ... from the
        declared range; `is_float`: the field is a float."""
        positive = (self.above == 0 or (not is_float and self.at_least == 1)) and self._high() is None
        words = ("finite " if self.finite and is_float else "") + ("positive " if positive else "")
        words += "number" if is_float or self.unit else "integer"
        article = "an" if words[0] in "aeiou" else "a"
        unit = f" {self.unit}" if self.unit else ""
        why = f" ({self.why})" if self.why else ""
        return f"must be {article} {words}{unit}{'' if positive else self._bounds()}{why}"

    def _high(self) -> float | None:
        return self.at_most if self.at_most is not None else self.below

    def _bounds(self) -> str:
        low = _num(self.above if self.above is not None else self.at_least)
        high = _num(self._high())
        if self.above is not None and self.below is not None:
            return f" strictly between {low} and {high}"
        if low is not None and high is not None:
            return f" from {low} to {high}"
        if low is not None:
            return f" > {low}" if self.above is not None else f" >= {low}"
        if high is not None:
            return f" < {high}" if self.below is not None else f" <= {high}"
        return ""


def _num(x: float | None) -> str | None:
    return None if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def flag(default, help: str, *, group: str, **declared) -> typing.Any:
    """A dataclass field that is also a command-line flag `--field-name`.

    help, group: its `--help` text and section. resumable: `--resume` may change it (it does not change
    what is learned). recipe: "always" (the reproduce line always names it), "changed" (when it differs
    from the default) or "never" (how the run is shown or where its files live). own: this invocation's
    own, never taken from the checkpoint on `--resume`. choices, metavar: as in argparse. negatable: a bool
    gets `--no-name` too. default_text: a switch's default in words. const: the value of the flag given
    without one (`--resume`). finite, at_least, above, at_most, below, unit, why: the range `problem`
    checks, and the words of its message. check: a function value -> problem text or None, instead.
    """
    spec = Flag(help, group, **declared)
    if spec.recipe not in RECIPE:
        raise ValueError(f"recipe must be one of {RECIPE}, got {spec.recipe!r}")
    return field(default=default, metadata={_KEY: spec})


def declared(cls) -> list[tuple[Field, Flag]]:
    """(field, Flag) for every flag field of dataclass `cls`, in declaration order."""
    return [(f, f.metadata[_KEY]) for f in fields(cls) if _KEY in f.metadata]


def names(cls, which: Callable[[Flag], bool]) -> frozenset[str]:
    """The fields of `cls` whose Flag satisfies `which`."""
    return frozenset(f.name for f, spec in declared(cls) if which(spec))


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_fields(obj, bad: Callable[[str, typing.Any, str], None]) -> None:
    """Call `bad(name, value, fix)` for the first field of `obj` whose value its Flag refuses."""
    hints = typing.get_type_hints(type(obj))
    for f, spec in declared(type(obj)):
        problem = spec.problem(getattr(obj, f.name), _base_type(hints[f.name]))
        if problem is not None:
            bad(f.name, getattr(obj, f.name), problem)


def build_parser(cls, **parser_kwargs) -> argparse.ArgumentParser:
    """The argparse parser of dataclass `cls`'s flag fields: one group per `group`, in field order."""
    p = argparse.ArgumentParser(formatter_class=OneDefaultHelpFormatter, **parser_kwargs)
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, spec in declared(cls):
        if spec.group not in groups:
            groups[spec.group] = p.add_argument_group(spec.group)
        group = groups[spec.group]
        default = None if f.default is MISSING else f.default
        base = _base_type(hints[f.name])
        if base is bool and spec.negatable:
            switch(group, f.name.replace("_", "-"), default, spec.help, spec.default_text)
            continue
        kwargs: dict = dict(default=default, help=spec.help)
        if base is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(choices=spec.choices, metavar=spec.metavar)
            kwargs.update(type=base if base in (int, float) else None)
            if spec.const is not None:
                kwargs.update(nargs="?", const=spec.const)
        group.add_argument(option(f.name), **kwargs)
    return p


def _base_type(hint) -> type:
    """int for `int | None`, and so on."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


class OneDefaultHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already states its default or there is
    none to state (None: the help says what happens; store_true flags: off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def switch(group, name: str, default: bool | None, text: str, default_text: str | None = None):
    """A --name / --no-name flag whose help states its default once, on any Python version."""
    action = group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default)
    shown = default_text or ("on" if default else "off")
    action.help = f"{text} (default: {shown})"
    return action
