"""Single-cell images: exports of a cell analyser (CellaVision and the like) and the single-cell training sets,
where each image is centred on the one white cell it was taken for.  Only that cell counts: the neighbours cut
by the image edge are other images' cells, and a cell that fills the image, which the segmenter may miss, is
still the cell the image names.  Training, `bcscan evaluate` and `bcscan scan --single-cell-images` choose it
the same way, so the model is judged on the cells it will be given.
"""
from __future__ import annotations

import numpy as np

from bcscan.scan.platelets import PlateletParams, drop_platelet_clumps
from bcscan.scan.segmentation import CellDetection, Segmentation, SegmentationParams, collect_cells

CENTRE_TOLERANCE = 0.25  # a detection is the image's cell within this × the image's shorter side of its centre


def centre_index(centres: np.ndarray, middle: tuple[float, float], tolerance_px: float) -> int | None:
    """The detection nearest `middle` when within `tolerance_px` of it, else None."""
    if not len(centres):
        return None
    dist = np.hypot(*(np.asarray(centres, np.float64) - np.asarray(middle)).T)
    k = int(np.argmin(dist))
    return k if dist[k] <= tolerance_px else None


def centre_cell(centres: np.ndarray, shape: tuple[int, ...], tolerance: float = CENTRE_TOLERANCE) -> np.ndarray:
    """The (x, y) of the labelled cell of a single-cell image: the detected cell nearest the image centre when
    it lies within `tolerance` × the shorter side of it, else the centre itself."""
    h, w = shape[:2]
    k = centre_index(centres, (w / 2, h / 2), tolerance * min(h, w))
    return np.asarray(centres, np.float64)[k:k + 1] if k is not None else np.array([[w / 2, h / 2]])


def centre_cell_only(rgb: np.ndarray, seg: Segmentation, middle: tuple[float, float], shorter_side_px: float,
                     seg_params: SegmentationParams, platelets: PlateletParams) -> Segmentation:
    """`seg` of `rgb` reduced to the image's own cell: the detection nearest `middle` (the image centre in
    `rgb`'s pixels) unless it is a platelet clump, or, with no detection near the centre, a detection of the
    centre itself (area unknown), as `centre_cell` crops it."""
    centres = np.array([(c.x, c.y) for c in seg.cells], np.float64).reshape(-1, 2)
    half = CENTRE_TOLERANCE * shorter_side_px
    k = centre_index(centres, middle, half)
    if k is None:
        x, y = middle
        centre = CellDetection(x=float(x), y=float(y), x0=int(x - half), y0=int(y - half), x1=int(x + half) + 1,
                               y1=int(y + half) + 1, area_um2=float("nan"), nucleus_area_um2=float("nan"))
        return Segmentation([centre], np.zeros_like(seg.cell_labels), np.zeros_like(seg.nucleus_mask))
    own = np.where(seg.cell_labels == k + 1, seg.cell_labels, 0)
    return drop_platelet_clumps(rgb, collect_cells(own, seg.nucleus_mask, seg_params.working_mpp), seg_params,
                                platelets)
