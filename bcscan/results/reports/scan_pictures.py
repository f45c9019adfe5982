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


def scan_pictures(data: RunData, scan_row: pd.Series, cells: pd.DataFrame, gallery: pd.DataFrame,
                  params: ReportingParams, crop_um: float, want_thumbnail: bool) -> ScanPicture:
    """Open one scan once: its marked thumbnail, with the tiles not counted for quality hatched where
    the run recorded them all, and the gallery crops that lie on it."""
    import cv2

    from bcscan.errors import ScanError
    from bcscan.scan.reading import ReadingParams, open_scan

    scan = str(scan_row["scan"])
    if data.scan_dir is None:
        return ScanPicture(None, 0.0, "scan folder unknown: no picture", {})
    path = data.scan_dir / scan
    if not path.exists():
        return ScanPicture(None, 0.0, f"scan file not found at {path}: pictures omitted", {})
    mpp = scan_row.get("mpp")
    mpp = float(mpp) if mpp is not None and not pd.isna(mpp) and float(mpp) > 0 else None
    try:
        reading = ReadingParams(**data.config("reading"))
    except (TypeError, ValueError):
        reading = ReadingParams()
    excluded = data.excluded_tiles[data.excluded_tiles["scan"] == scan]
    if len(excluded) != as_int(scan_row.get("tiles_low_quality")):
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
        with open_scan(path, reading, mpp=mpp) as handle:
            thumb, bar_um, shares = None, 0.0, None
            if want_thumbnail:
                raw = handle.thumbnail(params.thumbnail_px)
                thumb, bar_um = marked_thumbnail(raw, cells, handle.dimensions[0], handle.mpp, excluded)
                if excluded is not None:
                    shares = excluded_shares(excluded, float(handle.dimensions[0]) * float(handle.dimensions[1]))
            crops = {}
            side = max(8, int(round(crop_um / handle.mpp)))
            for row in gallery.itertuples(index=False):
                region = handle.read(0, int(round(row.x)) - side // 2, int(round(row.y)) - side // 2, side, side)
                crop = cv2.resize(region, (params.crop_px, params.crop_px),
                                  interpolation=cv2.INTER_AREA if side > params.crop_px else cv2.INTER_LINEAR)
                crops[(scan, int(row.cell_id))] = crop
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
