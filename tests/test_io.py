"""vae_triton.io: atomic writes leave either the old file or the complete new one, and never a temp file."""

import json
import os
import stat

import pytest

from vae_triton.io import atomic_path, write_json_atomic, write_text_atomic


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
