"""Classification metrics (numpy only, no scikit-learn): ROC AUC, ECE, the metrics block,
image-level aggregation of cell scores, per-source figures.

Class 0 is "leukemic" and the scores are p_leukemic, so ROC AUC is computed with leukemic as
the positive class."""
from __future__ import annotations

from typing import Any

import numpy as np

from bcscan.model.network import CLASSES

ECE_BINS = 15


def roc_auc(y_pos: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks); None with one class only."""
    y_pos = np.asarray(y_pos, bool)
    n_pos, n_neg = int(y_pos.sum()), int((~y_pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[y_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ece(labels: np.ndarray, p_leukemic: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of the predicted class's confidence (equal-width bins)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return None
    p = np.asarray(p_leukemic, np.float64)
    pred = np.where(p >= 0.5, 0, 1)
    conf = np.where(pred == 0, p, 1 - p)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)  # binary: confidence is in [0.5, 1]
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def metrics_block(labels: np.ndarray, p_leukemic: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """accuracy, balanced accuracy, ROC AUC, ECE, per-class P/R/F1/support, confusion matrix."""
    labels = np.asarray(labels, np.int64)
    p = np.asarray(p_leukemic, np.float64)
    pred = np.where(p >= threshold, 0, 1)
    k = len(CLASSES)
    cm = np.zeros((k, k), np.int64)
    for t, q in zip(labels, pred):
        cm[t, q] += 1
    per_class = {}
    recalls = []
    for c, name in enumerate(CLASSES):
        tp = cm[c, c]
        support = int(cm[c].sum())
        predicted = int(cm[:, c].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else None
        f1 = 2 * precision * recall / (precision + recall) if recall and (precision + recall) else 0.0
        per_class[name] = {"precision": float(precision), "recall": None if recall is None else float(recall),
                           "f1": float(f1), "support": support}
        if support:
            recalls.append(recall)
    n = len(labels)
    return {"n": n,
            "accuracy": float((pred == labels).mean()) if n else None,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "roc_auc": roc_auc(labels == 0, p),
            "ece": ece(labels, p),
            "per_class": per_class,
            "confusion_matrix": {"labels": CLASSES, "rows": "true", "columns": "predicted", "matrix": cm.tolist()}}


def image_level(image: np.ndarray, labels: np.ndarray, p_leukemic: np.ndarray, temperature: float = 1.0):
    """Aggregate sample scores per image: (image ids, image labels, image scores).

    The score is sigmoid(mean of the samples' logits / temperature): the mean logit weighs a run of
    confident cells as evidence, where a mean of probabilities stays timid, and the image-level
    temperature (fitted on validation images by `bcscan train`) calibrates it."""
    image = np.asarray(image)
    if len(image) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    ids, inv = np.unique(image, return_inverse=True)
    p = np.clip(np.asarray(p_leukemic, np.float64), 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    mean_logit = np.bincount(inv, weights=logit, minlength=len(ids)) / np.bincount(inv, minlength=len(ids))
    score = 1.0 / (1.0 + np.exp(-mean_logit / temperature))
    lab = np.zeros(len(ids), np.int64)
    lab[inv] = labels
    return ids, lab, score


def per_source(sources, src_img, img_y, img_p, src_smp, smp_y, smp_p) -> dict[str, Any]:
    """Accuracy per source folder and per dataset, at image and sample level."""
    out: dict[str, Any] = {"folders": {}, "datasets": {}}
    img_pred = np.where(np.asarray(img_p) >= 0.5, 0, 1)
    smp_pred = np.where(np.asarray(smp_p) >= 0.5, 0, 1)
    for i, s in enumerate(sources):
        mi, ms = src_img == i, src_smp == i
        out["folders"][s.path] = {
            "label": s.label, "dataset": s.dataset_name,
            "images": int(mi.sum()), "image_accuracy": float((img_pred[mi] == img_y[mi]).mean()) if mi.any() else None,
            "samples": int(ms.sum()), "sample_accuracy": float((smp_pred[ms] == smp_y[ms]).mean()) if ms.any() else None}
    for name in sorted({s.dataset_name for s in sources}):
        ids = [i for i, s in enumerate(sources) if s.dataset_name == name]
        mi, ms = np.isin(src_img, ids), np.isin(src_smp, ids)
        block = {"images": metrics_block(img_y[mi], img_p[mi]) if mi.any() else None,
                 "samples": metrics_block(smp_y[ms], smp_p[ms]) if ms.any() else None}
        if mi.any():
            block["called_normal_rate_images"] = float((img_pred[mi] == 1).mean())
        if ms.any():
            block["called_normal_rate_samples"] = float((smp_pred[ms] == 1).mean())
        out["datasets"][name] = block
    return out
