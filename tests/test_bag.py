"""The bag API (write, audit, seal, verify): bagit-made bags, hostile bags, our TIFFs' gain references."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import bagit
import numpy as np
import pytest
from drives import gain_normalised_movie, write_mrc
from hypothesis import given, settings
from hypothesis import strategies as st

from empcompress.bag import (
    BAGIT_TEXT,
    BagProblem,
    PayloadFile,
    audit_bag,
    read_manifest,
    seal_bag,
    verify_bag,
    write_bag,
)
from empcompress.bag.manifest import encode_manifest_path, parse_manifest
from empcompress.convert import convert_movie
from empcompress.errors import PipelineError

T = TypeVar("T")

FILES = {
    "notes.txt": b"notes\n" * 10,
    "Session 1/movie é 1.tif": b"not really a tiff",
    "deep/a/b/c.star": b"data_\n",
    "empty file": b"",
}


# ---------------------------------------------------------------- helpers


def payload_of(root: Path) -> list[PayloadFile]:
    """Every regular file under root/data, hashed (what the pipeline's journal would say)."""
    found = []
    for directory, _, names in os.walk(root / "data"):
        for name in names:
            path = Path(directory) / name
            content = path.read_bytes()
            found.append(
                PayloadFile(
                    path.relative_to(root / "data").as_posix(),
                    len(content),
                    hashlib.sha256(content).hexdigest(),
                    hashlib.md5(content).hexdigest(),
                )
            )
    return sorted(found, key=lambda entry: entry.rel_path)


def make_our_bag(root: Path, files: dict[str, bytes] = FILES) -> list[PayloadFile]:
    for name, content in files.items():
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "report.json").write_text('{"ok": true}\n', encoding="utf-8")
    payload = payload_of(root)
    write_bag(
        root, payload=payload, bag_info=[("Empcompress-Source", "/media/drive")], tag_files=["report.json"]
    )
    assert audit_bag(root, expected=payload, sealed=False) == ()
    seal_bag(root)
    return payload


def retag(root: Path, algorithms: tuple[str, ...] = ("sha256", "md5")) -> None:
    """Rewrite the tag manifests so that they match the tag files now in the bag (a consistent edit)."""
    for algorithm in algorithms:
        path = root / f"tagmanifest-{algorithm}.txt"
        names = [
            line.split(None, 1)[1].rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()
        ]
        path.write_text(
            "".join(f"{hashlib.new(algorithm, (root / n).read_bytes()).hexdigest()}  {n}\n" for n in names),
            encoding="utf-8",
        )


def problems_text(problems: tuple[BagProblem, ...]) -> str:
    return "\n".join(f"{problem.rel_path}: {problem.problem}" for problem in problems)


def has(problems: tuple[BagProblem, ...], rel_path: str, words: str) -> bool:
    return any(problem.rel_path == rel_path and words in problem.problem for problem in problems)


_OPENED: list[str] = []
_RECORDING = threading.Event()


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _RECORDING.is_set() and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit_hook)


def run_guarded(
    call: Callable[[], T], *, inside: Path, fifos: tuple[Path, ...] = (), timeout_s: float = 30.0
) -> T:
    """Run ``call`` in a thread; fail if it hangs (then free it from the FIFOs) or opens a file outside."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    _OPENED.clear()
    _RECORDING.set()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    _RECORDING.clear()
    if thread.is_alive():
        for fifo in fifos:  # a reader blocked on the FIFO gets end of file
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(descriptor)
        thread.join(5)
        pytest.fail(f"hung for {timeout_s} s (a FIFO or device was opened)")
    if "error" in outcome:
        raise outcome["error"]
    top = os.path.realpath(inside)
    watched = (str(inside.parent), "/etc", "/dev")
    outside = [
        path
        for path in _OPENED
        if (resolved := os.path.realpath(path)).startswith(watched)
        and not (resolved == top or resolved.startswith(top + os.sep))
    ]
    assert not outside, f"opened outside the bag: {outside}"
    return outcome["value"]  # type: ignore[no-any-return]


@pytest.fixture
def bag(tmp_path: Path) -> Path:
    root = tmp_path / "bag"
    make_our_bag(root)
    return root


# ---------------------------------------------------------------- writing and sealing


def test_write_bag_leaves_the_bag_unsealed_until_seal_bag(tmp_path: Path) -> None:
    root = tmp_path / "bag"
    payload = make_our_bag(root)
    assert (root / "bagit.txt").read_text(encoding="utf-8") == BAGIT_TEXT
    bagit.Bag(str(root)).validate()
    result = verify_bag(root)
    assert result.ok, problems_text(result.problems)
    assert result.ours and result.algorithms == ("md5", "sha256")
    # rewriting removes bagit.txt first; the tag manifests already cover its fixed text
    write_bag(root, payload=payload, bag_info=[], tag_files=["report.json"])
    assert not (root / "bagit.txt").exists()
    assert audit_bag(root, expected=payload, sealed=False) == ()
    assert has(audit_bag(root), "bagit.txt", "never sealed")
    with pytest.raises(PipelineError, match="not a finished bag"):
        verify_bag(root)
    seal_bag(root)
    assert verify_bag(root).ok


def test_audit_compares_the_bag_with_what_was_written(bag: Path) -> None:
    payload = payload_of(bag)
    assert audit_bag(bag, expected=payload) == ()
    first, *rest = payload
    wrong_size = [PayloadFile(first.rel_path, first.size_bytes + 1, first.sha256, first.md5), *rest]
    problems = audit_bag(bag, expected=wrong_size)
    assert has(problems, f"data/{first.rel_path}", "were written")
    assert any("Payload-Oxum" in problem.problem for problem in problems)
    wrong_digest = [PayloadFile(first.rel_path, first.size_bytes, "0" * 64, first.md5), *rest]
    assert has(audit_bag(bag, expected=wrong_digest), f"data/{first.rel_path}", "sha256 it was written with")
    extra = [*payload, PayloadFile("never.txt", 0, "0" * 64, "0" * 32)]
    assert has(audit_bag(bag, expected=extra), "data/never.txt", "not in the manifests")
    assert has(audit_bag(bag, expected=rest), f"data/{first.rel_path}", "not one of the files written")


def test_names_with_percent_and_line_breaks_are_encoded_as_rfc_8493_says(tmp_path: Path) -> None:
    root = tmp_path / "bag"
    names = {"100%.txt": b"a", "a%0Ab.txt": b"b", "odd\nname\r.txt": b"c", "plain.txt": b"d"}
    make_our_bag(root, names)
    text = (root / "manifest-sha256.txt").read_text(encoding="utf-8")
    assert "data/100%25.txt" in text and "data/a%250Ab.txt" in text and "data/odd%0Aname%0D.txt" in text
    assert set(read_manifest(root / "manifest-sha256.txt")) == {f"data/{name}" for name in names}
    result = verify_bag(root)
    assert result.ok, problems_text(result.problems)


def test_write_bag_refuses_names_it_must_not_write(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for name in ("../x", "/etc/x", "a//b", "a/./b"):
        with pytest.raises(PipelineError, match="not written"):
            write_bag(tmp_path, payload=[PayloadFile(name, 0, "0" * 64, "0" * 32)], bag_info=[])
    twice = [PayloadFile("x", 0, "0" * 64, "0" * 32)] * 2
    with pytest.raises(PipelineError, match="twice"):
        write_bag(tmp_path, payload=twice, bag_info=[])


# ---------------------------------------------------------------- bags made by the bagit package


@pytest.fixture
def foreign_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "foreign"
    for name, content in {
        "a.txt": b"alpha",
        "sub dir/b é.bin": bytes(range(256)),
        "100%.txt": b"percent",
        "50%25 off.txt": b"looks encoded",
        "x.tif": b"II*\x00 not a real tiff",
    }.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


@pytest.mark.parametrize("checksums", [["sha256", "sha512"], ["sha512", "sha1"], ["md5"]])
def test_bags_made_by_bagit_verify(foreign_folder: Path, checksums: list[str]) -> None:
    bagit.make_bag(str(foreign_folder), checksums=checksums)
    bagit.Bag(str(foreign_folder)).validate()
    result = verify_bag(foreign_folder, full=True)
    assert result.ok, problems_text(result.problems)
    assert not result.ours and result.algorithms == tuple(sorted(checksums))
    assert result.n_payload_files == 5 and result.n_tiffs_decoded == 0
    # tag manifests are optional in a foreign bag, as bagit says
    for path in foreign_folder.glob("tagmanifest-*.txt"):
        path.unlink()
    bagit.Bag(str(foreign_folder)).validate()
    assert verify_bag(foreign_folder).ok
    (foreign_folder / "data" / "a.txt").write_bytes(b"alphA")
    assert not bagit.Bag(str(foreign_folder)).is_valid()
    assert has(verify_bag(foreign_folder).problems, "data/a.txt", f"{sorted(checksums)[0]} is")


def test_our_bag_validates_with_bagit_and_a_damaged_one_fails_both(bag: Path) -> None:
    bagit.Bag(str(bag)).validate()
    (bag / "data" / "notes.txt").write_bytes(b"changed")
    assert not bagit.Bag(str(bag)).is_valid()
    problems = verify_bag(bag).problems
    assert has(problems, "data/notes.txt", "sha256 is") and has(problems, "data/notes.txt", "md5 is")


# ---------------------------------------------------------------- completeness


@pytest.mark.parametrize("removed", [("sha256", "md5"), ("md5",)])
def test_our_bag_without_its_tag_manifests_fails(bag: Path, removed: tuple[str, ...]) -> None:
    for algorithm in removed:
        (bag / f"tagmanifest-{algorithm}.txt").unlink()
    bagit.Bag(str(bag)).validate()  # bagit does not mind
    for problems in (audit_bag(bag), verify_bag(bag).problems):
        for algorithm in removed:
            assert has(problems, f"tagmanifest-{algorithm}.txt", "missing"), problems_text(problems)


def test_a_tag_file_left_out_of_a_tag_manifest_fails_our_bag(bag: Path) -> None:
    path = bag / "tagmanifest-sha256.txt"
    path.write_text(
        "".join(
            line for line in path.read_text(encoding="utf-8").splitlines(True) if "report.json" not in line
        ),
        encoding="utf-8",
    )
    assert has(audit_bag(bag), "report.json", "not in tagmanifest-sha256.txt")


@pytest.mark.parametrize("conflicting", [False, True])
def test_a_path_listed_twice_in_a_manifest_is_a_problem(bag: Path, conflicting: bool) -> None:
    manifest = bag / "manifest-sha256.txt"
    line = next(line for line in manifest.read_text(encoding="utf-8").splitlines() if "notes.txt" in line)
    digest = "0" * 64 if conflicting else line.split()[0]
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write(f"{digest}  data/./notes.txt\n")
    retag(bag)
    for problems in (audit_bag(bag), verify_bag(bag).problems):
        assert has(problems, "data/notes.txt", "listed twice in manifest-sha256.txt"), problems_text(problems)


def test_a_tag_file_listed_twice_in_a_tag_manifest_is_a_problem(bag: Path) -> None:
    manifest = bag / "tagmanifest-sha256.txt"
    line = next(line for line in manifest.read_text(encoding="utf-8").splitlines() if "bag-info.txt" in line)
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    for problems in (audit_bag(bag), verify_bag(bag).problems):
        listed_twice = "listed twice in tagmanifest-sha256.txt"
        assert has(problems, "bag-info.txt", listed_twice), problems_text(problems)


def test_a_file_in_data_not_in_the_manifests_is_a_problem(bag: Path) -> None:
    (bag / "data" / "deep" / "stray.txt").write_text("stray", encoding="utf-8")
    for problems in (audit_bag(bag), verify_bag(bag).problems):
        assert has(problems, "data/deep/stray.txt", "not in the manifests")
        assert has(problems, "bag-info.txt", "Payload-Oxum")


def test_a_file_in_one_manifest_only_is_a_problem(bag: Path) -> None:
    manifest = bag / "manifest-md5.txt"
    kept = [line for line in manifest.read_text(encoding="utf-8").splitlines(True) if "notes.txt" not in line]
    manifest.write_text("".join(kept), encoding="utf-8")
    retag(bag)
    assert has(audit_bag(bag), "data/notes.txt", "not in manifest-md5.txt")


# ---------------------------------------------------------------- hostile bags


@pytest.fixture
def trap(tmp_path: Path) -> Iterator[Path]:
    """A FIFO outside the bag: opening it for reading blocks forever."""
    fifo = tmp_path / "trap.fifo"
    os.mkfifo(fifo)
    yield fifo


def _add_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(f"{line}\n" for line in lines)


def test_tag_manifest_paths_outside_the_bag_are_never_opened(bag: Path, trap: Path) -> None:
    secret = bag.parent / "secret.txt"
    secret.write_bytes(b"secret outside the bag\n")
    secret_sha256 = hashlib.sha256(secret.read_bytes()).hexdigest()
    hostname_sha256 = hashlib.sha256(Path("/etc/hostname").read_bytes()).hexdigest()
    os.symlink(bag.parent, bag / "up")
    _add_lines(
        bag / "tagmanifest-sha256.txt",
        [
            f"{'1' * 64}  /etc/hostname",
            f"{'2' * 64}  ../secret.txt",
            f"{'3' * 64}  {trap}",
            f"{'4' * 64}  /dev/zero",
            f"{'5' * 64}  data/../../trap.fifo",
            f"{'6' * 64}  up/secret.txt",
            f"{'7' * 64}  up/trap.fifo",
        ],
    )
    result = run_guarded(lambda: verify_bag(bag, full=True), inside=bag, fifos=(trap,))
    text = problems_text(result.problems)
    assert "is an absolute path; never opened" in text and "contains '..'; never opened" in text
    assert has(result.problems, "up/secret.txt", "passes through the symbolic link up")
    assert has(result.problems, "up/trap.fifo", "passes through the symbolic link up")
    assert secret_sha256 not in text and hostname_sha256 not in text
    assert audit_bag(bag) == result.problems


def test_payload_paths_outside_the_bag_and_special_files_are_never_opened(bag: Path, trap: Path) -> None:
    data = bag / "data"
    os.symlink(trap, data / "link-to-fifo")
    os.symlink(trap.parent, data / "link-to-folder")
    os.symlink("/dev/zero", data / "zero")
    os.symlink("/etc/hostname", data / "hostname")
    os.mkfifo(data / "pipe")
    manifest = bag / "manifest-sha256.txt"
    _add_lines(
        manifest,
        [
            f"{'1' * 64}  data/link-to-fifo",
            f"{'2' * 64}  data/link-to-folder/trap.fifo",
            f"{'3' * 64}  data/zero",
            f"{'4' * 64}  data/hostname",
            f"{'5' * 64}  data/pipe",
            f"{'6' * 64}  data/../../trap.fifo",
            f"{'7' * 64}  {trap}",
            f"{'8' * 64}  /dev/zero",
            f"{'9' * 64}  trap.fifo",
        ],
    )
    retag(bag)
    result = run_guarded(
        lambda: verify_bag(bag, full=True, threads=2), inside=bag, fifos=(trap, data / "pipe")
    )
    problems = result.problems
    text = problems_text(problems)
    for name in ("data/link-to-fifo", "data/link-to-folder", "data/zero", "data/hostname"):
        assert has(problems, name, "is a symbolic link (not followed)"), text
    assert has(problems, "data/pipe", "is a FIFO")
    assert has(
        problems, "data/link-to-folder/trap.fifo", "passes through the symbolic link data/link-to-folder"
    )
    assert has(problems, "manifest-sha256.txt", "is an absolute path; never opened")
    assert has(problems, "manifest-sha256.txt", "contains '..'; never opened")
    assert has(problems, "manifest-sha256.txt", "'trap.fifo' is not in data/")
    assert hashlib.sha256(Path("/etc/hostname").read_bytes()).hexdigest() not in text


def test_special_top_level_files_are_never_opened(bag: Path, trap: Path) -> None:
    (bag / "bag-info.txt").unlink()
    os.mkfifo(bag / "bag-info.txt")
    (bag / "manifest-md5.txt").unlink()
    os.symlink("/etc/hostname", bag / "manifest-md5.txt")
    (bag / "tagmanifest-md5.txt").unlink()
    os.symlink(trap, bag / "tagmanifest-md5.txt")
    result = run_guarded(lambda: verify_bag(bag), inside=bag, fifos=(trap, bag / "bag-info.txt"))
    assert has(result.problems, "bag-info.txt", "is a FIFO, not a regular file; not read")
    assert has(result.problems, "manifest-md5.txt", "is a symbolic link (not followed); not read")
    assert has(result.problems, "tagmanifest-md5.txt", "is a symbolic link (not followed); not read")


def test_a_symlinked_payload_folder_is_not_walked(bag: Path) -> None:
    shutil.move(bag / "data", bag.parent / "elsewhere")
    os.symlink(bag.parent / "elsewhere", bag / "data")
    result = run_guarded(lambda: verify_bag(bag), inside=bag)
    assert has(result.problems, "data/", "is a symbolic link")
    assert has(result.problems, "data/notes.txt", "passes through the symbolic link data")


@pytest.mark.parametrize("manifest", ["manifest-md5.txt", "tagmanifest-sha256.txt"])
def test_unreadable_manifest_lines_are_problems_naming_the_line(bag: Path, manifest: str) -> None:
    with open(bag / manifest, "ab") as handle:
        handle.write(b"0123456789abcdef0123456789abcdef  data/caf\xe9.txt\n")  # Latin-1, not UTF-8
        handle.write(b"not-a-checksum  data/notes.txt\n")
        handle.write(b"0123\n")
        handle.write(b"\n# a comment\n")
    n_lines = len((bag / manifest).read_bytes().splitlines())
    for problems in (audit_bag(bag), verify_bag(bag).problems):
        assert has(problems, manifest, f"line {n_lines - 4} is not valid utf-8"), problems_text(problems)
        assert has(problems, manifest, f"line {n_lines - 3}: the ")
        assert has(problems, manifest, f"line {n_lines - 2} is not '<checksum>  <path>'")
    with pytest.raises(PipelineError, match="line"):
        read_manifest(bag / manifest)


def test_parse_manifest_reads_what_others_write() -> None:
    digest = "ab" * 32
    data = (
        "\ufeff"
        + f"{digest} data/one\r\n"
        + f"{digest.upper()}\t*data/two%0D%0Aend\r\n"
        + f"  {digest}  data/trailing space \n"
    ).encode()
    parsed = parse_manifest(data, name="manifest-sha256.txt", algorithm="sha256")
    assert parsed.problems == ()
    assert [line.path for line in parsed.lines] == ["data/one", "data/two\r\nend", "data/trailing space "]
    assert {line.digest for line in parsed.lines} == {digest}
    assert encode_manifest_path("data/two\r\nend") == "data/two%0D%0Aend"


# ---------------------------------------------------------------- our TIFFs' gain references


@pytest.fixture(scope="module")
def gain_bag_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sealed bag with a gain-normalised movie stored as counts + data/set/gain-reference.mrc."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("gain") / "bag"
    gain = rng.uniform(0.6, 1.6, size=(32, 48)).astype(np.float32)
    source = write_mrc(root.parent / "movie.mrc", gain_normalised_movie(rng, gain, 6))
    (root / "data" / "set").mkdir(parents=True)
    result = convert_movie(source, root / "data" / "set" / "movie.tif", gain="auto")
    assert result.gain is not None and result.gain.action == "applied"
    assert (root / "data" / "set" / "gain-reference.mrc").is_file()
    (root / "data" / "notes.txt").write_text("hello", encoding="utf-8")
    write_bag(root, payload=payload_of(root), bag_info=[])
    seal_bag(root)
    return root


@pytest.fixture
def gain_bag(gain_bag_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bag"
    shutil.copytree(gain_bag_template, root, symlinks=True)
    return root


def test_a_bag_with_its_gain_reference_passes(gain_bag: Path) -> None:
    assert audit_bag(gain_bag) == ()
    result = verify_bag(gain_bag, full=True)
    assert result.ok, problems_text(result.problems)
    assert result.n_tiffs_decoded == 1


@pytest.mark.parametrize("damage", ["removed", "replaced", "symlink", "unlisted"])
def test_a_tiff_whose_gain_reference_is_gone_fails_even_with_consistent_manifests(
    gain_bag: Path, damage: str
) -> None:
    reference = gain_bag / "data" / "set" / "gain-reference.mrc"
    payload = payload_of(gain_bag)
    if damage == "removed":
        reference.unlink()
        payload = payload_of(gain_bag)
    elif damage == "replaced":
        reference.write_bytes(reference.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
        payload = payload_of(gain_bag)
    elif damage == "symlink":
        outside = gain_bag.parent / "gain-copy.mrc"
        shutil.move(reference, outside)
        os.symlink(outside, reference)  # listed with the right checksums, but a link out of the bag
    elif damage == "unlisted":
        payload = [entry for entry in payload if not entry.rel_path.endswith("gain-reference.mrc")]
    write_bag(gain_bag, payload=payload, bag_info=[])
    seal_bag(gain_bag)
    expected_words = {
        "removed": "which is not in manifest-sha256.txt",
        "replaced": "but manifest-sha256.txt lists it with sha256",
        "symlink": "which is a symbolic link (not followed)",
        "unlisted": "which is not in manifest-sha256.txt",
    }[damage]
    for problems in (audit_bag(gain_bag), verify_bag(gain_bag).problems):
        assert has(problems, "data/set/movie.tif", expected_words), problems_text(problems)
        assert has(problems, "data/set/movie.tif", "needs its gain reference data/set/gain-reference.mrc")
    assert verify_bag(gain_bag, full=True).n_tiffs_decoded == 0  # never decoded with a doubtful gain


def test_gain_references_are_resolved_inside_the_payload_only() -> None:
    from empcompress.bag.audit import _gain_target

    digest = "ab" * 32
    tiff = "data/set/movie.tif"
    assert _gain_target(tiff, {"reference": "gain-reference.mrc", "reference_sha256": digest}) == (
        "data/set/gain-reference.mrc",
        digest,
        "",
    )
    assert _gain_target(tiff, {"reference": "../g.mrc", "reference_sha256": digest})[0] == "data/g.mrc"
    for reference in ("../../g.mrc", "/etc/hostname", "../../data/../../x", "..", "a\x00b"):
        target, _, problem = _gain_target(tiff, {"reference": reference, "reference_sha256": digest})
        assert not target and "outside data/" in problem, reference
    assert "no valid sha256" in _gain_target(tiff, {"reference": "g.mrc", "reference_sha256": "x"})[2]
    assert "names no gain reference" in _gain_target(tiff, {"reference_sha256": digest})[2]
    assert "not an object" in _gain_target(tiff, ["g.mrc"])[2]


@pytest.mark.parametrize("encoding", ["rot13", "utf-16", "no-such-encoding"])
def test_a_bagit_txt_naming_an_unusable_encoding_is_a_problem(bag: Path, encoding: str) -> None:
    (bag / "bagit.txt").write_text(f"BagIt-Version: 1.0\nTag-File-Character-Encoding: {encoding}\n")
    problems = verify_bag(bag).problems
    assert has(problems, "bagit.txt", "is not supported; read as UTF-8")
    assert has(problems, "bagit.txt", "sha256 is")  # and the tag manifests know it is not ours


@settings(max_examples=40)
@given(garbage=st.binary(max_size=400), which=st.sampled_from(["manifest-sha256.txt", "tagmanifest-md5.txt"]))
def test_garbage_in_a_manifest_is_reported_never_raised(tmp_path: Path, garbage: bytes, which: str) -> None:
    root = tmp_path / "bag"
    if not root.exists():
        make_our_bag(root)
    original = (root / which).read_bytes()
    try:
        (root / which).write_bytes(garbage)
        assert not verify_bag(root).ok
    finally:
        (root / which).write_bytes(original)


def test_payload_bytes_on_disk_follows_no_link(bag: Path, trap: Path) -> None:
    from empcompress.bag import payload_bytes_on_disk

    os.symlink("/dev/zero", bag / "data" / "zero")
    os.symlink(bag.parent / "missing", bag / "data" / "dangling")
    os.symlink(trap, bag / "data" / "fifo")
    assert payload_bytes_on_disk(bag) == sum(len(content) for content in FILES.values())
