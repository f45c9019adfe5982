"""Exploration (issue 26 item 2): white-cell rules that do not rest on one violet threshold per image.

    nice -n 10 python benchmarks/wbc_rule_probe.py [--data ../shared/data] [--normal-step 4] [--rules a,b]

The shipped segmenter calls a pixel nucleus when its violet score (OD green - OD blue) exceeds
max(nucleus_od, nucleus_contrast x the image's red-cell level), the level being the 30th percentile of the score
over the image's pale-centred red-cell discs (``segmentation.red_cell_discs``; over all cell pixels where too few
are found).  Candidates (each wraps segment() with other parameters per image, or filters its detections):

- ``shipped``: segment() as it ships.
- ``all_cell_level``: the red-cell level over all cell pixels (``red_cell_discs=False``, the rule before
  2026-12-07): blasts crowding a field raise it.
- ``relaxed_only_C``: segment() with nucleus_contrast C instead of 3.5 (reference).
- ``relaxed_reject_C``: contrast C; the detections the shipped rule would not make are kept only if their
  "nucleus" is not a red cell (hollow ring, or a round red-cell-sized disc with a pale centre).
- ``strict_plus_new_C``: every shipped detection unchanged, plus the contrast-C detections touching none of them
  whose nucleus is violet enough for a nucleus (MIN_VIOLET_SHARE) and not a ring.

Detections are scored as the pipeline makes them (the shipped platelet-clump test after the rule), IoU >= 0.5
one-to-one, on the leukaemic fields boxed by eye (per source, blast recall) and on every N-th field of the normal
boxed sources (BCCD, TXL-PBC).  Nothing is fitted by a search, so no leave-one-source-out: the shape constants
come from red-cell geometry (a ~7.5 µm disc, ~45 µm²), but MIN_VIOLET_SHARE was read off the Pre-B fields'
detections, so strict_plus_new's leukaemic figures are optimistic.  Cost: seconds per
megapixel of each rule over segment() alone on the same fields in the same run.  Prints one markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from scipy import ndimage

from bcscan.scan.platelets import PlateletParams, drop_platelet_clumps
from bcscan.scan.segmentation import PALE_CENTRE, Segmentation, SegmentationParams, optical_density, segment
from bcscan.testing import groundtruth as G

LEUKAEMIC_SOURCES = ("ghaderzadeh-early", "ghaderzadeh-pre", "ghaderzadeh-pro", "ghaderzadeh-benign",
                     "mll-bone-marrow", "lmu-aml-blood")

# Red-cell shape (sizes in µm / µm², so they hold at any scan resolution).
RED_CELL_AREA_UM2 = (20.0, 80.0)  # discs of ~5-10 µm
MIN_ROUNDNESS = 0.70  # area of the largest inscribed disc / area (disc: 1, a pair of touching cells: ~0.5)
RELAXED_CONTRAST = 2.5
MIN_VIOLET_SHARE = 0.45  # nuclei: ~0.5-0.6 of their OD is violet; Ghaderzadeh's violet-blue red cells ~0.25-0.4
MAX_FILLED_SHARE = 0.85  # a nucleus whose pixels cover less than this share of its filled outline is a ring


@dataclasses.dataclass(frozen=True)
class CellComponents:
    """Smoothed optical density at working resolution, its violet score, and the labelled cell (foreground) pieces."""

    od: np.ndarray
    score: np.ndarray
    cells: np.ndarray
    labels: np.ndarray
    count: int

    @classmethod
    def of(cls, rgb: np.ndarray, p: SegmentationParams) -> "CellComponents":
        if p.smooth_um > 0:
            rgb = cv2.GaussianBlur(rgb, (0, 0), p.smooth_um / p.working_mpp)
        od = optical_density(rgb, p.background_percentile)
        cells = ndimage.binary_fill_holes(od.mean(axis=2) > p.foreground_od).astype(np.uint8)  # pale centres in
        count, labels = cv2.connectedComponents(cells, connectivity=4)
        return cls(od, od[..., 1] - od[..., 2], cells > 0, labels, count)


def red_cell_like(labels: np.ndarray, count: int, od_total: np.ndarray, mpp: float) -> np.ndarray:
    """Per label (0 = background): is the component a red cell: red-cell sized, round, paler at the centre than at the rim."""
    index = np.arange(count)
    area = np.bincount(labels.ravel(), minlength=count) * mpp ** 2
    sized = (area >= RED_CELL_AREA_UM2[0]) & (area <= RED_CELL_AREA_UM2[1])
    sized[0] = False
    depth = cv2.distanceTransform((labels > 0).astype(np.uint8), cv2.DIST_L2, 5)
    deepest = np.zeros(count, np.float32)
    deepest[index[sized]] = ndimage.maximum(depth, labels, index[sized])
    # Round: the area fills most of the disc its deepest point could hold (a disc of radius = depth).
    roundness = np.where(deepest > 0, area / (np.pi * (deepest * mpp) ** 2 + 1e-6), 0.0)
    round_ = sized & (roundness <= 1.0 / MIN_ROUNDNESS) & (roundness >= 0.8)
    relative = depth / np.maximum(deepest[labels], 1e-6)
    centre = round_[labels] & (relative > 0.5)
    rim = round_[labels] & (relative <= 0.5) & (labels > 0)
    centre_od = np.bincount(labels[centre], od_total[centre], count) / np.maximum(np.bincount(labels[centre], minlength=count), 1)
    rim_od = np.bincount(labels[rim], od_total[rim], count) / np.maximum(np.bincount(labels[rim], minlength=count), 1)
    return round_ & (centre_od < PALE_CENTRE * rim_od)


def shipped(rgb: np.ndarray, p: SegmentationParams) -> Segmentation:
    """segment() as it ships."""
    return segment(rgb, p.working_mpp, p)


def all_cell_level(rgb: np.ndarray, p: SegmentationParams) -> Segmentation:
    """The red-cell level over all cell pixels (the rule before red-cell discs)."""
    return segment(rgb, p.working_mpp, dataclasses.replace(p, red_cell_discs=False))


def relaxed_only(rgb: np.ndarray, p: SegmentationParams, contrast: float = RELAXED_CONTRAST) -> Segmentation:
    """segment() with a relaxed contrast and nothing else (the reference for relaxed_reject)."""
    return segment(rgb, p.working_mpp, dataclasses.replace(p, nucleus_contrast=contrast))


def relaxed_reject(rgb: np.ndarray, p: SegmentationParams, contrast: float = RELAXED_CONTRAST) -> Segmentation:
    """A relaxed contrast; of the detections the shipped rule would not make (fewer than min_nucleus_area_um2 of
    their nucleus passes the shipped threshold), drop those whose nucleus is a ring or whose cell is a pale-centred
    red-cell-shaped disc."""
    relaxed = relaxed_only(rgb, p, contrast)
    if len(relaxed.cells) == 0:
        return relaxed
    c = CellComponents.of(rgb, p)
    level = np.percentile(c.score[c.cells], p.red_cell_percentile) if c.cells.any() else 0.0
    strict_px = (c.score > max(p.nucleus_od, p.nucleus_contrast * level)) & (c.score > p.nucleus_chroma * c.od[..., 1])
    n = len(relaxed.cells) + 1
    lab = relaxed.cell_labels
    nucleus = np.where(relaxed.nucleus_mask, lab, 0)
    also_strict = np.bincount(nucleus[strict_px], minlength=n) * p.working_mpp ** 2 >= p.min_nucleus_area_um2
    nuc_px = np.bincount(nucleus.ravel(), minlength=n)
    filled = np.zeros(n)
    for k, box in enumerate(ndimage.find_objects(nucleus), start=1):
        if box is not None:
            filled[k] = ndimage.binary_fill_holes(nucleus[box] == k).sum()
    hollow = nuc_px < MAX_FILLED_SHARE * np.maximum(filled, 1)
    # Red-cell-shaped disc with a pale centre: judged on the detection's own cell mask.
    disc = red_cell_like(lab, n, c.od.sum(axis=2), p.working_mpp)
    drop = ~also_strict & (hollow | disc)
    drop[0] = False
    keep = [k for k in range(1, n) if not drop[k]]
    return _subset(relaxed, keep)


def strict_plus_new(rgb: np.ndarray, p: SegmentationParams, contrast: float = RELAXED_CONTRAST) -> Segmentation:
    """Every shipped detection as it is, plus the relaxed-contrast detections that touch none of them and whose
    nucleus is not a red cell: median violet share (violet score / total OD) of at least MIN_VIOLET_SHARE, no
    ring.  (A relaxed threshold alone widens shipped nuclei with the dark red cells beside them: Raabin's loss.)"""
    strict = segment(rgb, p.working_mpp, p)
    relaxed = relaxed_only(rgb, p, contrast)
    if len(relaxed.cells) == 0:
        return strict
    c = CellComponents.of(rgb, p)
    n = len(relaxed.cells) + 1
    lab = relaxed.cell_labels
    touches_strict = np.bincount(lab[strict.cell_labels > 0], minlength=n) > 0
    nucleus = np.where(relaxed.nucleus_mask, lab, 0)
    share = c.score / (c.od.sum(axis=2) + 1e-6)
    nuc_px = np.bincount(nucleus.ravel(), minlength=n)
    violet = np.zeros(n)
    filled = np.zeros(n)
    for k, box in enumerate(ndimage.find_objects(nucleus), start=1):
        if box is not None:
            own = nucleus[box] == k
            violet[k] = np.median(share[box][own])
            filled[k] = ndimage.binary_fill_holes(own).sum()
    new = ~touches_strict & (violet >= MIN_VIOLET_SHARE) & (nuc_px >= MAX_FILLED_SHARE * np.maximum(filled, 1))
    new[0] = False
    labels = strict.cell_labels.copy()
    cells = list(strict.cells)
    nucleus_mask = strict.nucleus_mask.copy()
    for k in np.nonzero(new)[0]:
        own = lab == k
        labels[own] = len(cells) + 1
        nucleus_mask |= own & relaxed.nucleus_mask
        cells.append(relaxed.cells[k - 1])
    return Segmentation(cells, labels, nucleus_mask)


def _subset(seg: Segmentation, keep: list[int]) -> Segmentation:
    """`seg` with only the detections numbered in `keep` (1-based), renumbered in order."""
    lut = np.zeros(len(seg.cells) + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    labels = lut[seg.cell_labels]
    return Segmentation([seg.cells[k - 1] for k in keep], labels, seg.nucleus_mask & (labels > 0))


RULES: dict[str, Callable[[np.ndarray, SegmentationParams], Segmentation]] = {
    "shipped": shipped, "all_cell_level": all_cell_level,
    "relaxed_only_2.5": relaxed_only, "relaxed_reject_2.5": relaxed_reject,
    "relaxed_only_2.0": functools.partial(relaxed_only, contrast=2.0),
    "relaxed_reject_2.0": functools.partial(relaxed_reject, contrast=2.0),
    "strict_plus_new_2.5": strict_plus_new,
    "strict_plus_new_2.0": functools.partial(strict_plus_new, contrast=2.0)}


def detections(field: G.WorkingField, rule: Callable, p: SegmentationParams, platelets: PlateletParams) -> np.ndarray:
    """Boxes (original pixels) of `rule` then the platelet-clump test, as WorkingField.detections makes them."""
    seg = drop_platelet_clumps(field.rgb, rule(field.rgb, p), p, platelets)
    return G.cell_boxes(seg) * field.to_original


def rule_costs(rules: dict[str, Callable], fields: list[G.WorkingField], p: SegmentationParams,
               repeats: int = 3) -> dict[str, float]:
    """Seconds per working-resolution megapixel of each rule alone (no platelet test): best of `repeats`
    passes, the rules interleaved so that they share the machine's load."""
    megapixels = sum(f.rgb.shape[0] * f.rgb.shape[1] for f in fields) / 1e6
    best = {name: float("inf") for name in rules}
    for _ in range(repeats):
        for name, rule in rules.items():
            t = time.perf_counter()
            for f in fields:
                rule(f.rgb, p)
            best[name] = min(best[name], (time.perf_counter() - t) / megapixels)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=G.SHARED_DATA)
    parser.add_argument("--normal-step", type=int, default=4, help="every N-th normal field")
    parser.add_argument("--rules", default=",".join(RULES))
    args = parser.parse_args()
    p, platelets = SegmentationParams(), PlateletParams()
    rules = args.rules.split(",")

    leukaemic = [G.WorkingField.of(s, p.working_mpp) for s in G.leukaemic_samples(args.data)]
    kinds = [[b.kind == "blast" for b in boxes] for boxes in G.leukaemic_boxes_by_image().values()]
    normal = [G.WorkingField.of(s, p.working_mpp) for s in G.normal_box_samples(args.data, args.normal_step)]

    rows = {}
    for name in rules:
        rule = RULES[name]
        cells: dict[str, G.DetectionScore] = {}
        blasts: dict[str, list[int]] = {}
        seconds = megapixels = 0.0
        for field, blast in zip(leukaemic, kinds):
            t = time.perf_counter()
            found = detections(field, rule, p, platelets)
            seconds += time.perf_counter() - t
            megapixels += field.rgb.shape[0] * field.rgb.shape[1] / 1e6
            src = field.sample.source
            cells[src] = cells[src] + G.score_boxes(found, field.sample.boxes) if src in cells else G.score_boxes(found, field.sample.boxes)
            matched = {j for _, j, _ in G.match_boxes(found, field.sample.boxes)}
            b = blasts.setdefault(src, [0, 0])
            b[0] += sum(blast)
            b[1] += sum(1 for j, is_blast in enumerate(blast) if is_blast and j in matched)
        normal_scores: dict[str, G.DetectionScore] = {}
        for field in normal:
            t = time.perf_counter()
            found = detections(field, rule, p, platelets)
            seconds += time.perf_counter() - t
            megapixels += field.rgb.shape[0] * field.rgb.shape[1] / 1e6
            src = field.sample.source
            s = G.score_boxes(found, field.sample.boxes)
            normal_scores[src] = normal_scores[src] + s if src in normal_scores else s
        rows[name] = (cells, blasts, normal_scores, seconds / megapixels)

    costs = rule_costs({name: RULES[name] for name in rules}, leukaemic + normal, p)
    base_cost = costs.get("shipped", float("nan"))
    header = (["rule", "leukaemic R / F1 / blast R (all)"] + [f"{s} R / blast R" for s in LEUKAEMIC_SOURCES]
              + [f"{s} F1" for s in G.NORMAL_BOX_SOURCES] + ["cost × shipped"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, (cells, blasts, normal_scores, _) in rows.items():
        cost = costs[name]
        total = G.pooled(cells.values())
        b_all = np.sum(list(blasts.values()), axis=0)
        out = [name, f"{total.recall:.3f} / {total.f1:.3f} / {b_all[1] / b_all[0]:.3f}"]
        for s in LEUKAEMIC_SOURCES:
            br = f"{blasts[s][1] / blasts[s][0]:.2f}" if blasts[s][0] else "–"
            out.append(f"{cells[s].recall:.2f} / {br}")
        out += [f"{normal_scores[s].f1:.3f}" for s in G.NORMAL_BOX_SOURCES]
        out.append(f"{cost / base_cost:.2f}")
        print("| " + " | ".join(out) + " |")
    print(f"\nnormal fields: every {args.normal_step}th ({len(normal)}); leukaemic fields: {len(leukaemic)}")


if __name__ == "__main__":
    main()
