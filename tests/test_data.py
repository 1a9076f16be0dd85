"""Datasets: dSprites rendering and splits, the uint8 cache, batches, CelebA's schema, folders, offline."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train import dsprites
from train.data import (
    BatchSource,
    DataUnavailableError,
    ImageDataset,
    build_cache,
    dsprites_images,
    get_dataset,
)

REPO = Path(__file__).resolve().parents[1]


# ---- dSprites ----------------------------------------------------------------------------------
def test_dsprites_factor_grid_follows_the_spec():
    f = dsprites.all_factors()
    assert f.shape == (3 * 6 * 40 * 32 * 32, 5) == (737280, 5)
    assert len(np.unique(dsprites.factors_to_index(f))) == len(f)
    assert dsprites.SCALES[0] == 0.5 and dsprites.SCALES[-1] == 1.0
    assert dsprites.ORIENTATIONS[0] == 0 and dsprites.ORIENTATIONS[-1] < 2 * np.pi


def _centroid(img):
    ys, xs = np.nonzero(img[0])
    return xs.mean(), ys.mean()


def test_dsprites_images_respond_to_each_factor():
    rng = np.random.default_rng()
    base = dsprites.sample_factors(1, rng)[0]
    base[1], base[3], base[4] = 2, 10, 12

    def render(**change):
        row = base.copy()
        for name, value in change.items():
            row[dsprites.FACTOR_NAMES.index(name)] = value
        return dsprites_images(row[None])[0]

    img = render()
    assert img.shape == (1, 64, 64) and img.dtype == np.uint8 and set(np.unique(img)) <= {0, 255}
    assert np.array_equal(img, render())  # deterministic
    x0, y0 = _centroid(img)
    x1, y1 = _centroid(render(posX=20))
    assert x1 - x0 == pytest.approx(10 * 32 / 31, abs=0.6) and y1 == pytest.approx(y0, abs=0.6)
    x2, y2 = _centroid(render(posY=20))
    assert y2 - y0 == pytest.approx(8 * 32 / 31, abs=0.6)  # posY grows downwards
    areas = [(render(scale=s) > 0).sum() for s in range(6)]
    assert all(a < b for a, b in zip(areas, areas[1:], strict=False))
    # Area grows with the square of the scale (0.5 → 1 quadruples it), up to pixelisation.
    assert areas[-1] / areas[0] == pytest.approx(4.0, rel=0.15)
    square = render(shape=0, orientation=0)
    assert not np.array_equal(square, render(shape=0, orientation=5))  # 45°: a diamond
    assert np.array_equal(square, render(shape=0, orientation=10))  # 90° maps a square onto itself
    heart_up, heart_down = render(shape=2, orientation=0), render(shape=2, orientation=20)
    assert not np.array_equal(heart_up, heart_down)


def test_dsprites_bad_factors_raise():
    with pytest.raises(ValueError, match="factors"):
        dsprites_images(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="sizes"):
        dsprites_images(np.array([[3, 0, 0, 0, 0]]))


def test_dsprites_splits_are_disjoint_and_labelled():
    train = get_dataset("dsprites", "train", limit=256)
    test = get_dataset("dsprites", "test", limit=256)
    assert train.images.shape == (256, 1, 64, 64) and train.factors.shape == (256, 5)
    assert train.factor_names == dsprites.FACTOR_NAMES and train.factor_sizes == dsprites.FACTOR_SIZES
    assert np.array_equal(train.images, dsprites_images(train.factors))
    from train.data import _dsprites_order

    everything = dsprites.factors_to_index(_dsprites_order())
    n_test = 36864
    assert len(set(everything[:n_test]) & set(everything[n_test:])) == 0
    assert set(dsprites.factors_to_index(test.factors)) <= set(everything[:n_test])
    with pytest.raises(ValueError, match="split"):
        get_dataset("dsprites", "valid")
    with pytest.raises(ValueError, match="resolution"):
        get_dataset("dsprites", resolution=32)
    with pytest.raises(ValueError, match="dataset"):
        get_dataset("mnist")


# ---- cache and batches -------------------------------------------------------------------------
def test_cache_is_atomic(tmp_path):
    target = tmp_path / "c.npy"

    def failing(out, progress):
        out[0] = 1
        raise OSError("disk full")

    with pytest.raises(OSError):
        build_cache(target, (4, 1, 2, 2), failing, desc="x")
    assert list(tmp_path.iterdir()) == []  # neither the cache nor a temp file

    def ok(out, progress):
        out[:] = np.arange(16, dtype=np.uint8).reshape(4, 1, 2, 2)

    build_cache(target, (4, 1, 2, 2), ok, desc="x")
    arr = np.load(target, mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr[3, 0, 1, 1] == 15


def _numbered(n):
    # Image i holds the value i in its top-left pixel and a left/right marker, to trace order and flips.
    imgs = np.zeros((n, 1, 4, 4), dtype=np.uint8)
    imgs[:, 0, 0, 0] = np.arange(n)
    imgs[:, 0, 3, 0] = 255
    return ImageDataset(imgs)


def test_batches_cover_each_epoch_once_and_replay_by_step():
    ds = _numbered(40)
    src = BatchSource(ds, 8, seed=5)
    seen = [src.batch(t)[:, 0, 0, 0].tolist() for t in range(5)]
    assert sorted(sum(seen, [])) == list(range(40))
    assert BatchSource(ds, 8, seed=5).batch(3)[:, 0, 0, 0].tolist() == seen[3]  # resume at step 3
    next_epoch = [src.batch(t)[:, 0, 0, 0].tolist() for t in range(5, 10)]
    assert next_epoch != seen and sorted(sum(next_epoch, [])) == list(range(40))
    assert BatchSource(ds, 8, seed=6).batch(0)[:, 0, 0, 0].tolist() != seen[0]


def test_ranks_split_the_global_batch_and_flips_follow_the_coins():
    ds = _numbered(64)
    whole = BatchSource(ds, 16, seed=1)
    parts = [BatchSource(ds, 16, seed=1, rank=r, world=2) for r in range(2)]
    for t in range(3):
        idx, _ = whole.indices(t)
        got = torch.cat([p.batch(t)[:, 0, 0, 0] for p in parts])
        assert sorted(got.tolist()) == sorted(idx.tolist())
    flipping = BatchSource(ds, 16, seed=1, hflip=True)
    x = flipping.batch(0)
    idx, coins = flipping.indices(0)
    coins = coins[idx.argsort()]  # batches come out in sorted index order
    flipped = x[:, 0, 3, 3] == 255
    assert torch.equal(flipped, coins) and 0 < int(coins.sum()) < 16
    with pytest.raises(ValueError, match="divisible"):
        BatchSource(ds, 15, world=2)
    with pytest.raises(ValueError, match="fewer"):
        BatchSource(ds, 128)


# ---- CelebA in its exact Hub schema --------------------------------------------------------------
def _celeba_like(root: Path, splits=("train", "valid", "test"), n=3) -> dict:
    """Parquet files laid out and typed like flwrlabs/celeba (178×218 JPEGs, celeb_id, 40 bools)."""
    import datasets

    from train.celeba import ATTRIBUTES

    rng = np.random.default_rng()
    folder = root / "img_align+identity+attr"
    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "celeb_id": datasets.Value("int64"),
            **{a: datasets.Value("bool") for a in ATTRIBUTES},
        }
    )
    made = {}
    for split in splits:
        jpegs = []
        for _ in range(n):  # CelebA ships JPEG bytes; store those, not a re-encoded PNG
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(buf, format="JPEG")
            jpegs.append(buf.getvalue())
        pics = [{"bytes": b, "path": None} for b in jpegs]
        attrs = rng.random((n, len(ATTRIBUTES))) < 0.5
        rows = {
            "image": pics,
            "celeb_id": rng.integers(1, 10177, n).tolist(),
            **{a: attrs[:, i].tolist() for i, a in enumerate(ATTRIBUTES)},
        }
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(folder / f"{split}-00000-of-00001.parquet")
        )
        made[split] = ([Image.open(io.BytesIO(b)) for b in jpegs], attrs)
    return made


def _expected_64(pic: Image.Image) -> np.ndarray:
    # The standard recipe, written out: the centered 148×148 box of a 178×218 image, resized to 64.
    box = ((178 - 148) // 2, (218 - 148) // 2, (178 - 148) // 2 + 148, (218 - 148) // 2 + 148)
    return np.asarray(pic.crop(box).resize((64, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def test_celeba_loader_reads_the_hub_schema(tmp_path):
    made = _celeba_like(tmp_path / "celeba")
    for split in ("train", "valid", "test"):
        ds = get_dataset("celeba", split, data_dir=tmp_path / "celeba", cache_dir=tmp_path / "cache")
        pics, attrs = made[split]
        assert ds.images.shape == (3, 3, 64, 64) and isinstance(ds.images, np.memmap)
        assert np.array_equal(ds.factors, attrs.astype(np.int64)) and len(ds.factor_names) == 40
        for i, pic in enumerate(pics):
            assert np.array_equal(ds.images[i], _expected_64(pic))
    again = get_dataset("celeba", "validation", data_dir=tmp_path / "celeba", cache_dir=tmp_path / "cache")
    assert again.split == "valid" and again.info["cache"].endswith(".npy")
    with pytest.raises(ValueError, match="splits"):
        get_dataset("celeba", "holdout", data_dir=tmp_path / "celeba", cache_dir=tmp_path / "cache")


def test_celeba_loader_reads_a_save_to_disk_folder(tmp_path):
    import datasets

    _celeba_like(tmp_path / "pq", splits=("train",), n=2)
    table = datasets.load_dataset("parquet", data_files=str(tmp_path / "pq" / "*" / "train-*.parquet"))
    table.save_to_disk(str(tmp_path / "disk"))
    ds = get_dataset(
        "celeba", "train", data_dir=tmp_path / "disk", cache_dir=tmp_path / "cache", resolution=32
    )
    assert ds.images.shape == (2, 3, 32, 32)


_HUB_SCRIPT = """
import sys, time
t = time.time()
from train.data import get_dataset, DataUnavailableError
try:
    ds = get_dataset("celeba", "test", cache_dir=sys.argv[1])
    print("LOADED", ds.images.shape)
except DataUnavailableError as e:
    print("UNAVAILABLE", e)
print("SECONDS", time.time() - t)
"""


def _run_hub(tmp_path, hub_cache, **env):
    full = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(tmp_path / "hf_home"), **env}
    r = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT, str(tmp_path / "cache")],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_celeba_from_the_hugging_face_cache_offline(tmp_path):
    # A snapshot in the Hub cache layout, as `snapshot_download` leaves it; no network involved.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--flwrlabs--celeba"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _celeba_like(repo / "snapshots" / commit, splits=("test",), n=2)
    out = _run_hub(tmp_path, tmp_path / "hub", HF_HUB_OFFLINE="1")
    assert "LOADED (2, 3, 64, 64)" in out, out


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_celeba_missing_fails_fast_with_instructions(tmp_path, how):
    env = (
        {"HF_HUB_OFFLINE": "1"}
        if how == "offline"
        else {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    )
    out = _run_hub(tmp_path, tmp_path / "empty_hub", **env)
    assert "UNAVAILABLE" in out and "--data-dir" in out and "flwrlabs/celeba" in out, out
    assert ("HF_HUB_OFFLINE" in out) if how == "offline" else ("unreachable" in out)
    assert float(out.split("SECONDS")[1]) < 10


def test_cli_reports_missing_celeba_without_a_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    t = time.time()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--dataset",
            "celeba",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and time.time() - t < 30
    assert "Traceback" not in r.stderr and "error: CelebA" in r.stderr and "--data-dir" in r.stderr


# ---- folders -----------------------------------------------------------------------------------
def test_folder_skips_unreadable_files_and_counts_them(tmp_path, capsys):
    rng = np.random.default_rng()
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8)).save(root / "sub" / "b.jpg")  # grey
    Image.fromarray(rng.integers(0, 256, (33, 20, 4), dtype=np.uint8)).save(root / "c.webp")  # RGBA
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[:200])
    (root / "random.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "notes.txt").write_text("not an image")

    ds = get_dataset("folder", data_dir=root, cache_dir=tmp_path / "cache", resolution=16)
    assert ds.images.shape == (3, 3, 16, 16) and ds.info["skipped"] == 3
    assert "skipped 3" in capsys.readouterr().err
    a = Image.open(root / "a.png").crop((10, 0, 50, 40)).resize((16, 16), Image.Resampling.BILINEAR)
    assert np.array_equal(ds.images[0], np.asarray(a).transpose(2, 0, 1))

    cache_files = sorted((tmp_path / "cache").glob("folder-*.npy"))
    stamp = cache_files[0].stat().st_mtime_ns
    get_dataset("folder", data_dir=root, cache_dir=tmp_path / "cache", resolution=16)
    assert cache_files[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "d.png")
    assert len(get_dataset("folder", data_dir=root, cache_dir=tmp_path / "cache", resolution=16)) == 4


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        get_dataset("folder", cache_dir=tmp_path)
    with pytest.raises(DataUnavailableError, match="not a directory"):
        get_dataset("folder", data_dir=tmp_path / "nope", cache_dir=tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(DataUnavailableError, match="readable image"):
        get_dataset("folder", data_dir=tmp_path / "junk", cache_dir=tmp_path / "c")
