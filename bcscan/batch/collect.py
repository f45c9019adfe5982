"""The run's outputs, rebuilt from the per-scan results whichever executor made them: the
tables, GeoJSON, provenance (run.json) and the PDF reports."""
from __future__ import annotations

import datetime as dt
import logging
import platform
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bcscan import __version__
from bcscan.batch.plan import BatchRun, ScanJob
from bcscan.batch.store import ResultStore
from bcscan.errors import ExitCode, ReportError
from bcscan.model.domain import INSIDE, OUTSIDE
from bcscan.model.network import ModelInfo, file_sha256, resolve_model_path
from bcscan.results.aggregation import summarise_patients
from bcscan.results.reports import write_reports
from bcscan.results.tables import (
    CELL_COLUMNS,
    COUNT_COLUMNS,
    EXCLUDED_TILE_COLUMNS,
    FAILURE_COLUMNS,
    SCAN_COLUMNS,
    atomic_write_csv,
    atomic_write_json,
    cells_geojson,
    safe_filename,
)
from bcscan.results.verification import with_verified_columns

log = logging.getLogger("bcscan")


@dataclass
class Execution:
    """Where and how the scans ran, for run.json."""
    executor: dict[str, Any]    # the executor and its settings
    device: str                 # where the model ran
    timings: dict[str, float]   # plan_s (incl. hashing), scans_s, model_load_s


@dataclass
class BatchResult:
    exit_code: int
    n_scans: int
    n_failed: int
    n_cells: int
    out_dir: Path


def collect_outputs(run: BatchRun, model_info: ModelInfo, jobs: list[ScanJob], metas: list[dict[str, Any]],
                    started: dt.datetime, execution: Execution) -> BatchResult:
    """Write every output of the run; `metas` are the scans.csv rows of `jobs`."""
    out_dir = run.out_dir
    store = ResultStore(out_dir)
    cell_tables, excluded_tables = [], []
    for job, meta in zip(jobs, metas):
        if meta["status"] != "ok":
            continue
        stored = store.load(job.key)
        cell_tables.append(of_scan(stored.cells, job))
        if stored.excluded_tiles is not None:  # None: stored by an older bcscan, reported without the overlay
            excluded_tables.append(of_scan(stored.excluded_tiles, job))

    scans = pd.DataFrame(metas).reindex(columns=SCAN_COLUMNS + ["stage"])
    for column in COUNT_COLUMNS:
        scans[column] = scans[column].astype("Int64")  # failed scans leave these empty, not NaN floats
    judged = scans["domain"].isin([INSIDE, OUTSIDE])  # the distance means something only beside the threshold
    scans["domain_threshold"] = scans["domain_threshold"].astype(float)
    scans.loc[judged, "domain_threshold"] = model_info.domain.get("threshold")
    cells = pd.concat(cell_tables, ignore_index=True) if cell_tables else pd.DataFrame(columns=CELL_COLUMNS)
    excluded = (pd.concat(excluded_tables, ignore_index=True) if excluded_tables
                else pd.DataFrame(columns=EXCLUDED_TILE_COLUMNS))
    # unverified until a reviewer signs off (`bcscan review`; a re-run's sign-offs are restored by the CLI)
    patients = with_verified_columns(summarise_patients(scans, cells, run.settings.aggregation,
                                                        model_info.domain.get("uncertainty")), {})
    failures = scans[scans["status"] == "failed"].reindex(columns=FAILURE_COLUMNS)

    atomic_write_csv(out_dir / "cells.csv", cells, CELL_COLUMNS)
    atomic_write_csv(out_dir / "excluded_tiles.csv", excluded, EXCLUDED_TILE_COLUMNS)
    atomic_write_csv(out_dir / "scans.csv", scans, SCAN_COLUMNS)
    atomic_write_csv(out_dir / "patients.csv", patients, list(patients.columns))
    atomic_write_csv(out_dir / "failures.csv", failures, FAILURE_COLUMNS)
    for meta in metas:
        if meta["status"] == "ok":
            scan_cells = cells[cells["scan"] == meta["scan"]]
            atomic_write_json(out_dir / "geojson" / f"{safe_filename(meta['scan'])}.geojson", cells_geojson(scan_cells))

    n_failed = int((scans["status"] == "failed").sum())
    n_pending = int((scans["status"] == "pending").sum())
    atomic_write_json(out_dir / "run.json", provenance(run, model_info, metas, started, execution, {
        "scans": len(metas), "failed": n_failed, "pending": n_pending, "cells": int(len(cells)),
        "patients": int(len(patients))}))
    try:
        write_reports(out_dir, run.scan_dir, run.settings.reporting)
    except ReportError as exc:
        log.error("reports: %s", exc)
    exit_code = ExitCode.SOME_FAILED if n_failed else ExitCode.OK
    return BatchResult(int(exit_code), len(metas), n_failed, int(len(cells)), out_dir)


def of_scan(table: pd.DataFrame, job: ScanJob) -> pd.DataFrame:
    """A per-scan table as rows of the run's table: led by the scan and its patient."""
    table = table.copy()
    table.insert(0, "scan", job.relative)
    table.insert(1, "patient_id", job.patient_id)
    return table


def provenance(run: BatchRun, model_info: ModelInfo, metas: list[dict[str, Any]], started: dt.datetime,
               execution: Execution, counts: dict[str, int]) -> dict[str, Any]:
    """run.json: what ran, on what, with which inputs, model, configuration and software."""
    settings = run.settings
    return {
        "run_id": started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6],
        "bcscan_version": __version__, "started": started.isoformat(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(), "argv": run.argv,
        "scan_dir": str(run.scan_dir), "config": settings.as_dict(), "config_digest": settings.result_digest(run.mpp),
        "model": {"path": str(resolve_model_path(settings.classification.model)), "name": model_info.name,
                  "sha256": model_info.sha256, "input_size": model_info.input_size, "crop_um": model_info.crop_um},
        "centre_model": ({"path": str(settings.centres.model_path()),
                          "sha256": file_sha256(settings.centres.model_path())} if settings.centres.enabled else None),
        "device": execution.device,
        "executor": execution.executor,
        "inputs": [{"scan": m["scan"], "sha256": m.get("sha256", ""), "status": m["status"]} for m in metas],
        "timings": execution.timings,
        "counts": counts,
        "software": software_versions(),
    }


def software_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing TensorFlow would cost seconds)."""
    from importlib import metadata

    import openslide

    versions = {"python": platform.python_version(), "bcscan": __version__,
                "libopenslide": getattr(openslide, "__library_version__", "unknown")}
    for package in ("numpy", "pandas", "opencv-python-headless", "openslide-python", "openslide-bin",
                    "tensorflow", "keras", "scikit-image", "tifffile", "reportlab"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
