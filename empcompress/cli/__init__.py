"""The ``empcompress`` command line.

All printing and progress bars live here; the stages it calls are plain
functions. Our errors print as ``Error: message`` and exit with status 1
(2 for bad usage), never with a traceback (``--verbose`` shows one for an
unexpected error, and the library warnings and log lines that are otherwise
kept out of the way). A stop signal (SIGINT, SIGTERM, SIGHUP) removes what was
half-done, prints one line and exits with 128 + its number: 130, 143, 129
(see :mod:`empcompress.interrupts`).

Only light modules are imported here: the heavy ones (NumPy, Numba, Dask) are
imported inside the commands, after the signal handlers are in place.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .. import interrupts
from ..errors import EmpCompressError
from .common import CODEC_NAMES, EXIT_FAILURE, EXIT_USAGE
from .parser import build_parser

__all__ = ["main", "build_parser", "CODEC_NAMES"]

_log_handlers: list[logging.Handler] = []  # the handler _configure_logging added last
_silenced: dict[str, int] = {}  # library loggers silenced, with their levels before


def _configure_logging(*, verbose: bool) -> None:
    """Library warnings and log lines (tifffile, Numba, Dask) go to stderr only with --verbose.

    Without it they are dropped, so that an ``Error:`` line is the only thing a user sees
    when something goes wrong (our own messages are printed, not logged).
    """
    logging.captureWarnings(False)  # (again: a test harness may have put its own hook back meanwhile)
    logging.captureWarnings(True)
    root = logging.getLogger()
    while _log_handlers:
        root.removeHandler(_log_handlers.pop())
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        for name, level in _silenced.items():  # as they were before a run without --verbose
            logging.getLogger(name).setLevel(level)
        _silenced.clear()
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        warnings.simplefilter("default")
    else:
        handler = logging.NullHandler()  # no "last resort" printing of warnings to stderr
        for name in _LIBRARY_LOGGERS:
            library = logging.getLogger(name)
            _silenced.setdefault(name, library.level)
            library.setLevel(logging.CRITICAL + 1)
    _log_handlers.append(handler)
    root.addHandler(handler)


_LIBRARY_LOGGERS = ("tifffile", "numba", "distributed", "dask", "bokeh", "tornado", "asyncio", "py.warnings")
#: errno values that mean "the disk holding the output cannot take it".
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _os_error_message(error: OSError, *, writing: str | os.PathLike[str] | None) -> str:
    """One line for an OSError: the user's file (never our temporary name), what went wrong, what to do.

    ``writing`` is the output the command was writing (a file, or compress's DEST).
    """
    from ..files import TEMP_MARKER

    def text(name: object) -> str | None:
        return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None

    def is_ours(name: str | None) -> bool:
        return name is not None and TEMP_MARKER in os.path.basename(name)

    output = text(writing)
    where, other = text(error.filename), text(error.filename2)
    if is_ours(where):
        where = other if other is not None and not is_ours(other) else output
    if where is None and (error.errno in _DISK_FULL or error.errno in _NOT_ALLOWED):
        where = output
    about_output = output is not None and where == output
    what = error.strerror or str(error) or type(error).__name__
    folder = os.path.dirname(os.path.abspath(where)) if where else "the output"
    kept = f"nothing half-written was left under {where}; " if about_output else ""
    if error.errno in _DISK_FULL:
        advice = f"{kept}free space on the disk holding {folder} and run the same command again"
    elif error.errno in _NOT_ALLOWED and about_output:
        advice = (
            f"{kept}choose a folder you can write to (or fix the permissions of {folder}) and run the "
            f"same command again"
        )
    elif error.errno in _NOT_ALLOWED:
        advice = "check that you may read it (and write where needed) and run the same command again"
    elif error.errno == errno.EIO:
        advice = f"{kept}the disk may be failing or was disconnected; check it and run the same command again"
    elif error.errno in (errno.ENOENT, errno.ENOTDIR):
        advice = "check the path and run the same command again"
    else:
        advice = f"{kept}fix that and run the same command again"
    return f"{where + ': ' if where else ''}{what}; {advice}"


def _interrupted_message(signum: int, args: argparse.Namespace | None) -> str:
    command = getattr(args, "command", None) or "the command"
    return (
        f"Stopped by {interrupts.signal_name(signum)}: {command} was interrupted and left nothing "
        f"half-written; run the same command again to do the work"
    )


def _run(argv: Sequence[str] | None) -> int:
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _configure_logging(verbose=args.verbose)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except BaseException as error:
        signum = interrupts.received()
        if signum is None and isinstance(error, KeyboardInterrupt):
            signum = getattr(error, "signum", int(signal.SIGINT))
        if signum is not None:  # whatever the unwinding raised on the way, the user stopped us
            print(_interrupted_message(signum, args), file=sys.stderr, flush=True)
            return interrupts.exit_status(signum)
        if isinstance(error, SystemExit):  # argparse: --help, --version, bad usage
            raise
        if isinstance(error, EmpCompressError):
            print(f"Error: {error}", file=sys.stderr)
            return EXIT_FAILURE
        if isinstance(error, OSError):
            message = _os_error_message(error, writing=getattr(args, "writing", None))
            print(f"Error: {message}", file=sys.stderr)
            return EXIT_FAILURE
        if not isinstance(error, Exception):
            raise
        writing = getattr(args, "writing", None)
        if writing is not None and "disk is full" in str(error):  # SQLite's words for ENOSPC (the journal)
            print(
                f"Error: {writing}: the disk is full ({error}); free space on the disk holding {writing} "
                f"and run the same command again",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        verbose = bool(getattr(args, "verbose", False))
        if verbose:
            import traceback

            traceback.print_exc()
        hint = "" if verbose else "; run the same command with --verbose to see the traceback"
        print(f"Error: unexpected {type(error).__name__}: {error}{hint}", file=sys.stderr)
        return EXIT_FAILURE


def _log_unraisable(unraisable: Any) -> None:
    """Errors Python can only report (in atexit callbacks, in __del__): logged, seen with --verbose.

    E.g. Dask closing, at exit, a cluster a signal stopped while it started.
    """
    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    message = unraisable.err_msg or "Exception ignored"
    logging.getLogger("empcompress").warning("%s", message, exc_info=exc_info)


def _log_thread_exception(hook_args: Any) -> None:
    exc_info = (hook_args.exc_type, hook_args.exc_value, hook_args.exc_traceback)
    name = getattr(hook_args.thread, "name", "a thread")
    logging.getLogger("empcompress").warning("exception in %s", name, exc_info=exc_info)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``empcompress`` command. Returns its exit status (see the module's docstring)."""
    previous = interrupts.install()  # before anything heavy is imported
    interrupts.reset()
    owns_process = interrupts.is_command_process()
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as \xNN escapes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    if owns_process:  # no stray tracebacks from library threads and exit-time cleanups: --verbose shows them
        sys.unraisablehook = _log_unraisable
        threading.excepthook = _log_thread_exception
    status = EXIT_FAILURE
    try:
        status = _run(argv)
        return status
    except SystemExit as exit_request:
        status = exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
        raise
    finally:
        sys.stdout.flush()
        if owns_process:  # a signal while the interpreter shuts down: the outcome stands
            interrupts.exit_on_late_signals(status)
        else:
            interrupts.restore(previous)
