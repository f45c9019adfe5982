"""The CPU backends give the same probabilities: ONNX Runtime is used only where it equals
TensorFlow (every p_leukemic within 1e-3 on real test cells, the same labels)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from helpers import REPO, shared
from PIL import Image

from bcscan.errors import ModelError
from bcscan.model.classifier import CellClassifier, ClassificationParams
from bcscan.model.network import load_model_info
from bcscan.scan.pipeline import cells_in_field
from bcscan.scan.segmentation import SegmentationParams

SHIPPED = REPO / "models" / "bcscan-vgg16.keras"
OPERATING_THRESHOLD = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["classification"]["threshold"]
SCALES = {"ghaderzadeh-all": 0.45, "pbc-normal": 0.088, "mll-bone-marrow": 0.075, "lmu-aml-blood": 0.117}


def held_out_crops(limit: int | None) -> np.ndarray:
    """Crops of the white cells of the shipped model's test images (never trained on), as `scan` cuts them."""
    data = shared("ghaderzadeh-all").parent
    with open(REPO / "models" / "bcscan-vgg16" / "splits.csv", newline="") as fh:
        files = [row["file"] for row in csv.DictReader(fh) if row["split"] == "test"]
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    crop_um = load_model_info(SHIPPED).crop_um
    crops = []
    for file in files:
        rgb = np.asarray(Image.open(data / file).convert("RGB"))
        crops.append(cells_in_field(rgb, SCALES[file.split("/")[0]], SegmentationParams(), crop_um).crops)
    return np.concatenate(crops)


def backends_agree(crops: np.ndarray) -> None:
    tensorflow = CellClassifier(ClassificationParams(model=str(SHIPPED), device="cpu", cpu_backend="tensorflow"))
    onnx = CellClassifier(ClassificationParams(model=str(SHIPPED), device="cpu", cpu_backend="onnxruntime"))
    assert (tensorflow.engine, onnx.engine) == ("cpu/tensorflow-xla", "cpu/onnxruntime")
    p_tf, p_onnx = tensorflow.predict(crops), onnx.predict(crops)
    assert np.abs(p_tf - p_onnx).max() <= 1e-3
    for threshold in (0.5, OPERATING_THRESHOLD):
        # a cell within that of the threshold can be called either way (1 of 3,920 at 0.5 on 2026-12-07: 0.50002
        # against 0.49999); no more than one in a thousand
        flipped = np.sum((p_tf >= threshold) != (p_onnx >= threshold))
        assert flipped <= max(1, 0.001 * len(p_tf)), (threshold, flipped)
    assert 0.05 < np.mean(p_tf >= 0.5) < 0.95  # both classes present: a real check, not all-one-class


def test_onnx_runtime_equals_tensorflow_on_real_test_cells():
    crops = held_out_crops(limit=24)
    assert len(crops) >= 50
    backends_agree(crops)


@pytest.mark.slow
def test_onnx_runtime_equals_tensorflow_on_every_test_cell():
    backends_agree(held_out_crops(limit=None))


def test_a_model_onnx_cannot_express_stays_on_tensorflow(tmp_path):
    import keras

    from bcscan.model.network import ModelInfo, save_model

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    path = tmp_path / "gap.keras"
    save_model(keras.Model(inputs, outputs), path, ModelInfo(name="gap", classes=["leukemic", "normal"],
                                                             input_size=32, crop_um=20.0, working_mpp=0.4))
    assert CellClassifier(ClassificationParams(model=str(path), device="cpu")).engine == "cpu/tensorflow-xla"
    with pytest.raises(ModelError, match="GlobalAveragePooling2D"):
        CellClassifier(ClassificationParams(model=str(path), device="cpu", cpu_backend="onnxruntime"))


def test_a_grey_input_model_ignores_colour_saved_and_on_onnx(tmp_path):
    from bcscan.model.network import ModelInfo, build_vgg16, save_model

    model = build_vgg16(32, hidden_units=8, batch_norm=True, seed=1, grey_input=True)
    assert "grey" not in {w.path.split("/")[0] for w in model.trainable_weights}  # fixed, never trained
    path = tmp_path / "grey.keras"
    save_model(model, path, ModelInfo(name="grey", classes=["leukemic", "normal"], input_size=32, crop_um=20.0,
                                      working_mpp=0.4))
    rgb = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    luminance = np.round(rgb @ np.array([0.299, 0.587, 0.114]))
    grey = np.repeat(luminance[..., None], 3, axis=3).astype(np.uint8)
    for backend in ("tensorflow", "onnxruntime"):
        classifier = CellClassifier(ClassificationParams(model=str(path), device="cpu", cpu_backend=backend))
        assert np.abs(classifier.predict(rgb) - classifier.predict(grey)).max() <= 2e-3  # colour changes nothing


def test_stain_standardisation_cancels_stain_strength_and_cast_saved_and_on_onnx(tmp_path):
    """Per-channel scaling of optical density (thicker/thinner stain, another stain's hue) must not
    change p, on TensorFlow and ONNX Runtime alike, after a float16 save; the image content still does."""
    from bcscan.model.network import ModelInfo, build_vgg16, save_model, to_float16

    model = build_vgg16(32, hidden_units=8, batch_norm=True, seed=1, stain_standardise=True)
    path = tmp_path / "stain.keras"
    save_model(to_float16(model), path, ModelInfo(name="stain", classes=["leukemic", "normal"], input_size=32,
                                                  crop_um=20.0, working_mpp=0.4))
    rgb = np.random.default_rng(0).integers(40, 256, (16, 32, 32, 3), dtype=np.uint8)
    od = -np.log((rgb + 1.0) / 256.0)
    restained = np.clip(256.0 * np.exp(-od * np.array([1.6, 0.7, 1.2])) - 1.0, 0, 255).round().astype(np.uint8)
    for backend in ("tensorflow", "onnxruntime"):
        classifier = CellClassifier(ClassificationParams(model=str(path), device="cpu", cpu_backend=backend))
        assert classifier.engine.startswith(f"cpu/{backend}")
        p = classifier.predict(rgb)
        restain_change = np.abs(p - classifier.predict(restained)).max()
        assert restain_change <= 1e-4
        assert np.abs(p - classifier.predict(rgb[::-1])).max() > 10 * restain_change


def test_an_unknown_keras_backend_is_refused_in_one_line(monkeypatch):
    from bcscan.errors import ConfigError
    from bcscan.model.classifier import configure_backend

    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(ConfigError, match="KERAS_BACKEND=torch: bcscan runs on 'tensorflow'"):
        configure_backend("cpu")


JAX_PROBE = """
import sys, numpy as np
from bcscan.model.classifier import CellClassifier, ClassificationParams
from bcscan.model.network import load_model_info
crops = np.load(sys.argv[1])
clf = CellClassifier(ClassificationParams(model=sys.argv[2], device="cpu", cpu_backend="tensorflow"))
np.save(sys.argv[3], clf.predict(crops))
print(clf.engine)
"""


def test_the_shipped_model_gives_the_same_p_on_jax(tmp_path):
    """KERAS_BACKEND=jax (a GPU machine with JAX and no TensorFlow) must classify as TensorFlow does."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed (optional backend: pip install jax)")
    crops = held_out_crops(limit=24)
    np.save(tmp_path / "crops.npy", crops)
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", JAX_PROBE, str(tmp_path / "crops.npy"), str(SHIPPED),
                           str(tmp_path / "p.npy")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "cpu/jax"
    p_tf = CellClassifier(ClassificationParams(model=str(SHIPPED), device="cpu", cpu_backend="tensorflow")).predict(crops)
    p_jax = np.load(tmp_path / "p.npy")
    assert np.abs(p_tf - p_jax).max() <= 1e-4 and 0.05 < np.mean(p_tf >= 0.5) < 0.95
