"""Per-patient counts, the 95 % Wilson interval of the leukemic fraction, and the flag."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bcscan.config import check_numbers
from bcscan.model.domain import uncertainty_verdict

PATIENT_COLUMNS = ["patient_id", "n_scans", "n_cells", "n_leukemic", "n_normal", "pct_leukemic",
                   "ci_low", "ci_high", "flag", "n_scans_failed", "n_scans_outside", "n_scans_low_quality",
                   "uncertainty", "uncertainty_threshold"]

FLAG_REVIEW = "review: leukemic cells detected"
FLAG_INSUFFICIENT = "insufficient cells"
FLAG_INCOMPLETE = "incomplete: a scan failed or is pending"
FLAG_OUTSIDE = "review: outside the validated range"  # stain, scanner, or cells the model is unsure of
FLAG_LOW_QUALITY = "insufficient quality"
FLAG_NEGATIVE = "negative"


@dataclass(frozen=True)
class AggregationParams:
    review_threshold_pct: float = 5.0  # % leukemic cells at or above which a patient is flagged for review
    min_cells: int = 50                # fewer cells: no negative call is made

    def __post_init__(self):
        check_numbers(self, "review_threshold_pct", above=0, at_most=100)
        check_numbers(self, "min_cells", at_least=1)


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (scipy); stays inside [0, 1] and is sane for small n."""
    if n == 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def patient_flag(n_cells: int, n_leukemic: int, n_failed: int, params: AggregationParams, n_outside: int = 0,
                 n_low_quality: int = 0, uncertain: bool = False) -> str:
    """A positive signal is always shown; a negative call needs every scan read, each inside the range
    the model was validated on and fit to count, the model as certain on the patient's cells as on its
    validation labs, and enough cells."""
    return patient_flags(n_cells, n_leukemic, n_failed, params, n_outside, n_low_quality, uncertain)[0]


def patient_flags(n_cells: int, n_leukemic: int, n_failed: int, params: AggregationParams, n_outside: int = 0,
                  n_low_quality: int = 0, uncertain: bool = False) -> list[str]:
    """Every flag that holds, the one patients.csv shows first; [negative] when none does."""
    holds = [(FLAG_REVIEW, n_cells and 100.0 * n_leukemic / n_cells >= params.review_threshold_pct),
             (FLAG_INCOMPLETE, n_failed), (FLAG_OUTSIDE, n_outside or uncertain),
             (FLAG_LOW_QUALITY, n_low_quality), (FLAG_INSUFFICIENT, n_cells < params.min_cells)]
    return [flag for flag, held in holds if held] or [FLAG_NEGATIVE]


def pooled_certainty(reference: dict[str, Any] | None, p_leukemic: np.ndarray) -> tuple[float | None, float | None]:
    """(mean entropy, threshold) of the certainty check (`bcscan.model.domain.uncertainty_verdict`) over all of a
    patient's cells; the threshold (the one fitted for that many cells) only where it judged them.  A patient
    whose cells come as many small field images, none with enough cells to be judged alone, is judged here."""
    _, mean, threshold = uncertainty_verdict(reference or {}, p_leukemic)
    return mean, threshold


def is_uncertain(uncertainty: float | None, threshold: float | None) -> bool:
    """Whether a recorded certainty check called the cells outside (the threshold is recorded only where it judged)."""
    return bool(pd.notna(threshold) and pd.notna(uncertainty) and uncertainty > threshold)


def summarise_patients(scans: pd.DataFrame, cells: pd.DataFrame, params: AggregationParams,
                       certainty_reference: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per patient from the per-scan table (all scans, failed and pending ones too) and the
    cell table; `n_scans_failed` counts the scans without a result (failed or pending),
    `n_scans_outside` those whose cells look unlike the model's validated range, `n_scans_low_quality`
    those with too little area fit to count; `uncertainty` is the certainty check over all the patient's
    cells (`certainty_reference`: the model's, see `pooled_certainty`)."""
    rows = []
    for patient, group in scans.groupby("patient_id", sort=True):
        ok = group[group["status"] == "ok"]
        patient_cells = cells[cells["patient_id"] == patient]
        n = len(patient_cells)
        k = int((patient_cells["label"] == "leukemic").sum())
        low, high = wilson_interval(k, n)
        failed = int((group["status"] != "ok").sum())
        outside = int((ok.get("domain") == "outside").sum()) if "domain" in ok else 0
        low_quality = int((ok.get("quality") == "insufficient").sum()) if "quality" in ok else 0
        uncertainty, threshold = pooled_certainty(certainty_reference, patient_cells["p_leukemic"].to_numpy())
        rows.append({
            "patient_id": patient,
            "n_scans": len(ok),
            "n_cells": n,
            "n_leukemic": k,
            "n_normal": n - k,
            "pct_leukemic": round(100.0 * k / n, 2) if n else 0.0,
            "ci_low": round(100.0 * low, 2),
            "ci_high": round(100.0 * high, 2),
            "flag": patient_flag(n, k, failed, params, outside, low_quality, is_uncertain(uncertainty, threshold)),
            "n_scans_failed": failed,
            "n_scans_outside": outside,
            "n_scans_low_quality": low_quality,
            "uncertainty": uncertainty,
            "uncertainty_threshold": threshold,
        })
    return pd.DataFrame(rows, columns=PATIENT_COLUMNS)
