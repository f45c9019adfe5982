"""Where a whole slide is counted: its monolayer, picked on the overview (issue 26 item 4).

A haematologist counts where the red cells lie side by side, neither piled up (the thick end) nor
sparse (the feathered edge).  The overview shows the smear's red-cell mass per area (its area OD); the
slide's own full-resolution tiles say how much area OD one layer of red cells makes
(:func:`bcscan.scan.quality.od_per_cover`), so each tile's overview window reads as a red-cell cover.
Tiles above ``overview_max_cover`` or below ``min_rbc_coverage`` (or with cells, yet the red-cell mass of
glass) are never read; the tiles read are still
judged at full resolution (:func:`bcscan.scan.quality.measure_tile`).  The calibration tiles are those at
the overview's median area OD, the smear's most common state; a slide where none of them is a readable
monolayer is judged tile by tile only.

The area each tile core covers is reported: counted, or excluded as thick, thin or for another quality
reason (a tile failed for several is excluded as thick first, then thin).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from bcscan.scan.quality import (
    CROWDING_REASONS,
    QualityParams,
    TileQuality,
    area_od_of,
    crowding_verdict,
    measure_tile,
    od_per_cover,
    overview_glass,
)
from bcscan.scan.reading import Scan
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.scan.tiling import TilePlan, core_area_um2, read_tile, tile_overview_window

AREA_EXCLUDED = (*CROWDING_REASONS, "quality")
AREA_COLUMNS = ("tiles_excluded_overview", "area_counted_mm2",
                *(f"area_excluded_{reason}_mm2" for reason in AREA_EXCLUDED))


def pick_monolayer(scan: Scan, plan: TilePlan, overview: np.ndarray, seg_params: SegmentationParams,
                   params: QualityParams) -> TilePlan:
    """The plan without the tiles that the overview shows thick or thin (kept in ``overview_excluded``);
    the plan unchanged for a field image, a slide of fewer than ``overview_min_tiles`` tiles, or one that
    cannot be calibrated."""
    if not scan.whole_slide or len(plan.tiles) < params.overview_min_tiles:
        return plan
    glass = overview_glass(overview)
    means = np.array([_window_mean(overview, tile_overview_window(plan, tile, overview.shape)) for tile in plan.tiles])
    area_od = area_od_of(means, glass)
    scale = _calibrate(scan, plan, area_od, seg_params, params)
    if not scale > 0:
        return plan
    _, verdict = crowding_verdict(area_od, scale, params)
    verdict[verdict == "glass"] = "thin"  # cells on a tile whose red-cell mass reads as glass: sparse, not blank
    kept = [tile for tile, v in zip(plan.tiles, verdict) if v not in CROWDING_REASONS]
    excluded = [(tile, str(v)) for tile, v in zip(plan.tiles, verdict) if v in CROWDING_REASONS]
    return replace(plan, tiles=kept, overview_excluded=excluded, od_per_cover=scale)


def _window_mean(overview: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = window
    return overview[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


def _calibrate(scan: Scan, plan: TilePlan, area_od: np.ndarray, seg_params: SegmentationParams,
               params: QualityParams) -> float:
    """Area OD per red-cell layer from the tiles nearest the overview's median area OD (glass left out)
    that are fit to count at full resolution; NaN when none is."""
    content = np.flatnonzero(area_od >= params.overview_glass_od)
    if not len(content):
        return math.nan
    median = float(np.median(area_od[content]))
    nearest = content[np.argsort(np.abs(area_od[content] - median), kind="stable")]
    measured = [_measure(scan, plan, plan.tiles[i], seg_params, params)
                for i in nearest[: params.overview_calibration_tiles]]
    return od_per_cover([q for q in measured if q.ok and "crowding" not in q.not_assessed])


def _measure(scan: Scan, plan: TilePlan, tile, seg_params: SegmentationParams, params: QualityParams) -> TileQuality:
    rgb = read_tile(scan, plan, tile)
    return measure_tile(rgb, segment(rgb, seg_params.working_mpp, seg_params), seg_params, params)


def area_summary(plan: TilePlan, qualities: list[TileQuality]) -> dict[str, float | int]:
    """AREA_COLUMNS of a scan: its tile cores' area (mm²) counted or excluded by reason; `qualities` are
    the read tiles' (plan order).  Blank glass, never read, is in none of them."""
    if len(qualities) != len(plan.tiles):
        raise ValueError(f"{len(qualities)} tile qualities for a plan of {len(plan.tiles)} tiles")
    area = dict.fromkeys(("counted", *AREA_EXCLUDED), 0.0)
    for tile, reason in plan.overview_excluded:
        area[reason] += core_area_um2(plan, tile)
    for tile, quality in zip(plan.tiles, qualities):
        area[_area_reason(quality)] += core_area_um2(plan, tile)
    summary: dict[str, float | int] = {"tiles_excluded_overview": len(plan.overview_excluded)}
    summary["area_counted_mm2"] = round(area.pop("counted") / 1e6, 4)
    summary.update({f"area_excluded_{reason}_mm2": round(um2 / 1e6, 4) for reason, um2 in area.items()})
    return summary


def _area_reason(quality: TileQuality) -> str:
    if quality.ok:
        return "counted"
    return next((reason for reason in CROWDING_REASONS if reason in quality.reasons), "quality")
