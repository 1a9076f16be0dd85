"""Check that the on-demand torch renderer gives every dSprites image exactly as the NumPy reference does.

All 737,280 factor combinations (or `--limit` of them in a fixed shuffled order), in chunks, on the CPU and
(when available, or with --device) on a GPU. Prints the number of differing images and pixels per device,
the renderers' img/s, and the machine; exits non-zero on any difference. Takes a few minutes on 2 CPU cores.

    python -m bench.check_dsprites_render [--limit N] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import dsprites  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="check this many combinations (default: all)")
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--device", action="append", help="devices to check (default: cpu, and cuda if present)")
    p.add_argument("--out", default=None, help="write check_dsprites_render.json here")
    args = p.parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    factors = dsprites.all_factors()
    if args.limit:
        factors = factors[np.random.default_rng(0).permutation(len(factors))[: args.limit]]
    result = {
        "images": len(factors),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    ref_s, dev_s = 0.0, dict.fromkeys(devices, 0.0)
    bad = {d: [0, 0] for d in devices}
    for s in range(0, len(factors), args.chunk):
        f = factors[s : s + args.chunk]
        t = time.perf_counter()
        ref = dsprites.render(f)
        ref_s += time.perf_counter() - t
        for d in devices:
            fd = torch.from_numpy(f).to(d)
            if d.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = dsprites.render_torch(fd)
            if d.startswith("cuda"):
                torch.cuda.synchronize()
            dev_s[d] += time.perf_counter() - t
            diff = out.cpu().numpy() != ref
            bad[d][0] += int(diff.any(axis=(1, 2, 3)).sum())
            bad[d][1] += int(diff.sum())
        print(f"\r{s + len(f)}/{len(factors)} checked", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    result["numpy_img_per_s"] = round(len(factors) / ref_s)
    for d in devices:
        result[d] = {
            "differing_images": bad[d][0],
            "differing_pixels": bad[d][1],
            "img_per_s": round(len(factors) / dev_s[d]),
            "device": torch.cuda.get_device_name(d) if d.startswith("cuda") else "cpu",
        }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "check_dsprites_render.json").write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(b[0] for b in bad.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
