"""Where a scan was not counted: the tiles excluded for quality are kept per scan (stored with its
cells, rebuilt into excluded_tiles.csv, reused by a resumed run), hatched on the report's thumbnail
in their reasons' colours, and summed up in a legend line under it.

The real-data scan is a field made of the wsi/smear monolayer tiles (../shared/data) whose right half
is blurred by a Gaussian of known σ in µm: every tile there must be excluded for blur, none elsewhere.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import shared

from bcscan.batch.outline import run_batch
from bcscan.batch.plan import BatchRun
from bcscan.batch.settings import load_settings
from bcscan.batch.store import STATE_DIR
from bcscan.results.reports import write_reports
from bcscan.results.reports.formatting import fmt_num
from bcscan.results.reports.pictures import (
    HATCH_OPACITY,
    REASON_COLOURS,
    excluded_shares,
    marked_thumbnail,
    tile_reasons,
)
from bcscan.results.tables import CELL_COLUMNS, EXCLUDED_TILE_COLUMNS
from bcscan.scan.quality import REASONS, SUMMARY_FIGURES, QualityParams
from bcscan.scan.reading import ReadingParams, open_scan
from bcscan.scan.segmentation import SegmentationParams
from bcscan.testing import degrade as D
from bcscan.testing.groundtruth import read_rgb
from bcscan.testing.synthetic import write_field_png

pypdf = pytest.importorskip("pypdf")

MPP = D.SMEAR_TILE_MPP
BLUR_SIGMA_UM = 1.0        # well past QualityParams.max_edge_sigma_um: the blurred half must fail for blur
TILE_PX = 160              # 64 µm cores at the working scale: a 4 × 6 grid on the field
SCAN = "P1/field.png"


def blurred_half_field() -> tuple[np.ndarray, int]:
    """Real monolayer tiles side by side (and again, turned over, below), the right half blurred;
    returns (field, first blurred column in level-0 px)."""
    tiles = [read_rgb(p) for p in sorted(shared("wsi", "smear").glob("I_*.png"))]
    row = np.concatenate(tiles, axis=1)
    field = np.concatenate([row, row[::-1, ::-1]], axis=0)
    x_blur = field.shape[1] // 2
    field[:, x_blur:] = D.blur(field, MPP, BLUR_SIGMA_UM)[:, x_blur:]
    return field, x_blur


def scan_into(scans: Path, out: Path, model: Path, tile_workers: int, force: bool = False) -> None:
    settings = load_settings(overrides={"classification": {"model": str(model)}, "tiling": {"tile_px": TILE_PX},
                                        "pipeline": {"workers": tile_workers}})
    result = run_batch(BatchRun(scans, out, settings, force=force))
    assert result.n_failed == 0


def pdf_text(path: Path) -> str:
    return re.sub(r"\s+", " ", " ".join(page.extract_text() or "" for page in pypdf.PdfReader(str(path)).pages))


@pytest.fixture(scope="module")
def blurred_run(tmp_path_factory, untrained_model):
    root = tmp_path_factory.mktemp("excluded")
    field, x_blur = blurred_half_field()
    write_field_png(root / "scans" / SCAN, field, MPP)
    scan_into(root / "scans", root / "out", untrained_model, tile_workers=0)
    return root, field, x_blur


def test_stored_excluded_tiles_are_the_blurred_half_and_match_scans_csv(blurred_run):
    root, field, x_blur = blurred_run
    out = root / "out"
    scan = pd.read_csv(out / "scans.csv").set_index("scan").loc[SCAN]
    excluded = pd.read_csv(out / "excluded_tiles.csv")
    assert list(excluded.columns) == EXCLUDED_TILE_COLUMNS
    assert set(excluded["scan"]) == {SCAN} and set(excluded["patient_id"]) == {"P1"}

    # Exactly the tiles scans.csv counts, reason by reason.
    assert len(excluded) == scan["tiles_low_quality"] > 0
    for reason in REASONS:
        assert sum(reason in tile_reasons(r) for r in excluded["reasons"]) == scan[f"tiles_{reason}"], reason
    # Every tile of the blurred half, and only those: all blurred, all inside it, covering all of it.
    assert all("blur" in tile_reasons(r) for r in excluded["reasons"])
    assert (excluded["x"] >= x_blur).all() and (excluded["x"] + excluded["width"] <= field.shape[1]).all()
    assert (excluded["y"] >= 0).all() and (excluded["y"] + excluded["height"] <= field.shape[0]).all()
    assert (excluded["width"] * excluded["height"]).sum() == (field.shape[1] - x_blur) * field.shape[0]
    assert scan["readable_fraction"] == pytest.approx(0.5)

    # The per-scan result in the store holds the same table.
    stored = list((out / STATE_DIR / "scans").glob("*.excluded.csv"))
    assert len(stored) == 1
    pd.testing.assert_frame_equal(pd.read_csv(stored[0]), excluded.drop(columns=["scan", "patient_id"]))


def test_report_legend_gives_each_reasons_tiles_and_area(blurred_run):
    root, field, x_blur = blurred_run
    out = root / "out"
    scan = pd.read_csv(out / "scans.csv").set_index("scan").loc[SCAN]
    excluded = pd.read_csv(out / "excluded_tiles.csv")
    text = pdf_text(out / "reports" / "P1.pdf")
    assert "Hatched, not counted:" in text
    area = field.shape[0] * field.shape[1]
    shares = excluded_shares(excluded, area)
    assert [reason for reason, _, _ in shares] == [r for r in REASONS if scan[f"tiles_{r}"]]
    assert shares[0] == ("blur", scan["tiles_blur"], pytest.approx((field.shape[1] - x_blur) * field.shape[0] / area))
    for reason, n, share in shares:
        assert f"{reason.replace('_', ' ')}: {n} tile(s), {100 * share:.1f} % of the scan" in text, (reason, text)
    core = TILE_PX * SegmentationParams().working_mpp / MPP  # a tile's core side in level-0 px
    n_blurred = round((field.shape[1] - x_blur) / core) * round(field.shape[0] / core)
    assert f"blur: {n_blurred} tile(s), 50.0 % of the scan" in text


def test_quality_figures_are_in_scans_csv_and_read_back_from_the_pdf(blurred_run):
    """scans.csv carries the scan's quality figures (medians over its tiles) and the PDF prints the same numbers;
    on the real monolayer they sit where quality_thresholds.py measured its tiles (red-cell cover 0.56-0.67)."""
    root, _, _ = blurred_run
    out = root / "out"
    scan = pd.read_csv(out / "scans.csv").set_index("scan").loc[SCAN]
    assert all(np.isfinite(scan[name]) for name in SUMMARY_FIGURES), scan[list(SUMMARY_FIGURES)]
    assert 0.5 <= scan["rbc_coverage"] <= 0.75 and scan["clipped_fraction"] < QualityParams().max_clipped_fraction
    assert scan["nucleus_od"] > QualityParams().min_nucleus_od and scan["glass_brightness"] > 200
    text = pdf_text(out / "reports" / "P1.pdf")
    line = (f"quality figures (medians over tiles): edge blur {fmt_num(scan['edge_sigma_um'])} µm, nucleus OD "
            f"{fmt_num(scan['nucleus_od'])}, red-cell OD {fmt_num(scan['rbc_od'])}, glass brightness "
            f"{fmt_num(scan['glass_brightness'], 0)}, red-cell cover {fmt_num(scan['rbc_coverage'])}, clipped "
            f"{fmt_num(scan['clipped_fraction'])}")
    assert line in text, text


def test_overlay_is_drawn_inside_the_blurred_half_only(blurred_run):
    root, field, x_blur = blurred_run
    excluded = pd.read_csv(root / "out" / "excluded_tiles.csv")
    cells = pd.read_csv(root / "out" / "cells.csv")
    with open_scan(root / "scans" / SCAN, ReadingParams()) as scan:
        thumb, width, mpp = scan.thumbnail(768), scan.dimensions[0], scan.mpp
    plain, _ = marked_thumbnail(thumb, cells, width, mpp)
    hatched, _ = marked_thumbnail(thumb, cells, width, mpp, excluded)
    changed = np.any(plain != hatched, axis=2)
    scale = thumb.shape[1] / width
    columns = np.nonzero(changed.any(axis=0))[0]
    assert columns.min() >= int(x_blur * scale)
    blurred_side = changed[:, int(np.ceil(x_blur * scale)):]
    assert 0.2 < blurred_side.mean() < 0.5  # a hatch: the smear shows between its lines
    assert blurred_side.any(axis=0).all() and blurred_side.any(axis=1).all()  # across the whole half
    # The hatch is the colour of a reason the tiles failed for.
    mixed = [np.round((1 - HATCH_OPACITY) * plain[changed] + HATCH_OPACITY * np.array(REASON_COLOURS[r]))
             for r in REASONS if any(r in tile_reasons(t) for t in excluded["reasons"])]
    assert np.all(np.any([np.all(np.abs(hatched[changed] - m) <= 1, axis=1) for m in mixed], axis=0))


def test_a_tile_failed_for_two_reasons_shows_both_colours_and_nothing_outside_tiles():
    white = np.full((100, 300, 3), 255, np.uint8)  # a 600 × 200 px scan at half size
    excluded = pd.DataFrame([(200, 0, 200, 200, "blur"), (400, 0, 200, 200, "thick+clipped")],
                            columns=EXCLUDED_TILE_COLUMNS[2:])
    drawn, _ = marked_thumbnail(white, pd.DataFrame(columns=CELL_COLUMNS), 600, 0.5, excluded)

    def colours(region: np.ndarray) -> set[tuple[int, ...]]:
        return {tuple(c) for c in region.reshape(-1, 3)} - {(255, 255, 255)}

    def on_white(reason: str) -> tuple[int, ...]:
        return tuple(np.round((1 - HATCH_OPACITY) * 255 + HATCH_OPACITY * np.array(REASON_COLOURS[reason])).astype(int))

    bar = drawn.copy()
    bar[:, 100:] = 255
    assert colours(bar) <= {(0, 0, 0)}  # left of the tiles: only the scale bar
    assert colours(drawn[:, 100:200]) == {on_white("blur")}
    assert colours(drawn[:, 200:300]) == {on_white("thick"), on_white("clipped")}


def test_resumed_run_keeps_the_table_and_an_older_result_reports_without_overlay(blurred_run, untrained_model,
                                                                                 tmp_path):
    root, _, _ = blurred_run
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    first = pd.read_csv(out / "excluded_tiles.csv")
    scan_into(root / "scans", out, untrained_model, tile_workers=0)  # every scan reused from the store
    pd.testing.assert_frame_equal(pd.read_csv(out / "excluded_tiles.csv"), first)
    assert "Hatched, not counted: ■ blur" in pdf_text(out / "reports" / "P1.pdf")

    for stored in (out / STATE_DIR / "scans").glob("*.excluded.csv"):  # as an older bcscan left it
        stored.unlink()
    scan_into(root / "scans", out, untrained_model, tile_workers=0)
    assert len(pd.read_csv(out / "excluded_tiles.csv")) == 0
    text = pdf_text(out / "reports" / "P1.pdf")
    assert f"The {len(first)} tile(s) not counted for quality are not drawn" in text
    assert "Hatched" not in text
    (out / "excluded_tiles.csv").unlink()  # a run folder from before the table existed still reports
    assert write_reports(out)


def test_pipelined_run_keeps_the_same_excluded_tiles(blurred_run, untrained_model, tmp_path):
    root, _, _ = blurred_run
    scan_into(root / "scans", tmp_path / "piped", untrained_model, tile_workers=2)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "piped" / "excluded_tiles.csv"),
                                  pd.read_csv(root / "out" / "excluded_tiles.csv"))


def test_every_quality_reason_has_its_own_colour():
    assert set(REASON_COLOURS) == set(REASONS)
    assert len(set(REASON_COLOURS.values())) == len(REASONS)
    assert QualityParams().max_edge_sigma_um < BLUR_SIGMA_UM


# --------------------------------------------------------------------------- a smear's counting area
ZONE_PX = 1024             # each zone 4 tile cores wide: its two middle cores are read from the zone alone


def smear_with_thick_end_and_feathered_edge() -> np.ndarray:
    """The real monolayer tiles laid out as a smear runs: the thick end (red cells stacked about 4.5
    layers deep, as in test_quality), the monolayer itself, the feathered edge (15 % of it left)."""
    a, b, c = (read_rgb(p) for p in sorted(shared("wsi", "smear").glob("I_*.png")))
    mono = np.concatenate([b, c], axis=1)
    return np.concatenate([D.stack(np.concatenate([a, b], axis=1), 8), mono,
                           D.thin(np.concatenate([c, a], axis=1), MPP, keep=0.15)], axis=1)


def test_a_smear_is_counted_in_its_monolayer_only(tmp_path, untrained_model):
    """The counting area of a smear, as a haematologist reads it: the thick end and the feathered edge
    are excluded tile by tile (reasons thick / thin), the monolayer is counted whole."""
    field = smear_with_thick_end_and_feathered_edge()
    write_field_png(tmp_path / "scans" / SCAN, field, MPP)
    scan_into(tmp_path / "scans", tmp_path / "out", untrained_model, tile_workers=0)
    excluded = pd.read_csv(tmp_path / "out" / "excluded_tiles.csv")
    core = round(TILE_PX * SegmentationParams().working_mpp / MPP)
    reasons = {(x // core, y // core): tile_reasons(r) for x, y, r in excluded[["x", "y", "reasons"]].itertuples(False)}
    rows = field.shape[0] // core
    for zone, expected in enumerate(("thick", None, "thin")):
        for col in (zone * 4 + 1, zone * 4 + 2):   # the zone's middle cores
            for row in range(rows):
                got = reasons.get((col, row), ())
                assert (expected in got) if expected else got == (), (zone, col, row, got)
    scan = pd.read_csv(tmp_path / "out" / "scans.csv").set_index("scan").loc[SCAN]
    assert scan["tiles_thick"] >= 2 * rows and scan["tiles_thin"] >= 2 * rows
    assert scan["tiles_low_quality"] <= 8 * rows     # never the monolayer's own tiles
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    outside = (cells["x"] < ZONE_PX - core) | (cells["x"] >= 2 * ZONE_PX + core)
    assert not outside.any(), cells[outside]         # no cell counted in the thick end or the feathered edge
    assert len(cells) >= 1                           # the monolayer's white cell is (the thick end holds 3)
