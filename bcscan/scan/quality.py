"""Per-tile quality figures of a blood-smear tile, measured at the segmenter's working scale.

`measure_tile(rgb, seg, seg_params, params)` takes a tile already resampled to
``SegmentationParams.working_mpp`` and the :class:`Segmentation` that
:func:`bcscan.scan.segmentation.segment` computed for it (nothing is segmented
twice) and returns a :class:`TileQuality`: a few figures and the reasons, if
any, why the tile is unfit to count.  Every size is in µm, every colour in
optical density (natural log, relative to this tile's glass), so one parameter
set serves any scan.  The thresholds and the measurements behind them are in
``benchmarks/quality_thresholds.py`` and ``benchmarks/README.md``.

Figures:

- **focus**: ``edge_sigma_um``, the Gaussian blur of the cell edges in µm,
  from the ratio of the gradient at the pixel scale to the gradient after a
  known 1 µm smoothing, taken at the strongest edge ridges.  The ratio does
  not depend on the edges' contrast, so a pale stain is not read as blur.  A
  sharp step reads 0; an edge blurred by σ reads ≈ 0.8 σ on real fields.
- **stain**: ``nucleus_od`` (90th percentile OD of the segmented nuclei, mean
  of R, G and B: their core, which stays put when a fade shrinks the
  segmenter's masks to it or an over-stain grows them into the cytoplasm; on
  a tile without any, of the nucleus-sized violet blobs too faint for the
  segmenter's floor, so a fade cannot hide its own nuclei) and ``rbc_od``
  (median OD of the red-cell area: robust to the odd nucleus the segmenter
  missed, which would otherwise count as red cell), both absolute;
  ``glass_brightness`` (0-255, mean of R, G, B of the glass).
- **crowding** (red cells, outside the white cells): ``rbc_coverage`` (share
  of the area that red cells cover), ``glass_fraction`` (share of bare glass
  left between them: ~0 in a thick area where cells pile up) and
  ``overlap_fraction`` (share of red-cell area darker than 1.7 × the median
  red cell: two cells on top of each other).
- **clipping**: ``clipped_fraction``, the share of the cells' pixels (green OD
  > 0.08) with a channel at 254-255: over-exposure that erases pale detail.

Reasons are short stable strings (``REASONS``).  A measure that cannot be
judged on a tile (no edge, no cell, too small an area) is listed in
``not_assessed`` instead and never fails the tile.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from bcscan.config import check_numbers
from bcscan.scan.segmentation import Segmentation, SegmentationParams, disk, red_cell_level

# reason -> the figures that raise it: (TileQuality figure, QualityParams threshold, +1 = above it / -1 = below it).
# measure_tile() and the benchmark that states how far past each threshold a degraded field went both read it.
THRESHOLDS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "blur": (("edge_sigma_um", "max_edge_sigma_um", 1),),
    "faint_stain": (("nucleus_od", "min_nucleus_od", -1), ("rbc_od", "min_rbc_od", -1)),
    "dark_stain": (("nucleus_od", "max_nucleus_od", 1), ("rbc_od", "max_rbc_od", 1)),
    "dark_background": (("glass_brightness", "min_glass_brightness", -1),),
    "thick": (("glass_fraction", "min_glass_fraction", -1),),
    "thin": (("rbc_coverage", "min_rbc_coverage", -1),),
    "clipped": (("clipped_fraction", "max_clipped_fraction", 1),),
}
REASONS = tuple(THRESHOLDS)
CROWDING_REASONS = ("thick", "thin")
MEASURES = ("focus", "stain", "crowding", "clipping")

_SOBEL_SIGMA2_PX = 0.55   # squared Gaussian σ (px²) that the 3x3 Sobel + pixel grid add to a step (fitted on drawn steps)
FOCUS_WINDOW_PX = 512     # focus is measured on the tile's central square of this side


@dataclass(frozen=True)
class QualityParams:
    """Thresholds of :func:`measure_tile`; sizes in µm / µm², colours in optical density (ln, vs glass)."""

    # --- focus
    max_edge_sigma_um: float = 0.6
    """blur: the cell edges' Gaussian σ above this (a sharp field reads 0-0.3 µm at 0.4 µm/px)."""
    min_edge_gradient: float = 0.008
    """Edges weaker than this (fraction of the glass brightness per µm, after 1 µm smoothing) are noise."""
    min_edge_px: int = 20
    """Fewer edge-ridge pixels than this: focus not assessed."""
    # --- stain (absolute: see the benchmark for what each means per lab)
    min_nucleus_od: float = 0.18
    """faint_stain: nuclei paler than this (90th percentile ln OD, mean of R, G, B; untouched labs here 0.18-3.72)."""
    max_nucleus_od: float = 4.0
    """dark_stain: nuclei darker than this (transmittance under 2 %).  Labs differ: lmu-aml-blood's neutrophils
    and lymphocytes read up to 3.72 (PBC's 1.4), its blasts paler; a threshold inside a lab's normal range drops
    its tiles with normal cells and keeps those with blasts."""
    faint_nucleus_violet: float = 0.08
    """Where the segmenter found no nucleus: pixels this violet (OD green - OD blue, and the segmenter's contrast
    over the red cells) in blobs of at least faint_nucleus_area_um2 are nuclei too faint for it (stain figure only)."""
    faint_nucleus_area_um2: float = 20.0
    """...a faded small lymphocyte's worth (BCCD's keep 21-30 µm² above the violet floor). A single platelet stays
    under it; a platelet clump may not, but its dense core reads far from faint (0.32 on the real smear)."""
    min_rbc_od: float = 0.075
    """faint_stain: red cells (median OD of the red-cell area) paler than this (untouched fields here >= 0.08)."""
    max_rbc_od: float = 0.7
    """dark_stain: red cells darker than this (untouched <= 0.64)."""
    min_glass_brightness: float = 130.0
    """dark_background: glass darker than this (0-255; under-exposed or stained background)."""
    # --- crowding
    crowding_min_area_um2: float = 2500.0
    """Crowding is judged only on this much area outside white cells (≈ 50 red cells' worth); less: not assessed."""
    crowding_min_rbc_um2: float = 250.0
    """...and at least this much red-cell area (≈ 6 red cells); bare glass is not assessed, not thin."""
    glass_od: float = 0.04
    """Pixels within this OD of the glass are bare glass."""
    cell_od: float = 0.03
    """Red-cell pixels: OD above this and above cell_od_relative × the tile's 95th percentile OD."""
    cell_od_relative: float = 0.25
    min_glass_fraction: float = 0.04
    """thick: less bare glass than this between the red cells (they pile up; untouched fields here >= 0.046)."""
    min_rbc_coverage: float = 0.12
    """thin: red cells cover less than this share of the area (feathered edge)."""
    overview_max_cover: float = 1.5
    """thick on a low-resolution overview: red-cell mass per area above this × one full layer."""
    overview_glass_od: float = 0.01
    """Overview blocks with an area OD under this are bare glass (neither thick nor thin: nothing to count)."""
    overview_min_tiles: int = 16
    """Scans with fewer tiles to read are judged tile by tile only: the counting area is picked on the overview
    of a whole slide, not of a field the microscopist already chose."""
    overview_calibration_tiles: int = 3
    """Full-resolution tiles read to calibrate the overview (its area OD per red-cell layer)."""
    overlap_factor: float = 1.7
    """Red-cell pixels darker than this × the median red-cell OD count as overlap (reported only)."""
    # --- clipping
    clip_level: int = 254
    max_clipped_fraction: float = 0.3
    """clipped: more than this share of the cells' pixels have a channel at clip_level or above."""
    # --- the scan as a whole
    min_readable_fraction: float = 0.25
    """insufficient quality: fewer of the scan's tiles than this fit to count (a smear's thick end and feathered
    edge are normally excluded; a scan that is mostly blurred or badly stained is not counted at all)."""

    def __post_init__(self) -> None:
        check_numbers(self, *(f.name for f in fields(self)), at_least=0)
        for lo, hi in (("min_nucleus_od", "max_nucleus_od"), ("min_rbc_od", "max_rbc_od")):
            if getattr(self, lo) >= getattr(self, hi):
                raise ValueError(f"{lo} must be < {hi}")
        check_numbers(self, "min_glass_fraction", "min_rbc_coverage", "max_clipped_fraction", "cell_od_relative",
                      "min_readable_fraction", at_most=1)
        check_numbers(self, "clip_level", at_least=1, at_most=255)


@dataclass(frozen=True)
class TileQuality:
    """Quality figures of one tile (NaN where not measurable) and why it failed, if it did."""

    edge_sigma_um: float
    nucleus_od: float
    rbc_od: float
    glass_brightness: float
    area_od: float                    # -ln(mean transmittance), mean of R, G, B: red-cell mass per area
    rbc_coverage: float
    glass_fraction: float
    overlap_fraction: float
    clipped_fraction: float
    area_um2: float                   # tile area outside white cells
    reasons: tuple[str, ...] = ()     # failed checks (REASONS); empty = fit to count
    not_assessed: tuple[str, ...] = ()  # MEASURES that could not be judged on this tile

    @property
    def ok(self) -> bool:
        return not self.reasons


def _sample(values: np.ndarray, n: int = 20000) -> np.ndarray:
    """Every k-th value: percentiles of a large array at a fraction of the cost, the same to ~1 %."""
    return values[:: max(values.size // n, 1)]


def _gradient(a: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy) * 0.125  # Sobel's 8 -> intensity per pixel


def edge_sigma_px(green: np.ndarray, glass_green: float, mpp: float, min_gradient: float,
                  min_px: int) -> float:
    """Gaussian σ (px) of the strongest edges of a float32 image; NaN with fewer than `min_px` edge pixels.

    At an edge blurred by σ, the peak gradient falls as 1/√(σ² + d²) after a smoothing of d; the ratio
    r of the gradient before and after a d = 1 µm smoothing gives σ² = d² / (r² - 1) - (Sobel's own σ²).
    """
    d = 1.0 / mpp
    fine = _gradient(green)
    coarse = _gradient(cv2.GaussianBlur(green, (0, 0), d))
    k3 = np.ones((3, 3), np.uint8)
    floor = max(min_gradient * glass_green * mpp, 0.2 * float(np.percentile(_sample(coarse.ravel()), 99.0)))
    ridge = (coarse >= 0.9 * cv2.dilate(coarse, k3)) & (coarse >= floor) & (coarse > 0)  # at or next to a ridge
    if int(ridge.sum()) < min_px:
        return float("nan")
    r = float(np.median(cv2.dilate(fine, k3)[ridge] / coarse[ridge]))
    if r <= 1.0:
        return float("inf")
    return math.sqrt(max(d * d / (r * r - 1.0) - _SOBEL_SIGMA2_PX, 0.0))


def measure_tile(rgb: np.ndarray, seg: Segmentation, seg_params: SegmentationParams,
                 params: QualityParams | None = None) -> TileQuality:
    """Quality of one tile: `rgb` (HxWx3 uint8) at ``seg_params.working_mpp`` and its segmentation."""
    p = params or QualityParams()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if seg.cell_labels.shape != rgb.shape[:2]:
        raise ValueError(f"segmentation {seg.cell_labels.shape} does not match the tile {rgb.shape[:2]}: "
                         "segment the tile at working_mpp and pass both")
    mpp = seg_params.working_mpp
    skipped: list[str] = []
    h, w = rgb.shape[:2]

    # Area figures on every other pixel of a large tile (same statistics, a quarter of the work).
    step = 2 if h * w >= 512 * 512 else 1
    small = np.ascontiguousarray(rgb[::step, ::step])
    spx = mpp * step                       # µm per pixel of `small`

    # Glass = mean colour of the brightest 3 %.
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    bright = (grey >= np.percentile(_sample(grey.ravel()), 97.0)).view(np.uint8)
    glass = np.array(cv2.mean(small, mask=bright)[:3]) + 1.0
    glass_brightness = float(glass.mean() - 1.0)
    area_od = float(np.mean(np.log(glass / (np.array(cv2.mean(small)[:3]) + 1.0))))

    # Focus, on the central FOCUS_WINDOW_PX square (focus changes slowly across a tile; 4x cheaper on 1024²).
    y0, x0 = max(0, (h - FOCUS_WINDOW_PX) // 2), max(0, (w - FOCUS_WINDOW_PX) // 2)
    green = rgb[y0:y0 + FOCUS_WINDOW_PX, x0:x0 + FOCUS_WINDOW_PX, 1].astype(np.float32)
    edge_sigma_um = edge_sigma_px(green, float(glass[1]), mpp, p.min_edge_gradient, p.min_edge_px) * mpp
    if math.isnan(edge_sigma_um):
        skipped.append("focus")

    levels = np.arange(256, dtype=np.float32) + 1.0
    lut = np.maximum(np.log(glass[None, :] / levels[:, None]), 0.0).astype(np.float32)
    od = cv2.LUT(small, lut.reshape(256, 1, 3))
    od_mean = cv2.transform(od, np.full((1, 3), 1.0 / 3.0, np.float32))
    wbc = (seg.cell_labels[::step, ::step] > 0).astype(np.uint8)
    nucleus = seg.nucleus_mask[::step, ::step]

    # Red cells: everything absorbing, outside the white cells (and a 1 µm halo around them).
    outside = cv2.dilate(wbc, disk(1.0 / spx)) == 0
    n_outside = cv2.countNonZero(outside.view(np.uint8))
    area_um2 = n_outside * spx * spx
    rbc_od = rbc_coverage = glass_fraction = overlap = float("nan")
    if n_outside:
        p95 = float(np.percentile(_sample(od_mean[outside]), 95.0))
        rbc = (od_mean > max(p.cell_od, p.cell_od_relative * p95)) & outside
        n_rbc = cv2.countNonZero(rbc.view(np.uint8))
        rbc_coverage = n_rbc / n_outside
        glass_px = (od_mean < p.glass_od).view(np.uint8)
        if step == 1:
            glass_px = cv2.morphologyEx(glass_px, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))  # lone noisy pixels
        glass_fraction = cv2.countNonZero(glass_px & outside.view(np.uint8)) / n_outside
        if n_rbc >= 50:
            rbc_values = _sample(od_mean[rbc])
            rbc_od = float(np.median(rbc_values))
            overlap = float(np.count_nonzero(rbc_values > p.overlap_factor * rbc_od) / rbc_values.size)

    # Stain. A fade pushes nuclei under the segmenter's violet floor: with none segmented, look for faint ones.
    nucleus_values = od_mean[nucleus] if nucleus.any() else _faint_nucleus_values(od, od_mean, seg_params, p, spx)
    nucleus_od = float(np.percentile(nucleus_values, 90.0)) if nucleus_values.size else float("nan")
    if math.isnan(nucleus_od) and math.isnan(rbc_od):
        skipped.append("stain")

    # Crowding: needs enough area to hold a few dozen red cells, and a few red cells (bare glass: nothing to judge).
    if (area_um2 < p.crowding_min_area_um2 or math.isnan(glass_fraction)
            or rbc_coverage * area_um2 < p.crowding_min_rbc_um2):
        skipped.append("crowding")

    # Clipping: cells' pixels (green OD > 0.08) with a saturated channel.
    cells = od[..., 1] > 0.08
    n_cells = cv2.countNonZero(cells.view(np.uint8))
    if n_cells >= 50:
        r, g, b = cv2.split(small)
        top = cv2.max(cv2.max(r, g), b)
        clipped_fraction = cv2.countNonZero(((top >= p.clip_level) & cells).view(np.uint8)) / n_cells
    else:
        clipped_fraction = float("nan")
        skipped.append("clipping")

    figures = dict(edge_sigma_um=edge_sigma_um, nucleus_od=nucleus_od, rbc_od=rbc_od, glass_brightness=glass_brightness,
                   area_od=area_od, rbc_coverage=rbc_coverage, glass_fraction=glass_fraction, overlap_fraction=overlap,
                   clipped_fraction=clipped_fraction, area_um2=area_um2)
    judged = [r for r in REASONS if r not in CROWDING_REASONS or "crowding" not in skipped]
    reasons = [r for r in judged if past_threshold(figures, r, p)]  # a figure not measured (NaN) is past nothing
    if "thick" in reasons and "thin" in reasons:  # piled-up cells leave little glass and can read sparse too
        reasons.remove("thin")
    return TileQuality(**figures, reasons=tuple(reasons), not_assessed=tuple(skipped))


def past_threshold(figures: Mapping[str, Any], reason: str, params: QualityParams, margin: float = 0.0) -> Any:
    """Whether a figure behind `reason` (THRESHOLDS) is past its threshold by more than `margin` × the threshold.
    Figures may be numbers or arrays / Series of them (then element-wise); NaN is past nothing."""
    past: Any = False
    for figure, name, sign in THRESHOLDS[reason]:
        threshold = getattr(params, name)
        past = past | (sign * (figures[figure] - threshold) > margin * threshold)
    return past


def _faint_nucleus_values(od: np.ndarray, od_mean: np.ndarray, seg_params: SegmentationParams, p: QualityParams,
                          spx: float) -> np.ndarray:
    """OD of the pixels of nucleus-sized violet blobs that the segmenter's absolute floor left out (empty: none),
    judged against the red cells as the segmenter judges nuclei."""
    cells = od_mean > p.cell_od
    if cv2.countNonZero(cells.view(np.uint8)) < 50:
        return np.empty(0, np.float32)
    violet = od[..., 1] - od[..., 2]
    level, _ = red_cell_level(od_mean, violet, cells, seg_params, spx)
    candidate = (violet > max(p.faint_nucleus_violet, seg_params.nucleus_contrast * level)) & cells
    _, blobs, stats, _ = cv2.connectedComponentsWithStats(candidate.view(np.uint8), connectivity=8)
    nucleus_sized = stats[:, cv2.CC_STAT_AREA] * spx * spx >= p.faint_nucleus_area_um2
    nucleus_sized[0] = False
    return od_mean[nucleus_sized[blobs]]


# --------------------------------------------------------------------------- low-resolution overview
@dataclass(frozen=True)
class OverviewCrowding:
    """Crowding of a smear judged on a low-resolution overview, block by block."""

    cover: np.ndarray          # float (rows, cols): red-cell cover equivalent (1 = one full layer); NaN = glass
    verdict: np.ndarray        # '<U5' (rows, cols): "", "thick", "thin" or "glass"
    block_px: int              # block side in overview pixels


def od_per_cover(tiles: list[TileQuality]) -> float:
    """Area OD per unit of red-cell cover on full-resolution tiles of a slide (median), the slide's own
    calibration of :func:`overview_crowding`; NaN without an assessed tile."""
    ratios = [t.area_od / t.rbc_coverage for t in tiles
              if t.rbc_coverage > 0 and math.isfinite(t.area_od) and math.isfinite(t.rbc_coverage)]
    return float(np.median(ratios)) if ratios else float("nan")


def overview_crowding(overview: np.ndarray, overview_mpp: float, block_um: float, od_per_cover: float,
                      params: QualityParams | None = None) -> OverviewCrowding:
    """Thick / thin areas of a smear from a low-resolution overview (RGB uint8 at `overview_mpp` µm/px).

    At overview scale a red cell is under a pixel, so the tile measure (glass between the cells) cannot
    be judged; what survives is the red-cell mass per area: the area OD (-ln of the mean transmittance,
    the same figure as ``TileQuality.area_od`` at full resolution, which it matches within ~0.02 on the
    wsi/smear slide).  Divided by `od_per_cover` (:func:`od_per_cover` of the slide's own full-resolution
    tiles) it reads as red-cell cover: above ``overview_max_cover`` the cells pile up (thick end), below
    ``min_rbc_coverage`` they are sparse (feathered edge); under ``overview_glass_od`` the block is glass.
    """
    p = params or QualityParams()
    if not od_per_cover > 0:
        raise ValueError(f"od_per_cover must be > 0, got {od_per_cover}")
    glass = overview_glass(overview)
    block = max(1, int(round(block_um / overview_mpp)))
    rows, cols = overview.shape[0] // block, overview.shape[1] // block
    means = cv2.resize(overview[: rows * block, : cols * block].astype(np.float32), (cols, rows),
                       interpolation=cv2.INTER_AREA)
    area_od = area_od_of(means, glass)
    cover, verdict = crowding_verdict(area_od, od_per_cover, p)
    return OverviewCrowding(cover=cover, verdict=verdict, block_px=block)


def overview_glass(overview: np.ndarray) -> np.ndarray:
    """The glass colour of an overview (RGB uint8): the mean of its brightest 3 % (+1, as the OD takes it)."""
    if overview.ndim != 3 or overview.shape[2] != 3 or overview.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {overview.shape} {overview.dtype}")
    grey = cv2.cvtColor(overview, cv2.COLOR_RGB2GRAY)
    return np.array(cv2.mean(overview, mask=(grey >= np.percentile(grey, 97.0)).view(np.uint8))[:3]) + 1.0


def area_od_of(mean_rgb: np.ndarray, glass: np.ndarray) -> np.ndarray:
    """Area OD (-ln of the mean transmittance, mean of R, G, B) of areas whose mean colour is `mean_rgb`
    (..., 3), against the overview's `glass`."""
    return np.log(glass / (np.asarray(mean_rgb, np.float64) + 1.0)).mean(axis=-1)


def crowding_verdict(area_od: np.ndarray, od_per_cover: float, params: QualityParams) -> tuple[np.ndarray, np.ndarray]:
    """(red-cell cover, verdict "", "thick", "thin" or "glass") of areas of an overview from their area OD."""
    area_od = np.asarray(area_od, np.float64)
    cover = area_od / od_per_cover
    verdict = np.full(cover.shape, "", dtype="<U5")
    verdict[cover > params.overview_max_cover] = "thick"
    verdict[cover < params.min_rbc_coverage] = "thin"
    verdict[area_od < params.overview_glass_od] = "glass"
    return np.where(area_od < params.overview_glass_od, np.nan, cover), verdict


SUMMARY_FIGURES = ("edge_sigma_um", "nucleus_od", "rbc_od", "glass_brightness", "rbc_coverage", "glass_fraction",
                   "clipped_fraction")
SUMMARY_COLUMNS = (("tiles_low_quality",) + tuple(f"tiles_{reason}" for reason in REASONS)
                   + ("readable_fraction",) + SUMMARY_FIGURES)


def summarise_quality(tiles: list[TileQuality]) -> dict[str, float | int | None]:
    """A scan's quality figures (SUMMARY_COLUMNS, for scans.csv): tiles unfit to count, in all and
    per reason; the fraction of tiles fit to count; the median of each figure over the tiles that
    measured it (None where none did)."""
    summary: dict[str, float | int | None] = {"tiles_low_quality": sum(not t.ok for t in tiles)}
    for reason in REASONS:
        summary[f"tiles_{reason}"] = sum(reason in t.reasons for t in tiles)
    summary["readable_fraction"] = round(1 - summary["tiles_low_quality"] / len(tiles), 3) if tiles else None
    for name in SUMMARY_FIGURES:
        values = [getattr(t, name) for t in tiles if math.isfinite(getattr(t, name))]
        summary[name] = round(float(np.median(values)), 3) if values else None
    return summary


def readable(summary: dict[str, float | int | None], params: QualityParams) -> bool:
    """Whether enough of a scan was fit to count (a scan with no tile at all, blank, is not judged here)."""
    fraction = summary.get("readable_fraction")
    return fraction is None or fraction >= params.min_readable_fraction
