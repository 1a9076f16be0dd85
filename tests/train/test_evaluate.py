"""`python -m train.evaluate` end to end on tiny saved models (random weights, a few images, small K)."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train import evaluate
from vae_triton.model import VAE, VAEConfig

DSPRITES_FACTORS = {"shape", "scale", "orientation", "posX", "posY"}


@pytest.fixture(scope="module")
def dsprites_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dsprites-model")
    VAE(VAEConfig.preset("dsprites")).save_pretrained(folder, metadata={"dataset": "dsprites", "beta": 4.0})
    return folder


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI quietly (no progress bars): exit code, stdout, stderr."""
    code = evaluate.main([str(a) for a in args] + ["--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dsprites_model_evaluates_with_the_dataset_from_its_metadata(dsprites_model, capsys):
    code, out, _ = run_cli(
        capsys,
        "--checkpoint",
        dsprites_model,
        "--iw-samples",
        3,
        "--num-images",
        4,
        "--latent-images",
        64,
        "--batch-size",
        2,
    )
    assert code == 0, out
    assert "IW bound (K=3)" in out and "MIG" in out and "NLL_nats / (D·ln 2)" in out
    files = sorted(p.name for p in dsprites_model.iterdir())
    assert files == ["config.json", "eval.json", "model.safetensors"]  # no temp file left
    report = json.loads((dsprites_model / "eval.json").read_text())
    assert (report["dataset"], report["split"], report["model"]["beta"]) == ("dsprites", "test", 4.0)
    assert report["settings"] | {"device": "cpu", "num_threads": 1} == {
        "iw_samples": 3,
        "iw_chunk": None,
        "num_images": 4,
        "latent_images": 64,
        "batch_size": 2,
        "seed": 0,
        "device": "cpu",
        "num_threads": 1,
    }
    r = report["metrics"]
    assert r["images"] == 4 and r["num_dims"] == 64 * 64 and r["latent_images"] == 64
    assert r["elbo"] == pytest.approx(-(r["recon_nll"] + r["kl"]))
    assert r["gap"] == pytest.approx(r["iw_log_likelihood"] - r["elbo"])
    # Binary dSprites pixels under a Bernoulli decoder: a pmf, so bpd = NLL / (D ln 2), no dequantization.
    assert r["bpd_iw"] == pytest.approx(-r["iw_log_likelihood"] / (4096 * math.log(2)))
    assert 0.0 <= r["mig"] <= 1.0 and set(r["mig_per_factor"]) == DSPRITES_FACTORS
    assert 0 <= r["active_units"] <= 10 and len(r["kl_per_dim"]) == 10
    assert all(math.isfinite(r[k]) for k in ("recon_nll", "kl", "iw_log_likelihood", "mse", "psnr"))


def test_same_seed_gives_the_same_numbers(dsprites_model, capsys, tmp_path):
    args = [
        "--checkpoint",
        dsprites_model,
        "--iw-samples",
        2,
        "--num-images",
        2,
        "--latent-images",
        16,
        "--seed",
        7,
    ]
    runs = []
    for name in ("a.json", "b.json"):
        assert run_cli(capsys, *args, "--output", tmp_path / name)[0] == 0
        runs.append(json.loads((tmp_path / name).read_text())["metrics"])
    assert runs[0] == runs[1]


def test_gaussian_model_on_an_image_folder_uses_the_dequantized_bits_per_dim(tmp_path, capsys):
    model_dir, images = tmp_path / "model", tmp_path / "images"
    VAE(VAEConfig.preset("small")).save_pretrained(model_dir, metadata={"dataset": "folder"})
    images.mkdir()
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    code, out, _ = run_cli(
        capsys,
        "--checkpoint",
        model_dir,
        "--data-dir",
        images,
        "--cache-dir",
        tmp_path / "cache",
        "--split",  # a flat folder has no test split: evaluate every file
        "all",
        "--iw-samples",
        2,
        "--num-images",
        5,
        "--latent-images",
        5,
    )
    assert code == 0, out
    r = json.loads((model_dir / "eval.json").read_text())["metrics"]
    d = 3 * 32 * 32
    assert r["images"] == 5 and "mig" not in r and "MIG" not in out
    assert r["bpd_iw"] == pytest.approx((-r["iw_log_likelihood"] + d * math.log(256)) / (d * math.log(2)))
    assert "D·ln 256" in r["bpd_convention"] and "D·ln 256" in out


def test_a_failed_write_keeps_the_previous_eval_json(dsprites_model, capsys, monkeypatch):
    target = dsprites_model / "eval.json"
    target.write_text('{"previous": true}\n')

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    code, out, err = run_cli(
        capsys,
        "--checkpoint",
        dsprites_model,
        "--iw-samples",
        0,
        "--num-images",
        2,
        "--latent-images",
        8,
    )
    assert code == 1 and "ELBO" in out  # the results were printed before the write
    assert "the results above were not saved: disk full" in err and "Traceback" not in err
    assert json.loads(target.read_text()) == {"previous": True}
    assert not [p.name for p in dsprites_model.iterdir() if p.name.startswith(".")]  # no temp file left
    monkeypatch.undo()
    code, out, _ = run_cli(
        capsys,
        "--checkpoint",
        dsprites_model,
        "--iw-samples",
        0,
        "--num-images",
        2,
        "--latent-images",
        8,
    )
    assert code == 0 and "IW bound" not in out  # K = 0: ELBO only
    r = json.loads(target.read_text())["metrics"]
    assert "iw_log_likelihood" not in r and "gap" not in r and r["iw_samples"] == 0


def test_clear_errors(tmp_path, capsys, dsprites_model):
    code, _, err = run_cli(capsys, "--checkpoint", tmp_path / "nowhere")
    assert code == 2 and "error:" in err and "nowhere" in err

    unfinished = tmp_path / "run"
    (unfinished / "checkpoints").mkdir(parents=True)
    code, _, err = run_cli(capsys, "--checkpoint", unfinished)
    assert code == 2 and "unfinished" in err

    anonymous = tmp_path / "anonymous"
    VAE(VAEConfig.preset("small")).save_pretrained(anonymous)
    code, _, err = run_cli(capsys, "--checkpoint", anonymous)
    assert code == 2 and "--dataset" in err

    code, _, err = run_cli(capsys, "--checkpoint", anonymous, "--dataset", "dsprites")
    assert code == 2 and "dsprites" in err  # 64×64 binary images do not fit a 3×32×32 model

    for bad in (["--iw-samples", "-1"], ["--num-images", "0"], ["--iw-chunk", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(["--checkpoint", str(dsprites_model), *bad])
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["a folder", "under a file", "read-only"])
def test_a_bad_output_path_fails_before_any_metric_is_computed(
    dsprites_model, tmp_path, capsys, monkeypatch, kind
):
    def no_work(*a, **k):
        raise AssertionError("metrics were computed before the output path was checked")

    monkeypatch.setattr("vae_triton.metrics.likelihood_metrics", no_work)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new files to everyone
        read_only = Path("/sys/vae-triton-eval.json")
    else:
        (tmp_path / "locked").mkdir(mode=0o555)
        read_only = tmp_path / "locked" / "eval.json"
    output = {"a folder": tmp_path, "under a file": a_file / "eval.json", "read-only": read_only}[kind]
    code, out, err = run_cli(capsys, "--checkpoint", dsprites_model, "--output", output)
    assert code == 2 and "--output" in err and str(output) in err and "Traceback" not in err, err
    assert a_file.read_text() == "mine\n"


def test_a_bundled_model_is_evaluated_without_rewriting_its_tracked_file(tmp_path, capsys, monkeypatch):
    bundled = evaluate.BUNDLED / "dsprites" / "beta1"
    tracked = bundled / "eval.json"
    before = tracked.read_bytes()
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", bundled, "--iw-samples", 0, "--num-images", 2, "--latent-images", 8]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and tracked.read_bytes() == before
    written = tmp_path / "runs" / "evaluate" / "dsprites" / "beta1" / "eval.json"
    assert json.loads(written.read_text())["settings"]["num_images"] == 2
    assert f"wrote {Path('runs/evaluate/dsprites/beta1/eval.json')}" in out
    # Asked by name, the bundled file is the output (here a copy, to leave the repository alone).
    copy = tmp_path / "copy"
    shutil.copytree(bundled, copy)
    monkeypatch.setattr(evaluate, "BUNDLED", tmp_path)
    assert run_cli(capsys, "--checkpoint", copy, *args[2:])[0] == 0
    assert (tmp_path / "runs" / "evaluate" / "copy" / "eval.json").is_file()
    assert run_cli(capsys, "--checkpoint", copy, *args[2:], "--output", copy / "eval.json")[0] == 0
    assert json.loads((copy / "eval.json").read_text())["settings"]["num_images"] == 2


def test_num_threads_sets_torch_threads_and_is_reported(dsprites_model, capsys, tmp_path):
    before = torch.get_num_threads()
    try:
        code, out, _ = run_cli(
            capsys,
            "--checkpoint",
            dsprites_model,
            "--iw-samples",
            2,
            "--num-images",
            4,
            "--latent-images",
            8,
            "--num-threads",
            1,
            "--output",
            tmp_path / "e.json",
        )
        assert code == 0, out
        assert torch.get_num_threads() == 1
        assert json.loads((tmp_path / "e.json").read_text())["num_threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        run_cli(capsys, "--checkpoint", dsprites_model, "--num-threads", 0)
    assert "--num-threads" in capsys.readouterr().err


def test_checkpoint_alone_finds_the_runs_data_and_test_split(tmp_path, capsys, monkeypatch):
    """A folder run saved its data location in run_config.json: evaluate needs only --checkpoint."""
    from train.__main__ import main as train_main

    monkeypatch.setenv("VAE_TRITON_BACKEND", "torch")
    data = tmp_path / "digits"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 5)):
        (data / split).mkdir(parents=True)
        for i in range(n):
            img = (rng.random((28, 28)) > 0.5).astype(np.uint8) * 255
            Image.fromarray(img).save(data / split / f"{i}.png")
    run = tmp_path / "run"
    args = [
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        "--resolution",
        "28",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--no-progress",
        "--eval-images",
        "4",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(run),
    ]
    assert train_main(args) == 0
    capsys.readouterr()  # the trainer's own output
    assert json.loads((run / "run_config.json").read_text())["preset"] == "mlp"  # grey 28 px → mlp
    code, out, err = run_cli(capsys, "--checkpoint", run, "--iw-samples", 2, "--num-images", 100)
    assert code == 0, err
    report = json.loads((run / "eval.json").read_text())
    # the 5 images of test/, not the 8 of train/
    assert (report["dataset"], report["split"], report["settings"]["num_images"]) == ("folder", "test", 5)
    # the headline comes first: nats per image over the data's true D
    assert out.splitlines()[1].startswith("NLL on test: ") and "nats per image" in out.splitlines()[1]
    assert f"D = {report['metrics']['num_dims']} pixels" in out
