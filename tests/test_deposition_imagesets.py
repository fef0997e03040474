"""Grouping movies into EMPIAR imagesets (no files): every movie in exactly one imageset, one imageset per
distinct (format, size, frames, voxel type, pixel size), coded values the schema accepts."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from empcompress.deposition.imagesets import ResolvedMovie, group_movies, voxel_code
from empcompress.deposition.movies import BagImage
from empcompress.deposition.schema import check_deposition

TEMPLATE = json.loads((Path(__file__).parent / "data" / "empiar" / "working_example.json").read_text())

_images = st.builds(
    BagImage,
    output=st.from_regex(r"data/[a-z]{1,3}(/[a-z]{1,3}){0,2}/m[0-9]{1,4}\.tif", fullmatch=True),
    source=st.just("src.mrc"),
    category=st.just("movie"),
    outcome=st.sampled_from(["converted", "copied"]),
    file_format=st.sampled_from(["TIFF", "MRC", "EER"]),
    n_frames=st.integers(2, 4),
    width=st.sampled_from([48, 5760]),
    height=st.sampled_from([40, 4092]),
    voxel=st.sampled_from(["uint8", "uint16", "float32", "int16", "float16", "uint4", "eer"]),
    header_pixel_size_angstrom=st.none(),
    source_voxel=st.just("float32"),
)
_movies = st.lists(
    st.builds(
        ResolvedMovie,
        image=_images,
        pixel_size_angstrom=st.sampled_from([None, 0.83, 1.0559, 1.05591]),
        pixel_size_from=st.just("the MRC header"),
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda movie: movie.image.output,
)


@given(_movies)
def test_every_movie_in_one_valid_imageset(movies: list[ResolvedMovie]) -> None:
    groups = group_movies(movies, gains={}, tool_version="0.0.0")
    members = [output for group in groups for output in group.members]
    assert sorted(members) == sorted(movie.image.output for movie in movies)
    keys = {
        (
            m.image.file_format,
            m.image.width,
            m.image.height,
            m.image.n_frames,
            m.image.voxel,
            None if m.pixel_size_angstrom is None else round(m.pixel_size_angstrom, 4),
            m.image.outcome == "converted",
        )
        for m in movies
    }
    assert len(groups) == len(keys)
    for group in groups:
        imageset = group.imageset
        assert imageset["num_images_or_tilt_series"] == len(group.members)
        assert all(output.startswith(imageset["directory"] + "/") for output in group.members)
        assert len(imageset["directory"]) <= 200 and len(imageset["name"]) <= 200
    document = {**TEMPLATE, "imagesets": [group.imageset for group in groups]}
    report = check_deposition(document)
    assert report.valid, (report.missing, report.problems)


def test_voxel_codes() -> None:
    assert voxel_code("uint8") == "('T1', '')"
    assert voxel_code("uint16") == "('T3', '')"
    assert voxel_code("float32") == "('T7', '')"
    assert voxel_code("int16") == "('T4', '')"
    assert voxel_code("uint4") == "('T9', '')"
    assert voxel_code("float16") == "('OT', '16 BIT FLOAT')"
    assert voxel_code("complex64") == "('OT', 'COMPLEX64')"


def test_a_long_folder_moves_the_directory_up_to_fit() -> None:
    deep = "data/" + "/".join(["f" * 60] * 5)
    image = BagImage(
        output=f"{deep}/m.tif",
        source="m.mrc",
        category="movie",
        outcome="converted",
        file_format="TIFF",
        n_frames=3,
        width=8,
        height=8,
        voxel="uint8",
        header_pixel_size_angstrom=1.1,
    )
    (group,) = group_movies([ResolvedMovie(image, 1.1, "the MRC header")], gains={}, tool_version="0")
    directory = group.imageset["directory"]
    assert len(directory) <= 200 and deep.startswith(directory) and directory.startswith("data/")
