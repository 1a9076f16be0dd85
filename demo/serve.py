"""The demo's command line and server: `python app.py` and `python -m demo` both run `main()`.

`create_demo(checkpoint, hub_repo, device, threads)` builds the queued Gradio Blocks over the models that
`demo.inference.resolve_ladder` finds (see app.py for the flags and their environment variables).
"""

from __future__ import annotations

try:  # ZeroGPU needs `spaces` imported before torch touches CUDA (first thing here, for both entry points)
    import spaces  # noqa: F401
except ImportError:
    pass

import argparse
import logging
import os

import torch

from demo.inference import resolve_ladder
from demo.ui import CONCURRENCY_LIMIT, QUEUE_SIZE, build_demo, launch_kwargs
from vae_triton.cpu_threads import available_cores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Gradio demo of a β-VAE ladder: reconstruct (with the ELBO panel), interpolate, sample, "
        "traverse, and the exact posterior of a 2-latent model. Without --checkpoint or --hub-repo it serves "
        "the bundled dSprites models.",
    )
    p.add_argument(
        "--checkpoint",
        default=os.environ.get("VAE_CHECKPOINT") or None,
        help="a run directory (config.json + model.safetensors) or a folder of them (a β ladder) "
        "[env VAE_CHECKPOINT]",
    )
    p.add_argument(
        "--hub-repo",
        default=os.environ.get("VAE_HUB_REPO") or None,
        help="Hugging Face model repo with the same layout; falls back to the bundled models when "
        "unreachable [env VAE_HUB_REPO]",
    )
    p.add_argument(
        "--device",
        default=os.environ.get("VAE_DEVICE", "cpu"),
        help="torch device for the models (default: cpu) [env VAE_DEVICE]",
    )
    p.add_argument(
        "--host", default=None, help="interface to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public *.gradio.live link")
    p.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help=f"torch threads per computation (default: cores / concurrent requests = {default_threads()})",
    )
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    return args


def default_threads() -> int:
    """Cores shared by the requests the queue runs at once, fixed (requests overlap, so no count can be
    changed between one request's steps). Small models gain nothing from more intra-op threads, and
    oversubscribed OpenMP threads spin: on a busy 2-core machine two threads per request made one
    encode+decode 250 ms instead of 1 ms. The cores are the ones this process may use
    (`vae_triton.cpu_threads.available_cores`: its CPU affinity and a container's CPU limit, such as a
    Space's 2 vCPUs on a host that shows more)."""
    return max(1, available_cores() // CONCURRENCY_LIMIT)


def log_to_stderr() -> None:
    """The demo's own log (`vae_triton.demo`: user errors, one line each) on stderr, with a timestamp."""
    logger = logging.getLogger("vae_triton.demo")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def create_demo(
    checkpoint: str | None = None,
    hub_repo: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
):
    torch.set_num_threads(threads or default_threads())
    log_to_stderr()
    ladder = resolve_ladder(checkpoint, hub_repo, device=device)
    betas = ", ".join(f"{b:g}" for b in ladder.betas)
    print(
        f"vae-triton demo: serving {ladder.origin} models from {ladder.location} (β ∈ {{{betas}}})",
        flush=True,
    )
    for note in ladder.notices:
        print(f"  note: {note}", flush=True)
    # api_open=False: the REST routes (/run/NAME) would run any event outside the queue's limits.
    return build_demo(ladder).queue(
        default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE, api_open=False
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        demo = create_demo(args.checkpoint, args.hub_repo, args.device, args.threads)
    except ValueError as e:  # e.g. --checkpoint pointing at nothing loadable: say so, no traceback
        raise SystemExit(f"error: {e}") from None
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())
