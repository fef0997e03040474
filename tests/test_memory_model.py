"""The memory model (pipeline.memory), the local cluster's sizing by it, and the scan's memory prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from drives import write_mrc

from empcompress.cluster import LOCAL_MEMORY_SHARE, WorkerMemory, local_sizing, worker_memory
from empcompress.errors import PipelineError
from empcompress.pipeline import memory
from empcompress.pipeline.memory import (
    BASE_BYTES,
    COPY_NEED_BYTES,
    FrameSize,
    conversion_need_bytes,
    entry_need,
    largest_need,
    n_fit,
)
from empcompress.scan import ACTION_CONVERT, ACTION_COPY, FileEntry
from empcompress.scan.predict import predict_memory

MIB = 1 << 20
GIB = 1 << 30
SUPER_RESOLUTION = FrameSize(width=11520, height=8184, mode=2)

#: Measured peaks (benchmarks/results-superres.md, VmHWM): (frame, may be stored as float, threads, MiB)
MEASURED = [
    (FrameSize(4096, 4096, 2), False, 1, 348),
    (SUPER_RESOLUTION, False, 1, 1093),
    (FrameSize(11520, 8184, 101), False, 1, 690),
    (SUPER_RESOLUTION, True, 1, 2207),
    (SUPER_RESOLUTION, True, 2, 2412),
]


@pytest.mark.parametrize(("frame", "stored_float", "threads", "measured_mib"), MEASURED)
def test_the_model_bounds_every_measured_conversion_closely(
    frame: FrameSize, stored_float: bool, threads: int, measured_mib: int
) -> None:
    need_mib = conversion_need_bytes(frame, may_store_float=stored_float, threads=threads) / MIB
    assert measured_mib <= need_mib <= measured_mib * 1.3 + 100  # a bound, not a wild one


def test_a_float_movie_is_declared_with_the_float_stored_bound() -> None:
    declared = conversion_need_bytes(SUPER_RESOLUTION)
    assert declared == conversion_need_bytes(SUPER_RESOLUTION, may_store_float=True)
    assert declared >= 2207 * MIB  # the measured float-stored peak, although counts peak at 1093 MiB
    assert declared > conversion_need_bytes(SUPER_RESOLUTION, may_store_float=False)
    # float16 frames are counted as float32; integer frames by their size; mode 101 unpacked to uint8
    assert conversion_need_bytes(FrameSize(4096, 4096, 12)) == conversion_need_bytes(FrameSize(4096, 4096, 2))
    uint16 = conversion_need_bytes(FrameSize(4096, 4096, 6)) - BASE_BYTES
    uint8 = conversion_need_bytes(FrameSize(4096, 4096, 0)) - BASE_BYTES
    assert uint16 == pytest.approx(2 * uint8, rel=1e-6)
    assert conversion_need_bytes(FrameSize(4096, 4096, 101)) == conversion_need_bytes(
        FrameSize(4096, 4096, 0)
    )


def test_the_need_does_not_depend_on_the_frame_count_and_grows_with_the_frame() -> None:
    small = _entry("a.mrc", 4096, 4096, n_frames=8)
    many = _entry("b.mrc", 4096, 4096, n_frames=600)
    assert entry_need(small).need_bytes == entry_need(many).need_bytes
    assert entry_need(_entry("c.mrc", 11520, 8184)).need_bytes > entry_need(small).need_bytes


def _entry(
    rel_path: str,
    width: int = 0,
    height: int = 0,
    *,
    mode: int = 2,
    n_frames: int = 40,
    header_error: str = "",
) -> FileEntry:
    convert = width > 0 or header_error
    return FileEntry(
        rel_path=rel_path,
        size_bytes=max(1, width * height * n_frames * 4),
        mtime_ns=0,
        category="movie" if convert else "other",
        action=ACTION_CONVERT if convert else ACTION_COPY,
        output_rel_path=rel_path,
        mode=mode if width else -1,
        n_frames=n_frames if width else 0,
        frame_width=width,
        frame_height=height,
        header_error=header_error,
    )


def test_copies_and_unreadable_movies_need_a_copy_buffer_and_the_largest_is_found() -> None:
    entries = [
        _entry("notes.txt"),
        _entry("broken.mrc", header_error="truncated"),
        _entry("k3/big.mrc", 11520, 8184),
        _entry("k2/small.mrc", 4096, 4096),
    ]
    assert entry_need(entries[0]).need_bytes == COPY_NEED_BYTES
    assert entry_need(entries[1]).need_bytes == COPY_NEED_BYTES
    largest = largest_need(entries)
    assert largest is not None and largest.rel_path == "k3/big.mrc" and largest.frame == SUPER_RESOLUTION
    assert largest_need([]) is None
    two_threads = largest_need(entries, threads=2)
    assert two_threads is not None and two_threads.need_bytes > largest.need_bytes  # another encoder thread


def test_n_fit() -> None:
    assert n_fit(10 * GIB, 3 * GIB) == 3
    assert n_fit(2 * GIB, 3 * GIB) == 0


# ---------------------------------------------------------------- local sizing


@pytest.mark.parametrize("n_cores", [1, 2, 8, 64])
@pytest.mark.parametrize("memory_gib", [2, 4, 8, 16, 24, 64, 256])  # 2: too small for the largest
@pytest.mark.parametrize(
    "frame", [None, FrameSize(4096, 4096, 2), FrameSize(5760, 4092, 2), SUPER_RESOLUTION]
)
@pytest.mark.parametrize("threads", [None, 2])
def test_the_local_cluster_never_runs_more_big_conversions_than_fit(
    n_cores: int, memory_gib: int, frame: FrameSize | None, threads: int | None
) -> None:
    need = conversion_need_bytes(frame) if frame else 0
    machine = memory_gib * GIB
    usable = int(machine * LOCAL_MEMORY_SHARE)
    sizing = local_sizing(
        n_cores=n_cores, memory_bytes=machine, threads_per_worker=threads, largest_need_bytes=need
    )
    n_threads = threads or 1
    assert sizing.threads_per_worker == n_threads
    assert sizing.n_workers * sizing.memory_limit_bytes <= usable  # the workers share the machine's memory
    assert 0 < sizing.n_workers <= max(1, n_cores // n_threads)  # never more workers than cores
    if not need:
        assert sizing.n_workers == max(1, n_cores // n_threads) and not sizing.warning
        return
    at_once = sizing.n_workers * sizing.n_largest_per_worker
    assert at_once <= usable // need  # never more at once than fit (none when not one fits)
    if need <= usable:
        assert sizing.memory_limit_bytes >= need and not sizing.warning  # every worker fits the largest
        assert at_once >= 1
        # as many workers as the cores allow, unless memory says fewer
        assert sizing.n_workers == min(max(1, n_cores // n_threads), usable // need)
        assert sizing.limited_by_memory == (sizing.n_workers < max(1, n_cores // n_threads))
    else:  # the machine is too small for one: one worker with everything, and a warning saying so
        assert sizing.n_workers == 1 and sizing.memory_limit_bytes == usable
        assert "more than this machine's" in sizing.warning and "fail this run" in sizing.warning


def test_a_super_resolution_drive_on_a_small_workstation() -> None:
    need = conversion_need_bytes(SUPER_RESOLUTION)  # 2.3 GiB
    sizing = local_sizing(n_cores=8, memory_bytes=8 * GIB, largest_need_bytes=need)
    assert (sizing.n_workers, sizing.threads_per_worker, sizing.limited_by_memory) == (3, 1, True)
    without = local_sizing(n_cores=8, memory_bytes=8 * GIB)
    assert without.n_workers == 8  # the old sizing: 8 workers of 0.9 GiB, none of which could convert it


def test_options_the_user_gave_that_leave_too_little_memory_are_refused() -> None:
    need = conversion_need_bytes(SUPER_RESOLUTION)
    with pytest.raises(
        PipelineError,
        match=r"--memory-limit 2\.0 GiB: k3/a\.mrc needs about 2\.3 GiB .* at least --memory-limit 2\.3GiB",
    ):
        local_sizing(
            n_cores=8,
            memory_bytes=64 * GIB,
            memory_limit_bytes=2 * GIB,
            largest_need_bytes=need,
            largest_what="k3/a.mrc",
        )
    with pytest.raises(PipelineError, match=r"--workers 8: .* use --workers 3 or fewer"):
        local_sizing(n_cores=8, memory_bytes=8 * GIB, n_workers=8, largest_need_bytes=need)
    # enough: kept as given; an explicit memory limit no longer gives more workers than the memory holds
    sizing = local_sizing(
        n_cores=8, memory_bytes=64 * GIB, memory_limit_bytes=16 * GIB, largest_need_bytes=need
    )
    assert (sizing.n_workers, sizing.memory_limit_bytes) == (3, 16 * GIB)
    two_threads = local_sizing(
        n_cores=8,
        memory_bytes=64 * GIB,
        threads_per_worker=2,
        memory_limit_bytes=3 * GIB,
        largest_need_bytes=need,
    )
    assert two_threads.n_largest_per_worker == 1  # 2 threads, memory for one big conversion at a time


# ---------------------------------------------------------------- what the driver declares against


class _SchedulerInfoClient:
    def __init__(self, resources: list[dict[str, float] | None], job_memory: str | None = None) -> None:
        self.resources = resources
        if job_memory is not None:
            job = type("Job", (), {"worker_process_memory": job_memory})()
            self.cluster = type("Cluster", (), {"_dummy_job": job})()

    def scheduler_info(self, n_workers: int = 5) -> dict[str, Any]:
        assert n_workers == -1  # every worker, not the first five
        return {"workers": {f"tcp://w{i}": {"resources": r or {}} for i, r in enumerate(self.resources)}}


def test_tasks_declare_memory_only_if_every_worker_advertises_it() -> None:
    advertised = worker_memory(_SchedulerInfoClient([{"memory": 4 * GIB}, {"memory": 8 * GIB}]))
    assert advertised.declare and advertised.largest_worker_bytes == 8 * GIB
    mixed = worker_memory(_SchedulerInfoClient([{"memory": 4 * GIB}, {"GPU": 1}]))
    assert mixed == WorkerMemory(declare=False, largest_worker_bytes=0, source=mixed.source)
    assert not worker_memory(_SchedulerInfoClient([None])).declare
    assert not worker_memory(_SchedulerInfoClient([])).declare
    # a batch cluster: judged against each job's worker too (adapting: a larger job may come)
    batch = worker_memory(_SchedulerInfoClient([{"memory": 2 * GIB}], job_memory="7.45 GiB"))
    assert batch.declare and batch.largest_worker_bytes == int(7.45 * GIB) and "batch job" in batch.source


def test_batch_workers_advertise_their_memory_limit() -> None:
    import dask
    import dask_jobqueue  # noqa: F401  (its configuration defaults)

    from empcompress import cluster as cluster_module

    settings = {
        "jobqueue.slurm.cores": 4,
        "jobqueue.slurm.memory": "16GiB",
        "jobqueue.slurm.processes": 2,
        "jobqueue.slurm.scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    with dask.config.set(settings):
        expected = cluster_module.jobqueue_worker_memory_bytes("slurm")
        cluster = cluster_module._jobqueue_cluster("slurm")
        try:
            script = cluster.job_script()
            limit = cluster._dummy_job.worker_process_memory
        finally:
            cluster.close()
    assert expected == 8 * GIB
    assert f"--resources memory={expected}" in script
    assert f"--memory-limit {limit}" in script
    from dask.utils import parse_bytes

    assert parse_bytes(limit) == expected  # the resource is the worker's memory limit


# ---------------------------------------------------------------- the scan's prediction


def test_scan_predicts_the_largest_conversion_and_how_many_fit(tmp_path: Path) -> None:
    from empcompress.scan import scan_drive

    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "a" / "small.mrc", rng.poisson(1.0, (3, 64, 64)).astype(np.float32))
    write_mrc(tmp_path / "b" / "wide.mrc", rng.poisson(1.0, (3, 64, 256)).astype(np.uint16))
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    plan = scan_drive(tmp_path, predict=False)
    prediction = predict_memory(plan.files, memory_bytes=8 * GIB, n_cores=4)
    assert prediction is not None
    assert prediction.largest_rel_path == "b/wide.mrc" and (
        prediction.frame_width,
        prediction.frame_height,
    ) == (256, 64)
    assert prediction.need_bytes == conversion_need_bytes(FrameSize(256, 64, 6))
    assert (prediction.n_workers, prediction.n_per_worker, prediction.n_at_once) == (4, 1, 4)
    assert (
        predict_memory(
            [entry for entry in plan.files if entry.action == ACTION_COPY], memory_bytes=GIB, n_cores=1
        )
        is None
    )


def test_scan_says_when_a_super_resolution_drive_needs_fewer_workers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from empcompress.cli.drives import _print_memory

    files = [_entry("k3/big.mrc", 11520, 8184), _entry("notes.txt")]
    prediction = predict_memory(files, memory_bytes=8 * GIB, n_cores=8)
    assert prediction is not None and (prediction.n_workers, prediction.n_at_once) == (3, 3)
    _print_memory(prediction)
    printed = capsys.readouterr().out
    assert "the largest conversion, k3/big.mrc (11520x8184, mode 2), needs up to ~2.29 GiB" in printed
    assert "3 workers x 1 thread" in printed and "1 at once per worker, 3 on the machine" in printed
    tiny = predict_memory(files, memory_bytes=2 * GIB, n_cores=2)
    assert tiny is not None and tiny.n_at_once == 0 and "fail this run" in tiny.warning


#: Peak RSS of each gain step on 11520x8184 float32 movies (benchmarks/results-gain-superres.md).
GAIN_STEPS_MEASURED_MIB = {
    "estimate": 1081,
    "compare": 1181,
    "partial": 747,
    "merge": 837,
    "finalize": 553,
    "assemble": 1000,
    "fit": 1422,
    "candidates": 1422,
}


@pytest.mark.parametrize("step", sorted(memory.GAIN_STEP_BYTES_PER_PIXEL))
def test_every_gain_step_is_declared_above_its_measured_peak_and_within_a_4_gib_worker(step: str) -> None:
    from empcompress.gain.estimate import gain_bands

    bands = gain_bands((8184, 11520))
    band_pixels = max(band.stop - band.start for band in bands) * 11520
    need = memory.gain_step_need_bytes(step, n_pixels=SUPER_RESOLUTION.n_pixels, band_pixels=band_pixels)
    assert need >= GAIN_STEPS_MEASURED_MIB.get(step, 0) * MIB
    assert need <= 3 * GIB  # a K3 super-resolution set is estimated within a 4 GiB worker
    # a 4096x4096 gain is one band of 16.8 M pixels, taller than a K3 band: bounded all the same
    assert memory.gain_step_need_bytes(step, n_pixels=4096 * 4096, band_pixels=4096 * 4096) <= 3 * GIB


def test_the_scan_command_prints_and_reports_the_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from empcompress.cli import main

    write_mrc(tmp_path / "k" / "m.mrc", np.ones((3, 64, 128), dtype=np.float32))
    assert main(["scan", str(tmp_path), "--headers-only"]) == 0
    assert (
        "Memory: the largest conversion, k/m.mrc (128x64, mode 2), needs up to ~" in capsys.readouterr().out
    )
    assert main(["scan", str(tmp_path), "--headers-only", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["memory"]["largest_rel_path"] == "k/m.mrc"
    assert document["memory"]["need_bytes"] == conversion_need_bytes(FrameSize(128, 64, 2))
