"""The domain check: a scan whose cells look unlike those the model was validated on is said to be
`outside`, and its patient is never called negative on it.  Unit tests on drawn figures; end to
end on real fields with the shipped model (its reference is in models/bcscan-vgg16.json)."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import REPO, SHIPPED_MODEL, shared

from bcscan.cli.main import main
from bcscan.model.domain import (
    INSIDE,
    OUTSIDE,
    UNKNOWN,
    binary_entropy,
    combined_verdict,
    domain_verdict,
    fit_reference,
    fit_uncertainty,
    uncertainty_verdict,
)
from bcscan.model.network import load_model_info
from bcscan.results.aggregation import FLAG_INSUFFICIENT, FLAG_LOW_QUALITY, FLAG_NEGATIVE, FLAG_OUTSIDE, FLAG_REVIEW
from bcscan.scan.appearance import FEATURES, crop_appearance
from bcscan.testing.degrade import blur, scale_od
from bcscan.testing.synthetic import draw_smear, write_pyramidal_tiff

pypdf = pytest.importorskip("pypdf")


def test_reference_calls_its_own_labs_inside_and_far_figures_outside():
    rng = np.random.default_rng(0)
    k = len(FEATURES)
    lab_a = rng.normal(0.0, 1.0, (400, k))
    lab_b = rng.normal(10.0, 0.5, (400, k))
    reference = fit_reference(np.vstack([lab_a, lab_b]), ["a"] * 400 + ["b"] * 400, quantile=0.99)
    assert sorted(reference["labs"]) == ["a", "b"]
    inside = [domain_verdict(reference, f)[0] for f in rng.normal(0.0, 1.0, (200, k))]
    assert inside.count(INSIDE) >= 190  # about 1 % of a training lab's own spread falls outside
    assert domain_verdict(reference, np.full(k, 10.0))[0] == INSIDE
    assert domain_verdict(reference, np.full(k, 5.0))[0] == OUTSIDE  # between the labs, near neither
    assert domain_verdict({}, np.zeros(k)) == (UNKNOWN, None)        # a model without a reference
    assert domain_verdict(reference, None) == (UNKNOWN, None)        # a scan without cells


def test_uncertainty_threshold_is_the_quantile_of_pseudo_scans_of_validation_cells():
    assert binary_entropy(np.array([0.5, 0.0, 1.0])) == pytest.approx([1.0, 0.0, 0.0], abs=1e-4)
    # Lab a: every call p = 0.02 (entropy 0.1414 bits); lab b: one cell in ten at p = 0.5 (1 bit), the rest 0.02.
    h = float(binary_entropy(np.array([0.02]))[0])
    p = np.concatenate([np.full(500, 0.02), np.where(np.arange(500) % 10 == 0, 0.5, 0.02)])
    reference = fit_uncertainty(p, np.array(["a"] * 500 + ["b"] * 500), scan_cells=50, draws=2000, quantile=0.99)
    assert reference["scan_cells"] == 50 and reference["labs"] == ["a", "b"]
    # A 50-cell draw from lab b holds k uncertain cells: binomial (50, f), f the share in a resample of its 500 cells
    # (mean 0.1, sd 0.013), so k has mean 5, sd 2.2 and a 99th percentile of 10-11.
    assert reference["threshold"] == reference["thresholds"]["50"]
    assert reference["threshold"] == pytest.approx(h + 10.5 / 50 * (1 - h), abs=(1 - h) / 50 + 1e-4)
    # The mean of more cells varies less: 500 cells, sd of the share sqrt(0.09 / 500 + 0.09 / 500) = 0.019, 99th
    # percentile 0.144; the resample of the lab's own cells keeps it from shrinking to the lab's mean (0.1).
    assert reference["thresholds"]["500"] == pytest.approx(h + 0.144 * (1 - h), abs=0.01)
    assert list(reference["thresholds"]) == ["50", "100", "200", "500", "1000"]
    assert uncertainty_verdict(reference, np.full(50, 0.02)) == (INSIDE, round(h, 4), reference["threshold"])
    assert uncertainty_verdict(reference, np.full(50, 0.5)) == (OUTSIDE, 1.0, reference["threshold"])
    assert uncertainty_verdict(reference, np.full(49, 0.5)) == (UNKNOWN, 1.0, None)  # fewer cells than it was fitted on
    assert uncertainty_verdict({}, np.full(50, 0.5)) == (UNKNOWN, None, None)
    # 600 cells, one in six at p = 0.5 (0.284 bits): under the 50-cell threshold, over the 500-cell one, which applies
    many = np.where(np.arange(600) % 6 == 0, 0.5, 0.02)
    assert uncertainty_verdict(reference, many) == (OUTSIDE, round(float(binary_entropy(many).mean()), 4),
                                                    reference["thresholds"]["500"])
    assert combined_verdict(INSIDE, OUTSIDE) == OUTSIDE and combined_verdict(UNKNOWN, INSIDE) == INSIDE
    assert combined_verdict(UNKNOWN, UNKNOWN) == UNKNOWN


@pytest.mark.parametrize("threshold, verdict", [(0.05, OUTSIDE), (1.0, INSIDE)])
def test_a_scan_the_model_is_unsure_of_is_outside_and_never_negative(tmp_path, threshold, verdict):
    """An untrained model (its calls near p = 0.5) given a certainty threshold: above it the scan is outside and
    its patient is flagged; scans.csv's uncertainty is the mean entropy of the calls in cells.csv.  A field of
    fewer cells than the threshold was fitted on is not judged: no threshold beside its uncertainty, no note."""
    from bcscan.model.network import ModelInfo, build_vgg16, save_model

    model = tmp_path / "unsure.keras"
    save_model(build_vgg16(32, batch_norm=True, hidden_units=16, seed=1), model,
               ModelInfo(name="unsure", classes=["leukemic", "normal"], input_size=32, crop_um=20.0, working_mpp=0.4,
                         domain={"uncertainty": {"threshold": threshold, "scan_cells": 10, "quantile": 0.995}}))
    slide, _ = draw_smear(3000, 2200, 0.25, 25, seed=11)
    write_pyramidal_tiff(tmp_path / "scans" / "P1" / "slide.tif", slide, 0.25)
    field, _ = draw_smear(800, 600, 0.25, 3, seed=12)
    cv2.imwrite(str(tmp_path / "scans" / "P1" / "field.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    (tmp_path / "scans" / "P2").mkdir()
    for i in range(4):  # patient P2: field images of 3 cells each, none judged alone, 12 cells together
        field, _ = draw_smear(800, 600, 0.25, 3, seed=20 + i)
        cv2.imwrite(str(tmp_path / "scans" / "P2" / f"field{i}.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "scans"), "--out", str(out), "--model", str(model),
                                       "--mpp", "0.25", "--quiet"])
    assert result.exit_code == 0, result.output
    scans = pd.read_csv(out / "scans.csv").set_index("scan")
    scan = scans.loc["P1/slide.tif"]
    cells = pd.read_csv(out / "cells.csv")
    cells = cells[cells["scan"] == "P1/slide.tif"]
    assert len(cells) == 25 and scan["domain"] == verdict
    assert scan["uncertainty"] == pytest.approx(binary_entropy(cells["p_leukemic"].to_numpy()).mean(), abs=1e-4)
    assert scan["uncertainty_threshold"] == threshold and np.isnan(scan["domain_threshold"])
    few = scans.loc["P1/field.png"]
    assert few["n_cells"] == 3 and few["uncertainty"] > 0 and np.isnan(few["uncertainty_threshold"])
    assert few["domain"] == "unknown"
    patients = pd.read_csv(out / "patients.csv").set_index("patient_id")
    assert (FLAG_OUTSIDE in patients.loc["P1", "flag"]) == (verdict == OUTSIDE)
    # Pooled over the patient: P2's fields are each unjudged, together judged by the same threshold.
    all_cells = pd.read_csv(out / "cells.csv")
    assert (scans.loc[scans["patient_id"] == "P2", "domain"] == "unknown").all()
    p2 = patients.loc["P2"]
    assert p2["n_cells"] == 12 and p2["uncertainty_threshold"] == threshold
    assert p2["uncertainty"] == pytest.approx(
        binary_entropy(all_cells.loc[all_cells["patient_id"] == "P2", "p_leukemic"].to_numpy()).mean(), abs=1e-4)
    assert p2["flag"] == (FLAG_OUTSIDE if verdict == OUTSIDE else FLAG_INSUFFICIENT)
    p2_text = " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(out / "reports" / "P2.pdf").pages)
                       .split())
    assert ("Over all 12 cells of this patient the model is less certain" in p2_text) == (verdict == OUTSIDE)
    assert f"certainty over all 12 cells: mean entropy of its calls {p2['uncertainty']:.3f} bits" in p2_text
    assert f"for that many cells: {verdict} the validated range" in p2_text
    text = " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(out / "reports" / "P1.pdf").pages).split())
    warning, fine = "the model is less certain on this scan's cells", "the model as certain on its cells as"
    assert (text.count(warning), text.count(fine)) == ((1, 0) if verdict == OUTSIDE else (0, 1))  # the slide only
    assert "cells' appearance" not in text  # the model has no stain reference: that check judged nothing


def test_blur_lowers_sharpness_and_greyscale_removes_the_stain_colour():
    rgb, _ = draw_smear(400, 400, 0.375, 6, seed=3)
    crops = np.stack([rgb[i:i + 64, j:j + 64] for i in (40, 160, 280) for j in (40, 160, 280)])
    sharp = crop_appearance(crops)[:, FEATURES.index("log_sharpness")]
    blurred = crop_appearance(np.stack([cv2.GaussianBlur(c, (0, 0), 2.7) for c in crops]))
    assert np.all(blurred[:, FEATURES.index("log_sharpness")] < sharp - 1.0)
    grey = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, -1)
    figures = crop_appearance(grey[None, 100:164, 100:164])[0]
    assert figures[0] == pytest.approx(figures[1]) == pytest.approx(figures[2])


def greyish(rgb: np.ndarray, colour: float = 0.5) -> np.ndarray:
    """Half the stain's colour washed out (pure grey is refused when read; at x 0.4 no cell is found)."""
    grey = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, -1).astype(np.float32)
    return np.clip(grey + colour * (rgb.astype(np.float32) - grey), 0, 255).astype(np.uint8)


def _benign_test_fields(n: int) -> list[np.ndarray]:
    """Hematogone (normal) fields of the shipped model's own test split: never trained on."""
    shared("ghaderzadeh-all", "images", "Benign")
    rows = csv.DictReader(open(REPO / "models" / "bcscan-vgg16" / "splits.csv", encoding="utf-8"))
    files = sorted(r["file"] for r in rows if r["split"] == "test" and "/Benign/" in r["file"])[:n]
    return [cv2.cvtColor(cv2.imread(str(shared(f))), cv2.COLOR_BGR2RGB) for f in files]


def _write(folder, fields) -> None:
    folder.mkdir(parents=True)
    for i, rgb in enumerate(fields):
        cv2.imwrite(str(folder / f"field-{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _bccd_at_045(rgb: np.ndarray) -> np.ndarray:
    """A BCCD field (0.063 µm/px) at the Ghaderzadeh fields' 0.45 µm/px, so one --mpp serves every folder."""
    return cv2.resize(rgb, None, fx=0.14, fy=0.14, interpolation=cv2.INTER_AREA)


@pytest.mark.slow
def test_restained_greyish_blurred_faded_and_other_lab_scans_are_never_called_negative(tmp_path):
    assert load_model_info(SHIPPED_MODEL).domain, "the shipped model carries no domain reference"
    fields = _benign_test_fields(8)
    scans = tmp_path / "scans"
    _write(scans / "untouched", fields)
    _write(scans / "greyish", [greyish(f) for f in fields])
    _write(scans / "blurred", [blur(f, 0.45, 1.0) for f in fields])
    bccd = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            for p in sorted(shared("bccd", "JPEGImages").glob("*.jpg"))[:8]]
    _write(scans / "other-lab", [_bccd_at_045(f) for f in bccd])
    _write(scans / "faded", [_bccd_at_045(scale_od(f, 0.35)) for f in bccd])  # issue 13's case: `insufficient cells`
    result = CliRunner().invoke(main, ["scan", str(scans), "--out", str(tmp_path / "out"), "--mpp", "0.45",
                                       "--tile-workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    scans_csv = pd.read_csv(tmp_path / "out" / "scans.csv")
    patient_of = scans_csv["patient_id"]
    domain = scans_csv.groupby(patient_of)["domain"].agg(lambda d: (d == "outside").mean())
    assert domain["untouched"] <= 0.125                      # at most 1 of 8 fields of the training lab
    # The four-lab model's reference is wide: greyish fields are inside (their flag comes from the cells it calls
    # leukemic) and 3 of 8 BCCD fields outside (benchmarks/domain_check.py: 4.8 % of BCCD images); one suffices.
    assert domain["other-lab"] > 0
    assert (scans_csv.loc[patient_of == "blurred", "tiles_blur"] >= 1).all()  # excluded as blurred, not counted
    assert (scans_csv.loc[patient_of == "faded", "tiles_faint_stain"] >= 1).all()
    flags = pd.read_csv(tmp_path / "out" / "patients.csv").set_index("patient_id")["flag"]
    assert flags["other-lab"] == FLAG_OUTSIDE
    assert flags["greyish"] in (FLAG_OUTSIDE, FLAG_REVIEW)  # a positive signal is shown first, as always
    assert flags["blurred"] == flags["faded"] == FLAG_LOW_QUALITY
    assert FLAG_NEGATIVE not in {flags["greyish"], flags["other-lab"], flags["blurred"], flags["faded"]}
