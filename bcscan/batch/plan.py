"""The run object and its plan: every scan below SCAN_DIR with its patient, content hash and
result key, decided before any scan is processed anywhere."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bcscan.batch.settings import Settings
from bcscan.batch.store import content_sha256
from bcscan.results.patients import PatientAssigner
from bcscan.scan.reading import find_scans

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class BatchRun:
    """One `bcscan scan`: what to scan, where to write it and how.  Paths are made absolute:
    a Dask worker on another node has another working folder."""
    scan_dir: Path
    out_dir: Path
    settings: Settings
    mpp: float | None = None                      # µm/px forced on every scan (--mpp)
    force: bool = False                           # recompute scans done by an earlier run
    argv: list[str] = field(default_factory=list)
    progress: Callable[[int], Any] | None = None  # called with 1 as each scan settles

    def __post_init__(self):
        self.scan_dir = Path(self.scan_dir).resolve()
        self.out_dir = Path(self.out_dir).resolve()

    def advance(self) -> None:
        if self.progress is not None:
            self.progress(1)


@dataclass
class ScanJob:
    path: Path
    relative: str
    patient_id: str
    sha256: str = ""
    key: str = ""
    number: str = ""   # "3/12": how logs name a scan (paths may carry patient names)
    outcome: dict[str, Any] | None = None  # settled while planning (pending, duplicate, unreadable)


def plan_batch(run: BatchRun, model_sha: str) -> list[ScanJob]:
    """Every scan below the run's SCAN_DIR with its patient, content hash and result key.  Scans
    that cannot even be hashed, duplicates, scans still being written and manifest rows naming
    no scan are settled here (`job.outcome`), before any work is shared out."""
    settings = run.settings
    assigner = PatientAssigner(settings.patients)
    digest = settings.result_digest(run.mpp)
    found = find_scans(run.scan_dir)
    jobs = [ScanJob(p, p.relative_to(run.scan_dir).as_posix(), "", number=f"{i}/{len(found)}")
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
        jobs.append(ScanJob(run.scan_dir / relative, relative, assigner.manifest[relative], number="manifest",
                            outcome={"status": "failed", "stage": "find",
                                     "error": f"{relative}: listed in the manifest but not found in the scan folder"}))
    return jobs


def _modified_after(path: Path, timestamp: float) -> bool:
    try:
        paths = list(path.iterdir()) if path.is_dir() else [path]
        return any(p.stat().st_mtime > timestamp for p in paths)
    except OSError:
        return False  # reading it will report the problem
