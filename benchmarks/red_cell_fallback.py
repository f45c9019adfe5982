"""The red-cell level of a field without red-cell discs (issue 26): over its cell pixels below the nucleus floor
(`field_min_area_um2`: images at least this large) or over all of them (0), chosen leave one source out over the
leukaemic fields boxed by eye and the normal box-labelled sources together.

    python benchmarks/red_cell_fallback.py [--data ../shared/data] [--normal-step 1]

Every candidate segments every field once as the pipeline does (segment(), then the shipped platelet-clump test;
IoU >= 0.5, one-to-one).  For each source the candidate with the highest mean F1 over the OTHER sources is chosen
and scored on it (ties to 0, today's behaviour before the change).  Prints markdown tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import operator
from pathlib import Path

import numpy as np

from bcscan.scan.platelets import PlateletParams
from bcscan.scan.segmentation import SegmentationParams
from bcscan.testing import groundtruth as G
from compact_nuclei import normal_fields, score

AREAS_UM2 = (0.0, 1000.0, 2500.0, 10000.0)  # single-cell crops: 350-1,000 µm²; Ghaderzadeh fields 10,000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=G.SHARED_DATA)
    ap.add_argument("--normal-step", type=int, default=1, help="every N-th normal field")
    args = ap.parse_args()
    shipped, platelets = SegmentationParams(), PlateletParams()
    normal = normal_fields(args.data, args.normal_step, shipped.working_mpp)
    results = {a: score(dataclasses.replace(shipped, field_min_area_um2=a), normal, platelets, args.data)
               for a in AREAS_UM2}
    sources = list(results[0.0])

    def mean_f1(area, among):
        return float(np.mean([results[area][s].cells.f1 for s in among]))

    print("| field_min_area_um2 | " + " | ".join(f"{s} F1" for s in sources) + " | mean F1 |")
    print("|---|" + "---|" * (len(sources) + 1))
    for a in AREAS_UM2:
        print(f"| {a:g} | " + " | ".join(f"{results[a][s].cells.f1:.3f}" for s in sources)
              + f" | {mean_f1(a, sources):.3f} |")
    print("\n| left-out source | chosen on the others | P / R / F1 | blast recall | 0 (all cell pixels): P / R / F1 "
          "| 0: blast recall |")
    print("|---|---|---|---|---|---|")
    for s in sources:
        chosen = max(AREAS_UM2, key=lambda a: (round(mean_f1(a, [o for o in sources if o != s]), 6), a == 0.0))
        row = []
        for a in (chosen, 0.0):
            b = results[a][s]
            row += [f"{b.cells.precision:.3f} / {b.cells.recall:.3f} / {b.cells.f1:.3f}",
                    f"{b.blast_recall:.3f} ({b.blasts_found}/{b.blasts})" if b.blasts else "–"]
        print(f"| {s} | {chosen:g} | " + " | ".join(row) + " |")
    leukaemic = [s for s in sources if s not in G.NORMAL_BOX_SOURCES]
    for a in AREAS_UM2:
        b = functools.reduce(operator.add, (results[a][s] for s in leukaemic))
        print(f"\n{a:g}{' (shipped)' if a == shipped.field_min_area_um2 else ''}: leukaemic fields pooled P / R / F1 "
              f"{b.cells.precision:.3f} / {b.cells.recall:.3f} / {b.cells.f1:.3f}, blasts {b.blast_recall:.3f} "
              f"({b.blasts_found}/{b.blasts})")


if __name__ == "__main__":
    main()
