"""The one owner of DEST's payload paths: unique (case-insensitively), portable, stable, never another's."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from empcompress.pipeline.layout import (
    KIND_CONVERTED,
    KIND_COPIED,
    MAX_NAME_BYTES,
    PayloadLayout,
    PlannedSource,
    is_portable_path,
    path_key,
    portable_path,
)

_STEMS = st.sampled_from(["x", "X", "movie", "Movie", "gain-reference", "a%b", "é", "e\u0301", "new\nline"])
_SUFFIXES = st.sampled_from([".mrc", ".MRC", ".mrcs", ".mrc.mrc", ".tif", ".mrc.tif", ".txt", ""])
_FOLDERS = st.sampled_from(["", "d", "D", "d/e"])
_NAMES = st.builds(
    lambda folder, stem, suffix: f"{folder}/{stem}{suffix}".lstrip("/"), _FOLDERS, _STEMS, _SUFFIXES
)


def _sources(names: set[str]) -> list[PlannedSource]:
    return [
        PlannedSource(name, KIND_CONVERTED if name.lower().endswith((".mrc", ".mrcs")) else KIND_COPIED)
        for name in sorted(names)
    ]


def _check(layout: PayloadLayout, sources: list[PlannedSource]) -> dict[str, str]:
    outputs = {source.rel_path: layout.output_of(source.rel_path) for source in sources}
    kept = {source.rel_path: layout.kept_output_of(source.rel_path) for source in sources}
    claims = list(layout.claimed().values())
    assert len({path_key(path) for path in claims}) == len(claims)  # unique, case-insensitively too
    for path in claims:
        assert is_portable_path(path), path
        assert all(len(part.encode()) <= MAX_NAME_BYTES for part in path.split("/"))
    for source in sources:
        if source.kind == KIND_CONVERTED:
            assert outputs[source.rel_path].endswith(".tif")
            assert not kept[source.rel_path].endswith(".tif") or source.rel_path.endswith(".tif")
    return outputs


@settings(max_examples=150, deadline=None)
@given(st.sets(_NAMES, min_size=1, max_size=12), st.sets(_NAMES, max_size=4))
def test_paths_are_unique_portable_and_stable(names: set[str], added: set[str]) -> None:
    # a folder and a file of the same name cannot both exist in SRC
    names = {n for n in names if not any(other.startswith(n + "/") for other in names)}
    sources = _sources(names)
    layout = PayloadLayout()
    layout.assign_sources(sources, generated=())
    first = _check(layout, sources)
    generated = layout.claim_generated("d", "gain-reference.mrc", identity="set 1")
    # a second run: new depositor files appear (possibly named like ours); old names stay
    everything = names | {
        n for n in added if not any(o.startswith(n + "/") or n.startswith(o + "/") for o in names)
    }
    again = [PlannedSource(s.rel_path, s.kind, first.get(s.rel_path, "")) for s in _sources(everything)]
    second_layout = PayloadLayout()
    lost = second_layout.assign_sources(again, generated=[generated])
    second = _check(second_layout, again)
    assert lost == []
    assert {name: second[name] for name in first} == first
    assert second_layout.owner(generated) == f"generated:{generated}"


def test_copies_keep_their_own_path_and_movies_avoid_them() -> None:
    sources = _sources({"x.mrc", "x.tif", "x.mrc.mrc", "y.mrc", "y.mrcs", "gain-reference.mrc.txt"})
    layout = PayloadLayout()
    layout.assign_sources(sources)
    assert layout.output_of("x.tif") == "x.tif"
    assert layout.output_of("x.mrc") != "x.tif"
    assert {layout.output_of("y.mrc"), layout.output_of("y.mrcs")} == {"y.mrc.tif", "y.mrcs.tif"}
    assert layout.kept_output_of("x.mrc") == "x.mrc"


def test_a_generated_name_taken_by_a_source_gets_another() -> None:
    layout = PayloadLayout()
    layout.assign_sources(_sources({"d/gain-reference.mrc", "d/m.mrc"}))
    assert layout.claim_generated("d", "gain-reference.mrc", identity="set 1") == "d/gain-reference~1.mrc"
    # two gain sets in one folder (two frame sizes) never share a reference; asking again is stable
    assert layout.claim_generated("d", "gain-reference.mrc", identity="set 2") == "d/gain-reference~2.mrc"
    assert layout.claim_generated("d", "gain-reference.mrc", identity="set 1") == "d/gain-reference~1.mrc"
    long = layout.claim_generated("d", "m" * 250 + ".gain-reference.mrc", identity="movie")
    assert all(len(part.encode()) <= MAX_NAME_BYTES for part in long.split("/"))


def test_a_file_beside_a_folder_of_the_same_name_but_case() -> None:
    layout = PayloadLayout()
    sources = _sources({"A", "a/b.txt", "a/c.mrc"})
    layout.assign_sources(sources)
    paths = [layout.output_of(s.rel_path) for s in sources]
    assert layout.output_of("A") == "A"
    assert len({path_key(p) for p in paths}) == 3
    assert all(not path_key(p).startswith("a/") for p in paths if p != "A")


def test_names_that_are_not_utf8_or_hold_line_breaks_are_escaped() -> None:
    name = os.fsdecode(b"bad\xffname%.txt")
    assert portable_path(name) == "bad~FFname~25.txt"
    assert portable_path("a\r\nb") == "a~0D~0Ab"
    assert portable_path(".empcompress-tmp-1-ab") == "~.empcompress-tmp-1-ab"
    long = "m" * 300 + ".mrc"
    assert all(len(part.encode()) <= MAX_NAME_BYTES for part in portable_path(long).split("/"))
    layout = PayloadLayout()
    layout.assign_sources(_sources({long, "m" * 300 + ".txt"}))
    assert len(layout.output_of(long).encode()) <= MAX_NAME_BYTES
