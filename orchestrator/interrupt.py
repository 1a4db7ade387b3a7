"""Preemption as a normal end: SIGTERM (what SLURM, Kubernetes and spot reclaims send first) and SIGINT (Ctrl-C).

Inside ``on_signals()`` either signal raises ``Interrupted`` in the main thread, also while the driver waits in a
``ray.get`` (Ray runs Python's signal handlers during its blocking calls). The command's own clean-up then runs
(``lifecycle.train_and_record`` marks the run KILLED with the tag ``fsig.interrupted=true``; a sweep's and
``pregenerate``'s do the same), the local Ray is shut down, and ``cli.main`` prints the one line naming the command
that continues the work and exits ``128 + signal number``: 143 for SIGTERM, 130 for SIGINT.

Why the handlers are installed after ``ray.init``: Ray's core worker installs its own C++ handler for SIGTERM in the
driver, which prints "*** SIGTERM received ***" and aborts (exit 134, nothing recorded). Python's
``signal.signal`` replaces it. A second signal while the first is being handled is ignored (the clean-up is
bounded: a few store writes and ``ray.shutdown``); SIGKILL still ends everything, and ``--resume`` handles that too.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

TAG = "fsig.interrupted"  # "true" on a run ended by a signal (status KILLED); removed when a resume continues it
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by ``signum``; ``str()`` is the one line to print (once a command sets it)."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """128 + the signal number (the shell's convention): 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def with_message(self, message: str) -> "Interrupted":
        return Interrupted(self.signum, message)


_state = {"received": None}


def as_interrupted(err: KeyboardInterrupt) -> Interrupted:
    """``err`` as an ``Interrupted`` naming its signal. Ray's blocking calls turn any ``KeyboardInterrupt`` a signal
    handler raised into a plain new one, so the signal number is then taken from ``received()`` (SIGINT if none)."""
    if isinstance(err, Interrupted):
        return err
    return Interrupted(received() or signal.SIGINT, str(err))


def received() -> int | None:
    """The signal number received inside the current ``on_signals()`` (None if none)."""
    return _state["received"]


@contextmanager
def on_signals(graceful_sigint: bool = False) -> Iterator[None]:
    """Within: SIGTERM and SIGINT raise ``Interrupted`` (the first one; later ones are ignored).

    ``graceful_sigint``: if another handler has taken SIGINT meanwhile (Ray Tune's ``Tuner.fit`` installs one that
    stops the trials, saves Tune's state and returns), SIGTERM calls that handler instead of raising, and the caller
    checks ``received()`` after it returns. Outside the main thread this does nothing (Python allows handlers there
    only). The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _state["received"] is not None:
            return  # already stopping
        _state["received"] = signum
        current = signal.getsignal(signal.SIGINT)
        if graceful_sigint and signum == signal.SIGTERM and callable(current) and current is not handler:
            current(signal.SIGINT, frame)
            return
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state["received"] = None
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
