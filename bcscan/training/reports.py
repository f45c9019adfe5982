"""Report files of a training or evaluation run: classification_report.txt, confusion matrix and
learning-curve PNGs, and metrics as JSON (non-finite numbers as null)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bcscan.model.network import CLASSES


def classification_report(block: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'':>14}{'precision':>11}{'recall':>9}{'f1-score':>10}{'support':>9}")
    for name, m in block["per_class"].items():
        rec = "   n/a" if m["recall"] is None else f"{m['recall']:.4f}"
        lines.append(f"{name:>14}{m['precision']:>11.4f}{rec:>9}{m['f1']:>10.4f}{m['support']:>9d}")
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


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(block: dict[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
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
    plt = _pyplot()
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
            f"{fmt(b['image_accuracy'])}  samples {b['samples']:>5}  sample acc {fmt(b['sample_accuracy'])}"
            for name, b in metrics["per_source"]["folders"].items()) + "\n")
    (out / "classification_report.txt").write_text("\n".join(text), encoding="utf-8")
    primary = metrics.get("test_images") or metrics.get("images") or metrics.get("test_cells") or metrics.get("samples")
    if primary:
        plot_confusion(primary, out / "confusion_matrix.png", "confusion matrix (image level)")
    if history:
        plot_history(history, out / "learning_curves.png")


def fmt(v, nd: int = 4) -> str:
    """A metric as text: `nd` decimals, "n/a" for None."""
    return "n/a" if v is None else f"{v:.{nd}f}"


def jsonable(obj):
    """`obj` with numpy scalars and arrays as plain Python and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    return obj


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> None:
    """metrics.json: the metrics, JSON-safe, indented."""
    path.write_text(json.dumps(jsonable(metrics), indent=2) + "\n", encoding="utf-8")
