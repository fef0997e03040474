"""Our TIFFs in the bag: each listed TIFF's empcompress record read, and the gain reference it
names inside ``data/``, listed in manifest-sha256.txt with the recorded sha256, and present."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import EmpCompressError, NotOurTiffError
from ...scan.entries import TIFF_SUFFIXES
from ..manifest import PAYLOAD_DIRNAME, BagProblem, manifest_name, show_path
from .disk import _not_regular, inspect_path

__all__ = ["TIFF_SUFFIXES"]  # (the scan's: the names a TIFF goes by)

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _gain_target(tiff: str, gain: Any) -> tuple[str, str, str]:
    """``(path of the gain reference in the bag, recorded sha256, "")`` or ``("", "", problem)``."""
    if not isinstance(gain, dict):
        return "", "", "its record's gain entry is not an object"
    reference = gain.get("reference")
    digest = gain.get("reference_sha256")
    if not isinstance(reference, str) or not reference:
        return "", "", "its record names no gain reference file"
    if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
        return "", "", "its record gives no valid sha256 for its gain reference"
    if "\x00" in reference or reference.startswith("/"):
        return (
            "",
            "",
            f"its record names its gain reference {show_path(reference)!r} outside {PAYLOAD_DIRNAME}/",
        )
    parts = tiff.split("/")[:-1]
    for part in reference.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif len(parts) > 1:
            parts.pop()
        else:
            parts = []
            break
    if len(parts) < 2:
        return (
            "",
            "",
            f"its record names its gain reference {show_path(reference)!r} outside {PAYLOAD_DIRNAME}/",
        )
    return "/".join(parts), digest.lower(), ""


def _check_tiffs(
    dest: Path,
    listed: dict[str, dict[str, str]],
    files: dict[str, int],
    special: dict[str, str],
    *,
    has_sha256_manifest: bool,
    problems: list[BagProblem],
) -> dict[str, str | None]:
    """Read the record of every listed TIFF; returns ours whose dependencies are in order."""
    from ...reconstruct import read_record

    ours: dict[str, str | None] = {}
    for key in sorted(listed):
        if key not in files or not key.lower().endswith(TIFF_SUFFIXES):
            continue
        shown = show_path(key)
        try:
            record = read_record(dest / key)
        except NotOurTiffError:
            continue  # a TIFF copied from the source: its checksums are all there is to check
        except EmpCompressError as error:
            problems.append(BagProblem(shown, f"its empcompress record cannot be used: {error}"))
            continue
        except Exception as error:  # a hostile file must not stop the audit
            problems.append(BagProblem(shown, f"cannot be read as a TIFF ({type(error).__name__}: {error})"))
            continue
        gain = record.storage.gain
        if gain is None:
            ours[key] = None
            continue
        target, recorded, problem = _gain_target(key, gain)
        if not problem:
            needs = f"needs its gain reference {show_path(target)} (sha256 {recorded})"
            listed_digest = listed.get(target, {}).get("sha256")
            if not has_sha256_manifest:
                problem = f"{needs}, which cannot be checked: the bag has no {manifest_name('sha256')}"
            elif listed_digest is None:
                problem = f"{needs}, which is not in {manifest_name('sha256')}"
            elif listed_digest != recorded:
                problem = f"{needs}, but {manifest_name('sha256')} lists it with sha256 {listed_digest}"
            elif target not in files:
                reason = _not_regular(special[target]) if target in special else inspect_path(dest, target)
                problem = f"{needs}, which {reason}"
        if problem:
            problems.append(BagProblem(shown, problem))
        else:
            ours[key] = target
    return ours
