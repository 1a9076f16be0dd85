"""vae_triton.io: atomic writes leave either the old file or the complete new one, and never a temp file."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_triton.io import STALE_AFTER_S, atomic_path, remove_stale_temps, write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[2]


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_success_writes_the_content_readable_by_others(tmp_path):
    target = tmp_path / "new" / "sub" / "notes.txt"  # the parent folders do not exist yet
    text = f"σ ≈ {os.urandom(4).hex()}\r\nsecond line\n"
    write_text_atomic(target, text)
    assert target.read_bytes() == text.encode("utf-8")  # UTF-8, newlines exactly as given
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert _names(target.parent) == ["notes.txt"]


def test_the_temp_file_is_beside_the_target_and_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", a, b)), real_replace(a, b))[1])
    target = tmp_path / "weights.bin"
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".weights.bin.")
        assert tmp.endswith(".tmp") and not target.exists()
        with open(tmp, "wb") as f:
            f.write(b"\x00\x01payload")
    assert events == ["fsync", ("replace", tmp, target)]
    assert target.read_bytes() == b"\x00\x01payload"


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failure_inside_the_block_keeps_the_old_file_and_no_temp(tmp_path, error):
    target = tmp_path / "eval.json"
    target.write_text('{"previous": true}\n')
    with pytest.raises(type(error)):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write('{"half": ')  # a partial write, then the failure
            raise error
    assert json.loads(target.read_text()) == {"previous": True}
    assert _names(tmp_path) == ["eval.json"]


def test_a_failing_rename_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text('{"previous": true}\n')

    def crash(src, dst):
        assert os.path.exists(src)  # the new content was complete when the rename was attempted
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="rename refused"):
        write_json_atomic(target, {"new": True})
    assert json.loads(target.read_text()) == {"previous": True}
    assert _names(tmp_path) == ["config.json"]


def test_write_json_atomic_passes_json_options_and_ends_with_a_newline(tmp_path):
    target = tmp_path / "report.json"
    obj = {"b": [1.5, None], "a": {"nested": "ü"}, "path": tmp_path}
    write_json_atomic(target, obj, indent=2, sort_keys=True, default=str)
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": {"nested": "ü"}, "b": [1.5, None], "path": str(tmp_path)}
    with pytest.raises(TypeError):  # an unserialisable object fails before anything is replaced
        write_json_atomic(target, {"x": object()})
    assert json.loads(target.read_text()) == json.loads(text)
    assert _names(tmp_path) == ["report.json"]


# ---- leftovers of a writer killed mid-write --------------------------------------------------------
def _killed_writer(tmp_path, target) -> str:
    """Run a process that starts an atomic write of `target` and dies by SIGKILL inside the block; return
    the temp file it left."""
    code = (
        "import os, signal, sys\n"
        "from vae_triton.io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    open(tmp, 'wb').write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    (left,) = [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    return left


def test_stale_temps_of_a_killed_writer_are_removed_and_live_ones_kept(tmp_path):
    left = _killed_writer(tmp_path, tmp_path / "cache.npy")
    assert left.startswith(".cache.npy.")
    with atomic_path(tmp_path / "live.json") as live:  # this process is alive: its temp stays
        old_untagged = tmp_path / ".old-version.npy.x1y2z3.tmp"  # another version's, untouched for a day
        old_untagged.write_bytes(b"old")
        os.utime(old_untagged, (time.time() - 2 * STALE_AFTER_S,) * 2)
        fresh_untagged = tmp_path / ".fresh.npy.a1b2c3.tmp"  # could be another version's live write
        fresh_untagged.write_bytes(b"new")
        (tmp_path / "keep.tmp").write_bytes(b"not a hidden temp of ours")
        removed = remove_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted([left, old_untagged.name])
        assert os.path.exists(live) and fresh_untagged.exists() and (tmp_path / "keep.tmp").exists()
    assert remove_stale_temps(tmp_path / "missing") == []


def test_a_killed_checkpoint_write_is_cleaned_at_the_next_start(tmp_path):
    import torch

    from train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = save_checkpoint(tmp_path, model, opt, 1, {"seed": 0})
    left = _killed_writer(tmp_path, ckpt / "step-00000002.safetensors")
    load_checkpoint(tmp_path)  # --resume
    assert left not in _names(ckpt)
    left = _killed_writer(tmp_path, ckpt / "step-00000002.state.pt")
    save_checkpoint(tmp_path, model, opt, 2, {"seed": 0})  # a fresh run into the same folder
    assert left not in _names(ckpt) and not [n for n in _names(ckpt) if n.endswith(".tmp")]
