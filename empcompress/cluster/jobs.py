"""The batch jobs of a dask-jobqueue cluster: which may still bring a worker, and which never will.

dask-jobqueue keeps every job it submitted in ``cluster.workers`` until the scheduler has lost
that job's worker. A job that ends before its worker ever connects (it fails at start, is
cancelled while pending, reaches its time limit first) therefore stays there for good: counted
as coming, the run would wait for it forever, and ``--adapt``, which counts it as running, would
never request another. A job whose worker connected and was lost leaves ``cluster.workers``
(``distributed.deploy.lost-worker-timeout`` later) but stays in the plan
(``cluster.worker_spec``): ``--adapt`` submits it again, ``--jobs N`` does not.

A :class:`JobWatch` runs on the cluster's event loop (where dask-jobqueue runs its own
``sbatch`` and ``scancel``) while the cluster is open. Every :data:`CHECK_SECONDS`:

- when some job's worker has not connected yet, one ``squeue`` asks SLURM for those jobs'
  states (other batch systems are not asked; for them only the last rule below applies);
- a job that ended before its worker connected is forgotten and noted (what ended it);
- a job that SLURM has run for :data:`CONNECT_SECONDS` without its worker connecting (a worker
  that cannot reach the scheduler, a hung start) is cancelled, forgotten and noted;
- a job whose worker connected and was lost is asked about too (in the same ``squeue``), from the
  loss until SLURM says the job ended (its state is noted: time limit, ``scancel``, ...) or dask
  drops the job, whichever comes first: a few calls per lost job at most, none for a job whose
  worker is connected. The job's state is read before dask drops it because dask cancels it then
  (``distributed.deploy.lost-worker-timeout`` after the loss: 15 s): read later, a job whose worker
  was lost while SLURM still ran it would read as cancelled. It is forgotten once dask dropped it.

Forgetting a job takes it out of the plan (``cluster.scale_down``, which also cancels what is
left of it): with ``--adapt`` that is what makes room for a new job; with ``--jobs N`` the run
has one job fewer coming. After :func:`failed_starts_limit` jobs in a row ended before their
worker connected, with no worker connected, the watch expects no more jobs (``--adapt`` is
stopped): the jobs' own settings are wrong, so new ones would fail alike, and the run stops
(see :func:`empcompress.cluster.worker_supply`) saying what ended them and where their output is.
What ended every job the watch saw end, connected or not, is summarised by :meth:`JobWatch.gone_text`
for the run's last message when no worker is left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHECK_SECONDS",
    "CONNECT_SECONDS",
    "SLURM_ENDED_STATES",
    "JobWatch",
    "failed_starts_limit",
    "jobs_with_workers",
    "squeue_states",
    "watch_of",
]

#: How often the watch looks at the jobs (it asks SLURM only while some job has no worker).
CHECK_SECONDS = 5.0
#: A job SLURM runs this long without its worker connecting is cancelled (the worker's start:
#: Python, the imports, the connection; seconds, or a few minutes on a slow shared file system).
CONNECT_SECONDS = 300.0
#: squeue that does not answer within this is asked again at the next check.
QUERY_TIMEOUT_SECONDS = 60.0
#: SLURM job states (``squeue --format=%T``) of a job that has ended or is ending; a job not listed
#: at all has ended too (SLURM forgets ended jobs after its MinJobAge).
SLURM_ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
SLURM_RUNNING = "RUNNING"
#: SLURM says this while an ended job's processes are being stopped (its end state shows after)
SLURM_COMPLETING = "COMPLETING"
#: Labels of endings that are not SLURM states: a job squeue no longer lists (ended, its state
#: forgotten after SLURM's MinJobAge), and one cancelled here for running without its worker connecting.
NOT_LISTED = "no longer listed by squeue"
NO_WORKER = "cancelled by empcompress"
#: What ended a job, for the run's last message: its SLURM state or a label -> how one job / several
#: jobs ended.
_ENDINGS: dict[str, tuple[str, str]] = {
    "TIMEOUT": ("reached its time limit", "reached their time limit"),
    "CANCELLED": ("was cancelled", "were cancelled"),
    "FAILED": ("exited with an error", "exited with an error"),
    "OUT_OF_MEMORY": ("ran out of memory", "ran out of memory"),
    "NODE_FAIL": ("lost its node", "lost their nodes"),
    "BOOT_FAIL": ("could not start its node", "could not start their nodes"),
    "PREEMPTED": ("was preempted", "were preempted"),
    "DEADLINE": ("reached its deadline", "reached their deadline"),
    "COMPLETED": ("ended when its worker left", "ended when their workers left"),
    SLURM_COMPLETING: ("was ending", "were ending"),
    SLURM_RUNNING: (
        "lost its worker while SLURM still ran it, and dask cancelled it",
        "lost their workers while SLURM still ran them, and dask cancelled them",
    ),
    NOT_LISTED: ("ended", "ended"),
    NO_WORKER: (
        "ran too long without its worker connecting",
        "ran too long without their workers connecting",
    ),
}
#: Any other end state; any other state that SLURM said last of a job whose worker was lost, when dask
#: dropped (and cancelled) it (PENDING: requeued, SUSPENDED, ...).
_ENDED = ("ended", "ended")
_LOST_THEN_CANCELLED = (
    "lost its worker, and dask cancelled it",
    "lost their workers, and dask cancelled them",
)
#: jobs shown by id for each way of ending, at most
SHOWN_JOBS = 3

#: job ids -> {job id: state} for the ids the batch system knows (None: it could not be asked)
StateQuery = Callable[[Sequence[str]], Awaitable["dict[str, str] | None"]]

_WATCHES: dict[int, JobWatch] = {}


async def squeue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """The SLURM states of ``job_ids`` (one ``squeue`` call); ids it does not list have ended.
    None when squeue cannot be run or does not answer (the states are then unknown)."""
    command = ["squeue", "--noheader", "--states=all", "--format=%i %T", "--jobs", ",".join(job_ids)]
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError:
        return None
    try:
        out, err = await asyncio.wait_for(process.communicate(), QUERY_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        return None
    finally:
        if process.returncode is None:  # no answer in time, or the watch stopped meanwhile
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    if process.returncode != 0:
        # one id that SLURM no longer knows is an error for squeue (several are not): that job ended
        return {} if b"Invalid job id" in err else None
    states: dict[str, str] = {}
    for line in out.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2:
            states[fields[0]] = fields[1]
    return states


def failed_starts_limit(max_jobs: int) -> int:
    """How many jobs may end in a row before their worker connects until no more are expected:
    two rounds of the most jobs at once, at least 3."""
    return max(3, 2 * max_jobs)


def jobs_with_workers(names: Iterable[str], worker_names: Iterable[Any]) -> set[str]:
    """The job names among ``names`` with a worker connected: a worker is named after its job
    (``NAME``, or ``NAME-i`` when a job runs several worker processes)."""
    owners: set[str] = set()
    for worker_name in worker_names:
        text = str(worker_name)
        owners.add(text)
        owners.add(text.rsplit("-", 1)[0])
    return {name for name in names if name in owners}


def watch_of(cluster: Any) -> JobWatch | None:
    """The watch running for ``cluster`` (None: not a batch cluster this process opened)."""
    return _WATCHES.get(id(cluster)) if cluster is not None else None


@dataclass
class _Job:
    job_id: str
    #: when the watch first saw SLURM run it (its clock)
    started_at: float | None = None
    #: a worker of this job has been seen connected
    connected: bool = False
    #: what SLURM last said of it after its worker was lost ("" before it said)
    lost_state: str = ""
    #: what ended it is noted (no more asking)
    settled: bool = False


class JobWatch:
    """Watches a dask-jobqueue cluster's jobs (see the module's description); :meth:`start` after
    scaling the cluster, :meth:`stop` before closing it."""

    def __init__(
        self,
        cluster: Any,
        *,
        kind: str,
        max_jobs: int,
        adaptive: Any = None,
        query: StateQuery | None = None,
        check_seconds: float | None = None,
        connect_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.kind = kind
        self.adaptive = adaptive
        self.query: StateQuery | None = (
            query if query is not None else (squeue_states if kind == "slurm" else None)
        )
        self.check_seconds = CHECK_SECONDS if check_seconds is None else check_seconds
        self.connect_seconds = CONNECT_SECONDS if connect_seconds is None else connect_seconds
        self.clock = clock
        self.limit = failed_starts_limit(max_jobs)
        self.jobs: dict[str, _Job] = {}
        # job ids (dask reuses the names of jobs that left the plan); read by the client's thread
        # (n_coming, ended_text), so replaced, never changed in place
        self.forgotten: frozenset[str] = frozenset()
        #: each job that ended before its worker connected, and how: "job 41 (failed)"
        self.ended: tuple[str, ...] = ()
        #: every job seen ending, connected or not: (job id, its SLURM state or a label of _ENDINGS)
        self.endings: tuple[tuple[str, str], ...] = ()
        self.failed_in_a_row = 0
        #: no more jobs are expected (too many ended in a row before connecting)
        self.gave_up = False
        self.output_hint = _output_hint(kind)
        self._future: concurrent.futures.Future[None] | None = None

    # ------------------------------------------------------------ running

    def start(self) -> None:
        _WATCHES[id(self.cluster)] = self
        self._future = asyncio.run_coroutine_threadsafe(self._run(), self.cluster.loop.asyncio_loop)

    def stop(self) -> None:
        _WATCHES.pop(id(self.cluster), None)
        if self._future is not None:
            self._future.cancel()
            self._future = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            with contextlib.suppress(Exception):  # squeue or the scheduler busy: the next check tries again
                await self.check()

    async def check(self) -> None:
        """Look at the jobs once (on the cluster's event loop)."""
        cluster = self.cluster
        now = self.clock()
        submitted = _job_ids(cluster.workers)
        planned = {str(name) for name in list(cluster.worker_spec)}
        workers = list(cluster.scheduler_info.get("workers", {}).values())
        worker_names = [worker.get("name") for worker in workers]
        connected = jobs_with_workers(set(submitted) | planned, worker_names)
        for name, job_id in submitted.items():
            known = self.jobs.get(name)
            if job_id and job_id not in self.forgotten and (known is None or known.job_id != job_id):
                self.jobs[name] = _Job(job_id)
        for name in connected & set(self.jobs):
            self.jobs[name].lost_state = ""  # (a worker its nanny restarted is back)
            if not self.jobs[name].connected:
                self.jobs[name].connected = True
                self.failed_in_a_row = 0
        # name -> how it ended before its worker connected ("" for a job whose worker was lost)
        forget: dict[str, str] = {}
        # jobs whose worker never connected; not one dask itself is closing (out of the plan: adapt scaled
        # it down). A job whose worker was lost is left to dask, which drops it lost-worker-timeout later
        # (and then cancels whichever job bears its name: forgotten earlier, its replacement would be hit)
        waiting = {
            name: job
            for name, job in self.jobs.items()
            if not job.connected and name in submitted and name in planned and name not in connected
        }
        # jobs whose worker was lost, that dask has not dropped yet, until SLURM says how they ended; not
        # one dask is closing itself (out of the plan: retired by --adapt, then cancelled by dask)
        lost = {
            name: job
            for name, job in self.jobs.items()
            if job.connected and not job.settled and name in submitted and name in planned
            and name not in connected
        }  # fmt: skip
        states: dict[str, str] | None = None
        if (waiting or lost) and self.query is not None:
            states = await self.query([job.job_id for job in (*waiting.values(), *lost.values())])
            if states is not None:
                forget.update(self._judge(waiting, states, now))
        # read again after asking SLURM: --adapt may have resubmitted a name meanwhile (dask reuses them)
        now_submitted = _job_ids(cluster.workers)
        now_planned = {str(name) for name in list(cluster.worker_spec)}
        if states is not None:
            self._note_lost({name: job for name, job in lost.items() if name in now_planned}, states)
        for name, job in self.jobs.items():  # its worker was lost, and dask dropped the job but plans it
            if job.connected and name not in now_submitted and name in now_planned and name not in connected:
                forget.setdefault(name, "")
        forget = {  # not a job submitted meanwhile under a forgotten job's name
            name: note
            for name, note in forget.items()
            if now_submitted.get(name, self.jobs[name].job_id) == self.jobs[name].job_id
        }
        notes = [note for note in forget.values() if note]
        self.ended = (*self.ended, *notes)
        self.endings = (
            *self.endings,
            *(  # lost, and dropped by dask before SLURM said it ended: what SLURM said last
                (self.jobs[name].job_id, self.jobs[name].lost_state)
                for name, note in forget.items()
                if not note and not self.jobs[name].settled and self.jobs[name].lost_state
            ),
        )
        self.failed_in_a_row += len(notes)
        self.forgotten = self.forgotten | {self.jobs[name].job_id for name in forget}
        for name in forget:
            del self.jobs[name]
        for name in [name for name in self.jobs if name not in submitted and name not in planned]:
            del self.jobs[name]  # dask closed it itself (scaled down)
        if not self.gave_up and self.failed_in_a_row >= self.limit and not connected - set(forget):
            self.gave_up = True
            if self.adaptive is not None:
                with contextlib.suppress(Exception):
                    self.adaptive.stop()
        if forget:
            await cluster.scale_down(sorted(forget))

    def _judge(self, waiting: dict[str, _Job], states: dict[str, str], now: float) -> dict[str, str]:
        """The jobs whose worker never connected to forget, given their states: name -> how it ended."""
        forget: dict[str, str] = {}
        endings: list[tuple[str, str]] = []
        for name, job in waiting.items():
            state = states.get(job.job_id, "")
            if not state or state in SLURM_ENDED_STATES:
                forget[name] = f"job {job.job_id} ({(state or 'ended').lower()})"
                endings.append((job.job_id, state or NOT_LISTED))
            elif state == SLURM_RUNNING:
                job.started_at = now if job.started_at is None else job.started_at
                if now - job.started_at >= self.connect_seconds:
                    forget[name] = (
                        f"job {job.job_id} (running {self.connect_seconds:.0f} s without its worker "
                        f"connecting: cancelled)"
                    )
                    endings.append((job.job_id, NO_WORKER))
        self.endings = (*self.endings, *endings)
        return forget

    def _note_lost(self, lost: dict[str, _Job], states: dict[str, str]) -> None:
        """Note how the jobs whose worker was lost ended, those SLURM says have ended."""
        endings: list[tuple[str, str]] = []
        for job in lost.values():
            state = states.get(job.job_id, "")
            if not state or (state in SLURM_ENDED_STATES and state != SLURM_COMPLETING):
                job.settled = True
                endings.append((job.job_id, state or NOT_LISTED))
            else:  # still running (a worker its nanny restarts, a network cut) or its processes ending
                job.lost_state = state
        self.endings = (*self.endings, *endings)

    # ------------------------------------------------------------ what the run sees

    def n_coming(self, worker_names: Iterable[Any]) -> int:
        """Jobs planned or submitted that may still bring a worker (none after giving up)."""
        if self.gave_up:
            return 0
        planned: set[str] = set()
        submitted: dict[str, str] = {}
        for _ in range(10):  # the cluster's event loop changes these dicts meanwhile: read them again
            with contextlib.suppress(RuntimeError):
                planned = {str(name) for name in list(self.cluster.worker_spec)}
                submitted = _job_ids(self.cluster.workers)
                break
        # planned and not yet submitted, or submitted and not forgotten
        alive = {name for name in planned | set(submitted) if submitted.get(name, "") not in self.forgotten}
        return len(alive - jobs_with_workers(alive, worker_names))

    def ended_text(self) -> str:
        """What ended the jobs whose worker never connected, and where their output is ("" if none)."""
        n_ended = len(self.ended)
        if not n_ended:
            return ""
        shown = ", ".join(self.ended[-3:]) + (f" and {n_ended - 3} before" if n_ended > 3 else "")
        jobs = f"{n_ended} {self.kind.upper()} job{'s' if n_ended != 1 else ''}"
        whose = "its worker" if n_ended == 1 else "their workers"
        return f"{jobs} ended before {whose} connected: {shown}; {self.output_hint}"

    def gone_text(self) -> str:
        """What ended the jobs, as far as the watch knows, and where their output is: for the run's
        last message once no worker is left ("2 SLURM jobs reached their time limit (TIMEOUT: jobs
        41, 42); each job's output, in /logs, says why")."""
        kind = self.kind.upper()
        if self.query is None:
            return (
                f"their {kind} jobs ended or lost their workers; empcompress asks only SLURM what ended "
                f"a job, so {self.output_hint}"
            )
        if not self.endings:
            return f"their {kind} jobs ended; squeue did not say how; {self.output_hint}"
        by_label: dict[str, list[str]] = {}
        for job_id, label in self.endings:
            by_label.setdefault(label, []).append(job_id)
        parts = []
        for label, job_ids in by_label.items():
            n_jobs = len(job_ids)
            one, several = _ENDINGS.get(
                label, _ENDED if label in SLURM_ENDED_STATES else _LOST_THEN_CANCELLED
            )
            shown = ", ".join(job_ids[:SHOWN_JOBS]) + (
                f" and {n_jobs - SHOWN_JOBS} more" if n_jobs > SHOWN_JOBS else ""
            )
            jobs = f"job{'s' if n_jobs != 1 else ''} {shown}"
            parts.append(
                f"{n_jobs} {kind} job{'s' if n_jobs != 1 else ''} {one if n_jobs == 1 else several} "
                f"({label}: {jobs})"
            )
        return f"{', '.join(parts)}; {self.output_hint}"


def _job_ids(workers: dict[Any, Any]) -> dict[str, str]:
    """Job name -> its batch job id ("" before it is submitted), of dask-jobqueue's ``cluster.workers``."""
    return {str(name): str(getattr(job, "job_id", "") or "") for name, job in list(workers.items())}


def _output_hint(kind: str) -> str:
    import dask

    directory = dask.config.get(f"jobqueue.{kind}.log-directory", default=None)
    if directory:
        return f"each job's output, in {directory}, says why"
    if kind == "slurm":
        return f"each job's output, slurm-JOBID.out in {os.getcwd()}, says why"
    return "each job's output file says why"
