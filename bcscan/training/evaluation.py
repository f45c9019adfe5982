"""Metrics, calibration, reports, the colour-only baseline and `bcscan evaluate`.

Everything here is numpy/scipy (no scikit-learn).  Class 0 is "leukemic" and the
scores are p_leukemic, so ROC AUC is computed with leukemic as the positive class.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from bcscan.errors import ConfigError
from bcscan.model.network import LEUKEMIC, NORMAL

CLASSES = [LEUKEMIC, NORMAL]
ECE_BINS = 15


# ----------------------------------------------------------------------------- metrics

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


def fit_image_temperature(image_labels: np.ndarray, image_scores: np.ndarray) -> float:
    """Image-level temperature (validation NLL) for scores computed by `image_level` with temperature 1."""
    scores = np.asarray(image_scores, np.float64)
    return fit_temperature(np.stack([scores, 1.0 - scores], axis=1), image_labels)


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


# ----------------------------------------------------------------------------- colour baseline

def hsv_histograms(x_uint8: np.ndarray, bins=(16, 8, 8)) -> np.ndarray:
    """Per-sample normalised H, S and V histograms (concatenated) of uint8 RGB samples."""
    import cv2

    feats = np.empty((len(x_uint8), sum(bins)), np.float32)
    for i, img in enumerate(x_uint8):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        parts = [np.histogram(hsv[..., c], bins=b, range=(0, 180 if c == 0 else 256))[0] for c, b in enumerate(bins)]
        v = np.concatenate(parts).astype(np.float32)
        feats[i] = v / max(1.0, hsv.shape[0] * hsv.shape[1])
    return feats


class LogisticRegression:
    """L2-regularised binary logistic regression (L-BFGS) on standardised features."""

    def __init__(self, c: float = 1.0):
        self.c = c

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LogisticRegression":
        from scipy.optimize import minimize

        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mu) / self.sd
        z = np.hstack([z, np.ones((len(z), 1))])
        y = np.asarray(y, np.float64)
        lam = 1.0 / (self.c * len(y))

        def f(w):
            s = z @ w
            loss = np.mean(np.logaddexp(0, s) - y * s) + 0.5 * lam * np.sum(w[:-1] ** 2)
            g = z.T @ (1 / (1 + np.exp(-s)) - y) / len(y)
            g[:-1] += lam * w[:-1]
            return loss, g

        self.w = minimize(f, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = np.hstack([(x - self.mu) / self.sd, np.ones((len(x), 1))])
        return 1 / (1 + np.exp(-(z @ self.w)))


def colour_baseline(samples, train_idx, test_idx, seed: int = 0) -> dict[str, Any] | None:
    """Logistic regression on HSV histograms of the same (balanced) training samples,
    scored on the same test samples, at sample and image level and per source."""
    if len(test_idx) == 0:
        return None
    y = samples.label
    clf = LogisticRegression().fit(hsv_histograms(samples.x[train_idx]), (y[train_idx] == 0).astype(float))
    p = clf.predict_proba(hsv_histograms(samples.x[test_idx]))
    ids, iy, ip = image_level(samples.image[test_idx], y[test_idx], p)
    return {"model": "logistic regression (L2, C=1) on HSV histograms (H16+S8+V8) of the same samples",
            "classifier": clf,
            "test_samples": metrics_block(y[test_idx], p),
            "test_images": metrics_block(iy, ip),
            "per_source": per_source(samples.sources, samples.source[ids], iy, ip,
                                     samples.source[samples.image[test_idx]], y[test_idx], p)}


# ----------------------------------------------------------------------------- stain swap

def lab_stats(x_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over samples of each sample's per-channel CIELAB mean and std (Reinhard statistics)."""
    import cv2

    means, stds = [], []
    for img in x_uint8:
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
        means.append(lab.mean(0))
        stds.append(lab.std(0))
    return np.mean(means, 0), np.mean(stds, 0)


def restain(x_uint8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer of each sample to the given CIELAB statistics (another lab's stain)."""
    import cv2

    out = np.empty_like(x_uint8)
    for i, img in enumerate(x_uint8):
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
        m, s = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-3
        lab = (lab - m) / s * std + mean
        out[i] = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return out


def stain_swap_check(predict, baseline_clf, samples, train_idx, test_idx) -> dict[str, Any]:
    """Re-stain each dataset's test samples to the colour statistics of the other dataset(s)'
    training samples and score them again: a classifier that relies on morphology keeps its
    accuracy, one that relies on the lab's stain collapses.  `predict(x_uint8) -> p_leukemic`."""
    ds_of_source = np.array([s.dataset_name for s in samples.sources])
    smp_ds = ds_of_source[samples.source[samples.image]]
    y = samples.label
    out: dict[str, Any] = {"method": "Reinhard (CIELAB mean/std) colour transfer of test samples to the other "
                                     "dataset's training-sample statistics; image level = mean over cells"}
    for src in np.unique(smp_ds[test_idx]):
        for dst in np.unique(smp_ds[train_idx]):
            if dst == src:
                continue
            ti = test_idx[smp_ds[test_idx] == src]
            mean, std = lab_stats(samples.x[train_idx[smp_ds[train_idx] == dst]][:2000])
            xs = restain(samples.x[ti], mean, std)
            block = {}
            for name, p in (("vgg16", predict(xs)),
                            ("colour_baseline", baseline_clf.predict_proba(hsv_histograms(xs)) if baseline_clf else None),
                            ("vgg16_original_colours", predict(samples.x[ti]))):
                if p is None:
                    continue
                _, iy, ip = image_level(samples.image[ti], y[ti], p)
                block[name] = {"images": metrics_block(iy, ip), "samples": metrics_block(y[ti], p),
                               "called_normal_rate_images": float(np.mean(ip < 0.5))}
            out[f"{src} restained as {dst}"] = block
    return out


# ----------------------------------------------------------------------------- reports

def classification_report(block: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'':>14}{'precision':>11}{'recall':>9}{'f1-score':>10}{'support':>9}")
    for name, m in block["per_class"].items():
        rec = "   n/a" if m["recall"] is None else f"{m['recall']:.4f}"
        lines.append(f"{name:>14}{m['precision']:>11.4f}{rec:>9}{m['f1']:>10.4f}{m['support']:>9d}")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines.append("")
    lines.append(f"{'accuracy':>14}{fmt(block['accuracy']):>30}{block['n']:>9d}")
    lines.append(f"{'balanced acc.':>14}{fmt(block['balanced_accuracy']):>30}")
    lines.append(f"{'ROC AUC':>14}{fmt(block['roc_auc']):>30}")
    lines.append(f"{'ECE':>14}{fmt(block['ece']):>30}")
    cm = block["confusion_matrix"]["matrix"]
    lines.append("")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(f"{'':>14}" + "".join(f"{c:>10}" for c in CLASSES))
    for name, row in zip(CLASSES, cm):
        lines.append(f"{name:>14}" + "".join(f"{v:>10d}" for v in row))
    return "\n".join(lines) + "\n"


def plot_confusion(block: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(block["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=110)
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=12)
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        if key in history:
            ax.plot(epochs, history[key], "o-", label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if "accuracy" in history:
        axes[1].axhline(0.5, color="grey", ls="--", lw=0.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_reports(out: Path, metrics: dict[str, Any], history: dict | None = None) -> None:
    """classification_report.txt, confusion_matrix.png and (when trained) learning_curves.png."""
    out.mkdir(parents=True, exist_ok=True)
    text = []
    for key, title in (("test_images", "TEST — image level (cells mode: mean p_leukemic of the image's cells)"),
                       ("test_cells", "TEST — sample (cell) level"),
                       ("validation_cells", "VALIDATION — sample level"),
                       ("images", "image level"), ("samples", "sample level")):
        if metrics.get(key):
            text.append(classification_report(metrics[key], title))
    base = metrics.get("colour_baseline")
    if base:
        text.append(classification_report(base["test_images"], "COLOUR-ONLY BASELINE (HSV histograms + logistic "
                                                               "regression) — TEST, image level"))
    if metrics.get("per_source"):
        text.append("per source folder (test):\n" + "\n".join(
            f"  {name:<40} {b['label']:<9} images {b['images']:>5}  image acc "
            f"{_f(b['image_accuracy'])}  samples {b['samples']:>5}  sample acc {_f(b['sample_accuracy'])}"
            for name, b in metrics["per_source"]["folders"].items()) + "\n")
    (out / "classification_report.txt").write_text("\n".join(text), encoding="utf-8")
    primary = metrics.get("test_images") or metrics.get("images") or metrics.get("test_cells") or metrics.get("samples")
    if primary:
        plot_confusion(primary, out / "confusion_matrix.png", "confusion matrix (image level)")
    if history:
        plot_history(history, out / "learning_curves.png")


def _f(v, nd: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def write_model_card(path: Path, cfg, metrics: dict[str, Any], config_path: Path, data_dir: Path,
                     report_dir: Path, extra: str = "") -> None:
    """Markdown model card from a training run's configuration and metrics."""
    d = metrics["data"]
    ti, tc = metrics.get("test_images") or {}, metrics.get("test_cells") or {}
    cal = metrics["calibration"]
    base = metrics.get("colour_baseline") or {}
    rel = report_dir.name
    a = cfg.augmentation
    ps = metrics["per_source"]
    lines = [
        f"# Model card: `{cfg.name}`",
        "",
        f"VGG-16{' with batch normalisation after every convolution' if cfg.model.batch_norm else ''} "
        f"classifying {'white-cell crops' if cfg.mode == 'cells' else 'whole images'} of peripheral blood smears "
        f"as **leukemic** or **normal**. Trained by `bcscan train` (config `{config_path}`).",
        "",
    ]
    if metrics.get("did_not_learn"):
        lines += ["> **THIS RUN DID NOT LEARN**: validation balanced accuracy "
                  f"{_f(metrics['validation_cells']['balanced_accuracy'])} is at chance. Do not use this model.", ""]
    lines += [
        "## Intended use",
        "",
        "Research screening aid inside `bcscan scan`: each white cell found by the segmentation is cropped "
        f"({cfg.crop_um:g} µm square at {cfg.segmentation.working_mpp:g} µm/px, resized to "
        f"{cfg.input_size}×{cfg.input_size}) and scored p(leukemic); per-patient summaries aggregate the cells. "
        "Not a diagnostic device: it has never been validated on patients, it was trained on B-ALL images of one "
        "hospital and normal cells of another, and every positive needs review by a haematologist."
        if cfg.mode == "cells" else
        "Reproduction of the paper's whole-image classifier; not the model `bcscan scan` uses by default.",
        "",
        "## Data",
        "",
        f"Data folder `{data_dir}`; mode `{cfg.mode}`; {d['images']} images → {d['samples']} samples.",
        "",
        "| source folder | class | dataset | µm/px | images | without cells | samples | train / val / test images | train samples used |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in d["sources"]:
        lines.append(f"| `{s['path']}` | {s['label']} | {s['dataset']} | {s['mpp']:g} | {s['images']} | "
                     f"{s['images_without_cells']} | {s['samples']} | {s['train_images']} / {s['val_images']} / "
                     f"{s['test_images']} | {s['train_samples_used']} |")
    lines += [
        "",
        f"Splits: {cfg.split.train:.0%}/{cfg.split.val:.0%}/{cfg.split.test:.0%} of the images of each source "
        f"folder, seed {cfg.seed}. Near-duplicates (16×16 average hash, Hamming ≤ {cfg.split.max_hamming}, "
        f"transitively) are kept in one split ({d['near_duplicate_groups_gt1']} groups of ≥2 images); in cells "
        "mode all crops of an image stay in its split. Image split lists: "
        f"`{rel}/splits.csv`. Training samples balanced by random undersampling ({d['balance']}): "
        f"{d['train_samples_balanced']} samples. The held-back parts of the shared data (≈10 % of ghaderzadeh-all, "
        "test splits of bccd/txl-pbc) were never seen.",
        "",
    ]
    if metrics.get("source_shortcut_warning"):
        lines += ["**Source-shortcut warning.** " + " ".join(metrics["source_shortcut_warning"]), ""]
    lines += [
        "## Recipe",
        "",
        f"- VGG-16 conv base ({'batch norm after each conv, ' if cfg.model.batch_norm else ''}"
        f"{'initialised from ' + metrics['weights'] if metrics.get('weights') else 'from scratch: no ImageNet weights offline'}) "
        f"→ flatten → dense {cfg.model.hidden_units} ReLU → dropout {cfg.model.dropout} → softmax(2)",
        f"- input {cfg.input_size}×{cfg.input_size}, rescale 1/255; Adam lr {cfg.training.learning_rate:g}, "
        f"schedule `{cfg.training.lr_schedule}`, batch {cfg.training.batch_size}, ≤ {cfg.training.epochs} epochs, "
        f"early stopping patience {cfg.training.early_stopping_patience or 'off'}, "
        f"time budget {cfg.training.max_minutes or 'none'} min; best epoch by validation loss: "
        f"{metrics['best_epoch']} of {metrics['epochs_run']} run",
        *([f"- second stage: continued from `{metrics['init_model']['path']}` (SHA-256 "
           f"{metrics['init_model']['sha256'][:12]}…, {metrics['init_model']['epochs_before']} epochs before, same "
           "data, seed and split) with the settings above; epochs counted in this stage"]
          if metrics.get("init_model") else []),
        f"- augmentation: flips (h {a.horizontal_flip}, v {a.vertical_flip}), rotation ±{a.rotation_deg:g}°, "
        f"scale ±{a.scale:g}, shift ±{a.translate:g}, hue ±{a.hue:g}, saturation ±{a.saturation:g}, "
        f"brightness ±{a.brightness:g}, contrast ±{a.contrast:g}, channel gain ±{a.channel_gain:g}, "
        f"grey p={a.grayscale_p:g}",
        f"- calibration: temperature T = {cal['temperature']:g} fitted on the validation split (cells); image "
        f"score = sigmoid(mean cell logit / {cal.get('image_temperature', 1.0):g}), that image temperature fitted "
        "on the validation images",
        f"- training throughput {metrics['timing_s']['train_images_per_s']} samples/s; fit "
        f"{metrics['timing_s']['fit'] / 60:.1f} min; model file {metrics.get('model_file_bytes', 0) / 1e6:.1f} MB",
        "",
        "## Results (test split, never trained on)",
        "",
        "| | accuracy | balanced accuracy | ROC AUC | ECE |",
        "|---|---|---|---|---|",
    ]
    if ti:
        lines.append(f"| VGG-16, images ({ti['n']}) | {_f(ti['accuracy'])} | {_f(ti['balanced_accuracy'])} | "
                     f"{_f(ti['roc_auc'])} | {_f(ti['ece'])} |")
    if tc and cfg.mode == "cells":
        lines.append(f"| VGG-16, cells ({tc['n']}) | {_f(tc['accuracy'])} | {_f(tc['balanced_accuracy'])} | "
                     f"{_f(tc['roc_auc'])} | {_f(tc['ece'])} |")
    for ds, blk in ps["datasets"].items():
        bi = blk.get("images")
        if bi:
            lines.append(f"| VGG-16, {ds} images ({bi['n']}) | {_f(bi['accuracy'])} | {_f(bi['balanced_accuracy'])} "
                         f"| {_f(bi['roc_auc'])} | {_f(bi['ece'])} |")
    if base:
        bi = base["test_images"]
        lines.append(f"| colour-only baseline, images | {_f(bi['accuracy'])} | {_f(bi['balanced_accuracy'])} | "
                     f"{_f(bi['roc_auc'])} | {_f(bi['ece'])} |")
        for ds, blk in base["per_source"]["datasets"].items():
            if blk.get("images"):
                b2 = blk["images"]
                lines.append(f"| colour-only baseline, {ds} images | {_f(b2['accuracy'])} | "
                             f"{_f(b2['balanced_accuracy'])} | {_f(b2['roc_auc'])} | {_f(b2['ece'])} |")
    lines += ["", "Per source folder (test, image level):", "",
              "| folder | class | images | VGG-16 accuracy | colour baseline accuracy |", "|---|---|---|---|---|"]
    for name, b in ps["folders"].items():
        cb = (base.get("per_source") or {}).get("folders", {}).get(name, {}) if base else {}
        lines.append(f"| `{name}` | {b['label']} | {b['images']} | {_f(b['image_accuracy'])} | "
                     f"{_f(cb.get('image_accuracy'))} |")
    swap = metrics.get("stain_swap")
    if swap:
        lines += ["", "Stain swap (test samples re-stained with the other dataset's colour statistics, Reinhard "
                      "CIELAB transfer; a model that reads morphology keeps its accuracy, a colour model collapses):",
                  "", "| test data | model | accuracy (images) | balanced accuracy | called normal |",
                  "|---|---|---|---|---|"]
        for key, block in swap.items():
            if not isinstance(block, dict):
                continue
            for name, label in (("vgg16_original_colours", "VGG-16, original colours"),
                                ("vgg16", "VGG-16, re-stained"), ("colour_baseline", "colour baseline, re-stained")):
                if name in block:
                    b = block[name]
                    lines.append(f"| {key} | {label} | {_f(b['images']['accuracy'])} | "
                                 f"{_f(b['images']['balanced_accuracy'])} | {_f(b['called_normal_rate_images'])} |")
    lines += ["",
              f"Calibration (test): ECE before {_f(cal.get('ece_test_images_before', cal['ece_test_before']))} → after "
              f"{_f(cal.get('ece_test_images_after', cal['ece_test_after']))} (images); cells "
              f"{_f(cal['ece_test_before'])} → {_f(cal['ece_test_after'])}.",
              f"Test images in which the segmentation found no white cell: {metrics['test_images_without_cells']} "
              "(left out of the image-level figures).",
              "",
              f"Files: `{rel}/metrics.json`, `{rel}/classification_report.txt`, `{rel}/confusion_matrix.png`, "
              f"`{rel}/learning_curves.png`, `{rel}/history.csv`, `{rel}/splits.csv`.",
              "",
              extra,
              "## Limitations",
              "",
              "- Leukemic examples come from ONE hospital (ghaderzadeh-all, Taleqani, B-ALL only); normals are its "
              "hematogones plus healthy-donor cells of another lab (PBC, CellaVision). A dataset that supplies only "
              "normal cells lets the model call anything that looks like that lab normal; nothing here measures "
              "leukemic cells from another lab. Myeloid leukemias (AML, CML) and T-ALL were never seen.",
              "- Labels are per image (patient class), not per cell: in cells mode every white cell of a leukemic "
              "image is labelled leukemic, including any normal cell in it (label noise).",
              "- No patient identifiers: splits are by image (near-duplicates grouped), not by patient, so test "
              "figures are optimistic for new patients.",
              "- Scales (µm/px) of the sources are estimates from typical cell sizes.",
              "- Trained from scratch (no ImageNet weights offline) on a few thousand crops.",
              ""]
    path.write_text("\n".join(lines), encoding="utf-8")


# ----------------------------------------------------------------------------- evaluate

def parse_class_map(items: list[str]) -> dict[str, list[str]]:
    """['leukemic=A,B', 'normal=C'] → {'leukemic': ['A', 'B'], 'normal': ['C']}."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, folders = item.partition("=")
        name = name.strip()
        if not sep or name not in CLASSES or not folders.strip():
            raise ConfigError(f"--class-map {item!r}: expected CLASS=FOLDER[,FOLDER...] with CLASS in {CLASSES}")
        out.setdefault(name, []).extend(f.strip() for f in folders.split(",") if f.strip())
    if not out:
        raise ConfigError("give at least one --class-map")
    return out


def evaluate(model_path: Path, data_dir: Path, class_map: dict[str, list[str]], out: Path, *,
             mode: str = "cells", mpp: float | None = None, splits_csv: Path | None = None,
             split: str = "test", device: str = "auto", batch_size: int = 64, echo=print) -> dict[str, Any]:
    """Score a labelled data folder with a saved model; writes metrics.json and reports into `out`."""
    from bcscan.errors import TrainingError
    from bcscan.model.classifier import calibrate, configure_tensorflow
    from bcscan.model.network import load_keras_model
    from bcscan.scan.segmentation import SegmentationParams
    from bcscan.training.train import SourceSpec, _jsonable, collect_samples, predict_probs

    t0 = time.time()
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise TrainingError(f"{data_dir}: data folder not found")
    if mode not in {"image", "cells"}:
        raise TrainingError(f"mode must be image or cells, got {mode!r}")
    if mode == "cells" and not mpp:
        raise TrainingError("cells mode needs --mpp (µm per pixel of the images)")
    from bcscan.model.network import load_model_info

    info = load_model_info(model_path)
    if mode == "cells" and not info.crop_um:
        raise TrainingError(f"{model_path}: a whole-image model (crop_um 0) cannot be evaluated in cells mode")
    seg = SegmentationParams(working_mpp=info.working_mpp) if mode == "cells" else None
    sources = [SourceSpec(path=f, label=c, mpp=mpp or 0.0) for c, folders in class_map.items() for f in folders]
    only = None
    if splits_csv is not None:
        try:
            with open(splits_csv, newline="", encoding="utf-8") as fh:
                only = {row["file"] for row in csv.DictReader(fh) if row["split"] == split}
        except (OSError, KeyError) as exc:
            raise TrainingError(f"{splits_csv}: unreadable split list ({exc})") from exc
    samples = collect_samples(data_dir, sources, mode, info.input_size, info.crop_um, 1.0, seg, only=only)
    dev = configure_tensorflow(device)
    model, info = load_keras_model(model_path)
    probs = predict_probs(model, samples.x, batch_size)
    li = info.classes.index(LEUKEMIC)
    p_raw = probs[:, li] if len(probs) else np.zeros(0)
    p = calibrate(probs, info.temperature)[:, li] if len(probs) else np.zeros(0)
    y = samples.label
    ids, iy, ip = image_level(samples.image, y, p, info.image_temperature)
    _, _, ip_raw = image_level(samples.image, y, p_raw)
    img = metrics_block(iy, ip)
    smp = metrics_block(y, p)
    no_cells = int(np.sum(samples.n_cells == 0))
    metrics = {**{k: img[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class",
                                      "confusion_matrix", "n")},
               "level": "image", "mode": mode, "mpp": mpp, "model": str(model_path), "model_sha256": info.sha256,
               "temperature": info.temperature, "image_temperature": info.image_temperature,
               "ece_before_calibration": ece(iy, ip_raw),
               "images": img, "samples": smp,
               "called_normal_rate_images": float(np.mean(ip < 0.5)) if len(ip) else None,
               "called_normal_rate_samples": float(np.mean(p < 0.5)) if len(p) else None,
               "images_total": len(samples.files), "images_without_cells": no_cells,
               "per_source": per_source(sources, samples.source[ids], iy, ip, samples.source[samples.image], y, p),
               "class_map": class_map, "data_dir": str(data_dir),
               "split_filter": {"csv": str(splits_csv), "split": split} if splits_csv else None,
               "device": dev, "wall_s": round(time.time() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_reports(out, metrics)
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "n_cells", "p_leukemic", "predicted"])
        score = dict(zip(ids.tolist(), ip.tolist()))
        for i, f in enumerate(samples.files):
            s = score.get(i)
            w.writerow([f, samples.sources[samples.source[i]].label, int(samples.n_cells[i]),
                        "" if s is None else f"{s:.4f}", "" if s is None else (LEUKEMIC if s >= 0.5 else NORMAL)])
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n", encoding="utf-8")
    return metrics
