"""Pictures read from the scans: each scan opened once for its marked thumbnail and the gallery
crops that lie on it.  A scan that cannot give them (not found, unreadable) gets a note instead."""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bcscan.results.reports.formatting import as_int
from bcscan.results.reports.params import ReportingParams
from bcscan.results.reports.pictures import excluded_shares, marked_thumbnail
from bcscan.results.reports.run_data import RunData

log = logging.getLogger("bcscan")


@dataclass
class ScanPicture:
    thumb: np.ndarray | None
    bar_um: float
    note: str
    crops: dict[tuple[str, int], np.ndarray]
    excluded_shares: list[tuple[str, int, float]] | None = None
    """pictures.excluded_shares of the tiles hatched on `thumb`; None where they are not drawn."""


def open_recorded_scan(data: RunData, scan_row: pd.Series):
    """The scan of a scans.csv row, opened as the run read it (its reading settings and scale), so
    that cells.csv's level-0 positions fall on the same pixels.  Raises ScanError or OSError."""
    from bcscan.scan.reading import ReadingParams, open_scan

    mpp = scan_row.get("mpp")
    mpp = float(mpp) if mpp is not None and not pd.isna(mpp) and float(mpp) > 0 else None
    try:
        reading = ReadingParams(**data.config("reading"))
    except (TypeError, ValueError):
        reading = ReadingParams()
    return open_scan(data.scan_dir / str(scan_row["scan"]), reading, mpp=mpp)


def cell_crop(handle, x: float, y: float, crop_um: float, crop_px: int) -> np.ndarray:
    """A `crop_um`-wide square of the scan centred on level-0 (x, y), resized to `crop_px`: the cell
    at the physical size the model judged it, for the report's gallery and the review screen."""
    import cv2

    side = max(8, int(round(crop_um / handle.mpp)))
    region = handle.read(0, int(round(x)) - side // 2, int(round(y)) - side // 2, side, side)
    return cv2.resize(region, (crop_px, crop_px), interpolation=cv2.INTER_AREA if side > crop_px else cv2.INTER_LINEAR)


def scan_pictures(data: RunData, scan_row: pd.Series, cells: pd.DataFrame, gallery: pd.DataFrame,
                  params: ReportingParams, crop_um: float, want_thumbnail: bool) -> ScanPicture:
    """Open one scan once: its marked thumbnail, with the tiles not counted for quality hatched where
    the run recorded them all, and the gallery crops that lie on it."""
    from bcscan.errors import ScanError

    scan = str(scan_row["scan"])
    if data.scan_dir is None:
        return ScanPicture(None, 0.0, "scan folder unknown: no picture", {})
    path = data.scan_dir / scan
    if not path.exists():
        return ScanPicture(None, 0.0, f"scan file not found at {path}: pictures omitted", {})
    excluded = data.excluded_tiles[data.excluded_tiles["scan"] == scan]
    if len(excluded) != as_int(scan_row.get("tiles_low_quality")) + as_int(scan_row.get("tiles_excluded_overview")):
        excluded = None  # a result stored before excluded tiles were kept: counted, but not drawn
    note = ""
    finished = str(data.run.get("finished", ""))
    try:
        mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
        if finished and mtime > dt.datetime.fromisoformat(finished):
            note = "scan file modified after the run: pictures may not match the counts"
    except (OSError, ValueError):
        pass
    try:
        with open_recorded_scan(data, scan_row) as handle:
            thumb, bar_um, shares = None, 0.0, None
            if want_thumbnail:
                raw = handle.thumbnail(params.thumbnail_px)
                thumb, bar_um = marked_thumbnail(raw, cells, handle.dimensions[0], handle.mpp, excluded)
                if excluded is not None:
                    shares = excluded_shares(excluded, float(handle.dimensions[0]) * float(handle.dimensions[1]))
            crops = {(scan, int(row.cell_id)): cell_crop(handle, row.x, row.y, crop_um, params.crop_px)
                     for row in gallery.itertuples(index=False)}
            return ScanPicture(thumb, bar_um, note, crops, shares)
    except Exception as exc:  # pictures are optional: a scan that cannot give them gets a note
        log.warning("report pictures of %s: %s", scan, exc)
        reason = str(exc) if isinstance(exc, ScanError) else f"{type(exc).__name__}: {exc}"
        return ScanPicture(None, 0.0, f"scan could not be opened for pictures: {reason}", {})


def patient_pictures(data: RunData, scans: pd.DataFrame, cells: pd.DataFrame, gallery: pd.DataFrame,
                     params: ReportingParams, crop_um: float) -> dict[str, ScanPicture]:
    """scan → its pictures, for each read scan of a patient that is pictured (one of the first
    `max_scan_sections`) or holds a gallery cell.  `scans` is indexed 0, 1, ... in report order."""
    pictures: dict[str, ScanPicture] = {}
    for i, row in scans.iterrows():
        scan = str(row["scan"])
        if row["status"] != "ok":
            continue
        scan_cells = cells[cells["scan"] == scan]
        want = i < params.max_scan_sections
        mine = gallery[gallery["scan"] == scan]
        if want or len(mine):
            pictures[scan] = scan_pictures(data, row, scan_cells, mine, params, crop_um, want)
    return pictures
