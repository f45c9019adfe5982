"""One scan's outcome, the same whichever executor computed it: its scans.csv row, its stored
result, and the model loaded once per process to compute it."""
from __future__ import annotations

import logging
import time
from typing import Any

from bcscan.batch.plan import BatchRun, ScanJob
from bcscan.batch.store import ResultStore
from bcscan.errors import BcscanError, ConfigError, ModelError, describe_failure
from bcscan.model.classifier import CellClassifier, ClassificationParams
from bcscan.model.domain import combined_verdict, domain_verdict, uncertainty_verdict
from bcscan.model.network import ModelInfo
from bcscan.scan.pipeline import ScanCells, scan_cells
from bcscan.scan.quality import readable
from bcscan.scan.reading import open_scan

log = logging.getLogger("bcscan")

_classifiers: dict[ClassificationParams, CellClassifier] = {}


def classifier_for(params: ClassificationParams) -> CellClassifier:
    """One loaded model per process (TensorFlow and the model load once, on first real work)."""
    if params not in _classifiers:
        _classifiers[params] = CellClassifier(params)
    return _classifiers[params]


def loaded_classifier(params: ClassificationParams) -> CellClassifier | None:
    """The model this process loaded for `params`, if it did."""
    return _classifiers.get(params)


def model_load_seconds(params: ClassificationParams, since: float) -> float:
    """Seconds this process spent loading the model for `params` (0 when it was loaded before `since`)."""
    classifier = _classifiers.get(params)
    return 0.0 if classifier is None or classifier.loaded_at < since else round(classifier.load_seconds, 2)


def settled_meta(job: ScanJob, run: BatchRun) -> dict[str, Any] | None:
    """The row of a scan that needs no work now: settled while planning, or done by an earlier run."""
    base = {"scan": job.relative, "patient_id": job.patient_id}
    if job.outcome is not None:
        if job.outcome["status"] == "pending":
            log.info("scan %s pending: still being written", job.number)
        else:
            log.error("scan %s failed at stage %s (details in failures.csv)", job.number, job.outcome["stage"])
        return {**base, **job.outcome}
    if not run.force:
        stored = ResultStore(run.out_dir).load(job.key)
        if stored is not None and stored.meta.get("status") == "ok":
            log.info("scan %s reused (%d cells)", job.number, len(stored.cells))
            return {**stored.meta, **base}
    return None


def process_scan(job: ScanJob, run: BatchRun) -> dict[str, Any]:
    """Compute one scan in this process and store its result; returns its scans.csv row.
    Never raises for a bad scan: it becomes a failed row."""
    t0 = time.perf_counter()
    settings = run.settings
    try:
        classifier = classifier_for(settings.classification)
        with open_scan(job.path, settings.reading, mpp=run.mpp) as scan:
            result = scan_cells(scan, settings.segmentation, settings.tiling, classifier, settings.quality,
                                settings.platelets, settings.centres)
        meta = ok_meta(job, result, classifier.info, run)
    except (ConfigError, ModelError):
        raise  # the model cannot run here (e.g. --device gpu without a GPU): nothing can run
    except Exception as exc:  # noqa: BLE001 - one scan must never stop the batch
        if not isinstance(exc, BcscanError):
            log.debug("scan %s failed", job.number, exc_info=exc)
        meta, result = failed_meta(job, *describe_failure(exc, str(job.path))), None
    return store_scan(job, run, meta, result, t0)


def ok_meta(job: ScanJob, result: ScanCells, model_info: ModelInfo, run: BatchRun) -> dict[str, Any]:
    """scans.csv row of a scan done: counts, scale, tiles, quality figures, and whether its cells look
    like those the model was validated on and its calls on them are as certain as there (`domain`)."""
    labels = result.cells["label"]
    stain, distance = domain_verdict(model_info.domain, result.appearance)
    certainty, uncertainty, certainty_threshold = uncertainty_verdict(model_info.domain.get("uncertainty"),
                                                                      result.cells["p_leukemic"])
    fit = readable(result.quality, run.settings.quality)
    return {"scan": job.relative, "patient_id": job.patient_id, "status": "ok", "sha256": job.sha256,
            "mpp": round(result.scan_mpp, 5), "level": result.level, "working_mpp": result.working_mpp,
            "tiles_read": result.tiles_read, "tiles_skipped": result.tiles_skipped, "n_cells": len(result.cells),
            "n_leukemic": int((labels == "leukemic").sum()), "n_normal": int((labels == "normal").sum()),
            "quality": "ok" if fit else "insufficient", **result.quality, "domain": combined_verdict(stain, certainty),
            "domain_distance": distance, "uncertainty": uncertainty,
            "uncertainty_threshold": certainty_threshold, "error": ""}


def failed_meta(job: ScanJob, stage: str, message: str) -> dict[str, Any]:
    """scans.csv row of a failed scan; the message names the scan by its path relative to SCAN_DIR."""
    return {"scan": job.relative, "patient_id": job.patient_id, "status": "failed", "stage": stage,
            "sha256": job.sha256, "error": one_line(message.replace(str(job.path), job.relative))}


def store_scan(job: ScanJob, run: BatchRun, meta: dict[str, Any], result: ScanCells | None,
               t0: float) -> dict[str, Any]:
    """Store a scan's row and result (None for a failed scan; complete once its json is written) and
    log the outcome; returns the row."""
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    log.debug("scan %s is %s", job.number, job.relative)
    ResultStore(run.out_dir).save(job.key, meta, result)
    if meta["status"] == "ok":
        log.info("scan %s done: %d cells in %.1f s", job.number, meta["n_cells"], meta["seconds"])
    else:
        log.error("scan %s failed at stage %s (details in failures.csv)", job.number, meta["stage"])
    return meta


def one_line(message: str) -> str:
    return " ".join(message.split())
