"""Datasets: dSprites rendering and splits, the uint8 cache, batches, CelebA's schema, folders, offline."""

import io
import json
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
    dsprites_images,
    get_dataset,
)
from train.imagecache import build_cache

REPO = Path(__file__).resolve().parents[2]


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
    # Edges snap to whole pixels: an axis-aligned square's centroid moves up to 0.74 px off the exact shift
    # (every shape × orientation at this scale and position checked), hence 1 px.
    assert x1 - x0 == pytest.approx(10 * 32 / 31, abs=1.0) and y1 == pytest.approx(y0, abs=1.0)
    x2, y2 = _centroid(render(posY=20))
    assert y2 - y0 == pytest.approx(8 * 32 / 31, abs=1.0)  # posY grows downwards
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
    from train.dsprites import shuffled_order as _dsprites_order

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


def test_torch_renderer_gives_the_reference_pixels():
    # The bundled models were trained on `render`'s images; batches now come from `render_torch`.
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    grid = np.stack(np.meshgrid(range(3), range(6), range(40), indexing="ij"), -1).reshape(-1, 3)
    corners = rng.choice([0, 1, 15, 16, 30, 31], size=(len(grid), 2))
    sample = np.concatenate([np.hstack([grid, corners]), dsprites.sample_factors(2000, rng)])
    ref = dsprites.render(sample)
    got = dsprites.render_torch(torch.from_numpy(sample))
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), ref)
    ungrouped = dsprites.render_torch(torch.from_numpy(sample), group=False)  # the GPU's code path
    assert np.array_equal(ungrouped.numpy(), ref)
    if torch.cuda.is_available():
        assert np.array_equal(dsprites.render_torch(torch.from_numpy(sample).cuda()).cpu().numpy(), ref)


def test_dsprites_needs_no_cache_and_batches_render_on_demand(tmp_path, capsys):
    ds = get_dataset("dsprites", "train", cache_dir=tmp_path / "cache")
    assert len(ds) == 700416 and ds.image_shape == (1, 64, 64)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    src = BatchSource(ds, 32, seed=3)
    for step in (0, 5, src.steps_per_epoch + 1):
        idx, _ = src.indices(step)
        expected = dsprites.render(ds.factors[np.sort(idx.numpy())])
        assert np.array_equal(src.batch(step).numpy(), expected)
    assert np.array_equal(ds.images[[5, 2]], dsprites.render(ds.factors[[5, 2]]))  # reads like an array
    assert np.array_equal(ds.head(3).images[:], dsprites.render(ds.factors[:3]))
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / "dsprites-all-64px.npy").write_bytes(b"an older version's 3 GB cache")
    get_dataset("dsprites", "test", cache_dir=tmp_path / "cache")
    assert "never reads it: delete it" in capsys.readouterr().err


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


def _folder(root: Path, n: int, size=(12, 12), mode="L", seed=0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"{i:03d}.png")


def test_folder_split_subfolders_and_missing_split(tmp_path):
    _folder(tmp_path / "d" / "train", 5)
    _folder(tmp_path / "d" / "test", 3, seed=1)
    kw = dict(data_dir=tmp_path / "d", cache_dir=tmp_path / "c", resolution=12, progress=False)
    train, test = get_dataset("folder", "train", **kw), get_dataset("folder", "test", **kw)
    assert (len(train), len(test)) == (5, 3)
    assert train.image_shape == (1, 12, 12)  # grey PNGs stay grey under --channels auto; 12 px: no resize
    first_test = np.asarray(Image.open(tmp_path / "d" / "test" / "000.png"))
    assert np.array_equal(test.images[0, 0], first_test)
    assert len(get_dataset("folder", "all", **kw)) == 8
    with pytest.raises(DataUnavailableError, match=r"no valid/ folder.*subfolders test/, train/"):
        get_dataset("folder", "valid", **kw)
    with pytest.raises(ValueError, match="drop --test-fraction"):
        get_dataset("folder", "train", test_fraction=0.2, **kw)


def test_folder_test_fraction_is_a_fixed_disjoint_split(tmp_path):
    _folder(tmp_path / "d", 20)
    kw = dict(data_dir=tmp_path / "d", cache_dir=tmp_path / "c", resolution=12, progress=False)
    with pytest.raises(DataUnavailableError, match=r"no test split.*20 files.*--test-fraction"):
        get_dataset("folder", "test", **kw)
    assert len(get_dataset("folder", "train", **kw)) == 20  # no rule: the whole folder is train
    test = get_dataset("folder", "test", test_fraction=0.25, **kw)
    train = get_dataset("folder", "train", test_fraction=0.25, **kw)
    assert (len(train), len(test)) == (15, 5)
    rows = {bytes(np.asarray(r)) for r in train.images} | {bytes(np.asarray(r)) for r in test.images}
    assert len(rows) == 20  # disjoint, and together the whole folder
    again = get_dataset("folder", "test", test_fraction=0.25, **{**kw, "cache_dir": tmp_path / "c2"})
    assert np.array_equal(again.images, test.images)  # the same files on a fresh cache: a fixed seed
    other = get_dataset("folder", "test", test_fraction=0.25, split_seed=1, **kw)
    assert not np.array_equal(other.images, test.images)


def test_folder_resolution_defaults_to_the_images_own_size(tmp_path):
    from train.config import parse_args

    _folder(tmp_path / "digits", 3, size=(28, 28))
    _folder(tmp_path / "photos", 3, size=(300, 300), mode="RGB")
    _folder(tmp_path / "wide", 3, size=(40, 30))
    kw = dict(cache_dir=tmp_path / "c", resolution=None, progress=False)
    digits = get_dataset("folder", data_dir=tmp_path / "digits", **kw)
    assert digits.image_shape == (1, 28, 28)  # no resize: the pixels as they are
    assert np.array_equal(digits.images[0, 0], np.asarray(Image.open(tmp_path / "digits" / "000.png")))
    assert get_dataset("folder", data_dir=tmp_path / "photos", **kw).image_shape == (3, 64, 64)
    assert get_dataset("folder", data_dir=tmp_path / "wide", **kw).image_shape == (1, 64, 64)
    assert parse_args(["--dataset", "folder", "--data-dir", "x"]).resolution is None  # decided by the data
    assert (
        parse_args([]).resolution == 64
        and parse_args(["--resolution", "32", "--dataset", "folder", "--data-dir", "x"]).resolution == 32
    )


def test_folder_channels(tmp_path):
    _folder(tmp_path / "rgb", 3, mode="RGB")
    grey_rgb = tmp_path / "greyrgb"
    grey_rgb.mkdir()
    Image.new("RGB", (12, 12), (40, 40, 40)).save(grey_rgb / "a.png")  # grey content saved as RGB
    kw = dict(cache_dir=tmp_path / "c", resolution=12, progress=False)
    assert get_dataset("folder", data_dir=tmp_path / "rgb", **kw).image_shape == (3, 12, 12)
    assert get_dataset("folder", data_dir=tmp_path / "rgb", channels="1", **kw).image_shape == (1, 12, 12)
    grey = get_dataset("folder", data_dir=grey_rgb, **kw)
    assert grey.image_shape == (1, 12, 12) and np.asarray(grey.images).max() == 40
    assert get_dataset("folder", data_dir=grey_rgb, channels="3", **kw).image_shape == (3, 12, 12)


def test_binarize_threshold_and_stochastic_per_epoch():
    imgs = np.tile(np.arange(0, 256, 4, dtype=np.uint8).reshape(1, 1, 8, 8), (64, 1, 1, 1))
    ds = ImageDataset(imgs, binarize="threshold")
    x = BatchSource(ds, 8, seed=0).batch(0)
    assert torch.equal(x, torch.where(torch.from_numpy(imgs[:8]) >= 128, 255, 0).to(torch.uint8))
    assert torch.equal(ds.tensor([0])[0], (torch.from_numpy(imgs[0]) >= 128).float())

    ds = ImageDataset(imgs, binarize="stochastic")
    src = BatchSource(ds, 64, seed=0)
    e0, e1 = src.batch(0), src.batch(1)  # one batch per epoch: every image in both
    assert set(e0.unique().tolist()) <= {0, 255} and not torch.equal(e0, e1)  # a fresh draw per epoch
    assert torch.equal(BatchSource(ds, 64, seed=0).batch(1), e1)  # resume at step 1 replays the draw
    p = torch.from_numpy(imgs[0, 0]).float() / 255
    freq = torch.stack([src.batch(t).float() / 255 for t in range(20)]).mean(dim=(0, 1, 2))
    assert (freq - p).abs().max() < 0.1  # 1280 draws per pixel: P(x = 1) = pixel / 255
    held = ds.tensor(range(64))
    assert torch.equal(held, ds.tensor(range(64))) and set(held.unique().tolist()) <= {0.0, 1.0}


def test_run_config_data_flags_and_resolution_errors(tmp_path, monkeypatch):
    from train.config import RunConfig, parse_args

    monkeypatch.chdir(tmp_path)
    flags = "--dataset folder --data-dir digits --preset small --resolution 24 --channels 1"
    cfg = parse_args([*flags.split(), "--binarize", "stochastic", "--test-fraction", "0.2"])
    assert cfg.data_dir == str(tmp_path / "digits") and cfg.channels == "1" and cfg.binarize == "stochastic"
    assert cfg.test_fraction == 0.2 and cfg.split_seed == 0 and cfg.hflip is False
    assert RunConfig(dataset="celeba").hflip is True and RunConfig().hflip is False
    with pytest.raises(ValueError, match=r"--resolution 28: .*celeba64.*Sizes that work: 32, 64, 96"):
        RunConfig(dataset="folder", data_dir="x", resolution=28, preset="celeba64")
    with pytest.raises(ValueError, match=r"--resolution 20: .*'small'.*Sizes that work: 8, 16, 24, 32"):
        RunConfig(dataset="folder", data_dir="x", resolution=20, preset="small")
    with pytest.raises(ValueError, match="--test-fraction"):
        RunConfig(dataset="folder", data_dir="x", test_fraction=1.5)
    with pytest.raises(SystemExit):
        parse_args(["--channels", "2"])


def test_cli_refuses_a_resolution_the_preset_cannot_take(tmp_path, capsys):
    from train.__main__ import main

    _folder(tmp_path / "rgb", 2, size=(28, 28), mode="RGB")
    flags = f"--dataset folder --data-dir {tmp_path / 'rgb'} --resolution 28 --cache-dir {tmp_path / 'c'}"
    with pytest.raises(SystemExit) as e:  # an explicit preset: refused while parsing, nothing written
        main([*flags.split(), "--preset", "celeba64", "--out", str(tmp_path / "r1")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--resolution 28" in err and "Sizes that work: 32, 64" in err
    assert "Traceback" not in err and not (tmp_path / "r1").exists()
    # The preset follows the data (RGB 28 px → celeba64): refused once the data says so, same message.
    assert main([*flags.split(), "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--resolution 28" in err and "Sizes that work: 32, 64" in err and "Traceback" not in err


def test_dataset_for_split_finds_the_runs_test_split_from_anywhere(tmp_path, monkeypatch):
    from train.config import RunConfig
    from train.data import dataset_for_split

    _folder(tmp_path / "data" / "digits", 10)
    monkeypatch.chdir(tmp_path / "data")
    cfg = RunConfig(
        dataset="folder",
        data_dir="digits",
        preset="small",
        resolution=16,
        test_fraction=0.3,
        cache_dir=str(tmp_path / "c"),
        channels="1",
        binarize="threshold",
    )
    saved = json.loads(json.dumps(cfg.to_dict()))  # what run_config.json holds
    monkeypatch.chdir(tmp_path)
    test = dataset_for_split(saved, "test", progress=False)
    train = dataset_for_split(saved, "train", progress=False)
    assert (len(train), len(test)) == (7, 3) and test.image_shape == (1, 16, 16)
    assert test.binarize == "threshold" and set(np.unique(test.tensor(range(3)).numpy())) <= {0.0, 1.0}


def test_stale_temp_files_of_a_crashed_cache_write_are_removed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    from vae_triton.io import _host

    stale = cache / f".dsprites-all-64px.npy.{dead.stdout.strip()}@{_host()}.k2j4x9ab.tmp"
    stale.write_bytes(b"half a cache")
    scratch = cache / f".folder-x.npy.{dead.stdout.strip()}@{_host()}.zz81qq0p.tmp"
    (scratch).mkdir()
    (scratch / "scratch.npy").write_bytes(b"x")
    live = cache / f".other.npy.{os.getpid()}@{_host()}.abcdefgh.tmp"
    live.write_bytes(b"being written")
    _folder(tmp_path / "d", 2)
    get_dataset("folder", data_dir=tmp_path / "d", cache_dir=cache, resolution=12, progress=False)
    names = {p.name for p in cache.iterdir()}
    assert stale.name not in names and scratch.name not in names and live.name in names
