"""Classifying cell crops as leukemic or normal with the VGG-16 model.

Crops are cut at a fixed physical size around each cell centre (the model's
`crop_um`, at its `working_mpp`), resized to the model input and classified in
batches.  Training (`bcscan train`, cells mode) cuts its crops with the same
functions, so the model sees at scan time exactly what it saw in training.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from bcscan.config import check_numbers
from bcscan.errors import ConfigError, ModelError
from bcscan.model.network import load_keras_model, resolve_model_path
from bcscan.scan.crops import resize_crops

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4   # largest softmax difference to TensorFlow accepted for the ONNX Runtime path


@dataclass(frozen=True)
class ClassificationParams:
    model: str | None = None                  # None = the model shipped with bcscan; else a .keras path
    batch_size: int = 64
    threshold: float = 0.5                    # p_leukemic at or above which a cell is called leukemic
    device: str = "auto"                      # auto | cpu | gpu
    cpu_threads: int = 0                      # intra-op threads on CPU; 0 = all cores
    cpu_backend: str = "auto"                 # auto (ONNX Runtime when installed and equal) | onnxruntime | tensorflow

    def __post_init__(self):
        check_numbers(self, "batch_size", at_least=1)
        check_numbers(self, "threshold", above=0, below=1)
        check_numbers(self, "cpu_threads", at_least=0)
        if self.device not in {"auto", "cpu", "gpu"}:
            raise ValueError("device must be auto, cpu or gpu")
        if self.cpu_backend not in {"auto", "onnxruntime", "tensorflow"}:
            raise ValueError("cpu_backend must be auto, onnxruntime or tensorflow")


def to_model_input(crops: np.ndarray, input_size: int) -> np.ndarray:
    """uint8 crops → float32 model input in [0, 1] (the paper's rescale 1/255)."""
    return resize_crops(crops, input_size).astype(np.float32) * np.float32(1.0 / 255.0)


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs: softmax(log p / T)."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def import_tensorflow():
    """Import TensorFlow with its C++ start-up chatter (printed before its logging is set up)
    kept off the console; Python exceptions still surface normally."""
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


def keras_backend() -> str:
    """The Keras backend of this process: TensorFlow (bcscan's default) unless KERAS_BACKEND=jax, e.g. to
    train on a GPU machine that has JAX but no TensorFlow build for its CUDA."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend not in {"tensorflow", "jax"}:
        raise ConfigError(f"KERAS_BACKEND={backend}: bcscan runs on 'tensorflow' (the default) or 'jax'")
    return backend


def configure_backend(device: str = "auto", cpu_threads: int = 0) -> str:
    """Pick the device once per process; returns 'gpu' or 'cpu'.

    On a GPU: mixed precision (float16 on TensorFlow, bfloat16 on JAX), and on TensorFlow memory growth
    (so a second process can share the card).  On the CPU: inter-op parallelism 1, which measured faster
    for VGG-16 on few cores.
    """
    if keras_backend() == "jax":
        return _configure_jax(device)
    tf = import_tensorflow()

    gpus = tf.config.list_physical_devices("GPU") if device != "cpu" else []
    if device == "gpu" and not gpus:
        raise ConfigError("device 'gpu' requested but TensorFlow sees no GPU")
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    try:
        if gpus:
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
            import keras
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            tf.config.threading.set_inter_op_parallelism_threads(1)
            if cpu_threads:
                tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
    except RuntimeError:
        pass  # already initialised in this process: keep the first settings
    return "gpu" if gpus else "cpu"


def _configure_jax(device: str) -> str:
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"] if device != "cpu" else []
    if device == "gpu" and not gpus:
        raise ConfigError("device 'gpu' requested but JAX sees no GPU")
    if gpus:
        import keras
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    else:
        jax.config.update("jax_default_device", jax.devices("cpu")[0])
    return "gpu" if gpus else "cpu"


def compiled_forward(model, xla_on_cpu: bool = False):
    """`forward(float32 batch) -> float32 softmax (NumPy)`, compiled once per model: a tf.function on
    TensorFlow (XLA when asked: it measured fastest on few CPU cores), Keras' jitted predict step on JAX."""
    if keras_backend() == "jax":
        return lambda batch: np.asarray(model.predict_on_batch(batch), np.float32)
    import tensorflow as tf

    @tf.function(jit_compile=xla_on_cpu, reduce_retracing=True)
    def forward(batch):
        return tf.cast(model(batch, training=False), tf.float32)

    return lambda batch: forward(batch).numpy()


def out_of_memory(exc: BaseException) -> bool:
    """An accelerator out-of-memory error of either backend (their types are imported lazily)."""
    return type(exc).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(exc)[:200]


class CellClassifier:
    """A loaded, verified model that turns uint8 crops into calibrated p_leukemic."""

    def __init__(self, params: ClassificationParams):
        started = time.perf_counter()
        self.params = params
        self.model_path = resolve_model_path(params.model)
        self.device = configure_backend(params.device, params.cpu_threads)
        self._on_gpu_originally = self.device == "gpu"
        self.batch_size = params.batch_size
        self.model, self.info = load_keras_model(self.model_path)
        self._predict = self._compile()
        self._onnx = self._onnx_runner() if self.device == "cpu" else None
        self.loaded_at = time.perf_counter()
        self.load_seconds = self.loaded_at - started  # TensorFlow import, model load, compilation set-up

    @property
    def engine(self) -> str:
        """Where and how the model runs, for provenance: e.g. 'cpu/onnxruntime', 'gpu/tensorflow'."""
        if self._onnx is not None:
            return "cpu/onnxruntime"
        backend = keras_backend()
        return f"{self.device}/{backend}" + ("-xla" if self.device == "cpu" and backend == "tensorflow" else "")

    def _onnx_runner(self):
        """ONNX Runtime when wanted, installed, able to express the model and equal to TensorFlow on a
        probe batch (max |Δp| ≤ ONNX_TOLERANCE); otherwise None (TensorFlow)."""
        wanted = self.params.cpu_backend
        if wanted == "tensorflow":
            return None
        try:
            from bcscan.model.onnx_backend import OnnxRunner, UnsupportedModel

            runner = OnnxRunner(self.model, self.params.cpu_threads)
        except ImportError:
            if wanted == "onnxruntime":
                raise ConfigError("cpu_backend 'onnxruntime' needs the onnx extra: pip install 'bcscan[onnx]'") from None
            return None
        except UnsupportedModel as exc:
            if wanted == "onnxruntime":
                raise ModelError(f"{self.model_path}: not expressible for ONNX Runtime ({exc})") from exc
            log.info("model stays on TensorFlow: %s", exc)
            return None
        probe = np.random.default_rng(0).uniform(0, 1, (8, self.info.input_size, self.info.input_size, 3))
        probe = probe.astype(np.float32)
        difference = float(np.abs(runner(probe) - self._predict(probe)).max())
        if difference > ONNX_TOLERANCE:
            log.warning("ONNX Runtime differs from TensorFlow by %.2g on the probe batch: using TensorFlow", difference)
            return None
        return runner

    def _compile(self):
        return compiled_forward(self.model, xla_on_cpu=self.device == "cpu")

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """p_leukemic (calibrated) for each crop, computed in fixed-size batches.

        Out of GPU memory, the batch is halved and retried; at one crop per batch the model
        moves to the CPU for the rest of the run, so the scan still completes.
        """
        if len(crops) == 0:
            return np.zeros(0, dtype=np.float32)
        out, start = [], 0
        while start < len(crops):
            size = self.batch_size
            batch = to_model_input(crops[start:start + size], self.info.input_size)
            n = len(batch)
            padded = n if self._onnx is not None else min(size, 1 << (n - 1).bit_length())
            if n < padded:  # XLA: pad to a power of two: few compiled shapes, little wasted work on small scans
                batch = np.concatenate([batch, np.zeros((padded - n,) + batch.shape[1:], np.float32)])
            try:
                probs = self._run(batch)[:n]
            except Exception as exc:
                if not out_of_memory(exc):
                    raise
                self._shrink_after_oom()
                continue
            out.append(calibrate(probs, self.info.temperature)[:, self.info.leukemic_index])
            start += n
        return np.concatenate(out).astype(np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx(batch)
        if self.device == "cpu" and self._on_gpu_originally:
            import tensorflow as tf

            with tf.device("/CPU:0"):
                return self._predict(batch)
        return self._predict(batch)

    def _shrink_after_oom(self) -> None:
        if self.batch_size > 1:
            self.batch_size //= 2
            log.warning("out of accelerator memory: batch size reduced to %d", self.batch_size)
        elif self.device == "gpu" and keras_backend() == "tensorflow":
            self.device = "cpu"
            self.batch_size = self.params.batch_size
            log.warning("out of accelerator memory at batch size 1: classifying on the CPU")
        else:
            raise MemoryError(f"out of memory classifying a single crop on the {self.device.upper()}")
