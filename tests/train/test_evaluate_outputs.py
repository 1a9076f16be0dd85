"""Where `python -m train.evaluate` writes, and what: never over the evaluated model's own files, strict
JSON (null, with the reason, where a value is undefined), and the results on screen before the write."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from train import evaluate
from vae_triton.model import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[2]
CARD = (REPO / "demo" / "models" / "dsprites" / "beta4" / "README.md").read_text()  # a model card
QUICK = ["--iw-samples", "2", "--num-images", "2", "--latent-images", "16", "--no-progress"]


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `python -m train` leaves it: weights, config and model card."""
    folder = tmp_path / "run"
    VAE(VAEConfig.preset("dsprites")).save_pretrained(folder, metadata={"dataset": "dsprites", "beta": 4.0})
    (folder / "README.md").write_text(CARD)
    return folder


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _run(capsys, *args) -> tuple[int, str, str]:
    code = evaluate.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


# ---- the model's own files ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "README.md"])
def test_an_output_that_is_one_of_the_models_own_files_is_refused(run_dir, name, capsys):
    before = _files(run_dir)
    code, out, err = _run(capsys, "--checkpoint", run_dir, "--output", run_dir / name, *QUICK)
    assert code == 2 and out == "", out  # refused before any evaluation
    assert f"--output {run_dir / name} is the evaluated model's own {name}" in err and "Traceback" not in err
    assert _files(run_dir) == before
    VAE.from_pretrained(run_dir)  # the model still loads


def test_an_empty_output_is_refused_not_replaced_by_the_default(run_dir, capsys):
    before = _files(run_dir)
    code, out, err = _run(capsys, "--checkpoint", run_dir, "--output", "", *QUICK)
    assert code == 2 and out == "", out  # refused before any evaluation
    assert "--output is empty" in err and "Traceback" not in err, err
    assert _files(run_dir) == before


def test_the_models_files_are_recognised_through_a_symlink_and_a_hard_link(run_dir, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report.json").symlink_to(run_dir / "config.json")
    os.link(run_dir / "model.safetensors", elsewhere / "weights-copy.json")
    (tmp_path / "alias").symlink_to(run_dir)  # the checkpoint named through a symlinked folder
    before = _files(run_dir)
    for output in (elsewhere / "report.json", elsewhere / "weights-copy.json"):
        for checkpoint in (run_dir, tmp_path / "alias"):
            code, _, err = _run(capsys, "--checkpoint", checkpoint, "--output", output, *QUICK)
            assert code == 2 and "is the evaluated model's own" in err, err
    assert _files(run_dir) == before


def test_another_vae_triton_models_config_is_refused_too(run_dir, capsys):
    """OUT/best is evaluated, OUT/config.json is the final model's: both are models."""
    best = run_dir / "best"
    shutil.copytree(run_dir, best, ignore=shutil.ignore_patterns("README.md"))
    before = _files(run_dir)
    code, _, err = _run(capsys, "--checkpoint", best, "--output", run_dir / "config.json", *QUICK)
    assert code == 2 and "is a vae-triton model's config.json" in err, err
    assert _files(run_dir) == before


# ---- strict JSON ---------------------------------------------------------------------------------------
def test_one_image_gives_null_standard_errors_with_the_reason(run_dir, capsys):
    output = run_dir / "eval.json"
    args = ["--checkpoint", run_dir, "--output", output, "--iw-samples", "2", "--num-images", "1"]
    code, out, err = _run(capsys, *args, "--latent-images", "2", "--no-progress")
    assert code == 0, err
    report = _strict(output.read_text())  # no bare NaN token anywhere
    r = report["metrics"]
    assert math.isfinite(r["elbo"]) and math.isfinite(r["iw_log_likelihood"])
    for key in ("recon_nll_sem", "kl_sem", "elbo_sem", "iw_log_likelihood_sem", "gap_sem"):
        assert r[key] is None
        assert (
            report["undefined"][f"metrics.{key}"]
            == "a standard error needs at least 2 images (--num-images 1)"
        )
    assert "nan" in out  # the table shows what was measured


def test_strict_json_names_every_non_finite_value():
    report = {
        "settings": {"num_images": 5},
        "metrics": {"elbo": -3.5, "gap": float("inf"), "kl_per_dim": [0.1, float("nan")], "active_units": 2},
    }
    cleaned = evaluate.strict_json(report)
    assert cleaned["metrics"] == {"elbo": -3.5, "gap": None, "kl_per_dim": [0.1, None], "active_units": 2}
    assert set(cleaned["undefined"]) == {"metrics.gap", "metrics.kl_per_dim[1]"}
    assert all("not finite" in why for why in cleaned["undefined"].values())
    assert "undefined" not in evaluate.strict_json({"metrics": {"elbo": 1.0}})
    _strict(json.dumps(cleaned, allow_nan=False))
    assert report["metrics"]["gap"] == float("inf")  # the input is left as it was


# ---- results before the write --------------------------------------------------------------------------
def test_the_results_are_printed_before_the_file_is_written(run_dir, capsys, monkeypatch):
    seen = {}
    real = evaluate.write_json_atomic

    def write(path, obj, **kwargs):
        seen["stdout"] = capsys.readouterr().out  # what the user had on screen when the write began
        seen["allow_nan"] = kwargs.get("allow_nan", True)
        real(path, obj, **kwargs)

    monkeypatch.setattr(evaluate, "write_json_atomic", write)
    code, out, err = _run(capsys, "--checkpoint", run_dir, *QUICK)
    assert code == 0, err
    assert "ELBO" in seen["stdout"] and "active units" in seen["stdout"] and "NLL on test" in seen["stdout"]
    assert seen["allow_nan"] is False  # the guard: a NaN that slipped through fails the write, not the reader
    assert out.strip() == f"wrote {run_dir / 'eval.json'}"
