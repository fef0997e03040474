"""The command line: happy paths, and one clean error line for every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TEMP_MARKER, counts, temporaries_in
from mrc_factory import mrc_bytes

from empcompress import __version__
from empcompress.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime, to prove nothing was touched."""
    return {
        path.name: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in directory.iterdir()
        if path.is_file()
    }


def assert_one_error_line(err: str, name: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    assert name in lines[0], err
    assert "Traceback" not in err


# ------------------------------------------------------------------ happy paths


def test_convert_restore_verify_info(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.tif"
    code, out, err = run(capsys, "convert", str(counts_movie), "-o", str(output), "--threads", "2", "-q")
    assert code == 0, err
    assert "uint8" in out and "verified" in out
    assert err == ""
    assert output.exists()

    code, out, err = run(capsys, "verify", str(output), "--against", str(counts_movie), "-q")
    assert code == 0, err
    assert out.startswith("OK ")
    assert "byte for byte" in out

    restored = tmp_path / "restored.mrc"
    code, out, err = run(capsys, "restore", str(output), "-o", str(restored), "-q")
    assert code == 0, err
    assert restored.read_bytes() == counts_movie.read_bytes()
    assert "matches" in out

    code, out, err = run(capsys, "info", str(output))
    assert code == 0, err
    assert "stored_type: uint8" in out
    code, out, err = run(capsys, "info", str(counts_movie), "--json")
    assert code == 0, err
    assert json.loads(out)["mode"] == 2
    assert temporaries_in(tmp_path) == []


def test_convert_json_and_codec_options(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "z.tif"
    code, out, err = run(
        capsys, "convert", str(counts_movie), "-o", str(output), "--codec", "zstd", "--level", "5", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["codec"] == "zstd, level 5"
    assert result["decision"]["stored_dtype"] == "uint8"
    assert result["output_size_bytes"] == output.stat().st_size
    with tifffile.TiffFile(output) as tiff:
        assert tiff.pages.first.compression == 50000


def test_default_output_names(tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "convert", str(counts_movie), "-q")
    assert code == 0, err
    tiff = counts_movie.with_suffix(".tif")
    assert tiff.exists()
    # restoring next to the source under its recorded name must not clobber the source
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "restore", str(tiff), "-q")
    assert code != 0
    assert_one_error_line(err, "movie.mrc")
    assert snapshot(tmp_path) == before
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tiff, moved / tiff.name)
    code, _, err = run(capsys, "restore", str(moved / tiff.name), "-q")
    assert code == 0, err
    assert (moved / "movie.mrc").read_bytes() == counts_movie.read_bytes()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_usage_errors_exit_2(counts_movie: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["convert", str(counts_movie), "--codec", "jpeg"],
        ["convert", str(counts_movie), "--threads", "0"],
        [],
    ):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------ bad input


def _good(rng: np.random.Generator) -> bytes:
    return mrc_bytes(counts(rng, (3, 16, 12)), mode=2)


BAD_SOURCES: dict[str, Callable[[np.random.Generator], bytes | None]] = {
    "truncated": lambda rng: _good(rng)[:-7],
    "not_mrc": lambda rng: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
    "empty": lambda rng: b"",
    "tiny": lambda rng: b"MAP ",
    "unknown_mode": lambda rng: mrc_bytes(counts(rng, (3, 16, 12)), mode=2, header_overrides={"mode": 5}),
    "size_mismatch": lambda rng: _good(rng) + b"\0" * 100,
    "zero_frames": lambda rng: mrc_bytes(counts(rng, (3, 16, 12)), mode=2, header_overrides={"nz": 0}),
    "missing": lambda rng: None,
}


@pytest.mark.parametrize("kind", sorted(BAD_SOURCES))
def test_convert_bad_input(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    source = tmp_path / f"{kind}.mrc"
    raw = BAD_SOURCES[kind](rng)
    if raw is not None:
        source.write_bytes(raw)
    before = snapshot(tmp_path)
    output = tmp_path / "out.tif"
    code, out, err = run(capsys, "convert", str(source), "-o", str(output))
    assert code == 1
    assert out == ""
    assert_one_error_line(err, source.name)
    assert not output.exists()
    assert temporaries_in(tmp_path) == []
    assert snapshot(tmp_path) == before  # source bytes and mtime unchanged, nothing added


def test_convert_existing_output(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.tif"
    output.write_bytes(b"an older conversion")
    before = snapshot(tmp_path)
    code, out, err = run(capsys, "convert", str(counts_movie), "-o", str(output))
    assert code == 1
    assert out == ""
    assert_one_error_line(err, "out.tif")
    assert "--overwrite" in err
    assert snapshot(tmp_path) == before
    code, _, err = run(capsys, "convert", str(counts_movie), "-o", str(output), "--overwrite", "-q")
    assert code == 0, err
    assert output.read_bytes()[:4] == b"II*\0"


@pytest.mark.parametrize(
    "argv", [["--codec", "deflate", "--level", "11"], ["--level", "42"], ["--codec", "lzw", "--level", "2"]]
)
def test_convert_bad_level(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "convert", str(counts_movie), "-o", str(tmp_path / "o.tif"), *argv)
    assert code == 1
    assert_one_error_line(err, "level")
    assert snapshot(tmp_path) == before


def test_convert_directory_and_missing_output_directory(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "convert", str(tmp_path), "-o", str(tmp_path / "o.tif"))
    assert code == 1
    assert_one_error_line(err, str(tmp_path))
    code, _, err = run(capsys, "convert", str(counts_movie), "-o", str(tmp_path / "no" / "o.tif"))
    assert code == 1
    assert_one_error_line(err, "no")
    assert temporaries_in(tmp_path) == []


@pytest.mark.parametrize("command", ["restore", "verify", "info"])
@pytest.mark.parametrize("kind", ["missing", "empty", "plain_tiff", "text"])
def test_other_commands_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    path = tmp_path / f"{kind}.tif"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "plain_tiff":
        tifffile.imwrite(path, np.zeros((2, 3, 3), dtype=np.uint8))
    elif kind == "text":
        path.write_text("not a tiff\n" * 200)
    before = snapshot(tmp_path)
    argv = [command, str(path)]
    if command == "restore":
        argv += ["-o", str(tmp_path / "restored.mrc")]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    assert_one_error_line(err, path.name)
    assert snapshot(tmp_path) == before


def test_verify_against_bad_source(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.tif"
    assert main(["convert", str(counts_movie), "-o", str(output), "-q"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "verify", str(output), "--against", str(tmp_path / "gone.mrc"))
    assert code == 1
    assert_one_error_line(err, "gone.mrc")


# ------------------------------------------------------------------ the installed command


def empcompress_command() -> list[str]:
    """The console script installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("empcompress")
    found = str(beside) if beside.exists() else shutil.which("empcompress")
    assert found, "the empcompress console script is not installed; run pip install -e .[test]"
    return [found]


def test_console_script(tmp_path: Path, counts_movie: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    output = tmp_path / "cli.tif"
    done = subprocess.run(
        [*empcompress_command(), "convert", str(counts_movie), "-o", str(output), "--codec", "lzw"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout
    done = subprocess.run(
        [*empcompress_command(), "verify", str(output), "--against", str(counts_movie)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    truncated = tmp_path / "cut.mrc"
    truncated.write_bytes(counts_movie.read_bytes()[:-1])
    done = subprocess.run(
        [*empcompress_command(), "convert", str(truncated), "-o", str(tmp_path / "cut.tif")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert_one_error_line(done.stderr, "cut.mrc")
    assert not (tmp_path / "cut.tif").exists()
    assert temporaries_in(tmp_path) == []


def test_interrupt_exits_130(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import empcompress.convert

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(empcompress.convert, "convert_movie", interrupted)
    code, _, err = run(capsys, "convert", str(counts_movie), "-o", str(tmp_path / "o.tif"))
    assert code == 130
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_restore_into_missing_directory(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.tif"
    assert main(["convert", str(counts_movie), "-o", str(output), "-q"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "restore", str(output), "-o", str(tmp_path / "missing" / "x.mrc"))
    assert code == 1
    assert_one_error_line(err, "missing")
    assert TEMP_MARKER not in err
    assert temporaries_in(tmp_path) == []


def test_names_with_spaces_and_unicode(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "grid 3 (mövie) 001.mrc"
    source.write_bytes(mrc_bytes(counts(rng, (2, 16, 12)), mode=2, labels=["Grid #3"]))
    code, _, err = run(capsys, "convert", str(source), "-q")
    assert code == 0, err
    output = source.with_suffix(".tif")
    with tifffile.TiffFile(output) as tiff:
        assert json.loads(tiff.pages.first.description)["source"]["name"] == source.name
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    code, _, err = run(capsys, "restore", str(output), "-o", str(restored_dir / source.name), "-q")
    assert code == 0, err
    assert (restored_dir / source.name).read_bytes() == source.read_bytes()


# ------------------------------------------------------------------ one line, whatever happens


def test_codec_choices_match_the_encoders() -> None:
    from empcompress.cli import CODEC_NAMES
    from empcompress.encode import CODEC_NAMES as ENCODER_CODEC_NAMES

    assert CODEC_NAMES == ENCODER_CODEC_NAMES


def test_the_command_line_imports_nothing_heavy() -> None:
    """Heavy imports happen inside the commands, after the signal handlers are installed."""
    heavy = ("numpy", "numba", "dask", "distributed", "tifffile", "tqdm", "imagecodecs")
    code = f"import sys, empcompress.cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _failing_convert(error: BaseException, *, noise: bool = False) -> Callable[..., None]:
    def convert_movie(*args: object, **kwargs: object) -> None:
        if noise:  # what libraries say on their own: not for the user unless --verbose
            import logging
            import warnings

            logging.getLogger("tifffile").warning("tifffile noise")
            logging.getLogger("dask.array").warning("dask noise")
            warnings.warn("numba noise", RuntimeWarning, stacklevel=1)
        raise error

    return convert_movie


def test_unexpected_errors_are_one_line_with_a_hint(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import empcompress.convert

    monkeypatch.setattr(empcompress.convert, "convert_movie", _failing_convert(RuntimeError("kaboom")))
    argv = ["convert", str(counts_movie), "-o", str(tmp_path / "o.tif")]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert_one_error_line(err, "kaboom")
    assert "RuntimeError" in err and "--verbose" in err
    for verbose in (["-v", *argv], [*argv, "--verbose"]):
        code, _, err = run(capsys, *verbose)
        assert code == 1
        assert "Traceback" in err and "kaboom" in err
        assert err.strip().splitlines()[-1].startswith("Error: unexpected RuntimeError: kaboom")


def test_library_warnings_and_logs_only_with_verbose(
    tmp_path: Path, counts_movie: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import empcompress.convert
    from empcompress.errors import InputError

    failing = _failing_convert(InputError(f"{counts_movie}: bad"), noise=True)
    monkeypatch.setattr(empcompress.convert, "convert_movie", failing)
    argv = ["convert", str(counts_movie), "-o", str(tmp_path / "o.tif")]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert_one_error_line(err, counts_movie.name)
    code, _, err = run(capsys, "--verbose", *argv)
    assert code == 1
    assert "tifffile noise" in err and "dask noise" in err and "numba noise" in err
    assert err.strip().splitlines()[-1].startswith("Error: ")


@pytest.mark.parametrize("signum", [2, 15, 1])
def test_a_stop_signal_exits_with_128_plus_its_number(
    tmp_path: Path,
    counts_movie: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
) -> None:
    import pickle
    import signal

    import empcompress.convert
    from empcompress.interrupts import Interrupted

    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    error = pickle.loads(pickle.dumps(Interrupted(signum)))
    assert isinstance(error, KeyboardInterrupt) and error.signum == signum
    monkeypatch.setattr(empcompress.convert, "convert_movie", _failing_convert(error))
    code, out, err = run(capsys, "convert", str(counts_movie), "-o", str(tmp_path / "o.tif"))
    assert code == 128 + signum and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"Stopped by {signal.Signals(signum).name}: ")
    # in-process (a library user, these tests): main puts the previous handlers back
    assert {number: signal.getsignal(number) for number in before} == before


@pytest.mark.parametrize(
    ("errno_", "strerror", "advice"),
    [
        (28, "No space left on device", "free space on the disk holding"),
        (122, "Disk quota exceeded", "free space on the disk holding"),
        (30, "Read-only file system", "choose a folder you can write to"),
        (13, "Permission denied", "choose a folder you can write to"),
        (5, "Input/output error", "the disk may be failing"),
    ],
)
@pytest.mark.parametrize("named", ["nothing", "temporary"])
def test_restore_write_errors_name_the_output(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    counts_movie: Path,
    errno_: int,
    strerror: str,
    advice: str,
    named: str,
) -> None:
    import empcompress.restore

    tiff = tmp_path / "out.tif"
    assert main(["convert", str(counts_movie), "-o", str(tiff), "-q"]) == 0
    output = tmp_path / "back" / "movie.mrc"
    output.parent.mkdir()

    def fail(*args: object, **kwargs: object) -> None:
        filename = str(output.with_name(f"{TEMP_MARKER}123-abc")) if named == "temporary" else None
        raise OSError(errno_, strerror, filename)

    monkeypatch.setattr(empcompress.restore, "restore_movie", fail)
    capsys.readouterr()
    code, out, err = run(capsys, "restore", str(tiff), "-o", str(output))
    assert code == 1 and out == ""
    if named == "nothing" and errno_ == 5:  # an I/O error without a name: not blamed on the output
        assert_one_error_line(err, strerror)
    else:
        assert_one_error_line(err, str(output))
        assert err.startswith(f"Error: {output}: {strerror}; ")
    assert TEMP_MARKER not in err
    assert advice in err and "run the same command again" in err
