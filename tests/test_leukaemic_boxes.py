"""The leukaemic fields boxed by eye (issue 26 item 1): the data is whole, and the shipped detector loses no blasts.

Floors sit just under the shipped detector's figures of 2026-12-07 (benchmarks/README.md, "Leukaemic fields boxed by
eye"; benchmarks/leukaemic_fields.py), so that a change which finds fewer white cells on blast-crowded fields fails.
"""
from __future__ import annotations

import pytest
from helpers import shared

from bcscan.scan.platelets import PlateletParams
from bcscan.scan.segmentation import SegmentationParams
from bcscan.testing import groundtruth as G

# Issue 26 asks for 60 fields, 300 white cells, 150 blasts; all 86 drawn fields are boxed (798 boxes, 604 blasts).
MIN_FIELDS, MIN_CELLS, MIN_BLASTS = 60, 300, 150
# source: (WBC recall floor, blast recall floor, None where the source has no blasts); the colour rules alone on all 86
# fields, measured 2026-12-08 (benchmarks/leukaemic_fields.py): early 0.888 / 0.926, pre 0.778 / 0.829, pro 0.744 /
# 0.783, benign 0.679 / -, mll 0.556 / 0.800, lmu 0.833 / 0.900. On the first 60 fields (2026-12-07): early 0.878 /
# 0.906, pre 0.770 / 0.828 (0.400 / 0.457 before the red-cell discs and faint compact nuclei), pro 0.803 / 0.850,
# benign 0.723 / -
RECALL_FLOORS = {"ghaderzadeh-early": (0.86, 0.90), "ghaderzadeh-pre": (0.75, 0.80), "ghaderzadeh-pro": (0.72, 0.76),
                 "ghaderzadeh-benign": (0.65, None), "mll-bone-marrow": (0.52, 0.79), "lmu-aml-blood": (0.80, 0.88)}


def test_boxes_are_whole_and_inside_their_images():
    by_image = G.leukaemic_boxes_by_image()
    boxes = [b for field in by_image.values() for b in field]
    assert len(by_image) >= MIN_FIELDS and len(boxes) >= MIN_CELLS
    assert sum(b.kind == "blast" for b in boxes) >= MIN_BLASTS
    assert {b.kind for b in boxes} <= {"blast", "normal", "unsure"}
    assert all(b.note for b in boxes if b.kind == "unsure"), "every unsure box says why"
    benign = [b for image, field in by_image.items() if "/Benign/" in image for b in field]
    assert benign and all(b.kind != "blast" for b in benign), "Benign fields hold hematogones: normal, not blast"
    for image, field in by_image.items():
        height, width = G.read_rgb(shared(image)).shape[:2]
        for b in field:
            assert 0 <= b.x0 < b.x1 <= width and 0 <= b.y0 < b.y1 <= height, b
            touches = b.x0 == 0 or b.y0 == 0 or b.x1 == width or b.y1 == height
            assert b.edge or not touches, f"{b} reaches the border but is not marked edge"


@pytest.mark.parametrize("source", sorted(RECALL_FLOORS))
def test_shipped_detector_finds_the_blasts_it_finds_today(source):
    shared("ghaderzadeh-all")
    scores = G.leukaemic_scores(SegmentationParams(), PlateletParams())
    cells_floor, blasts_floor = RECALL_FLOORS[source]
    assert scores[source].cells.recall >= cells_floor, scores[source]
    if blasts_floor is None:
        assert scores[source].blasts == 0, scores[source]
    else:
        assert scores[source].blast_recall >= blasts_floor, scores[source]
