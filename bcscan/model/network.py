"""The VGG-16 cell classifier as a file: architecture, saving and verified loading.

A model is two files side by side: `NAME.keras` (Keras native format) and
`NAME.json` (metadata that `bcscan scan` needs to use it correctly: classes,
input size, physical crop size, preprocessing, calibration temperature, and
the SHA-256 of the `.keras` file, checked at load so that a corrupt or
swapped model file is refused instead of silently used).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcscan.config import packaged
from bcscan.errors import ModelError

MODEL_FORMAT = "bcscan-model/1"
LEUKEMIC = "leukemic"
NORMAL = "normal"
CLASSES = [LEUKEMIC, NORMAL]  # model output order: index 0 is p(leukemic)


SHIPPED_MODEL = "bcscan-vgg16.keras"


def resolve_model_path(model: str | Path | None) -> Path:
    """The model a run uses: a path as given (relative to the working folder), or, when none is
    given, the model shipped with bcscan (package data, found from any install)."""
    if not model:
        return packaged(SHIPPED_MODEL)
    return Path(model).expanduser()


@dataclass
class ModelInfo:
    name: str
    classes: list[str]
    input_size: int           # square input side in pixels
    crop_um: float            # physical side of the crop around a cell centre
    working_mpp: float        # scale at which crops were cut (µm/px) before resizing to input_size
    preprocessing: str = "rescale_1_255"
    temperature: float = 1.0  # calibration: softmax(log p / T)
    image_temperature: float = 1.0  # image score (bcscan evaluate): sigmoid(mean cell logit / this)
    sha256: str = ""
    format: str = MODEL_FORMAT
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    domain: dict[str, Any] = field(default_factory=dict)  # validated range of the cells' appearance (model.domain)
    cell_types: list[str] = field(default_factory=list)  # model.head cell_types: the types the network tells apart

    @property
    def leukemic_index(self) -> int:
        return self.classes.index(LEUKEMIC)


def metadata_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_info(model_path: Path) -> ModelInfo:
    """Read and verify the metadata of a model; raises ModelError with a one-line reason."""
    model_path = Path(model_path)
    meta_path = metadata_path(model_path)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: model file not found")
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: model metadata file not found (expected beside the model)")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        info = ModelInfo(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{meta_path}: unreadable model metadata ({exc})") from exc
    if info.format != MODEL_FORMAT:
        raise ModelError(f"{meta_path}: unsupported model format '{info.format}'")
    if LEUKEMIC not in info.classes:
        raise ModelError(f"{meta_path}: classes {info.classes} lack '{LEUKEMIC}'")
    actual = file_sha256(model_path)
    if actual != info.sha256:
        raise ModelError(f"{model_path}: SHA-256 {actual[:12]}… does not match its metadata ({info.sha256[:12]}…): corrupt or mismatched model file")
    return info


def load_keras_model(model_path: Path):
    """Load a verified model with Keras safe mode (no arbitrary code from the file)."""
    import keras

    import bcscan.model.layers  # noqa: F401  (registers bcscan's layer with Keras before loading)

    info = load_model_info(model_path)
    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises a wide range of types for broken archives
        raise ModelError(f"{model_path}: cannot load Keras model ({type(exc).__name__}: {exc})") from exc
    if any(str(w.dtype) == "float16" for w in model.weights):
        model = _as_float32(model, model_path)
    expected = (None, info.input_size, info.input_size, 3)
    if tuple(model.input_shape) != expected:
        raise ModelError(f"{model_path}: input shape {model.input_shape} differs from metadata {expected}")
    return model, info


def _retype_policies(obj, dtype: str):
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and isinstance(obj.get("config"), dict):
            return {**obj, "config": {**obj["config"], "name": dtype}}
        return {k: _retype_policies(v, dtype) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retype_policies(v, dtype) for v in obj]
    return obj


def _as_float32(model, model_path: Path):
    """A float32 copy of a model stored with float16 weights (half the file size): float16
    arithmetic is ~2.5× slower than float32 on CPUs, so weights are widened once at load."""
    import keras

    try:
        config = _retype_policies(model.get_config(), "float32")
        wide = keras.Model.from_config(config)
        wide.set_weights([w.astype("float32") if str(w.dtype) == "float16" else w for w in model.get_weights()])
    except Exception as exc:
        raise ModelError(f"{model_path}: cannot widen float16 weights to float32 ({type(exc).__name__}: {exc})") from exc
    return wide


def to_float16(model):
    """A copy of a functional model whose layers store (and compute in) float16: for saving small files.
    `load_keras_model` widens it back to float32."""
    import keras

    half = keras.Model.from_config(_retype_policies(model.get_config(), "float16"))
    half.set_weights([w.astype("float16") if str(w.dtype) == "float32" else w for w in model.get_weights()])
    return half


def save_model(model, model_path: Path, info: ModelInfo) -> ModelInfo:
    """Write `model` and its metadata atomically (temporary names, then rename)."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_model = model_path.with_name(f".{model_path.stem}.tmp-{os.getpid()}.keras")
    model.save(tmp_model)
    info.sha256 = file_sha256(tmp_model)
    meta = metadata_path(model_path)
    tmp_meta = meta.with_name(f".{meta.name}.tmp-{os.getpid()}")
    tmp_meta.write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_model, model_path)
    os.replace(tmp_meta, meta)
    return info


VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# 1×1 convolution kernel (in RGB, out 3): every output channel is the ITU-R BT.601 luminance
LUMINANCE_KERNEL = np.repeat(np.array([0.299, 0.587, 0.114], np.float32)[None, None, :, None], 3, axis=3)


def build_vgg16(input_size: int, n_classes: int = 2, hidden_units: int = 256, dropout: float = 0.5,
                batch_norm: bool = False, weights: Path | None = None, seed: int = 0, grey_input: bool = False,
                stain_standardise: bool = False, width: float = 1.0, type_classes: list[int] | None = None,
                batch_norm_momentum: float = 0.99):
    """VGG-16 (13 conv layers in 5 blocks, Keras `applications.VGG16` layer names) with the
    paper's head: flatten → dense → dropout → softmax.

    `batch_norm=True` inserts batch normalisation after every convolution: without it VGG-16
    trained from scratch with Adam 1e-3 stays at chance.  `weights` is a local Keras VGG-16
    "notop" weights file (ImageNet weights cannot be downloaded at run time); its conv kernels
    are copied layer by layer, so it works with or without batch normalisation.

    `grey_input=True` puts a fixed luminance layer in front (three equal channels): the model cannot
    use colour, the cue that differs most between labs, and the scan, `evaluate` and training all
    apply it alike because it is part of the saved model.  `stain_standardise=True` puts
    `layers.StainStandardisation` in front (after the grey layer when both are asked): stain strength
    and colour cast of each crop cancel.

    `width` multiplies every block's channels (1.0 = the paper's VGG-16): some twenty thousand
    training cells do not need 14.7 M convolution weights, and a quarter of the channels trains
    several times faster on a CPU.  ImageNet `weights` fit only the full width.

    `batch_norm_momentum` is how much of its running mean and variance a batch-norm layer keeps per step
    (Keras' 0.99 by default): inference uses these running statistics, and at 0.99 they still hold 53 %
    of their initial values after 64 steps, which makes the first epochs of a short-epoch run score at
    chance on validation (and early stopping or the plateau act on that).

    `type_classes` (the class of each cell type) makes the head a softmax over cell types (layer `cell_type`,
    the one training fits) followed by a fixed sum into the `n_classes` classes (layer `predictions`), so the
    model's output stays p(leukemic), p(normal) for `scan`, `evaluate` and ONNX Runtime alike.
    """
    import keras
    from keras import layers

    from bcscan.model.layers import StainStandardisation

    if width <= 0:
        raise ModelError(f"model width must be > 0, got {width}")
    if weights is not None and width != 1.0:
        raise ModelError(f"{weights}: ImageNet VGG-16 weights need model width 1.0, got {width}")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    if grey_input:
        x = layers.Conv2D(3, 1, padding="same", use_bias=False, trainable=False, name="grey",
                          kernel_initializer=keras.initializers.Constant(LUMINANCE_KERNEL))(x)
    if stain_standardise:
        x = StainStandardisation(name="stain_standardise")(x)
    for block, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            name = f"block{block}_conv{conv}"
            x = layers.Conv2D(max(8, round(filters * width)), 3, padding="same", use_bias=not batch_norm, name=name,
                              activation=None if batch_norm else "relu")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=batch_norm_momentum, name=f"{name}_bn")(x)
                x = layers.Activation("relu", name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    if type_classes:
        x = layers.Dense(len(type_classes), activation="softmax", name="cell_type", dtype="float32")(x)
        membership = np.eye(n_classes, dtype=np.float32)[type_classes]
        outputs = layers.Dense(n_classes, name="predictions", dtype="float32", trainable=False,
                               kernel_initializer=keras.initializers.Constant(membership),
                               bias_initializer="zeros")(x)
    else:
        outputs = layers.Dense(n_classes, activation="softmax", name="predictions", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="vgg16_bn" if batch_norm else "vgg16")
    if weights is not None:
        _copy_vgg16_conv_weights(model, Path(weights), input_size)
    return model


def _copy_vgg16_conv_weights(model, weights: Path, input_size: int) -> None:
    import keras

    if not weights.is_file():
        raise ModelError(f"{weights}: weights file not found")
    try:
        base = keras.applications.VGG16(include_top=False, weights=str(weights),
                                        input_shape=(input_size, input_size, 3))
    except Exception as exc:
        raise ModelError(f"{weights}: not a Keras VGG-16 'notop' weights file ({exc})") from exc
    for layer in base.layers:
        if not layer.name.endswith(tuple(f"conv{i}" for i in range(1, 4))):
            continue
        target = model.get_layer(layer.name)
        kernel, bias = layer.get_weights()
        target.set_weights([kernel, bias] if target.use_bias else [kernel])
