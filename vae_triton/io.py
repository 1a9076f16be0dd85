"""Atomic file writes: readers see either the old file or the complete new one, never half of it.

Everything goes to a temp file beside the target (same directory, so the final rename stays on one file
system), is fsynced, then renamed over the target with `os.replace`. Any failure removes the temp file.
A process killed mid-write (kill -9, power loss) cannot clean up: its temp file is named after the writer
(`.<name>.<pid>@<host>.<random>.tmp`), so `remove_stale_temps` can delete it at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent)
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


# ---- leftovers of crashed writes -------------------------------------------------------------------
STALE_AFTER_S = 24 * 3600  # a temp this old is stale whoever wrote it (another host, a reused pid)
_TAGGED = re.compile(r"^\..*\.(\d+)@([A-Za-z0-9-]+)\.[^.]+\.tmp$")
_UNTAGGED = re.compile(r"^\..*\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _writer_tag() -> str:
    """`<pid>@<host>`: lets a later process tell a crashed writer's temp file from a live one's."""
    return f"{os.getpid()}@{_host()}"


def temp_dir(parent: str | os.PathLike, name: str) -> tempfile.TemporaryDirectory:
    """A scratch dir in `parent`, removed on exit; named so `remove_stale_temps` finds it after a crash."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{name}.{_writer_tag()}.", suffix=".tmp", dir=parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temp files and scratch dirs that crashed writers left in `folder`; return what went.

    A `.<name>.<pid>@<host>.<random>.tmp` entry is stale when <host> is this machine and process <pid> is
    gone; any `.*.tmp` entry (also one from another host or an older version) is stale once it has not
    been modified for `stale_after_s` seconds. Live writers' files are left alone; a missing folder is fine.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, host, now = [], _host(), time.time()
    for entry in folder.iterdir():
        if not _UNTAGGED.match(entry.name):
            continue
        tagged = _TAGGED.match(entry.name)
        try:
            old = now - entry.lstat().st_mtime > stale_after_s
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        crashed = tagged is not None and tagged[2] == host and not _alive(int(tagged[1]))
        if not (old or crashed):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
