"""Single-cell images (`bcscan scan --single-cell-images`): real single-cell exports of lmu-aml-blood, each counted
as its one centre cell and called exactly as `bcscan evaluate` and training crop it; a platelet-clump image counts
none; a cell the segmenter misses is the image centre."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import SHIPPED_MODEL, shared

from bcscan.cli.main import main
from bcscan.model.classifier import CellClassifier, ClassificationParams
from bcscan.results.tables import cells_geojson
from bcscan.scan.pipeline import cells_table
from bcscan.scan.platelets import PlateletParams
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.scan.single_cell import centre_cell_only
from bcscan.testing.groundtruth import LMU_MPP, PBC_MPP
from bcscan.training.recipe import SourceSpec
from bcscan.training.samples import collect_samples

# lmu-aml-blood images whose field scan finds neighbours beside the centre cell (2-3 cells), and plain ones
CROWDED = {"MYO": ["MYO_0052.jpg", "MYO_0094.jpg"], "NGS": ["NGS_0064.jpg", "NGS_0344.jpg"]}
PLAIN = {"MYO": ["MYO_0001.jpg", "MYO_0004.jpg"], "NGS": ["NGS_0014.jpg", "NGS_0018.jpg"]}


def scan(folder, out, mpp, *flags):
    result = CliRunner().invoke(main, ["scan", str(folder), "--out", str(out), "--mpp", str(mpp), "--quiet",
                                       "--model", str(SHIPPED_MODEL), *flags])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "scans.csv").set_index("scan"), pd.read_csv(out / "cells.csv")


def copy_lmu(images: dict[str, list[str]], folder) -> None:
    """lmu-aml-blood images, {kind: names}, into folder/kind/."""
    for kind, names in images.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(shared("lmu-aml-blood", kind, name), folder / kind / name)


def as_evaluate_crops(folder):
    """The MYO (leukemic) and NGS (normal) images of `folder` cut as training and `bcscan evaluate` cut
    single-cell sources: (their samples, {file: p_leukemic of the shipped model})."""
    classifier = CellClassifier(ClassificationParams(model=str(SHIPPED_MODEL)))
    info = classifier.info
    sources = [SourceSpec(path=kind, label=label, mpp=LMU_MPP, single_cell=True)
               for kind, label in (("MYO", "leukemic"), ("NGS", "normal"))]
    samples = collect_samples(folder, sources, "cells", info.input_size, info.crop_um, 1.0,
                              SegmentationParams(working_mpp=info.working_mpp))
    return samples, dict(zip(np.array(samples.files)[samples.image], classifier.predict(samples.x)))


def assert_called_as(cells: pd.DataFrame, expected: dict) -> None:
    got = cells.set_index("scan")["p_leukemic"]
    for file, p in expected.items():
        assert got[file] == pytest.approx(p, abs=1e-3), file


def test_each_image_counts_its_centre_cell_called_as_evaluate_calls_it(tmp_path):
    copy_lmu({kind: CROWDED[kind] + PLAIN[kind] for kind in ("MYO", "NGS")}, tmp_path / "in")
    fields, _ = scan(tmp_path / "in", tmp_path / "fields", LMU_MPP)
    scans, cells = scan(tmp_path / "in", tmp_path / "single", LMU_MPP, "--single-cell-images")
    crowded = [f"{kind}/{name}" for kind, names in CROWDED.items() for name in names]
    assert (fields.loc[crowded, "n_cells"] >= 2).all()  # as field images they count their neighbours too
    assert (scans["n_cells"] == 1).all() and len(cells) == len(scans) == 8
    # the cell of each image is the one training and `bcscan evaluate` crop (single_cell sources)
    _, expected = as_evaluate_crops(tmp_path / "in")
    assert len(expected) == 8
    assert_called_as(cells, expected)
    # centred: the cell lies within a quarter of the image's side of its middle (256 px images)
    assert np.all(np.hypot(cells["x"] - 128, cells["y"] - 128) <= 64)


def test_a_platelet_clump_image_counts_no_cell(tmp_path):
    (tmp_path / "in" / "P").mkdir(parents=True)
    names = sorted(p.name for p in shared("pbc-normal", "platelet").glob("*.jpg"))[:6]
    for name in names:
        shutil.copy(shared("pbc-normal", "platelet", name), tmp_path / "in" / "P" / name)
    scans, cells = scan(tmp_path / "in", tmp_path / "out", PBC_MPP, "--single-cell-images")
    assert scans["n_cells"].sum() <= 1 and len(cells) == scans["n_cells"].sum()


def test_a_cell_the_segmenter_misses_is_the_image_centre():
    """A blank image: no detection, so the centre itself is the image's cell (as training crops it), area unknown;
    its GeoJSON detection leaves the area out (JSON has no NaN)."""
    rgb = np.full((80, 120, 3), 235, np.uint8)
    params = SegmentationParams()
    seg = segment(rgb, params.working_mpp, params)
    assert not seg.cells
    only = centre_cell_only(rgb, seg, (60.0, 40.0), 80, params, PlateletParams())
    (cell,) = only.cells
    assert (cell.x, cell.y) == (60.0, 40.0) and math.isnan(cell.area_um2)
    geometry = np.array([[cell.x, cell.y, cell.x0, cell.y0, cell.x1, cell.y1, cell.area_um2]])
    table = cells_table(geometry, np.array([0.7]), 0.5)
    text = json.dumps(cells_geojson(table))
    (feature,) = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in GeoJSON"))["features"]
    assert feature["properties"]["measurements"] == {"p_leukemic": 0.7}


# lmu-aml-blood crops padded with black where the cell lay near the border of what was scanned
PADDED = {"MYO": ["MYO_0009.jpg", "MYO_0014.jpg"], "NGS": ["NGS_2798.jpg", "NGS_0460.jpg"]}


def test_black_padding_is_read_as_glass_so_padded_crops_count_their_cell(tmp_path):
    copy_lmu(PADDED, tmp_path / "in")
    scans, cells = scan(tmp_path / "in", tmp_path / "single", LMU_MPP, "--single-cell-images")
    # read as stain, the padding failed the stain check and the image counted no cell
    assert (scans["status"] == "ok").all(), scans["status"].to_dict()
    assert (scans["n_cells"] == 1).all() and len(cells) == 4
    samples, expected = as_evaluate_crops(tmp_path / "in")
    assert not (samples.x.max(axis=3) <= 12).any(axis=(1, 2)).any(), "no black left in the training crops"
    assert_called_as(cells, expected)
