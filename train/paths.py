"""Output paths are checked before any work starts, so a run or an evaluation never computes for
minutes and then fails to write (and never leaves half its files behind).

A run's folder is also guarded against two other losses:
- files this tool did not write: a README.md, config.json or model.safetensors in `--out` must be
  recognisably ours (the model card's `library_name: vae-triton` front matter, the config's `model_type`,
  the weights' `model_type` metadata), else the run is refused before it overwrites them;
- a second run on the same folder: `lock_run_folder` holds an exclusive `flock` on `OUT/.lock` for the
  run's life (the OS releases it when the process dies, even by kill -9); a second run is refused with
  the first one's PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None

LOCK_NAME = ".lock"
GUARDED = ("README.md", "config.json", "model.safetensors")  # what a run writes that others also name so
RUN_FILES = ("run_config.json", "metrics.jsonl", "samples.png", "reconstructions.png")  # the rest of a run
HEADER_LIMIT = 1 << 20  # bytes read to recognise a file: our configs, cards and headers are far smaller
SAFETENSORS_HEADER_LIMIT = 100 << 20  # safetensors' own bound on a header


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the flag, the path and the fix."""


class RunFolderBusyError(OutputPathError):
    """Another live run holds the folder's lock; the message names its PID."""


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


def _refuse_empty(path: str | Path, flag: str, example: str) -> None:
    # Path("") is Path("."): an empty flag would silently mean the current folder.
    if isinstance(path, str) and not path.strip():
        raise OutputPathError(f"{flag} is empty: give a path, e.g. {flag} {example}")


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` is, or can become, a writable folder that holds no file a run would overwrite without having
    written it (`foreign_files`). Creates nothing (a probe file is removed at once).

    Raises OutputPathError (a ValueError) when `path` is empty, is a file, lies under a file, cannot be
    written, or holds a README.md, config.json or model.safetensors that vae-triton did not write.
    """
    _refuse_empty(path, flag, "runs/dsprites")
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        where = "is a file" if base == path else f"lies under {base}, which is a file"
        raise OutputPathError(f"{flag} {path} {where}: give a folder path")
    _probe(base, flag, path)
    foreign = foreign_files(path)
    if foreign:
        names = ", ".join(f.name for f in foreign)
        raise OutputPathError(
            f"{flag} {path} holds {names} that vae-triton did not write, and a run would replace "
            f"{'it' if len(foreign) == 1 else 'them'}: give a new or empty folder"
        )
    return path


def check_output_file(path: str | Path, flag: str = "--output") -> Path:
    """`path` is, or can become, a writable file (not a folder; its parent folder writable or creatable).

    Raises OutputPathError (a ValueError) otherwise, naming `flag` and the path.
    """
    _refuse_empty(path, flag, "eval.json")
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder: give a file path, e.g. {path / 'eval.json'}")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputPathError(f"{flag} {path} lies under {base}, which is a file: give another path")
    _probe(base, flag, path)
    return path


# ---- whose files are these -------------------------------------------------------------------------
def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEADER_LIMIT)


def _ours(path: Path) -> bool:
    """Whether `path` (README.md, config.json or model.safetensors) is recognisably vae-triton's."""
    from vae_triton.model import MODEL_TYPE

    try:
        head = _head(path)
        if path.name == "README.md":  # the model card (and the failed run's card) open with this front matter
            text = head.decode("utf-8", errors="replace")
            front = text.split("\n---", 1)[0] if text.startswith("---") else ""
            return "\nlibrary_name: vae-triton" in front
        if path.name == "config.json":
            doc = json.loads(head)
            return isinstance(doc, dict) and doc.get("model_type") == MODEL_TYPE
        n = int.from_bytes(head[:8], "little")  # safetensors: 8-byte header length, then the JSON header
        if 8 + n > len(head) and n <= SAFETENSORS_HEADER_LIMIT:
            with open(path, "rb") as f:
                head = f.read(8 + n)
        meta = json.loads(head[8 : 8 + n]).get("__metadata__") or {}
        return meta.get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def foreign_files(folder: str | Path) -> list[Path]:
    """The README.md, config.json and model.safetensors in `folder` that vae-triton did not write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [folder / name for name in GUARDED if (folder / name).is_file() and not _ours(folder / name)]


def check_not_model_file(output: str | Path, model_folder: str | Path, flag: str = "--output") -> None:
    """Refuse an `output` that is one of the evaluated model's own files (config.json, weights, model
    card, run config, metrics, checkpoints), compared as files: through symlinks and hard links too.

    Raises OutputPathError naming the flag and the file."""
    folder, output = Path(model_folder), Path(output)
    if not output.exists():
        return  # a new file cannot be one of the model's
    own = [folder / n for n in (*GUARDED, *RUN_FILES)] if folder.is_dir() else []
    own += [p for p in (folder / "checkpoints").glob("*") if p.is_file()]
    for f in own:
        if f.exists() and os.path.samefile(output, f):
            raise OutputPathError(
                f"{flag} {output} is the evaluated model's own {f.name}: writing the report there would "
                f"destroy it. Give another file, e.g. {flag} {folder / 'eval.json'}"
            )
    if output.name in GUARDED and _ours(output):  # another model's file (OUT/config.json for OUT/best)
        raise OutputPathError(
            f"{flag} {output} is a vae-triton model's {output.name}: writing the report there would destroy "
            f"that model. Give another file, e.g. {flag} {folder / 'eval.json'}"
        )


# ---- one run per folder ----------------------------------------------------------------------------
def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file (it writes right after locking)."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            info = json.loads(raw)
            return f"PID {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "PID unknown"


def _acquire(lock: Path, flag: str) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderBusyError(
                f"{flag} {lock.parent} is in use by another run ({holder}): wait for it to end, stop it, "
                f"or give another {flag}"
            ) from None
        try:  # a holder that was ending removed the file after we opened it: lock the new one instead
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    return fd


@contextlib.contextmanager
def lock_run_folder(out: str | Path, *, flag: str = "--out", enabled: bool = True) -> Iterator[Path]:
    """Check `out` (`check_output_dir`), create it, and hold an exclusive lock on `out/.lock` until the
    block ends; yields the folder as a Path. `enabled=False` (the other ranks of a distributed run) only
    yields the Path.

    Raises OutputPathError for a bad `out` and RunFolderBusyError (naming the holder's PID) when another
    live run holds the folder. A run killed with -9 leaves `.lock` behind, unlocked: the next run takes it.
    On exit the lock file is removed, and so is the folder if this call created it and nothing else
    was written there (a run refused before its first write leaves no trace).
    """
    if not enabled:
        yield Path(out)
        return
    folder = check_output_dir(out, flag)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = _acquire(lock, flag) if fcntl is not None else None
    try:
        yield folder
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)  # before the release: a waiter then sees a new inode and retries
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
