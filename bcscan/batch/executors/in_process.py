"""Scans one after the other in this process (`--tile-workers 0`): the simplest executor,
and the reference the others must match."""
from __future__ import annotations

from typing import Any

from bcscan.batch.executors.base import Executor
from bcscan.batch.plan import BatchRun, ScanJob
from bcscan.batch.scans import process_scan
from bcscan.model.network import ModelInfo


class InProcessExecutor(Executor):
    name = "in-process"

    def execute(self, run: BatchRun, model_info: ModelInfo, jobs: list[ScanJob], todo: list[int],
                metas: list[dict[str, Any] | None]) -> None:
        for index in todo:
            metas[index] = process_scan(jobs[index], run)
            run.advance()
