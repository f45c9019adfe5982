"""Per-patient figures: Wilson intervals against published values, flags, patient assignment."""
from __future__ import annotations

import pandas as pd
import pytest

from bcscan.errors import PatientError
from bcscan.results.aggregation import (
    FLAG_INCOMPLETE,
    FLAG_INSUFFICIENT,
    FLAG_NEGATIVE,
    FLAG_OUTSIDE,
    FLAG_REVIEW,
    AggregationParams,
    summarise_patients,
    wilson_interval,
)
from bcscan.results.patients import PatientAssigner, PatientParams


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 0.2775),      # Wilson 95 % for 0/10 (Newcombe 1998, table I style values)
    (1, 10, 0.0179, 0.4042),
    (5, 10, 0.2366, 0.7634),
    (81, 263, 0.2553, 0.3662),  # Newcombe 1998 example 81/263
    (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_matches_reference_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_patient_table_counts_and_flags():
    scans = pd.DataFrame({"scan": ["a", "b", "c", "d", "e"], "patient_id": ["P1", "P1", "P2", "P3", "P4"],
                          "status": ["ok", "ok", "ok", "ok", "failed"]})
    labels = {"a": ["leukemic"] * 10 + ["normal"] * 40, "b": ["normal"] * 50, "c": ["normal"] * 20,
              "d": ["normal"] * 100}
    cells = pd.DataFrame([{"scan": s, "patient_id": scans.set_index("scan").at[s, "patient_id"], "label": lab,
                           "p_leukemic": 0.98 if lab == "leukemic" else 0.02}
                          for s, labs in labels.items() for lab in labs])
    table = summarise_patients(scans, cells, AggregationParams(review_threshold_pct=5, min_cells=50)).set_index("patient_id")
    assert table.loc["P1", ["n_scans", "n_cells", "n_leukemic", "n_normal"]].tolist() == [2, 100, 10, 90]
    assert table.loc["P1", "pct_leukemic"] == 10.0
    assert table.loc["P1", "ci_low"] == pytest.approx(5.52, abs=0.01) and table.loc["P1", "ci_high"] == pytest.approx(17.44, abs=0.01)
    assert table["flag"].to_dict() == {"P1": FLAG_REVIEW, "P2": FLAG_INSUFFICIENT, "P3": FLAG_NEGATIVE,
                                       "P4": FLAG_INCOMPLETE}
    assert table.loc["P4", ["n_scans", "n_cells", "n_scans_failed"]].tolist() == [0, 0, 1]
    assert table["uncertainty_threshold"].isna().all()  # no certainty reference: nothing judged


def test_certainty_pooled_over_a_patient_judges_fields_too_small_alone():
    """Twenty 5-cell fields: none reaches the 50 cells a scan needs to be judged, the patient's 100 do.  Calls at
    p = 0.3 (0.881 bits) are outside a 0.5-bit threshold, calls at p = 0.02 (0.141 bits) inside."""
    reference = {"threshold": 0.5, "scan_cells": 50, "quantile": 0.995}
    scans = pd.DataFrame({"scan": [f"{p}/f{i}.png" for p in ("P1", "P2", "P3") for i in range(20)],
                          "patient_id": [p for p in ("P1", "P2", "P3") for _ in range(20)], "status": "ok"})
    cells = pd.DataFrame([{"scan": scan, "patient_id": patient, "label": "normal",
                           "p_leukemic": {"P1": 0.3, "P2": 0.02, "P3": 0.3}[patient]}
                          for scan, patient in zip(scans["scan"], scans["patient_id"])
                          for _ in range(5 if patient != "P3" else 2)])
    table = summarise_patients(scans, cells, AggregationParams(min_cells=50), reference).set_index("patient_id")
    assert table["flag"].to_dict() == {"P1": FLAG_OUTSIDE, "P2": FLAG_NEGATIVE, "P3": FLAG_INSUFFICIENT}
    assert table.loc["P1", "uncertainty"] == pytest.approx(0.8813, abs=1e-4)
    assert table.loc["P2", "uncertainty"] == pytest.approx(0.1414, abs=1e-4)
    assert table.loc[["P1", "P2"], "uncertainty_threshold"].tolist() == [0.5, 0.5]
    assert pd.isna(table.loc["P3", "uncertainty_threshold"])  # 40 cells: fewer than the check was fitted on


def test_patient_assignment_order(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("scan,patient_id\nward/x1.svs,PX\n")
    assigner = PatientAssigner(PatientParams(manifest=str(manifest), filename_pattern=r"(?P<patient>P\d+)_"))
    assert assigner.patient_of("ward/x1.svs") == "PX"             # manifest first
    assert assigner.patient_of("ward/P17_a.svs") == "P17"         # then the pattern
    assert assigner.patient_of("ward/other.svs") == "ward"        # then the folder
    assert assigner.patient_of("lonely.slide.svs") == "lonely.slide"  # top level: the scan itself
    assert assigner.missing_from_manifest({"ward/P17_a.svs"}) == ["ward/x1.svs"]


def test_bad_manifest_and_pattern_are_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,patient\na,b\n")
    with pytest.raises(PatientError, match="scan,patient_id"):
        PatientAssigner(PatientParams(manifest=str(bad)))
    conflict = tmp_path / "conflict.csv"
    conflict.write_text("scan,patient_id\na.svs,P1\na.svs,P2\n")
    with pytest.raises(PatientError, match="two patients"):
        PatientAssigner(PatientParams(manifest=str(conflict)))
    with pytest.raises(ValueError, match="patient"):
        PatientParams(filename_pattern=r"(\d+)")
