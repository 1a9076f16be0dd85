"""CPU latency of what each demo endpoint computes, on the bundled dSprites models (a benchmark, not a test).

    python bench/bench_demo.py                       # the app's threads, the bundled β ladder, median of 30
    python bench/bench_demo.py --threads 2 --checkpoint runs/my-ladder --out /tmp/bench-demo.json

Rows: `encode+decode` is one image through the encoder and the decoder from μ (the reconstruction);
`elbo panel K=…` is what the reconstruct endpoint computes for its table (the IW bound with K posterior
samples, whose K draws also give the recon term, plus the reconstruction); the `handler` rows are the
whole endpoint function (decode the upload, preprocess, compute, lay out the PNG / GIF, format the text)
without the HTTP and queue around it. Targets: encode+decode ≤ 10 ms and the ELBO panel with its
IW estimate ≤ 300 ms on 2 cores; the whole Posterior tab (the 2-latent model's grid posterior, the gap
decomposition's q*, 10,000 IW log weights, the decoded maps and both figures rendered as gr.Plot sends
them) ≤ 2 s, for an upload and for a drawing. Medians
with the 10th–90th percentile spread. Threads default to what app.py uses: CPU cores / concurrent
requests (1 on 2 cores).
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
from vae_triton import metrics  # noqa: E402
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


rows: dict[str, dict] = {}


def rows_median(name: str) -> float:
    return rows[name]["median_ms"]


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
    posterior_ok = posterior_rows(ladder, run, max(3, r // 6))
    lecture_ok = lecture_rows(handlers, run, max(5, r // 3))

    verdict = {
        "encode+decode <= 10 ms": rows["encode+decode (1 image)"]["median_ms"] <= 10.0,
        f"elbo panel K={inf.DEFAULT_IW_SAMPLES} <= 300 ms": rows[f"elbo panel K={inf.DEFAULT_IW_SAMPLES}"][
            "median_ms"
        ]
        <= 300.0,
    }
    if posterior_ok is not None:
        verdict[f"posterior tab <= {POSTERIOR_TARGET_MS / 1000:g} s"] = posterior_ok
    verdict[f"divergence and fit handlers <= {LECTURE_TARGET_MS / 1000:g} s"] = lecture_ok
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


POSTERIOR_TARGET_MS = 2000.0  # the whole Posterior tab answers in ≤ 2 s on a 2-core CPU


def posterior_rows(ladder, run, repeats: int) -> bool | None:
    """The Posterior tab on its 2-latent model: the grid, the IW weights, the figures, the whole event
    (figures rendered to PNG as gr.Plot sends them). None when there is no 2-latent model."""
    import gradio as gr

    models, why_not = inf.posterior_ladder(ladder)
    if models is None:
        print(f"posterior: skipped ({why_not})")
        return None
    rung = models.rungs[0]
    handlers = ui.make_handlers(ladder, models, why_not)
    example = ui.example_paths(models)[0][0]
    cfg = rung.model.config
    x = im.to_model_input(im.open_image(example), cfg.image_channels, cfg.image_size, models.dataset)
    print(f"\nposterior model: {rung.source} (latent 2, {rung.model.num_parameters():,} params)")
    with torch.no_grad():
        run(
            "posterior grid (zoom + 64²)",
            lambda: metrics.posterior_on_grid(rung.model, x, **inf.GRID_OPTIONS),
        )
        run(
            f"IW log weights ({inf.IW_WEIGHTS})",
            lambda: metrics.log_importance_weights(rung.model, x, inf.IW_WEIGHTS),
        )
        run(
            "gap decomposition (grid + q*)",
            lambda: metrics.gap_decomposition(rung.model, x, **inf.GRID_OPTIONS),
        )
        run("posterior core (grid + q* + IW + maps)", lambda: inf.explore_posterior(rung, x), repeats)
    plot = gr.Plot()

    def whole_tab():
        out = handlers.posterior(example)
        for value in out:  # what Gradio does with the figures before sending them
            if hasattr(value, "savefig"):
                plot.postprocess(value)

    run("posterior handler + figures to PNG", whole_tab, repeats)
    sketch_rows(handlers, example, plot, run, repeats)
    slowest = max(rows_median("posterior handler + figures to PNG"), rows_median(SKETCH_ROW))
    return slowest <= POSTERIOR_TARGET_MS


SKETCH_ROW = "posterior sketch handler + figures"


def sketch_rows(handlers, example: str, plot, run, repeats: int) -> None:
    """The drawing's path: a 280² canvas (the example digit drawn 10× larger, black on white, as the
    Sketchpad sends it) through the MNIST preprocessing, then the same event as an upload."""
    import numpy as np
    from PIL import Image

    digit = np.asarray(Image.open(example).convert("L").resize((280, 280), Image.Resampling.BICUBIC))
    canvas = {"composite": np.repeat((255 - digit)[..., None], 3, axis=2)}
    run("sketch preprocessing (280² → 28²)", lambda: im.sketch_to_image(canvas))

    def whole_sketch():
        for value in handlers.posterior_sketch(canvas):
            if hasattr(value, "savefig"):
                plot.postprocess(value)

    run(SKETCH_ROW, whole_sketch, repeats)


LECTURE_TARGET_MS = 1000.0  # each Divergence / Fit handler answers in ≤ 1 s on a 2-core CPU


def lecture_rows(handlers, run, repeats: int) -> bool:
    """The Divergence and Fit tabs' handlers with their figures rendered as gr.Plot sends them: the
    defaults, and the hardest inputs the sliders allow (the narrowest scale beside the widest, far
    apart: the densest quadrature grid; the most samples)."""
    import gradio as gr

    from demo.tabs import divergence, fit

    plot = gr.Plot()

    def rendered(fn, *args):
        def call():
            for value in fn(*args):
                if hasattr(value, "savefig"):
                    plot.postprocess(value)

        return call

    hardest = (0.5, -5.0, 0.05, 0.5, 5.0, 3.0)
    n_max = divergence.SAMPLE_RANGE[1]
    print()
    cases = {
        "divergence handler (default, N=1000)": rendered(handlers.divergence),
        "divergence handler (p = q)": rendered(
            handlers.divergence, *handlers.divergence_preset("p = q"), 1000, 0
        ),
        f"divergence handler (hardest, N={n_max})": rendered(
            handlers.divergence, *hardest, *reversed(hardest), n_max, 0
        ),
        "divergence preset": lambda: handlers.divergence_preset("p = q"),
        "fit handler (default, N=200)": rendered(handlers.fit),
        f"fit handler (hardest, N={n_max})": rendered(handlers.fit, *hardest, n_max, 0),
        "fit preset": lambda: handlers.fit_preset(fit.DEFAULT_PRESET),
    }
    for name, fn in cases.items():
        run(name, fn, repeats)
    return max(rows_median(name) for name in cases) <= LECTURE_TARGET_MS


if __name__ == "__main__":
    main()
