"""The exception tree of empcompress.

Every error we raise on purpose derives from :class:`EmpCompressError`. Each
carries a message that names the file and says what to do; the CLI prints it as
``Error: <message>`` without a traceback. All exceptions pickle (Dask ships them
between processes), so every subclass keeps its constructor arguments in
``self.args``.
"""

from __future__ import annotations

__all__ = [
    "EmpCompressError",
    "InputError",
    "NotMrcError",
    "TruncatedFileError",
    "UnsupportedModeError",
    "HeaderMismatchError",
    "NotOurTiffError",
    "VerificationError",
    "RestoreError",
    "GainError",
    "PipelineError",
    "JournalLockedError",
    "RecordError",
    "SidecarError",
    "DepositionError",
]


class EmpCompressError(Exception):
    """Root of every error empcompress raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


class InputError(EmpCompressError):
    """An input file cannot be used as it is (bad format, wrong sizes, ...)."""


class NotMrcError(InputError):
    """The file is not an MRC file (or is empty)."""


class TruncatedFileError(InputError):
    """The file is shorter than its header says."""


class UnsupportedModeError(InputError):
    """The MRC mode is not one we can read losslessly."""


class HeaderMismatchError(InputError):
    """The header's sizes do not match the file's size."""


class NotOurTiffError(InputError):
    """A TIFF file that empcompress did not write (no metadata record)."""


class VerificationError(EmpCompressError):
    """A written output does not reproduce its source bit for bit."""


class RestoreError(EmpCompressError):
    """The original file cannot be rebuilt exactly."""


class GainError(EmpCompressError):
    """A gain reference is missing, unreadable or does not fit the movie."""


class PipelineError(EmpCompressError):
    """The whole-drive pipeline cannot go on (bad destination, cluster, ...)."""


class JournalLockedError(PipelineError):
    """Another run holds the destination's journal."""


class RecordError(InputError):
    """Our TIFF's record is damaged or crafted, or disagrees with itself (see docs/record-format.md)."""


class SidecarError(InputError):
    """An acquisition sidecar (EPU ``.xml``/``.dm``, SerialEM ``.mdoc``) cannot be read or makes no sense."""


class DepositionError(EmpCompressError):
    """The EMPIAR deposition cannot be written (no report in the bag, a bad template, ...)."""
