"""Tiling: cores partition the scan, blank glass is skipped unread, and a cell cut by a tile
border is found exactly once."""
from __future__ import annotations

import numpy as np
import pytest

from bcscan.scan.quality import QualityParams
from bcscan.scan.reading import ReadingParams, open_scan
from bcscan.scan.segmentation import SegmentationParams
from bcscan.scan.tiling import TilingParams, plan_tiles, read_tile
from bcscan.testing.synthetic import GLASS, draw_smear, write_pyramidal_tiff


def test_cores_partition_the_scan_and_reads_stay_inside(tmp_path):
    rgb, _ = draw_smear(2000, 1300, 0.25, 5)
    write_pyramidal_tiff(tmp_path / "s.tif", rgb, 0.25)
    with open_scan(tmp_path / "s.tif", ReadingParams()) as scan:
        plan = plan_tiles(scan, 0.5, TilingParams(tile_px=256, margin_um=20))
        assert plan.level == 1 and (plan.width, plan.height) == (1000, 650)
        cover = np.zeros((plan.height, plan.width), np.int32)
        for tile in plan.tiles:
            x0, y0, x1, y1 = tile.core
            cover[y0:y1, x0:x1] += 1
            rx0, ry0, rx1, ry1 = tile.read
            assert 0 <= rx0 <= x0 and 0 <= ry0 <= y0 and x1 <= rx1 <= plan.width and y1 <= ry1 <= plan.height
            assert read_tile(scan, plan, tile).shape == (ry1 - ry0, rx1 - rx0, 3)
        assert plan.skipped == 0 and (cover == 1).all()


def test_blank_glass_tiles_are_skipped(tmp_path):
    rgb = np.empty((2048, 2048, 3), np.uint8)
    rgb[:] = GLASS
    field, _ = draw_smear(600, 600, 0.25, 2, seed=2)
    rgb[100:700, 100:700] = field
    write_pyramidal_tiff(tmp_path / "s.tif", rgb, 0.25)
    with open_scan(tmp_path / "s.tif", ReadingParams()) as scan:
        plan = plan_tiles(scan, 0.25, TilingParams(tile_px=512, margin_um=10))
    assert len(plan.tiles) + plan.skipped == 16
    assert [t.core[:2] for t in plan.tiles] == [(0, 0), (512, 0), (0, 512), (512, 512)]


@pytest.mark.parametrize("tile_px", [128, 200, 1024])
def test_cells_on_tile_borders_are_counted_once(tmp_path, tile_px, untrained_model):
    from bcscan.model.classifier import CellClassifier, ClassificationParams
    from bcscan.scan.pipeline import scan_cells

    rgb, drawn = draw_smear(2400, 1600, 0.25, 40, seed=7)
    write_pyramidal_tiff(tmp_path / "s.tif", rgb, 0.25)
    classifier = CellClassifier(ClassificationParams(model=str(untrained_model), batch_size=16))
    with open_scan(tmp_path / "s.tif", ReadingParams()) as scan:
        result = scan_cells(scan, SegmentationParams(), TilingParams(tile_px=tile_px), classifier, QualityParams())
    found = result.cells[["x", "y"]].to_numpy()
    truth = np.array([(c.x, c.y) for c in drawn])
    distances = np.linalg.norm(found[:, None] - truth[None], axis=2)
    assert len(found) == len(truth)
    assert (distances.min(axis=0) < 3 / 0.25).all()          # every drawn cell found within 3 µm
    assert len(set(distances.argmin(axis=1))) == len(truth)  # and each one once
    if tile_px == 128:
        cut = sum(any(c.x // (tile_px * 0.4 / 0.25) != (c.x + d) // (tile_px * 0.4 / 0.25)
                      for d in (-c.radius, c.radius)) for c in drawn)
        assert cut > 5  # the test really has cells straddling tile borders
