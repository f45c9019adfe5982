"""The tables a `bcscan scan` run leaves in OUT_DIR (run.json, cells.csv, scans.csv, patients.csv,
failures.csv, excluded_tiles.csv), read back for the reports."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bcscan.errors import ReportError
from bcscan.results.aggregation import PATIENT_COLUMNS
from bcscan.results.tables import (
    CELL_COLUMNS,
    EXCLUDED_TILE_COLUMNS,
    FAILURE_COLUMNS,
    QUALITY_COLUMNS,
    SCAN_BASE_COLUMNS,
)
from bcscan.results.verification import Verification


@dataclass
class RunData:
    out_dir: Path
    scan_dir: Path | None
    run: dict[str, Any]
    cells: pd.DataFrame
    scans: pd.DataFrame
    patients: pd.DataFrame
    failures: pd.DataFrame
    excluded_tiles: pd.DataFrame   # EXCLUDED_TILE_COLUMNS; no rows from a run made before they were kept
    verifications: dict[str, Verification] = field(default_factory=dict)  # patient → standing sign-off

    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id", "unknown"))

    @property
    def model_crop_um(self) -> float:
        """The side of the crop the model judged each cell on (20 µm for a run that did not record it)."""
        return float((self.run.get("model") or {}).get("crop_um") or 20.0)

    def config(self, section: str) -> dict[str, Any]:
        value = (self.run.get("config") or {}).get(section)
        return value if isinstance(value, dict) else {}


def _read_table(path: Path, columns: list[str], numeric: list[str]) -> pd.DataFrame:
    """A CSV read as text (a patient called "NA" stays "NA"), then its numeric columns converted."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: missing (run `bcscan scan` into this folder first)") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}")
    for column in numeric:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan), errors="coerce")
    return frame


def load_run(out_dir: Path, scan_dir: Path | None = None) -> RunData:
    """The run in `out_dir`; `scan_dir` overrides the scan folder recorded in run.json."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ReportError(f"{out_dir}: not a folder")
    try:
        run = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{out_dir / 'run.json'}: missing (the scan run did not finish)") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{out_dir / 'run.json'}: unreadable ({exc})") from exc
    if not isinstance(run, dict):
        raise ReportError(f"{out_dir / 'run.json'}: not a bcscan run record")
    cells = _read_table(out_dir / "cells.csv", CELL_COLUMNS,
                        ["cell_id", "x", "y", "x0", "y0", "x1", "y1", "area_um2", "p_leukemic"])
    scans = _read_table(out_dir / "scans.csv", SCAN_BASE_COLUMNS,
                        ["n_cells", "n_leukemic", "n_normal", "mpp", "level", "working_mpp", "tiles_read",
                         "tiles_skipped", "seconds", *QUALITY_COLUMNS, "domain_distance", "domain_threshold",
                         "uncertainty", "uncertainty_threshold"])
    patients = _read_table(out_dir / "patients.csv", PATIENT_COLUMNS[:9],
                           ["n_scans", "n_cells", "n_leukemic", "n_normal", "pct_leukemic", "ci_low", "ci_high",
                            "n_scans_failed", "n_scans_outside", "n_scans_low_quality", "uncertainty",
                            "uncertainty_threshold", "verified_cells",
                            "verified_blasts", "verified_pct_blasts"])
    if (out_dir / "failures.csv").is_file():
        failures = _read_table(out_dir / "failures.csv", FAILURE_COLUMNS, [])
    else:
        failures = scans[scans["status"] != "ok"].assign(stage="").reindex(columns=FAILURE_COLUMNS)
    if (out_dir / "excluded_tiles.csv").is_file():
        excluded = _read_table(out_dir / "excluded_tiles.csv", EXCLUDED_TILE_COLUMNS, ["x", "y", "width", "height"])
    else:
        excluded = pd.DataFrame(columns=EXCLUDED_TILE_COLUMNS)
    if scan_dir is None and run.get("scan_dir"):
        scan_dir = Path(run["scan_dir"])
    return RunData(out_dir, Path(scan_dir) if scan_dir else None, run, cells, scans, patients, failures, excluded)
