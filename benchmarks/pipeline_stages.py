"""Time the scan pipeline stage by stage on a slide built from real smear fields.

    python benchmarks/pipeline_stages.py [--data ../shared/data] [--grid 12] [--model PATH]

Builds a pyramidal TIFF from a grid×grid mosaic of BCCD fields (0.065 µm/px),
then times, in one run: reading every tile, segmenting every tile, classifying
every crop (bcscan's classifier beside the bare Keras model at the same batch
size) and the whole `scan_cells`.  Prints megapixels/s (at level 0 and at the
working scale) and cells/s per stage, and the ratios that matter.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bccd_mosaic import BCCD_MPP, bccd_fields, write_bccd_slide
from PIL import Image

from bcscan.model.classifier import CellClassifier, ClassificationParams, to_model_input
from bcscan.scan.crops import crop_cells, crop_side_px
from bcscan.scan.pipeline import scan_cells
from bcscan.scan.quality import QualityParams
from bcscan.scan.reading import ReadingParams, open_scan
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.scan.tiling import TilingParams, plan_tiles, read_tile
from bcscan.testing.groundtruth import SHARED_DATA


def build_slide(data: Path, grid: int, path: Path) -> int:
    fields = bccd_fields(data)[: grid * grid]
    if len(fields) < grid * grid:
        raise SystemExit(f"need {grid * grid} BCCD images in {data}/bccd/JPEGImages")
    fw, fh = Image.open(fields[0]).size
    write_bccd_slide(path, fields, grid * fw, grid * fh)
    return grid * fw * grid * fh


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--grid", type=int, default=12, help="fields per side of the mosaic")
    parser.add_argument("--model", default=ClassificationParams().model)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    seg, tiling = SegmentationParams(), TilingParams()
    classifier = CellClassifier(ClassificationParams(model=args.model, batch_size=args.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        slide_path = Path(tmp) / "mosaic.tif"
        level0_px = build_slide(args.data, args.grid, slide_path)
        with open_scan(slide_path, ReadingParams()) as scan:
            plan = plan_tiles(scan, seg.working_mpp, tiling)
            tiles, t_read = timed(lambda: [read_tile(scan, plan, t) for t in plan.tiles])
            segs, t_seg = timed(lambda: [segment(rgb, seg.working_mpp, seg) for rgb in tiles])
            side = crop_side_px(classifier.info.crop_um, seg.working_mpp)
            crops = np.concatenate([crop_cells(rgb, np.array([(c.x, c.y) for c in s.cells]).reshape(-1, 2), side)
                                    for rgb, s in zip(tiles, segs)])
            classifier.predict(crops[: args.batch_size])  # compile once, outside the timings
            _, t_cls = timed(lambda: classifier.predict(crops))
            batches = [to_model_input(crops[i:i + args.batch_size], classifier.info.input_size)
                       for i in range(0, len(crops), args.batch_size)]
            full = [b for b in batches if len(b) == args.batch_size] or batches
            import tensorflow as tf

            bare = tf.function(lambda b: classifier.model(b, training=False), jit_compile=classifier.device == "cpu")
            bare(full[0]).numpy()  # compile
            _, t_bare = timed(lambda: [bare(b).numpy() for b in full])
            bare_rate = sum(len(b) for b in full) / t_bare
            result, t_all = timed(lambda: scan_cells(scan, seg, tiling, classifier, QualityParams()))

    working_px = plan.width * plan.height
    n = len(result.cells)
    print(f"slide: {args.grid}x{args.grid} BCCD fields, {level0_px / 1e6:.1f} MP at level 0 "
          f"({BCCD_MPP} µm/px), {working_px / 1e6:.2f} MP at working {seg.working_mpp} µm/px, "
          f"read from level {plan.level}; {len(plan.tiles)} tiles; {n} cells; model {classifier.info.name} "
          f"(input {classifier.info.input_size}), batch {args.batch_size}, device {classifier.device}")
    print(f"{'stage':<28}{'seconds':>9}{'level-0 MP/s':>14}{'working MP/s':>14}{'cells/s':>10}")
    for name, t, cells in [("read tiles", t_read, None), ("segment", t_seg, None),
                           ("classify (bcscan)", t_cls, len(crops)), ("whole scan_cells", t_all, n)]:
        rate = f"{cells / t:10.1f}" if cells else f"{'':>10}"
        print(f"{name:<28}{t:9.2f}{level0_px / 1e6 / t:14.1f}{working_px / 1e6 / t:14.2f}{rate}")
    print(f"{'classify (bare model)':<28}{'':>9}{'':>14}{'':>14}{bare_rate:10.1f}")
    slowest = max(t_read, t_seg, t_cls)
    print(f"ratios: bcscan classify / bare model = {len(crops) / t_cls / bare_rate:.2f}; "
          f"whole scan / sum of stages = {t_all / (t_read + t_seg + t_cls):.2f}; "
          f"whole scan / slowest stage = {t_all / slowest:.2f}")


if __name__ == "__main__":
    main()
