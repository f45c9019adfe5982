"""One patient's slice of the run, and what every section of their report reads from it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from bcscan.results.reports.layout import styles, text_width
from bcscan.results.reports.params import ReportingParams
from bcscan.results.reports.run_data import RunData


@dataclass
class PatientView:
    data: RunData
    patient: pd.Series            # the patient's row of patients.csv
    params: ReportingParams
    pid: str
    cells: pd.DataFrame           # the patient's cells
    scans: pd.DataFrame           # the patient's scans, indexed 0, 1, ... in report order
    scan_ids: dict[str, str]      # scan → its short name in the report: S1, S2, ...
    model: dict[str, Any]         # run.json's model record
    threshold: float              # p_leukemic at which a cell is called leukemic
    agg: dict[str, Any]           # the run's aggregation settings (review threshold, min cells)
    crop_um: float                # side of a gallery crop
    st: dict[str, Any]            # paragraph styles
    width: float                  # text width, points

    @classmethod
    def of(cls, data: RunData, patient: pd.Series, params: ReportingParams) -> PatientView:
        pid = str(patient["patient_id"])
        scans = data.scans[data.scans["patient_id"] == pid].reset_index(drop=True)
        model = data.run.get("model") or {}
        return cls(
            data=data, patient=patient, params=params, pid=pid,
            cells=data.cells[data.cells["patient_id"] == pid], scans=scans,
            scan_ids={str(s): f"S{i + 1}" for i, s in enumerate(scans["scan"])},
            model=model, threshold=float(data.config("classification").get("threshold", 0.5)),
            agg=data.config("aggregation"), crop_um=params.crop_um or data.model_crop_um,
            st=styles(), width=text_width())
