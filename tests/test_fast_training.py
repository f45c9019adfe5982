"""Training that converges on a CPU (issue 24): the VGG-16 width, TensorFlow augmentation for the tf.data
pipeline (the same geometry as the OpenCV augmenter), crops cached per source folder, short epochs."""
from __future__ import annotations

import numpy as np
import pytest
from test_training import synthetic_field

from bcscan.errors import ConfigError, ModelError
from bcscan.training.recipe import AugmentParams, SourceSpec, TrainParams


def test_width_multiplies_every_blocks_channels():
    from bcscan.model.network import VGG16_BLOCKS, build_vgg16

    full = build_vgg16(64, batch_norm=True)
    quarter = build_vgg16(64, batch_norm=True, width=0.25)
    for block, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            name = f"block{block}_conv{conv}"
            assert full.get_layer(name).filters == filters
            assert quarter.get_layer(name).filters == filters // 4
    conv_weights = lambda m: sum(int(np.prod(w.shape)) for l in m.layers if "conv" in l.name  # noqa: E731
                                 for w in l.weights)
    assert 15 < conv_weights(full) / conv_weights(quarter) < 16.5   # channels² : a sixteenth of the weights
    assert quarter.count_params() < 1.1e6 < 14e6 < full.count_params()
    with pytest.raises(ModelError, match="width 1.0"):
        build_vgg16(64, weights="vgg16_notop.h5", width=0.5)


def test_batch_norm_momentum_reaches_every_layer_and_is_checked():
    from bcscan.model.network import build_vgg16
    from bcscan.training.recipe import ModelParams

    def momenta(model):
        return {layer.momentum for layer in model.layers if layer.name.endswith("_bn")}

    assert momenta(build_vgg16(32, batch_norm=True, width=0.25)) == {0.99}      # Keras' default kept
    assert momenta(build_vgg16(32, batch_norm=True, width=0.25, batch_norm_momentum=0.9)) == {0.9}
    with pytest.raises(ValueError, match="batch_norm_momentum"):
        ModelParams(batch_norm_momentum=1.0)                                    # running statistics never move


def _tf(params: AugmentParams, x: np.ndarray, input_size: int, margin: float, seed: int = 0,
        crop_um: float = 18.0) -> np.ndarray:
    from bcscan.training.tf_augment import make_tf_augmenter

    return make_tf_augmenter(params, input_size, margin, crop_um)(x, np.array([seed, 0], np.int64)).numpy()


def test_tf_augmenter_keeps_the_crop_window_flips_and_turns_it_like_the_opencv_one():
    x = np.zeros((1, 80, 80, 3), np.uint8)
    x[0, 8:72, 8:40] = 200                      # left half of the 64-px window inside an 80-px margin crop
    centre = _tf(AugmentParams(horizontal_flip=False), x, 64, 1.25)
    assert np.allclose(centre[0], x[0, 8:72, 8:72] / 255.0, atol=1e-5)
    flipped = [_tf(AugmentParams(horizontal_flip=True), x, 64, 1.25, seed)[0] for seed in range(8)]
    assert any(np.allclose(f, centre[0][:, ::-1], atol=1e-5) for f in flipped)
    assert any(np.allclose(f, centre[0], atol=1e-5) for f in flipped)
    yy, xx = np.mgrid[:80, :80]
    disc = np.where(((yy - 39.5) ** 2 + (xx - 39.5) ** 2 < 20 ** 2)[None, ..., None], 200, 0).astype(np.uint8)
    disc = np.repeat(disc, 3, axis=3)           # a centred cell: any rotation leaves it in place
    upright = _tf(AugmentParams(horizontal_flip=False), disc, 64, 1.25)
    for seed in range(4):
        turned = _tf(AugmentParams(horizontal_flip=False, rotation_deg=180), disc, 64, 1.25, seed)
        assert np.abs(turned - upright).mean() < 0.01
    bar = np.zeros((1, 80, 80, 3), np.uint8)
    bar[0, 36:44, 8:72] = 200                   # a horizontal bar: a quarter turn makes it vertical
    turns = [_tf(AugmentParams(horizontal_flip=False, rotation_deg=180), bar, 64, 1.25, s)[0] for s in range(12)]
    vertical = bar[0, 8:72, 8:72].transpose(1, 0, 2) / 255.0
    horizontal = bar[0, 8:72, 8:72] / 255.0
    assert min(np.abs(t - vertical).mean() for t in turns) < 0.05 < max(np.abs(t - horizontal).mean() for t in turns)


def test_tf_augmenter_matches_the_opencv_stain_jitter_and_repeats_with_its_seed():
    from bcscan.training.augment import hed_jitter

    x = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3)).astype(np.uint8)
    plain = AugmentParams(horizontal_flip=False)
    assert np.allclose(_tf(plain, x, 40, 1.0), x / 255.0, atol=1e-5)
    no_jitter = AugmentParams(horizontal_flip=False, hed_scale=1e-9, hed_shift=1e-9)   # the HED round trip
    assert np.abs(_tf(no_jitter, x, 40, 1.0) - hed_jitter(x, np.random.default_rng(0), 0.0, 0.0) / 255.0).max() < 0.003
    params = AugmentParams(horizontal_flip=True, vertical_flip=True, rotation_deg=180, scale=0.1, translate=0.05,
                           brightness=0.2, contrast=0.2, channel_gain=0.1, grayscale_p=0.3, hed_scale=0.25,
                           hed_shift=0.015)
    y = _tf(params, x, 32, 1.25, seed=3)
    assert y.shape == (6, 32, 32, 3) and y.dtype == np.float32 and 0.0 <= y.min() and y.max() <= 1.0
    assert np.array_equal(y, _tf(params, x, 32, 1.25, seed=3)) and not np.array_equal(y, _tf(params, x, 32, 1.25, 4))
    white = np.full((2, 8, 8, 3), 255, np.uint8)   # glass takes a tint, the same over the sample
    tinted = _tf(AugmentParams(horizontal_flip=False, hed_shift=0.015), white, 8, 1.0, seed=1)
    assert np.allclose(tinted.reshape(2, -1, 3).std(axis=1), 0, atol=1e-6) and (tinted < 0.999).any()


def test_tf_blur_is_opencvs_gaussian_per_sample_and_the_augmenter_draws_it_in_micrometres():
    import cv2

    from bcscan.training.tf_augment import gaussian_blur

    x = np.random.default_rng(1).uniform(0, 1, (3, 30, 30, 3)).astype(np.float32)
    sigmas = np.array([0.0, 0.8, 2.0], np.float32)
    blurred = gaussian_blur(x, sigmas, radius=6).numpy()
    assert np.array_equal(blurred[0], x[0])                      # under 0.05 px: untouched
    for i in (1, 2):
        assert np.abs(blurred[i] - cv2.GaussianBlur(x[i], (13, 13), float(sigmas[i]))).max() < 1e-4
    # blur_um 1 at 64 px over 18 um: sigma ~ U(0, 3.6) px; edges soften, sample by sample, repeatably
    edge = np.zeros((8, 80, 80, 3), np.uint8)
    edge[:, :, 40:] = 255
    sharp = _tf(AugmentParams(horizontal_flip=False), edge, 64, 1.25)
    soft = _tf(AugmentParams(horizontal_flip=False, blur_um=1.0), edge, 64, 1.25, seed=5)
    step = soft[:, 32, 28:36, 0]
    assert np.array_equal(sharp[:, 32, 28:36, 0], np.repeat([[0, 0, 0, 0, 1, 1, 1, 1]], 8, axis=0).astype(np.float32))
    assert (step[:, 3] > 0.05).sum() >= 6 and len({round(float(v), 3) for v in step[:, 3]}) >= 6
    assert np.array_equal(soft, _tf(AugmentParams(horizontal_flip=False, blur_um=1.0), edge, 64, 1.25, seed=5))


def test_tf_pipeline_refuses_augmentations_it_does_not_implement():
    from bcscan.training.tf_augment import make_tf_augmenter

    with pytest.raises(ConfigError, match="hue, stain_transfer_p, jpeg_quality_min"):
        make_tf_augmenter(AugmentParams(hue=0.1, stain_transfer_p=0.5, jpeg_quality_min=80), 32, 1.25, 18.0)
    with pytest.raises(ValueError, match="rebalance_each_epoch"):
        TrainParams(epoch_cells=100)
    with pytest.raises(ValueError, match="input_pipeline"):
        TrainParams(input_pipeline="threads")


def test_epoch_cells_cut_each_balanced_draw():
    from bcscan.training.splits import balance_indices, epoch_draws

    labels = np.array([0] * 300 + [1] * 100 + [1] * 200)
    datasets = np.array(["A"] * 400 + ["B"] * 200, dtype=object)
    pool = np.arange(len(labels))
    first = balance_indices(labels, np.random.default_rng(0), "source_class", datasets)
    draw = epoch_draws(pool, labels, datasets, "source_class", 0, first, epoch_cells=120)
    seen = set()
    for epoch in range(30):
        chosen = draw(epoch)
        assert len(chosen) == 120 and set(chosen) <= set(pool)
        seen |= set(chosen.tolist())
    shares = np.mean([np.mean(labels[draw(e)] == 0) for e in range(30)])
    assert 0.45 < shares < 0.55 and len(seen) > 500        # balanced on average; nearly every cell seen
    assert np.array_equal(draw(7), epoch_draws(pool, labels, datasets, "source_class", 0, first, 120)(7))


def test_crops_are_cached_per_source_folder_and_shared_between_recipes(tmp_path):
    import cv2

    from bcscan.scan.segmentation import SegmentationParams
    from bcscan.training.samples import collect_samples

    rng = np.random.default_rng(0)
    for folder in ("a", "b", "c"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "data" / folder / f"{i}.png"), synthetic_field(rng)[..., ::-1])
    src = {f: SourceSpec(f, "leukemic" if f == "a" else "normal", mpp=0.45) for f in "abc"}
    work, seg = tmp_path / "work", SegmentationParams()

    def collect(folders):
        return collect_samples(tmp_path / "data", [src[f] for f in folders], "cells", 32, 24.0, 1.25, seg,
                               cache_dir=work)

    ab = collect("ab")
    assert len(list(work.iterdir())) == 2
    bc = collect("bc")                           # b is read from its cache, c is cut
    assert len(list(work.iterdir())) == 3
    b_in_ab = ab.source[ab.image] == 1
    b_in_bc = bc.source[bc.image] == 0
    assert np.array_equal(ab.x[b_in_ab], bc.x[b_in_bc]) and np.array_equal(ab.x_margin[b_in_ab], bc.x_margin[b_in_bc])
    fresh = collect_samples(tmp_path / "data", [src["b"], src["c"]], "cells", 32, 24.0, 1.25, seg)   # no cache
    assert np.array_equal(fresh.x, bc.x) and np.array_equal(fresh.n_cells, bc.n_cells)
    assert fresh.files == bc.files and np.array_equal(fresh.ahash, bc.ahash)


def test_cell_type_head_sums_its_blast_types_into_p_leukemic_on_every_backend():
    from bcscan.model.network import build_vgg16
    from bcscan.model.onnx_backend import OnnxRunner

    model = build_vgg16(32, hidden_units=8, batch_norm=True, seed=2, width=0.25, type_classes=[0, 0, 1, 1, 1])
    x = np.random.default_rng(0).uniform(0, 1, (6, 32, 32, 3)).astype(np.float32)
    types = keras_submodel(model, "cell_type")(x).numpy()
    p = model(x).numpy()
    assert types.shape == (6, 5) and p.shape == (6, 2)
    assert np.allclose(p[:, 0], types[:, :2].sum(axis=1), atol=1e-6) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert np.abs(OnnxRunner(model)(x) - p).max() < 1e-4
    assert not model.get_layer("predictions").trainable


def keras_submodel(model, layer: str):
    import keras

    return keras.Model(model.input, model.get_layer(layer).output)


def test_cell_type_recipe_needs_a_type_per_source_and_one_class_per_type(tmp_path):
    from bcscan.training.recipe import cell_type_table

    sources = [SourceSpec("a/x", "leukemic", 0.4, cell_type="myeloblast"),
               SourceSpec("b/y", "normal", 0.4, cell_type="neutrophil"),
               SourceSpec("c/z", "normal", 0.4, cell_type="neutrophil")]
    assert cell_type_table(sources) == (["myeloblast", "neutrophil"], [0, 1], [0, 1, 1])
    with pytest.raises(ConfigError, match="missing: d/w"):
        cell_type_table(sources + [SourceSpec("d/w", "normal", 0.4)])
    with pytest.raises(ConfigError, match="'neutrophil' is labelled both leukemic and normal"):
        cell_type_table(sources + [SourceSpec("d/w", "leukemic", 0.4, cell_type="neutrophil")])


def test_train_with_the_cell_type_head_end_to_end(tmp_path):
    import json

    from click.testing import CliRunner
    from test_training import write_config, write_dataset

    from bcscan.cli.train import train_command
    from bcscan.errors import ExitCode
    from bcscan.model.network import load_keras_model

    data = write_dataset(tmp_path / "data")
    cfg = write_config(tmp_path / "types.yaml",
                       sources=[{"path": "lab/big", "label": "leukemic", "mpp": 0.45, "cell_type": "blast"},
                                {"path": "lab/small", "label": "normal", "mpp": 0.45, "cell_type": "lymphocyte"}],
                       model={"batch_norm": True, "hidden_units": 16, "dropout": 0.1, "head": "cell_types",
                              "width": 0.25},
                       training={"epochs": 2, "batch_size": 8, "jit_compile": False, "input_pipeline": "tf_data",
                                 "rebalance_each_epoch": True, "epoch_cells": 24, "early_stopping_patience": 3,
                                 "lr_schedule": "plateau", "plateau_patience": 1},
                       augmentation={"rotation_deg": 30, "hed_scale": 0.2})
    out = tmp_path / "model"
    result = CliRunner().invoke(train_command, [str(data), "--config", str(cfg), "--out", str(out)])
    assert result.exit_code in (0, ExitCode.DID_NOT_LEARN), result.output
    model, info = load_keras_model(out / "tiny.keras")
    assert info.cell_types == ["blast", "lymphocyte"] and info.classes == ["leukemic", "normal"]
    assert model.get_layer("cell_type").output.shape[-1] == 2
    metrics = json.loads((out / "tiny" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and len(metrics["history"]["val_loss"]) == 2


def test_weight_average_keeps_the_mean_of_the_last_epochs_batch_norm_statistics_included():
    from bcscan.model.network import build_vgg16
    from bcscan.training.fit import _WeightAverage

    model = build_vgg16(32, 2, 8, 0.1, True, None, 0, False, False, 0.25)
    average = _WeightAverage.make(after_epochs=1)
    average.set_model(model)
    average.on_train_begin()
    rng = np.random.default_rng(0)
    per_epoch = []
    for epoch in range(3):
        weights = [rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()]
        model.set_weights(weights)
        per_epoch.append(weights)
        average.on_epoch_end(epoch)
    assert average.epochs == [2, 3]
    assert any("moving_variance" in w.path for w in model.weights)
    for kept, second, third in zip(average.mean(), per_epoch[1], per_epoch[2]):
        np.testing.assert_allclose(kept, (second + third) / 2, rtol=1e-6, atol=1e-7)
        assert kept.dtype == second.dtype


def test_train_keeps_the_averaged_weights_and_says_so_in_the_card(tmp_path):
    import json

    from click.testing import CliRunner
    from test_training import write_config, write_dataset

    from bcscan.cli.train import train_command
    from bcscan.errors import ExitCode

    data = write_dataset(tmp_path / "data")
    cfg = write_config(tmp_path / "tiny.yaml", model={"batch_norm": True, "hidden_units": 16, "dropout": 0.1,
                                                      "width": 0.25},
                       training={"epochs": 3, "batch_size": 8, "jit_compile": False, "input_pipeline": "tf_data",
                                 "rebalance_each_epoch": True, "epoch_cells": 24, "lr_schedule": "cosine",
                                 "average_last_epochs": 2},
                       augmentation={"rotation_deg": 30})
    out = tmp_path / "model"
    result = CliRunner().invoke(train_command, [str(data), "--config", str(cfg), "--out", str(out)])
    assert result.exit_code in (0, ExitCode.DID_NOT_LEARN), result.output
    metrics = json.loads((out / "tiny" / "metrics.json").read_text())
    assert metrics["averaged_epochs"]["epochs"] == [2, 3] and metrics["averaged_epochs"]["val_loss"] > 0
    assert "kept the mean weights of epochs 2-3 of 3 run" in (out / "tiny.md").read_text()
    assert (out / "tiny" / "best-epoch.weights.h5").is_file()


def test_the_best_epoch_of_an_averaging_run_is_the_model_the_recipe_without_averaging_trains(tmp_path):
    """The weight average only reads the weights: the same run without it keeps that best epoch, so one training
    judges both ways of keeping weights (train_best_epoch)."""
    import json

    import numpy as np
    from test_training import write_config, write_dataset

    from bcscan.model.network import load_keras_model, load_model_info
    from bcscan.training.train import train, train_best_epoch

    data = write_dataset(tmp_path / "data")
    recipe = {"model": {"batch_norm": True, "hidden_units": 16, "dropout": 0.1, "width": 0.25},
              "augmentation": {"rotation_deg": 30}}
    training = {"epochs": 3, "batch_size": 8, "jit_compile": False, "input_pipeline": "tf_data",
                "rebalance_each_epoch": True, "epoch_cells": 24, "lr_schedule": "cosine", "store_float16": False}
    averaging = write_config(tmp_path / "tiny.yaml", **recipe, training=training | {"average_last_epochs": 2})
    (tmp_path / "plain").mkdir()
    plain = write_config(tmp_path / "plain" / "tiny.yaml", **recipe, training=training)
    quiet = lambda *a, **k: None  # noqa: E731
    averaged = train(data, averaging, tmp_path / "averaged", work_dir=tmp_path / "work", echo=quiet)
    without = train(data, plain, tmp_path / "without", work_dir=tmp_path / "work", echo=quiet)
    rebuilt = train_best_epoch(data, plain, tmp_path / "rebuilt", tmp_path / "averaged" / "tiny",
                               work_dir=tmp_path / "work", echo=quiet)
    assert averaged["history"] == without["history"]
    assert rebuilt["best_epoch"] == without["best_epoch"] and rebuilt["averaged_epochs"] is None
    for kept, expected in zip(load_keras_model(tmp_path / "rebuilt" / "tiny.keras")[0].get_weights(),
                              load_keras_model(tmp_path / "without" / "tiny.keras")[0].get_weights()):
        np.testing.assert_array_equal(kept, expected)
    assert load_model_info(tmp_path / "rebuilt" / "tiny.keras").temperature == \
        load_model_info(tmp_path / "without" / "tiny.keras").temperature
    assert rebuilt["test_cells"]["balanced_accuracy"] == without["test_cells"]["balanced_accuracy"]
    assert json.loads((tmp_path / "rebuilt" / "tiny" / "metrics.json").read_text())["best_epoch_of_run"] \
        == str(tmp_path / "averaged" / "tiny")
    assert "taken from" in (tmp_path / "rebuilt" / "tiny.md").read_text()


def test_weight_average_needs_the_planned_end_of_training():
    with pytest.raises(ValueError):
        TrainParams(epochs=10, average_last_epochs=4, early_stopping_patience=2)
    with pytest.raises(ValueError):
        TrainParams(epochs=3, average_last_epochs=4)
