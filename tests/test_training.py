"""`bcscan train`: config, near-duplicate splits, balancing, augmentation, end-to-end runs.

End-to-end runs use synthetic smear fields generated here and, for the paper recipe, a tiny
subset of ../shared/data (skipped with a reason when that folder is absent).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import REPO, SHARED_DATA, shared

from bcscan.cli.train import train_command
from bcscan.errors import ConfigError, ExitCode, TrainingError
from bcscan.scan.single_cell import centre_cell
from bcscan.training.duplicates import average_hash, near_duplicate_groups
from bcscan.training.recipe import AugmentParams, SourceSpec, SplitParams, load_train_config, shortcut_check
from bcscan.training.samples import Samples
from bcscan.training.splits import balance_indices, split_images

ARTEFACTS = ("metrics.json", "classification_report.txt", "confusion_matrix.png", "learning_curves.png",
             "history.csv", "splits.csv")


# ----------------------------------------------------------------------------- synthetic data

def synthetic_field(rng, size=224, mpp=0.45, n_wbc=2, nucleus_um=4.0, tint=(0, 0, 0)):
    """A stained-smear-like field: pink red cells and `n_wbc` white cells with violet nuclei."""
    import cv2

    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.clip(np.array((238, 222, 226)) + tint, 0, 255)
    for _ in range(25):
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(img, c, int(3.7 / mpp), (214, 150, 160), -1)
    for _ in range(n_wbc):
        c = tuple(int(v) for v in rng.integers(40, size - 40, 2))
        cv2.circle(img, c, int(6 / mpp), (205, 185, 225), -1)
        cv2.circle(img, c, int(nucleus_um / mpp), (95, 55, 150), -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def write_dataset(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """labA (big nuclei) = leukemic, labB (small nuclei) = normal; plus one exact duplicate."""
    import cv2

    rng = np.random.default_rng(seed)
    for folder, nucleus in (("lab/big", 5.0), ("lab/small", 3.0)):
        d = root / folder
        d.mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(d / f"{i:03d}.png"), synthetic_field(rng, nucleus_um=nucleus)[..., ::-1])
    (root / "lab/big/dup.png").write_bytes((root / "lab/big/000.png").read_bytes())
    return root


def write_config(path: Path, **over) -> Path:
    cfg = {"name": "tiny", "mode": "cells", "input_size": 32, "crop_um": 24.0, "seed": 1,
           "sources": [{"path": "lab/big", "label": "leukemic", "mpp": 0.45},
                       {"path": "lab/small", "label": "normal", "mpp": 0.45}],
           "model": {"batch_norm": True, "hidden_units": 16, "dropout": 0.1},
           "training": {"epochs": 1, "batch_size": 8, "jit_compile": False, "lr_schedule": "cosine_time",
                        "max_minutes": 30},
           "augmentation": {"rotation_deg": 30, "scale": 0.1, "hue": 0.05, "saturation": 0.2}}
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def fake_samples(hashes: np.ndarray, sources: np.ndarray, n_src: int = 2) -> Samples:
    n = len(hashes)
    specs = [SourceSpec(f"s{i}", "leukemic" if i == 0 else "normal") for i in range(n_src)]
    return Samples(np.zeros((n, 4, 4, 3), np.uint8), np.zeros((n, 4, 4, 3), np.uint8), np.arange(n),
                   [f"f{i}" for i in range(n)], sources, hashes, np.ones(n, int), specs)


# ----------------------------------------------------------------------------- units

def test_config_refuses_unknown_keys_and_missing_scale(tmp_path):
    cfg = write_config(tmp_path / "a.yaml", trainig={"epochs": 2})
    with pytest.raises(ConfigError, match="trainig"):
        load_train_config(cfg)
    cfg = write_config(tmp_path / "b.yaml", sources=[{"path": "x", "label": "leukemic"},
                                                     {"path": "y", "label": "normal", "mpp": 0.4}])
    with pytest.raises(ConfigError, match="mpp"):
        load_train_config(cfg)
    cfg = write_config(tmp_path / "c.yaml", sources=[{"path": "x", "label": "leukemic", "mpp": 0.4}])
    with pytest.raises(ConfigError, match="both classes"):
        load_train_config(cfg)
    cfg = write_config(tmp_path / "d.yaml", augmentation={"hue_shift": 0.1})
    with pytest.raises(ConfigError, match="hue_shift"):
        load_train_config(cfg)


@pytest.mark.parametrize("name", ["paper.yaml", "train-hed.yaml", "train-crosslab.yaml",
                                  "train-crosslab-grey.yaml", "train-fourlabs.yaml"])
def test_shipped_configs_load(name):
    cfg = load_train_config(REPO / "configs" / name, {"epochs": 1})
    assert cfg.training.epochs == 1
    assert {s.label for s in cfg.sources} == {"leukemic", "normal"}


def test_paper_config_is_the_paper_recipe():
    cfg = load_train_config(REPO / "configs" / "paper.yaml")
    assert (cfg.mode, cfg.input_size, cfg.training.epochs, cfg.training.batch_size) == ("image", 200, 10, 32)
    assert cfg.training.learning_rate == pytest.approx(1e-3) and cfg.training.lr_schedule == "constant"
    assert not cfg.model.batch_norm and cfg.balance == "undersample"
    assert cfg.augmentation.horizontal_flip and cfg.augmentation.rotation_deg == 45
    assert (cfg.split.train, cfg.split.val, cfg.split.test) == (0.8, 0.1, 0.1)


def test_near_duplicates_grouped_and_kept_in_one_split():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, (60, 256)).astype(np.uint8)
    near = base[:10].copy()
    near[:, :2] ^= 1                                   # Hamming distance 2 from its original
    hashes = np.packbits(np.vstack([base, near]), axis=1)
    groups = near_duplicate_groups(hashes, max_hamming=3)
    assert all(groups[i] == groups[60 + i] for i in range(10))
    assert len(np.unique(groups)) == 60
    sources = np.array([0] * 30 + [1] * 30 + [0] * 10)
    split, _ = split_images(fake_samples(hashes, sources), SplitParams(), seed=3)
    assert all(split[i] == split[60 + i] for i in range(10))
    assert set(split) == {"train", "val", "test"}
    split2, _ = split_images(fake_samples(hashes, sources), SplitParams(), seed=3)
    assert list(split) == list(split2)                 # seeded: reproducible
    assert np.sum(split == "train") >= 0.7 * len(split)


def test_average_hash_is_robust_to_jpeg_noise():
    import cv2

    img = synthetic_field(np.random.default_rng(2))
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])
    noisy = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    a, b = average_hash(img), average_hash(noisy)
    assert np.unpackbits(a ^ b).sum() <= 3


def test_balance_undersamples_to_equal_counts_reproducibly():
    labels = np.array([0] * 70 + [1] * 30)
    a = balance_indices(labels, np.random.default_rng(5), "undersample")
    b = balance_indices(labels, np.random.default_rng(5), "undersample")
    assert np.array_equal(a, b)
    assert np.sum(labels[a] == 0) == np.sum(labels[a] == 1) == 30
    assert len(balance_indices(labels, np.random.default_rng(5), "none")) == 100


def test_balance_source_class_gives_each_dataset_an_equal_share_of_its_class():
    # lab A: 60 leukemic, 10 normal; lab B: 5 leukemic, 20 normal; lab C: 40 normal only
    labels = np.array([0] * 60 + [1] * 10 + [0] * 5 + [1] * 20 + [1] * 40)
    datasets = np.array(["A"] * 70 + ["B"] * 25 + ["C"] * 40, dtype=object)
    chosen = balance_indices(labels, np.random.default_rng(1), "source_class", datasets)
    counts = {(d, c): int(np.sum((datasets[chosen] == d) & (labels[chosen] == c))) for d in "ABC" for c in (0, 1)}
    # 65 leukemic is the smaller class: 32 per leukemic pair, 21 per normal pair
    assert counts == {("A", 0): 32, ("A", 1): 21, ("B", 0): 32, ("B", 1): 21, ("C", 0): 0, ("C", 1): 21}
    assert len(np.unique(chosen[(datasets[chosen] == "B") & (labels[chosen] == 0)])) == 5  # drawn with repeats
    assert np.array_equal(chosen, balance_indices(labels, np.random.default_rng(1), "source_class", datasets))


def test_balance_source_type_splits_each_dataset_share_among_its_cell_types():
    # lab A: 60 blasts; 36 neutrophils and 4 monocytes.  Lab B: 40 blasts; 40 lymphocytes.
    labels = np.array([0] * 60 + [1] * 40 + [0] * 40 + [1] * 40)
    datasets = np.array(["A"] * 100 + ["B"] * 80, dtype=object)
    types = np.array(["blast"] * 60 + ["neutrophil"] * 36 + ["monocyte"] * 4 + ["blast"] * 40 + ["lymphocyte"] * 40,
                     dtype=object)
    chosen = balance_indices(labels, np.random.default_rng(3), "source_type", datasets, types)
    counts = {(d, t): int(np.sum((datasets[chosen] == d) & (types[chosen] == t))) for d, t in set(zip(datasets, types))}
    # 80 normal cells is the smaller class: 40 per dataset and class, A's 40 normal split 20 / 20 between its types
    assert counts == {("A", "blast"): 40, ("A", "neutrophil"): 20, ("A", "monocyte"): 20, ("B", "blast"): 40,
                      ("B", "lymphocyte"): 40}
    assert len(np.unique(chosen[types[chosen] == "monocyte"])) == 4  # 4 monocytes drawn with repeats
    with pytest.raises(TrainingError, match="cell type"):
        balance_indices(labels, np.random.default_rng(3), "source_type", datasets)


def test_rebalancing_each_epoch_keeps_the_balance_and_uses_every_training_cell():
    from bcscan.training.splits import epoch_draws

    labels = np.array([0] * 60 + [1] * 10 + [0] * 5 + [1] * 20 + [1] * 40)
    datasets = np.array(["A"] * 70 + ["B"] * 25 + ["C"] * 40, dtype=object)
    pool = np.arange(len(labels)) + 1000                  # positions into a larger sample array
    all_labels = np.concatenate([np.zeros(1000, int), labels])
    all_datasets = np.concatenate([np.full(1000, "Z", dtype=object), datasets])
    first = pool[balance_indices(labels, np.random.default_rng(1), "source_class", datasets)]
    draw = epoch_draws(pool, all_labels, all_datasets, "source_class", seed=1, first=first)
    assert np.array_equal(draw(0), first)
    seen = set()
    for epoch in range(12):
        chosen = draw(epoch)
        assert len(chosen) == len(first) and set(chosen) <= set(pool.tolist())
        counts = {(d, c): int(np.sum((all_datasets[chosen] == d) & (all_labels[chosen] == c)))
                  for d in "ABC" for c in (0, 1)}
        assert counts == {("A", 0): 32, ("A", 1): 21, ("B", 0): 32, ("B", 1): 21, ("C", 0): 0, ("C", 1): 21}
        seen |= set(chosen.tolist())
    assert len(seen) == len(pool)                          # the first draw alone leaves 55 of the 135 unused
    assert np.array_equal(draw(5), epoch_draws(pool, all_labels, all_datasets, "source_class", 1, first)(5))


def test_centre_cell_picks_the_labelled_cell_or_the_centre():
    centres = np.array([[10.0, 10.0], [52.0, 47.0], [90.0, 50.0]])
    assert np.array_equal(centre_cell(centres, (100, 100)), [[52.0, 47.0]])
    assert np.array_equal(centre_cell(centres[[0, 2]], (100, 100)), [[50.0, 50.0]])  # nearest is 40 px off
    assert np.array_equal(centre_cell(np.zeros((0, 2)), (80, 120)), [[60.0, 40.0]])


def test_shortcut_check():
    same = [SourceSpec("d/a", "leukemic"), SourceSpec("d/b", "normal")]
    assert shortcut_check(same) == []
    apart = [SourceSpec("d/a", "leukemic"), SourceSpec("e/b", "normal")]
    assert "different datasets" in shortcut_check(apart)[0]
    partial = same + [SourceSpec("pbc/x", "normal")]
    assert "pbc" in shortcut_check(partial)[0]


def test_augmenter_shapes_and_range():
    from bcscan.training.augment import make_augmenter

    params = AugmentParams(horizontal_flip=True, vertical_flip=True, rotation_deg=90, scale=0.2, translate=0.05,
                           hue=0.1, saturation=0.3, brightness=0.2, contrast=0.2, channel_gain=0.1, grayscale_p=0.5)
    aug = make_augmenter(params, 32, 1.25, 24.0)
    x = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3)).astype(np.uint8)
    y = aug(x, np.random.default_rng(0))
    assert y.shape == (6, 32, 32, 3) and y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert np.array_equal(y, aug(x, np.random.default_rng(0)))      # seeded by the caller's generator
    assert not np.array_equal(y, aug(x, np.random.default_rng(1)))
    plain = make_augmenter(AugmentParams(horizontal_flip=False), 40, 1.0, 24.0)(x, np.random.default_rng(0))
    assert np.allclose(plain, x / 255.0, atol=1e-6)


def test_augmenter_geometry_keeps_the_crop_window_and_flips_it():
    """The crop_um window of a margin crop is what the model sees, as at scan time; flips mirror it."""
    from bcscan.training.augment import make_augmenter

    x = np.zeros((1, 80, 80, 3), np.uint8)
    x[0, 8:72, 8:40] = 200                          # left half of the 64-px window inside an 80-px margin crop
    centre = make_augmenter(AugmentParams(horizontal_flip=False), 64, 1.25, 24.0)(x, np.random.default_rng(0))
    assert np.allclose(centre[0], x[0, 8:72, 8:72] / 255.0, atol=1e-6)
    mirror = make_augmenter(AugmentParams(horizontal_flip=True), 64, 1.25, 24.0)
    flipped = [mirror(x, np.random.default_rng(seed))[0] for seed in range(8)]
    assert any(np.allclose(f, centre[0][:, ::-1], atol=1e-6) for f in flipped)
    assert any(np.allclose(f, centre[0], atol=1e-6) for f in flipped)
    yy, xx = np.mgrid[:80, :80]
    disc = np.where(((yy - 39.5) ** 2 + (xx - 39.5) ** 2 < 20 ** 2)[None, ..., None], 200, 0).astype(np.uint8)
    disc = np.repeat(disc, 3, axis=3)            # a centred cell: any rotation leaves it in place
    upright = make_augmenter(AugmentParams(horizontal_flip=False), 64, 1.25, 24.0)(disc, np.random.default_rng(0))
    turned = make_augmenter(AugmentParams(horizontal_flip=False, rotation_deg=180), 64, 1.25, 24.0)
    for seed in range(4):
        assert np.abs(turned(disc, np.random.default_rng(seed)) - upright).mean() < 0.01


def test_hed_stain_jitter():
    from bcscan.training.augment import hed_jitter, make_augmenter

    x = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3)).astype(np.uint8)
    assert np.array_equal(hed_jitter(x, np.random.default_rng(0), 0.0, 0.0), x)  # exact round trip
    y = hed_jitter(x, np.random.default_rng(0), 0.25, 0.015)
    assert y.shape == x.shape and y.dtype == np.uint8 and not np.array_equal(y, x)
    white = np.full((2, 8, 8, 3), 255, np.uint8)  # glass takes a tint, the same over the sample
    tinted = hed_jitter(white, np.random.default_rng(1), 0.0, 0.015)
    assert (tinted.reshape(2, -1, 3).std(axis=1) == 0).all() and (tinted < 255).any()
    aug = make_augmenter(AugmentParams(horizontal_flip=False, hed_scale=0.25, hed_shift=0.015), 40, 1.0, 24.0)
    z = aug(x, np.random.default_rng(0))
    assert z.shape == (6, 40, 40, 3) and 0.0 <= z.min() and z.max() <= 1.0 and not np.allclose(z, x / 255.0)


def test_stain_transfer_gives_a_sample_the_colours_of_another_in_its_batch():
    from bcscan.training.augment import make_augmenter, stain_transfer
    from bcscan.training.baselines import lab_stats

    rng = np.random.default_rng(0)
    texture = rng.normal(0, 12, (8, 24, 24, 1))
    x = np.clip(np.where(np.arange(8)[:, None, None, None] < 4, (230, 170, 190), (150, 110, 200)) + texture,
                0, 255).astype(np.uint8)                      # 4 pink, then 4 purple samples
    assert np.array_equal(stain_transfer(x, np.random.default_rng(1), 0.0), x)
    out = stain_transfer(x, np.random.default_rng(1), 1.0)
    own = np.array([lab_stats(s[None])[0] for s in x])
    moved = np.array([lab_stats(s[None])[0] for s in out])
    nearest = np.abs(moved[:, None, :] - own[None, :, :]).max(-1).min(1)
    assert nearest.max() < 3.0                                # every sample took some sample's colours
    pink_now_purple = np.abs(moved[:4, None] - own[None, 4:]).max(-1).min(1) < 3.0
    assert pink_now_purple.any()
    aug = make_augmenter(AugmentParams(horizontal_flip=False, stain_transfer_p=0.5), 24, 1.0, 24.0)
    assert aug(x, np.random.default_rng(0)).shape == (8, 24, 24, 3)


def test_optics_jitter_blurs_in_micrometres_and_compresses():
    from bcscan.training.augment import make_augmenter, optics_jitter

    rng = np.random.default_rng(0)
    x = np.full((4, 64, 64, 3), 235, np.uint8)
    x[:, 16:48, 16:48] = (90, 40, 120)            # a sharp-edged violet square, 24 µm crop at 0.375 µm/px
    assert np.array_equal(optics_jitter(x, rng, 0.0, 100), x)
    blurred = optics_jitter(x, np.random.default_rng(1), 4.0, 100)
    edge = np.abs(np.diff(blurred[:, 32, :, 0].astype(int), axis=1)).max(axis=1)
    assert blurred.dtype == np.uint8 and (edge < 235 - 90).sum() >= 3   # softer edges (σ ~ U(0, 4) px)
    jpeg = optics_jitter(x, np.random.default_rng(1), 0.0, 20)
    assert 0 < np.abs(jpeg.astype(int) - x).mean() < 5
    aug = make_augmenter(AugmentParams(horizontal_flip=False, blur_um=1.5, jpeg_quality_min=50), 64, 1.0, 24.0)
    z = aug(x, np.random.default_rng(0))
    assert z.shape == x.shape and 0.0 <= z.min() and z.max() <= 1.0 and not np.allclose(z, x / 255.0)


# ----------------------------------------------------------------------------- end to end

def _check_outputs(out: Path, name: str) -> dict:
    from bcscan.model.network import load_keras_model

    for suffix in (".keras", ".json", ".md"):
        assert (out / f"{name}{suffix}").is_file(), suffix
    for artefact in ARTEFACTS:
        assert (out / name / artefact).is_file(), artefact
    metrics = json.loads((out / name / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class", "confusion_matrix",
                "calibration", "colour_baseline", "per_source", "did_not_learn", "history"):
        assert key in metrics, key
    assert metrics["calibration"]["temperature"] > 0
    model, info = load_keras_model(out / f"{name}.keras")
    assert info.classes == ["leukemic", "normal"] and info.sha256
    assert "Limitations" in (out / f"{name}.md").read_text()
    return metrics


def test_train_cells_mode_end_to_end_on_synthetic_fields(tmp_path):
    data = write_dataset(tmp_path / "data")
    (data / "lab" / "SOURCE.txt").write_text("DATASET: Synthetic fields (bcscan.testing.synthetic)\n"
                                             "LICENCE\n  CC BY 4.0: cite the\n  generator.\nCOUNTS: 25\n")
    cfg = write_config(tmp_path / "tiny.yaml")
    out = tmp_path / "model"
    result = CliRunner().invoke(train_command, [str(data), "--config", str(cfg), "--out", str(out)])
    assert result.exit_code in (0, ExitCode.DID_NOT_LEARN), result.output
    metrics = _check_outputs(out, "tiny")
    info = json.loads((out / "tiny.json").read_text())
    assert info["crop_um"] == 24.0 and info["working_mpp"] > 0 and info["input_size"] == 32
    certainty = info["domain"]["uncertainty"]  # the scan-time certainty check, fitted on the validation cells
    assert certainty["labs"] == ["lab"] and certainty["scan_cells"] == 50 and 0 < certainty["threshold"] <= 1
    assert sorted(map(int, certainty["thresholds"])) == [50, 100, 200, 500, 1000]
    assert certainty["thresholds"]["50"] == certainty["threshold"] >= certainty["thresholds"]["1000"]
    assert f"({certainty['threshold']} bits for 50, " in (out / "tiny.md").read_text()
    assert metrics["engine"] == "cpu/tensorflow"               # provenance: device and Keras backend
    assert metrics["data"]["samples"] >= 2 * 24           # about two cells per field
    with open(out / "tiny" / "splits.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert rows["lab/big/dup.png"]["split"] == rows["lab/big/000.png"]["split"]   # duplicate kept together
    assert (result.exit_code == ExitCode.DID_NOT_LEARN) == metrics["did_not_learn"]
    if metrics["did_not_learn"]:
        assert "DID NOT LEARN" in result.output
    card = (out / "tiny.md").read_text()
    assert "- `lab`: Synthetic fields (bcscan.testing.synthetic) Licence: CC BY 4.0: cite the generator." in card
    assert "leukemic cells of lab and normal cells of lab" in card

    # a second stage continues the first with the same data and seed (here drawing 16 balanced cells afresh
    # every epoch, fed by the tf.data pipeline); another seed is refused
    stage2 = write_config(tmp_path / "stage2.yaml", training={"epochs": 2, "batch_size": 8, "jit_compile": False,
                                                              "rebalance_each_epoch": True, "epoch_cells": 16,
                                                              "input_pipeline": "tf_data"},
                          augmentation={"rotation_deg": 30, "scale": 0.1, "hed_scale": 0.2, "hed_shift": 0.01})
    again = CliRunner().invoke(train_command, [str(data), "--config", str(stage2), "--out", str(tmp_path / "stage2"),
                                               "--init-model", str(out / "tiny.keras"), "--learning-rate", "1e-4",
                                               "--work", str(out / "work")])
    assert again.exit_code in (0, ExitCode.DID_NOT_LEARN), again.output
    # the shared work folder keeps only sample caches: no run's best checkpoint is left where another run sharing
    # the folder would load it (two cross-lab folds at once each loaded the other's)
    # one sample cache per source folder
    assert sorted(p.name.split("-")[0] for p in (out / "work").iterdir()) == ["samples"] * 2, list((out / "work").iterdir())
    continued = json.loads((tmp_path / "stage2" / "tiny" / "metrics.json").read_text())
    assert continued["data"]["rebalance_each_epoch"] and continued["epochs_run"] == 2
    assert continued["config"]["training"]["input_pipeline"] == "tf_data"
    assert continued["timing_s"]["train_images_per_s"] > 0
    assert continued["init_model"]["sha256"] == info["sha256"]
    assert continued["init_model"]["epochs_before"] == metrics["epochs_run"]
    assert continued["config"]["training"]["learning_rate"] == 1e-4
    assert "second stage: continued from" in (tmp_path / "stage2" / "tiny.md").read_text()
    refused = CliRunner().invoke(train_command, [str(data), "--config", str(cfg), "--out", str(tmp_path / "o"),
                                                 "--init-model", str(out / "tiny.keras"), "--seed", "2"])
    assert refused.exit_code == 2 and "leak its training images" in refused.output
    other_split = write_config(tmp_path / "other-split.yaml", split={"train": 0.6, "val": 0.2, "test": 0.2})
    refused = CliRunner().invoke(train_command, [str(data), "--config", str(other_split), "--out", str(tmp_path / "o"),
                                                 "--init-model", str(out / "tiny.keras")])
    assert refused.exit_code == 2 and "leak its training images" in refused.output


def test_train_reports_bad_inputs_in_one_line(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml")
    result = CliRunner().invoke(train_command, [str(tmp_path / "nope"), "--config", str(cfg), "--out",
                                                str(tmp_path / "o")])
    assert result.exit_code == 2 and "data folder not found" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "data/lab/big").mkdir(parents=True)
    result = CliRunner().invoke(train_command, [str(tmp_path / "data"), "--config", str(cfg), "--out",
                                                str(tmp_path / "o")])
    assert result.exit_code == 2 and "lab/big" in result.output
    result = CliRunner().invoke(train_command, [str(tmp_path), "--config", str(tmp_path / "missing.yaml"),
                                                "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "missing.yaml" in result.output
    result = CliRunner().invoke(train_command, [str(tmp_path / "data"), "--config", str(cfg), "--out",
                                                str(tmp_path / "o")], env={"KERAS_BACKEND": "jax"})
    assert result.exit_code == 2 and "cosine_time needs the TensorFlow backend" in result.output  # before any work


def test_paper_recipe_runs_end_to_end_on_a_tiny_real_subset(tmp_path):
    """configs/paper.yaml as is (200×200 VGG-16, Adam 1e-3, flip + rotation 45°), 1 epoch, 5 images per source folder."""
    shared("ghaderzadeh-all", "images")
    out = tmp_path / "paper"
    result = CliRunner().invoke(train_command, [str(SHARED_DATA), "--config", str(REPO / "configs/paper.yaml"),
                                                "--out", str(out), "--epochs", "1", "--max-images-per-source", "5",
                                                "--work", str(tmp_path / "work")])
    assert result.exit_code in (0, ExitCode.DID_NOT_LEARN), result.output
    metrics = _check_outputs(out, "paper-vgg16")
    assert metrics["config"]["input_size"] == 200 and metrics["epochs_run"] == 1
    assert metrics["data"]["images"] == 20
    assert "supply only" not in " ".join(metrics["source_shortcut_warning"])   # one dataset: no shortcut warning
