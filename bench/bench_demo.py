"""CPU latency of what each demo endpoint computes, on the bundled dSprites models (a benchmark, not a test).

    python bench/bench_demo.py                       # the app's threads, the bundled β ladder, median of 30
    python bench/bench_demo.py --threads 2 --checkpoint runs/my-ladder --out /tmp/bench-demo.json

Rows: `encode+decode` is one image through the encoder and the decoder from μ (the reconstruction);
`elbo panel K=…` is what the reconstruct endpoint computes for its table (the IW bound with K posterior
samples, whose K draws also give the recon term, plus the reconstruction); the `handler` rows are the
whole endpoint function (decode the upload, preprocess, compute, lay out the PNG / GIF, format the text)
without the HTTP and queue around it. Targets (issue 5): encode+decode ≤ 10 ms and the ELBO panel with its
IW estimate ≤ 300 ms on 2 cores. Medians with the 10th–90th percentile spread. Threads default to what
app.py uses: CPU cores / concurrent requests (1 on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter is for tests; the app runs the torch ops on CPU")

import torch  # noqa: E402

from demo import images as im  # noqa: E402
from demo import inference as inf  # noqa: E402
from demo import ui  # noqa: E402
from vae_triton.io import write_json_atomic  # noqa: E402


def timeit(fn, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1], "repeats": repeats}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", default=None, help="a run dir or ladder folder (default: the bundled models)"
    )
    p.add_argument("--beta", type=float, default=None, help="which rung (default: the largest β)")
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) // ui.CONCURRENCY_LIMIT),
        help="torch CPU threads (default: app.py's, CPU cores / concurrent requests)",
    )
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    ladder = inf.resolve_ladder(checkpoint=args.checkpoint)
    if ladder.untrained:
        print("warning: no trained model found; timing an untrained one", file=sys.stderr)
    rung = ladder.pick(args.beta if args.beta is not None else ladder.betas[-1])
    model, handlers = rung.model, ui.make_handlers(ladder)
    examples = sorted(str(p) for p in inf.EXAMPLES_DIR.glob("dsprites-*.png"))
    cfg = model.config
    x = im.to_model_input(im.open_image(examples[0]), cfg.image_channels, cfg.image_size, ladder.dataset)
    xb = im.to_model_input(im.open_image(examples[4]), cfg.image_channels, cfg.image_size, ladder.dataset)

    rows: dict[str, dict] = {}
    r = args.repeats

    def run(name: str, fn, repeats: int = r) -> None:
        rows[name] = timeit(fn, repeats)
        s = rows[name]
        print(
            f"{name:<34} {s['median_ms']:9.2f} ms   (p10 {s['p10_ms']:.2f}, p90 {s['p90_ms']:.2f})",
            flush=True,
        )

    print(
        f"model: {rung.source} (β={rung.beta:g}, latent {cfg.latent_dim}, {model.num_parameters():,} params)"
    )
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"os.cpu_count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}\n"
    )
    with torch.no_grad():
        run(
            "preprocess (open + crop/resize)",
            lambda: im.to_model_input(
                im.open_image(examples[0]), cfg.image_channels, cfg.image_size, ladder.dataset
            ),
        )
        run("encode+decode (1 image)", lambda: model.reconstruct(x))
        for k in inf.IW_SAMPLE_CHOICES:
            run(f"elbo panel K={k}", lambda k=k: inf.reconstruct(rung, x, k), max(5, r // (1 + k // 512)))
        run("interpolate core (10 frames)", lambda: inf.interpolate_images(rung, x, xb, 10, "spherical"))
        run("sample core (16)", lambda: inf.sample_images(rung, 16, 1.0, 0))
        run("traverse core (10 dims x 9)", lambda: inf.traverse_image(rung, x, 10, 3.0, 9))
    run(
        f"reconstruct handler (K={inf.DEFAULT_IW_SAMPLES})",
        lambda: handlers.reconstruct(examples[0], rung.beta, inf.DEFAULT_IW_SAMPLES),
    )
    run(
        "interpolate handler (10 + GIF)",
        lambda: handlers.interpolate(examples[0], examples[4], rung.beta, 10, "linear"),
    )
    run("sample handler (16)", lambda: handlers.sample(rung.beta, 16, 1.0, 0))
    run("traverse handler (10 x 9)", lambda: handlers.traverse(examples[0], rung.beta, 10, 3.0, 9))

    verdict = {
        "encode+decode <= 10 ms": rows["encode+decode (1 image)"]["median_ms"] <= 10.0,
        f"elbo panel K={inf.DEFAULT_IW_SAMPLES} <= 300 ms": rows[f"elbo panel K={inf.DEFAULT_IW_SAMPLES}"][
            "median_ms"
        ]
        <= 300.0,
    }
    print("\n" + "\n".join(f"{k}: {'yes' if v else 'NO'}" for k, v in verdict.items()))
    if args.out:
        doc = {
            "model": rung.source,
            "beta": rung.beta,
            "threads": args.threads,
            "rows": rows,
            "targets": verdict,
            "load_average": os.getloadavg()[0],
            "cpu": platform.processor() or platform.machine(),
        }
        out = Path(args.out)
        write_json_atomic(out, doc, indent=2)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
