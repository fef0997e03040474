"""Gain groups across the drive: which reference each gain-normalised movie is converted with.

The driver hands every float movie that classification found gain-normalised to
:class:`GainGrouper`; once the last float movie is classified, the grouper runs
the steps of :mod:`empcompress.gain.grouping` as Dask tasks:

1. every movie is fitted to the *candidates*: gain references found on the drive
   (single-section float32 MRC files the scan calls gain references) and the
   references earlier runs wrote. A movie one reproduces joins its group; a
   depositor's file is then named by the TIFFs as the bag's copy of it, unchanged;
2. for the rest, rounds per frame size: up to ``sample_movies`` movies are sampled
   evenly; each one's own estimate is compared with the others'; the largest
   agreeing set (with orientations) is merged into one gain; every remaining movie
   is fitted to it; the movies it fits form a group, whose reference is written
   once, in the deepest folder that holds all of its TIFFs (a name the layout
   gives); the rest go to the next round;
3. a round that fits no movie ends the grouping: those movies are converted
   without a gain (lossless float32) and their rows say why.

What it reads: 2 frames of every movie per candidate or group fitted
(:data:`~empcompress.gain.limits.ORIENT_SAMPLE_FRAMES`); of each sampled movie
(at most ``sample_movies`` per round), the frames its own estimate needs (4,
grown 4x at a time on sparse data, as classification does) and
:data:`GROUP_PARTIAL_FRAMES` more for the group's estimate. Estimates and
partials stay on the workers; the client holds only the decisions.

The group's estimate is built by row bands of the gain
(:func:`~empcompress.gain.estimate.gain_bands`: one band up to 4096x4096, six for
a K3 super-resolution frame): one partial task per (movie, band) reading only the
rows it needs, a merge tree and a finalize task per band, then one task that
assembles the gain (5 bytes a pixel). No task holds a whole-frame partial (20
bytes a pixel); with one band there is no assemble task (as before bands).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import EmpCompressError
from ..journal import STATE_DONE, GeneratedEntry
from ..manifest import PAYLOAD_DIRNAME
from .events import EventCallback, StageEvent
from .memory import gain_step_need_bytes
from .tasks import FileTask

__all__ = [
    "Candidate",
    "GainGrouper",
    "GENERATED_SET",
    "GROUP_PARTIAL_FRAMES",
    "LEFT_OUT_PREFIX",
    "ORIGIN_DEPOSITOR",
    "ORIGIN_ESTIMATED",
]

#: Frames of each sampled movie merged into a group's estimate.
GROUP_PARTIAL_FRAMES = 16
#: How a converted movie's row says that no gain group took it (the report lists these).
LEFT_OUT_PREFIX = "no gain group fits it: "
#: the journal's kind for a group's reference that we wrote
GENERATED_SET = "gain-reference"
ORIGIN_DEPOSITOR = "depositor"
ORIGIN_ESTIMATED = "estimated"
PRIORITY_GAIN = 5


@dataclass(frozen=True)
class Candidate:
    """A gain reference that may fit some movies."""

    rel_path: str  # payload path the TIFFs name (the bag's copy of a depositor file, or ours)
    read_path: str  # where workers read it to fit movies (the drive's file, or the bag's)
    origin: str  # ORIGIN_DEPOSITOR | ORIGIN_ESTIMATED
    source_rel_path: str = ""  # depositor file: its path on the drive (its copy must be done first)


@dataclass
class _Round:
    shape: tuple[int, int]
    movies: list[FileTask]  # the movies this round groups
    sample: list[FileTask] = field(default_factory=list)
    estimates: list[Any] = field(default_factory=list)  # futures, kept on the workers
    n_pending: int = 0
    comparisons: list[Any] = field(default_factory=list)
    fits: dict[str, Any] = field(default_factory=dict)  # rel_path -> GainFit
    gain: Any = None  # future of the group's GainEstimate
    seed_note: str = ""
    suspect: set[int] = field(default_factory=set)  # sampled movies whose estimate failed (I/O ...)


class GainGrouper:
    """Groups the drive's gain-normalised movies; hands each back to the driver with its reference."""

    def __init__(
        self,
        *,
        client: Any,
        submit: Callable[..., None],
        resources: Callable[[int], dict[str, float] | None],
        enqueue: Callable[[FileTask], None],
        fail: Callable[[FileTask, str], None],
        name_reference: Callable[[str, dict[str, Any]], str],
        record_reference: Callable[[GeneratedEntry], object],
        copy_done: Callable[[str], bool | None],
        payload: Path,
        sample_movies: int,
        classify_sample_frames: int,
        on_event: EventCallback,
    ) -> None:
        self.client = client
        self.submit = submit
        self.resources = resources  # a need in bytes -> the task's Dask resources (None: not declared)
        self.enqueue = enqueue
        self.fail = fail
        self.name_reference = name_reference
        self.record_reference = record_reference
        self.copy_done = copy_done
        self.payload = payload
        self.sample_movies = max(1, sample_movies)
        self.classify_sample_frames = classify_sample_frames
        self.on_event = on_event
        self.candidates: list[Candidate] = []
        self.n_expected = 0
        self.movies: list[FileTask] = []
        self.shapes: dict[str, tuple[int, int]] = {}
        self.waiting: dict[
            str, list[FileTask]
        ] = {}  # depositor source rel_path -> movies waiting for its copy
        self._fit_results: dict[str, Any] = {}
        self._n_fit_pending = 0
        self._started = False

    # ---------------------------------------------------------- gathering

    def expect(self, task: FileTask, frame_shape: tuple[int, int]) -> None:
        """A float movie is being classified; grouping waits for it."""
        self.n_expected += 1
        self.shapes[task.rel_path] = frame_shape

    def classified(self, task: FileTask, *, needs_gain: bool) -> None:
        self.n_expected -= 1
        if needs_gain:
            self.movies.append(replace(task, classify_first=False))
        if self.n_expected == 0 and not self._started:
            self._started = True
            self._start()

    # ---------------------------------------------------------- step 1: candidates

    def _start(self) -> None:
        if not self.movies:
            return
        movies = sorted(self.movies, key=lambda t: t.rel_path)
        self.movies = []
        if not self.candidates:
            self._start_rounds(movies)
            return
        from .gain_tasks import fit_candidates_task, load_reference_task

        shown = ", ".join(PurePosixPath(c.rel_path).name for c in self.candidates[:3])
        more = f" and {len(self.candidates) - 3} more" if len(self.candidates) > 3 else ""
        self.on_event(
            StageEvent(f"fitting {len(movies)} gain-normalised movies to the gain references {shown}{more}")
        )
        arrays = [
            self.client.submit(
                load_reference_task,
                c.read_path,
                pure=False,
                priority=PRIORITY_GAIN,
                resources=self.resources(self._need("load-reference", self._largest_shape())),
            )
            for c in self.candidates
        ]
        names = tuple(PurePosixPath(c.rel_path).name for c in self.candidates)
        self._n_fit_pending = len(movies)
        for task in movies:
            self.submit(
                "gain",
                ("candidates", task),
                fit_candidates_task,
                task.source_path,
                arrays,
                names,
                need_bytes=self._need("candidates", self._largest_shape()),
            )

    def _candidates_fitted(self, task: FileTask, result: Any) -> None:
        self._fit_results[task.rel_path] = (task, result)
        self._n_fit_pending -= 1
        if self._n_fit_pending:
            return
        unfitted = []
        for fitted_task, found in sorted(self._fit_results.values(), key=lambda item: item[0].rel_path):
            if isinstance(found, _Failed):
                self.fail(fitted_task, found.message)
                continue
            if found is None:
                unfitted.append(fitted_task)
                continue
            index, fit = found
            self._convert_with(fitted_task, self.candidates[index], fit)
        self._fit_results.clear()
        self._start_rounds(unfitted)

    # ---------------------------------------------------------- step 2: rounds of estimation

    def _start_rounds(self, movies: list[FileTask]) -> None:
        by_shape: dict[tuple[int, int], list[FileTask]] = {}
        for task in movies:
            by_shape.setdefault(self.shapes[task.rel_path], []).append(task)
        for shape, members in sorted(by_shape.items()):
            self._start_round(_Round(shape, members))

    def _start_round(self, state: _Round) -> None:
        from .gain_tasks import compare_task, movie_estimate_task

        n_sample = min(len(state.movies), self.sample_movies)
        step = len(state.movies) / n_sample
        state.sample = [state.movies[int(i * step)] for i in range(n_sample)]
        self.on_event(
            StageEvent(
                f"estimating a gain for {len(state.movies)} gain-normalised movies of "
                f"{state.shape[1]}x{state.shape[0]} from {n_sample} of them"
            )
        )
        state.estimates = [
            self.client.submit(
                movie_estimate_task,
                task.source_path,
                self.classify_sample_frames,
                pure=False,
                priority=PRIORITY_GAIN,
                resources=self.resources(self._need("estimate", state.shape)),
            )
            for task in state.sample
        ]
        pairs = [(i, j) for i in range(n_sample) for j in range(i + 1, n_sample)]
        if not pairs:
            self._merge_seed(state, [])
            return
        state.n_pending = len(pairs)
        for i, j in pairs:
            self.submit(
                "gain",
                ("compare", state, (i, j)),
                compare_task,
                state.estimates[i],
                state.estimates[j],
                (i, j),
                need_bytes=self._need("compare", state.shape),
            )

    def _compared(self, state: _Round, comparison: Any) -> None:
        state.comparisons.append(comparison)
        state.suspect.update(comparison.unreadable)
        state.n_pending -= 1
        if state.n_pending == 0:
            self._merge_seed(state, state.comparisons)

    def _merge_seed(self, state: _Round, comparisons: list[Any]) -> None:
        from ..gain.estimate import gain_bands
        from ..gain.grouping import choose_seed, majority_frame, root_frame_shape
        from .gain_tasks import assemble_task, finalize_task, merge_task, movie_partial_task

        seed = choose_seed(len(state.sample), comparisons)
        state.estimates = []  # released on the workers
        chosen = [(index, orientation) for index, orientation in seed.members if index not in state.suspect]
        if not chosen:
            healthy = [index for index in range(len(state.sample)) if index not in state.suspect]
            if not healthy:  # no sampled movie could be read: this round is a failure of this run
                for task in state.movies:
                    self.fail(
                        task, "its gain group could not be estimated (the sampled movies could not be read)"
                    )
                return
            chosen = [(healthy[0], "identity")]
        members = [(state.sample[index], orientation) for index, orientation in majority_frame(chosen)]
        left_out = "; ".join(f"{state.sample[i].rel_path} ({why})" for i, why in seed.left_out)
        state.seed_note = f"estimated from {len(members)} sampled movies" + (
            f"; left out of the estimate: {left_out}" if left_out else ""
        )
        # by row bands of the gain (one for frames up to 4096x4096): no task holds a whole-frame partial
        frame_shape = root_frame_shape(state.shape, members[0][1])
        bands = gain_bands(frame_shape)
        finalized = []
        for band in bands:
            level = [
                self.client.submit(
                    movie_partial_task,
                    task.source_path,
                    GROUP_PARTIAL_FRAMES,
                    orientation,
                    band if len(bands) > 1 else None,
                    pure=False,
                    priority=PRIORITY_GAIN,
                    resources=self.resources(self._need("partial", frame_shape)),
                )
                for task, orientation in members
            ]
            while len(level) > 1:
                merged = [
                    self.client.submit(
                        merge_task,
                        level[i],
                        level[i + 1],
                        pure=False,
                        priority=PRIORITY_GAIN,
                        resources=self.resources(self._need("merge", frame_shape)),
                    )
                    for i in range(0, len(level) - 1, 2)
                ]
                if len(level) % 2:
                    merged.append(level[-1])
                level = merged
            finalized.append(
                self.client.submit(
                    finalize_task,
                    level[0],
                    pure=False,
                    priority=PRIORITY_GAIN,
                    resources=self.resources(self._need("finalize", frame_shape)),
                )
            )
        state.gain = (
            finalized[0]
            if len(finalized) == 1
            else self.client.submit(
                assemble_task,
                finalized,
                frame_shape,
                pure=False,
                priority=PRIORITY_GAIN,
                resources=self.resources(self._need("assemble", frame_shape)),
            )
        )
        state.n_pending = len(state.movies)
        from .gain_tasks import fit_estimate_task

        for task in state.movies:
            self.submit(
                "gain",
                ("fit", state, task),
                fit_estimate_task,
                task.source_path,
                state.gain,
                need_bytes=self._need("fit", state.shape),
            )

    def _fitted(self, state: _Round, task: FileTask, fit: Any) -> None:
        state.fits[task.rel_path] = fit
        state.n_pending -= 1
        if state.n_pending:
            return
        for task in state.movies:
            if isinstance(state.fits[task.rel_path], _Failed):
                self.fail(task, state.fits[task.rel_path].message)
        fits = {name: fit for name, fit in state.fits.items() if not isinstance(fit, _Failed)}
        members = [t for t in state.movies if t.rel_path in fits and fits[t.rel_path].fits]
        rest = [t for t in state.movies if t.rel_path in fits and not fits[t.rel_path].fits]
        if not members:
            reasons = {t.rel_path: state.fits[t.rel_path].reason for t in rest}
            for movie in rest:
                note = (
                    f"{LEFT_OUT_PREFIX}a gain {state.seed_note} does not reproduce it "
                    f"({reasons[movie.rel_path]}); stored as lossless float32"
                )
                self.enqueue(replace(movie, gain_note=note))
            state.gain = None
            return
        folder = _deepest_common_folder([t.output_rel_path for t in members])
        root = min(t.rel_path for t in members)
        rel_path = self.name_reference(folder, {"frame_shape": list(state.shape), "root": root})
        from .gain_tasks import write_estimate_task

        self.submit(
            "gain",
            ("write", state, members, rest, rel_path),
            write_estimate_task,
            state.gain,
            str(self.payload / rel_path),
            need_bytes=self._need("write", state.shape),
        )

    def _written(
        self, state: _Round, members: list[FileTask], rest: list[FileTask], rel_path: str, result: Any
    ) -> None:
        self.record_reference(
            GeneratedEntry(
                output_rel_path=rel_path,
                kind=GENERATED_SET,
                state=STATE_DONE,
                output_size_bytes=result.output_size_bytes,
                output_sha256=result.output_sha256,
                output_md5=result.output_md5,
                detail_json=json.dumps(
                    {
                        "frame_shape": list(state.shape),
                        "root": min(t.rel_path for t in members),
                        "n_members": len(members),
                        "how": state.seed_note,
                        "estimate": json.loads(result.detail_json),
                    }
                ),
            )
        )
        self.on_event(StageEvent(f"wrote {PAYLOAD_DIRNAME}/{rel_path} for {len(members)} movies"))
        candidate = Candidate(rel_path, str(self.payload / rel_path), ORIGIN_ESTIMATED)
        self.candidates.append(candidate)
        for task in members:
            self._convert_with(task, candidate, state.fits[task.rel_path])
        state.gain = None
        if rest:
            self._start_round(_Round(state.shape, rest))

    # ---------------------------------------------------------- results

    def _need(self, step: str, frame_shape: tuple[int, int]) -> int:
        """The declared memory of a grouping step on gains of ``frame_shape`` (see .memory)."""
        from ..gain.estimate import gain_bands

        band_rows = max(band.stop - band.start for band in gain_bands(frame_shape))
        n_pixels = frame_shape[0] * frame_shape[1]
        return gain_step_need_bytes(step, n_pixels=n_pixels, band_pixels=band_rows * frame_shape[1])

    def _largest_shape(self) -> tuple[int, int]:
        """The largest frame among the movies to group (a candidate reference is fitted to each)."""
        return max(self.shapes.values(), key=lambda shape: shape[0] * shape[1], default=(1, 1))

    def handle(self, step: tuple[Any, ...], future: Any) -> None:
        kind = step[0]
        try:
            result = future.result()
        except Exception as error:  # a lost worker, an unreadable movie: its movies go without a gain
            self._failed(step, error)
            return
        if kind == "candidates":
            self._candidates_fitted(step[1], result)
        elif kind == "compare":
            self._compared(step[1], result)
        elif kind == "fit":
            self._fitted(step[1], step[2], result)
        elif kind == "write":
            self._written(step[1], step[2], step[3], step[4], result)

    def _failed(self, step: tuple[Any, ...], error: BaseException) -> None:
        """A grouping task failed (a lost worker, an I/O error): its movies fail this run, and the
        next run groups them again; they are never stored without a gain for that reason."""
        message = str(error) if isinstance(error, EmpCompressError) else f"{type(error).__name__}: {error}"
        failed = _Failed(f"its gain group could not be decided ({message}); run again to retry")
        kind = step[0]
        if kind == "candidates":
            self._candidates_fitted(step[1], failed)
        elif kind == "compare":
            state, (first, second) = step[1], step[2]
            state.suspect.update((first, second))  # one of them could not be read: neither seeds
            self._compared(state, _no_comparison())
        elif kind == "fit":
            self._fitted(step[1], step[2], failed)
        elif kind == "write":
            state, members, rest = step[1], step[2], step[3]
            self.on_event(StageEvent(f"could not write the gain reference {step[4]} ({message})"))
            for task in [*members, *rest]:
                self.fail(task, f"its gain group's reference could not be written ({message}); run again")
            state.gain = None

    # ---------------------------------------------------------- conversion

    def _convert_with(self, task: FileTask, candidate: Candidate, fit: Any) -> None:
        ready = replace(
            task,
            gain_reference_path=str(self.payload / candidate.rel_path),
            gain_reference_rel_path=candidate.rel_path,
        )
        if candidate.origin == ORIGIN_DEPOSITOR:
            done = self.copy_done(candidate.source_rel_path)
            if done is None:  # its copy is still to come: wait for it
                self.waiting.setdefault(candidate.source_rel_path, []).append(ready)
                return
            if not done:
                self.fail(task, _not_copied(candidate.source_rel_path))
                return
        self.enqueue(ready)

    def copy_recorded(self, source_rel_path: str, *, ok: bool) -> None:
        """The driver recorded a depositor reference's copy: release the movies waiting for it."""
        for task in self.waiting.pop(source_rel_path, []):
            if ok:
                self.enqueue(task)
            else:
                self.fail(task, _not_copied(source_rel_path))

    def fail_waiting(self) -> int:
        """Movies still waiting for a reference copy that never came back: failures of this run."""
        n_failed = 0
        for source_rel_path, waiting in list(self.waiting.items()):
            for task in waiting:
                self.fail(task, _not_copied(source_rel_path))
                n_failed += 1
        self.waiting.clear()
        return n_failed


@dataclass(frozen=True)
class _Failed:
    """A grouping step that failed for one movie (an I/O error, a lost worker): retried next run."""

    message: str


def _not_copied(source_rel_path: str) -> str:
    return f"its gain reference {source_rel_path} was not copied into the bag this run; run again"


def _no_comparison() -> Any:
    from ..gain.grouping import UNKNOWN, Comparison

    return Comparison(0, 0, UNKNOWN, "identity", 0, 0.0)


def _deepest_common_folder(output_rel_paths: list[str]) -> str:
    """The deepest payload folder that contains every one of these outputs ("" for the top)."""
    parts = [PurePosixPath(path).parent.parts for path in output_rel_paths]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return str(PurePosixPath(*common)) if common else ""
