"""The pipeline on real files: every real whole-slide format in ../shared/data/wsi runs through
the batch (the two files made to fail fail alone), and a pyramidal TIFF built from a mosaic of
real smear fields gives the same cells as the fields scanned one by one."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import shared
from PIL import Image

from bcscan.batch.outline import run_batch
from bcscan.batch.plan import BatchRun
from bcscan.batch.settings import load_settings
from bcscan.model.classifier import CellClassifier, ClassificationParams
from bcscan.scan.pipeline import scan_cells
from bcscan.scan.quality import QualityParams
from bcscan.scan.reading import ReadingParams, open_scan
from bcscan.scan.segmentation import SegmentationParams
from bcscan.scan.tiling import TilingParams
from bcscan.testing.synthetic import GLASS, write_pyramidal_tiff

BCCD_MPP = 0.065


def test_real_whole_slide_files_run_through_the_batch(tmp_path, untrained_model):
    slides = tmp_path / "slides"
    shutil.copytree(shared("wsi", "slides"), slides)
    settings = load_settings(overrides={"classification": {"model": str(untrained_model)},
                                        "reading": {"default_mpp": 0.5}})
    result = run_batch(BatchRun(slides, tmp_path / "out", settings))
    scans = pd.read_csv(tmp_path / "out" / "scans.csv").set_index("scan")
    failed = sorted(scans.index[scans.status == "failed"])
    assert failed == ["openslide-python-fixtures/unopenable.tiff", "openslide-python-fixtures/unreadable.svs"]
    assert result.exit_code == 1 and result.n_scans == 9
    ok = scans[scans.status == "ok"]
    assert set(ok.index) >= {"CMU-1-Small-Region.svs", "CMU-1-Small-Region_dicom", "test3-DAPI-2-(387).ndpi",
                             "test3-TRITC_2_(560).ndpi", "openslide-python-fixtures/boxes.tiff",
                             "openslide-python-fixtures/boxes_0.dcm".rsplit("/", 1)[0]}
    assert ok.loc["CMU-1-Small-Region.svs", "mpp"] == pytest.approx(0.499)
    assert ok.loc["test3-DAPI-2-(387).ndpi", "level"] == 0  # 0.228 µm/px: level 1 (0.456) is coarser than working
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert failures.error.str.contains("unopenable.tiff|unreadable.svs").all()


def bccd_fields(n: int) -> list[np.ndarray]:
    folder = shared("bccd", "JPEGImages")
    names = sorted(p for p in folder.glob("*.jpg"))[:n]
    return [np.asarray(Image.open(p).convert("RGB")) for p in names]


def test_mosaic_slide_gives_the_same_cells_as_its_fields(tmp_path, untrained_model):
    fields = bccd_fields(9)
    h, w = fields[0].shape[:2]
    gutter = 160
    mosaic = np.empty((3 * h + 2 * gutter, 3 * w + 2 * gutter, 3), np.uint8)
    mosaic[:] = GLASS
    offsets = []
    for i, field in enumerate(fields):
        oy, ox = (i // 3) * (h + gutter), (i % 3) * (w + gutter)
        mosaic[oy:oy + h, ox:ox + w] = field
        offsets.append((ox, oy))
        Image.fromarray(field).save(tmp_path / f"field{i}.png")
    write_pyramidal_tiff(tmp_path / "mosaic.tif", mosaic, BCCD_MPP)

    classifier = CellClassifier(ClassificationParams(model=str(untrained_model)))
    seg = SegmentationParams()
    small_tiles = TilingParams(tile_px=160)  # 64 µm cores: tile borders cut through fields and cells
    with open_scan(tmp_path / "mosaic.tif", ReadingParams()) as scan:
        assert scan.mpp == pytest.approx(BCCD_MPP)
        from_slide = scan_cells(scan, seg, small_tiles, classifier, QualityParams()).cells

    expected = []
    for i, (ox, oy) in enumerate(offsets):
        with open_scan(tmp_path / f"field{i}.png", ReadingParams(), mpp=BCCD_MPP) as scan:
            cells = scan_cells(scan, seg, TilingParams(), classifier, QualityParams()).cells
        expected.append(cells[["x", "y"]].to_numpy() + (ox, oy))
    expected = np.concatenate(expected)
    found = from_slide[["x", "y"]].to_numpy()
    assert len(expected) >= 9 and len(found) == len(expected)
    distance_um = np.linalg.norm(found[:, None] - expected[None], axis=2).min(axis=1) * BCCD_MPP
    assert distance_um.max() < 1.5


def pipeline_detection_score(samples):
    """Detection score of the whole scan path (reader → tiler → segmenter → owner tile), level-0 boxes."""
    from bcscan.testing.groundtruth import score_boxes

    classifier = CellClassifier(ClassificationParams(model=str(UNTRAINED[0])))
    total = None
    for sample in samples:
        with open_scan(sample.image, ReadingParams(), mpp=sample.mpp) as scan:
            cells = scan_cells(scan, SegmentationParams(), TilingParams(tile_px=256), classifier, QualityParams()).cells
        score = score_boxes(cells[["x0", "y0", "x1", "y1"]].to_numpy(float), sample.boxes)
        total = score if total is None else total + score
    return total


UNTRAINED: list = []


@pytest.fixture
def untrained(untrained_model):
    UNTRAINED[:] = [untrained_model]


@pytest.mark.parametrize("dataset, step, bound", [("bccd", 5, 0.95), ("txl", 13, 0.94)])
def test_scan_pipeline_detects_annotated_white_cells(untrained, dataset, step, bound):
    """The scan path with small tiles (cells cut by tile borders) scores like the segmenter alone."""
    import itertools

    from bcscan.testing import groundtruth as validation

    shared(dataset if dataset == "bccd" else "txl-pbc")
    loader = validation.bccd_samples if dataset == "bccd" else validation.txl_samples
    score = pipeline_detection_score(itertools.islice(loader(), 0, None, step))
    assert score.f1 >= bound, (score.precision, score.recall, score.f1)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["bccd", "txl"])
def test_scan_pipeline_detection_on_full_sets(untrained, dataset):
    from bcscan.testing import groundtruth as validation

    shared(dataset if dataset == "bccd" else "txl-pbc")
    loader = validation.bccd_samples if dataset == "bccd" else validation.txl_samples
    score = pipeline_detection_score(loader())
    print(f"{dataset}: images {score.images} GT {score.gt} detections {score.detections} "
          f"P {score.precision:.3f} R {score.recall:.3f} F1 {score.f1:.3f}")
    assert score.f1 >= 0.95
