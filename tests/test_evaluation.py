"""Metrics, calibration, colour baseline and `bcscan evaluate` (synthetic fixtures; real data when present)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import REPO, SHARED_DATA, SHIPPED_MODEL, shared

from bcscan.cli.train import evaluate_command
from bcscan.training.baselines import LogisticRegression, hsv_histograms
from bcscan.training.calibration import fit_temperature
from bcscan.training.evaluate import parse_class_map
from bcscan.training.metrics import ece, image_level, metrics_block, roc_auc


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    s = np.round(rng.random(200) + 0.3 * y, 2)  # with ties
    pos, neg = s[y], s[~y]
    expected = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(y, s) == pytest.approx(expected)
    assert roc_auc(np.ones(5, bool), np.arange(5.0)) is None


def test_metrics_block_counts_and_per_class():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])          # 0 = leukemic
    p = np.array([0.9, 0.8, 0.2, 0.1, 0.3, 0.6, 0.05])
    m = metrics_block(labels, p)
    assert m["confusion_matrix"]["matrix"] == [[2, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["per_class"]["leukemic"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["normal"]["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    one = metrics_block(np.ones(4, int), np.array([0.1, 0.2, 0.7, 0.3]))   # a normal-only folder
    assert one["balanced_accuracy"] == pytest.approx(0.75) and one["roc_auc"] is None


def test_ece_and_temperature_scaling():
    rng = np.random.default_rng(1)
    n = 4000
    true_p = rng.uniform(0.5, 1.0, n)                 # calibrated confidence of class 0
    labels = np.where(rng.random(n) < true_p, 0, 1)
    assert ece(labels, true_p) < 0.03
    # overconfident version: logits × 3
    logit = np.log(true_p / (1 - true_p)) * 3
    p_over = 1 / (1 + np.exp(-logit))
    assert ece(labels, p_over) > 0.1
    probs = np.stack([p_over, 1 - p_over], axis=1)
    t = fit_temperature(probs, labels)
    assert 2.4 < t < 3.6
    from bcscan.model.classifier import calibrate

    assert ece(labels, calibrate(probs, t)[:, 0]) < 0.03


def test_image_score_is_the_calibrated_mean_logit_of_its_cells():
    from bcscan.training.calibration import fit_image_temperature

    ids, y, p = image_level(np.array([3, 3, 5, 3]), np.array([0, 0, 1, 0]), np.array([0.9, 0.5, 0.2, 0.1]))
    assert ids.tolist() == [3, 5] and y.tolist() == [0, 1]
    assert p.tolist() == pytest.approx([0.5, 0.2])   # logits +2.197, 0, -2.197 average to 0
    _, _, sharp = image_level(np.array([3, 3, 5]), np.array([0, 0, 1]), np.array([0.8, 0.8, 0.2]), temperature=0.5)
    assert sharp.tolist() == pytest.approx([0.8 ** 2 / (0.8 ** 2 + 0.2 ** 2), 0.2 ** 2 / (0.2 ** 2 + 0.8 ** 2)])

    # images whose cells are timid (p 0.7 / 0.3) but always right: the fitted temperature sharpens them
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.where(labels == 0, 0.7, 0.3)
    t = fit_image_temperature(labels, scores)
    assert t < 0.3
    assert ece(labels, image_level(np.arange(400), labels, scores, t)[2]) < ece(labels, scores)


def test_colour_baseline_separates_colours():
    rng = np.random.default_rng(2)
    purple = np.clip(rng.normal((120, 60, 160), 20, (60, 8, 8, 3)), 0, 255).astype(np.uint8)
    pink = np.clip(rng.normal((220, 150, 170), 20, (60, 8, 8, 3)), 0, 255).astype(np.uint8)
    x = hsv_histograms(np.concatenate([purple, pink]))
    y = np.r_[np.ones(60), np.zeros(60)]
    clf = LogisticRegression().fit(x[::2], y[::2])
    assert np.mean((clf.predict_proba(x[1::2]) >= 0.5) == y[1::2]) > 0.95


def test_parse_class_map():
    assert parse_class_map(["leukemic=a/b, a/c", "normal=d"]) == {"leukemic": ["a/b", "a/c"], "normal": ["d"]}
    for bad in (["cancer=a"], ["leukemic"], ["normal="]):
        with pytest.raises(ValueError):
            parse_class_map(bad)


def _tiny_model(tmp_path: Path, crop_um: float) -> Path:
    from bcscan.model.network import ModelInfo, build_vgg16, save_model

    model = build_vgg16(32, 2, hidden_units=8, dropout=0.0, batch_norm=True, seed=0)
    path = tmp_path / "m" / "tiny.keras"
    save_model(model, path, ModelInfo(name="tiny", classes=["leukemic", "normal"], input_size=32, crop_um=crop_um,
                                      working_mpp=0.4 if crop_um else 0.0, temperature=1.5))
    return path


def synthetic_field(rng, size=224, mpp=0.45, nucleus_um=4.0):
    """Pink red cells and two white cells with violet nuclei (as in test_training)."""
    import cv2

    img = np.empty((size, size, 3), np.uint8)
    img[:] = (238, 222, 226)
    for _ in range(25):
        cv2.circle(img, tuple(int(v) for v in rng.integers(0, size, 2)), int(3.7 / mpp), (214, 150, 160), -1)
    for _ in range(2):
        c = tuple(int(v) for v in rng.integers(40, size - 40, 2))
        cv2.circle(img, c, int(6 / mpp), (205, 185, 225), -1)
        cv2.circle(img, c, int(nucleus_um / mpp), (95, 55, 150), -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def _write_fields(root: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    for folder, nucleus in (("x/big", 5.0), ("x/small", 3.0)):
        (root / folder).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(root / folder / f"{i}.png"), synthetic_field(rng, nucleus_um=nucleus)[..., ::-1])
    (root / "x/small/blank.png").write_bytes(cv2.imencode(".png", np.full((224, 224, 3), 240, np.uint8))[1].tobytes())


@pytest.mark.parametrize("mode", ["cells", "image"])
def test_evaluate_writes_metrics_and_reports(tmp_path, mode):
    model = _tiny_model(tmp_path, 24.0 if mode == "cells" else 0.0)
    _write_fields(tmp_path / "data")
    out = tmp_path / "eval"
    args = [str(model.parent), str(tmp_path / "data"), "--class-map", "leukemic=x/big", "--class-map",
            "normal=x/small", "--out", str(out), "--mode", mode]
    if mode == "cells":
        args += ["--mpp", "0.45"]
    result = CliRunner().invoke(evaluate_command, args)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class", "confusion_matrix", "per_source"):
        assert key in m, key
    assert set(m["per_class"]) == {"leukemic", "normal"}
    assert {"precision", "recall", "f1", "support"} <= set(m["per_class"]["leukemic"])
    for f in ("classification_report.txt", "confusion_matrix.png", "predictions.csv"):
        assert (out / f).is_file()
    assert m["images_total"] == 11
    if mode == "cells":
        assert m["images_without_cells"] == 1          # the blank field: no white cell, left out
        assert m["n"] == 10 and 15 <= m["samples"]["n"] <= 20   # two cells per field (overlaps merge)
    else:
        assert m["n"] == 11


def test_evaluate_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(evaluate_command, [str(tmp_path / "none"), str(tmp_path), "--class-map", "normal=a",
                                         "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "model folder not found" in r.output and "Traceback" not in r.output
    model = _tiny_model(tmp_path, 24.0)
    r = runner.invoke(evaluate_command, [str(model), str(tmp_path), "--class-map", "normal=a", "--out",
                                         str(tmp_path / "o"), "--mode", "cells"])
    assert r.exit_code == 2 and "--mpp" in r.output
    r = runner.invoke(evaluate_command, [str(model), str(tmp_path), "--class-map", "tumour=a", "--out",
                                         str(tmp_path / "o")])
    assert r.exit_code == 2 and "tumour" in r.output
    model.with_suffix(".json").write_text(model.with_suffix(".json").read_text().replace('"sha256": "', '"sha256": "0'))
    r = runner.invoke(evaluate_command, [str(model), str(tmp_path), "--class-map", "normal=a", "--out",
                                         str(tmp_path / "o"), "--mpp", "0.4"])
    assert r.exit_code == 2 and "SHA-256" in r.output


@pytest.mark.slow
def test_shipped_model_on_held_out_pbc_normal_cells(tmp_path):
    """The shipped model's own test split of pbc-normal called normal: a floor a little under the 0.962 measured
    (README, "The model"), a regression guard; issue 24's target, 0.98, is not met by this model."""
    shared("pbc-normal")
    splits = REPO / "models" / "bcscan-vgg16" / "splits.csv"
    folders = ",".join(f"pbc-normal/{t}" for t in ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                                                   "monocyte", "neutrophil"))
    r = CliRunner().invoke(evaluate_command, [str(SHIPPED_MODEL), str(SHARED_DATA), "--class-map", f"normal={folders}",
                                              "--out", str(tmp_path), "--mpp", "0.088", "--splits", str(splits)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["called_normal_rate_images"] >= 0.95


G = "ghaderzadeh-all/images"
# lab: (class maps, µm/px, single cell, balanced-accuracy floor). Floors sit a little under what the shipped
# model measured on each lab's own test split (README, "The model"), a regression guard; issue 24's target is 0.95.
SHIPPED_TEST_SPLITS = {
    "ghaderzadeh-all": ([f"leukemic={G}/Early,{G}/Pre,{G}/Pro", f"normal={G}/Benign"], 0.45, False, 0.93),
    "mll-bone-marrow": (["leukemic=mll-bone-marrow/BLA",
                         "normal=" + ",".join(f"mll-bone-marrow/{c}" for c in ("LYT", "MON", "NGS", "EOS"))],
                        0.075, True, 0.81),
    "lmu-aml-blood": (["leukemic=lmu-aml-blood/MYO,lmu-aml-blood/MOB",
                       "normal=" + ",".join(f"lmu-aml-blood/{c}" for c in ("NGS", "LYT", "MON", "EOS", "BAS"))],
                      0.117, True, 0.95),
}


@pytest.mark.slow
@pytest.mark.parametrize("lab", sorted(SHIPPED_TEST_SPLITS))
def test_shipped_model_on_each_labs_own_test_split(tmp_path, lab):
    shared(lab)
    class_maps, mpp, single_cell, floor = SHIPPED_TEST_SPLITS[lab]
    splits = REPO / "models" / "bcscan-vgg16" / "splits.csv"
    args = [str(SHIPPED_MODEL), str(SHARED_DATA), "--out", str(tmp_path), "--mpp", str(mpp), "--splits", str(splits)]
    for class_map in class_maps:
        args += ["--class-map", class_map]
    r = CliRunner().invoke(evaluate_command, args + (["--single-cell"] if single_cell else []))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["images"]["balanced_accuracy"] >= floor


def test_restain_transfers_lab_statistics():
    from bcscan.training.baselines import lab_stats, restain

    rng = np.random.default_rng(3)
    purple = np.clip(rng.normal((120, 60, 160), 25, (10, 16, 16, 3)), 0, 255).astype(np.uint8)
    pink = np.clip(rng.normal((220, 150, 170), 15, (10, 16, 16, 3)), 0, 255).astype(np.uint8)
    mean, std = lab_stats(pink)
    moved = restain(purple, mean, std)
    m2, s2 = lab_stats(moved)
    assert np.allclose(m2, mean, atol=3) and np.allclose(s2, std, atol=3)
