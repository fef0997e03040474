"""Whether the job still has workers: a run whose workers are all gone stops instead of waiting forever.

Batch jobs end on their own (time limit, ``scancel``, a node that fails). Their tasks
go back to the scheduler and run on the workers that are left, or on new jobs
(``--adapt``); when no worker is left and none is coming, the driver stops the run
cleanly (finished files are kept in the journal), says what ended the jobs where the
cluster's job watch knows it (:attr:`WorkerSupply.jobs_gone
<empcompress.cluster.WorkerSupply.jobs_gone>`, kept in :attr:`WorkerWatch.last`), and
that the same command finishes the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..cluster import WorkerSupply, worker_supply

__all__ = ["WorkerWatch", "NO_WORKER_GRACE_SECONDS", "UNKNOWN_SUPPLY_GRACE_SECONDS"]

#: No worker connected and none coming (a cluster this process started): stop after this long.
NO_WORKER_GRACE_SECONDS = 10.0
#: No worker connected to an existing cluster (started elsewhere, which may still add some).
UNKNOWN_SUPPLY_GRACE_SECONDS = 300.0
CHECK_SECONDS = 1.0


@dataclass
class WorkerWatch:
    """Call :meth:`all_gone` often; it asks the scheduler at most once per ``check_seconds``."""

    client: Any
    grace_seconds: float = NO_WORKER_GRACE_SECONDS
    unknown_grace_seconds: float = UNKNOWN_SUPPLY_GRACE_SECONDS
    check_seconds: float = CHECK_SECONDS
    _last_check: float = 0.0
    _empty_since: float | None = None
    last: WorkerSupply | None = None

    def all_gone(self) -> bool:
        """True once no worker has been connected, and none coming, for the grace period."""
        now = time.monotonic()
        if now - self._last_check < self.check_seconds:
            return False
        self._last_check = now
        supply = worker_supply(self.client)
        self.last = supply
        if supply.n_connected or supply.n_coming:
            self._empty_since = None
            return False
        if self._empty_since is None:
            self._empty_since = now
        grace = self.grace_seconds if supply.n_coming is not None else self.unknown_grace_seconds
        return now - self._empty_since >= grace
