"""The counting area picked on a whole slide's overview (issue 26 item 4), on the real wsi/smear slide.

The slide as far as ../shared/data has it (`bcscan.testing.degrade.RealSmearSlide`: its overview, and its
monolayer at full resolution wherever a tile is read).  Prints the tiles and area kept and excluded, and
what the judgement costs: planning with it against planning without it, and the tiles it spares reading,
each tile's read + segmentation + quality measured here, side by side in one run.

    python benchmarks/counting_area.py [DATA_DIR] [--rounds 3]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from bcscan.scan.counting_area import area_summary
from bcscan.scan.pipeline import plan_scan
from bcscan.scan.quality import QualityParams, measure_tile
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.scan.tiling import TilingParams, read_tile
from bcscan.testing.degrade import RealSmearSlide
from bcscan.testing.groundtruth import SHARED_DATA


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", type=Path, default=SHARED_DATA)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    seg, tiling, quality = SegmentationParams(), TilingParams(), QualityParams()
    without = replace(quality, overview_min_tiles=10**9)
    slide = RealSmearSlide(args.data_dir)

    plan_s = {"with": [], "without": []}
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        for name, params in (("with", quality), ("without", without)):
            t0 = time.perf_counter()
            plan = plan_scan(slide, seg, tiling, crop_um=18.0, quality=params)
            plan_s[name].append(time.perf_counter() - t0)
            if name == "with":
                judged = plan
            else:
                whole = plan
    t0 = time.perf_counter()
    sample = judged.tiles[:: max(1, len(judged.tiles) // 20)]
    qualities = []
    for tile in sample:
        rgb = read_tile(slide, judged, tile)
        qualities.append(measure_tile(rgb, segment(rgb, seg.working_mpp, seg), seg, quality))
    tile_s = (time.perf_counter() - t0) / len(sample)

    ok = [q for q in qualities if q.ok]
    area = area_summary(judged, [ok[0]] * len(judged.tiles))  # the kept tiles as counted: the overview's share
    thick = sum(r == "thick" for _, r in judged.overview_excluded)
    print(f"wsi/smear: {len(whole.tiles)} tiles with content (blank glass: {whole.skipped}); the overview, calibrated "
          f"at {judged.od_per_cover:.4f} area OD per red-cell layer on {quality.overview_calibration_tiles} tiles, "
          f"leaves {len(judged.tiles)} to read: {thick} thick, {len(judged.overview_excluded) - thick} thin not read")
    total = area["area_counted_mm2"] + area["area_excluded_thick_mm2"] + area["area_excluded_thin_mm2"]
    print(f"area: counted {area['area_counted_mm2']:.1f} mm² ({area['area_counted_mm2'] / total:.0%}), thick "
          f"{area['area_excluded_thick_mm2']:.1f} mm² ({area['area_excluded_thick_mm2'] / total:.0%}), thin "
          f"{area['area_excluded_thin_mm2']:.1f} mm² ({area['area_excluded_thin_mm2'] / total:.0%})")
    best = {k: min(v) for k, v in plan_s.items()}
    with_s = best["with"] + len(judged.tiles) * tile_s
    without_s = best["without"] + len(whole.tiles) * tile_s
    print(f"time: a tile read, segmented and judged {tile_s * 1000:.0f} ms; planning {best['with']:.2f} s with the "
          f"judgement, {best['without']:.2f} s without (best of {args.rounds}); the slide's tiles then "
          f"{with_s:.0f} s against {without_s:.0f} s: x{with_s / without_s:.2f}")

if __name__ == "__main__":
    main()
