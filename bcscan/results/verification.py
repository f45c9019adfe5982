"""What a reviewer verified: the labels a person may give a cell, the verified counts of a patient,
and the verified columns of patients.csv.

Plain data only.  The review store (`bcscan.review`) records the decisions and fills a
`Verification` per signed-off patient; the tables and the PDF print it, so the results never read
the review database themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bcscan.results.aggregation import wilson_interval

BLAST = "blast"
UNSURE = "unsure"
NOT_A_WHITE_CELL = "not a white cell"
WHITE_CELL_LABELS = (BLAST, "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "other white cell")
REVIEW_LABELS = WHITE_CELL_LABELS + (NOT_A_WHITE_CELL, UNSURE)
MODEL_LABELS = {"leukemic": BLAST}   # a model call a sign-off accepts as it stands: leukemic counts as a blast

# the reviewer's verified conclusion (key → patients.csv verified_flag)
CONCLUSIONS = {
    "positive": "verified: blasts confirmed",
    "negative": "verified: no blasts",
    "inconclusive": "verified: inconclusive, new smear or manual differential",
}
UNVERIFIED = "unverified"
VERIFIED_COLUMNS = ["verified_by", "verified_at", "verified_cells", "verified_blasts", "verified_pct_blasts",
                    "verified_flag"]


@dataclass(frozen=True)
class Reclassification:
    """One cell whose label a reviewer changed from the model's call."""
    scan: str
    cell_id: int
    model_label: str     # the model's call: leukemic / normal
    label: str           # the reviewer's label, one of REVIEW_LABELS
    reviewer: str
    decided_at: str


@dataclass(frozen=True)
class VerifiedCounts:
    n_cells: int          # white cells after review (cells marked "not a white cell" left out)
    n_blasts: int
    ci_low: float         # 95 % Wilson interval of the blast fraction, %
    ci_high: float

    @property
    def pct_blasts(self) -> float:
        return round(100.0 * self.n_blasts / self.n_cells, 2) if self.n_cells else 0.0


@dataclass(frozen=True)
class Verification:
    """A patient's sign-off, as the report prints it."""
    patient_id: str
    reviewer: str
    signed_at: str
    counts: VerifiedCounts
    conclusion: str       # a key of CONCLUSIONS
    comment: str = ""
    reclassified: tuple[Reclassification, ...] = field(default_factory=tuple)


def verified_counts(model_labels: pd.Series, review_labels: pd.Series) -> VerifiedCounts:
    """Blasts among the white cells of one patient: a cell's reviewed label where it has one, else the
    model's call accepted (leukemic = blast, normal = a white cell that is not a blast).  Both series
    are aligned, one entry per cell; a review label is None/NaN where the cell was not reviewed."""
    reviewed = review_labels.notna()
    white = ~reviewed | review_labels.isin(WHITE_CELL_LABELS)
    blast = (reviewed & (review_labels == BLAST)) | (~reviewed & (model_labels.map(MODEL_LABELS) == BLAST))
    n, k = int(white.sum()), int((white & blast).sum())
    low, high = wilson_interval(k, n)
    return VerifiedCounts(n, k, round(100.0 * low, 2), round(100.0 * high, 2))


def changes_the_call(model_label: str, label: str) -> bool:
    """Whether a review label changes what the model's call counted: a leukemic call not confirmed as a
    blast, or a normal call found to be a blast or no white cell at all (naming a normal cell's type does not)."""
    if MODEL_LABELS.get(model_label) == BLAST:
        return label != BLAST
    return label in (BLAST, NOT_A_WHITE_CELL, UNSURE)


def with_verified_columns(patients: pd.DataFrame, verifications: dict[str, Verification]) -> pd.DataFrame:
    """patients.csv with VERIFIED_COLUMNS set from the sign-offs: empty and `unverified` for a patient
    nobody has signed off, so an unverified result reads as one."""
    table = patients.drop(columns=VERIFIED_COLUMNS, errors="ignore").copy()
    rows = [_verified_row(verifications.get(str(pid))) for pid in table["patient_id"]]
    verified = pd.DataFrame(rows, columns=VERIFIED_COLUMNS, index=table.index)
    verified[["verified_cells", "verified_blasts"]] = verified[["verified_cells", "verified_blasts"]].astype("Int64")
    return pd.concat([table, verified], axis=1)


def _verified_row(v: Verification | None) -> dict:
    if v is None:
        return {"verified_flag": UNVERIFIED}
    return {"verified_by": v.reviewer, "verified_at": v.signed_at, "verified_cells": v.counts.n_cells,
            "verified_blasts": v.counts.n_blasts, "verified_pct_blasts": v.counts.pct_blasts,
            "verified_flag": CONCLUSIONS[v.conclusion]}
