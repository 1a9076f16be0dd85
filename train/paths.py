"""Output paths are checked before any work starts, so a run or an evaluation never computes for
minutes and then fails to write (and never leaves half its files behind)."""

from __future__ import annotations

import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the flag, the path and the fix."""


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def _probe(folder: Path, flag: str, path: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputPathError(
            f"{flag} {path}: cannot write in {folder} ({e.strerror or e}); pick a writable folder"
        ) from None


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` is, or can become, a writable folder. Creates nothing (a probe file is removed at once).

    Raises OutputPathError (a ValueError) when `path` is a file, lies under a file, or cannot be written.
    """
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        where = "is a file" if base == path else f"lies under {base}, which is a file"
        raise OutputPathError(f"{flag} {path} {where}: give a folder path")
    _probe(base, flag, path)
    return path


def check_output_file(path: str | Path, flag: str = "--output") -> Path:
    """`path` is, or can become, a writable file (not a folder; its parent folder writable or creatable).

    Raises OutputPathError (a ValueError) otherwise, naming `flag` and the path.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder: give a file path, e.g. {path / 'eval.json'}")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputPathError(f"{flag} {path} lies under {base}, which is a file: give another path")
    _probe(base, flag, path)
    return path
