"""The validated range of a model: where the appearance of the cells it was trained on lies
(`bcscan.scan.appearance`), and how far a scan lies from it.

Fitted by `bcscan train` on the training split, one Gaussian per training lab (dataset) over
the per-image medians of the cells' figures, and stored in the model's metadata (`domain`).
A scan's distance is its Mahalanobis distance to the nearest training lab; it is `outside`
when that exceeds the threshold: a quantile of the training images' own distances (images
hold few cells, so a whole scan's median is steadier and is flagged less often than they are).

A second check reads the model's own output: the mean binary entropy of p_leukemic over a scan's cells.
The stain figures miss a lab whose cells are coloured like the training labs' but look otherwise
unfamiliar to the model; its calls there are less certain.  The threshold (``uncertainty`` in the
reference) is a quantile of pseudo-scans of ``scan_cells`` cells drawn from each lab's validation cells;
a scan with fewer cells is not judged by it.  Leave one lab out, it flagged 40-61 % of the 50-cell scans of
the marrow lab where the fold models fell short, none of the lab where they did well (nor of the B-ALL lab,
whose hematogones they call blasts with confidence), and at most 8 % of a training lab's test scans
(benchmarks/domain_features.py, benchmarks/README.md).
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


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of each p_leukemic (0: certain, 1: p = 0.5)."""
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def fit_uncertainty(p_leukemic: np.ndarray, lab: np.ndarray, scan_cells: int = 50, draws: int = 1000,
                    quantile: float = 0.995, seed: int = 0) -> dict[str, Any]:
    """The threshold on a scan's mean entropy: `quantile` of the means of `draws` pseudo-scans of `scan_cells`
    cells per lab, drawn from that lab's validation cells (`p_leukemic` calibrated, `lab` of each cell)."""
    entropy, lab = binary_entropy(p_leukemic), np.asarray(lab)
    labs = sorted(set(lab.tolist()))
    if not labs:
        return {}
    rng = np.random.default_rng(seed)
    means = []
    for name in labs:
        own = entropy[lab == name]
        means += [own[rng.choice(len(own), scan_cells, replace=len(own) < scan_cells)].mean() for _ in range(draws)]
    return {"threshold": round(float(np.quantile(means, quantile)), 4), "scan_cells": scan_cells,
            "quantile": quantile, "labs": labs}


def uncertainty_verdict(reference: dict[str, Any], p_leukemic: np.ndarray) -> tuple[str, float | None]:
    """(inside | outside | unknown, mean entropy) of one scan's cells; unknown without a reference or with
    fewer cells than it was fitted on."""
    p = np.asarray(p_leukemic, np.float64)
    if not reference or not len(p):
        return UNKNOWN, None
    mean = round(float(binary_entropy(p).mean()), 4)
    if len(p) < reference["scan_cells"]:
        return UNKNOWN, mean
    return (OUTSIDE if mean > reference["threshold"] else INSIDE), mean


def combined_verdict(*verdicts: str) -> str:
    """Outside when any check says so; inside when one says inside and none outside."""
    if OUTSIDE in verdicts:
        return OUTSIDE
    return INSIDE if INSIDE in verdicts else UNKNOWN


def domain_verdict(reference: dict[str, Any], figures: np.ndarray | None) -> tuple[str, float | None]:
    """(inside | outside | unknown, distance) of one scan's figures."""
    if not reference.get("labs") or figures is None:
        return UNKNOWN, None
    distance = float(distances(reference, figures)[0])
    return (OUTSIDE if distance > reference["threshold"] else INSIDE), round(distance, 2)
