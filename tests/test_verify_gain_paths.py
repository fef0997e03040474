"""Reading only what we own: a TIFF's recorded gain reference is read only inside ``root``, never a FIFO."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mrc_factory import write_mrc
from test_record import record_document, rewrite_with_description

from empcompress.convert import convert_movie
from empcompress.errors import EmpCompressError, GainError, InputError, RecordError
from empcompress.gain import GainRecord, resolve_reference
from empcompress.info import describe_file
from empcompress.record import canonical_record_text
from empcompress.restore import restore_movie
from empcompress.verify import verify_tiff

SHAPE = (24, 32)
NO_HANG_SECONDS = 20.0

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def finishes(call: Callable[[], Any]) -> BaseException | None:
    """Run ``call`` on a daemon thread; fail the test if it blocks (e.g. on a FIFO)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # handed back to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(NO_HANG_SECONDS)
    assert not thread.is_alive(), "blocked: a FIFO or device was opened"
    return outcome[0]


@pytest.fixture(scope="module")
def gain_tiff(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(source movie, our gain-normalised TIFF, its gain-reference.mrc) in one folder."""
    directory = tmp_path_factory.mktemp("gainpaths")
    rng = np.random.default_rng(11)
    gain = rng.uniform(0.6, 1.6, size=SHAPE).astype(np.float32)
    values = (rng.poisson(1.0, size=(4, *SHAPE)).astype(np.float32) * gain).astype(np.float32)
    source = write_mrc(directory / "movie.mrc", values, mode=2, pixel_size_angstrom=0.9)
    tiff = directory / "movie.tif"
    result = convert_movie(source, tiff, gain="auto")
    assert result.gain is not None and result.gain.action == "applied"
    return source, tiff, directory / "gain-reference.mrc"


def place(gain_tiff: tuple[Path, Path, Path], tiff: Path, *, reference: str | None = None) -> Path:
    """Copy our TIFF to ``tiff``, with its record's gain reference changed to ``reference``."""
    tiff.parent.mkdir(parents=True, exist_ok=True)
    if reference is None:
        shutil.copyfile(gain_tiff[1], tiff)
        return tiff
    document = record_document(gain_tiff[1])
    document["storage"]["gain"]["reference"] = reference
    return rewrite_with_description(gain_tiff[1], tiff, canonical_record_text(document))


def test_reference_beside_the_tiff_is_read(gain_tiff: tuple[Path, Path, Path], tmp_path: Path) -> None:
    source, _, reference = gain_tiff
    tiff = place(gain_tiff, tmp_path / "data" / "m.tif")
    shutil.copyfile(reference, tmp_path / "data" / "gain-reference.mrc")
    verify_tiff(tiff, against=source)
    restore_movie(tiff, tmp_path / "back.mrc")
    assert (tmp_path / "back.mrc").read_bytes() == source.read_bytes()


def test_reference_in_an_ancestor_needs_root(gain_tiff: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Our pipeline may put one gain at the top of a set: readable with root=the bag's data/."""
    source, _, reference = gain_tiff
    data = tmp_path / "bag" / "data"
    tiff = place(gain_tiff, data / "session" / "grid" / "m.tif", reference="../../gain-reference.mrc")
    shutil.copyfile(reference, data / "gain-reference.mrc")
    with pytest.raises(GainError, match="outside") as raised:
        verify_tiff(tiff)
    assert str(tiff) in str(raised.value) and "--gain" in str(raised.value)
    verify_tiff(tiff, root=data)
    restore_movie(tiff, tmp_path / "back.mrc", root=data)
    assert (tmp_path / "back.mrc").read_bytes() == source.read_bytes()
    with pytest.raises(GainError, match="outside"):
        verify_tiff(tiff, root=data / "session")
    verify_tiff(tiff, gain_path=data / "gain-reference.mrc")  # the user's explicit choice


@pytest.mark.parametrize("escape", ["../../../../../../../../etc/passwd", "../outside/gain-reference.mrc"])
def test_references_leaving_the_root_are_never_opened(
    gain_tiff: tuple[Path, Path, Path], tmp_path: Path, escape: str
) -> None:
    """A FIFO waits where the crafted reference leads: opening it would block forever."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "gain-reference.mrc")
    tiff = place(gain_tiff, tmp_path / "data" / "m.tif", reference=escape)
    for call in (
        lambda: verify_tiff(tiff),
        lambda: restore_movie(tiff, tmp_path / "back.mrc"),
        lambda: verify_tiff(tiff, root=tmp_path / "data"),
    ):
        error = finishes(call)
        assert isinstance(error, GainError) and "outside" in str(error) and str(tiff) in str(error)
    assert not (tmp_path / "back.mrc").exists()
    assert finishes(lambda: describe_file(tiff)) is None  # info needs no gain


def test_a_fifo_beside_the_tiff_is_never_opened(gain_tiff: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tiff = place(gain_tiff, tmp_path / "m.tif")
    os.mkfifo(tmp_path / "gain-reference.mrc")
    error = finishes(lambda: verify_tiff(tiff))
    assert isinstance(error, GainError) and "pass it with --gain" in str(error)
    error = finishes(lambda: verify_tiff(tiff, gain_path=tmp_path / "gain-reference.mrc"))
    assert isinstance(error, GainError) and "not a regular file" in str(error)


def test_fifos_named_as_inputs_do_not_block(gain_tiff: tuple[Path, Path, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "trap.tif"
    os.mkfifo(fifo)
    for call in (
        lambda: verify_tiff(fifo),
        lambda: restore_movie(fifo, tmp_path / "x.mrc"),
        lambda: describe_file(fifo),
        lambda: verify_tiff(gain_tiff[1], against=fifo, gain_path=gain_tiff[2]),
    ):
        error = finishes(call)
        assert isinstance(error, InputError) and str(fifo) in str(error), error


def test_symbolic_links_out_of_the_root_are_refused(
    gain_tiff: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, _, reference = gain_tiff
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(reference, outside / "real-gain.mrc")
    data = tmp_path / "data"
    tiff = place(gain_tiff, data / "m.tif")
    (data / "gain-reference.mrc").symlink_to(outside / "real-gain.mrc")
    with pytest.raises(GainError, match="outside"):
        verify_tiff(tiff)
    # a folder link that leaves the tree is refused too
    (data / "gain-reference.mrc").unlink()
    (data / "sub").symlink_to(outside, target_is_directory=True)
    linked = place(gain_tiff, data / "n.tif", reference="sub/real-gain.mrc")
    with pytest.raises(GainError, match="outside"):
        verify_tiff(linked)
    # a link that stays inside the tree is fine
    shutil.copyfile(reference, data / "kept.mrc")
    (data / "gain-reference.mrc").symlink_to(data / "kept.mrc")
    verify_tiff(tiff)


def test_absolute_reference_is_a_record_error(gain_tiff: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tiff = place(gain_tiff, tmp_path / "m.tif", reference=str(gain_tiff[2]))
    with pytest.raises(RecordError, match=re.escape("storage.gain.reference")):
        verify_tiff(tiff)


def test_wrong_gain_file_kind_is_a_clean_error(gain_tiff: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A directory, a non-MRC file or a gain of the wrong shape under the recorded name."""
    tiff = place(gain_tiff, tmp_path / "m.tif")
    (tmp_path / "gain-reference.mrc").mkdir()
    error = finishes(lambda: verify_tiff(tiff))
    assert isinstance(error, GainError)
    (tmp_path / "gain-reference.mrc").rmdir()
    (tmp_path / "gain-reference.mrc").write_bytes(b"\0" * 100)
    with pytest.raises(GainError, match="not a usable gain reference"):
        verify_tiff(tiff)
    write_mrc(tmp_path / "gain-reference.mrc", np.ones((1, 8, 8), np.float32), mode=2)
    with pytest.raises(GainError, match=re.escape("(8, 8)")):
        verify_tiff(tiff)


def test_resolve_reference_rule(tmp_path: Path) -> None:
    record = GainRecord("gain-normalised", "../g.mrc", "0" * 64)
    (tmp_path / "a").mkdir()
    (tmp_path / "g.mrc").write_bytes(b"x")
    with pytest.raises(GainError, match="outside"):
        resolve_reference(record, tmp_path / "a" / "m.tif", None)
    assert (
        resolve_reference(record, tmp_path / "a" / "m.tif", None, root=tmp_path)
        == (tmp_path / "g.mrc").resolve()
    )
    with pytest.raises(EmpCompressError):
        GainRecord.from_dict(
            {"version": 1, "kind": "carried-over", "reference": "/g", "reference_sha256": "0" * 64}, name="t"
        )
