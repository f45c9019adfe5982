"""A night's batch, one outline for every executor: plan → execute the scans → collect.

Per-scan results are stored under `OUT_DIR/.bcscan/scans/`, keyed by the scan's content
hash, the model's hash and the effective configuration.  The tables, GeoJSON, provenance
and reports are rebuilt from those results at the end of every run, so a rerun after a
crash continues where it stopped and never counts a cell twice, and the outputs are the
same whichever executor computed the scans.
"""
from __future__ import annotations

import datetime as dt
import os
import time

from bcscan.batch.collect import BatchResult, Execution, collect_outputs
from bcscan.batch.executors import Executor, executor_for
from bcscan.batch.plan import BatchRun, plan_batch
from bcscan.batch.scans import settled_meta
from bcscan.batch.store import remove_stale_temporaries
from bcscan.model.network import ModelInfo, load_model_info, resolve_model_path
from bcscan.scan.centres import centre_network


def run_batch(run: BatchRun, executor: Executor | None = None) -> BatchResult:
    """Process every scan below `run.scan_dir` into `run.out_dir` with `executor` (default: as the
    run's `pipeline` settings say).  Raises ConfigError / ModelError / PatientError when nothing
    can run; a scan that fails is recorded and the batch goes on."""
    executor = executor or executor_for(run.settings)
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    model_info = prepare_output(run)
    jobs = plan_batch(run, model_info.sha256)
    metas = [settled_meta(job, run) for job in jobs]  # settled while planning, or done by an earlier run
    for _ in range(sum(meta is not None for meta in metas)):
        run.advance()
    t_planned = time.perf_counter()
    executor.execute(run, model_info, jobs, [i for i, meta in enumerate(metas) if meta is None], metas)
    t_scanned = time.perf_counter()
    execution = Execution(executor.describe(), executor.device(run), {
        "plan_s": round(t_planned - t_start, 2), "scans_s": round(t_scanned - t_planned, 2),
        "model_load_s": executor.model_load_seconds(run, t_planned)})
    return collect_outputs(run, model_info, jobs, metas, started, execution)


def prepare_output(run: BatchRun) -> ModelInfo:
    """Checks before any work: the models (missing or corrupt → refused), permissions, leftovers."""
    os.umask(run.settings.batch.umask_value)
    remove_stale_temporaries(run.out_dir)
    if run.settings.centres.enabled:
        centre_network(run.settings.centres.model)
    return load_model_info(resolve_model_path(run.settings.classification.model))
