"""The ways to execute a batch's scans, behind one small interface (`base.Executor`):
in this process, pipelined over local tile worker processes, or over a Dask cluster."""
from __future__ import annotations

from bcscan.batch.executors.base import Executor
from bcscan.batch.executors.in_process import InProcessExecutor
from bcscan.batch.executors.pipelined import PipelinedExecutor
from bcscan.batch.settings import Settings


def executor_for(settings: Settings, dask_scheduler: str | None = None, dask_workers: int | None = None) -> Executor:
    """Dask when a scheduler or a local Dask cluster is asked for; else pipelined over tile worker
    processes, unless `pipeline.workers` is 0 (everything in this process)."""
    if dask_scheduler or dask_workers:
        from bcscan.batch.executors.dask_cluster import DaskExecutor

        return DaskExecutor(scheduler=dask_scheduler, workers=dask_workers)
    if settings.pipeline.worker_count():
        return PipelinedExecutor(settings.pipeline)
    return InProcessExecutor()


__all__ = ["Executor", "InProcessExecutor", "PipelinedExecutor", "executor_for"]
