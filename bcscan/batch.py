"""A night's batch: every scan of a folder, each on its own, then the aggregated outputs.

Per-scan results are stored under `OUT_DIR/.bcscan/scans/`, keyed by the scan's
content hash, the model's hash and the effective configuration.  The tables,
GeoJSON and provenance are rebuilt from those results at the end of every run,
so a rerun after a crash continues where it stopped and never counts a cell twice.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import platform
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import __version__
from .aggregation import AggregationParams, summarise_patients
from .classification import ClassificationParams, resolve_model_path
from .config import DEFAULT_CONFIG, ConfigError, config_digest, load_yaml, merge, section
from .outputs import (CELL_COLUMNS, FAILURE_COLUMNS, SCAN_COLUMNS, atomic_write_csv, atomic_write_json,
                      cells_geojson, safe_filename)
from .patients import PatientAssigner, PatientParams
from .reading import ReadingParams, ScanError, find_scans, open_scan
from .reporting import ReportError, ReportingParams, write_reports
from .segmentation import SegmentationParams
from .streaming import PipelineParams
from .tiling import TilingParams

log = logging.getLogger("bcscan")

EXIT_OK = 0
EXIT_SCANS_FAILED = 1
EXIT_CANNOT_RUN = 2
EXIT_LOCKED = 3

STATE_DIR = ".bcscan"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class BatchParams:
    settle_minutes: float = 0.0  # a scan modified more recently is still being written: left for the next run
    umask: str = "077"           # octal; outputs hold patient data: by default readable by their owner only

    def __post_init__(self):
        if self.settle_minutes < 0:
            raise ValueError("settle_minutes must be >= 0")
        try:
            value = int(str(self.umask), 8)
        except ValueError:
            raise ValueError(f"umask must be octal, e.g. '077' (got {self.umask!r})") from None
        if not 0 <= value <= 0o777:
            raise ValueError("umask must be between 000 and 777")

    @property
    def umask_value(self) -> int:
        return int(str(self.umask), 8)


@dataclass(frozen=True)
class Settings:
    batch: BatchParams = field(default_factory=BatchParams)
    reading: ReadingParams = field(default_factory=ReadingParams)
    tiling: TilingParams = field(default_factory=TilingParams)
    segmentation: SegmentationParams = field(default_factory=SegmentationParams)
    classification: ClassificationParams = field(default_factory=ClassificationParams)
    patients: PatientParams = field(default_factory=PatientParams)
    aggregation: AggregationParams = field(default_factory=AggregationParams)
    reporting: ReportingParams = field(default_factory=ReportingParams)
    pipeline: PipelineParams = field(default_factory=PipelineParams)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_digest(self, mpp: float | None = None) -> str:
        """What a per-scan result depends on (not patients or aggregation, which are applied later),
        including a scale forced with --mpp."""
        d = self.as_dict()
        digest = config_digest({"version": __version__, "reading": d["reading"], "tiling": d["tiling"],
                                "segmentation": d["segmentation"],
                                "threshold": d["classification"]["threshold"]})
        return digest + (f"-mpp{mpp:g}" if mpp else "")


SECTIONS = {"batch": BatchParams, "reading": ReadingParams, "tiling": TilingParams, "segmentation": SegmentationParams,
            "classification": ClassificationParams, "patients": PatientParams, "aggregation": AggregationParams,
            "reporting": ReportingParams, "pipeline": PipelineParams}


def load_settings(config_path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults ← configs/default.yaml ← `config_path` ← command-line overrides."""
    data = load_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else {}
    if config_path is not None:
        data = merge(data, load_yaml(Path(config_path)))
    data = merge(data, overrides or {})
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)}")
    return Settings(**{name: section(cls, data.get(name), name) for name, cls in SECTIONS.items()})


def content_sha256(path: Path) -> str:
    """Hash of a scan's bytes; a DICOM series folder hashes its files in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


class RunLock:
    """An advisory lock in OUT_DIR: the kernel drops it when its process dies, so a killed run
    never blocks the next night."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / STATE_DIR / "lock"
        self.fh = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            self.fh = None
            return False
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return True

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


@dataclass
class ScanJob:
    path: Path
    relative: str
    patient_id: str
    sha256: str = ""
    key: str = ""
    number: str = ""   # "3/12": how logs name a scan (paths may carry patient names)
    outcome: dict[str, Any] | None = None  # settled while planning (pending, duplicate, unreadable)


@dataclass
class BatchResult:
    exit_code: int
    n_scans: int
    n_failed: int
    n_cells: int
    out_dir: Path


class ResultStore:
    """Per-scan results: `<key>.cells.csv` then `<key>.json` (written last: its presence marks the
    result complete)."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / STATE_DIR / "scans"

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.cells.csv", self.dir / f"{key}.json"

    def load(self, key: str) -> tuple[dict[str, Any], pd.DataFrame] | None:
        cells_path, meta_path = self._paths(key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            cells = pd.read_csv(cells_path) if meta.get("status") == "ok" else pd.DataFrame()
        except (OSError, ValueError):
            return None
        return meta, cells

    def save(self, key: str, meta: dict[str, Any], cells: pd.DataFrame | None) -> None:
        cells_path, meta_path = self._paths(key)
        if cells is not None:
            from .pipeline import CELL_RESULT_COLUMNS

            atomic_write_csv(cells_path, cells, CELL_RESULT_COLUMNS)
        atomic_write_json(meta_path, meta)


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


def plan_batch(scan_dir: Path, settings: Settings, mpp: float | None, model_sha: str) -> list[ScanJob]:
    """Every scan below `scan_dir` with its patient, content hash and result key.  Scans that
    cannot even be hashed, duplicates, scans still being written and manifest rows naming no
    scan are settled here (`job.outcome`), before any work is shared out."""
    assigner = PatientAssigner(settings.patients)
    digest = settings.result_digest(mpp)
    found = find_scans(scan_dir)
    jobs = [ScanJob(p, p.relative_to(scan_dir).as_posix(), "", number=f"{i}/{len(found)}")
            for i, p in enumerate(found, start=1)]
    settled_before = time.time() - 60.0 * settings.batch.settle_minutes
    seen: dict[str, str] = {}
    for job in jobs:
        job.patient_id = assigner.patient_of(job.relative)
        if settings.batch.settle_minutes and _modified_after(job.path, settled_before):
            job.outcome = {"status": "pending", "error": f"modified less than {settings.batch.settle_minutes:g} "
                                                         "min ago: left for the next run"}
            continue
        try:
            job.sha256 = content_sha256(job.path)
        except OSError as exc:
            job.outcome = {"status": "failed", "stage": "read",
                           "error": f"{job.relative}: cannot read ({exc.strerror or exc})"}
            continue
        if job.sha256 in seen and job.sha256 != EMPTY_SHA256:  # empty: reading it reports the problem
            job.outcome = {"status": "failed", "stage": "find", "sha256": job.sha256,
                           "error": f"{job.relative}: same content as {seen[job.sha256]} (duplicate scan skipped)"}
            continue
        seen.setdefault(job.sha256, job.relative)
        job.key = f"{job.sha256[:20]}-{model_sha[:12]}-{digest}"
    for relative in assigner.missing_from_manifest({j.relative for j in jobs}):
        jobs.append(ScanJob(scan_dir / relative, relative, assigner.manifest[relative], number="manifest",
                            outcome={"status": "failed", "stage": "find",
                                     "error": f"{relative}: listed in the manifest but not found in the scan folder"}))
    return jobs


_classifiers: dict[ClassificationParams, Any] = {}


def classifier_for(params: ClassificationParams):
    """One loaded model per process (TensorFlow and the model load once, on first real work)."""
    if params not in _classifiers:
        from .classification import CellClassifier

        _classifiers[params] = CellClassifier(params)
    return _classifiers[params]


def process_scan(job: ScanJob, settings: Settings, out_dir: Path, mpp: float | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Reuse the stored result for this exact scan/model/config, or compute and store it.
    Returns the scan's row for scans.csv.  Never raises for a bad scan: it becomes a failed row."""
    from .pipeline import scan_cells

    settled = settled_meta(job, out_dir, force)
    if settled is not None:
        return settled
    t0 = time.perf_counter()
    try:
        with open_scan(job.path, settings.reading, mpp=mpp) as scan:
            result = scan_cells(scan, settings.segmentation, settings.tiling, classifier_for(settings.classification))
        meta = ok_meta(job, result)
    except Exception as exc:  # noqa: BLE001 - one scan must never stop the batch
        stage = "read" if isinstance(exc, ScanError) else getattr(exc, "stage", "internal")
        meta, result = failed_meta(job, stage, exc), None
    return store_scan(job, out_dir, meta, None if result is None else result.cells, t0)


def settled_meta(job: ScanJob, out_dir: Path, force: bool) -> dict[str, Any] | None:
    """The row of a scan that needs no work now: settled while planning, or done by an earlier run."""
    base = {"scan": job.relative, "patient_id": job.patient_id}
    if job.outcome is not None:
        if job.outcome["status"] == "pending":
            log.info("scan %s pending: still being written", job.number)
        else:
            log.error("scan %s failed at stage %s (details in failures.csv)", job.number, job.outcome["stage"])
        return {**base, **job.outcome}
    if not force:
        stored = ResultStore(out_dir).load(job.key)
        if stored is not None and stored[0].get("status") == "ok":
            log.info("scan %s reused (%d cells)", job.number, len(stored[1]))
            return {**stored[0], **base}
    return None


def ok_meta(job: ScanJob, result) -> dict[str, Any]:
    """scans.csv row of a scan done (`result`: pipeline.ScanCells)."""
    labels = result.cells["label"]
    return {"scan": job.relative, "patient_id": job.patient_id, "status": "ok", "sha256": job.sha256,
            "mpp": round(result.scan_mpp, 5), "level": result.level, "working_mpp": result.working_mpp,
            "tiles_read": result.tiles_read, "tiles_skipped": result.tiles_skipped, "n_cells": len(result.cells),
            "n_leukemic": int((labels == "leukemic").sum()), "n_normal": int((labels == "normal").sum()), "error": ""}


def failed_meta(job: ScanJob, stage: str, error: Exception | str) -> dict[str, Any]:
    """scans.csv row of a failed scan; the message names the scan by its path relative to SCAN_DIR."""
    from .pipeline import StageError

    if isinstance(error, (ScanError, StageError, str)):
        message = str(error)
    else:
        message = f"{job.relative}: unexpected {type(error).__name__}: {error}"
        log.debug("scan %s failed", job.number, exc_info=error)
    return {"scan": job.relative, "patient_id": job.patient_id, "status": "failed", "stage": stage,
            "sha256": job.sha256, "error": one_line(message.replace(str(job.path), job.relative))}


def store_scan(job: ScanJob, out_dir: Path, meta: dict[str, Any], cells: pd.DataFrame | None,
               t0: float) -> dict[str, Any]:
    """Store a scan's result (complete once its json is written) and log the outcome."""
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    log.debug("scan %s is %s", job.number, job.relative)
    ResultStore(out_dir).save(job.key, meta, cells)
    if meta["status"] == "ok":
        log.info("scan %s done: %d cells in %.1f s", job.number, meta["n_cells"], meta["seconds"])
    else:
        log.error("scan %s failed at stage %s (details in failures.csv)", job.number, meta["stage"])
    return meta


def run_batch(scan_dir: Path, out_dir: Path, settings: Settings, mpp: float | None = None, force: bool = False,
              progress: Callable[[int], Any] | None = None, argv: list[str] | None = None) -> BatchResult:
    """Process every scan below `scan_dir` into `out_dir`: pipelined over tile worker processes
    (`settings.pipeline`), or one after the other in this process when pipeline.workers is 0.
    Raises ConfigError / ModelError / PatientError when nothing can run; a scan that fails is
    recorded and the batch goes on."""
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    model_info = prepare_output(out_dir, settings)
    jobs = plan_batch(scan_dir, settings, mpp, model_info.sha256)
    t_planned = time.perf_counter()
    workers = settings.pipeline.worker_count()
    if workers:
        from .streaming import run_pipelined

        metas = run_pipelined(jobs, settings, out_dir, model_info, mpp, force, progress)
        executor = {"engine": "pipelined", "tile_workers": workers, "tiles_in_flight": settings.pipeline.window(),
                    "scans_in_flight": settings.pipeline.scans_in_flight}
    else:
        metas = []
        for job in jobs:
            metas.append(process_scan(job, settings, out_dir, mpp, force))
            if progress is not None:
                progress(1)
        executor = None
    t_scanned = time.perf_counter()
    loaded_now = [c for c in _classifiers.values() if c.loaded_at > t_planned]
    timings = {"plan_s": round(t_planned - t_start, 2), "scans_s": round(t_scanned - t_planned, 2),
               "model_load_s": round(loaded_now[0].load_seconds, 2) if loaded_now else 0.0}
    return collect_outputs(scan_dir, out_dir, settings, model_info, jobs, metas, started, mpp, argv, executor,
                           timings)


def prepare_output(out_dir: Path, settings: Settings):
    """Checks before any work: the model (missing or corrupt → refused), permissions, leftovers."""
    from .model import load_model_info

    os.umask(settings.batch.umask_value)
    remove_stale_temporaries(out_dir)
    return load_model_info(resolve_model_path(settings.classification.model))


def collect_outputs(scan_dir: Path, out_dir: Path, settings: Settings, model_info, jobs: list[ScanJob],
                    metas: list[dict[str, Any]], started: dt.datetime, mpp: float | None,
                    argv: list[str] | None, executor: dict[str, Any] | None = None,
                    timings: dict[str, float] | None = None) -> BatchResult:
    """The tables, GeoJSON, provenance and reports, rebuilt from the per-scan results.
    `model_info` is the model checked by `prepare_output`; `executor` describes where the scans
    ran when it was not this process (Dask workers); `timings`: where the run's time went
    (planning incl. hashing the scans, processing them, of which loading the model)."""
    model_path = resolve_model_path(settings.classification.model)
    store = ResultStore(out_dir)
    cell_tables = []
    for job, meta in zip(jobs, metas):
        if meta["status"] != "ok":
            continue
        cells = store.load(job.key)[1].copy()
        cells.insert(0, "scan", job.relative)
        cells.insert(1, "patient_id", job.patient_id)
        cell_tables.append(cells)

    scans = pd.DataFrame(metas).reindex(columns=SCAN_COLUMNS + ["stage"])
    for column in ("n_cells", "n_leukemic", "n_normal", "level", "tiles_read", "tiles_skipped"):
        scans[column] = scans[column].astype("Int64")  # failed scans leave these empty, not NaN floats
    cells = pd.concat(cell_tables, ignore_index=True) if cell_tables else pd.DataFrame(columns=CELL_COLUMNS)
    patients = summarise_patients(scans, cells, settings.aggregation)
    failures = scans[scans["status"] == "failed"].reindex(columns=FAILURE_COLUMNS)

    atomic_write_csv(out_dir / "cells.csv", cells, CELL_COLUMNS)
    atomic_write_csv(out_dir / "scans.csv", scans, SCAN_COLUMNS)
    atomic_write_csv(out_dir / "patients.csv", patients, list(patients.columns))
    atomic_write_csv(out_dir / "failures.csv", failures, FAILURE_COLUMNS)
    for meta in metas:
        if meta["status"] == "ok":
            scan_cells = cells[cells["scan"] == meta["scan"]]
            atomic_write_json(out_dir / "geojson" / f"{safe_filename(meta['scan'])}.geojson", cells_geojson(scan_cells))

    n_failed = int((scans["status"] == "failed").sum())
    n_pending = int((scans["status"] == "pending").sum())
    finished = dt.datetime.now(dt.timezone.utc)
    atomic_write_json(out_dir / "run.json", {
        "run_id": started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6],
        "bcscan_version": __version__, "started": started.isoformat(),
        "finished": finished.isoformat(), "argv": argv or [], "scan_dir": str(Path(scan_dir).resolve()),
        "config": settings.as_dict(), "config_digest": settings.result_digest(mpp),
        "model": {"path": str(model_path), "name": model_info.name, "sha256": model_info.sha256,
                  "input_size": model_info.input_size, "crop_um": model_info.crop_um},
        "device": ("+".join(executor["devices"]) if executor and executor.get("devices")
                   else next((c.engine for c in _classifiers.values()), "not loaded in this process")),
        "executor": executor or {"engine": "in-process"},
        "inputs": [{"scan": m["scan"], "sha256": m.get("sha256", ""), "status": m["status"]} for m in metas],
        "timings": timings or {},
        "counts": {"scans": len(metas), "failed": n_failed, "pending": n_pending, "cells": int(len(cells)),
                   "patients": int(len(patients))},
        "software": software_versions(),
    })
    try:
        write_reports(out_dir, scan_dir, settings.reporting)
    except ReportError as exc:
        log.error("reports: %s", exc)
    exit_code = EXIT_SCANS_FAILED if n_failed else EXIT_OK
    return BatchResult(exit_code, len(metas), n_failed, int(len(cells)), out_dir)


def one_line(message: str) -> str:
    return " ".join(message.split())


def _modified_after(path: Path, timestamp: float) -> bool:
    try:
        paths = list(path.iterdir()) if path.is_dir() else [path]
        return any(p.stat().st_mtime > timestamp for p in paths)
    except OSError:
        return False  # reading it will report the problem


def remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files of a killed run (never under a final name): safe to delete under the lock."""
    for tmp in out_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
