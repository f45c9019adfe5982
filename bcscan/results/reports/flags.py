"""How a patient's flag is shown: its headline and colours, and the reason in the patient's own numbers."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import pandas as pd

from bcscan.results.aggregation import (
    FLAG_INCOMPLETE,
    FLAG_INSUFFICIENT,
    FLAG_LOW_QUALITY,
    FLAG_NEGATIVE,
    FLAG_OUTSIDE,
    FLAG_REVIEW,
    AggregationParams,
    is_uncertain,
    patient_flags,
)
from bcscan.results.reports.formatting import as_int, fmt_num

# flag → (headline, text/border colour, background colour); the summary lists the flags in this order
FLAG_TEXT = {
    FLAG_REVIEW: ("Leukemic cells detected — review recommended", "#c62828", "#fdecea"),
    FLAG_INCOMPLETE: ("Incomplete: a scan failed or is pending — no negative call can be made", "#8a5a00",
                      "#fff4e0"),
    FLAG_OUTSIDE: ("Outside the validated range (stain, scanner or cells the model is unsure of) — review; no "
                   "negative call", "#8a5a00", "#fff4e0"),
    FLAG_LOW_QUALITY: ("Insufficient quality: too little of the smear fit to count — no negative call", "#8a5a00",
                       "#fff4e0"),
    FLAG_INSUFFICIENT: ("Insufficient cells for a reliable count — no negative call", "#8a5a00", "#fff4e0"),
    FLAG_NEGATIVE: ("Negative: leukemic cells below the review threshold", "#1b5e20", "#e8f5e9"),
}


def every_flag(patient: pd.Series, agg: dict[str, Any]) -> list[str]:
    """Every flag that holds for the patient, in patients.csv's order of precedence (its `flag` first)."""
    known = {f.name for f in fields(AggregationParams)}
    try:
        params = AggregationParams(**{k: v for k, v in agg.items() if k in known})
    except (TypeError, ValueError):
        params = AggregationParams()
    flags = patient_flags(as_int(patient["n_cells"]), as_int(patient["n_leukemic"]),
                          as_int(patient.get("n_scans_failed")), params, as_int(patient.get("n_scans_outside")),
                          as_int(patient.get("n_scans_low_quality")), patient_uncertain(patient))
    shown = str(patient["flag"])
    return [shown] + [f for f in flags if f != shown]


def patient_uncertain(patient: pd.Series) -> bool:
    """Whether the certainty check over all the patient's cells called them outside (older runs lack it)."""
    return is_uncertain(patient.get("uncertainty"), patient.get("uncertainty_threshold"))


def flag_reason(flag: str, patient: pd.Series, agg: dict[str, Any]) -> str:
    """Why this flag, in the patient's own numbers."""
    n, pct = as_int(patient["n_cells"]), fmt_num(patient["pct_leukemic"])
    threshold, min_cells = agg.get("review_threshold_pct", "?"), agg.get("min_cells", "?")
    failed = as_int(patient.get("n_scans_failed"))
    if flag == FLAG_REVIEW:
        return f"{pct} % of {n:,} cells are called leukemic, at or above the review threshold of {threshold} %."
    if flag == FLAG_INCOMPLETE:
        counted = (f"the {n:,} cells counted ({pct} % leukemic) do not support a negative call" if n
                   else "no cells were counted")
        return f"{failed} scan(s) of this patient gave no result (see below); {counted}."
    if flag == FLAG_OUTSIDE:
        outside = as_int(patient.get("n_scans_outside"))
        reasons = ([f"The cells of {outside} scan(s) look unlike those the model was validated on (stain colour or "
                    "strength, background or sharpness, or calls less certain than there; see below)."] if outside
                   else [])
        if patient_uncertain(patient):
            reasons.append(f"Over all {n:,} cells of this patient the model is less certain than on any lab it was "
                           f"validated on (mean entropy of its calls {fmt_num(patient.get('uncertainty'), 3)} bits; "
                           f"outside above {fmt_num(patient.get('uncertainty_threshold'), 3)}).")
        return " ".join(reasons + [f"Its calls are not reliable here ({pct} % of {n:,} cells called leukemic). "
                                   "Review the smear."])
    if flag == FLAG_LOW_QUALITY:
        return (f"{as_int(patient.get('n_scans_low_quality'))} scan(s) had too little area fit to count (blurred, "
                f"badly stained, too thick or too thin; see below); {n:,} cells were counted there. A new scan or "
                "smear is advised.")
    if flag == FLAG_INSUFFICIENT:
        return (f"Only {n:,} cells were found; at least {min_cells} are needed for a negative call. "
                "A new smear or a manual differential is advised.")
    if flag == FLAG_NEGATIVE:
        return f"{pct} % of {n:,} cells are called leukemic, below the review threshold of {threshold} %."
    return ""
