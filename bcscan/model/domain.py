"""The validated range of a model: where the appearance of the cells it was trained on lies
(`bcscan.scan.appearance`), and how far a scan lies from it.

Fitted by `bcscan train` on the training split, one Gaussian per training lab (dataset) over
the per-image medians of the cells' figures, and stored in the model's metadata (`domain`).
A scan's distance is its Mahalanobis distance to the nearest training lab; it is `outside`
when that exceeds the threshold: a quantile of the training images' own distances (images
hold few cells, so a whole scan's median is steadier and is flagged less often than they are).

A second check reads the model's own output: the mean binary entropy of p_leukemic over a scan's cells.
The stain figures miss a lab whose cells are coloured like the training labs' but look otherwise
unfamiliar to the model; its calls there are less certain.  The thresholds (``uncertainty`` in the
reference) are quantiles of pseudo-scans of n cells drawn from each lab's validation cells, one per n of
CERTAINTY_SIZES from ``scan_cells`` up, as the mean of more cells varies less; fewer cells are not judged.
It judges each scan, and all of a patient's cells together (`bcscan.results.aggregation`).  Leave one lab
out, it flagged 31-52 % of the 50-cell scans and 84-98 % of the 200-cell patients of the marrow lab where the
fold models fell short, none of the lab where they did well (nor of the B-ALL lab, whose hematogones they call
blasts with confidence), and at most 3 % of a training lab's test scans or patients (benchmarks/domain_features.py,
benchmarks/README.md).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bcscan.scan.appearance import FEATURES

INSIDE, OUTSIDE, UNKNOWN = "inside", "outside", "unknown"
CERTAINTY_SIZES = (50, 100, 200, 500, 1000)  # cells judged together: a threshold fitted for each
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
                    quantile: float = 0.995, seed: int = 0, sizes: tuple[int, ...] = CERTAINTY_SIZES) -> dict[str, Any]:
    """Thresholds on the mean entropy of n cells, for each n of `sizes` from `scan_cells` up: `quantile` of the
    means of `draws` pseudo-scans of n cells per lab.  Each pseudo-scan is drawn from a resample of that lab's
    validation cells (`p_leukemic` calibrated, `lab` of each cell), so the threshold also allows for how far the
    lab's own mean may lie from its few validation cells': without it, a threshold for many cells would sit so
    close to the validation mean that a training lab's test cells cross it."""
    entropy, lab = binary_entropy(p_leukemic), np.asarray(lab)
    labs = sorted(set(lab.tolist()))
    if not labs:
        return {}
    sizes = sorted({scan_cells, *(n for n in sizes if n > scan_cells)})
    rng = np.random.default_rng(seed)
    means = {n: [] for n in sizes}
    for name in labs:
        own = entropy[lab == name]
        for _ in range(draws):
            resampled = own[rng.integers(len(own), size=len(own))]
            for n in sizes:
                means[n].append(resampled[rng.integers(len(own), size=n)].mean())
    thresholds = {str(n): round(float(np.quantile(means[n], quantile)), 4) for n in sizes}
    return {"threshold": thresholds[str(scan_cells)], "scan_cells": scan_cells, "thresholds": thresholds,
            "quantile": quantile, "labs": labs}


def fitted_thresholds(reference: dict[str, Any]) -> dict[int, float]:
    """Cells judged together -> threshold, smallest first.  Models trained before 2026-12-07 have one threshold."""
    fitted = reference.get("thresholds") or {reference["scan_cells"]: reference["threshold"]}
    return {int(n): fitted[n] for n in sorted(fitted, key=int)}


def certainty_threshold(reference: dict[str, Any], n_cells: int) -> float | None:
    """The threshold for the mean entropy of `n_cells` cells: the one fitted for the largest size not above it;
    None below the smallest (too few cells to judge)."""
    fitted = fitted_thresholds(reference)
    usable = [n for n in fitted if n <= n_cells]
    return fitted[max(usable)] if usable else None


def uncertainty_verdict(reference: dict[str, Any], p_leukemic: np.ndarray) -> tuple[str, float | None, float | None]:
    """(inside | outside | unknown, mean entropy, threshold applied) of a set of cells (a scan's, or all of a
    patient's); unknown, with no threshold, without a reference or with fewer cells than it was fitted on."""
    p = np.asarray(p_leukemic, np.float64)
    if not reference or not len(p):
        return UNKNOWN, None, None
    mean = round(float(binary_entropy(p).mean()), 4)
    threshold = certainty_threshold(reference, len(p))
    if threshold is None:
        return UNKNOWN, mean, None
    return (OUTSIDE if mean > threshold else INSIDE), mean, threshold


def combined_verdict(*verdicts: str) -> str:
    """Outside when any check says so; inside when one says inside and none outside."""
    if OUTSIDE in verdicts:
        return OUTSIDE
    return INSIDE if INSIDE in verdicts else UNKNOWN


def domain_verdict(reference: dict[str, Any], figures: np.ndarray | None) -> tuple[str, float | None]:
    """(inside | outside | unknown, distance) of one scan's figures; the distance rounded as scans.csv records it
    before it is compared, so that a report reading the recorded figure reaches the same verdict."""
    if not reference.get("labs") or figures is None:
        return UNKNOWN, None
    distance = round(float(distances(reference, figures)[0]), 2)
    return (OUTSIDE if distance > reference["threshold"] else INSIDE), distance
