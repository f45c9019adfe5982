"""Softmax outputs of a Keras model for uint8 samples (training's validation/test and `bcscan evaluate`)."""
from __future__ import annotations

import numpy as np

from bcscan.model.classifier import compiled_forward
from bcscan.model.network import CLASSES


def predict_probs(model, x_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs of uint8 samples already at the model input size (rescale 1/255)."""
    if len(x_uint8) == 0:
        return np.zeros((0, len(CLASSES)), np.float32)
    run = getattr(model, "_bcscan_predict", None)
    if run is None:  # one compiled function per model (not per call)
        run = model._bcscan_predict = compiled_forward(model)
    out = []
    for start in range(0, len(x_uint8), batch_size):
        batch = x_uint8[start:start + batch_size]
        n = len(batch)
        if n < batch_size:  # one batch shape: one compilation
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], np.uint8)])
        out.append(run(batch.astype(np.float32) * np.float32(1 / 255))[:n])
    return np.concatenate(out)
