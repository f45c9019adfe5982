"""`bcscan train`: reproducible training of the VGG-16 leukemic/normal cell classifier.

Pipeline (every step seeded), one function per step:

1. `_prepare_data`: discover, decode and sample the images of each source folder named in
   the recipe (`samples`), group near-duplicates and split the groups 80/10/10 per source
   folder (`duplicates`, `splits`), so that no copy of a validation/test image is trained on
   and all cells of an image stay in the image's split; balance the training classes by
   random undersampling.
2. `fit.fit_model`: build (or continue) the VGG-16 and train it with on-the-fly augmentation
   (`augment`), keeping the best checkpoint by validation loss, stopping early or when the
   time budget is spent.
3. `_assess`: calibrate by temperature scaling on the validation split (`calibration`) and
   evaluate on the test split, sample and image level and per source (`metrics`), against a
   colour-only baseline and a stain swap (`baselines`).
4. `_save`: write the model and its metadata, the reports (`reports`) and the model card (`card`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcscan.config import load_yaml
from bcscan.errors import ConfigError, NotBetterError, TrainingError
from bcscan.model.classifier import keras_backend
from bcscan.model.domain import fit_uncertainty
from bcscan.model.network import CLASSES, LEUKEMIC
from bcscan.training.baselines import colour_baseline, stain_swap_check
from bcscan.training.calibration import fit_image_temperature, fit_temperature
from bcscan.training.card import write_model_card
from bcscan.training.domain_fit import fit_domain
from bcscan.training.finetune import (finetune_groups, finetune_sources, holdout_verdict, replay_digest,
                                      unreplayed_images)
from bcscan.training.fit import Fitted, best_epoch_of, fit_model, init_summary
from bcscan.training.metrics import ece, image_level, metrics_block, per_source
from bcscan.training.predict import predict_probs
from bcscan.training.recipe import TrainConfig, cell_type_table, load_train_config, shortcut_check
from bcscan.training.reports import write_metrics_json, write_reports
from bcscan.training.samples import Samples, collect_samples
from bcscan.training.splits import balance_indices, epoch_draws, split_digest, split_images, write_splits_csv


def train(data_dir: Path, config_path: Path, out_dir: Path, *, weights: Path | None = None,
          init_model: Path | None = None, epochs: int | None = None, seed: int | None = None,
          max_images_per_source: int | None = None, work_dir: Path | None = None, max_minutes: float | None = None,
          learning_rate: float | None = None, device: str = "auto", card_sections: tuple[Path, ...] = (),
          replay_data: Path | None = None, echo=print) -> dict:
    """Run a training as configured; returns metrics (also written to OUT/<name>/metrics.json).
    `card_sections`: Markdown files copied into the model card (e.g. benchmarks/cross_lab.py's leave-one-lab-out
    tables, which no single training run can measure).  A fine-tuning recipe (`finetune:`) trains `init_model`
    on the verified cells in `data_dir` with a replay of its own training data from `replay_data`."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise TrainingError(f"{data_dir}: data folder not found")
    cfg, n_replay = _load_recipe(config_path, {"epochs": epochs, "seed": seed, "max_minutes": max_minutes,
                                               "max_images_per_source": max_images_per_source,
                                               "learning_rate": learning_rate}, data_dir, init_model, replay_data)
    card_extra = _read_card_sections(card_sections)
    if cfg.training.lr_schedule == "cosine_time" and keras_backend() != "tensorflow":
        # JAX keeps the optimiser's state on the device during an epoch: a per-batch assignment is lost
        raise ConfigError("lr_schedule cosine_time needs the TensorFlow backend; use cosine (per step)")
    if cfg.training.input_pipeline == "tf_data" and keras_backend() != "tensorflow":
        raise ConfigError("training.input_pipeline tf_data needs the TensorFlow backend; use keras")
    report_dir = out_dir / cfg.name
    report_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work_dir) if work_dir else report_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    data = _prepare_data(cfg, data_dir, work_dir, report_dir, echo, n_replay)
    draw = _draws(cfg, data)
    fitted = fit_model(cfg, data.samples, _targets(cfg, data), draw, data.val_idx,
                       split_sha256=data.init_split_sha256, weights=weights, init_model=init_model, device=device,
                       work_dir=work_dir, report_dir=report_dir, echo=echo)
    return _finish(cfg, data, fitted, len(draw(0)), t_start, config_path=config_path, data_dir=data_dir,
                   out_dir=out_dir, report_dir=report_dir, weights=weights, init_model=init_model,
                   replay_data=replay_data, card_extra=card_extra, echo=echo)


def train_best_epoch(data_dir: Path, config_path: Path, out_dir: Path, earlier_report_dir: Path, *,
                     work_dir: Path, device: str = "auto", echo=print) -> dict:
    """The model `train` writes for this recipe, made from the best epoch of an earlier run of it that kept the
    mean of its last epochs' weights (`training.average_last_epochs` in that run, not in `config_path`): same data,
    split, calibration, domain reference, reports and card, without fitting again.  Lets one training judge
    both ways of keeping weights on every figure (benchmarks/kept_weights.py --export-best)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    cfg, _ = _load_recipe(config_path, {}, data_dir, None, None)
    if cfg.finetune:
        raise ConfigError(f"{config_path}: a fine-tuning recipe cannot be rebuilt from an earlier run's weights")
    report_dir = out_dir / cfg.name
    report_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    data = _prepare_data(cfg, data_dir, Path(work_dir), report_dir, echo)
    draw = _draws(cfg, data)
    fitted = best_epoch_of(cfg, Path(earlier_report_dir), device)
    echo(f"[train] the best epoch ({fitted.best_epoch}) of {earlier_report_dir}")
    return _finish(cfg, data, fitted, len(draw(0)), t_start, config_path=config_path, data_dir=data_dir,
                   out_dir=out_dir, report_dir=report_dir, weights=None, init_model=None, replay_data=None,
                   card_extra="", echo=echo, best_epoch_of_run=Path(earlier_report_dir))


def _finish(cfg: TrainConfig, data: PreparedData, fitted: Fitted, n_train: int, t_start: float, *,
            config_path: Path, data_dir: Path, out_dir: Path, report_dir: Path, weights: Path | None,
            init_model: Path | None, replay_data: Path | None, card_extra: str, echo,
            best_epoch_of_run: Path | None = None) -> dict:
    """Assess, calibrate and save a fitted model; returns its metrics (also in REPORT/metrics.json).
    `best_epoch_of_run`: the earlier run whose best epoch this model is (train_best_epoch), for provenance."""
    history = fitted.history
    assessed = _assess(cfg, data, fitted.model, echo)
    if cfg.finetune:
        assessed["finetune"] = _finetune_verdict(cfg, data, fitted.model, init_model, replay_data, echo)
    domain = fit_domain(data.samples, data.split_img) | {"uncertainty": assessed["uncertainty"]} \
        if cfg.mode == "cells" else {}
    primary = assessed["test_images"] or assessed["test_cells"] or {}
    metrics = {**{k: primary.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class",
                                              "confusion_matrix", "n")},
               "level": "image" if cfg.mode == "cells" else "image (one sample per image)",
               "split": "test",
               "classes": CLASSES,
               **assessed,
               "source_shortcut_warning": data.shortcut,
               "best_epoch": fitted.best_epoch, "averaged_epochs": fitted.averaged,
               "best_epoch_of_run": str(best_epoch_of_run) if best_epoch_of_run else None,
               "epochs_run": len(history.get("loss", [])),
               "stopped_for_time_budget": fitted.stopped_for_time,
               "history": history, "data": data.summary, "weights": str(weights) if weights else None,
               "init_model": init_summary(init_model, fitted.init_info),
               "engine": f"{fitted.device}/{keras_backend()}",
               "timing_s": {"data": round(data.collect_s, 1), "fit": round(fitted.fit_s, 1),
                            "train_images_per_s": round(n_train * len(history.get("loss", [])) / fitted.fit_s, 1)},
               "domain": domain,
               "config": cfg.raw}
    verdict = (metrics.get("finetune") or {}).get("verdict")
    if verdict and not verdict["written"]:
        write_reports(report_dir, metrics, history=fitted.history)
        write_metrics_json(report_dir / "metrics.json", metrics)
        raise NotBetterError(
            f"the fine-tuned model's balanced accuracy on the {verdict['cells']} held-back verified cells is "
            f"{verdict['new_model']['balanced_accuracy']:.3f}, the init model's "
            f"{verdict['init_model']['balanced_accuracy']:.3f} (+ min_gain {verdict['min_gain']:g} needed): "
            f"model not written; report in {report_dir}")
    _save(cfg, fitted, metrics, data.split_sha256, config_path=config_path, data_dir=data_dir, out_dir=out_dir,
          report_dir=report_dir, weights=weights, card_extra=card_extra)
    metrics["wall_s"] = round(time.time() - t_start, 1)
    return metrics


# ----------------------------------------------------------------------------- 0. recipe

def _load_recipe(config_path: Path, overrides: dict[str, Any], data_dir: Path, init_model: Path | None,
                 replay_data: Path | None) -> tuple[TrainConfig, int]:
    """(the recipe, how many of its sources are replayed).  A fine-tuning recipe takes its sources from the
    init model's metadata (replayed from `replay_data`) and from the verified cells in `data_dir`, and the
    init model's seed, which its split depends on."""
    if "finetune" not in load_yaml(config_path):
        if replay_data is not None:
            raise ConfigError(f"--replay-data: {config_path} is not a fine-tuning recipe (no 'finetune' section)")
        return load_train_config(config_path, overrides), 0
    if init_model is None or replay_data is None:
        raise ConfigError(f"{config_path}: a fine-tuning recipe needs --init-model (the model to start from) and "
                          "--replay-data (the data folder that model was trained on)")
    if not Path(replay_data).is_dir():
        raise TrainingError(f"{replay_data}: replay data folder not found")
    from bcscan.model.network import load_model_info

    info = load_model_info(init_model)
    sources, n_replay = finetune_sources(init_model, info, Path(replay_data).resolve(), data_dir)
    seed = overrides.get("seed")
    overrides = overrides | {"seed": info.training.get("seed", 0) if seed is None else seed}
    return load_train_config(config_path, overrides, sources), n_replay


# ----------------------------------------------------------------------------- 1. data and split

@dataclass
class PreparedData:
    """The samples of a run, their split by image and the (balanced) sample indices of each split."""
    samples: Samples
    split_img: np.ndarray       # 'train' | 'val' | 'test' per image
    split_sha256: str           # digest of the split (see splits.split_digest)
    init_split_sha256: str      # the digest an --init-model must have recorded (a fine-tuning's: the replayed images')
    n_replay: int               # sources replayed from the init model's training data (fine-tuning), first
    labels: np.ndarray          # class index per sample
    train_idx: np.ndarray       # balanced training samples (the first epoch's, see training.rebalance_each_epoch)
    train_pool: np.ndarray      # every training sample
    val_idx: np.ndarray
    test_idx: np.ndarray
    summary: dict[str, Any]     # metrics' `data`
    shortcut: list[str]         # source-shortcut warnings
    collect_s: float            # time spent collecting the samples


def _prepare_data(cfg: TrainConfig, data_dir: Path, work_dir: Path, report_dir: Path, echo,
                  n_replay: int = 0) -> PreparedData:
    """Collect the samples, split the images (splits.csv), balance the training samples.  A fine-tuning
    splits its verified images by `finetune` and trains on a sample of the replayed ones."""
    t0 = time.time()
    echo(f"[train] collecting {cfg.mode} samples from {len(cfg.sources)} source folders in {data_dir} ...")
    samples = collect_samples(data_dir, cfg.sources, cfg.mode, cfg.input_size, cfg.crop_um, cfg.margin,
                              cfg.segmentation, max_per_source=cfg.max_images_per_source, seed=cfg.seed,
                              hash_size=cfg.split.hash_size, cache_dir=work_dir, progress=True)
    collect_s = time.time() - t0
    ft = cfg.finetune
    verified_split = {i: ft.local_split for i in range(n_replay, len(cfg.sources))} if ft else None
    split_img, groups = split_images(samples, cfg.split, cfg.seed, verified_split,
                                     finetune_groups(samples, n_replay, cfg.split.max_hamming) if ft else None)
    split_sha256 = split_digest(samples.files, split_img)
    split_smp = split_img[samples.image]
    labels = samples.label
    n_groups_multi = int(sum(1 for g in np.unique(groups) if np.sum(groups == g) > 1))
    write_splits_csv(report_dir / "splits.csv", samples, split_img, groups)

    rng = np.random.default_rng(cfg.seed)
    in_run = np.ones(len(samples.x), bool)
    if ft:
        in_run = ~unreplayed_images(samples, split_img, n_replay, ft, cfg.split, cfg.seed)[samples.image]
    train_pool = np.nonzero((split_smp == "train") & in_run)[0]
    train_idx = train_pool[balance_indices(labels[train_pool], rng, cfg.balance, samples.dataset[train_pool],
                                           samples.cell_type[train_pool])]
    val_idx = np.nonzero((split_smp == "val") & in_run)[0]
    test_idx = np.nonzero(split_smp == "test")[0]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainingError(f"{data_dir}: too few samples for a train/validation split "
                            f"(train {len(train_idx)}, val {len(val_idx)}); add images or lower max_images_per_source")
    summary = _data_summary(cfg, samples, split_img, split_smp, train_idx, n_groups_multi)
    summary["rebalance_each_epoch"] = cfg.training.rebalance_each_epoch
    if ft:
        summary["replay"] = {"sources": n_replay, "train_samples": int(np.sum(samples.source[samples.image[
            train_pool]] < n_replay)), "val_samples": int(np.sum(samples.source[samples.image[val_idx]] < n_replay))}
    echo(f"[train] {len(samples.files)} images, {len(samples.x)} samples; near-duplicate groups with >1 image: "
         f"{n_groups_multi}; train {len(train_idx)} (balanced) / val {len(val_idx)} / test {len(test_idx)} samples")
    shortcut = shortcut_check(cfg.sources)
    for line in shortcut:
        echo(f"[train] WARNING (source shortcut): {line}")
    init_sha256 = replay_digest(samples, split_img, n_replay) if ft else split_sha256
    return PreparedData(samples, split_img, split_sha256, init_sha256, n_replay, labels, train_idx, train_pool,
                        val_idx, test_idx, summary, shortcut, collect_s)


def _draws(cfg: TrainConfig, data: PreparedData):
    """The training samples of each epoch: drawn afresh per epoch (training.rebalance_each_epoch) or the same."""
    if not cfg.training.rebalance_each_epoch:
        return lambda epoch: data.train_idx
    return epoch_draws(data.train_pool, data.labels, data.samples.dataset, cfg.balance, cfg.seed, data.train_idx,
                       cfg.training.epoch_cells, data.samples.cell_type)


def _targets(cfg: TrainConfig, data: PreparedData) -> np.ndarray:
    """What the network is fitted to per sample: its class, or its source's cell type (`model.head`)."""
    if cfg.model.head != "cell_types":
        return data.labels
    source_type = np.array(cell_type_table(cfg.sources)[2])
    return source_type[data.samples.source[data.samples.image]]


def _data_summary(cfg, samples, split_img, split_smp, train_idx, n_groups_multi) -> dict:
    per = []
    for i, s in enumerate(cfg.sources):
        imgs = samples.source == i
        smp = samples.source[samples.image] == i
        per.append({"path": s.path, "label": s.label, "dataset": s.dataset_name, "mpp": s.mpp,
                    "images": int(imgs.sum()),
                    "images_without_cells": int(np.sum(samples.n_cells[imgs] == 0)),
                    "samples": int(smp.sum()),
                    **{f"{k}_images": int(np.sum(imgs & (split_img == k))) for k in ("train", "val", "test")},
                    "train_samples_used": int(np.sum(samples.source[samples.image[train_idx]] == i))})
    return {"images": len(samples.files), "samples": int(len(samples.x)),
            "near_duplicate_groups_gt1": n_groups_multi,
            "split_images": {k: int(np.sum(split_img == k)) for k in ("train", "val", "test")},
            "split_samples": {k: int(np.sum(split_smp == k)) for k in ("train", "val", "test")},
            "train_samples_balanced": int(len(train_idx)), "balance": cfg.balance, "sources": per}


# ----------------------------------------------------------------------------- 3. calibrate and evaluate

def _assess(cfg: TrainConfig, data: PreparedData, model, echo) -> dict[str, Any]:
    """Temperatures fitted on the validation split; test metrics at cell and image level, per source, and
    the shortcut checks.  Returns the metrics entries from `test_images` to `did_not_learn`, in order."""
    from bcscan.model.classifier import calibrate

    samples, labels, val_idx, test_idx = data.samples, data.labels, data.val_idx, data.test_idx
    li = CLASSES.index(LEUKEMIC)
    p_val = predict_probs(model, samples.x[val_idx])
    p_test = predict_probs(model, samples.x[test_idx])
    temperature = fit_temperature(p_val, labels[val_idx])
    pv_cal, pt_cal = calibrate(p_val, temperature), calibrate(p_test, temperature)
    val_block = metrics_block(labels[val_idx], pv_cal[:, li])
    did_not_learn = bool(val_block["balanced_accuracy"] < 0.5 + cfg.training.did_not_learn_margin)
    cell_test = metrics_block(labels[test_idx], pt_cal[:, li]) if len(test_idx) else None
    _, val_img_y, val_img_p = image_level(samples.image[val_idx], labels[val_idx], pv_cal[:, li])
    image_temperature = fit_image_temperature(val_img_y, val_img_p)
    img_ids, img_y, img_p = image_level(samples.image[test_idx], labels[test_idx], pt_cal[:, li], image_temperature)
    test_images = np.nonzero(data.split_img == "test")[0]
    no_cells = int(np.sum(samples.n_cells[test_images] == 0))
    image_test = metrics_block(img_y, img_p) if len(img_ids) else None
    calib = {"temperature": temperature, "image_temperature": image_temperature,
             "ece_val_before": ece(labels[val_idx], p_val[:, li]), "ece_val_after": ece(labels[val_idx], pv_cal[:, li]),
             "ece_test_before": ece(labels[test_idx], p_test[:, li]) if len(test_idx) else None,
             "ece_test_after": ece(labels[test_idx], pt_cal[:, li]) if len(test_idx) else None,
             "method": "temperature scaling of the softmax on the validation split (NLL); image score = sigmoid(mean "
                       "cell logit / image temperature), fitted on the validation images; ECE 15 equal-width bins"}
    if len(img_ids):
        img_p_raw = image_level(samples.image[test_idx], labels[test_idx], p_test[:, li])[2]
        calib["ece_test_images_before"] = ece(img_y, img_p_raw)
        calib["ece_test_images_after"] = ece(img_y, img_p)
    src_img = samples.source[img_ids] if len(img_ids) else np.zeros(0, int)
    by_source = per_source(cfg.sources, src_img, img_y, img_p,
                           samples.source[samples.image[test_idx]], labels[test_idx], pt_cal[:, li])
    baseline, stain_swap = _shortcut_checks(cfg, data, lambda x: calibrate(predict_probs(model, x), temperature)[:, li],
                                            echo)
    val_labs = np.array([samples.sources[s].dataset_name for s in samples.source[samples.image[val_idx]]])
    return {"test_images": image_test, "test_cells": cell_test, "validation_cells": val_block,
            "uncertainty": fit_uncertainty(pv_cal[:, li], val_labs, seed=cfg.seed),
            "test_images_without_cells": no_cells,
            "per_source": by_source, "calibration": calib, "colour_baseline": baseline,
            "stain_swap": stain_swap,
            "did_not_learn": did_not_learn}


def _finetune_verdict(cfg: TrainConfig, data: PreparedData, model, init_model: Path, replay_data: Path,
                      echo) -> dict[str, Any]:
    """metrics' `finetune`: what was replayed, and both models on the held-back verified cells."""
    held = data.test_idx[data.samples.source[data.samples.image[data.test_idx]] >= data.n_replay]
    verdict = holdout_verdict(init_model, model, data.samples.x[held], data.labels[held], cfg.finetune.min_gain)
    echo(f"[train] held-back verified cells ({verdict['cells']}, {verdict['blasts']} blasts): balanced accuracy "
         f"{verdict['init_model']['balanced_accuracy']:.3f} before, {verdict['new_model']['balanced_accuracy']:.3f} "
         f"after fine-tuning")
    return {"init_model": str(init_model), "replay_data": str(replay_data), "replay": data.summary["replay"],
            "verdict": verdict}


def _shortcut_checks(cfg: TrainConfig, data: PreparedData, predict, echo):
    """(colour-only baseline, stain-swap check or None): does the model read more than the stain?
    `predict(x_uint8) -> calibrated p_leukemic`."""
    baseline = colour_baseline(data.samples, data.train_idx, data.test_idx, cfg.seed)
    stain_swap = None
    if len({s.dataset_name for s in cfg.sources}) > 1 and len(data.test_idx):
        echo("[train] stain-swap check: re-staining test cells as the other dataset ...")
        stain_swap = stain_swap_check(predict, (baseline or {}).get("classifier"), data.samples, data.train_idx,
                                      data.test_idx)
    if baseline:
        baseline.pop("classifier", None)
    return baseline, stain_swap


# ----------------------------------------------------------------------------- 4. save

def _save(cfg: TrainConfig, fitted: Fitted, metrics: dict[str, Any], split_sha256: str, *, config_path: Path,
          data_dir: Path, out_dir: Path, report_dir: Path, weights: Path | None, card_extra: str) -> None:
    """NAME.keras + NAME.json (float16 weights when configured), the reports, NAME.md and metrics.json."""
    from bcscan.model.network import save_model, to_float16

    info = _model_info(cfg, metrics, split_sha256, config_path, weights)
    model_file = out_dir / f"{cfg.name}.keras"
    save_model(to_float16(fitted.model) if cfg.training.store_float16 else fitted.model, model_file, info)
    metrics["model_file_bytes"] = model_file.stat().st_size
    metrics["model_sha256"] = info.sha256
    write_reports(report_dir, metrics, history=fitted.history)
    write_model_card(out_dir / f"{cfg.name}.md", cfg, metrics, config_path, data_dir, report_dir, card_extra)
    write_metrics_json(report_dir / "metrics.json", metrics)


def _read_card_sections(paths: tuple[Path, ...]) -> str:
    """The text of the --card-section files, read before training so that a wrong path fails at once."""
    parts = []
    for path in paths:
        try:
            parts.append(Path(path).read_text(encoding="utf-8").strip() + "\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read card section ({exc})") from exc
    return "\n".join(parts)


def _model_info(cfg: TrainConfig, metrics: dict[str, Any], split_sha256: str, config_path: Path,
                weights: Path | None):
    """The metadata `bcscan scan` reads beside the model (classes, crop geometry, temperatures, provenance)."""
    from bcscan.model.network import ModelInfo

    calib, baseline = metrics["calibration"], metrics["colour_baseline"]
    cells = cfg.mode == "cells"
    return ModelInfo(name=cfg.name, classes=list(CLASSES), input_size=cfg.input_size,
                     crop_um=cfg.crop_um if cells else 0.0,
                     working_mpp=cfg.segmentation.working_mpp if cells else 0.0,
                     preprocessing="rescale_1_255" if cells else "whole_image_resize+rescale_1_255",
                     temperature=calib["temperature"], image_temperature=calib["image_temperature"],
                     training={"mode": cfg.mode, "config": str(config_path), "seed": cfg.seed,
                               "split_sha256": split_sha256,
                               "sources": [dataclasses.asdict(s) for s in cfg.sources],
                               "segmentation": dataclasses.asdict(cfg.segmentation),
                               "weights": str(weights) if weights else None,
                               "init_model": metrics["init_model"], "epochs_run": metrics["epochs_run"],
                               "best_epoch": metrics["best_epoch"],
                               "averaged_epochs": metrics["averaged_epochs"], "data": metrics["data"],
                               "did_not_learn": metrics["did_not_learn"]},
                     metrics={k: metrics[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece")}
                     | {"ece_before_calibration": calib.get("ece_test_images_before", calib["ece_test_before"]),
                        "colour_baseline_accuracy": (baseline or {}).get("test_images", {}).get("accuracy")},
                     domain=metrics["domain"],
                     cell_types=cell_type_table(cfg.sources)[0] if cfg.model.head == "cell_types" else [])
