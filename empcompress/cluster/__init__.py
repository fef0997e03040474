"""Where the compress job runs: a Dask client on a local, existing or batch cluster.

Choice (:mod:`.options`), in this order (two explicit choices at once are refused):

1. ``scheduler_file``: an existing cluster started with ``dask scheduler --scheduler-file F``;
2. ``scheduler_address`` (or the ``DASK_SCHEDULER_ADDRESS`` environment variable when no
   cluster option is given): an existing scheduler, e.g. ``tcp://host:8786``;
3. ``cluster`` = ``slurm``, ``pbs``, ``sge`` or ``lsf``: a dask-jobqueue cluster
   (:mod:`.jobqueue`) whose job size (cores, memory, queue, ...) comes from the users'
   ``~/.config/dask/jobqueue.yaml``; it is scaled to ``n_jobs`` jobs (default 1) or adapts
   between ``adapt`` = (MIN, MAX) jobs; ``worker_lifetime`` (and ``worker_lifetime_stagger``)
   make each job's worker leave on its own before the job's time limit (dask-worker's
   ``--lifetime``), so that the scheduler knows at once and, with ``adapt``, a new job takes
   its place. Its jobs are watched (:mod:`.jobs`): a job that ends before its worker connects
   is no longer counted as coming, and with ``adapt`` a new one takes its place;
4. otherwise a :class:`distributed.LocalCluster` sized to the machine (:mod:`.local`): one
   single-threaded worker process per core and the machine's memory shared between them,
   listening on loopback only; never more workers than the machine's memory holds the
   largest conversion (:mod:`empcompress.pipeline.memory` states its need).

:func:`open_cluster` (:mod:`.connect`) opens it; :func:`worker_supply` and
:func:`worker_memory` (:mod:`.supply`) say what the run has to work with.

Memory as a Dask resource: the workers empcompress starts (local, and batch jobs through
``--resources`` in their worker arguments) advertise a ``memory`` resource equal to their
memory limit, and the driver declares every task's need against it
(:func:`worker_memory`), so that a worker with several threads runs only as many big
conversions at once as fit. Workers of an existing cluster are not ours: their tasks
declare memory only if every worker advertises the resource.

Workers of existing and batch clusters must see SRC and DEST under the same paths
(a shared file system); the pipeline checks that before it starts.
"""

from __future__ import annotations

from .connect import CONNECT_TIMEOUT_SECONDS, open_cluster
from .jobqueue import jobqueue_worker_memory_bytes, lifetime_args, new_jobqueue_cluster
from .jobs import JobWatch
from .local import LOCAL_MEMORY_SHARE, LocalSizing, local_sizing, machine_cores, machine_memory_bytes
from .options import JOBQUEUE_CLUSTERS, ClusterInfo, ClusterOptions, choose_connection, parse_adapt
from .supply import WorkerMemory, WorkerSupply, worker_memory, worker_supply

#: the former name, which tests/test_memory_model.py still calls
_jobqueue_cluster = new_jobqueue_cluster

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "JOBQUEUE_CLUSTERS",
    "ClusterOptions",
    "ClusterInfo",
    "JobWatch",
    "LOCAL_MEMORY_SHARE",
    "LocalSizing",
    "local_sizing",
    "choose_connection",
    "parse_adapt",
    "open_cluster",
    "machine_cores",
    "machine_memory_bytes",
    "jobqueue_worker_memory_bytes",
    "lifetime_args",
    "new_jobqueue_cluster",
    "WorkerSupply",
    "worker_supply",
    "WorkerMemory",
    "worker_memory",
]
