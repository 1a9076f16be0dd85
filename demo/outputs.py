"""The files the demo hands to Gradio: PNGs named by their content, GIFs, example images, and the
private folder that holds them.

The folder is made by `tempfile.mkdtemp` (mode 0700, an unpredictable name) once per server process
and removed when the process exits: a fixed name under a shared `/tmp` could be planted beforehand as
a symlink into someone else's folder, whose files the pruning below would then delete. The pruning
reads the folder with `lstat` and only ever deletes regular files, never what a symlink points to.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path

import torch
from PIL import Image

from vae_triton.io import atomic_path

from . import images as im

KEEP_PNG_FILES = 256  # PNGs kept before the oldest are deleted (Gradio has copied them into its cache)
KEEP_GIF_FILES = 64
MIN_AGE_S = 60.0  # never delete a file a request may still be handing to Gradio

_lock = threading.Lock()
_folder: Path | None = None


def folder() -> Path:
    """This server's private output folder (created on first use, mode 0700, removed at exit)."""
    global _folder
    with _lock:
        if _folder is None or not _folder.is_dir():
            _folder = Path(tempfile.mkdtemp(prefix="vae-triton-demo-"))
            atexit.register(shutil.rmtree, _folder, ignore_errors=True)
        return _folder


def subfolder(name: str) -> Path:
    path = folder() / name
    path.mkdir(mode=0o700, exist_ok=True)
    return path


# The folder PNGs go to; None: `subfolder("png")`. Tests point it elsewhere.
PNG_DIR: Path | None = None


def png_dir() -> Path:
    return PNG_DIR if PNG_DIR is not None else subfolder("png")


def png_file(picture: Image.Image) -> str:
    """`picture` as a PNG file for an Image output, named by its content and written atomically.

    Handing Gradio a PIL image makes it write the PNG to a path named by the content hash with a plain
    `write_bytes`: two identical requests then rewrite (truncate, refill) the very file the other is
    serving, and the client sees "peer closed connection" (h11: less data than Content-Length). A file
    path is instead copied into Gradio's cache under a temporary name and renamed into place.

    The file is written even when one of that name exists: the fresh mtime is what keeps the pruning of
    this or a parallel request from deleting it before Gradio has copied it (an old file of the same
    content could otherwise be returned and pruned in the same call).
    """
    data = _encode_png(picture)
    target = png_dir()
    path = target / f"{hashlib.sha256(data).hexdigest()[:24]}.png"
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    prune(target, ".png", KEEP_PNG_FILES)
    return str(path)


def _encode_png(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def write_gif(frames: torch.Tensor, *, frame_ms: int = 80, bounce: bool = True) -> Path:
    """Frames (N, C, H, W), floats in [0, 1] → an animated GIF (forth and back when `bounce`), written
    atomically under a fresh name. GIF stores delays in centiseconds, so `frame_ms` should be a multiple
    of 10."""
    pictures = [im.to_pil(f) for f in frames]
    if bounce and len(pictures) > 2:
        pictures = pictures + pictures[-2:0:-1]
    if pictures[0].mode == "RGB":  # one shared palette keeps colours steady across frames
        pictures = [p.quantize(colors=256, method=Image.Quantize.MEDIANCUT) for p in pictures]
    target = subfolder("gif")
    path = target / f"interpolation-{uuid.uuid4().hex[:12]}.gif"
    with atomic_path(path) as tmp:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0
        )
    prune(target, ".gif", KEEP_GIF_FILES)
    return path


def examples_folder() -> Path:
    """A fresh folder for example images made at start-up (the model's own samples)."""
    return Path(tempfile.mkdtemp(prefix="examples-", dir=folder()))


def prune(target: Path, suffix: str, keep: int) -> None:
    """Delete all but the newest `keep` regular files ending in `suffix` directly in `target`, sparing
    any younger than MIN_AGE_S. Entries are read with lstat: a symlink (or anything not a regular file)
    is never deleted or followed."""
    if target.is_symlink():
        return
    entries = []
    try:
        with os.scandir(target) as it:
            for entry in it:
                if not entry.name.endswith(suffix):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # a parallel request pruned it first
                    continue
                if stat.S_ISREG(info.st_mode):
                    entries.append((info.st_mtime, entry.path))
    except FileNotFoundError:
        return
    entries.sort(reverse=True)
    cutoff = time.time() - MIN_AGE_S
    for mtime, path in entries[keep:]:
        if mtime < cutoff:
            Path(path).unlink(missing_ok=True)


def bound_gradio_cache(blocks, max_bytes: int, every_s: float) -> threading.Thread:
    """Every `every_s` seconds, delete the oldest of the files Gradio keeps for `blocks` (uploads, and
    its copies of the outputs) while they total more than `max_bytes`.

    Gradio's own `delete_cache=(frequency, age)` bounds their age only: at upload speed one client can
    still fill the disk within `age`. Only files Gradio recorded for these Blocks are touched (never
    another app's in the shared cache folder), through lstat: a symlink is never followed. The thread
    ends with the Blocks.
    """
    ref = weakref.ref(blocks)

    def run() -> None:
        while True:
            time.sleep(every_s)
            app = ref()
            if app is None:
                return
            paths = set()
            for files in list(app.temp_file_sets):
                try:
                    paths.update(files)
                except RuntimeError:  # Gradio added a file while we copied the set: next round
                    continue
            del app
            trim_files(paths, max_bytes)

    thread = threading.Thread(target=run, name="gradio-cache-bound", daemon=True)
    thread.start()
    return thread


def trim_files(paths, max_bytes: int) -> int:
    """Delete the oldest (by ctime, as Gradio ages them) regular files among `paths` until the rest total
    at most `max_bytes`; returns the bytes deleted."""
    files, total = [], 0
    for path in paths:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            files.append((info.st_ctime, info.st_size, path))
            total += info.st_size
    freed = 0
    for _, size, path in sorted(files):
        if total - freed <= max_bytes:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        freed += size
    return freed
