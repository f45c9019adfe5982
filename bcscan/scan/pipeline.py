"""Scanning one scan end to end: read → tile → segment → crop → classify.

`cells_in_field` is the same path for a single field image; `bcscan train`
(cells mode) uses it so that training crops are cut exactly as scan crops.  Scans then
reconcile the cells with the learnt centres (`scan.centres`) and drop platelet clumps
(`scan.platelets`); training crops skip both for now, as their caches are keyed on
SegmentationParams alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd

from bcscan.errors import ModelError, ScanError, StageError
from bcscan.scan.appearance import FEATURES, crop_appearance, scan_appearance
from bcscan.scan.centres import CentreParams, with_centres
from bcscan.scan.counting_area import area_summary, pick_monolayer
from bcscan.scan.crops import crop_cells, crop_side_px, resize_crops
from bcscan.scan.platelets import PlateletParams, drop_platelet_clumps
from bcscan.scan.quality import QualityParams, TileQuality, measure_tile, summarise_quality
from bcscan.scan.reading import Scan, resample
from bcscan.scan.segmentation import Segmentation, SegmentationParams, segment
from bcscan.scan.single_cell import centre_cell_only
from bcscan.scan.tiling import Tile, TilePlan, TilingParams, plan_tiles, read_overview, read_tile


class Classifier(Protocol):
    """What a scan needs of the model (`model.classifier.CellClassifier`): the scan stages sit below
    the model and only call it."""
    info: Any     # model.network.ModelInfo: crop_um, input_size
    params: Any   # model.classifier.ClassificationParams: batch_size, threshold

    def predict(self, crops: np.ndarray) -> np.ndarray: ...


@dataclass
class FieldCells:
    segmentation: Segmentation   # at params.working_mpp
    image: np.ndarray            # the field resampled to params.working_mpp
    centres: np.ndarray          # (n, 2) cell centres (x, y) in `image`
    crops: np.ndarray            # uint8, one crop per cell, cut from `image`


def cells_in_field(rgb: np.ndarray, mpp: float, params: SegmentationParams, crop_um: float) -> FieldCells:
    """Segment a whole field image and cut one crop of `crop_um` µm around every white cell."""
    work = resample(rgb, mpp, params.working_mpp)
    seg = segment(work, params.working_mpp, params)
    centres = np.array([(c.x, c.y) for c in seg.cells], dtype=np.float64).reshape(-1, 2)
    crops = crop_cells(work, centres, crop_side_px(crop_um, params.working_mpp))
    return FieldCells(seg, work, centres, crops)


CELL_RESULT_COLUMNS = ["cell_id", "x", "y", "x0", "y0", "x1", "y1", "area_um2", "label", "p_leukemic"]
EXCLUDED_TILE_RESULT_COLUMNS = ["x", "y", "width", "height", "reasons"]
"""One row per tile not counted: its core in level-0 pixels and its failed checks
(quality.REASONS, as `measure_tile` lists them) joined by REASON_SEPARATOR."""
REASON_SEPARATOR = "+"


@dataclass
class ScanCells:
    cells: pd.DataFrame     # CELL_RESULT_COLUMNS, level-0 pixel coordinates
    scan_mpp: float
    level: int
    working_mpp: float
    tiles_read: int
    tiles_skipped: int
    quality: dict[str, float | int]   # scan.quality.summarise_quality: tiles excluded per reason, median figures
    appearance: np.ndarray | None     # scan.appearance: median over the counted cells (None without cells)
    excluded_tiles: pd.DataFrame      # EXCLUDED_TILE_RESULT_COLUMNS: where the scan was not counted, and why


@dataclass
class TileCells:
    """The cells a tile owns: what a tile worker hands to the classifier."""
    geometry: np.ndarray    # float64 (n, 7): x, y, x0, y0, x1, y1 in level-0 pixels, area in µm²
    crops: np.ndarray       # uint8 (n, S, S, 3) at the model's input size
    appearance: np.ndarray  # float32 (n, len(appearance.FEATURES)): how each crop looks
    quality: TileQuality    # the tile's quality; a tile unfit to count hands over no cell

    def without_crops(self) -> TileCells:
        """What a scan keeps of a tile once its crops went to the model (a slice would keep them alive)."""
        return replace(self, crops=np.zeros((0, *self.crops.shape[1:]), np.uint8))


def plan_scan(scan: Scan, seg_params: SegmentationParams, tiling: TilingParams, crop_um: float,
              quality: QualityParams) -> TilePlan:
    """The tiles to read: not blank glass and, on a whole slide, in its monolayer; refused when the read
    margin cannot hold a whole crop."""
    if tiling.margin_um < crop_um / 2:
        raise StageError("tile", f"tiling.margin_um ({tiling.margin_um}) must be at least half the model's crop "
                                 f"({crop_um} µm)")
    try:
        overview = read_overview(scan, tiling)
        plan = plan_tiles(scan, seg_params.working_mpp, tiling, overview)
    except ScanError as exc:
        raise StageError("read", str(exc)) from exc
    try:
        return pick_monolayer(scan, plan, overview, seg_params, quality)
    except ScanError as exc:
        raise StageError("read", str(exc)) from exc
    except Exception as exc:
        raise StageError("segment", f"{scan.path}: judging the overview failed ({type(exc).__name__}: {exc})") from exc


def tile_cells(scan: Scan, plan: TilePlan, tile: Tile, seg_params: SegmentationParams, crop_um: float,
               input_size: int, quality: QualityParams, platelets: PlateletParams = PlateletParams(),
               centres: CentreParams = CentreParams()) -> TileCells:
    """Read, segment, check and crop one tile: the cells whose centre lies in its core, crops resized
    for the model; none when the tile is unfit to count (blurred, badly stained, thick, ...).  Quality
    is judged on every detection of the colour rules, as its thresholds were set; on fields and slides
    these are then reconciled with the learnt centres (`scan.centres`), and platelet clumps dropped."""
    try:
        rgb = read_tile(scan, plan, tile)
    except ScanError as exc:
        raise StageError("read", str(exc)) from exc
    try:
        seg = segment(rgb, seg_params.working_mpp, seg_params)
    except Exception as exc:
        raise StageError("segment", f"{scan.path}: segmentation failed in tile {tile.core} "
                                    f"({type(exc).__name__}: {exc})") from exc
    tile_quality = measure_tile(rgb, seg, seg_params, quality)
    if scan.single_cell:
        seg = centre_cell_only(rgb, seg, image_centre(scan, plan, tile), min(scan.level_dimensions[0]) / plan.to_level0,
                               seg_params, platelets)
    else:
        try:
            seg = with_centres(rgb, seg, seg_params.working_mpp, centres)
        except ModelError:
            raise
        except Exception as exc:
            raise StageError("segment", f"{scan.path}: finding the cell centres failed in tile {tile.core} "
                                        f"({type(exc).__name__}: {exc})") from exc
        seg = drop_platelet_clumps(rgb, seg, seg_params, platelets)
    return owned_cells(rgb, seg, plan, tile, crop_side_px(crop_um, seg_params.working_mpp), input_size, tile_quality)


def image_centre(scan: Scan, plan: TilePlan, tile: Tile) -> tuple[float, float]:
    """The centre of the scan's level 0 in the pixels of `tile`'s read window."""
    w, h = scan.level_dimensions[0]
    return w / 2 / plan.to_level0 - tile.read[0], h / 2 / plan.to_level0 - tile.read[1]


def owned_cells(rgb: np.ndarray, seg: Segmentation, plan: TilePlan, tile: Tile, crop_side: int,
                input_size: int, tile_quality: TileQuality) -> TileCells:
    """The segmented cells of a tile's read window whose centre lies in its core, with their crops
    (none when the tile's quality failed)."""
    rx, ry = tile.read[0], tile.read[1]
    owned = [c for c in seg.cells if tile.owns(c.x + rx, c.y + ry)] if tile_quality.ok else []
    offset = np.array([rx, ry, rx, ry, rx, ry], dtype=np.float64)
    geometry = np.array([(c.x, c.y, c.x0, c.y0, c.x1, c.y1, c.area_um2) for c in owned], dtype=np.float64).reshape(-1, 7)
    geometry[:, :6] = (geometry[:, :6] + offset) * plan.to_level0
    centres = np.array([(c.x, c.y) for c in owned], dtype=np.float64).reshape(-1, 2)
    crops = resize_crops(crop_cells(rgb, centres, crop_side), input_size)
    return TileCells(geometry, crops, crop_appearance(crops), tile_quality)


def scan_result(plan: TilePlan, scan_mpp: float, tiles: list[TileCells], p_leukemic: np.ndarray,
                threshold: float) -> ScanCells:
    """A scan's result from its tiles' cells (in tile order) and their p_leukemic, however the tiles
    were processed."""
    geometry = np.concatenate([t.geometry for t in tiles]) if tiles else np.zeros((0, 7))
    appearance = np.concatenate([t.appearance for t in tiles]) if tiles else np.zeros((0, len(FEATURES)))
    qualities = [t.quality for t in tiles]
    return ScanCells(cells_table(geometry, p_leukemic, threshold), scan_mpp, plan.level, plan.working_mpp,
                     len(plan.tiles), plan.skipped, summarise_quality(qualities) | area_summary(plan, qualities),
                     scan_appearance(appearance), excluded_tiles_table(plan, tiles))


def excluded_tiles_table(plan: TilePlan, tiles: list[TileCells]) -> pd.DataFrame:
    """The tiles not counted, so a report can show where and why: those unfit to count (`tiles` in the
    plan's tile order), then those the overview showed thick or thin; cores in level-0 pixels, rounded
    outwards."""
    if len(tiles) != len(plan.tiles):
        raise ValueError(f"{len(tiles)} tile results for a plan of {len(plan.tiles)} tiles")
    unfit = [(tile, REASON_SEPARATOR.join(found.quality.reasons)) for tile, found in zip(plan.tiles, tiles)
             if not found.quality.ok]
    rows = []
    for tile, reasons in unfit + plan.overview_excluded:
        x0, y0, x1, y1 = (np.array(tile.core, dtype=np.float64) * plan.to_level0).tolist()
        x, y = int(np.floor(x0)), int(np.floor(y0))
        rows.append((x, y, int(np.ceil(x1)) - x, int(np.ceil(y1)) - y, reasons))
    return pd.DataFrame(rows, columns=EXCLUDED_TILE_RESULT_COLUMNS)


def cells_table(geometry: np.ndarray, p_leukemic: np.ndarray, threshold: float) -> pd.DataFrame:
    """One row per cell, numbered in tile order (the same order however the tiles were processed)."""
    geometry = np.asarray(geometry, dtype=np.float64).reshape(-1, 7)
    p = np.asarray(p_leukemic, dtype=np.float64)
    return pd.DataFrame({
        "cell_id": np.arange(1, len(geometry) + 1),
        "x": np.round(geometry[:, 0], 1),
        "y": np.round(geometry[:, 1], 1),
        "x0": np.floor(geometry[:, 2]).astype(np.int64),
        "y0": np.floor(geometry[:, 3]).astype(np.int64),
        "x1": np.ceil(geometry[:, 4]).astype(np.int64),
        "y1": np.ceil(geometry[:, 5]).astype(np.int64),
        "area_um2": np.round(geometry[:, 6], 1),
        "label": np.where(p >= threshold, "leukemic", "normal"),
        "p_leukemic": np.round(p, 4),
    }, columns=CELL_RESULT_COLUMNS)


def scan_cells(scan: Scan, seg_params: SegmentationParams, tiling: TilingParams, classifier: Classifier,
               quality: QualityParams, platelets: PlateletParams = PlateletParams(),
               centres: CentreParams = CentreParams()) -> ScanCells:
    """Find and classify every white cell of a scan, tile by tile in this process, each cell once.

    Crops are classified in groups of several batches while tiles stream in, so
    memory holds at most a few batches of crops whatever the slide size.
    (`batch.executors.pipelined` does the same with tiles in worker processes.)
    """
    info = classifier.info
    plan = plan_scan(scan, seg_params, tiling, info.crop_um, quality)
    tiles: list[TileCells] = []
    pending_crops: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    flush_at = classifier.params.batch_size * 4

    def flush():
        if pending_crops:
            try:
                probabilities.append(classifier.predict(np.concatenate(pending_crops)))
            except Exception as exc:
                raise StageError("classify", f"{scan.path}: classification failed ({type(exc).__name__}: {exc})") from exc
            pending_crops.clear()

    for tile in plan.tiles:
        found = tile_cells(scan, plan, tile, seg_params, info.crop_um, info.input_size, quality, platelets,
                           centres)
        if len(found.crops):
            pending_crops.append(found.crops)
        tiles.append(found.without_crops())
        if sum(len(c) for c in pending_crops) >= flush_at:
            flush()
    flush()

    p = np.concatenate(probabilities) if probabilities else np.zeros(0, np.float32)
    return scan_result(plan, scan.mpp, tiles, p, classifier.params.threshold)
