"""The malloc policy of converting processes: set in the CLI's movie commands and in every Dask worker
empcompress sets up, stronger than Dask's ``MALLOC_TRIM_THRESHOLD_``, a no-op without glibc, and no
influence on what a conversion writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mrc_factory import write_mrc

from empcompress import malloc_policy
from empcompress.cli import main
from empcompress.cli import movies as movies_commands
from empcompress.malloc_policy import (
    PINNING_VARIABLES,
    POLICY,
    MallocPolicy,
    adaptive_rule_turned_off,
    applied_malloc_policy,
    apply_malloc_policy,
)

TESTS = Path(__file__).resolve().parent
IS_GLIBC = malloc_policy._glibc() is not None
needs_glibc = pytest.mark.skipif(not IS_GLIBC, reason="the policy is glibc's (a no-op elsewhere)")
#: Above glibc's initial mmap threshold (128 KiB), below the policy's (32 MiB): what a decoded strip,
#: a piece of a page read from disk or the Huffman encoder's output is.
STRIP_SIZED_BYTES = 8 << 20


def _python(code: str, *args: str, environment: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a fresh interpreter (with the tests' imports); the JSON its last line prints."""
    base = {name: value for name, value in os.environ.items() if name not in PINNING_VARIABLES}
    env = {
        **base,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
        **(environment or {}),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_PROBE = """
import json, sys
from empcompress.malloc_policy import apply_malloc_policy, heap_serves
size = int(sys.argv[2])
before = [heap_serves(size) for _ in range(2)]
applied = apply_malloc_policy() if sys.argv[1] == "apply" else None
again = apply_malloc_policy() if sys.argv[1] == "apply" else None
after = heap_serves(size)
print(json.dumps({"before": before, "after": after, "applied": str(applied), "again": str(again)}))
"""


@needs_glibc
def test_the_policy_serves_strip_sized_blocks_from_the_heap_despite_dasks_trim_setting() -> None:
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: glibc's mmap threshold then stays at
    # 128 KiB, so every strip-sized block is mapped afresh (and zeroed by the kernel), however often freed
    nanny = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    without = _python(_PROBE, "none", str(STRIP_SIZED_BYTES), environment=nanny)
    assert without["before"] == [False, False] and without["after"] is False
    applied = _python(_PROBE, "apply", str(STRIP_SIZED_BYTES), environment=nanny)
    assert applied["before"] == [False, False]
    assert applied["after"] is True
    assert applied["applied"] == applied["again"] == str(POLICY)
    # frames above the policy's threshold keep their own mappings (glibc accepts no higher threshold)
    big = _python(_PROBE, "apply", str(POLICY.mmap_threshold_bytes + (1 << 20)), environment=nanny)
    assert big["after"] is False


@needs_glibc
def test_where_glibc_still_adapts_its_thresholds_they_are_left_alone() -> None:
    left = _python(_PROBE, "apply", str(STRIP_SIZED_BYTES))
    assert left["applied"] == left["again"] == "None"
    # glibc's own rule: the first block is mapped, and freeing it lifts the threshold above its size
    assert left["before"] == [False, True] and left["after"] is True


def test_the_settings_that_turn_glibcs_adaptive_rule_off_are_recognised() -> None:
    assert not adaptive_rule_turned_off({})
    assert not adaptive_rule_turned_off(
        {"MALLOC_PERTURB_": "165", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
    )
    for name in PINNING_VARIABLES:
        assert adaptive_rule_turned_off({name: "65536"})
    assert adaptive_rule_turned_off(
        {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.mmap_threshold=4096"}
    )


def test_the_policy_is_the_ceiling_of_glibcs_own_rule() -> None:
    assert MallocPolicy(mmap_threshold_bytes=32 << 20, trim_threshold_bytes=64 << 20) == POLICY


def test_without_glibc_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    class MuslLike:
        """A C library with a mallopt but not glibc's (musl's is a stub)."""

        def mallopt(self, parameter: int, value: int) -> int:
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(malloc_policy, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setattr(malloc_policy.ctypes, "CDLL", lambda name: MuslLike())
    assert apply_malloc_policy() is None
    assert applied_malloc_policy() is None
    assert malloc_policy.heap_serves(STRIP_SIZED_BYTES) is None
    monkeypatch.setattr(sys, "platform", "darwin")
    assert apply_malloc_policy() is None
    assert calls == []


def test_a_glibc_that_refuses_the_threshold_keeps_its_own_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    class OldGlibc:
        def __init__(self) -> None:
            self.mallopt = self._mallopt

        @staticmethod
        def gnu_get_libc_version() -> bytes:
            return b"2.17"

        @staticmethod
        def _mallopt(parameter: int, value: int) -> int:
            return 0

    monkeypatch.setattr(malloc_policy, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setattr(malloc_policy.ctypes, "CDLL", lambda name: OldGlibc())
    assert apply_malloc_policy() is None
    assert applied_malloc_policy() is None


@pytest.fixture
def policy_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every call of the policy by the CLI's movie commands (this process's malloc untouched)."""
    calls: list[str] = []
    monkeypatch.setattr(movies_commands, "apply_malloc_policy", lambda: calls.append("applied"))
    return calls


def test_convert_restore_and_verify_set_the_policy_first(
    tmp_path: Path, policy_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_mrc(
        tmp_path / "m.mrc", np.random.default_rng(0).poisson(1.0, (2, 64, 64)).astype(np.float32), mode=2
    )
    assert main(["convert", str(source), "-o", str(tmp_path / "m.tif"), "-q"]) == 0
    assert policy_calls == ["applied"]
    assert main(["verify", str(tmp_path / "m.tif"), "-q"]) == 0
    assert policy_calls == ["applied"] * 2
    assert main(["restore", str(tmp_path / "m.tif"), "-o", str(tmp_path / "r.mrc"), "-q"]) == 0
    assert policy_calls == ["applied"] * 3
    assert main(["info", str(tmp_path / "m.tif")]) == 0  # reads no frames: leaves malloc alone
    assert policy_calls == ["applied"] * 3
    capsys.readouterr()


_CLI_CONVERT = """
import json, sys
from empcompress.cli import main
from empcompress.malloc_policy import applied_malloc_policy, heap_serves
status = main(["convert", sys.argv[1], "-o", sys.argv[2], "-q"])
print(json.dumps({"status": status, "applied": str(applied_malloc_policy()), "heap": heap_serves(8 << 20)}))
"""


@needs_glibc
@pytest.mark.slow
def test_the_convert_command_runs_under_the_policy(tmp_path: Path) -> None:
    source = write_mrc(
        tmp_path / "m.mrc", np.random.default_rng(1).poisson(0.5, (2, 96, 80)).astype(np.float32), mode=2
    )
    measured = _python(
        _CLI_CONVERT, str(source), str(tmp_path / "m.tif"), environment={"MALLOC_TRIM_THRESHOLD_": "65536"}
    )
    assert measured == {"status": 0, "applied": str(POLICY), "heap": True}


@needs_glibc
@pytest.mark.slow
def test_every_worker_compress_sets_up_runs_under_the_policy() -> None:
    """Workers whose nanny fixes a malloc setting (here MALLOC_TOP_PAD_: the local cluster removes Dask's
    own MALLOC_TRIM_THRESHOLD_, a site's configuration may pin others) get the policy as they join."""
    # a local cluster's nannies live in this process and set their pre-spawn variables in its own
    # environment: put back after the test (later tests hand this environment to SLURM jobs)
    environment = dict(os.environ)
    try:
        _run_workers_with_a_pinned_setting()
    finally:
        os.environ.clear()
        os.environ.update(environment)


def _run_workers_with_a_pinned_setting() -> None:
    import dask

    from empcompress.cluster import ClusterOptions, open_cluster
    from empcompress.pipeline import warm_up_worker

    options = ClusterOptions(n_workers=2, memory_limit_bytes=768 << 20, dashboard_address="127.0.0.1:0")
    pinned = {"distributed.nanny.pre-spawn-environ.MALLOC_TOP_PAD_": "131072"}
    with (
        dask.config.set(pinned),
        open_cluster(options, environ={}, worker_setup=warm_up_worker) as (client, _info),
    ):
        client.wait_for_workers(2, timeout=120)
        applied = client.run(applied_malloc_policy)
        served = client.run(malloc_policy.heap_serves, STRIP_SIZED_BYTES + (8 << 20))
    assert len(applied) == 2
    assert set(applied.values()) == {POLICY}
    assert set(served.values()) == {True}


_CONVERT_ALL = """
import json, sys
from pathlib import Path
from empcompress.convert import convert_movie
if sys.argv[1] == "apply":
    from empcompress.malloc_policy import apply_malloc_policy
    assert apply_malloc_policy() is not None
results = {}
for source in sys.argv[2:]:
    for threads in (1, 2):
        output = Path(source).with_suffix(f".{sys.argv[1]}.{threads}.tif")
        result = convert_movie(source, output, threads=threads)
        results[output.name] = [result.codec, result.output_sha256]
print(json.dumps(results))
"""


@needs_glibc
@pytest.mark.slow
def test_conversions_write_the_same_bytes_with_and_without_the_policy(tmp_path: Path) -> None:
    # With the policy, frame and strip buffers come back from the heap holding old bytes instead of
    # fresh zeroed pages: an output that depended on uninitialised memory would differ.
    rng = np.random.default_rng(7)
    sources = []
    for dose, shape in ((0.6, (3, 1030, 1237)), (0.15, (3, 1030, 1237)), (3.0, (2, 2050, 2048))):
        values = rng.poisson(dose, shape).astype(np.float32)
        sources.append(str(write_mrc(tmp_path / f"m{dose:g}.mrc", values, mode=2)))
    without = _python(_CONVERT_ALL, "none", *sources)
    # MALLOC_PERTURB_: every block malloc hands out is filled with junk first (heap blocks only)
    nanny = {"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_PERTURB_": "165"}
    applied = _python(_CONVERT_ALL, "apply", *sources, environment=nanny)
    codecs = {codec for codec, _ in without.values()}
    assert {"deflate, huffman-only", "lzw"} <= codecs
    assert [digest for _, digest in without.values()] == [digest for _, digest in applied.values()]


def test_heap_serves_tells_heap_from_mapping() -> None:
    if not IS_GLIBC:
        assert malloc_policy.heap_serves(1 << 10) is None
        return
    assert malloc_policy.heap_serves(1 << 10) is True  # small blocks always come from the heap
    assert malloc_policy.heap_serves(256 << 20) is False  # above any threshold glibc accepts
