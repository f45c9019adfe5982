"""`bcscan train`: reproducible training of the VGG-16 leukemic/normal cell classifier.

Pipeline (every step seeded):

1. Discover the images of each source folder named in the config (a source folder
   maps to one model class and has its own scale in µm/px).
2. Decode each image once and compute (a) its 16×16 average hash and (b) its
   samples: the whole image (`image` mode, as in the paper) or one crop per white
   cell found by `pipeline.cells_in_field` (`cells` mode, exactly the crops
   `bcscan scan` classifies; each crop inherits its image's label).  The result
   is cached as an .npz in the work folder, so a re-run does not re-segment.
3. Group near-duplicate images (average-hash Hamming distance <= `max_hamming`,
   transitively) and split the groups 80/10/10 per source folder, so that no copy
   of a validation/test image is trained on, and all cells of an image stay in
   the image's split.
4. Balance the training classes by random undersampling to equal counts.
5. Train (augmentation on the fly: flips, rotation, scale/translation, colour /
   stain jitter), keep the best checkpoint by validation loss, stop early or when
   the time budget is spent.
6. Calibrate by temperature scaling on the validation split; evaluate on the test
   split (sample level and image level, per source), train a colour-only
   baseline on the same split, write the model, metadata and reports.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcscan.config import load_yaml, section
from bcscan.errors import ConfigError, TrainingError
from bcscan.model.network import LEUKEMIC, NORMAL

log = logging.getLogger(__name__)

CLASSES = [LEUKEMIC, NORMAL]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
CACHE_VERSION = 2


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class SourceSpec:
    path: str                  # folder relative to DATA_DIR
    label: str                 # model class: leukemic | normal
    mpp: float = 0.0           # µm per pixel of this source's images (cells mode)
    dataset: str = ""          # name used for per-dataset reports; default: first path component

    def __post_init__(self):
        if self.label not in CLASSES:
            raise ValueError(f"source {self.path}: label must be one of {CLASSES}, got {self.label!r}")
        if self.mpp < 0:
            raise ValueError(f"source {self.path}: mpp must be >= 0")

    @property
    def dataset_name(self) -> str:
        return self.dataset or Path(self.path).parts[0]


@dataclass(frozen=True)
class SplitParams:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    hash_size: int = 16
    max_hamming: int = 3

    def __post_init__(self):
        if min(self.train, self.val, self.test) < 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError("train + val + test must be 1 and each >= 0")


@dataclass(frozen=True)
class ModelParams:
    batch_norm: bool = True
    hidden_units: int = 256
    dropout: float = 0.5


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"        # constant | plateau | cosine (over epochs) | cosine_time (over max_minutes)
    early_stopping_patience: int = 0     # 0 = off
    max_minutes: float = 0.0             # 0 = no time budget
    jit_compile: bool = True
    deterministic: bool = False          # tf op determinism (slower)
    did_not_learn_margin: float = 0.10   # val balanced accuracy below 0.5 + margin = did not learn
    store_float16: bool = False          # store weights as float16 (half the file)

    def __post_init__(self):
        if self.lr_schedule not in {"constant", "plateau", "cosine", "cosine_time"}:
            raise ValueError("lr_schedule must be constant, plateau, cosine or cosine_time")
        if self.lr_schedule == "cosine_time" and self.max_minutes <= 0:
            raise ValueError("lr_schedule cosine_time needs max_minutes > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")


@dataclass(frozen=True)
class AugmentParams:
    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotation_deg: float = 0.0        # uniform in ±rotation_deg
    scale: float = 0.0               # zoom factor uniform in [1-scale, 1+scale]
    translate: float = 0.0           # shift, fraction of the crop side
    hue: float = 0.0                 # hue shift, fraction of the colour wheel
    saturation: float = 0.0          # saturation factor in [1-s, 1+s]
    brightness: float = 0.0          # value factor in [1-b, 1+b]
    contrast: float = 0.0            # contrast factor in [1-c, 1+c]
    channel_gain: float = 0.0        # per-channel (stain cast) gain in [1-g, 1+g]
    grayscale_p: float = 0.0         # probability of a grey-level sample


@dataclass
class TrainConfig:
    name: str = "bcscan-vgg16"
    mode: str = "cells"              # image | cells
    input_size: int = 64
    crop_um: float = 24.0            # cells mode: physical side of each crop
    crop_margin: float = 1.25        # cells mode: training crops cached this much larger (scale/shift room)
    balance: str = "undersample"     # undersample | none
    max_images_per_source: int = 0   # 0 = all (a seeded random subset otherwise)
    seed: int = 0
    sources: list[SourceSpec] = field(default_factory=list)
    segmentation: Any = None         # SegmentationParams
    split: SplitParams = field(default_factory=SplitParams)
    model: ModelParams = field(default_factory=ModelParams)
    training: TrainParams = field(default_factory=TrainParams)
    augmentation: AugmentParams = field(default_factory=AugmentParams)
    raw: dict = field(default_factory=dict)

    @property
    def margin(self) -> float:
        return self.crop_margin if self.mode == "cells" else 1.0


TOP_KEYS = {"name", "mode", "input_size", "crop_um", "crop_margin", "balance", "max_images_per_source",
            "seed", "sources", "segmentation", "split", "model", "training", "augmentation", "description"}


def load_train_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a training config; `overrides` (epochs, seed, max_images_per_source, ...) win."""
    from bcscan.scan.segmentation import SegmentationParams

    raw = load_yaml(path)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s): {', '.join(unknown)}")
    raw = json.loads(json.dumps(raw))  # deep copy, plain types
    overrides = overrides or {}
    for key in ("seed", "max_images_per_source", "input_size"):
        if overrides.get(key) is not None:
            raw[key] = overrides[key]
    for key in ("epochs", "max_minutes", "batch_size", "learning_rate"):
        if overrides.get(key) is not None:
            raw.setdefault("training", {})[key] = overrides[key]
    try:
        sources = [section(SourceSpec, s, f"sources[{i}]") for i, s in enumerate(raw.get("sources") or [])]
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not sources:
        raise ConfigError(f"{path}: no 'sources' listed")
    labels = {s.label for s in sources}
    if labels != set(CLASSES):
        raise ConfigError(f"{path}: sources must cover both classes {CLASSES}, got {sorted(labels)}")
    try:
        cfg = TrainConfig(
            name=str(raw.get("name", "bcscan-vgg16")),
            mode=str(raw.get("mode", "cells")),
            input_size=int(raw.get("input_size", 64)),
            crop_um=float(raw.get("crop_um", 24.0)),
            crop_margin=float(raw.get("crop_margin", 1.25)),
            balance=str(raw.get("balance", "undersample")),
            max_images_per_source=int(raw.get("max_images_per_source") or 0),
            seed=int(raw.get("seed", 0)),
            sources=sources,
            segmentation=section(SegmentationParams, raw.get("segmentation"), "segmentation"),
            split=section(SplitParams, raw.get("split"), "split"),
            model=section(ModelParams, raw.get("model"), "model"),
            training=section(TrainParams, raw.get("training"), "training"),
            augmentation=section(AugmentParams, raw.get("augmentation"), "augmentation"),
            raw=raw,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if cfg.mode not in {"image", "cells"}:
        raise ConfigError(f"{path}: mode must be 'image' or 'cells', got {cfg.mode!r}")
    if cfg.balance not in {"undersample", "none"}:
        raise ConfigError(f"{path}: balance must be 'undersample' or 'none'")
    if cfg.input_size < 32:
        raise ConfigError(f"{path}: input_size must be >= 32 (VGG-16 pools 5 times)")
    if cfg.mode == "cells":
        missing = [s.path for s in sources if s.mpp <= 0]
        if missing:
            raise ConfigError(f"{path}: cells mode needs 'mpp' for every source (missing: {', '.join(missing)})")
        if cfg.crop_margin < 1:
            raise ConfigError(f"{path}: crop_margin must be >= 1")
    return cfg


# ----------------------------------------------------------------------------- data

@dataclass
class Samples:
    """All samples of a data collection; images are the unit of splitting and aggregation."""
    x: np.ndarray            # uint8 N×S×S×3 at input_size, exactly what the model sees at scan time
    x_margin: np.ndarray     # uint8 N×M×M×3 larger crops for augmentation (== x in image mode)
    image: np.ndarray        # int, index into `files` for each sample
    files: list[str]         # image paths relative to DATA_DIR
    source: np.ndarray       # int, index into `sources` for each image
    ahash: np.ndarray        # uint8 packed bits of each image's average hash
    n_cells: np.ndarray      # samples per image
    sources: list[SourceSpec]

    @property
    def image_label(self) -> np.ndarray:
        return np.array([CLASSES.index(self.sources[s].label) for s in self.source], dtype=np.int64)

    @property
    def label(self) -> np.ndarray:
        return self.image_label[self.image]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover(data_dir: Path, sources: list[SourceSpec], max_per_source: int = 0, seed: int = 0,
             only: set[str] | None = None) -> list[tuple[str, int]]:
    """(relative path, source index) of every image; a seeded subset when max_per_source > 0."""
    data_dir = Path(data_dir)
    out: list[tuple[str, int]] = []
    for i, src in enumerate(sources):
        folder = data_dir / src.path
        if not folder.is_dir():
            raise TrainingError(f"{folder}: source folder not found")
        files = [p.relative_to(data_dir).as_posix() for p in list_images(folder)]
        if only is not None:
            files = [f for f in files if f in only]
        if not files and only is None:
            raise TrainingError(f"{folder}: no images (.jpg/.png/.bmp/.tif) in source folder")
        if max_per_source and len(files) > max_per_source:
            rng = np.random.default_rng([seed, i])
            files = sorted(rng.choice(files, max_per_source, replace=False).tolist())
        out.extend((f, i) for f in files)
    return out


def average_hash(rgb: np.ndarray, size: int = 16) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    return np.packbits(small > small.mean())


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TrainingError(f"{path}: cannot decode image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _extract_one(args):
    """Worker: (path, mpp, mode, input_size, crop_um, margin, seg_params, hash_size) → arrays."""
    path, mpp, mode, input_size, crop_um, margin, seg_params, hash_size = args
    import cv2

    cv2.setNumThreads(1)
    rgb = _read_rgb(Path(path))
    h = average_hash(rgb, hash_size)
    from bcscan.scan.crops import crop_cells, crop_side_px, resize_square

    if mode == "image":
        x = resize_square(rgb, input_size)[None]
        return h, x, x
    from bcscan.scan.pipeline import cells_in_field

    fc = cells_in_field(rgb, mpp, seg_params, crop_um)
    msize = int(round(input_size * margin))
    x = np.stack([resize_square(c, input_size) for c in fc.crops]) if len(fc.crops) else \
        np.zeros((0, input_size, input_size, 3), np.uint8)
    if len(fc.crops):
        big = crop_cells(fc.image, fc.centres, crop_side_px(crop_um * margin, seg_params.working_mpp))
        xm = np.stack([resize_square(c, msize) for c in big])
    else:
        xm = np.zeros((0, msize, msize, 3), np.uint8)
    return h, x, xm


def _cache_key(files, sources, mode, input_size, crop_um, margin, seg_params, hash_size, data_dir) -> str:
    digest = hashlib.sha256()
    meta = {"v": CACHE_VERSION, "mode": mode, "input": input_size, "crop_um": crop_um, "margin": margin,
            "seg": dataclasses.asdict(seg_params) if seg_params is not None else None, "hash": hash_size,
            "mpp": [s.mpp for s in sources]}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for rel, si in files:
        st = (Path(data_dir) / rel).stat()
        digest.update(f"{rel}|{si}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


def collect_samples(data_dir: Path, sources: list[SourceSpec], mode: str, input_size: int, crop_um: float,
                    margin: float, seg_params, *, max_per_source: int = 0, seed: int = 0,
                    hash_size: int = 16, cache_dir: Path | None = None, workers: int = 0,
                    only: set[str] | None = None, progress: bool = False) -> Samples:
    """Decode, hash and (cells mode) segment every image once; cached when `cache_dir` is given."""
    files = discover(data_dir, sources, max_per_source, seed, only)
    if not files:
        raise TrainingError(f"{data_dir}: no images selected")
    margin = margin if mode == "cells" else 1.0
    cache = None
    if cache_dir is not None:
        key = _cache_key(files, sources, mode, input_size, crop_um, margin, seg_params, hash_size, data_dir)
        cache = Path(cache_dir) / f"samples-{mode}-{key}.npz"
        if cache.is_file():
            z = np.load(cache, allow_pickle=False)
            log.info("sample cache %s", cache)
            return Samples(z["x"], z["x_margin"], z["image"], [f for f, _ in files],
                           np.array([s for _, s in files]), z["ahash"], z["n_cells"], list(sources))
    jobs = [(str(Path(data_dir) / rel), sources[si].mpp, mode, input_size, crop_um, margin, seg_params, hash_size)
            for rel, si in files]
    workers = workers or min(4, os.cpu_count() or 1)
    results = []
    t0 = time.time()
    import sys

    # fork is safe only before TensorFlow starts its threads; otherwise decode in this process
    if workers > 1 and len(jobs) > 50 and "tensorflow" not in sys.modules and hasattr(os, "fork"):
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for i, r in enumerate(pool.imap(_extract_one, jobs, chunksize=16)):
                results.append(r)
                if progress and (i + 1) % 500 == 0:
                    log.warning("  %d/%d images prepared (%.0f s)", i + 1, len(jobs), time.time() - t0)
    else:
        results = [_extract_one(j) for j in jobs]
    msize = int(round(input_size * margin))
    n_cells = np.array([len(r[1]) for r in results], dtype=np.int64)
    x = np.concatenate([r[1] for r in results]) if n_cells.sum() else np.zeros((0, input_size, input_size, 3), np.uint8)
    xm = np.concatenate([r[2] for r in results]) if n_cells.sum() else np.zeros((0, msize, msize, 3), np.uint8)
    image = np.repeat(np.arange(len(files)), n_cells)
    ahash = np.stack([r[0] for r in results])
    samples = Samples(x, xm, image, [f for f, _ in files], np.array([s for _, s in files]), ahash, n_cells,
                      list(sources))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + f".tmp-{os.getpid()}.npz")
        np.savez(tmp, x=x, x_margin=xm, image=image, ahash=ahash, n_cells=n_cells)
        os.replace(tmp, cache)
    return samples


def near_duplicate_groups(ahash: np.ndarray, max_hamming: int) -> np.ndarray:
    """Group id per image: connected components of 'Hamming distance <= max_hamming'."""
    n = len(ahash)
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bits = np.unpackbits(ahash, axis=1).astype(np.float32)
    nbits = bits.shape[1]
    for start in range(0, n, 1024):
        block = bits[start:start + 1024]
        # Hamming = ones(a) + ones(b) - 2 a·b
        dist = block.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * block @ bits.T
        ii, jj = np.nonzero(dist <= max_hamming + 0.5)
        for i, j in zip(ii + start, jj):
            if j > i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    assert nbits > 0
    return np.array([find(i) for i in range(n)])


def split_images(samples: Samples, params: SplitParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split name ('train'/'val'/'test') per image, near-duplicate groups kept together,
    stratified by source folder; returns (split per image, group per image)."""
    groups = near_duplicate_groups(samples.ahash, params.max_hamming)
    split = np.empty(len(groups), dtype=object)
    uniq = np.unique(groups)
    stratum = {g: samples.source[g] for g in uniq}  # the group's root image decides its stratum
    rng = np.random.default_rng(seed)
    for s in sorted(set(stratum.values())):
        gs = np.array([g for g in uniq if stratum[g] == s])
        gs = gs[rng.permutation(len(gs))]
        sizes = np.array([np.sum(groups == g) for g in gs])
        total = sizes.sum()
        cum = np.cumsum(sizes)
        # at least one image in each non-empty split when the stratum is tiny
        n_test = max(params.test * total, 1.0 if params.test > 0 and total >= 3 else 0.0)
        n_val = max(params.val * total, 1.0 if params.val > 0 and total >= 3 else 0.0)
        for g, c, size in zip(gs, cum, sizes):
            before = c - size
            if before < n_test and params.test > 0:
                name = "test"
            elif before < n_test + n_val and params.val > 0:
                name = "val"
            else:
                name = "train"
            split[groups == g] = name
    return split, groups


def balance_indices(labels: np.ndarray, rng: np.random.Generator, how: str) -> np.ndarray:
    """Sample indices with equal counts per class (random undersampling)."""
    idx = np.arange(len(labels))
    if how == "none":
        return idx
    counts = [np.sum(labels == c) for c in range(len(CLASSES))]
    n = min(counts)
    if n == 0:
        raise TrainingError(f"training split has no samples of class {CLASSES[int(np.argmin(counts))]}")
    chosen = [np.sort(rng.choice(idx[labels == c], n, replace=False)) for c in range(len(CLASSES))]
    return np.sort(np.concatenate(chosen))


# ----------------------------------------------------------------------------- augmentation (TF)

def make_augmenter(params: AugmentParams, input_size: int, margin: float, seed: int):
    """Batched augmentation: uint8 B×M×M×3 (margin crops) → float32 B×S×S×3 in [0, 1]."""
    import keras
    import tensorflow as tf

    rot = keras.layers.RandomRotation(params.rotation_deg / 360.0, fill_mode="reflect", seed=seed) \
        if params.rotation_deg > 0 else None
    gen = tf.random.Generator.from_seed(seed)
    inner = 1.0 / margin  # the crop_um window inside the margin crop, as a fraction

    def augment(batch):
        x = tf.cast(batch, tf.float32) / 255.0
        b = tf.shape(x)[0]
        if params.scale > 0 or params.translate > 0 or margin != 1.0:
            s = gen.uniform([b], 1 - params.scale, 1 + params.scale) if params.scale > 0 else tf.ones([b])
            half = 0.5 * inner * s
            t = params.translate * inner
            cy = 0.5 + (gen.uniform([b], -t, t) if t > 0 else tf.zeros([b]))
            cx = 0.5 + (gen.uniform([b], -t, t) if t > 0 else tf.zeros([b]))
            boxes = tf.stack([cy - half, cx - half, cy + half, cx + half], axis=1)
            x = tf.image.crop_and_resize(x, boxes, tf.range(b), (input_size, input_size),
                                         extrapolation_value=1.0)
        if params.horizontal_flip:
            flip = gen.uniform([b, 1, 1, 1]) < 0.5
            x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        if params.vertical_flip:
            flip = gen.uniform([b, 1, 1, 1]) < 0.5
            x = tf.where(flip, tf.reverse(x, axis=[1]), x)
        if rot is not None:
            x = rot(x, training=True)
        if params.hue or params.saturation or params.brightness:
            hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 1.0))
            h, sat, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
            if params.hue:
                h = tf.math.floormod(h + gen.uniform([b, 1, 1], -params.hue, params.hue), 1.0)
            if params.saturation:
                sat = tf.clip_by_value(sat * gen.uniform([b, 1, 1], 1 - params.saturation, 1 + params.saturation), 0, 1)
            if params.brightness:
                v = tf.clip_by_value(v * gen.uniform([b, 1, 1], 1 - params.brightness, 1 + params.brightness), 0, 1)
            x = tf.image.hsv_to_rgb(tf.stack([h, sat, v], axis=-1))
        if params.channel_gain:
            x = x * gen.uniform([b, 1, 1, 3], 1 - params.channel_gain, 1 + params.channel_gain)
        if params.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * gen.uniform([b, 1, 1, 1], 1 - params.contrast, 1 + params.contrast) + mean
        if params.grayscale_p > 0:
            grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
            x = tf.where(gen.uniform([b, 1, 1, 1]) < params.grayscale_p, grey, x)
        return tf.clip_by_value(x, 0.0, 1.0)

    return augment


# ----------------------------------------------------------------------------- training

class _TimeBudget:
    """Keras callback factory: stop before the next epoch would overrun `minutes`."""

    @staticmethod
    def make(minutes: float):
        import keras

        class TimeBudget(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.t0 = time.time()
                self.stopped_for_time = False

            def on_epoch_end(self, epoch, logs=None):
                elapsed = time.time() - self.t0
                per_epoch = elapsed / (epoch + 1)
                if elapsed + per_epoch > minutes * 60:
                    self.model.stop_training = True
                    self.stopped_for_time = True
                    log.warning("time budget of %.0f min reached after epoch %d: stopping", minutes, epoch + 1)

        return TimeBudget()


def _cosine_time_callback(lr0: float, minutes: float, alpha: float = 0.02):
    """Cosine decay of the learning rate over wall-clock time (anneals fully within the time budget
    whatever the machine's throughput)."""
    import keras

    class CosineTime(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.time()

        def on_train_batch_begin(self, batch, logs=None):
            frac = min(1.0, (time.time() - self.t0) / (minutes * 60))
            self.model.optimizer.learning_rate.assign(lr0 * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * frac))))

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())

    return CosineTime()


def predict_probs(model, x_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs of uint8 samples already at the model input size (rescale 1/255)."""
    import tensorflow as tf

    if len(x_uint8) == 0:
        return np.zeros((0, len(CLASSES)), np.float32)

    run = getattr(model, "_bcscan_predict", None)
    if run is None:  # one traced function per model (not per call)
        @tf.function(reduce_retracing=True)
        def run(batch):
            return tf.cast(model(tf.cast(batch, tf.float32) / 255.0, training=False), tf.float32)

        model._bcscan_predict = run

    out = []
    for start in range(0, len(x_uint8), batch_size):
        batch = x_uint8[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], np.uint8)])
        out.append(run(batch).numpy()[:n])
    return np.concatenate(out)


def train(data_dir: Path, config_path: Path, out_dir: Path, *, weights: Path | None = None,
          init_model: Path | None = None, epochs: int | None = None, seed: int | None = None,
          max_images_per_source: int | None = None, work_dir: Path | None = None, max_minutes: float | None = None,
          learning_rate: float | None = None, device: str = "auto", echo=print) -> dict:
    """Run a training as configured; returns metrics (also written to OUT/<name>/metrics.json)."""
    from bcscan.training.evaluation import (
        colour_baseline,
        ece,
        fit_image_temperature,
        fit_temperature,
        image_level,
        metrics_block,
        per_source,
        stain_swap_check,
        write_reports,
    )

    cfg = load_train_config(config_path, {"epochs": epochs, "seed": seed, "max_minutes": max_minutes,
                                          "max_images_per_source": max_images_per_source,
                                          "learning_rate": learning_rate})
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise TrainingError(f"{data_dir}: data folder not found")
    report_dir = out_dir / cfg.name
    report_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work_dir) if work_dir else report_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # -- data
    echo(f"[train] collecting {cfg.mode} samples from {len(cfg.sources)} source folders in {data_dir} ...")
    samples = collect_samples(data_dir, cfg.sources, cfg.mode, cfg.input_size, cfg.crop_um, cfg.margin,
                              cfg.segmentation, max_per_source=cfg.max_images_per_source, seed=cfg.seed,
                              hash_size=cfg.split.hash_size, cache_dir=work_dir, progress=True)
    t_data = time.time() - t_start
    split_img, groups = split_images(samples, cfg.split, cfg.seed)
    split_sha256 = hashlib.sha256("\n".join(f"{file}\t{split}" for file, split in zip(samples.files, split_img))
                                  .encode()).hexdigest()
    split_smp = split_img[samples.image]
    labels = samples.label
    n_groups_multi = int(sum(1 for g in np.unique(groups) if np.sum(groups == g) > 1))
    _write_splits(report_dir / "splits.csv", samples, split_img, groups)

    rng = np.random.default_rng(cfg.seed)
    train_idx = np.nonzero(split_smp == "train")[0]
    train_idx = train_idx[balance_indices(labels[train_idx], rng, cfg.balance)]
    val_idx = np.nonzero(split_smp == "val")[0]
    test_idx = np.nonzero(split_smp == "test")[0]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainingError(f"{data_dir}: too few samples for a train/validation split "
                            f"(train {len(train_idx)}, val {len(val_idx)}); add images or lower max_images_per_source")
    summary = _data_summary(cfg, samples, split_img, split_smp, train_idx, n_groups_multi)
    echo(f"[train] {len(samples.files)} images, {len(samples.x)} samples; near-duplicate groups with >1 image: "
         f"{n_groups_multi}; train {len(train_idx)} (balanced) / val {len(val_idx)} / test {len(test_idx)} samples")
    shortcut = shortcut_check(cfg.sources)
    if shortcut:
        for line in shortcut:
            echo(f"[train] WARNING (source shortcut): {line}")

    # -- model
    from bcscan.model.classifier import configure_tensorflow

    dev = configure_tensorflow(device)
    import keras
    import tensorflow as tf

    from bcscan.model.network import ModelInfo, build_vgg16, save_model

    keras.utils.set_random_seed(cfg.seed)
    if cfg.training.deterministic:
        tf.config.experimental.enable_op_determinism()
    model = build_vgg16(cfg.input_size, len(CLASSES), cfg.model.hidden_units, cfg.model.dropout,
                        cfg.model.batch_norm, weights, cfg.seed)
    init_info = continue_from(model, Path(init_model), cfg, split_sha256) if init_model else None
    tp = cfg.training
    steps = math.ceil(len(train_idx) / tp.batch_size)
    if tp.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(tp.learning_rate, decay_steps=steps * tp.epochs, alpha=0.02)
    else:
        lr = tp.learning_rate
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=tp.jit_compile and dev == "cpu")

    augment = make_augmenter(cfg.augmentation, cfg.input_size, cfg.margin, cfg.seed)
    xm_train, y_train = samples.x_margin[train_idx], labels[train_idx]
    ds = (tf.data.Dataset.from_tensor_slices((xm_train, y_train))
          .shuffle(len(train_idx), seed=cfg.seed, reshuffle_each_iteration=True)
          .batch(tp.batch_size)
          .map(lambda x, y: (augment(x), y), num_parallel_calls=1, deterministic=True)
          .prefetch(2))
    val_ds = (tf.data.Dataset.from_tensor_slices((samples.x[val_idx], labels[val_idx]))
              .batch(64).map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)).prefetch(2))
    ckpt = work_dir / "checkpoint-best.keras"
    callbacks = [keras.callbacks.ModelCheckpoint(str(ckpt), monitor="val_loss", save_best_only=True),
                 keras.callbacks.CSVLogger(str(report_dir / "history.csv"))]
    if tp.lr_schedule == "cosine_time":
        callbacks.insert(0, _cosine_time_callback(tp.learning_rate, tp.max_minutes))
    if tp.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1,
                                                           min_lr=tp.learning_rate / 100, verbose=1))
    if tp.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=tp.early_stopping_patience,
                                                       restore_best_weights=True))
    budget = None
    if tp.max_minutes:
        budget = _TimeBudget.make(tp.max_minutes)
        callbacks.append(budget)
    start = (f"continuing {init_model} ({init_info.training.get('epochs_run')} epochs)" if init_info
             else f"weights {weights}" if weights else "from scratch")
    echo(f"[train] VGG-16{' + batch norm' if cfg.model.batch_norm else ''} {cfg.input_size}×{cfg.input_size}, "
         f"{start}, {tp.epochs} epochs max, device {dev}")
    t_fit = time.time()
    hist = model.fit(ds, validation_data=val_ds, epochs=tp.epochs, callbacks=callbacks, verbose=2)
    fit_s = time.time() - t_fit
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    if ckpt.is_file():
        model = keras.saving.load_model(ckpt, compile=False)  # best epoch by validation loss
    best_epoch = int(np.argmin(history["val_loss"])) + 1

    # -- calibration and evaluation
    p_val = predict_probs(model, samples.x[val_idx])
    p_test = predict_probs(model, samples.x[test_idx])
    temperature = fit_temperature(p_val, labels[val_idx])
    from bcscan.model.classifier import calibrate

    pv_cal, pt_cal = calibrate(p_val, temperature), calibrate(p_test, temperature)
    li = CLASSES.index(LEUKEMIC)
    val_block = metrics_block(labels[val_idx], pv_cal[:, li])
    did_not_learn = bool(val_block["balanced_accuracy"] < 0.5 + tp.did_not_learn_margin)
    cell_test = metrics_block(labels[test_idx], pt_cal[:, li]) if len(test_idx) else None
    _, val_img_y, val_img_p = image_level(samples.image[val_idx], labels[val_idx], pv_cal[:, li])
    image_temperature = fit_image_temperature(val_img_y, val_img_p)
    img_ids, img_y, img_p = image_level(samples.image[test_idx], labels[test_idx], pt_cal[:, li], image_temperature)
    test_images = np.nonzero(split_img == "test")[0]
    no_cells = int(np.sum(samples.n_cells[test_images] == 0))
    image_test = metrics_block(img_y, img_p) if len(img_ids) else None
    calib = {"temperature": temperature, "image_temperature": image_temperature,
             "ece_val_before": ece(labels[val_idx], p_val[:, li]), "ece_val_after": ece(labels[val_idx], pv_cal[:, li]),
             "ece_test_before": ece(labels[test_idx], p_test[:, li]) if len(test_idx) else None,
             "ece_test_after": ece(labels[test_idx], pt_cal[:, li]) if len(test_idx) else None,
             "method": "temperature scaling of the softmax on the validation split (NLL); image score = sigmoid(mean "
                       "cell logit / image temperature), fitted on the validation images; ECE 15 equal-width bins"}
    if len(img_ids):
        img_p_raw = image_level(samples.image[test_idx], labels[test_idx], p_test[:, li])[2]
        calib["ece_test_images_before"] = ece(img_y, img_p_raw)
        calib["ece_test_images_after"] = ece(img_y, img_p)
    src_img = samples.source[img_ids] if len(img_ids) else np.zeros(0, int)
    by_source = per_source(cfg.sources, src_img, img_y, img_p,
                           samples.source[samples.image[test_idx]], labels[test_idx], pt_cal[:, li])
    baseline = colour_baseline(samples, train_idx, test_idx, cfg.seed)
    stain_swap = None
    if len({s.dataset_name for s in cfg.sources}) > 1 and len(test_idx):
        echo("[train] stain-swap check: re-staining test cells as the other dataset ...")
        stain_swap = stain_swap_check(lambda x: calibrate(predict_probs(model, x), temperature)[:, li],
                                      (baseline or {}).get("classifier"), samples, train_idx, test_idx)
    if baseline:
        baseline.pop("classifier", None)

    primary = image_test or cell_test or {}
    metrics = {**{k: primary.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class",
                                              "confusion_matrix", "n")},
               "level": "image" if cfg.mode == "cells" else "image (one sample per image)",
               "split": "test",
               "classes": CLASSES,
               "test_images": image_test, "test_cells": cell_test, "validation_cells": val_block,
               "test_images_without_cells": no_cells,
               "per_source": by_source, "calibration": calib, "colour_baseline": baseline,
               "stain_swap": stain_swap,
               "did_not_learn": did_not_learn, "source_shortcut_warning": shortcut,
               "best_epoch": best_epoch, "epochs_run": len(history.get("loss", [])),
               "stopped_for_time_budget": bool(budget.stopped_for_time) if budget else False,
               "history": history, "data": summary, "weights": str(weights) if weights else None,
               "init_model": _init_summary(init_model, init_info),
               "timing_s": {"data": round(t_data, 1), "fit": round(fit_s, 1),
                            "train_images_per_s": round(len(train_idx) * len(history.get("loss", [])) / fit_s, 1)},
               "config": cfg.raw}

    # -- save model + reports
    info = ModelInfo(name=cfg.name, classes=list(CLASSES), input_size=cfg.input_size,
                     crop_um=cfg.crop_um if cfg.mode == "cells" else 0.0,
                     working_mpp=cfg.segmentation.working_mpp if cfg.mode == "cells" else 0.0,
                     preprocessing="rescale_1_255" if cfg.mode == "cells" else "whole_image_resize+rescale_1_255",
                     temperature=temperature, image_temperature=image_temperature,
                     training={"mode": cfg.mode, "config": str(config_path), "seed": cfg.seed,
                               "split_sha256": split_sha256,
                               "sources": [dataclasses.asdict(s) for s in cfg.sources],
                               "segmentation": dataclasses.asdict(cfg.segmentation),
                               "weights": str(weights) if weights else None,
                               "init_model": metrics["init_model"], "epochs_run": metrics["epochs_run"],
                               "best_epoch": best_epoch, "data": summary, "did_not_learn": did_not_learn},
                     metrics={k: metrics[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece")}
                     | {"ece_before_calibration": calib.get("ece_test_images_before", calib["ece_test_before"]),
                        "colour_baseline_accuracy": (baseline or {}).get("test_images", {}).get("accuracy")})
    save_target = model
    if tp.store_float16:
        from bcscan.model.network import to_float16

        save_target = to_float16(model)
    save_model(save_target, out_dir / f"{cfg.name}.keras", info)
    metrics["model_file_bytes"] = (out_dir / f"{cfg.name}.keras").stat().st_size
    metrics["model_sha256"] = info.sha256
    write_reports(report_dir, metrics, history=history)
    from bcscan.training.evaluation import write_model_card

    write_model_card(out_dir / f"{cfg.name}.md", cfg, metrics, config_path, data_dir, report_dir)
    (report_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n", encoding="utf-8")
    metrics["wall_s"] = round(time.time() - t_start, 1)
    return metrics


def continue_from(model, init_model: Path, cfg: TrainConfig, split_sha256: str):
    """Load the weights of a bcscan model trained earlier on the same split into `model` (a second
    training stage, e.g. after a time budget cut the first).  Refused when its images were split
    otherwise (their digest differs; models older than the digest: other data, seed or mode),
    since its training images could then sit in this run's test split."""
    from bcscan.errors import ModelError
    from bcscan.model.network import load_keras_model

    previous, info = load_keras_model(init_model)
    trained = info.training or {}
    if "split_sha256" in trained:
        same_split = trained["split_sha256"] == split_sha256
    else:
        same_split = (trained.get("mode") == cfg.mode and trained.get("seed") == cfg.seed
                      and trained.get("sources") == [dataclasses.asdict(s) for s in cfg.sources])
    if not same_split or info.input_size != cfg.input_size:
        raise TrainingError(f"{init_model}: trained on another split of the images (data, seed, split or mode) or "
                            "another input size than this run; continuing it would leak its training images into "
                            "this test split")
    try:
        model.set_weights(previous.get_weights())
    except ValueError as exc:
        raise ModelError(f"{init_model}: architecture differs from the config's model ({exc})") from exc
    return info


def _init_summary(init_model: Path | None, info) -> dict | None:
    if info is None:
        return None
    earlier = info.training.get("init_model") or {}
    return {"path": str(init_model), "sha256": info.sha256,
            "epochs_before": int(info.training.get("epochs_run") or 0) + int(earlier.get("epochs_before") or 0)}


def shortcut_check(sources: list[SourceSpec]) -> list[str]:
    """Lines of warning when a class draws on a dataset the other class does not."""
    by_class = {c: {s.dataset_name for s in sources if s.label == c} for c in CLASSES}
    lines = []
    a, b = by_class[LEUKEMIC], by_class[NORMAL]
    if not (a & b):
        lines.append(f"the classes come from different datasets (leukemic: {sorted(a)}, normal: {sorted(b)}): "
                     "the model can learn the lab/stain instead of the cells; accuracy says little, "
                     "see per-source accuracy and a held-out lab")
    else:
        for c, other in ((LEUKEMIC, NORMAL), (NORMAL, LEUKEMIC)):
            only = by_class[c] - by_class[other]
            if only:
                lines.append(f"dataset(s) {sorted(only)} supply only class '{c}': any image that looks like "
                             f"{'them' if len(only) > 1 else 'it'} can be called '{c}' from stain/scanner cues; "
                             f"judge the model on datasets holding both classes ({sorted(a & b)}) and on other labs")
    return lines


def _data_summary(cfg, samples, split_img, split_smp, train_idx, n_groups_multi) -> dict:
    per = []
    for i, s in enumerate(cfg.sources):
        imgs = samples.source == i
        smp = samples.source[samples.image] == i
        per.append({"path": s.path, "label": s.label, "dataset": s.dataset_name, "mpp": s.mpp,
                    "images": int(imgs.sum()),
                    "images_without_cells": int(np.sum(samples.n_cells[imgs] == 0)),
                    "samples": int(smp.sum()),
                    **{f"{k}_images": int(np.sum(imgs & (split_img == k))) for k in ("train", "val", "test")},
                    "train_samples_used": int(np.sum(samples.source[samples.image[train_idx]] == i))})
    return {"images": len(samples.files), "samples": int(len(samples.x)),
            "near_duplicate_groups_gt1": n_groups_multi,
            "split_images": {k: int(np.sum(split_img == k)) for k in ("train", "val", "test")},
            "split_samples": {k: int(np.sum(split_smp == k)) for k in ("train", "val", "test")},
            "train_samples_balanced": int(len(train_idx)), "balance": cfg.balance, "sources": per}


def _write_splits(path: Path, samples: Samples, split_img, groups) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "source", "label", "split", "group", "n_cells"])
        for i, f in enumerate(samples.files):
            src = samples.sources[samples.source[i]]
            w.writerow([f, src.path, src.label, split_img[i], int(groups[i]), int(samples.n_cells[i])])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj
