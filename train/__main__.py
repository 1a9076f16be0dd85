"""`python -m train --help`: train a VAE (see train/config.py for every flag)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from .checkpoint import CheckpointError
    from .config import parse_args
    from .data import DataUnavailableError
    from .loop import TrainingDiverged, train

    try:
        cfg = parse_args(argv)
    except ValueError as e:
        # One line, like every other refusal (argparse's own errors still show the usage).
        print(f"python -m train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        train(cfg, argv=argv)
    except KeyboardInterrupt:
        return 130
    except (DataUnavailableError, CheckpointError, TrainingDiverged, ValueError, OSError) as e:
        # Expected failures: one clear message, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, TrainingDiverged) else 3
    return 0


if __name__ == "__main__":
    code = main()
    # The run is over and its files are written: a Ctrl-C or SIGTERM during interpreter shutdown (torch's
    # teardown takes a while) has nothing left to stop, and must not turn a finished run into a signal death.
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)
