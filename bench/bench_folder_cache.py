"""Building a folder dataset's uint8 cache from an empty cache: images decoded per second and bytes on disk.

Writes N images of one kind into a temp folder (Pillow; random pixels, so JPEG/PNG sizes are the worst
case), then times `get_dataset("folder", ...)` with an empty cache (listing, decoding on all cores through
`vae_triton.images.decode`, writing the cache) and the second, cached load. Kinds: `digits` (28×28 grey
PNG, kept at 28 px: no resize) and `faces` (178×218 RGB JPEG, CelebA's aligned size, → 64 px).

    python -m bench.bench_folder_cache [--kind digits|faces] [--images N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.data import get_dataset  # noqa: E402

KINDS = {"digits": ((28, 28), "L", "png", None), "faces": ((178, 218), "RGB", "jpg", 64)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=sorted(KINDS), default="digits")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--out", default=None, help="write bench_folder_cache_<kind>.json here")
    args = p.parse_args(argv)
    (w, h), mode, ext, resolution = KINDS[args.kind]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="folder-bench-") as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        data.mkdir()
        shape = (h, w) if mode == "L" else (h, w, 3)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(data / f"{i:06d}.{ext}")
        load = os.getloadavg()[0]
        t = time.perf_counter()
        ds = get_dataset("folder", data_dir=data, cache_dir=cache, resolution=resolution, progress=False)
        build = time.perf_counter() - t
        t = time.perf_counter()
        get_dataset("folder", data_dir=data, cache_dir=cache, resolution=resolution, progress=False)
        cached = time.perf_counter() - t
        cache_bytes = sum(f.stat().st_size for f in cache.iterdir())
    result = {
        "kind": args.kind,
        "images": args.images,
        "image_shape": list(ds.image_shape),
        "build_s": round(build, 2),
        "decoded_img_per_s": round(args.images / build),
        "cached_load_s": round(cached, 3),
        "cache_bytes": cache_bytes,
        "cache_bytes_per_image": round(cache_bytes / args.images, 1),
        "load_avg_1min_before": round(load, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        target = Path(args.out) / f"bench_folder_cache_{args.kind}.json"
        target.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
