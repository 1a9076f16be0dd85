"""Stopping a training run at a step boundary on SIGINT (Ctrl-C) or SIGTERM (`docker stop`, Kubernetes,
Slurm, `timeout`).

A signal handler must not stop the run where the signal lands: inside a step, after the step drew its
reparameterization noise, a checkpoint would save the advanced random state under the old step number
and `--resume` would no longer continue the run exactly. So the first signal only records itself
(`StopRequest.signum`); the loop looks at it between steps, writes a checkpoint of the last completed
step, and then raises `Interrupted` (SIGINT) or `Terminated` (SIGTERM), the usual effect of that signal.
`python -m train` then exits with 128 + the signal number, 130 or 143, what a shell reports for a process
the signal ended: the run did not finish, so a scheduler that restarts failed jobs restarts it, and with
`--resume` it continues where it stopped.

A second signal stops at once, with a message and without another checkpoint (the last one is kept).
Copies of the first signal that arrive within `REPEAT_WINDOW_S` count as the same request: `timeout(1)`
sends SIGTERM to the command and then to its whole process group, and torchrun forwards to its workers
the Ctrl-C they already got from the terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_WINDOW_S = 1.0


class RunStopped:
    """Mixed into the two exceptions a stopped run raises: `signum`, and `now` (True: the second signal
    stopped the run mid-step, with no checkpoint of it)."""

    signum: int
    now: bool


class Interrupted(RunStopped, KeyboardInterrupt):
    """SIGINT stopped the run (a KeyboardInterrupt: `python -m train` exits with 130)."""


class Terminated(RunStopped, SystemExit):
    """SIGTERM stopped the run (a SystemExit with code 143 = 128 + SIGTERM, as the signal's default
    action would end the process, but after the checkpoint)."""


def stopped(signum: int, *, now: bool = False) -> BaseException:
    """The exception that ends a run stopped by `signum`."""
    e = Terminated(128 + signum) if signum == signal.SIGTERM else Interrupted(signal_name(signum))
    e.signum, e.now = signum, now
    return e


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """The first stop signal received (None until one arrives); the handler of both signals."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self.until = "this step"  # what the run completes before it stops (the loop changes it)
        self._first_at = 0.0

    def handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            # os.write, not print: a handler that prints while the main thread prints raises
            # "reentrant call" in the buffered stream.
            self._say(f"{signal_name(signum)}: stopping after {self.until} (a second signal stops at once)")
            return
        if now - self._first_at < REPEAT_WINDOW_S:
            return  # the same request, delivered twice
        self._say(f"{signal_name(signum)} again: stopping now, without a checkpoint of this step")
        raise stopped(signum, now=True)

    def _say(self, text: str) -> None:
        if self.announce:
            with contextlib.suppress(OSError):
                os.write(2, f"\n{text}\n".encode())


@contextlib.contextmanager
def stop_signals(announce: bool = True) -> Iterator[StopRequest]:
    """Handle SIGINT and SIGTERM with a `StopRequest` inside the block; restore the previous handlers
    after it. Off the main thread (where Python cannot install handlers) the signals keep their handlers
    and the request never fires."""
    request = StopRequest(announce)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, request.handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            # None: a handler installed outside Python; the default action is the closest we can restore.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
