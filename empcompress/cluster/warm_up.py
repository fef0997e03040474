"""A worker's warm-up: run beside the worker's start, not inside it, and waited for by its tasks.

distributed calls a worker plugin's ``setup`` on the worker's event loop, and for a worker that
joins after the plugin was registered (every batch job's) inside the worker's start:
``Server.start`` bounds ``Worker.start_unsafe`` by the worker's death timeout (dask-jobqueue passes
``--death-timeout 60``), and ``start_unsafe`` awaits ``_register_with_scheduler``, which awaits
``plugin_add`` of every plugin the scheduler sends, which calls ``setup``. The warm-up (imports,
and a tiny conversion that loads the Numba kernels from their cache, or compiles them when the
cache is cold: seconds, a minute or more on a loaded node) run there got the job's worker killed
("Timed out starting worker"), and it stopped the worker's event loop (heartbeats included) while
it ran.

So the plugin starts the warm-up in a thread of its own (:func:`start_in_background`) and returns
at once, and every task waits for any warm-up running in its process before it starts
(:func:`after_warm_up`): no task runs beside a warm-up, as when the warm-up ran first.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["WARM_UP_WAIT_SECONDS", "start_in_background", "wait_for_warm_up", "after_warm_up"]

#: A task waits at most this long for a warm-up (one that hangs, e.g. on a stuck TMPDIR, must not hold
#: the worker's tasks for ever: the warm-up only saves time, so the task then runs anyway).
WARM_UP_WAIT_SECONDS = 600.0

_Arguments = ParamSpec("_Arguments")
_Result = TypeVar("_Result")

_log = logging.getLogger(__name__)
_changed = threading.Condition()
_n_running = 0  # warm-ups running in this process (in-process workers each start one)
_inside = threading.local()  # .warming: this thread runs a warm-up (which never waits for itself)


def start_in_background(setup: Callable[[], None]) -> threading.Thread:
    """Run ``setup`` in a thread of its own and return at once; tasks wait for it (:func:`after_warm_up`).

    A failed warm-up only costs time later (the first task loads what it did not), so its error is
    not raised anywhere.
    """
    global _n_running
    with _changed:
        _n_running += 1

    def run() -> None:
        global _n_running
        _inside.warming = True
        try:
            with contextlib.suppress(Exception):
                setup()
        finally:
            with _changed:
                _n_running -= 1
                _changed.notify_all()

    thread = threading.Thread(target=run, name="empcompress-warm-up", daemon=True)
    try:
        thread.start()
    except BaseException:  # (no thread could be started: nothing is running)
        with _changed:
            _n_running -= 1
            _changed.notify_all()
        raise
    return thread


def wait_for_warm_up(*, timeout_seconds: float | None = None) -> bool:
    """Wait until no warm-up is running in this process, at most ``timeout_seconds`` (default
    :data:`WARM_UP_WAIT_SECONDS`); whether none is. At once inside a warm-up's own thread."""
    if getattr(_inside, "warming", False):
        return True
    with _changed:
        return _changed.wait_for(
            lambda: _n_running == 0, WARM_UP_WAIT_SECONDS if timeout_seconds is None else timeout_seconds
        )


def after_warm_up(task: Callable[_Arguments, _Result]) -> Callable[_Arguments, _Result]:
    """``task``, made to wait for a warm-up running in its process first (for the functions sent to workers).

    The wrapper keeps the task's name (Dask names a task's keys after its function) and is what the
    task's module holds under that name, so that it pickles by reference as the task did.
    """

    @functools.wraps(task)
    def waiting(*args: _Arguments.args, **kwargs: _Arguments.kwargs) -> _Result:
        if not wait_for_warm_up():
            _log.warning(
                "%s starts although the worker's warm-up still runs after %.0f s",
                task.__name__,
                WARM_UP_WAIT_SECONDS,
            )
        return task(*args, **kwargs)

    return waiting
