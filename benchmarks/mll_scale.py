"""Check the scale (µm/px) of mll-bone-marrow against pbc-normal and ghaderzadeh-all (issue 11).

Two measurements on a sample of images per class:
1. bcscan's own segmentation (pipeline.cells_in_field, as training uses it) at each set's stated
   scale: number of white cells found per image, and the area / nucleus area of the cell nearest
   the image centre.  Matching cell types (mll LYT/MON/NGS/EOS vs pbc lymphocyte/monocyte/
   neutrophil/eosinophil) should have the same areas in µm²; the implied mll scale is
   stated_mpp * sqrt(area_pbc / area_mll).  Cells whose centre lies more than OFF_CENTRE_UM from
   the crop centre are neighbours of the labelled cell: in training they inherit its label.
2. Red-cell diameters in pixels (native resolution, scale-free): a circle fitted to the outline of
   each convex, nucleus-free stained blob (off the image border, so the red cells cut by a
   250-px mll crop count too) when the outline is round and covers at least half the circle;
   a red cell is the same size in both labs, so
   mpp_mll = 0.088 * d_pbc / d_mll.

    python benchmarks/mll_scale.py [DATA_DIR] [--n 50] [--mpp 0.075]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bcscan, not an installed one

from bcscan.scan.pipeline import cells_in_field
from bcscan.scan.segmentation import SegmentationParams, optical_density

OFF_CENTRE_UM = 4.0  # a cell whose centre is farther than this from the crop centre is a neighbour
PAIRS = {"LYT": "lymphocyte", "MON": "monocyte", "NGS": "neutrophil", "EOS": "eosinophil"}


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def centre_cell(img: np.ndarray, mpp: float, seg: SegmentationParams):
    fc = cells_in_field(img, mpp, seg, 24.0)
    cells = fc.segmentation.cells
    if not cells:
        return 0, None
    h, w = fc.image.shape[:2]
    d = [np.hypot(c.x - w / 2, c.y - h / 2) * seg.working_mpp for c in cells]
    c = cells[int(np.argmin(d))]
    return len(cells), (c.area_um2, c.nucleus_area_um2, min(d), sum(v > OFF_CENTRE_UM for v in d))


def red_cell_diameters(img: np.ndarray, fit_circles: bool = True) -> list[float]:
    """Equivalent diameters (px) of isolated round nucleus-free blobs (red cells), native resolution."""
    blur = cv2.GaussianBlur(img, (0, 0), 2)
    od = optical_density(blur, 90.0)
    fg = (od.mean(axis=2) > 0.07).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    # fill pale centres
    h, w = fg.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = fg
    cv2.floodFill(flood, None, (0, 0), 1)
    fg = fg | (flood[1:-1, 1:-1] == 0)
    violet = (od[..., 1] - od[..., 2]) > 0.3
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area < 200:
            continue
        m = (lab[y:y + bh, x:x + bw] == i).astype(np.uint8)
        if violet[y:y + bh, x:x + bw][m > 0].mean() > 0.02:
            continue  # holds nucleus stain: a white cell
        cnt = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0][0][:, 0, :] + (x, y)
        hull = cv2.contourArea(cv2.convexHull(cnt.reshape(-1, 1, 2)))
        if hull <= 0 or area / hull < 0.93:
            continue  # not a single convex cell (touching cells, a white cell's cytoplasm)
        if not fit_circles:
            if x == 0 or y == 0 or x + bw >= w or y + bh >= h or not 0.8 < bw / bh < 1.25:
                continue
            out.append(float(np.sqrt(4 * area / np.pi)))
            continue
        # circle through the contour points off the image border (a red cell cut by the crop)
        pts = cnt[(cnt[:, 0] > 1) & (cnt[:, 1] > 1) & (cnt[:, 0] < w - 2) & (cnt[:, 1] < h - 2)].astype(float)
        if len(pts) < 60:
            continue
        a_ = np.c_[2 * pts, np.ones(len(pts))]
        (cx, cy, c), *_ = np.linalg.lstsq(a_, (pts ** 2).sum(1), rcond=None)
        r = np.sqrt(c + cx ** 2 + cy ** 2)
        resid = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
        angles = np.arctan2(pts[:, 1] - cy, pts[:, 0] - cx)
        coverage = len(np.unique(np.floor((angles + np.pi) / (2 * np.pi) * 12))) / 12
        if np.median(resid) < 0.03 * r and coverage >= 0.5:  # a round arc covering at least half the circle
            out.append(float(2 * r))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", nargs="?", default="../shared/data", type=Path)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--mpp", type=float, default=0.075, help="stated mll scale to test")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    seg = SegmentationParams()
    d = a.data_dir
    sets = {f"mll/{c}": (d / "mll-bone-marrow" / c, a.mpp) for c in ["BLA", *PAIRS]}
    sets |= {f"pbc/{t}": (d / "pbc-normal" / t, 0.088) for t in PAIRS.values()}
    sets |= {f"ghad/{c}": (d / "ghaderzadeh-all/images" / c, 0.45) for c in ["Benign", "Pre"]}
    res = {}
    for name, (folder, mpp) in sets.items():
        files = sorted(folder.glob("*.jpg"))
        files = [files[i] for i in np.linspace(0, len(files) - 1, min(a.n, len(files))).astype(int)]
        counts, areas, nucs, rbc, off, dist = [], [], [], [], 0, []
        for f in files:
            img = rgb(f)
            n, cc = centre_cell(img, mpp, seg)
            counts.append(n)
            if cc:
                areas.append(cc[0])
                nucs.append(cc[1])
                dist.append(cc[2])
                off += cc[3]
            rbc += red_cell_diameters(img)
        r = {"mpp": mpp, "images": len(files), "no_cell": int(np.sum(np.array(counts) == 0)),
             "cells_per_image_mean": float(np.mean(counts)),
             "cells_hist": {str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True))},
             "cells_off_centre": int(off), "cells_off_centre_fraction": float(off / max(1, sum(counts))),
             "images_without_centre_cell": int(len(files) - sum(v <= OFF_CENTRE_UM for v in dist)),
             "centre_cell_area_um2_median": float(np.median(areas)) if areas else None,
             "centre_nucleus_area_um2_median": float(np.median(nucs)) if nucs else None,
             "red_cells": len(rbc), "red_cell_diameter_px_median": float(np.median(rbc)) if rbc else None}
        if rbc:
            r["red_cell_diameter_um_median"] = r["red_cell_diameter_px_median"] * mpp
        res[name] = r
        print(name, json.dumps(r))
    print("\nimplied mll scale (µm/px):")
    for m, p in PAIRS.items():
        a_m, a_p = res[f"mll/{m}"], res[f"pbc/{p}"]
        for key in ("centre_cell_area_um2_median", "centre_nucleus_area_um2_median"):
            if a_m[key] and a_p[key]:
                print(f"  {m} vs {p} {key.split('_')[1]:>8}: {a.mpp * np.sqrt(a_p[key] / a_m[key]):.4f}")
    rb_m = [res[f"mll/{m}"]["red_cell_diameter_px_median"] for m in ["BLA", *PAIRS]]
    rb_p = [res[f"pbc/{p}"]["red_cell_diameter_px_median"] for p in PAIRS.values()]
    rb_m, rb_p = [v for v in rb_m if v], [v for v in rb_p if v]
    if rb_m and rb_p:
        print(f"  red cells: mll {np.median(rb_m):.1f} px, pbc {np.median(rb_p):.1f} px → "
              f"{0.088 * np.median(rb_p) / np.median(rb_m):.4f} µm/px (7.5 µm red cell → {7.5 / np.median(rb_m):.4f})")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
