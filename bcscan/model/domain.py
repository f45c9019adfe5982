"""The validated range of a model: where the appearance of the cells it was trained on lies
(`bcscan.scan.appearance`), and how far a scan lies from it.

Fitted by `bcscan train` on the training split, one Gaussian per training lab (dataset) over
the per-image medians of the cells' figures, and stored in the model's metadata (`domain`).
A scan's distance is its Mahalanobis distance to the nearest training lab; it is `outside`
when that exceeds the threshold: a quantile of the training images' own distances (images
hold few cells, so a whole scan's median is steadier and is flagged less often than they are).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bcscan.scan.appearance import FEATURES

INSIDE, OUTSIDE, UNKNOWN = "inside", "outside", "unknown"
SHRINKAGE = 0.05  # covariance diagonal loading: a lab seen in a narrow range must not make every other value infinite


def fit_reference(image_figures: np.ndarray, image_lab: list[str], quantile: float = 0.995) -> dict[str, Any]:
    """The reference stored in the model metadata: per lab, mean and inverse covariance of the
    per-image figures; the threshold is `quantile` of the training images' distances."""
    figures = np.asarray(image_figures, np.float64)
    labs = np.asarray(image_lab)
    reference: dict[str, Any] = {"features": list(FEATURES), "labs": {}, "quantile": quantile}
    for lab in sorted(set(labs.tolist())):
        own = figures[labs == lab]
        if len(own) < len(FEATURES) + 2:
            continue  # too few images to know its spread
        cov = np.cov(own.T)
        cov = cov + SHRINKAGE * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(FEATURES))
        reference["labs"][lab] = {"mean": own.mean(0).round(6).tolist(),
                                  "precision": np.linalg.inv(cov).round(6).tolist(), "images": int(len(own))}
    if not reference["labs"]:
        return {}
    reference["threshold"] = round(float(np.quantile(distances(reference, figures), quantile)), 4)
    return reference


def distances(reference: dict[str, Any], figures: np.ndarray) -> np.ndarray:
    """Distance of each row of figures to the nearest training lab."""
    figures = np.asarray(figures, np.float64).reshape(-1, len(reference["features"]))
    per_lab = []
    for lab in reference["labs"].values():
        d = figures - np.asarray(lab["mean"])
        per_lab.append(np.sqrt(np.einsum("ij,jk,ik->i", d, np.asarray(lab["precision"]), d)))
    return np.min(per_lab, axis=0)


def domain_verdict(reference: dict[str, Any], figures: np.ndarray | None) -> tuple[str, float | None]:
    """(inside | outside | unknown, distance) of one scan's figures."""
    if not reference or figures is None:
        return UNKNOWN, None
    distance = float(distances(reference, figures)[0])
    return (OUTSIDE if distance > reference["threshold"] else INSIDE), round(distance, 2)
