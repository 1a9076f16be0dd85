"""Atomic file writes: readers see either the old file or the complete new one, never half of it.

Everything goes to a temp file beside the target (same directory, so the final rename stays on one file
system), is fsynced, then renamed over the target with `os.replace`. Any failure removes the temp file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path beside `path` to write to; it replaces `path` only if the block succeeds.

    Creates the parent directory if missing. On any failure, including a failing rename, the temp file is
    deleted and the error re-raised, so the previous `path` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would surprise whoever shares the folder
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt mid-write too: leave no temp file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8, with newlines written exactly as given (CSV's \\r\\n stays \\r\\n on every platform)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> None:
    """`json.dumps(obj, **json_kwargs)` plus a final newline."""
    write_text_atomic(path, json.dumps(obj, **json_kwargs) + "\n")
