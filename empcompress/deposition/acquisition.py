"""Which sidecar describes which movie of the bag.

- EPU: a movie named ``FoilHole_<id>_Data_<id>_<n>_<date>_<time>[_Fractions|_EER].<ext>`` has
  ``FoilHole_..._<time>.xml`` in its own folder; ``EpuSession.dm`` anywhere on the drive names
  the session.
- SerialEM: an ``.mdoc`` names its movies by ``SubFramePath``; a movie matches when its
  name is that name and it lies in the mdoc's folder or below (one such movie: several
  are ambiguous and match none). ``<movie>.mdoc`` beside a movie describes it when it has
  one frame section.

The sidecars are read from the bag's payload (copied byte for byte from the drive), with
:func:`~.sidecars.read_sidecar_bytes`: regular files inside the payload, bounded in size.
A sidecar that cannot be read is a problem reported with its reason, never fatal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import EmpCompressError
from .sidecars import AcquisitionMetadata, read_sidecar_bytes
from .sidecars.epu import EpuSession, epu_sidecar_name, parse_epu_movie_xml, parse_epu_session

__all__ = ["Acquisition", "match_sidecars", "EPU_SESSION_NAME"]

EPU_SESSION_NAME = "EpuSession.dm"
#: At most this many sidecars are read per bag (a drive holds one per movie; beyond that, larger
#: drives keep the first ones in path order and say so).
MAX_SIDECARS = 200_000


@dataclass
class Acquisition:
    """Sidecar metadata by movie (payload path), the EPU sessions, and what could not be read."""

    by_source: dict[str, AcquisitionMetadata] = field(default_factory=dict)
    sessions: list[EpuSession] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _folder(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent


def _name(path: str) -> str:
    """The last component of a report's (POSIX, relative) path; no Path object: it runs on every file."""
    return path.rpartition("/")[2]


def _within(folder: str, path: str) -> bool:
    return not folder or path == folder or path.startswith(folder + "/")


def match_sidecars(
    payload: str | Path, files: Iterable[dict[str, Any]], movie_sources: Iterable[str]
) -> Acquisition:
    """Read the sidecars among ``files`` (report.json entries) for the movies ``movie_sources``.

    Returns metadata keyed by each movie's *source* path.
    """
    from .sidecars.serialem import parse_mdoc

    payload = Path(payload)
    result = Acquisition()
    movies = sorted(movie_sources)
    by_name: defaultdict[str, list[str]] = defaultdict(list)
    for movie in movies:
        by_name[_name(movie)].append(movie)
    epu_xml = set()  # each movie's EPU sidecar, where its name gives one
    for movie in movies:
        xml_name = epu_sidecar_name(_name(movie))
        if xml_name is not None:
            folder = _folder(movie)
            epu_xml.add(f"{folder}/{xml_name}" if folder else xml_name)
    # only the sidecars are kept from the (streamed) files, never every file of the bag
    output_of: dict[str, str] = {}
    for entry in files:
        source, output = entry.get("source"), entry.get("output")
        if not isinstance(source, str) or not isinstance(output, str) or entry.get("state", "done") != "done":
            continue
        if source in epu_xml or _name(source) == EPU_SESSION_NAME or source.lower().endswith(".mdoc"):
            output_of[source] = output

    def read(source: str) -> bytes | None:
        output = output_of[source]
        if not output.startswith("data/"):
            return None
        try:
            return read_sidecar_bytes(payload / output[len("data/") :], root=payload)
        except EmpCompressError as error:
            result.problems.append(str(error))
            return None

    n_read = 0
    for source in sorted(output_of):
        if _name(source) == EPU_SESSION_NAME:
            data = read(source)
            if data is not None:
                try:
                    result.sessions.append(parse_epu_session(data, name=source))
                except EmpCompressError as error:
                    result.problems.append(str(error))
    for movie in movies:
        xml_name = epu_sidecar_name(_name(movie))
        folder = _folder(movie)
        xml = f"{folder}/{xml_name}" if folder else xml_name
        if xml_name is None or xml not in output_of or n_read >= MAX_SIDECARS:
            continue
        n_read += 1
        data = read(xml)
        if data is not None:
            try:
                result.by_source[movie] = parse_epu_movie_xml(data, name=xml)
            except EmpCompressError as error:
                result.problems.append(str(error))
    for mdoc in sorted(source for source in output_of if source.lower().endswith(".mdoc")):
        if n_read >= MAX_SIDECARS:
            result.problems.append(f"more than {MAX_SIDECARS} sidecars: the rest were not read")
            break
        n_read += 1
        data = read(mdoc)
        if data is None:
            continue
        try:
            parsed = parse_mdoc(data, name=mdoc)
        except EmpCompressError as error:
            result.problems.append(str(error))
            continue
        folder = _folder(mdoc)
        beside = mdoc[: -len(".mdoc")]
        if len(parsed.movies) == 1 and beside in by_name.get(_name(beside), ()):
            result.by_source.setdefault(beside, parsed.movies[0])
            continue
        for metadata in parsed.movies:
            candidates = [m for m in by_name.get(metadata.frames_name or "", ()) if _within(folder, m)]
            if len(candidates) == 1:
                result.by_source.setdefault(candidates[0], metadata)
            elif len(candidates) > 1:
                result.problems.append(
                    f"{mdoc}: names {metadata.frames_name}, which {len(candidates)} movies are called; "
                    f"none of them takes its metadata"
                )
    return result
