"""Cost of the white-cell detection per megapixel against the detector issue 26 set its limit on (x1.5).

    python benchmarks/segmentation_cost.py [--data ../shared/data] [--repeats 5]

The baseline is the segmentation module as it was when issue 26 was filed (commit ISSUE_26_COMMIT, read from git
and loaded beside today's), so speeding up what both share lowers the ratio as it should.  Both run in one process,
interleaved, best of `--repeats` passes, one thread, on the same images:

- the boxed fields at the working resolution (the leukaemic fields of issue 26 and every field of the normal
  box-labelled sources): 1,643 small images, where per-image overheads weigh;
- tiles as the pipeline cuts them (`tile_px` 1024 at the working resolution): the same fields laid side by side,
  per source, into 1024 x 1024 mosaics.

"Shipped detection" is segment(), its reconciliation with the learnt centres (`scan.centres`, ONNX Runtime on one
thread) and the platelet-clump test, as `bcscan scan` runs them on fields and slides; "colour rules" the same
without the centres.  Prints a markdown table.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from bcscan.scan.centres import CentreParams
from bcscan.scan.platelets import PlateletParams, white_cells
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.testing import groundtruth as G

ISSUE_26_COMMIT = "39fa26e"  # bcscan/scan/segmentation.py when issue 26 was filed (2026-12-05)
TILE_PX = 1024


def issue_26_segmentation() -> types.ModuleType:
    """bcscan/scan/segmentation.py of ISSUE_26_COMMIT, as a module of its own."""
    source = subprocess.run(["git", "show", f"{ISSUE_26_COMMIT}:bcscan/scan/segmentation.py"], check=True,
                            capture_output=True, text=True, cwd=G.REPO_ROOT).stdout
    module = types.ModuleType("issue_26_segmentation")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{ISSUE_26_COMMIT}:bcscan/scan/segmentation.py", "exec"), module.__dict__)
    return module


def boxed_fields(data: Path, working_mpp: float) -> list[G.WorkingField]:
    """The leukaemic fields and every field of the normal box-labelled sources, at the working resolution."""
    return [G.WorkingField.of(s, working_mpp) for s in list(G.leukaemic_samples(data)) + G.normal_box_samples(data)]


def mosaics(images: list[tuple[str, np.ndarray]], side: int = TILE_PX) -> list[np.ndarray]:
    """Images of one source cropped to that source's smallest shape and laid side by side into side x side tiles
    (a tile not filled is dropped)."""
    by_source: dict[str, list[np.ndarray]] = defaultdict(list)
    for source, rgb in images:
        by_source[source].append(rgb)
    tiles = []
    for group in by_source.values():
        h, w = min(im.shape[0] for im in group), min(im.shape[1] for im in group)
        rows, cols = -(-side // h), -(-side // w)
        for i in range(0, len(group) - rows * cols + 1, rows * cols):
            cells = [im[:h, :w] for im in group[i:i + rows * cols]]
            tile = np.vstack([np.hstack(cells[r * cols:(r + 1) * cols]) for r in range(rows)])
            tiles.append(np.ascontiguousarray(tile[:side, :side]))
    return tiles


def best_seconds(runs: dict, images: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Seconds per pass over `images` of each run, best of `repeats` interleaved passes."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            for rgb in images:
                run(rgb)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=G.SHARED_DATA)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    params, platelets, centres, old = SegmentationParams(), PlateletParams(), CentreParams(), issue_26_segmentation()
    old_params = old.SegmentationParams(working_mpp=params.working_mpp)
    runs = {"issue 26's detector": lambda rgb: old.segment(rgb, params.working_mpp, old_params),
            "segment() today": lambda rgb: segment(rgb, params.working_mpp, params),
            "colour rules (segment() + platelet test)": lambda rgb: white_cells(rgb, params, platelets),
            "shipped detection (with the learnt centres)": lambda rgb: white_cells(rgb, params, platelets, centres)}
    fields_ = boxed_fields(args.data, params.working_mpp)
    sets = {"boxed fields": [f.rgb for f in fields_],
            f"{TILE_PX}-px tiles of them": mosaics([(f.sample.source, f.rgb) for f in fields_])}
    print("| images | count | megapixels | " + " | ".join(f"{name}: ms/MP (x issue 26's)" for name in runs) + " |")
    print("|---|---|---|" + "---|" * len(runs))
    for label, images in sets.items():
        mp = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
        t = best_seconds(runs, images, args.repeats)
        base = t["issue 26's detector"]
        print(f"| {label} | {len(images)} | {mp:.1f} | "
              + " | ".join(f"{1000 * s / mp:.0f} (x{s / base:.2f})" for s in t.values()) + " |")


if __name__ == "__main__":
    main()
