"""White-blood-cell segmentation of stained blood-smear images.

Method (every size is in µm or µm², converted to pixels at run time, so one
parameter set serves any scan resolution):

1. Resample to ``working_mpp`` (coarse = fast; a WBC is still ~30 px across).
2. Estimate the glass colour from the brightest pixels and convert to optical
   density (OD) relative to it.  This white-balances yellow, pink or blue
   casts, so fixed OD thresholds mean the same thing on every stain.
3. Nucleus = violet pixels: OD(green) - OD(blue) above an absolute floor
   (so a tile of red cells or glass yields nothing, no per-image Otsu), above
   a multiple of this image's red-cell level (stains where red cells look
   purple) and dominating the green absorption (dark red cells are not violet).
   Fainter violet (compact_nucleus_contrast x that level) counts too where it
   forms compact regions: blasts crowding a field can be barely more violet
   than the red cells, whose rims are thin.
   The red-cell level is read over the red cells themselves where the image
   shows enough of them (discs of a red cell's size with a pale centre), so
   blasts crowding a field cannot raise it; otherwise over the cell pixels
   below the nucleus floor in a field, over all cell pixels in a crop.
   Violet pieces smaller than min_fragment_area_um2 (platelets, granules) are
   dropped first: one beside a WBC would widen its box.  Lobes closer than
   2 * nucleus_close_um are one nucleus; groups smaller than
   min_nucleus_area_um2 (platelets, debris) are dropped; groups closer than
   lobe_gap_um that together span at most lobe_span_um are the lobes of one
   cell (eosinophils, band cells: issue 13's leave-one-source-out search); a
   nucleus group with several thick round cores and more than one nucleus'
   area (touching blasts) is split by distance transform + watershed.
4. Cells = everything absorbing more than the glass.  A watershed on its
   distance transform, seeded by this nucleus, the other nuclei and the red
   cells' distance peaks, gives each WBC its own basin (touching cells split);
   a WBC with no other seed near it gets the cell pieces it touches, which is
   what the watershed would give it, at a fraction of the cost.
5. The whole cell = its basin within max_cytoplasm_um of the nucleus.  The cap
   is short (1.5 µm) on purpose: pale cytoplasm and touching red cells are
   hard to tell apart across stains, and a tight cell beats one that annexes a
   red cell (box IoU and crops both suffer more from the latter).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import cv2
import numpy as np
from scipy.ndimage import find_objects
from skimage.segmentation import watershed

from bcscan.config import check_flags, check_numbers
from bcscan.scan.reading import resample


@dataclass(frozen=True)
class SegmentationParams:
    """Thresholds of :func:`segment`; sizes in µm / µm², colours in optical density."""

    working_mpp: float = 0.4
    """µm/px the pipeline resamples to before calling segment(); segment() resamples to it too."""
    smooth_um: float = 0.4
    """Gaussian sigma applied before thresholding (removes JPEG noise and granules)."""
    background_percentile: float = 90.0
    """Pixels brighter than this percentile define the glass colour."""
    nucleus_od: float = 0.30
    """Minimum OD(green) - OD(blue) of nucleus pixels (absolute, so empty tiles stay empty)."""
    nucleus_contrast: float = 3.5
    """...and at least this multiple of the red-cell level (stains where red cells look violet)."""
    nucleus_chroma: float = 0.6
    """...and a share of the green absorption at least this large (dark red cells are not violet)."""
    compact_nucleus_contrast: float = 1.6
    """Violet pixels at only this multiple of the red-cell level are nucleus too where they form compact regions
    (0: off), in an image whose level is read over its red cells (red_cell_discs; a level over all cell pixels is
    the white cells' own where they fill the image).  Crowded blasts' nuclei can be as little as 1.5-2.5x as
    violet as the red cells; at that contrast red-cell rims and the bridges between touching cells pass as well,
    but they are thin (issue 26)..."""
    compact_nucleus_radius_um: float = 3.0
    """...so only regions that hold a disc of this radius count (a morphological opening): a blast's nucleus
    (>= 5 µm across its narrowest) stays, a red cell's rim (1-2 µm) goes."""
    red_cell_percentile: float = 30.0
    """Percentile of the violet score over the red cells taken as the red-cell level."""
    red_cell_discs: bool = True
    """Read the red-cell level over pale-centred red-cell discs (at least min_red_cell_disc_area_um2 of them);
    False: over all cell pixels, which assumes red cells are most of the cell area, so a field crowded with
    blasts raises its own threshold and loses some (issue 26)."""
    min_red_cell_disc_area_um2: float = 100.0
    """Less red-cell disc area than this (~2 cells) in an image: the level is read over its cell pixels, ..."""
    field_min_area_um2: float = 2500.0
    """...those below nucleus_od in an image at least this large (a field or a tile: blasts crowding it, whose red
    cells show no pale centre, cannot raise the level), all of them in a smaller one (a crop of a cell or two,
    whose own violet is its level) or when 0."""
    foreground_od: float = 0.07
    """Minimum mean OD of any cell pixel (cytoplasm included) over the glass."""
    nucleus_close_um: float = 1.0
    """Closing radius that joins the lobes/fragments of one nucleus."""
    lobe_gap_um: float = 3.0
    """Nucleus groups closer than this are one nucleus (lobes) when together they span at most..."""
    lobe_span_um: float = 12.0
    """...this long side (touching WBCs span two nuclei)."""
    peak_min_distance_um: float = 4.0
    """Two distance-transform peaks closer than this are one cell."""
    split_min_radius_um: float = 2.5
    """A nucleus group with two cores at least this thick (and peak_min_distance_um apart) is two cells."""
    split_min_area_um2: float = 120.0
    """...and only a group larger than one nucleus can be (normal nuclei are < ~80 µm²)."""
    max_cytoplasm_um: float = 1.5
    """Cytoplasm extends at most this far beyond the nucleus."""
    min_nucleus_area_um2: float = 12.0
    """Smaller stained blobs are platelets or debris."""
    min_fragment_area_um2: float = 2.0
    """Violet pieces smaller than this are dropped before lobes are grouped (platelets beside a WBC)."""
    min_cell_area_um2: float = 10.0
    max_cell_area_um2: float = 600.0

    def __post_init__(self) -> None:
        check_flags(self, "red_cell_discs")
        check_numbers(self, *(f.name for f in fields(self) if f.name != "red_cell_discs"))
        check_numbers(self, "working_mpp", "peak_min_distance_um", "split_min_radius_um", "split_min_area_um2",
                      "min_cell_area_um2", "max_cell_area_um2", "nucleus_od", "foreground_od", "max_cytoplasm_um",
                      above=0)
        check_numbers(self, "smooth_um", "nucleus_close_um", "lobe_gap_um", "min_nucleus_area_um2",
                      "min_fragment_area_um2", "min_red_cell_disc_area_um2", "field_min_area_um2",
                      "compact_nucleus_contrast", at_least=0)
        check_numbers(self, "background_percentile", at_least=50, below=100)
        if self.compact_nucleus_contrast > 0 and self.compact_nucleus_radius_um <= 0:
            raise ValueError("compact_nucleus_radius_um must be > 0 when compact_nucleus_contrast is on")
        if self.min_cell_area_um2 >= self.max_cell_area_um2:
            raise ValueError("min_cell_area_um2 must be < max_cell_area_um2")


@dataclass
class CellDetection:
    x: float
    y: float
    x0: int
    y0: int
    x1: int
    y1: int
    area_um2: float
    nucleus_area_um2: float


@dataclass
class Segmentation:
    cells: list[CellDetection]
    cell_labels: np.ndarray
    nucleus_mask: np.ndarray


def disk(radius_px: float) -> np.ndarray:
    """A filled disc of this radius (px), for OpenCV morphology."""
    r = max(int(round(radius_px)), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def levels_percentile(levels: np.ndarray, q: float) -> float:
    """``np.percentile(levels, q)`` (linear interpolation, bit for bit) of non-negative integers, read off their
    histogram instead of a sort: 5x faster, which counts on small field images, where glass_colour runs twice."""
    cumulative = np.cumsum(np.bincount(levels))
    index = (levels.size - 1) * (q / 100)
    below = int(index)
    fraction = index - below
    low, high = (int(v) for v in np.searchsorted(cumulative, [below, min(below + 1, levels.size - 1)], side="right"))
    # numpy's lerp: from the nearer end, so that the same fractions give the same bits
    return low + (high - low) * fraction if fraction < 0.5 else high - (high - low) * (1 - fraction)


def glass_colour(rgb: np.ndarray, background_percentile: float) -> np.ndarray:
    """The glass colour (mean of the brightest pixels) + 1: the reference of :func:`optical_density`."""
    brightness = rgb[..., 0].astype(np.uint16) + rgb[..., 1] + rgb[..., 2]  # 10x numpy's sum over the last axis
    sample = brightness.ravel()[:: max(brightness.size // 20000, 1)]  # percentile of a subsample: fast, same value
    bright = (brightness >= levels_percentile(sample, background_percentile)).view(np.uint8)
    return np.array(cv2.mean(rgb, mask=bright)[:3]) + 1.0


def optical_density(rgb: np.ndarray, background_percentile: float, glass: np.ndarray | None = None) -> np.ndarray:
    """OD per channel relative to the glass colour (`glass`, else this image's brightest pixels), clipped at 0."""
    if glass is None:
        glass = glass_colour(rgb, background_percentile)
    levels = np.arange(256, dtype=np.float32) + 1.0
    lut = np.maximum(np.log(glass[None, :] / levels[:, None]), 0.0).astype(np.float32)  # 256 x 3
    return cv2.LUT(rgb, lut.reshape(256, 1, 3))


def segment(rgb: np.ndarray, mpp: float, params: SegmentationParams) -> Segmentation:
    """Find white blood cells in an RGB image at `mpp` µm/px (see module docstring)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    h, w = rgb.shape[:2]
    work = resample(rgb, mpp, params.working_mpp)
    labels_w, nucleus_w = _segment_working(work, params)

    if work is not rgb:
        cell_labels = cv2.resize(labels_w, (w, h), interpolation=cv2.INTER_NEAREST)
        nucleus = cv2.resize(nucleus_w.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    else:
        cell_labels, nucleus = labels_w, nucleus_w
    return collect_cells(cell_labels, nucleus, mpp)


def _segment_working(rgb: np.ndarray, p: SegmentationParams) -> tuple[np.ndarray, np.ndarray]:
    """Label image (int32) and nucleus mask at working resolution."""
    um = 1.0 / p.working_mpp  # pixels per µm
    px2 = p.working_mpp ** 2  # µm² per pixel
    empty = np.zeros(rgb.shape[:2], np.int32), np.zeros(rgb.shape[:2], bool)
    if p.smooth_um > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), p.smooth_um * um)
    od = optical_density(rgb, p.background_percentile)
    od_total = cv2.transform(od, np.ones((1, 3), np.float32))
    fg = od_total > 3 * p.foreground_od
    if not fg.any():
        return empty

    # Nucleus: violet absorption well above that of this image's red cells.
    score = od[..., 1] - od[..., 2]
    rbc_level, over_red_cells = red_cell_level(od_total, score, fg, p, p.working_mpp)
    violet = score > p.nucleus_chroma * od[..., 1]
    nucleus = ((score > max(p.nucleus_od, p.nucleus_contrast * rbc_level)) & violet).astype(np.uint8)
    if p.compact_nucleus_contrast > 0 and over_red_cells:  # faint but compact: blasts crowding a field
        faint = ((score > max(p.nucleus_od, p.compact_nucleus_contrast * rbc_level)) & violet).astype(np.uint8)
        nucleus |= cv2.morphologyEx(faint, cv2.MORPH_OPEN, disk(p.compact_nucleus_radius_um * um))
    if p.min_fragment_area_um2 > 0:  # platelets and granules beside a nucleus would join its group
        _, pieces, stats, _ = cv2.connectedComponentsWithStats(nucleus, connectivity=8)
        nucleus &= (stats[:, cv2.CC_STAT_AREA] * px2 >= p.min_fragment_area_um2).astype(np.uint8)[pieces]
    # Lobes / fragments closer than 2 * nucleus_close_um belong to one nucleus.
    groups = cv2.dilate(nucleus, disk(p.nucleus_close_um * um)) if p.nucleus_close_um > 0 else nucleus
    n_grp, grp = cv2.connectedComponents(groups, connectivity=8)
    nuc_lab = np.where(nucleus > 0, grp, 0).astype(np.int32)
    nuc_area = np.bincount(nuc_lab.ravel(), minlength=n_grp) * px2
    nuc_area[0] = 0
    keep = nuc_area >= p.min_nucleus_area_um2
    if not keep.any():
        return empty
    relabel = np.zeros(n_grp, np.int32)
    relabel[keep] = np.arange(1, keep.sum() + 1)
    nuc_lab = _split_touching_nuclei(_merge_lobes(relabel[nuc_lab], p), p)
    nucleus = nuc_lab > 0

    # Cells (any stain) vs glass; nuclei always count as cell.
    fg = cv2.morphologyEx((fg | nucleus).astype(np.uint8), cv2.MORPH_OPEN, disk(0.5 * um))
    fg = _fill_holes(fg) | nucleus.astype(np.uint8)

    # Touching cells: one distance-transform peak per cell.  Peaks near a
    # nucleus belong to that WBC; the others are red cells that must stop it.
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    peak_disk = disk(p.peak_min_distance_um * um)

    labels = np.zeros(rgb.shape[:2], np.int32)
    kept_nucleus = np.zeros(rgb.shape[:2], bool)
    reach_px = int(np.ceil(p.max_cytoplasm_um * um))
    reach_disk = disk(p.max_cytoplasm_um * um)
    k = 0
    for n, box in enumerate(find_objects(nuc_lab), start=1):
        if box is None:
            continue
        y0 = max(box[0].start - reach_px, 0)
        y1 = min(box[0].stop + reach_px, labels.shape[0])
        x0 = max(box[1].start - reach_px, 0)
        x1 = min(box[1].stop + reach_px, labels.shape[1])
        roi = (slice(y0, y1), slice(x0, x1))
        own = nuc_lab[roi] == n
        markers = _other_peaks(dist, nucleus, roi, peak_disk).astype(np.int32) * 3
        markers[nucleus[roi]] = 2
        markers[own] = 1
        if markers.max() > 1:
            basin = watershed(-dist[roi], markers, mask=fg[roi] > 0) == 1
        else:  # no other seed nearby (most cells): the watershed would give it all the cell it touches
            _, pieces = cv2.connectedComponents(np.ascontiguousarray(fg[roi]), connectivity=4)
            touched = np.zeros(pieces.max() + 1, bool)
            touched[pieces[own]] = True
            basin = touched[pieces]
        reach = cv2.dilate(own.astype(np.uint8), reach_disk) > 0
        cell = _fill_holes((basin & reach).astype(np.uint8)) > 0
        area = cell.sum() * px2
        if not p.min_cell_area_um2 <= area <= p.max_cell_area_um2:
            continue
        k += 1
        labels[roi][cell & (labels[roi] == 0)] = k
        kept_nucleus[roi] |= own
    return labels, kept_nucleus


def _other_peaks(dist: np.ndarray, nucleus: np.ndarray, roi: tuple[slice, slice], peak_disk: np.ndarray) -> np.ndarray:
    """Within `roi`: the distance peaks (maxima over `peak_disk`) farther than its radius from any nucleus, the seeds
    of the cells that must stop a WBC.  Computed on the ROI grown by that radius, which gives the whole image's
    answer there at a fraction of the cost: most of a field is red cells far from any nucleus."""
    r = peak_disk.shape[0] // 2
    (y0, y1), (x0, x1) = ((sl.start, sl.stop) for sl in roi)
    gy0, gx0 = max(y0 - r, 0), max(x0 - r, 0)
    grown = (slice(gy0, min(y1 + r, dist.shape[0])), slice(gx0, min(x1 + r, dist.shape[1])))
    inner = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
    d = dist[grown]
    peaks = (d >= cv2.dilate(d, peak_disk)) & (d > 1.0)
    near_nucleus = cv2.dilate(nucleus[grown].view(np.uint8), peak_disk) > 0
    return (peaks & ~near_nucleus)[inner]


# A red cell's geometry, in µm: a disc 5-10 µm across whose centre absorbs less than its rim.
RED_CELL_RADIUS_UM = (2.5, 5.0)
PALE_CENTRE = 0.95  # mean OD within 0.35 of the radius below this share of the ring 0.5-1 of the radius


def red_cell_level(absorbance: np.ndarray, score: np.ndarray, fg: np.ndarray, p: SegmentationParams,
                   mpp: float) -> tuple[float, bool]:
    """The violet score of the red cells of an image at `mpp` µm/px (the `red_cell_percentile`), and whether it was
    read over its red-cell discs (where it shows enough of them, ``p.red_cell_discs``).  Otherwise it is read over
    the cell pixels `fg`: in a field (``p.field_min_area_um2``) those below the nucleus floor, since white cells
    filling it would raise it; in a crop all of them.  `absorbance`: the total or mean optical density per pixel
    (only its ratios are read: a red cell's pale centre)."""
    if p.red_cell_discs:
        discs = red_cell_discs(absorbance, fg, mpp)
        if cv2.countNonZero(discs.view(np.uint8)) * mpp ** 2 >= p.min_red_cell_disc_area_um2:
            return float(np.percentile(score[discs], p.red_cell_percentile)), True
    cells = score[fg]
    if p.red_cell_discs and 0 < p.field_min_area_um2 <= fg.size * mpp ** 2:
        below_floor = cells[cells < p.nucleus_od]
        cells = below_floor if below_floor.size else cells
    return float(np.percentile(cells, p.red_cell_percentile)), False


def red_cell_discs(od_total: np.ndarray, fg: np.ndarray, mpp: float) -> np.ndarray:
    """Pixels of red-cell-sized discs with a pale centre, centred on the (hole-filled) cell mask's distance peaks
    RED_CELL_RADIUS_UM deep, so touching and crowded red cells count too; blasts have no pale centre.

    Vectorised per whole-pixel radius: each peak's centre and ring are gathered from an edge-padded copy."""
    cells = _fill_holes(fg.astype(np.uint8))
    depth = cv2.distanceTransform(cells, cv2.DIST_L2, 5)
    low, high = RED_CELL_RADIUS_UM[0] / mpp, RED_CELL_RADIUS_UM[1] / mpp
    peaks = (depth >= low) & (depth <= high)
    peaks &= depth >= cv2.dilate(depth, disk(low))
    ys, xs = np.nonzero(peaks)
    if len(ys) == 0:
        return np.zeros(fg.shape, bool)
    pad = int(np.ceil(high)) + 1
    padded = cv2.copyMakeBorder(np.asarray(od_total, np.float32), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    width = padded.shape[1]
    values = padded.ravel()
    painted = np.zeros(padded.size, bool)
    radii = np.rint(depth[ys, xs]).astype(int)
    for r in np.unique(radii):
        at = (ys[radii == r] + pad) * width + xs[radii == r] + pad  # flat indices of the peaks of this radius
        centre, rim, disc = (dy * width + dx for dy, dx in _disc_offsets(int(r)))
        pale = values[at[:, None] + centre].mean(axis=1) < PALE_CENTRE * values[at[:, None] + rim].mean(axis=1)
        painted[at[pale, None] + disc] = True
    return painted.reshape(padded.shape)[pad:-pad, pad:-pad] & (cells > 0)


@functools.lru_cache(maxsize=None)
def _disc_offsets(radius: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(dy, dx) offsets of a disc of this radius: its centre (within 0.35 of the radius), its ring (0.5-1) and all."""
    dy, dx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    rel = np.hypot(dy, dx) / max(radius, 1)
    return tuple((dy[m], dx[m]) for m in (rel <= 0.35, (rel > 0.5) & (rel <= 1.0), rel <= 1.0))


def _merge_lobes(nuc_lab: np.ndarray, p: SegmentationParams) -> np.ndarray:
    """Join nucleus groups less than ``lobe_gap_um`` apart that together span at most ``lobe_span_um``.

    The lobes of an eosinophil or band cell can lie further apart than the closing joins
    them; two touching WBCs are each about a nucleus long, so together they span more."""
    if p.lobe_gap_um <= 0:
        return nuc_lab
    near = cv2.dilate((nuc_lab > 0).astype(np.uint8), disk(0.5 * p.lobe_gap_um / p.working_mpp))
    n_near, near_lab = cv2.connectedComponents(near, connectivity=8)
    # Local operations per nucleus group: a tile holds few, and whole-image passes cost more.
    boxes = find_objects(nuc_lab)
    pixels = [np.nonzero(nuc_lab[box] == g) if box is not None else None for g, box in enumerate(boxes, start=1)]
    near_of_group = np.array([near_lab[box][yx[0][0], yx[1][0]] if box is not None else 0
                              for box, yx in zip(boxes, pixels)], np.int32)
    for n in np.nonzero(np.bincount(near_of_group, minlength=n_near)[1:] > 1)[0] + 1:
        members = np.nonzero(near_of_group == n)[0]
        points = np.concatenate([np.stack([pixels[g][1] + boxes[g][1].start, pixels[g][0] + boxes[g][0].start], axis=1)
                                 for g in members]).astype(np.float32)
        (_, _), (a, b), _ = cv2.minAreaRect(points)
        if max(a, b) * p.working_mpp <= p.lobe_span_um:
            for g in members[1:]:
                nuc_lab[boxes[g]][pixels[g]] = members[0] + 1
    return nuc_lab


def _split_touching_nuclei(nuc_lab: np.ndarray, p: SegmentationParams) -> np.ndarray:
    """Split nucleus groups holding several round cores (touching blasts/lymphocytes).

    A core is a distance-transform peak at least ``split_min_radius_um`` deep:
    neutrophil lobes are thinner than that, so a lobed nucleus stays whole.
    """
    out = np.zeros_like(nuc_lab)
    k = 0
    for n, box in enumerate(find_objects(nuc_lab), start=1):
        if box is None:
            continue
        pad = 2
        y0, x0 = max(box[0].start - pad, 0), max(box[1].start - pad, 0)
        roi = (slice(y0, box[0].stop + pad), slice(x0, box[1].stop + pad))
        own = nuc_lab[roi] == n
        # The nucleus, closed and filled, stays within its box: one smaller than two nuclei is not tried.
        box_area_um2 = (box[0].stop - box[0].start) * (box[1].stop - box[1].start) * p.working_mpp ** 2
        parts, count = _cores(own, p) if box_area_um2 >= p.split_min_area_um2 else (None, 1)
        out[roi][own] = k + 1 if parts is None else parts[own] + k
        k += count
    return out


def _cores(own: np.ndarray, p: SegmentationParams) -> tuple[np.ndarray | None, int]:
    """A nucleus (bool mask) split by watershed between its cores, and how many; (None, 1) where it has one core
    or one nucleus' area."""
    um = 1.0 / p.working_mpp
    solid = _fill_holes(cv2.morphologyEx(own.astype(np.uint8), cv2.MORPH_CLOSE, disk(0.5 * um)))
    dist = cv2.distanceTransform(solid, cv2.DIST_L2, 5)
    core = p.split_min_radius_um * um
    peaks = (dist >= cv2.dilate(dist, disk(2 * core))) & (dist >= core)
    n_peaks, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    if n_peaks <= 2 or solid.sum() * p.working_mpp ** 2 < p.split_min_area_um2:
        return None, 1
    return watershed(-dist, markers, mask=solid > 0), n_peaks - 1


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a uint8 0/1 mask (pale centres of cells, granules)."""
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = mask
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)


def collect_cells(cell_labels: np.ndarray, nucleus: np.ndarray, mpp: float) -> Segmentation:
    """Detections sorted by (y, x), labels renumbered to match, nucleus limited to kept cells."""
    px2 = mpp * mpp
    found = []
    for lab, sl in enumerate(find_objects(cell_labels), start=1):
        if sl is None:
            continue
        own = cell_labels[sl] == lab
        ys, xs = np.nonzero(own)
        y, x = float(ys.mean() + sl[0].start), float(xs.mean() + sl[1].start)
        found.append(((y, x), lab, CellDetection(
            x=x, y=y, x0=sl[1].start, y0=sl[0].start, x1=sl[1].stop, y1=sl[0].stop,
            area_um2=float(own.sum() * px2), nucleus_area_um2=float((own & nucleus[sl]).sum() * px2))))
    found.sort(key=lambda t: t[0])
    lut = np.zeros(int(cell_labels.max()) + 1, np.int32)
    for new, (_, old, _) in enumerate(found, start=1):
        lut[old] = new
    labels = lut[cell_labels]
    return Segmentation(cells=[f[2] for f in found], cell_labels=labels, nucleus_mask=nucleus & (labels > 0))
