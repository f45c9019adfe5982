"""The shipped white-cell detector on the leukaemic fields boxed by eye (issue 26 item 1): how many blasts does it find?

    python benchmarks/leukaemic_fields.py [--data ../shared/data]

Ground truth: bcscan/testing/data/leukaemic_boxes.csv (every white cell; how it was boxed: its header and
benchmarks/box_fields.py). Detections as the pipeline makes them on fields: segment() with the shipped
SegmentationParams, reconciled with the shipped learnt centres (`scan.centres`; its network saw these fields in
training, so this table is in-sample: benchmarks/learnt_detector.py gives the figures left out), then the shipped
platelet-clump test; and the same without the centres (the colour rules alone). Prints a markdown table per
detection and matching: per source, fields, boxes (of them blasts), detections, P / R / F1 (one-to-one, at IoU >= 0.5
and by centres: each box holding the other's centre, `groundtruth.match_centres`), and blast recall (blast boxes
matched; none on Ghaderzadeh Benign, whose cells are hematogones, boxed normal); "unsure" boxes count as white cells.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import operator
from pathlib import Path

from bcscan.scan.centres import CentreParams
from bcscan.scan.platelets import PlateletParams
from bcscan.scan.segmentation import SegmentationParams
from bcscan.testing import groundtruth as G


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=G.SHARED_DATA)
    args = parser.parse_args()
    for (title, centres), (matching, match) in itertools.product(
            (("shipped detection (colour rules with the learnt centres)", CentreParams()), ("colour rules alone", None)),
            (("IoU >= 0.5", G.match_boxes), ("matched by centres", G.match_centres))):
        scores = G.leukaemic_scores(SegmentationParams(), PlateletParams(), args.data, centres, match)
        scores["all"] = functools.reduce(operator.add, scores.values())
        print(f"\n{title}, {matching}\n\n| source | fields | WBC boxes | blasts | detections | P | R | F1 | blast recall |")
        print("|---|---|---|---|---|---|---|---|---|")
        for source, s in scores.items():
            c = s.cells
            print(f"| {source} | {c.images} | {c.gt} | {s.blasts} | {c.detections} | {c.precision:.3f} | {c.recall:.3f} "
                  f"| {c.f1:.3f} | {f'{s.blast_recall:.3f} ({s.blasts_found}/{s.blasts})' if s.blasts else '– (no blasts)'} |")


if __name__ == "__main__":
    main()
