"""Atomic file writes: readers see either the old file or the complete new one, never half of it.

Everything goes to a temp file beside the target (same directory, so the final rename stays on one file
system), is fsynced, then renamed over the target with `os.replace`. Any failure removes the temp file.
A process killed mid-write (kill -9, power loss) cannot clean up: its temp file is named after the writer
(`.<name>.<pid>@<host>.<random>.tmp`), so `remove_stale_temps` can delete it at the next start.

A full disk is one `DiskFullError` (an OSError, errno ENOSPC) whose message names the file and what was
kept: large writes check the free space first (`ensure_free_space`), and an ENOSPC met while writing is
turned into the same error after the temp file is removed.

`write_safetensors` writes byte-deterministic safetensors files (metadata keys sorted), so the SHA-256 of
a saved model identifies its weights.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
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

SPACE_MARGIN = 64 * 1024  # bytes kept free beyond a large write: file-system metadata, the temp's name


class DiskFullError(OSError):
    """No space left for a write (errno ENOSPC). `str()` is one line naming the file and what was kept."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(errno.ENOSPC, message, str(path))

    def __str__(self) -> str:
        return self.strerror


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def kept_note(path: str | os.PathLike) -> str:
    """What a failed atomic write of `path` leaves: the previous file, or nothing."""
    path = Path(path)
    return f"the previous {path.name} is kept" if path.exists() else "nothing was written"


def disk_full(path: str | os.PathLike, kept: str | None = None, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write of `path` that found no space; `kept` says what survives."""
    path = Path(path)
    try:
        free = shutil.disk_usage(_nearest_existing(path.parent)).free
    except OSError:
        free = None
    need = "" if needed is None else f"it needs {_size(needed)}, "
    have = "" if free is None else f"{_size(free)} free"
    return DiskFullError(
        path,
        f"no space left on the device to write {path} ({need}{have}); {kept or kept_note(path)}. "
        "Free some space or write elsewhere, then run again",
    )


def ensure_free_space(path: str | os.PathLike, nbytes: int, kept: str | None = None) -> None:
    """Raise `DiskFullError` unless the folder of `path` has `nbytes` (+ a small margin) free.

    For large writes: checking first fails in a second with a clear message, where running out midway
    costs the write's time (and, for a memory-mapped file, a SIGBUS instead of an error)."""
    if shutil.disk_usage(_nearest_existing(Path(path).parent)).free < nbytes + SPACE_MARGIN:
        raise disk_full(path, kept, needed=nbytes)


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path.cwd()


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC as an OSError, or wrapped in another library's error (safetensors' SafetensorError says
    "No space left on device (os error 28)")."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return "No space left on device" in text or "os error 28" in text


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, kept: str | None = None) -> Iterator[str]:
    """Yield a temp path beside `path` to write to; it replaces `path` only if the block succeeds.

    Creates the parent directory if missing. On any failure, including a failing rename, the temp file is
    deleted and the error re-raised, so the previous `path` (if any) is left untouched. A full disk is
    re-raised as `DiskFullError` naming `path` and `kept` (default: the previous file, or nothing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = kept or kept_note(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would surprise whoever shares the folder
        os.replace(tmp, path)
    except BaseException as e:  # KeyboardInterrupt mid-write too: leave no temp file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full(path, kept) from None
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview, *, kept: str | None = None) -> None:
    """`data` to `path` atomically, after checking that it fits (`ensure_free_space`)."""
    ensure_free_space(path, len(data), kept)
    with atomic_path(path, kept=kept) as tmp, open(tmp, "wb") as f:
        f.write(data)


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file as bytes, the same bytes for the same tensors and metadata in every process.

    safetensors' own writer emits the `__metadata__` keys in a random order (a Rust HashMap, seeded per
    process), so two saves of the same weights hash differently. The header is re-emitted here with the
    metadata keys sorted and the tensor entries in the writer's own (offset) order; the data section is
    untouched, since its offsets count from the end of the header (https://github.com/huggingface/safetensors,
    "Format"). The header stays padded with spaces to a multiple of 8 bytes, as the writer pads it.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    doc = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + memoryview(raw)[8 + n :]


def write_safetensors(
    path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None, *, kept: str | None = None
) -> str:
    """Write `tensors` (name → contiguous CPU tensor) as a byte-deterministic safetensors file, atomically,
    after a free-space check; return the file's SHA-256 (hex). Raises `DiskFullError` on a full disk."""
    data = safetensors_bytes(tensors, metadata)
    write_bytes_atomic(path, data, kept=kept)
    return hashlib.sha256(data).hexdigest()


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
