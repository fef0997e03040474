"""The argument parser: every command, option and help text."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    pass
from .common import (
    CODEC_NAMES,
    _default_threads,
    _positive_int,
)
from .drives import (
    LOG_INTERVAL_SECONDS,
    _cmd_compress,
    _cmd_deposition,
    _cmd_scan,
)
from .movies import (
    _cmd_convert,
    _cmd_example,
    _cmd_gain_estimate,
    _cmd_info,
    _cmd_restore,
    _cmd_verify,
)

# ---------------------------------------------------------------- parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_gain_reference_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gain", metavar="FILE", help="the gain reference, when it is not beside the TIFF (sha256 checked)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="empcompress",
        description="Lossless compression of cryo-EM movies (MRC -> verified TIFF) for EMPIAR.",
    )
    parser.add_argument("--version", action="version", version=f"empcompress {__version__}")
    _add_verbose(parser, default=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert one MRC movie to a verified TIFF stack",
        description="Convert one MRC movie to a multi-page TIFF stack, verified bit for bit before it "
        "appears under its name. The source is only read.",
    )
    convert.add_argument("source", metavar="SRC.mrc")
    convert.add_argument("-o", "--output", metavar="OUT.tif", help="output file (default: SRC with .tif)")
    convert.add_argument(
        "--codec",
        choices=CODEC_NAMES,
        default="auto",
        help="strip compression; auto (default) trial-encodes a sample with LZW and deflate, which "
        "every reader decodes, and keeps the smaller; zstd is faster but not read everywhere",
    )
    convert.add_argument(
        "--level", type=int, help="deflate 0-9 (default: Huffman-only for counts) or zstd 1-22"
    )
    convert.add_argument("--threads", type=_positive_int, default=_default_threads(), help="encoder threads")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert.add_argument("--json", action="store_true", help="print the result as JSON")
    convert.add_argument(
        "--gain",
        metavar="FILE|auto",
        help="gain reference (MRC, DM4 or EER .gain TIFF; oriented automatically) or 'auto' to estimate "
        "one: a gain-normalised float32 movie is stored as counts plus gain-reference.mrc beside the "
        "output; raw-count movies get no gain (a given file is carried over unchanged)",
    )
    _add_common(convert)
    convert.set_defaults(handler=_cmd_convert)

    restore = commands.add_parser(
        "restore",
        help="rebuild the original MRC file from a TIFF stack, byte for byte",
        description="Rebuild the original MRC file from one of our TIFF stacks; its sha256 must equal "
        "the recorded one before it appears under its name.",
    )
    restore.add_argument("tiff", metavar="OUT.tif")
    restore.add_argument("-o", "--output", metavar="ORIGINAL.mrc", help="default: the recorded source name")
    restore.add_argument("--threads", type=_positive_int, default=_default_threads())
    restore.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_gain_reference_option(restore)
    _add_common(restore)
    restore.set_defaults(handler=_cmd_restore)

    verify = commands.add_parser(
        "verify",
        help="decode a TIFF stack and check it against its record (and its source)",
        description="Decode every page and check that it rebuilds the recorded source exactly; with "
        "--against, also compare with the source file byte for byte.",
    )
    verify.add_argument("path", metavar="OUT.tif|DEST", help="a TIFF stack, or a bag written by compress")
    verify.add_argument("--against", metavar="SRC.mrc", help="the source MRC file to compare with")
    verify.add_argument("--full", action="store_true", help="bag: also decode every TIFF stack and check it")
    verify.add_argument("--threads", type=_positive_int, default=_default_threads())
    _add_gain_reference_option(verify)
    _add_common(verify)
    verify.set_defaults(handler=_cmd_verify)

    gain = commands.add_parser(
        "gain",
        help="gain references of gain-normalised movies",
        description="Work with the gain references of gain-normalised float32 movies.",
    )
    gain_commands = gain.add_subparsers(dest="gain_command", metavar="ACTION", required=True)
    estimate = gain_commands.add_parser(
        "estimate",
        help="estimate one float32 gain reference from movies that share it",
        description="Estimate, per pixel, the float32 gain g for which every value is float32(n * g) "
        "for an integer count n, over the gain-normalised movies given (raw-count and non-integer "
        "movies are skipped), and write it as a float32 MRC in MRC row order. Reports reliable, "
        "unconfirmed, exception and unhit pixels, and movies the gain does not fit.",
    )
    estimate.add_argument("movies", metavar="MOVIE", nargs="+")
    estimate.add_argument("-o", "--output", metavar="gain.mrc", required=True)
    estimate.add_argument(
        "--max-frames", type=_positive_int, help="frames read per movie, spread evenly (default: all)"
    )
    estimate.add_argument("--threads", type=_positive_int, default=_default_threads())
    estimate.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    estimate.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_common(estimate)
    estimate.set_defaults(handler=_cmd_gain_estimate)

    info = commands.add_parser("info", help="describe an MRC file or one of our TIFF stacks")
    info.add_argument("path", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=_cmd_info)

    example = commands.add_parser(
        "example", help="write a small synthetic example movie (float32 electron counts) to try on"
    )
    example.add_argument("directory", metavar="DIR")
    example.add_argument("--frames", type=_positive_int, default=8)
    example.add_argument("--size", type=_positive_int, default=512, help="frame width and height in pixels")
    example.add_argument("--overwrite", action="store_true")
    example.add_argument(
        "--drive",
        action="store_true",
        help="write a small drive (movies of several kinds and other files) instead",
    )
    example.set_defaults(handler=_cmd_example)

    scan = commands.add_parser(
        "scan",
        help="walk a drive, classify every file and predict what compress will do",
        description="Walk SRC without following symbolic links, classify every file (movie, micrograph, "
        "gain reference, defect file, other), read a few frames of a few movies per folder to predict "
        "the storage decision, and print the plan. Reads only.",
    )
    scan.add_argument("source", metavar="SRC")
    scan.add_argument("--json", action="store_true", help="print the plan as JSON")
    scan.add_argument("--headers-only", action="store_true", help="read no frames (no prediction)")
    scan.add_argument("--sample-movies", type=_positive_int, default=2, help="movies sampled per group")
    scan.add_argument("--sample-frames", type=_positive_int, default=2, help="frames read per sampled movie")
    scan.add_argument("--workers", type=_positive_int, help="workers assumed for the time estimate")
    scan.set_defaults(handler=_cmd_scan)

    compress = commands.add_parser(
        "compress",
        help="compress a whole drive into a verified, checksummed BagIt bag (on Dask)",
        description="DEST mirrors SRC under DEST/data: movies become verified TIFF stacks, every other file "
        "is copied byte for byte; DEST is a BagIt bag with sha256 and md5 manifests and reports. Runs on a "
        "local Dask cluster sized to the machine unless told otherwise. Run the same command again after an "
        "interruption to finish the remaining work only. Exit status: 0 all done, 1 some files failed (not "
        "in the bag), 3 all files in the bag but some movies kept as they were (not converted), 130 stopped.",
    )
    compress.add_argument("source", metavar="SRC")
    compress.add_argument("dest", metavar="DEST")
    compress.add_argument(
        "--codec", choices=CODEC_NAMES, default="auto", help="strip compression (see convert)"
    )
    compress.add_argument("--level", type=int, help="deflate 0-9 or zstd 1-22")
    where = compress.add_argument_group("cluster (default: a local cluster, one worker per core)")
    where.add_argument(
        "--scheduler-address", metavar="ADDRESS", help="existing scheduler (or DASK_SCHEDULER_ADDRESS)"
    )
    where.add_argument("--scheduler-file", metavar="FILE", help="existing cluster's scheduler file")
    where.add_argument(
        "--cluster", choices=("slurm", "pbs", "sge", "lsf"), help="batch cluster via dask-jobqueue"
    )
    where.add_argument("--jobs", type=_positive_int, help="batch jobs to start (default 1)")
    where.add_argument(
        "--adapt", metavar="MIN:MAX", help="let the number of batch jobs adapt between MIN and MAX"
    )
    where.add_argument(
        "--lifetime",
        metavar="DURATION",
        help="batch workers leave after this long (e.g. 50m), before the job's time limit; with --adapt new "
        "jobs replace them (see the README on job time limits)",
    )
    where.add_argument(
        "--lifetime-stagger", metavar="DURATION", help="spread the workers' --lifetime by +/- this much"
    )
    where.add_argument(
        "--workers",
        type=_positive_int,
        help="local workers (default: one per core, fewer if the largest conversion needs the memory)",
    )
    where.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        help="local worker threads (default 1); a worker runs only as many big conversions at once as fit",
    )
    where.add_argument(
        "--memory-limit",
        metavar="BYTES",
        help="memory per local worker, e.g. 4GiB (default: the machine's shared; README: Memory)",
    )
    where.add_argument("--dashboard-address", default="127.0.0.1:8787", help="local dashboard (host:port)")
    compress.add_argument(
        "--threads-per-task", type=_positive_int, default=1, help="encoder threads per movie"
    )
    compress.add_argument(
        "--no-gain-sets", action="store_true", help="do not estimate gains for gain-normalised movies"
    )
    compress.add_argument(
        "--recheck",
        action="store_true",
        help="re-read every source already in the bag and compare its sha256 with the journal (not only "
        "size, times and inode); redo what changed",
    )
    compress.add_argument(
        "--log-interval",
        type=float,
        default=LOG_INTERVAL_SECONDS,
        help="seconds between log lines when not on a terminal",
    )
    compress.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_common(compress)
    compress.set_defaults(handler=_cmd_compress)

    deposition = commands.add_parser(
        "deposition",
        help="write the bag's EMPIAR deposition JSON (imagesets from the bag, the rest from a template)",
        description="Write DEST/empiar-deposition.json for a bag made by compress: one EMPIAR imageset per "
        "group of movies sharing format, frame size, frames, voxel type and pixel size (pixel size from the "
        "headers, else from EPU/SerialEM sidecars, else unknown), the gain references as their own imageset. "
        "Fields only a person knows (title, authors, citation, release) come from --template FILE (an "
        "existing deposition JSON whose other fields are kept), else from the bag's existing file. Checked "
        "against the EMPIAR deposition schema; what remains to fill is listed. The bag's tag manifests are "
        "updated and a sealed bag is sealed again after its audit.",
    )
    deposition.add_argument("dest", metavar="DEST")
    deposition.add_argument("--template", metavar="FILE", help="a deposition JSON with the person's fields")
    deposition.add_argument("--json", action="store_true", help="also print the deposition JSON")
    deposition.set_defaults(handler=_cmd_deposition)
    for command in [*commands.choices.values(), *gain_commands.choices.values()]:
        _add_verbose(command, default=argparse.SUPPRESS)  # -v after the command name too
    return parser


def _add_verbose(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show library warnings and log lines, and the traceback of an unexpected error",
    )
