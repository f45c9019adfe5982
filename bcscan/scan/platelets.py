"""Platelet clumps are not white cells: a test applied to the detections of :func:`segmentation.segment`.

A clump of platelets passes the segmenter's violet test like a nucleus and is as large as a small one,
so no nucleus-area floor drops it without dropping blasts first (benchmarks/README.md, "Detection, leave
one source out"; this test's figures: "Platelet clumps dropped").  What sets it apart is how it looks.  Only
detections that could be a clump are judged:

- a nucleus smaller than ``max_nucleus_area_um2`` (clumps: 13-30 µm²; lymphocytes: 45-80);
- not cut by the image's edge (their surroundings are unknown);
- a granular texture (``min_texture``): violet that varies from pixel to pixel by at least this share of
  its mean, after the variation over a micrometre is taken out.  A clump is a few dark granules in a
  paler body; where a scan is too blurred to show granules (such as the Ghaderzadeh fields) nothing is
  judged, so a blurred blast is never taken for a clump;
- violet that is uneven (``max_even``, the figure ``even`` below): few of its pixels near its darkest.
  The lobes of a pale neutrophil (BCCD) or a lymphocyte's nucleus are evenly dark.

Those are scored with a small logistic model of five figures (FEATURES), measured against the detection
itself or the image's red cells:

- ``log_nucleus_area``: clumps are small;
- ``halo``: the share of a ring 0.4-1.2 µm outside the "nucleus" that is violet too (above half the
  nucleus' median).  A blast or lymphocyte segmented only in part has the rest of its nucleus there;
- ``rim``: the share of that ring that is cell at all (cytoplasm, a red cell touching it); a clump lies
  bare in the plasma;
- ``even``: the share of the nucleus' pixels within 20 % of its 90th percentile of violet: a nucleus is
  evenly dark, a clump's dark granules are few;
- ``log_dark``: the nucleus' mean optical density over the red cells' (median of the cell pixels outside
  nuclei): clumps are paler than the small dense nuclei they resemble (erythroblasts, lymphocytes).

A detection scoring above zero is a clump.  The weights were fitted by ``benchmarks/platelet_clumps.py
--fit`` on every other image of each set and are reported there on the others.  ``log_dark`` carries
the PBC stain (pale clumps, dense erythroblast nuclei) and misleads on others, whose nuclei are paler
than their red cells (BCCD): the ``max_even`` gate is what keeps those cells.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import find_objects

from bcscan.config import check_flags, check_numbers
from bcscan.scan.centres import CentreParams, with_centres
from bcscan.scan.segmentation import (
    Segmentation,
    SegmentationParams,
    collect_cells,
    disk,
    glass_colour,
    optical_density,
    segment,
)

FEATURES = ("log_nucleus_area", "halo", "rim", "even", "log_dark")
"""The figures of one detection that the clump score weighs, in the order of `PlateletParams.weights`."""
RING_UM = (0.4, 1.2)
"""`halo` and `rim` look at a ring this far outside the nucleus: past its blurred edge, about a lymphocyte's rim."""
TEXTURE_SCALE_UM = 1.0
"""`min_texture` measures the violet's variation finer than this (granules are 0.2-1 µm)."""
SAMPLE_STEP = 4
"""The glass colour and the red cells' optical density are taken on every this-many-th pixel along each axis
(about the same values, a sixteenth of the work); the figures of a detection on all its pixels."""


@dataclass(frozen=True)
class PlateletParams:
    """The clump test of :func:`drop_platelet_clumps` (fitted by benchmarks/platelet_clumps.py --fit)."""

    enabled: bool = True
    max_nucleus_area_um2: float = 45.0
    """Only detections whose nucleus is smaller are judged."""
    min_texture: float = 0.20
    """...and whose violet is this granular (std of its fine variation / its mean; Ghaderzadeh's blurred
    blasts: < 0.17, p99; clumps: 0.23-0.46, p5-p95)..."""
    max_even: float = 0.42
    """...and this uneven (`even`, FEATURES; clumps: 0.19-0.39, p5-p95; BCCD neutrophils' lobes: 0.45-0.60)."""
    weights: tuple[float, ...] = (-5.12, -1.12, -6.0, -2.01, -4.12)
    """Logistic weights of FEATURES: a judged detection with bias + weights · features > 0 is a clump."""
    bias: float = 24.54
    """The fit gave 25.09; lowered until no white cell of the fit half is dropped."""

    def __post_init__(self) -> None:
        check_flags(self, "enabled")
        if not isinstance(self.weights, (list, tuple)) or len(self.weights) != len(FEATURES):
            raise ValueError(f"weights must be {len(FEATURES)} numbers ({', '.join(FEATURES)}), got {self.weights!r}")
        object.__setattr__(self, "weights", tuple(self.weights))
        check_numbers(self, "bias", *(f"weights[{i}]" for i in range(len(FEATURES))))
        check_numbers(self, "max_nucleus_area_um2", "min_texture", "max_even", at_least=0)


def clump_features(rgb: np.ndarray, seg: Segmentation, seg_params: SegmentationParams,
                   params: PlateletParams) -> tuple[np.ndarray, np.ndarray]:
    """The labels of the detections judged (small, not cut by the edge, granular, uneven) and their
    FEATURES, one row each; `rgb` is the image `seg` was cut from, at the working resolution."""
    mpp = seg_params.working_mpp
    if seg.cell_labels.shape != rgb.shape[:2]:
        raise ValueError(f"segmentation {seg.cell_labels.shape} does not match the image {rgb.shape[:2]}")
    h, w = seg.cell_labels.shape
    boxes = find_objects(seg.cell_labels)
    candidates = [k for k, c in enumerate(seg.cells, start=1)
                  if 0 < c.nucleus_area_um2 < params.max_nucleus_area_um2
                  and 0 < boxes[k - 1][0].start and boxes[k - 1][0].stop < h
                  and 0 < boxes[k - 1][1].start and boxes[k - 1][1].stop < w]
    if not candidates:
        return np.zeros(0, np.int32), np.zeros((0, len(FEATURES)))
    coarse = np.ascontiguousarray(rgb[::SAMPLE_STEP, ::SAMPLE_STEP])
    glass = glass_colour(coarse, seg_params.background_percentile)
    coarse_od = cv2.transform(optical_density(coarse, seg_params.background_percentile, glass),
                              np.full((1, 3), 1 / 3, np.float32))
    red_cells = coarse_od[(coarse_od > seg_params.foreground_od) & ~seg.nucleus_mask[::SAMPLE_STEP, ::SAMPLE_STEP]]
    red_cell_od = float(np.median(red_cells)) if red_cells.size else seg_params.foreground_od
    inner, outer = disk(RING_UM[0] / mpp), disk(RING_UM[1] / mpp)
    reach = outer.shape[0] // 2 + 2
    judged, rows = [], []
    for k in candidates:
        box = boxes[k - 1]
        roi = (slice(max(box[0].start - reach, 0), box[0].stop + reach),
               slice(max(box[1].start - reach, 0), box[1].stop + reach))
        nucleus = seg.nucleus_mask[roi] & (seg.cell_labels[roi] == k)
        own = nucleus.astype(np.uint8)
        od = optical_density(np.ascontiguousarray(rgb[roi]), seg_params.background_percentile, glass)
        violet = od[..., 1] - od[..., 2]
        values = violet[nucleus]
        even = np.count_nonzero(values >= 0.8 * np.percentile(values, 90)) / values.size
        if even >= params.max_even or _texture(violet, own, mpp) < params.min_texture:
            continue
        ring = (cv2.dilate(own, outer) > 0) & (cv2.dilate(own, inner) == 0)
        judged.append(k)
        rows.append((np.log(values.size * mpp * mpp),
                     np.count_nonzero(violet[ring] > 0.5 * np.median(values)) / max(ring.sum(), 1),
                     np.count_nonzero(od[ring].mean(axis=1) > seg_params.foreground_od) / max(ring.sum(), 1),
                     even,
                     np.log(od[nucleus].mean() / red_cell_od)))
    return np.array(judged, np.int32), np.array(rows, float).reshape(-1, len(FEATURES))


def _texture(violet: np.ndarray, own: np.ndarray, mpp: float) -> float:
    """How granular the violet of a nucleus (`own`, uint8 mask) is: the std of its variation finer than
    TEXTURE_SCALE_UM over its mean, inside the nucleus' blurred edge."""
    inside = cv2.erode(own, disk(RING_UM[0] / mpp)) > 0
    if np.count_nonzero(inside) < 3:
        inside = own > 0
    fine = violet - cv2.GaussianBlur(violet, (0, 0), TEXTURE_SCALE_UM / mpp)
    return float(fine[inside].std() / max(violet[inside].mean(), 1e-3))


def clump_scores(features: np.ndarray, params: PlateletParams) -> np.ndarray:
    """The logistic score of each row of `features` (> 0: a platelet clump)."""
    return params.bias + features @ np.asarray(params.weights)


def white_cells(rgb: np.ndarray, seg_params: SegmentationParams, platelets: PlateletParams | None,
                centres: CentreParams | None = None) -> Segmentation:
    """The detections of `rgb` (at the working resolution): :func:`segment`, reconciled with the learnt
    centres given `centres` (`scan.centres`), then the clump test unless `platelets` is None (the scan
    pipeline runs these apart, measuring the tile's quality on segment()'s cells)."""
    seg = segment(rgb, seg_params.working_mpp, seg_params)
    if centres is not None:
        seg = with_centres(rgb, seg, seg_params.working_mpp, centres)
    return seg if platelets is None else drop_platelet_clumps(rgb, seg, seg_params, platelets)


def drop_platelet_clumps(rgb: np.ndarray, seg: Segmentation, seg_params: SegmentationParams,
                         params: PlateletParams) -> Segmentation:
    """`seg` of `rgb` at the working resolution, without the detections that are platelet clumps (cells
    renumbered as :func:`segment` numbers them)."""
    if not params.enabled:
        return seg
    tested, features = clump_features(rgb, seg, seg_params, params)
    clumps = tested[clump_scores(features, params) > 0]
    if not len(clumps):
        return seg
    drop = np.zeros(len(seg.cells) + 1, bool)
    drop[clumps] = True
    return collect_cells(np.where(drop[seg.cell_labels], 0, seg.cell_labels), seg.nucleus_mask, seg_params.working_mpp)
