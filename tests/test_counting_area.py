"""The counting area of a whole slide (issue 26 item 4): its monolayer picked on the overview, the thick
end and the feathered edge left unread, and the area counted or excluded by reason in scans.csv and the PDF.

Real data (../shared/data/wsi/smear): the overview of a real smear, thick end at the left, feathered edge
at the right, and full-resolution tiles of its monolayer.  A slide is made of them: the real overview as
its thumbnail, the real monolayer tiles as the pixels any tile read returns.  The end-to-end test scans a
pyramidal TIFF made of the real monolayer tiles, stacked four deep on its left (thick) and thinned to a
tenth on its right (thin), whose areas are known by construction.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import shared

from bcscan.batch.outline import run_batch
from bcscan.batch.plan import BatchRun
from bcscan.batch.settings import load_settings
from bcscan.results.reports.formatting import fmt_num
from bcscan.scan.counting_area import area_summary
from bcscan.scan.pipeline import plan_scan
from bcscan.scan.quality import QualityParams, measure_tile, od_per_cover, overview_crowding
from bcscan.scan.reading import resample
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.scan.tiling import TilingParams, core_area_um2
from bcscan.testing import degrade as D
from bcscan.testing.groundtruth import read_rgb
from bcscan.testing.synthetic import write_pyramidal_tiff

pypdf = pytest.importorskip("pypdf")

SEG = SegmentationParams()
QP = QualityParams()


def monolayer_tiles() -> list[Path]:
    return sorted(shared("wsi", "smear").glob("I_*.png"))


def test_the_real_smears_thick_end_and_feathered_edge_are_left_unread():
    slide = D.RealSmearSlide(shared("wsi", "smear").parents[1])
    plan = plan_scan(slide, SEG, TilingParams(), crop_um=18.0, quality=QP)
    assert slide.reads == QP.overview_calibration_tiles  # the calibration, and nothing else read yet

    # Calibrated on the slide's own monolayer: the real tiles' red-cell layer.
    real = [measure_tile(w, segment(w, SEG.working_mpp, SEG), SEG, QP)
            for w in (resample(read_rgb(p), D.SMEAR_TILE_MPP, SEG.working_mpp) for p in monolayer_tiles())]
    assert plan.od_per_cover == pytest.approx(od_per_cover(real), rel=0.15)

    side = TilingParams().tile_px
    kept = {(t.core[0], t.core[1]) for t in plan.tiles}
    for p in monolayer_tiles():  # where the real monolayer tiles were taken: counted
        x, y = (int(v) * D.SMEAR_TILE_MPP / SEG.working_mpp for v in p.stem.split("_")[2:4])
        assert (int(x // side) * side, int(y // side) * side) in kept, p.name

    # The thick end (a wedge from the left) and the feathered edge, tile by tile as the block-by-block overview
    # judgement finds them (tests/test_quality.py checks where those lie on this smear).
    blocks = overview_crowding(slide.thumbnail(0), D.SMEAR_OVERVIEW_MPP, side * SEG.working_mpp, plan.od_per_cover, QP).verdict
    verdicts = [(t, "") for t in plan.tiles] + plan.overview_excluded
    pairs = [(str(blocks[t.core[1] // side, t.core[0] // side]).replace("glass", "thin"), v) for t, v in verdicts
             if t.core[1] // side < blocks.shape[0] and t.core[0] // side < blocks.shape[1]]
    assert len(pairs) > 0.95 * len(verdicts)
    assert np.mean([ref == v for ref, v in pairs]) > 0.95
    thick = sum(v == "thick" for _, v in plan.overview_excluded)
    assert thick > 0.3 * len(verdicts) and sum(v == "thin" for _, v in plan.overview_excluded) >= 5

    # Every tile of the smear's content is counted or excluded, once, and the areas add up.
    qualities = [measure_tile(np.zeros((8, 8, 3), np.uint8) + 255, segment(np.zeros((8, 8, 3), np.uint8) + 255,
                                                                           SEG.working_mpp, SEG), SEG, QP)] * len(plan.tiles)
    area = area_summary(plan, qualities)
    total = sum(core_area_um2(plan, t) for t in plan.tiles) + sum(core_area_um2(plan, t) for t, _ in plan.overview_excluded)
    assert area["tiles_excluded_overview"] == len(plan.overview_excluded)
    parts = [area["area_counted_mm2"], area["area_excluded_thick_mm2"], area["area_excluded_thin_mm2"],
             area["area_excluded_quality_mm2"]]
    assert sum(parts) == pytest.approx(total / 1e6, abs=1e-3) and area["area_excluded_quality_mm2"] == 0
    assert area["area_excluded_thick_mm2"] > 0.1 * total / 1e6 and area["area_counted_mm2"] > 0.3 * total / 1e6


TILE_PX = 512                          # 205 µm cores at the working scale
COLUMNS, ROWS = 12, 4                  # thick | monolayer | thin columns of tiles
THICK_COLUMNS, THIN_COLUMNS = 4, 2


def made_slide() -> np.ndarray:
    """Real monolayer tiles (at the working scale, seamless), four deep in the left columns, a tenth kept in
    the right ones."""
    tile = resample(read_rgb(monolayer_tiles()[1]), D.SMEAR_TILE_MPP, SEG.working_mpp)
    mosaic = D.mirror_mosaic(tile)
    width, height = COLUMNS * TILE_PX, ROWS * TILE_PX
    slide = np.tile(mosaic, (math.ceil(height / mosaic.shape[0]), math.ceil(width / mosaic.shape[1]), 1))[:height, :width]
    thick_end, thin_start = THICK_COLUMNS * TILE_PX, (COLUMNS - THIN_COLUMNS) * TILE_PX
    slide = slide.copy()
    slide[:, :thick_end] = D.stack(slide[:, :thick_end], 4)
    slide[:, thin_start:] = D.thin(slide[:, thin_start:], SEG.working_mpp, keep=0.1)
    return slide


@pytest.fixture(scope="module")
def made_run(tmp_path_factory, untrained_model):
    root = tmp_path_factory.mktemp("counting-area")
    write_pyramidal_tiff(root / "scans" / "P1" / "smear.tif", made_slide(), SEG.working_mpp)
    settings = load_settings(overrides={"classification": {"model": str(untrained_model)},
                                        "tiling": {"tile_px": TILE_PX}, "pipeline": {"workers": 1}})
    result = run_batch(BatchRun(root / "scans", root / "out", settings))
    assert result.n_failed == 0
    return root / "out"


def test_scan_counts_the_monolayer_only_and_reports_each_area(made_run):
    scan = pd.read_csv(made_run / "scans.csv").iloc[0]
    tile_mm2 = (TILE_PX * SEG.working_mpp) ** 2 / 1e6
    monolayer = COLUMNS - THICK_COLUMNS - THIN_COLUMNS
    assert scan["tiles_excluded_overview"] == (THICK_COLUMNS + THIN_COLUMNS) * ROWS
    assert scan["tiles_read"] == monolayer * ROWS
    assert scan["area_excluded_thick_mm2"] == pytest.approx(THICK_COLUMNS * ROWS * tile_mm2, abs=1e-3)
    assert scan["area_excluded_thin_mm2"] == pytest.approx(THIN_COLUMNS * ROWS * tile_mm2, abs=1e-3)
    assert scan["area_counted_mm2"] + scan["area_excluded_quality_mm2"] == pytest.approx(monolayer * ROWS * tile_mm2,
                                                                                         abs=1e-3)
    assert scan["area_counted_mm2"] >= 0.9 * monolayer * ROWS * tile_mm2  # real monolayer tiles: fit to count

    cells = pd.read_csv(made_run / "cells.csv")
    assert len(cells) > 0
    assert cells.x.between(THICK_COLUMNS * TILE_PX, (COLUMNS - THIN_COLUMNS) * TILE_PX).all()

    excluded = pd.read_csv(made_run / "excluded_tiles.csv")
    overview = excluded[excluded.reasons.isin(["thick", "thin"]) & (excluded.x < THICK_COLUMNS * TILE_PX)]
    assert (overview.reasons == "thick").sum() == THICK_COLUMNS * ROWS
    assert (excluded[excluded.x >= (COLUMNS - THIN_COLUMNS) * TILE_PX].reasons == "thin").sum() == THIN_COLUMNS * ROWS

    text = re.sub(r"\s+", " ", " ".join(p.extract_text() or "" for p in pypdf.PdfReader(made_run / "reports" / "P1.pdf").pages))
    assert (f"counted in {fmt_num(scan['area_counted_mm2'], 2)} mm²; not counted: thick "
            f"{fmt_num(scan['area_excluded_thick_mm2'], 2)} mm², thin {fmt_num(scan['area_excluded_thin_mm2'], 2)} mm²") in text
    assert f"({(THICK_COLUMNS + THIN_COLUMNS) * ROWS} tile(s) of it judged thick or thin on the slide's overview" in text
    assert "Hatched, not counted: ■ thick" in text
