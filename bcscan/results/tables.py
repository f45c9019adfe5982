"""Everything bcscan writes, written atomically, with stable column orders.

A file appears under its final name only complete: it is written to a
temporary name in the same folder, flushed to disk, then renamed.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd

from bcscan.scan.counting_area import AREA_COLUMNS
from bcscan.scan.pipeline import EXCLUDED_TILE_RESULT_COLUMNS
from bcscan.scan.quality import SUMMARY_COLUMNS as QUALITY_COLUMNS

CELL_COLUMNS = ["scan", "patient_id", "cell_id", "x", "y", "x0", "y0", "x1", "y1", "area_um2", "label", "p_leukemic"]
SCAN_BASE_COLUMNS = ["scan", "patient_id", "status", "n_cells", "n_leukemic", "n_normal", "mpp", "level",
                     "working_mpp", "tiles_read", "tiles_skipped", "seconds", "sha256", "error"]  # every version's
SCAN_CHECK_COLUMNS = ["quality", *QUALITY_COLUMNS, "domain", "domain_distance",  # since 0.2: fit to count, validated
                      "domain_threshold", "uncertainty", "uncertainty_threshold",  # range, the model's certainty,
                      *AREA_COLUMNS]                                               # where it was counted
SCAN_COLUMNS = SCAN_BASE_COLUMNS[:11] + SCAN_CHECK_COLUMNS + SCAN_BASE_COLUMNS[11:]
COUNT_COLUMNS = ["n_cells", "n_leukemic", "n_normal", "level", "tiles_read", "tiles_skipped"] + \
    [c for c in (*QUALITY_COLUMNS, *AREA_COLUMNS) if c.startswith("tiles_")]  # whole numbers, empty for a scan without a result
FAILURE_COLUMNS = ["scan", "stage", "error"]
EXCLUDED_TILE_COLUMNS = ["scan", "patient_id", *EXCLUDED_TILE_RESULT_COLUMNS]  # where a scan was not counted
CLASS_COLOURS = {"leukemic": [220, 30, 30], "normal": [30, 120, 220]}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; honour the configured umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
    buffer = io.StringIO()
    frame.reindex(columns=columns).to_csv(buffer, index=False, lineterminator="\n")
    atomic_write_text(path, buffer.getvalue())


def safe_filename(name: str, max_len: int = 120) -> str:
    """A name that is one harmless path component whatever a patient ID or scan path contains."""
    text = unicodedata.normalize("NFKC", str(name))
    text = re.sub(r"[^\w.\-]+", "_", text, flags=re.UNICODE).strip("._") or "unnamed"
    return text[:max_len]


def cells_geojson(cells: pd.DataFrame) -> dict[str, Any]:
    """QuPath-compatible detections: one box per cell, class and probability as properties."""
    features = []
    for row in cells.itertuples(index=False):
        x0, y0, x1, y1 = int(row.x0), int(row.y0), int(row.x1), int(row.y1)
        features.append({
            "type": "Feature",
            "id": f"cell-{int(row.cell_id)}",
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {
                "objectType": "detection",
                "name": f"cell {int(row.cell_id)}",
                "classification": {"name": row.label, "color": CLASS_COLOURS.get(row.label, [128, 128, 128])},
                # JSON has no NaN: a cell taken at a single-cell image's centre, unsegmented, has no area
                "measurements": {"p_leukemic": float(row.p_leukemic),
                                 **({"area_um2": float(row.area_um2)} if pd.notna(row.area_um2) else {})},
            },
        })
    return {"type": "FeatureCollection", "features": features}
