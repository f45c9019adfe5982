"""`bcscan evaluate`: score labelled image folders with a saved model."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np

from bcscan.errors import ConfigError, TrainingError
from bcscan.model.network import CLASSES, LEUKEMIC, NORMAL
from bcscan.training.metrics import ece, image_level, metrics_block, per_source
from bcscan.training.predict import predict_probs
from bcscan.training.recipe import SourceSpec
from bcscan.training.reports import write_metrics_json, write_reports
from bcscan.training.samples import collect_samples


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
             split: str = "test", single_cell: bool = False, device: str = "auto", batch_size: int = 64,
             echo=print) -> dict[str, Any]:
    """Score a labelled data folder with a saved model; writes metrics.json and reports into `out`."""
    from bcscan.model.classifier import calibrate, configure_backend, keras_backend
    from bcscan.model.network import load_keras_model, load_model_info
    from bcscan.scan.segmentation import SegmentationParams

    t0 = time.time()
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise TrainingError(f"{data_dir}: data folder not found")
    if mode not in {"image", "cells"}:
        raise TrainingError(f"mode must be image or cells, got {mode!r}")
    if mode == "cells" and not mpp:
        raise TrainingError("cells mode needs --mpp (µm per pixel of the images)")
    info = load_model_info(model_path)
    if mode == "cells" and not info.crop_um:
        raise TrainingError(f"{model_path}: a whole-image model (crop_um 0) cannot be evaluated in cells mode")
    seg = SegmentationParams(working_mpp=info.working_mpp) if mode == "cells" else None
    sources = [SourceSpec(path=f, label=c, mpp=mpp or 0.0, single_cell=single_cell)
               for c, folders in class_map.items() for f in folders]
    only = _split_filter(splits_csv, split) if splits_csv is not None else None
    samples = collect_samples(data_dir, sources, mode, info.input_size, info.crop_um, 1.0, seg, only=only)
    dev = configure_backend(device)
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
               "single_cell": single_cell, "images_total": len(samples.files), "images_without_cells": no_cells,
               "per_source": per_source(sources, samples.source[ids], iy, ip, samples.source[samples.image], y, p),
               "class_map": class_map, "data_dir": str(data_dir),
               "split_filter": {"csv": str(splits_csv), "split": split} if splits_csv else None,
               "device": dev, "engine": f"{dev}/{keras_backend()}", "wall_s": round(time.time() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_reports(out, metrics)
    _write_predictions(out / "predictions.csv", samples, ids, ip)
    _write_cell_predictions(out / "cell_predictions.csv", samples, p)
    write_metrics_json(out / "metrics.json", metrics)
    return metrics


def _split_filter(splits_csv: Path, split: str) -> set[str]:
    """The files of `split` in a splits.csv written by `bcscan train`."""
    try:
        with open(splits_csv, newline="", encoding="utf-8") as fh:
            return {row["file"] for row in csv.DictReader(fh) if row["split"] == split}
    except (OSError, KeyError) as exc:
        raise TrainingError(f"{splits_csv}: unreadable split list ({exc})") from exc


def _write_predictions(path: Path, samples, ids: np.ndarray, image_scores: np.ndarray) -> None:
    """predictions.csv: one row per image; an image without cells has no score."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "n_cells", "p_leukemic", "predicted"])
        score = dict(zip(ids.tolist(), image_scores.tolist()))
        for i, f in enumerate(samples.files):
            s = score.get(i)
            w.writerow([f, samples.sources[samples.source[i]].label, int(samples.n_cells[i]),
                        "" if s is None else f"{s:.4f}", "" if s is None else (LEUKEMIC if s >= 0.5 else NORMAL)])


def _write_cell_predictions(path: Path, samples, p_leukemic: np.ndarray) -> None:
    """cell_predictions.csv: one row per cell (its image's file and label, its number in the image, its
    calibrated p_leukemic): what pseudo-patients are drawn from (benchmarks/pseudo_patients.py)."""
    first = np.concatenate([[0], np.cumsum(samples.n_cells)[:-1]])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "cell", "p_leukemic"])
        for k, (i, p) in enumerate(zip(samples.image.tolist(), p_leukemic.tolist())):
            w.writerow([samples.files[i], samples.sources[samples.source[i]].label, k - int(first[i]), f"{p:.5f}"])
