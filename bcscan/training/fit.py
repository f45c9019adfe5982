"""Build and fit the VGG-16: seeded model, optimiser and learning-rate schedule, augmented
training batches, callbacks (best checkpoint by validation loss or the mean of the last epochs' weights, CSV
history, early stopping, time budget), and continuing a model trained earlier on the same split (`--init-model`)."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bcscan.errors import ModelError, TrainingError
from bcscan.model.network import CLASSES
from bcscan.training.augment import make_augmenter
from bcscan.training.recipe import TrainConfig, TrainParams, cell_type_table
from bcscan.training.samples import Samples

log = logging.getLogger(__name__)

BEST_EPOCH_WEIGHTS = "best-epoch.weights.h5"   # in the report folder when the mean weights were kept


@dataclass
class Fitted:
    """What the fit step hands on: the model kept (the best epoch by validation loss, or the mean weights of the
    last epochs) and how it got there."""
    model: Any
    history: dict[str, list[float]]
    best_epoch: int
    averaged: dict | None   # {"epochs": [first, last], "val_loss": ...} when the mean weights were kept
    fit_s: float
    stopped_for_time: bool
    init_info: Any          # ModelInfo of the --init-model, or None
    device: str


def fit_model(cfg: TrainConfig, samples: Samples, labels: np.ndarray, draw: Callable[[int], np.ndarray],
              val_idx: np.ndarray,
              *, split_sha256: str, weights: Path | None, init_model: Path | None, device: str, work_dir: Path,
              report_dir: Path, echo=print) -> Fitted:
    """Build (or continue) the configured VGG-16 and fit it on the balanced training samples, `draw(epoch)`
    (one size every epoch), to `labels` (the model class of each sample, or its cell type for
    `model.head: cell_types`); returns the checkpoint of the best epoch by validation loss, or with
    `training.average_last_epochs` the mean weights of the last epochs (batch-norm statistics included)."""
    dev, model, trainee = _configured_model(cfg, device, weights)
    init_info = continue_from(model, Path(init_model), cfg, split_sha256) if init_model else None
    tp = cfg.training
    _compile(trainee, tp, len(draw(0)), dev)
    if tp.input_pipeline == "tf_data":
        train_batches, steps = _tf_data_batches(cfg, samples.x_margin, labels, draw), math.ceil(len(draw(0)) / tp.batch_size)
    else:
        train_batches, steps = _training_batches(cfg, samples.x_margin, labels, draw, dev), None
    validation = (samples.x[val_idx].astype(np.float32) * np.float32(1 / 255), labels[val_idx])
    start = (f"{'fine-tuning' if cfg.finetune else 'continuing'} {init_model} "
             f"({init_info.training.get('epochs_run')} epochs)" if init_info
             else f"weights {weights}" if weights else "from scratch")
    echo(f"[train] VGG-16{' + batch norm' if cfg.model.batch_norm else ''} {cfg.input_size}×{cfg.input_size}, "
         f"{start}, {tp.epochs} epochs max, device {dev}")
    # The work folder is shared by design (sample caches): a checkpoint there would be another run's too, and
    # two runs at once would each load whichever wrote last. Each fit keeps its own, removed afterwards.
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="fit-") as private:
        ckpt = Path(private) / "checkpoint-best.weights.h5"
        callbacks, budget = _callbacks(tp, ckpt, report_dir / "history.csv")
        average = _WeightAverage.make(tp.epochs - tp.average_last_epochs) if tp.average_last_epochs else None
        t_fit = time.time()
        hist = trainee.fit(train_batches, validation_data=validation, validation_batch_size=64, epochs=tp.epochs,
                           steps_per_epoch=steps, callbacks=callbacks + ([average] if average else []), verbose=2)
        fit_s = time.time() - t_fit
        averaged = None
        if average and average.epochs:
            # shared layers: `model` has them too
            trainee.set_weights(average.mean())
            val_loss = trainee.evaluate(*validation, batch_size=64, verbose=0, return_dict=True)["loss"]
            averaged = {"epochs": [average.epochs[0], average.epochs[-1]], "val_loss": round(float(val_loss), 4)}
            echo(f"[train] kept the mean weights of epochs {average.epochs[0]}-{average.epochs[-1]}: "
                 f"validation loss {val_loss:.4f}")
            if ckpt.is_file():  # the best single epoch's, beside the report (benchmarks/kept_weights.py)
                shutil.copyfile(ckpt, report_dir / BEST_EPOCH_WEIGHTS)
        elif ckpt.is_file():
            trainee.load_weights(ckpt)  # best epoch by validation loss (shared layers: `model` has them too)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return Fitted(model=model, history=history, best_epoch=int(np.argmin(history["val_loss"])) + 1,
                  averaged=averaged, fit_s=fit_s,
                  stopped_for_time=bool(budget.stopped_for_time) if budget else False, init_info=init_info,
                  device=dev)


def _configured_model(cfg: TrainConfig, device: str, weights: Path | None):
    """(device, the recipe's seeded VGG-16, the layers fitted: up to the cell-type softmax when the head has one,
    whose fixed sum is not trained)."""
    from bcscan.model.classifier import configure_backend, keras_backend

    dev = configure_backend(device)
    import keras

    from bcscan.model.network import build_vgg16

    keras.utils.set_random_seed(cfg.seed)
    if cfg.training.deterministic and keras_backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    type_classes = cell_type_table(cfg.sources)[1] if cfg.model.head == "cell_types" else None
    model = build_vgg16(cfg.input_size, len(CLASSES), cfg.model.hidden_units, cfg.model.dropout,
                        cfg.model.batch_norm, weights, cfg.seed, cfg.model.grey_input,
                        cfg.model.stain_standardise, cfg.model.width, type_classes,
                        batch_norm_momentum=cfg.model.batch_norm_momentum)
    trainee = keras.Model(model.input, model.get_layer("cell_type").output) if type_classes else model
    return dev, model, trainee


def best_epoch_of(cfg: TrainConfig, report_dir: Path, device: str = "auto") -> Fitted:
    """The fit of an earlier run of this recipe with its best epoch's weights instead of the mean it kept
    (`training.average_last_epochs` writes them beside its report, BEST_EPOCH_WEIGHTS).  The weight average only
    reads the weights, so the run's trajectory, and thus this epoch, is the one the recipe without it keeps."""
    weights_file, metrics_file = report_dir / BEST_EPOCH_WEIGHTS, report_dir / "metrics.json"
    for f in (weights_file, metrics_file):
        if not f.is_file():
            raise TrainingError(f"{f}: missing; the run must have kept the mean weights (training.average_last_epochs)")
    earlier = json.loads(metrics_file.read_text(encoding="utf-8"))
    dev, model, trainee = _configured_model(cfg, device, None)
    trainee.load_weights(weights_file)
    return Fitted(model=model, history=earlier["history"], best_epoch=earlier["best_epoch"], averaged=None,
                  fit_s=earlier["timing_s"]["fit"], stopped_for_time=bool(earlier["stopped_for_time_budget"]),
                  init_info=None, device=dev)


def _compile(model, tp: TrainParams, n_train: int, device: str) -> None:
    """Adam with the configured learning rate (per-step cosine decay for `cosine`), softmax cross-entropy;
    XLA on TensorFlow's CPU path when configured, always on JAX."""
    import keras

    from bcscan.model.classifier import keras_backend

    steps = math.ceil(n_train / tp.batch_size)
    if tp.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(tp.learning_rate, decay_steps=steps * tp.epochs, alpha=0.02)
    else:
        lr = tp.learning_rate
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"],
                  jit_compile=(tp.jit_compile and device == "cpu") if keras_backend() == "tensorflow" else True)


def _training_batches(cfg: TrainConfig, x_margin: np.ndarray, labels: np.ndarray, draw, device: str):
    """Shuffled, augmented training batches of `draw(epoch)` (a Keras PyDataset: any backend).  Order and
    augmentation are seeded by (seed, epoch, batch), so worker threads do not change the run; a GPU gets
    several workers (OpenCV releases the GIL), a CPU one, which keeps its cores for the model."""
    import keras

    augment = make_augmenter(cfg.augmentation, cfg.input_size, cfg.margin, cfg.crop_um)
    batch_size, seed = cfg.training.batch_size, cfg.seed
    workers = 1 if device == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 2))

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4 * workers)
            self.epoch = 0
            self.order = self._shuffled()

        def _shuffled(self):
            return epoch_order(seed, self.epoch, draw)

        def __len__(self):
            return math.ceil(len(self.order) / batch_size)

        def __getitem__(self, index):
            take = self.order[index * batch_size:(index + 1) * batch_size]
            return augment(x_margin[take], np.random.default_rng([seed, self.epoch, index])), labels[take]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._shuffled()

    return AugmentedBatches()


def epoch_order(seed: int, epoch: int, draw) -> np.ndarray:
    """The training samples of `epoch` in the order both input pipelines batch them."""
    return np.random.default_rng([seed, epoch]).permutation(draw(epoch))


def _tf_data_batches(cfg: TrainConfig, x_margin: np.ndarray, labels: np.ndarray, draw):
    """The training batches as an endless tf.data stream (the caller sets steps per epoch): a Python generator
    gathers each batch's margin crops from memory in `epoch_order`, as `_training_batches` does, and
    `tf_augment` augments them on tf.data's threads, a few batches ahead of the model."""
    import tensorflow as tf

    from bcscan.training.tf_augment import make_tf_augmenter

    augment = make_tf_augmenter(cfg.augmentation, cfg.input_size, cfg.margin, cfg.crop_um)
    batch_size, seed, side = cfg.training.batch_size, cfg.seed, x_margin.shape[1]

    def batches():
        epoch = 0
        while True:
            order = epoch_order(seed, epoch, draw)
            for index in range(math.ceil(len(order) / batch_size)):
                take = order[index * batch_size:(index + 1) * batch_size]
                yield x_margin[take], labels[take], np.array([seed, epoch * 1_000_000 + index], np.int64)
            epoch += 1

    signature = (tf.TensorSpec((None, side, side, 3), tf.uint8), tf.TensorSpec((None,), tf.int64),
                 tf.TensorSpec((2,), tf.int64))
    return (tf.data.Dataset.from_generator(batches, output_signature=signature)
            .map(lambda x, y, s: (augment(x, s), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(4))


def _callbacks(tp: TrainParams, ckpt: Path, history_csv: Path):
    """(Keras callbacks in the order they run, the time-budget callback or None)."""
    import keras

    callbacks = [keras.callbacks.ModelCheckpoint(str(ckpt), monitor="val_loss", save_best_only=True,
                                                 save_weights_only=True),
                 keras.callbacks.CSVLogger(str(history_csv))]
    if tp.lr_schedule == "cosine_time":
        callbacks.insert(0, _cosine_time_callback(tp.learning_rate, tp.max_minutes))
    if tp.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=tp.plateau_patience,
                                                           min_lr=tp.learning_rate / 100, verbose=1))
    if tp.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=tp.early_stopping_patience,
                                                       restore_best_weights=True))
    budget = None
    if tp.max_minutes:
        budget = _TimeBudget.make(tp.max_minutes)
        callbacks.append(budget)
    return callbacks, budget


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


class _WeightAverage:
    """Keras callback factory: the running sum of every weight (batch-norm statistics included) at the end of
    each epoch after `after_epochs`.  Near the end of training the validation loss swings from epoch to epoch
    (batch-norm statistics of the last batches), so the single best epoch is partly chosen by chance."""

    @staticmethod
    def make(after_epochs: int):
        import keras

        class WeightAverage(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.totals, self.dtypes, self.epochs = None, None, []

            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 <= after_epochs:
                    return
                weights = self.model.get_weights()
                if self.totals is None:
                    self.totals, self.dtypes = [w.astype(np.float64) for w in weights], [w.dtype for w in weights]
                else:
                    self.totals = [t + w for t, w in zip(self.totals, weights)]
                self.epochs.append(epoch + 1)

            def mean(self):
                return [(total / len(self.epochs)).astype(dtype) for total, dtype in zip(self.totals, self.dtypes)]

        return WeightAverage()


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


def continue_from(model, init_model: Path, cfg: TrainConfig, split_sha256: str):
    """Load the weights of a bcscan model trained earlier on the same split into `model` (a second
    training stage, e.g. after a time budget cut the first).  Refused when its images were split
    otherwise (their digest differs; models older than the digest: other data, seed or mode),
    since its training images could then sit in this run's test split."""
    from bcscan.model.network import load_keras_model

    previous, info = load_keras_model(init_model)
    trained = info.training or {}
    if "split_sha256" in trained:
        same_split = trained["split_sha256"] == split_sha256
    else:
        # the split depends on the images, their source folder and the seed, not on scale or cropping
        same_split = (trained.get("mode") == cfg.mode and trained.get("seed") == cfg.seed
                      and [(s["path"], s["label"]) for s in trained.get("sources") or []]
                      == [(s.path, s.label) for s in cfg.sources])
    if not same_split or info.input_size != cfg.input_size:
        raise TrainingError(f"{init_model}: trained on another split of the images (data, seed, split or mode) or "
                            "another input size than this run; continuing it would leak its training images into "
                            "this test split")
    try:
        model.set_weights(previous.get_weights())
    except ValueError as exc:
        raise ModelError(f"{init_model}: architecture differs from the config's model ({exc})") from exc
    return info


def init_summary(init_model: Path | None, info) -> dict | None:
    """metrics' `init_model`: the continued model's path, digest and epochs trained before this stage."""
    if info is None:
        return None
    earlier = info.training.get("init_model") or {}
    return {"path": str(init_model), "sha256": info.sha256,
            "epochs_before": int(info.training.get("epochs_run") or 0) + int(earlier.get("epochs_before") or 0)}
