"""``empiar-deposition.json``: the bag's EMPIAR deposition, built from what the run recorded.

:func:`build_deposition` reads the bag's ``report.json`` (what ``compress`` did to every
file), each image's record or header (:mod:`.movies`) and the acquisition sidecars
(:mod:`.acquisition`), and makes the imagesets (:mod:`.imagesets`). The fields only a
person knows (title, authors, citation, release) come from a template: ``--template
FILE``, or else the bag's existing ``empiar-deposition.json`` (so a run again keeps what
a person filled in); every field of the template but ``imagesets`` is kept as it is.
The result is checked against the EMPIAR schema (:mod:`.schema`); what remains for a
person to fill is listed, never invented.

The file is a tag file of the bag (beside ``report.json``, listed in the tag manifests):
``compress`` writes it before sealing; :func:`update_bag_deposition` rewrites it in a
finished bag and seals the bag again only after the audit passes.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DepositionError, EmpCompressError
from ..files import NotRegularFileError, open_regular, write_bytes_atomically
from ..report import DEPOSITION_JSON
from .acquisition import match_sidecars
from .imagesets import GainInfo, ImagesetGroup, ResolvedMovie, group_gains, group_movies
from .movies import BagImage, describe_image, pixel_size_for_frames
from .schema import SchemaReport, check_deposition

__all__ = [
    "DEPOSITION_JSON",
    "DepositionResult",
    "read_json_object",
    "build_deposition",
    "deposition_bytes",
    "existing_template",
    "update_bag_deposition",
    "write_for_compress",
    "write_deposition",
]

MAX_TEMPLATE_BYTES = 16 << 20
MAX_REPORT_BYTES = 1 << 30
CATEGORY_MOVIE = "movie"
CATEGORY_MICROGRAPH = "micrograph"


@dataclass(frozen=True)
class DepositionResult:
    """The deposition built for a bag, what the schema says of it, and what a person still has to do."""

    document: dict[str, Any]
    groups: tuple[ImagesetGroup, ...]
    schema: SchemaReport
    template: str  # where the person's fields came from ("" : nowhere)
    problems: tuple[str, ...] = ()  # sidecars not read, images not described, template notes
    unknown_pixel_size: tuple[str, ...] = ()  # payload paths of movies with no pixel size
    movies: tuple[ResolvedMovie, ...] = field(default=(), repr=False)
    gains: tuple[GainInfo, ...] = field(default=(), repr=False)
    written: bool = True

    @property
    def to_fill(self) -> tuple[str, ...]:
        """What a person must still fill or check before the deposition is accepted."""
        items = list(self.schema.missing) + list(self.schema.problems)
        if self.unknown_pixel_size:
            n = len(self.unknown_pixel_size)
            items.append(
                f"pixel_width/pixel_height of {n} movie{'s' if n != 1 else ''}: unknown (no pixel size "
                f"in the header nor in a sidecar), e.g. {self.unknown_pixel_size[0]}"
            )
        return tuple(items)

    def status(self) -> dict[str, Any]:
        """The deposition's entry in report.json."""
        return {
            "file": DEPOSITION_JSON,
            "valid": self.schema.valid,
            "imagesets": len(self.groups),
            "template": self.template,
            "written": self.written,
            "to_fill": list(self.to_fill),
            "problems": list(self.problems),
        }


def read_json_object(
    path: str | os.PathLike[str], *, what: str, max_bytes: int, follow_links: bool = False
) -> dict[str, Any]:
    """A JSON object from a regular file of at most ``max_bytes`` (raises DepositionError).

    ``follow_links``: a file the user named may be a link to a regular file; the bag's own files
    are opened only as they are (no link followed).
    """
    path = Path(path)
    try:
        with open_regular(os.path.realpath(path) if follow_links else path) as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise DepositionError(f"{path}: no such file ({what})") from None
    except NotRegularFileError:
        raise DepositionError(f"{path}: is not a regular file; give the {what} as a plain file") from None
    except OSError as error:
        raise DepositionError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise DepositionError(f"{path}: larger than {max_bytes} bytes; not a {what}")
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DepositionError(f"{path}: not valid JSON ({error}); fix it or give another {what}") from None
    if not isinstance(document, dict):
        raise DepositionError(f"{path}: holds a JSON {type(document).__name__}, not an object; not a {what}")
    return document


def existing_template(dest: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The bag's current ``empiar-deposition.json`` as a template, None when there is none.

    Raises DepositionError when it exists but is not a JSON object (edited by hand?): it is then
    never overwritten.
    """
    path = Path(dest) / DEPOSITION_JSON
    if not os.path.lexists(path):
        return None
    return read_json_object(
        path, what="deposition JSON (the bag's own, used as the template)", max_bytes=MAX_TEMPLATE_BYTES
    )


def _resolve(image: BagImage, acquisition: Any) -> ResolvedMovie:
    metadata = acquisition.by_source.get(image.source)
    if image.header_pixel_size_angstrom is not None:
        return ResolvedMovie(image, image.header_pixel_size_angstrom, "the MRC header", metadata)
    if metadata is not None:
        value, how = pixel_size_for_frames(metadata, width=image.width, height=image.height)
        return ResolvedMovie(image, value, how, metadata)
    return ResolvedMovie(image, None, "no pixel size in the header and no acquisition sidecar", None)


#: report.json's file records, read again on each call (a bag's files are streamed, never all held)
FileRecords = Callable[[], Iterable[dict[str, Any]]]


def _gain_infos(
    payload: Path,
    report: dict[str, Any],
    gain_files: list[dict[str, Any]],
    movies: list[ResolvedMovie],
    problems: list[str],
) -> list[GainInfo]:
    users: defaultdict[str, list[ResolvedMovie]] = defaultdict(list)
    for movie in movies:
        if movie.image.gain_reference:
            users[movie.image.gain_reference].append(movie)
    entries: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (file entry, gain_references entry)
    for gain in report.get("gain_references") or []:
        if isinstance(gain, dict) and isinstance(gain.get("output_rel_path"), str):
            output = gain["output_rel_path"]
            entry = {"output": output, "source": output, "category": "gain-reference", "outcome": "generated"}
            entries.append((entry, gain))
    listed = {entry["output"] for entry, _ in entries}
    entries += [(entry, {}) for entry in gain_files if entry["output"] not in listed]
    infos = []
    for entry, gain in entries:
        try:
            image = describe_image(payload, entry)
        except (EmpCompressError, OSError) as error:
            problems.append(f"gain reference {entry['output']}: not described ({error})")
            continue
        origin = str(gain.get("origin") or ("estimated" if gain else "depositor"))
        proven = Counter(m.image.gain_relion for m in users[image.output] if m.image.gain_relion is not None)
        reported = gain.get("relion_orientation")
        if proven:  # each movie's record: counts x (the reference so oriented) = its original values
            orientation = (
                "; ".join(
                    f"{n} movie{'s' if n != 1 else ''} RELION --gain_rot {rot} --gain_flip {flip}"
                    for (rot, flip), n in proven.most_common()
                )
                + " (proven: the movies are stored as counts with it)"
            )
        elif isinstance(reported, str) and reported:
            orientation = reported if reported.startswith("RELION") else f"RELION {reported}"
        elif origin == "estimated":
            orientation = "RELION --gain_rot 0 --gain_flip 0 (estimated in the movies' own orientation)"
        else:
            orientation = "not determined by empcompress (it is carried over unchanged; check before use)"
        infos.append(GainInfo(image, origin, orientation, len(users[image.output])))
    return infos


def build_deposition(
    dest: str | os.PathLike[str],
    *,
    report: dict[str, Any],
    template: dict[str, Any] | None,
    template_label: str = "",
    files: FileRecords | None = None,
) -> DepositionResult:
    """The deposition of the bag ``dest`` from its ``report`` (report.json's content) and a template.

    ``files`` gives report.json's file records (each call reads them again from the start); by
    default, ``report["files"]``. They are read as a stream: what is kept is the movies, the gain
    references and the sidecars of the movies, never every file of the bag.
    """
    payload = Path(dest) / "data"
    problems: list[str] = []

    def records() -> Iterable[dict[str, Any]]:
        given = files() if files is not None else report.get("files") or []
        return (entry for entry in given if isinstance(entry, dict))

    images: list[BagImage] = []
    gain_files: list[dict[str, Any]] = []  # gain references copied from the drive
    n_single = 0
    for entry in records():
        category, done = entry.get("category"), entry.get("state") == "done"
        if category == CATEGORY_MICROGRAPH and done:
            n_single += 1
        elif category == "gain-reference" and done and isinstance(entry.get("output"), str):
            gain_files.append(entry)
        if category != CATEGORY_MOVIE or not done or not isinstance(entry.get("output"), str):
            continue
        try:
            image = describe_image(payload, entry)
        except (EmpCompressError, OSError) as error:
            problems.append(f"{entry['output']}: not described in the deposition ({error})")
            continue
        if image.n_frames > 1:
            images.append(image)
        else:
            n_single += 1
    if n_single:
        problems.append(
            f"{n_single} single-frame images (micrographs, atlas or preview images) are not described: "
            f"add imagesets for those you deposit"
        )
    acquisition = match_sidecars(payload, records(), [image.source for image in images])
    problems += acquisition.problems
    movies = [_resolve(image, acquisition) for image in images]
    gains = _gain_infos(payload, report, gain_files, movies, problems)
    tool_version = str(report.get("tool_version") or __version__)
    groups = group_movies(
        movies,
        gains={g.image.output: g for g in gains},
        tool_version=tool_version,
        sessions=acquisition.sessions,
    )
    groups += group_gains(gains)
    document = dict(template) if template else {}
    old = document.get("imagesets")
    if isinstance(old, list) and old and template_label and not template_label.startswith("the bag's"):
        problems.append(
            f"the {len(old)} imagesets of {template_label} were replaced by the {len(groups)} the bag holds"
        )
    document["imagesets"] = [group.imageset for group in groups]
    unknown = tuple(path for group in groups for path in group.unknown_pixel_size)
    return DepositionResult(
        document=document,
        groups=tuple(groups),
        schema=check_deposition(document),
        template=template_label,
        problems=tuple(problems),
        unknown_pixel_size=unknown,
        movies=tuple(movies),
        gains=tuple(gains),
    )


def deposition_bytes(result: DepositionResult) -> bytes:
    """The file's content: indented UTF-8 JSON."""
    return (json.dumps(result.document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


#: In DEST's state folder while ``empcompress deposition`` has unsealed a sealed bag to rewrite
#: its deposition: a run stopped before sealing again (killed, power lost) leaves it, and the next
#: ``deposition`` run seals the bag again once its audit passes (``compress`` seals it anyway).
RESEAL_MARKER = "resealing-after-deposition"


def update_bag_deposition(dest: str | os.PathLike[str], result: DepositionResult) -> tuple[str, ...]:
    """Write ``empiar-deposition.json`` into the bag ``dest``; returns the bag's problems (none: fine).

    In a bag with tag manifests the file's lines are rewritten and a bag that was sealed is
    sealed again only once the audit passes; elsewhere the file is just written atomically.
    A bag that an earlier ``deposition`` unsealed and did not seal again (see
    :data:`RESEAL_MARKER`) counts as sealed.
    """
    from ..bag import BAGIT_TXT, audit_bag, rewrite_tag_file, seal_bag
    from ..bag.manifest import tag_manifest_name
    from ..journal import STATE_DIRNAME

    dest = Path(dest)
    data = deposition_bytes(result)
    if not (dest / tag_manifest_name("sha256")).is_file():
        write_bytes_atomically(dest / DEPOSITION_JSON, data)
        return ()
    marker = dest / STATE_DIRNAME / RESEAL_MARKER
    was_sealed = (dest / BAGIT_TXT).is_file() or marker.is_file()
    if was_sealed:  # before the bag is unsealed: a stop from here on is finished by the next run
        write_bytes_atomically(marker, b"empcompress deposition unsealed this bag to rewrite it\n")
    rewrite_tag_file(dest, DEPOSITION_JSON, data)
    problems = audit_bag(dest, sealed=False)
    if problems:
        return tuple(f"{problem.rel_path}: {problem.problem}" for problem in problems)
    if was_sealed:
        seal_bag(dest)
        marker.unlink(missing_ok=True)
    return ()


def write_for_compress(
    dest: str | os.PathLike[str], *, report: dict[str, Any], files: FileRecords | None = None
) -> DepositionResult:
    """Write ``DEST/empiar-deposition.json`` at the end of a compress run (before the bag is sealed).

    ``report`` is report.json's content; ``files`` its file records, streamed (see
    :func:`build_deposition`). The bag's existing deposition is the template (a person's title,
    authors, ... are kept); one that is not a JSON object is left as it is, never overwritten, and
    the result says so.
    """
    dest = Path(dest)
    try:
        template = existing_template(dest)
    except DepositionError as error:
        result = build_deposition(dest, report=report, template=None, files=files)
        note = f"{error}; it was left as it is (not rewritten): fix it, then run `empcompress deposition`"
        return replace(result, problems=(*result.problems, note), written=False)
    label = f"the bag's earlier {DEPOSITION_JSON}" if template is not None else ""
    result = build_deposition(dest, report=report, template=template, template_label=label, files=files)
    write_bytes_atomically(dest / DEPOSITION_JSON, deposition_bytes(result))
    return result


def write_deposition(
    dest: str | os.PathLike[str], *, template_path: str | os.PathLike[str] | None = None
) -> tuple[DepositionResult, tuple[str, ...]]:
    """``empcompress deposition DEST``: (re)write the bag's deposition; returns it and the bag's problems.

    The person's fields come from ``template_path``, else from the bag's existing deposition.
    Raises DepositionError when DEST has no report.json, is being written by a compress run,
    or the template is not a JSON object.
    """
    from ..errors import JournalLockedError
    from ..journal import ensure_not_locked
    from ..report import REPORT_JSON

    dest = Path(dest)
    if not (dest / REPORT_JSON).is_file():
        raise DepositionError(
            f"{dest}: has no {REPORT_JSON}; give the folder `empcompress compress` wrote (its DEST)"
        )
    try:
        ensure_not_locked(dest)
    except JournalLockedError as error:
        raise DepositionError(str(error)) from None
    report = read_json_object(dest / REPORT_JSON, what="compress report", max_bytes=MAX_REPORT_BYTES)
    template: dict[str, Any] | None
    if template_path is not None:
        template = read_json_object(
            template_path, what="deposition JSON template", max_bytes=MAX_TEMPLATE_BYTES, follow_links=True
        )
        label = str(template_path)
    else:
        template = existing_template(dest)
        label = f"the bag's earlier {DEPOSITION_JSON}" if template is not None else ""
    result = build_deposition(dest, report=report, template=template, template_label=label)
    return result, update_bag_deposition(dest, result)
