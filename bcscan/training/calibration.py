"""Temperature scaling: the cell temperature and the image temperature, fitted by validation NLL."""
from __future__ import annotations

import math

import numpy as np


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the validation NLL of softmax(log p / T)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(probs, 1e-12, 1.0))
    labels = np.asarray(labels, int)
    if len(labels) == 0:
        return 1.0

    def nll(log_t):
        z = logp / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(lse - z[np.arange(len(labels)), labels]))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return round(float(math.exp(res.x)), 4)


def fit_image_temperature(image_labels: np.ndarray, image_scores: np.ndarray) -> float:
    """Image-level temperature (validation NLL) for scores computed by `image_level` with temperature 1."""
    scores = np.asarray(image_scores, np.float64)
    return fit_temperature(np.stack([scores, 1.0 - scores], axis=1), image_labels)
