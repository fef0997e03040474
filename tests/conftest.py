"""Shared fixtures and helpers for the empcompress tests.

Hypothesis runs few examples without deadlines (Numba compiles on first use and
conversions touch the disk); set ``HYPOTHESIS_PROFILE=thorough`` for a longer run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import distributed  # noqa: F401  (its configuration defaults, loaded before any test's dask.config.set)
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from mrc_factory import write_mrc

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
# CI runs the same examples every time (a landing must not hinge on a lucky draw);
# run `HYPOTHESIS_PROFILE=thorough pytest` to search wider.
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

TEMP_MARKER = ".empcompress-tmp-"


def in_ci() -> bool:
    """CI installs every external tool: a missing one there is a failure, not a skip."""
    return bool(os.environ.get("CI"))


def require_tool(name: str) -> str:
    """Path of the program ``name``; skip when missing (fail under CI)."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian: libtiff-tools / relion)"
        if in_ci():
            pytest.fail(f"{message}, but CI is set and must run the integration tests")
        pytest.skip(message)
    return found


def temporaries_in(directory: Path) -> list[Path]:
    """Files left behind by an interrupted write (their names carry the marker)."""
    return [path for path in directory.rglob("*") if TEMP_MARKER in path.name]


def counts(rng: np.random.Generator, shape: tuple[int, ...], *, dose: float = 1.0) -> np.ndarray:
    """Poisson electron counts as float32 (what many pipelines write)."""
    return rng.poisson(dose, size=shape).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def counts_movie(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A small float32 movie of integer counts (mode 2, 4 frames of 64x80, little endian)."""
    return write_mrc(tmp_path / "movie.mrc", counts(rng, (4, 64, 80)), mode=2, pixel_size_angstrom=0.83)


@pytest.fixture
def make_movie(tmp_path: Path) -> Callable[..., Path]:
    """Write an MRC file from values into tmp_path: ``make_movie(values, mode=2, name=...)``."""

    def make(values: np.ndarray, *, name: str = "movie.mrc", **options: object) -> Path:
        return write_mrc(tmp_path / name, values, **options)

    return make


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """An in-process Dask cluster for compress tests (workers are threads: monkeypatching reaches them)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client
