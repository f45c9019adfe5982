"""Softmax outputs of a Keras model for uint8 samples (training's validation/test and `bcscan evaluate`)."""
from __future__ import annotations

import numpy as np

from bcscan.model.network import CLASSES


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
