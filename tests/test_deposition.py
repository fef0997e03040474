"""``empiar-deposition.json`` end to end: an EPU-like and a SerialEM-like drive through ``compress``, then
``empcompress deposition DEST --template``; imagesets, voxel types, pixel sizes (header, sidecar, unknown),
validation against EMPIAR's schema, and the bag staying audited and sealed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bagit
import numpy as np
import pytest
from mrc_factory import write_mrc
from test_gainref import dm4_bytes

from empcompress.cli import main
from empcompress.deposition import build_deposition, read_json_object
from empcompress.deposition.schema import REQUIRED_FOR_A_PERSON, check_deposition, load_schema
from empcompress.manifest import verify_bag
from empcompress.pipeline import compress_drive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REAL = Path(__file__).parent / "data" / "real-metadata"
EPU_XML = (
    REAL
    / "epu-2025-k3"
    / "GridSquare_8999138"
    / "Data"
    / "FoilHole_9015883_Data_9017354_6_20250108_154918.xml"
)
TEMPLATE = Path(__file__).parent / "data" / "empiar" / "working_example.json"
SHAPE = (40, 48)  # (ny, nx): frames are 48 x 40
N_FRAMES = 6
EPU_PIXEL_ANGSTROM = 1.0558814239614023


def _counts(rng: np.random.Generator, dose: float) -> np.ndarray:
    return rng.poisson(dose, size=(N_FRAMES, *SHAPE)).astype(np.float32)


def _epu_xml(*, readout: tuple[int, int]) -> bytes:
    """The real EPU XML, describing a ``readout`` (width, height) image instead of 2880 x 2046."""
    data = EPU_XML.read_bytes()
    data = data.replace(b"<a:width>2880</a:width>", f"<a:width>{readout[0]}</a:width>".encode())
    return data.replace(b"<a:height>2046</a:height>", f"<a:height>{readout[1]}</a:height>".encode())


def make_epu_drive(root: Path, rng: np.random.Generator) -> Path:
    """Two EPU sessions: one with pixel size 0 in the headers (the XML knows), one with 0.83 A headers."""
    data = root / "Images-Disc1" / "GridSquare_8999138" / "Data"
    data.mkdir(parents=True)
    for index in (1, 2):
        stem = f"FoilHole_9015883_Data_901735{index}_6_20250108_15491{index}"
        write_mrc(data / f"{stem}_Fractions.mrc", _counts(rng, 1.0), mode=2, pixel_size_angstrom=0.0)
        # EPU's XML describes its integrated image binned 2: the frames have the same field of view
        (data / f"{stem}.xml").write_bytes(_epu_xml(readout=(SHAPE[1] // 2, SHAPE[0] // 2)))
        (data / f"{stem}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        integrated = rng.normal(0, 1, size=(1, *SHAPE)).astype(np.float32)
        write_mrc(data / f"{stem}.mrc", integrated, mode=2, pixel_size_angstrom=0.0)  # EPU's micrograph
    (root / "EpuSession.dm").write_bytes((REAL / "epu-2025-k3" / "EpuSession.dm").read_bytes())
    other = root / "Session 2" / "Data"
    other.mkdir(parents=True)
    write_mrc(other / "counts_a.mrc", _counts(rng, 1.0), mode=2, pixel_size_angstrom=0.83)
    write_mrc(other / "many_counts.mrc", _counts(rng, 300.0), mode=2, pixel_size_angstrom=0.83)
    noisy = rng.normal(0, 1, size=(N_FRAMES, *SHAPE)).astype(np.float32)
    write_mrc(other / "motion_corrected.mrc", noisy, mode=2, pixel_size_angstrom=0.83)
    (root / "no metadata").mkdir()
    write_mrc(root / "no metadata" / "orphan.mrc", _counts(rng, 1.0), mode=2, pixel_size_angstrom=0.0)
    # a hostile sidecar (entity expansion): not read, and the movie's pixel size is unknown, not guessed
    hostile = root / "hostile" / "Data"
    hostile.mkdir(parents=True)
    stem = "FoilHole_1_Data_2_3_20250108_154918"
    write_mrc(hostile / f"{stem}_Fractions.mrc", _counts(rng, 1.0), mode=2, pixel_size_angstrom=0.0)
    (hostile / f"{stem}.xml").write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b"<MicroscopeImage>&b;</MicroscopeImage>"
    )
    return root


def _mdoc_frame_set(frames_name: str, pixel: float) -> str:
    return (
        "T = SerialEM: a Krios Camera -> 1:K3\nVoltage = 300\n\n[FrameSet = 0]\n"
        "GainReference = SuperRef_s_00000.dm4\n"
        f"ExposureDose = 7.5\nPixelSpacing = {pixel}\nBinning = 0.5\nDividedBy2 = 0\nCountsPerElectron = 1\n"
        f"SubFramePath = X:\\session\\frames\\{frames_name}\nNumSubFrames = {N_FRAMES}\n"
    )


def make_serialem_drive(root: Path, rng: np.random.Generator) -> Path:
    """A frame set with its own mdoc (1.2827 A), and a tilt series whose mdoc bins its image 2x (5.4 A)."""
    frames = root / "frames"
    frames.mkdir(parents=True)
    write_mrc(frames / "s_001.mrc", _counts(rng, 1.0), mode=2, pixel_size_angstrom=1.0)  # 1: says none
    (frames / "s_001.mrc.mdoc").write_text(_mdoc_frame_set("s_001.mrc", 1.2827), encoding="utf-8")
    sections = "".join(
        f"\n[ZValue = {index}]\nTiltAngle = {3 * index}\nPixelSpacing = 5.4\nBinning = 2\n"
        "ExposureDose = 3.0\n"
        f"SubFramePath = D:\\DATA\\frames\\ts_{index:03d}.mrc\nNumSubFrames = {N_FRAMES}\n"
        for index in range(2)
    )
    for index in range(2):
        write_mrc(frames / f"ts_{index:03d}.mrc", _counts(rng, 0.5), mode=2, pixel_size_angstrom=0.0)
    header = (
        f"PixelSpacing = 5.4\nImageFile = TS.mrc\nImageSize = {SHAPE[1] // 2} {SHAPE[0] // 2}\nDataMode = 1\n"
    )
    (root / "TS.mrc.mdoc").write_text(header + "\n[T = SerialEM: tilt series]\n" + sections, encoding="utf-8")
    gain = rng.uniform(0.9, 1.1, size=(1, *SHAPE)).astype(np.float32)
    write_mrc(root / "gain_ref.mrc", gain, mode=2, pixel_size_angstrom=1.0)
    (root / "CountRef_s_00000.dm4").write_bytes(dm4_bytes(gain[0][:, :32]))
    return root


def _imagesets_by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {imageset["name"]: imageset for imageset in document["imagesets"]}


def _compress(client: Any, source: Path, dest: Path) -> None:
    summary = compress_drive(source, dest, client=client)
    assert summary.sealed and summary.exit_code == 0, summary.failures


@pytest.fixture(scope="module")
def epu_bag(tmp_path_factory: pytest.TempPathFactory, client: Any) -> Path:
    root = tmp_path_factory.mktemp("epu")
    source = make_epu_drive(root / "drive", np.random.default_rng(11))
    _compress(client, source, root / "bag")
    return root / "bag"


@pytest.fixture(scope="module")
def serialem_bag(tmp_path_factory: pytest.TempPathFactory, client: Any) -> Path:
    root = tmp_path_factory.mktemp("serialem")
    source = make_serialem_drive(root / "drive", np.random.default_rng(12))
    _compress(client, source, root / "bag")
    return root / "bag"


def test_epu_drive_imagesets(epu_bag: Path) -> None:
    document = read_json_object(epu_bag / "empiar-deposition.json", what="test", max_bytes=1 << 20)
    imagesets = document["imagesets"]
    assert len(imagesets) == 5, [i["name"] for i in imagesets]
    by_key = {(i["voxel_type"], i["pixel_width"], i["num_images_or_tilt_series"]): i for i in imagesets}
    # pixel size 0 in the headers: EPU's XML gives 1.0559 A for its 24x20 image, the 48x40 frames half
    epu = by_key[("('T1', '')", round(EPU_PIXEL_ANGSTROM / 2, 4), 2)]
    assert epu["directory"] == "data/Images-Disc1/GridSquare_8999138/Data"
    assert "EPU" in epu["details"] and "BioQuantum K3" in epu["details"] and "300 kV" in epu["details"]
    assert "acquisition sidecars of 2 files" in epu["details"]
    counts = by_key[("('T1', '')", 0.83, 1)]  # uint8 counts, the header's pixel size
    many = by_key[("('T3', '')", 0.83, 1)]  # counts above 255: uint16
    kept = by_key[("('T7', '')", 0.83, 1)]  # not integers: float32 kept
    unknown = by_key[("('T1', '')", None, 2)]  # neither header nor sidecar: unknown, never guessed
    assert unknown["pixel_height"] is None and "unknown" in unknown["name"]
    assert unknown["directory"] == "data"  # two folders: the payload folder holding both
    for imageset in (epu, counts, many, kept, unknown):
        assert imageset["category"] == "('T2', '')"
        assert (imageset["header_format"], imageset["data_format"]) == ("('T3', '')", "('T3', '')")
        assert (imageset["image_width"], imageset["image_height"]) == (48, 40)
        assert imageset["frames_per_image"] == imageset["frame_range_max"] == N_FRAMES
        assert imageset["directory"].startswith("data/") or imageset["directory"] == "data"
        assert "verified bit for bit" in imageset["details"] and "byte for byte" in imageset["details"]
    assert "Converted losslessly from MRC (float32)" in counts["details"]
    report = json.loads((epu_bag / "report.json").read_text())
    status = report["empiar_deposition"]
    assert status["valid"] is False and status["written"] is True
    assert set(REQUIRED_FOR_A_PERSON) <= set(status["to_fill"])
    assert any("pixel_width/pixel_height of 2 movies:" in item for item in status["to_fill"])
    assert any(
        "hostile/Data/FoilHole_1_Data_2_3_20250108_154918.xml: not a readable EPU XML" in p
        for p in status["problems"]
    )
    assert any(p.startswith("2 single-frame images") for p in status["problems"])  # not imagesets
    markdown = (epu_bag / "report.md").read_text()
    assert "## EMPIAR deposition" in markdown and "- title" in markdown
    assert "(report.html#ratio)" in markdown and "(report.html#counts)" in markdown


def test_serialem_drive_imagesets_and_gain(serialem_bag: Path) -> None:
    document = json.loads((serialem_bag / "empiar-deposition.json").read_text())
    by_name = _imagesets_by_name(document)
    assert len(by_name) == 4, list(by_name)
    movies = sorted(
        (i for i in by_name.values() if i["category"] == "('T2', '')"), key=lambda i: i["pixel_width"]
    )
    frame_set, tilt_frames = movies
    assert frame_set["pixel_width"] == 1.2827  # the frame set's own PixelSpacing (header said 1)
    assert frame_set["num_images_or_tilt_series"] == 1 and "SerialEM" in frame_set["details"]
    assert tilt_frames["pixel_width"] == 2.7  # 5.4 A for the 24x20 stack image: the 48x40 frames half
    assert tilt_frames["num_images_or_tilt_series"] == 2
    gains = sorted(
        (i for i in by_name.values() if i["category"] == "('OT', 'gain references')"), key=lambda i: i["name"]
    )
    gain, dm4 = sorted(gains, key=lambda i: i["header_format"])  # one imageset per format and size
    assert (gain["voxel_type"], gain["header_format"], gain["image_width"]) == (
        "('T7', '')",
        "('T1', '')",
        48,
    )
    assert (dm4["voxel_type"], dm4["header_format"], dm4["image_width"], dm4["image_height"]) == (
        "('T7', '')",
        "('T6', '')",
        32,
        40,
    )
    assert "data/CountRef_s_00000.dm4" in dm4["details"]
    assert "data/gain_ref.mrc" in gain["details"] and "supplied by the depositor" in gain["details"]
    assert "not determined" in gain["details"]  # a carried-over gain's orientation is never guessed


def test_template_merge_validates_and_the_bag_stays_sealed(
    epu_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deposition", str(epu_bag), "--template", str(TEMPLATE)]) == 0
    out = capsys.readouterr().out
    assert "5 imagesets" in out and "pixel_width/pixel_height of 2 movies:" in out
    document = json.loads((epu_bag / "empiar-deposition.json").read_text())
    template = json.loads(TEMPLATE.read_text())
    for key, value in template.items():  # every field of the template but imagesets is kept as it is
        if key != "imagesets":
            assert document[key] == value
    assert len(document["imagesets"]) == 5
    assert check_deposition(document).valid
    import jsonschema

    jsonschema.Draft4Validator(load_schema()).validate(document)
    assert (epu_bag / "bagit.txt").is_file()
    assert verify_bag(epu_bag).ok
    bagit.Bag(str(epu_bag)).validate()
    # without --template, the bag's deposition is its own template: the person's fields stay
    assert main(["deposition", str(epu_bag)]) == 0
    assert json.loads((epu_bag / "empiar-deposition.json").read_text())["title"] == template["title"]
    assert verify_bag(epu_bag).ok


def test_a_deposition_stopped_after_unsealing_is_sealed_again_by_the_next_one(
    epu_bag: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed between unsealing and sealing again: the next `deposition` seals the bag again."""
    from empcompress.deposition import writer

    assert (epu_bag / "bagit.txt").is_file()

    def killed(dest: Any) -> None:
        raise KeyboardInterrupt  # as if the process died right before sealing

    monkeypatch.setattr("empcompress.bag.seal_bag", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.write_deposition(epu_bag)  # rewrites the file, unseals, audits, then "dies"
    assert not (epu_bag / "bagit.txt").exists()  # unsealed, never a sealed bag with stale checksums
    assert (epu_bag / ".empcompress" / writer.RESEAL_MARKER).is_file()
    monkeypatch.undo()
    assert main(["deposition", str(epu_bag)]) == 0
    capsys.readouterr()
    assert (epu_bag / "bagit.txt").is_file()
    assert not (epu_bag / ".empcompress" / writer.RESEAL_MARKER).exists()
    assert verify_bag(epu_bag).ok


def test_bad_template_is_one_error_line(
    epu_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (epu_bag / "empiar-deposition.json").read_bytes()
    bad = tmp_path / "template.json"
    bad.write_text("[1, 2]")
    assert main(["deposition", str(epu_bag), "--template", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "not an object" in err and "Traceback" not in err
    assert (epu_bag / "empiar-deposition.json").read_bytes() == before
    assert main(["deposition", str(tmp_path)]) == 1
    assert "has no report.json" in capsys.readouterr().err


def test_compress_again_keeps_a_person_s_fields_and_never_overwrites_a_broken_file(
    tmp_path: Path, client: Any
) -> None:
    source = make_serialem_drive(tmp_path / "drive", np.random.default_rng(13))
    bag = tmp_path / "bag"
    _compress(client, source, bag)
    document = json.loads((bag / "empiar-deposition.json").read_text())
    document["title"] = "A title a person wrote by hand"
    (bag / "empiar-deposition.json").write_text(json.dumps(document))
    _compress(client, source, bag)  # nothing to convert; reports written again
    assert (
        json.loads((bag / "empiar-deposition.json").read_text())["title"] == "A title a person wrote by hand"
    )
    (bag / "empiar-deposition.json").write_text("{ half edited")
    _compress(client, source, bag)
    assert (bag / "empiar-deposition.json").read_text() == "{ half edited"
    status = json.loads((bag / "report.json").read_text())["empiar_deposition"]
    assert status["written"] is False and any("left as it is" in p for p in status["problems"])
    assert verify_bag(bag).ok


def test_build_deposition_without_template_lists_what_a_person_fills(serialem_bag: Path) -> None:
    report = json.loads((serialem_bag / "report.json").read_text())
    result = build_deposition(serialem_bag, report=report, template=None)
    assert not result.schema.valid
    assert result.schema.missing == REQUIRED_FOR_A_PERSON
    assert set(result.document) == {"imagesets"}
