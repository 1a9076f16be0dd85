"""`python -m train.curves`: held-out curves of runs in one PNG, and a clear error without held-out lines."""

import json

from PIL import Image

from train.curves import load_curves, main


def _run(folder, beta, elbos, extra=()):
    folder.mkdir()
    (folder / "run_config.json").write_text(json.dumps({"beta": beta}))
    lines = [{"step": 10 * (i + 1), "heldout_elbo": e, "heldout_kl": 5.0 + i} for i, e in enumerate(elbos)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*extra, *lines]))
    return folder


def test_curves_of_a_ladder_are_labelled_by_beta_and_written_as_png(tmp_path, capsys):
    a = _run(tmp_path / "b1", 1.0, [-90.0, -70.0, -65.0, -64.0, -63.5], extra=[{"step": 5, "loss": 99.0}])
    b = _run(tmp_path / "b4", 4.0, [-99.0, -95.0, -94.0])
    curves = load_curves([a, b])
    assert [label for label, _ in curves] == ["β = 1", "β = 4"]
    assert [r["heldout_elbo"] for r in curves[0][1]] == [
        -90.0,
        -70.0,
        -65.0,
        -64.0,
        -63.5,
    ]  # loss lines dropped
    out = tmp_path / "curves.png"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    assert Image.open(out).size == (1000, 400) and f"wrote {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1", "b4", "curves.png"]  # no temp file left


def test_same_beta_runs_are_labelled_by_folder(tmp_path):
    runs = [_run(tmp_path / name, 1.0, [-9.0, -8.0]) for name in ("seed0", "seed1")]
    assert [label for label, _ in load_curves(runs)] == ["seed0", "seed1"]


def test_a_run_without_held_out_lines_is_refused_with_the_fix(tmp_path, capsys):
    run = _run(tmp_path / "r", 1.0, [], extra=[{"step": 5, "loss": 99.0}])
    assert main([str(run), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "has no held-out lines" in err and "--eval-every" in err
    assert not (tmp_path / "c.png").exists()
