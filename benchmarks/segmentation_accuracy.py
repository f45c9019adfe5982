"""Accuracy and speed of WBC segmentation against the shared ground truth.

    python benchmarks/segmentation_accuracy.py [--data ../shared/data] [--step N]

Prints one table: box detection (IoU >= 0.5, one-to-one) on BCCD and TXL-PBC
(total and per TXL source), mean Dice on the Zheng 2018 masks, WBCs found per
Ghaderzadeh field and per PBC single-cell image, and the run time in ms per
megapixel at the working resolution.  Uses the defaults of SegmentationParams,
which are also the `segmentation:` section of configs/default.yaml.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.testing import groundtruth as V


def detection_rows(data: Path, params: SegmentationParams, step: int) -> list[tuple]:
    per_source: dict[str, list[V.DetectionScore]] = defaultdict(list)
    for sample in itertools.chain(itertools.islice(V.bccd_samples(data), 0, None, step),
                                  itertools.islice(V.txl_samples(data), 0, None, step)):
        seg = segment(V.read_rgb(sample.image), sample.mpp, params)
        per_source[sample.source].append(V.score_boxes(V.cell_boxes(seg), sample.boxes))
    rows = [("bccd", V.pooled(per_source.pop("bccd", [])))]
    rows.append(("txl-pbc (all)", V.pooled(s for v in per_source.values() for s in v)))
    rows += [(f"  txl {k}", V.pooled(v)) for k, v in sorted(per_source.items())]
    return rows


def zheng_dice(data: Path, dataset: str, params: SegmentationParams) -> tuple[int, float, float, int]:
    """Mean whole-cell and nucleus Dice of the detection nearest the image centre (0 if none)."""
    cell_d, nuc_d, missed = [], [], 0
    for sample in V.zheng_samples(data, dataset):
        rgb = V.read_rgb(sample.image)
        seg = segment(rgb, sample.mpp, params)
        h, w = rgb.shape[:2]
        if not seg.cells:
            missed += 1
            cell_d.append(0.0)
            nuc_d.append(0.0)
            continue
        k = int(np.argmin([(c.x - w / 2) ** 2 + (c.y - h / 2) ** 2 for c in seg.cells])) + 1
        cell = seg.cell_labels == k
        gh, gw = sample.cell.shape  # a few masks differ from their image by a pixel or two
        cell, nucleus = cell[:gh, :gw], (seg.nucleus_mask & cell)[:gh, :gw]
        cell_d.append(V.dice(cell, sample.cell[: cell.shape[0], : cell.shape[1]]))
        nuc_d.append(V.dice(nucleus, sample.nucleus[: cell.shape[0], : cell.shape[1]]))
    return len(cell_d), float(np.mean(cell_d)), float(np.mean(nuc_d)), missed


def count_rows(data: Path, params: SegmentationParams, step: int) -> list[tuple[str, int, np.ndarray]]:
    """WBCs found per image where no boxes exist (Ghaderzadeh fields, PBC single cells)."""
    rows = []
    for cls in ("Benign", "Early", "Pre", "Pro"):
        files = V.ghaderzadeh_fields(data, cls, step)
        counts = np.array([len(segment(V.read_rgb(f), V.GHADERZADEH_MPP, params).cells) for f in files])
        rows.append((f"ghaderzadeh {cls}", len(files), counts))
    for cls in sorted(p.name for p in (data / "pbc-normal").iterdir() if p.is_dir()):
        files = sorted((data / "pbc-normal" / cls).glob("*.jpg"))[::max(step, 3)]
        counts = np.array([len(segment(V.read_rgb(f), V.PBC_MPP, params).cells) for f in files])
        rows.append((f"pbc {cls}", len(files), counts))
    return rows


def ms_per_megapixel(data: Path, params: SegmentationParams, n: int = 60) -> float:
    """segment() time on BCCD/TXL fields already resampled to working_mpp, as the pipeline calls it."""
    images = []
    for sample in itertools.islice(itertools.chain(V.bccd_samples(data), V.txl_samples(data)), 0, 8 * n, 8):
        rgb = V.read_rgb(sample.image)
        s = sample.mpp / params.working_mpp
        images.append(cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    # Tile them into one slide-like 4x4 mosaic per 16 images: the pipeline's tiles are large.
    mosaics = []
    for i in range(0, len(images) - 15, 16):
        rows = []
        for r in range(4):
            row = images[i + 4 * r:i + 4 * r + 4]
            hh = min(im.shape[0] for im in row)
            rows.append(np.hstack([im[:hh] for im in row]))
        ww = min(r.shape[1] for r in rows)
        mosaics.append(np.vstack([r[:, :ww] for r in rows]))
    segment(mosaics[0], params.working_mpp, params)  # warm-up
    t0 = time.perf_counter()
    for m in mosaics:
        segment(m, params.working_mpp, params)
    dt = time.perf_counter() - t0
    return 1000 * dt / (sum(m.shape[0] * m.shape[1] for m in mosaics) / 1e6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=V.SHARED_DATA)
    ap.add_argument("--step", type=int, default=1, help="use every N-th image (quick look)")
    args = ap.parse_args(argv)
    if not (args.data / "bccd").is_dir():
        print(f"no shared data at {args.data}", file=sys.stderr)
        return 2
    params = SegmentationParams()
    print(f"params: {params}")
    print(f"{'set':24s} {'images':>6s} {'GT':>5s} {'det':>5s} {'P':>6s} {'R':>6s} {'F1':>6s}")
    for name, s in detection_rows(args.data, params, args.step):
        print(f"{name:24s} {s.images:6d} {s.gt:5d} {s.detections:5d} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f}")
    print(f"{'set':24s} {'images':>6s} {'mpp':>6s} {'cell Dice':>10s} {'nucleus Dice':>13s} {'no cell':>8s}")
    for ds in ("Dataset1", "Dataset2"):
        n, dc, dn, missed = zheng_dice(args.data, ds, params)
        print(f"{'zheng ' + ds:24s} {n:6d} {V.ZHENG_MPP[ds]:6.3f} {dc:10.3f} {dn:13.3f} {missed:8d}")
    print(f"{'set':24s} {'images':>6s} {'WBCs/image: mean':>17s} {'=0':>6s} {'=1':>6s} {'2-3':>6s} {'>3':>6s}")
    for name, n, c in count_rows(args.data, params, args.step):
        print(f"{name:24s} {n:6d} {c.mean():17.2f} {np.mean(c == 0):6.2f} {np.mean(c == 1):6.2f} "
              f"{np.mean((c >= 2) & (c <= 3)):6.2f} {np.mean(c > 3):6.2f}")
    print(f"speed: {ms_per_megapixel(args.data, params):.1f} ms per megapixel at working_mpp {params.working_mpp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
