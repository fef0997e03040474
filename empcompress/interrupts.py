"""SIGINT, SIGTERM and SIGHUP: one way to stop, in every command and at every moment.

A stop signal becomes an :class:`Interrupted` exception (a ``KeyboardInterrupt``)
raised in the main thread, wherever it is: importing, starting a cluster,
converting. The stack unwinds through the ``finally`` blocks that remove our
temporary files (:func:`empcompress.files.temporary_output`) and close the
journal, and the command line turns it into one line and the shell's exit
status for the signal: 128 + the signal's number (130 SIGINT, 143 SIGTERM,
129 SIGHUP).

Only the first signal is raised; one that comes while the first is unwinding
is noted and otherwise ignored, so that the cleanup finishes. The command line
installs the handlers first thing in :func:`empcompress.cli.main`. Before that,
while the ``empcompress`` program (the console script or ``python -m
empcompress``) imports its own modules, a stop signal ends it at once with one
line and the same exit status: nothing has been done yet. Imported as a library
(tests, notebooks, Dask workers) this module changes nothing until asked.

A signal the program was started with set to be ignored (``nohup`` ignores
SIGHUP; a shell's background job ignores SIGINT) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "STOP_SIGNALS",
    "Interrupted",
    "signal_name",
    "exit_status",
    "is_command_process",
    "install",
    "install_for_startup",
    "set_handlers",
    "restore",
    "received",
    "note",
    "reset",
    "recording",
    "sigint_blocked",
    "stops_held",
    "exit_on_late_signals",
    "checkpoint",
]

#: The signals that stop a command (SIGHUP: the terminal went away).
STOP_SIGNALS: tuple[int, ...] = tuple(
    int(getattr(signal, name)) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

Handler = Callable[[int, FrameType | None], Any] | int | None

_received: list[int] = []
#: Stop signals ignored when this process started (nohup, background jobs): they stay ignored.
_IGNORED_AT_START = frozenset(signum for signum in STOP_SIGNALS if signal.getsignal(signum) == signal.SIG_IGN)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; unwinding removes what was half-done."""

    def __init__(self, signum: int = int(signal.SIGINT)) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal_name(self.signum)}"

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return (type(self), (self.signum,))


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(signum: int) -> int:
    """The shell's convention for a command stopped by a signal: 128 + its number."""
    return 128 + signum


def is_command_process() -> bool:
    """Whether this process is the ``empcompress`` program (console script or ``python -m``).

    False in tests, notebooks, and the worker processes multiprocessing starts
    from the program (their main module is renamed ``__mp_main__``).
    """
    main_module = sys.modules.get("__main__")
    if main_module is None or getattr(main_module, "__name__", "") != "__main__":
        return False
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and getattr(spec, "name", "") in ("empcompress.__main__", "empcompress.cli"):
        return True
    script = os.path.basename(str(getattr(main_module, "__file__", "") or ""))
    return script in ("empcompress", "empcompress-script.py", "empcompress.exe")


def received() -> int | None:
    """The first stop signal this process received since :func:`reset`, if any."""
    return _received[0] if _received else None


def note(signum: int) -> None:
    """Record a stop signal handled elsewhere (e.g. compress's own stop handler)."""
    _received.append(signum)


def reset() -> None:
    """Forget earlier signals (the start of a command run in-process)."""
    _received.clear()


def _raise_once(signum: int, frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    if first:
        raise Interrupted(signum)


def set_handlers(handler: Handler, *, signals: Iterable[int] = STOP_SIGNALS) -> dict[int, Handler]:
    """Handle the stop signals (or ``signals``) with ``handler`` (main thread only); return the old ones."""
    previous: dict[int, Handler] = {}
    for signum in signals:
        if signum in _IGNORED_AT_START:
            continue
        try:
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread, or not allowed here
            continue
    return previous


def install() -> dict[int, Handler]:
    """Make every stop signal raise :class:`Interrupted` in the main thread; returns the old handlers."""
    return set_handlers(_raise_once)


def restore(previous: dict[int, Handler]) -> None:
    """Put back handlers returned by :func:`install` (or :func:`recording`)."""
    for signum, handler in previous.items():
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def recording(handler: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within the block, stop signals are noted (and passed to ``handler``), never raised."""

    def record(signum: int, frame: FrameType | None) -> None:
        _received.append(signum)
        if handler is not None:
            handler(signum)

    previous = set_handlers(record)
    try:
        yield
    finally:
        restore(previous)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Hold SIGINT back (blocked, not lost) in this thread and the threads and processes it starts.

    For starting a local Dask cluster: its worker processes must not see a
    terminal's Ctrl-C, and the cluster code ignores SIGINT while it starts them,
    which would drop a Ctrl-C that comes then. Blocked, the signal stays pending
    and is delivered when the block ends; the threads and worker processes
    started meanwhile keep it blocked, so only this thread ever handles it.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # multiprocessing starts its resource tracker on first use and then *unblocks* SIGINT in the
    # calling thread; started now, it leaves our mask alone while the cluster starts
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Hold every stop signal back while child processes are started; act on the first one after.

    A process stopped while multiprocessing spawns a child leaves that child
    reading its start-up data from a pipe that closes under it: it prints
    ``EOFError: Ran out of input`` and a traceback to the terminal the user
    shares with it. So while a local cluster starts its workers:

    - SIGINT is blocked (:func:`sigint_blocked`: the threads and workers started
      meanwhile keep it blocked, so a terminal's Ctrl-C reaches only this thread);
    - SIGTERM and SIGHUP are noted by a handler in this process only. A blocked
      mask would be inherited by the workers, which the cluster stops with SIGTERM.

    When the block ends the handlers in place before it are back, a pending
    SIGINT is delivered to them, then the first SIGTERM or SIGHUP noted is raised
    again (in this thread) and its handler run at once. A second SIGTERM or
    SIGHUP while held stops at once (:class:`Interrupted` for the first), as a
    second Ctrl-C does in ``compress``: a start that hangs can still be ended
    (a child being spawned may then print its traceback). Signals ignored at
    start (``nohup``) stay ignored. Outside the main thread only SIGINT is held.
    """
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)
        if len(held) == 2:
            raise Interrupted(held[0])

    with sigint_blocked():
        previous = set_handlers(hold, signals=[s for s in STOP_SIGNALS if s != signal.SIGINT])
        try:
            yield
        finally:
            restore(previous)
    if held:
        signal.raise_signal(held[0])
        _run_pending_handlers()


def exit_on_late_signals(status: int) -> None:
    """After the command has finished: a stop signal ends the process at once with ``status``.

    The work is done (and reported); a signal while the interpreter shuts down
    must neither print a traceback nor change the outcome.
    """

    def leave(signum: int, frame: FrameType | None) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)

    set_handlers(leave)


def checkpoint() -> None:
    """A safe point in long work: raise :class:`Interrupted` if a stop signal has arrived (main thread only).

    The handler raises wherever the main thread is, which is what stops a
    command inside a long call. But library code can swallow that exception: a
    SIGHUP was lost in about one ``restore`` in five (it finished and exited 0)
    because the handler struck during a lazy import inside imagecodecs, which
    takes a failed import for a missing codec (``except ImportError``; NumPy's C
    API had turned our exception into an ImportError on the way).

    So at each checkpoint a stop signal already received is raised again. Pending
    handlers are run first (``PyErr_CheckSignals``), in case the main thread has
    not yet run one. The command line calls this at every progress step: a stop
    is acted on within one frame's work. In another thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    _run_pending_handlers()
    if _received:
        raise Interrupted(_received[0])


def _run_pending_handlers() -> None:
    import ctypes

    check = ctypes.pythonapi.PyErr_CheckSignals
    check.argtypes = []
    check.restype = ctypes.c_int
    check()  # a handler's exception propagates (ctypes.pythonapi checks for a set error)


def install_for_startup() -> None:
    """While the program imports its modules: a stop signal ends it at once (nothing to clean up yet)."""
    set_handlers(_exit_while_starting)


def _exit_while_starting(signum: int, frame: FrameType | None) -> None:
    print(
        f"Stopped by {signal_name(signum)} while starting: nothing was done; run the same command again",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(exit_status(signum))


if is_command_process():  # the empcompress program, importing its modules
    install_for_startup()
