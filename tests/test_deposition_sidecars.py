"""Acquisition sidecars: real EPU and SerialEM files (tests/data/real-metadata, see its PROVENANCE.md),
hostile ones, and which pixel size a sidecar gives a movie's frames."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from empcompress.deposition.movies import header_pixel_size, pixel_size_for_frames
from empcompress.deposition.sidecars import MAX_SIDECAR_BYTES, AcquisitionMetadata, read_sidecar_bytes
from empcompress.deposition.sidecars.epu import (
    epu_sidecar_name,
    is_epu_movie_name,
    parse_epu_movie_xml,
    parse_epu_session,
    parse_xml,
)
from empcompress.deposition.sidecars.serialem import parse_mdoc
from empcompress.errors import EmpCompressError, SidecarError

REAL = Path(__file__).parent / "data" / "real-metadata"
EPU = REAL / "epu-2025-k3"
EPU_MOVIE_XML = EPU / "GridSquare_8999138" / "Data" / "FoilHole_9015883_Data_9017354_6_20250108_154918.xml"
SERIALEM = REAL / "serialem"


def test_epu_movie_xml_from_a_real_k3_session() -> None:
    metadata = parse_epu_movie_xml(EPU_MOVIE_XML.read_bytes(), name=EPU_MOVIE_XML.name)
    assert metadata.software == "EPU"
    assert metadata.pixel_size_angstrom == pytest.approx(1.0558814239614023)  # 1.0559e-10 m
    assert (metadata.image_width, metadata.image_height) == (2880, 2046)
    assert metadata.dose_e_per_angstrom2 == pytest.approx(14.557753315079335)  # 1.4558e21 e-/m^2
    assert metadata.n_fractions == 50
    assert metadata.detector == "BioQuantum K3"
    assert metadata.super_resolution_factor == 2
    assert metadata.binning == 2
    assert metadata.voltage_kv == 300
    assert metadata.exposure_time_seconds == pytest.approx(0.89)
    assert metadata.software_version == "3.9.1.8206"


def test_epu_dose_on_camera_agrees_with_dose_and_pixel_size() -> None:
    """DoseOnCamera (e-/pixel) = Dose (e-/A^2) x pixel area: the units are read right."""
    metadata = parse_epu_movie_xml(EPU_MOVIE_XML.read_bytes(), name="x.xml")
    assert metadata.dose_e_per_angstrom2 is not None and metadata.pixel_size_angstrom is not None
    assert metadata.dose_e_per_angstrom2 * metadata.pixel_size_angstrom**2 == pytest.approx(16.2302, rel=1e-4)


def test_epu_session() -> None:
    session = parse_epu_session((EPU / "EpuSession.dm").read_bytes(), name="EpuSession.dm")
    assert session.name == "Supervisor_20250108_101446_62_cm40593-1_EPU"
    assert session.image_file_format == "Mrc"
    assert session.dose_fractions_output_format == "Tiff Lzw Non-Gain normalized"
    assert session.start_time is not None and session.start_time.startswith("2025-01-08")


def test_epu_movie_names() -> None:
    name = "FoilHole_9015883_Data_9017354_6_20250108_154918"
    assert epu_sidecar_name(f"{name}_Fractions.mrc") == f"{name}.xml"
    assert epu_sidecar_name(f"{name}_fractions.tiff") == f"{name}.xml"
    assert epu_sidecar_name(f"{name}_EER.eer") == f"{name}.xml"
    assert epu_sidecar_name(f"{name}.mrc") == f"{name}.xml"
    assert epu_sidecar_name("movie_001.mrc") is None
    assert not is_epu_movie_name("FoilHole_9015889_20250108_154725.xml")  # a foil hole picture


def test_serialem_frame_set() -> None:
    mdoc = parse_mdoc((SERIALEM / "frame_set_single.mdoc").read_bytes(), name="frame_set_single.mdoc")
    (movie,) = mdoc.movies
    assert movie.software == "SerialEM"
    assert movie.frames_name == "s_mmm_00993_33.0_Oct08_07.39.05.tif"  # from a Windows SubFramePath
    assert movie.pixel_size_angstrom == pytest.approx(1.2827)
    assert (movie.image_width, movie.image_height) == (None, None)  # a frame set: the frames' own
    assert movie.dose_e_per_angstrom2 == pytest.approx(7.65892)
    assert movie.n_fractions == 12
    assert movie.gain_reference_name == "SuperRef_s_mmm_00000_-15.0_Oct08_01.59.24.dm4"
    assert movie.counts_per_electron == 1
    assert movie.divided_by_2 is False
    assert movie.binning == 0.5
    assert movie.voltage_kv == 300


def test_serialem_frame_set_with_z_values() -> None:
    mdoc = parse_mdoc((SERIALEM / "frame_set_multiple.mdoc").read_bytes(), name="frame_set_multiple.mdoc")
    (movie,) = mdoc.movies  # the ZValue sections name no frames file
    assert movie.n_fractions == 243
    assert movie.dose_e_per_angstrom2 == pytest.approx(291.302)
    assert movie.frames_name == "s_mmm_01013_33.0_Oct08_07.46.46.tif"


def test_serialem_tilt_series() -> None:
    mdoc = parse_mdoc((SERIALEM / "TS_01.mrc.mdoc").read_bytes(), name="TS_01.mrc.mdoc")
    assert mdoc.image_file == "TS_01.mrc"
    assert (mdoc.image_width, mdoc.image_height, mdoc.pixel_size_angstrom) == (924, 958, 5.4)
    assert len(mdoc.movies) == 41
    first = mdoc.movies[0]
    assert first.frames_name == "TS_01_000_0.0.mrc"
    assert first.n_fractions == 8
    assert first.divided_by_2 is True
    # the stack's pixel size is for its binned 924x958 image, not for the frames
    assert (first.image_width, first.image_height, first.binning) == (924, 958, 4)


# ---------------------------------------------------------------- which frames a pixel size fits


def _metadata(**fields: object) -> AcquisitionMetadata:
    return AcquisitionMetadata(software="EPU", sidecar="x.xml", **fields)  # type: ignore[arg-type]


def test_pixel_size_for_frames_of_the_described_image_or_its_field_of_view() -> None:
    epu = parse_epu_movie_xml(EPU_MOVIE_XML.read_bytes(), name="x.xml")
    assert pixel_size_for_frames(epu, width=2880, height=2046)[0] == pytest.approx(1.0558814)
    assert pixel_size_for_frames(epu, width=5760, height=4092)[0] == pytest.approx(1.0558814 / 2)
    assert pixel_size_for_frames(epu, width=11520, height=8184)[0] == pytest.approx(1.0558814 / 4)
    value, why = pixel_size_for_frames(epu, width=4096, height=4096)
    assert value is None and "not the 4096x4096 frames" in why
    assert pixel_size_for_frames(epu, width=5760, height=2046)[0] is None  # not one field of view
    frame_set = _metadata(pixel_size_angstrom=1.2827)
    assert pixel_size_for_frames(frame_set, width=5760, height=4092)[0] == 1.2827
    assert pixel_size_for_frames(_metadata(), width=10, height=10)[0] is None


def test_header_pixel_size_zero_one_or_nonsense_is_none() -> None:
    assert header_pixel_size(0.0) is None
    assert header_pixel_size(1.0) is None
    assert header_pixel_size(float("nan")) is None
    assert header_pixel_size(-2.0) is None
    assert header_pixel_size(None) is None
    assert header_pixel_size(0.83) == 0.83


# ---------------------------------------------------------------- hostile sidecars


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<MicroscopeImage>&lol3;</MicroscopeImage>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><MicroscopeImage>&e;</MicroscopeImage>"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["entities", "external"])
def test_xml_with_declarations_is_refused(data: bytes) -> None:
    with pytest.raises(SidecarError, match=r"x\.xml: not a readable EPU XML file"):
        parse_epu_movie_xml(data, name="x.xml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a readable EPU XML"),
        (b"<MicroscopeImage><unclosed></MicroscopeImage>", "not a readable EPU XML"),
        (b"<Other/>", "not an EPU MicroscopeImage"),
        (
            EPU_MOVIE_XML.read_bytes().replace(b"1.0558814239614023E-10", b"NaN"),
            "pixelSize is 'NaN', not a finite number",
        ),
        (EPU_MOVIE_XML.read_bytes().replace(b"1.0558814239614023E-10", b"-1e-10"), "not a positive number"),
        (
            EPU_MOVIE_XML.read_bytes().replace(b"<b:NumberOffractions>50", b"<b:NumberOffractions>2.5"),
            "whole",
        ),
    ],
    ids=["empty", "broken", "other-root", "nan-pixel", "negative-pixel", "fractional-fractions"],
)
def test_bad_epu_xml_is_a_sidecar_error(data: bytes, message: str) -> None:
    with pytest.raises(SidecarError, match=message):
        parse_epu_movie_xml(data, name="x.xml")


def test_bad_mdoc_is_a_sidecar_error() -> None:
    with pytest.raises(SidecarError, match=r"x\.mdoc"):
        parse_mdoc(b"[ZValue = 0]\nPixelSpacing = nonsense\nSubFramePath = a.tif\n", name="x.mdoc")
    with pytest.raises(SidecarError, match="NUL"):
        parse_mdoc(b"PixelSpacing = 1\x00\n", name="x.mdoc")
    with pytest.raises(SidecarError, match="not a positive number"):
        parse_mdoc(b"[FrameSet = 0]\nPixelSpacing = -1\nSubFramePath = a.tif\n", name="x.mdoc")


@given(st.binary(max_size=300))
def test_any_bytes_as_xml_give_a_tree_or_a_sidecar_error(data: bytes) -> None:
    with contextlib.suppress(SidecarError):
        parse_xml(data, name="fuzz.xml")


@given(
    st.text(
        alphabet=st.sampled_from(list("[]=ZValueFrameSetPixelSpacingSubFramePath 0.5-\n\\/ab")), max_size=200
    )
)
def test_any_text_as_mdoc_gives_metadata_or_a_sidecar_error(text: str) -> None:
    with contextlib.suppress(SidecarError):
        parse_mdoc(text.encode(), name="fuzz.mdoc")


def test_read_sidecar_only_regular_files_inside_the_drive(tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / "ok.xml").write_bytes(b"<a/>")
    assert read_sidecar_bytes(drive / "ok.xml", root=drive) == b"<a/>"
    outside = tmp_path / "secret.xml"
    outside.write_bytes(b"<secret/>")
    (drive / "link.xml").symlink_to(outside)
    with pytest.raises(SidecarError, match="leads outside"):
        read_sidecar_bytes(drive / "link.xml", root=drive)
    (drive / "folder.xml").mkdir()
    with pytest.raises(SidecarError, match="not a regular file"):
        read_sidecar_bytes(drive / "folder.xml", root=drive)
    big = drive / "big.mdoc"
    with open(big, "wb") as handle:
        handle.truncate(MAX_SIDECAR_BYTES + 1)
    with pytest.raises(SidecarError, match="larger than any acquisition sidecar"):
        read_sidecar_bytes(big, root=drive)
    with pytest.raises(SidecarError, match="cannot be read"):
        read_sidecar_bytes(drive / "missing.xml", root=drive)


def test_a_fifo_sidecar_never_hangs(tmp_path: Path) -> None:
    fifo = tmp_path / "FoilHole_1_Data_2_3_20250101_000000.xml"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            read_sidecar_bytes(fifo, root=tmp_path)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO sidecar blocked"
    assert len(errors) == 1 and isinstance(errors[0], SidecarError)


def test_sidecar_errors_are_ours_and_pickle() -> None:
    import pickle

    error = SidecarError("x.xml: bad")
    assert isinstance(error, EmpCompressError)
    assert str(pickle.loads(pickle.dumps(error))) == "x.xml: bad"
