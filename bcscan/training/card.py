"""The model card (NAME.md) of a training run: intended use, data and splits, recipe, test results,
shortcut checks, calibration and limitations, from the run's configuration and metrics."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bcscan.model.domain import fitted_thresholds
from bcscan.model.network import LEUKEMIC, NORMAL
from bcscan.training.recipe import TrainConfig, datasets_by_class
from bcscan.training.reports import fmt


def write_model_card(path: Path, cfg: TrainConfig, metrics: dict[str, Any], config_path: Path, data_dir: Path,
                     report_dir: Path, extra: str = "") -> None:
    """Markdown model card from a training run's configuration and metrics."""
    rel = report_dir.name
    lines = (_title(cfg, metrics, config_path) + _use_and_data(cfg, metrics, data_dir)
             + _splits(cfg, metrics, rel) + _recipe(cfg, metrics) + _results(cfg, metrics)
             + _per_folder(metrics) + _stain_swap(metrics) + _domain(metrics) + _closing(cfg, metrics, rel, extra))
    path.write_text("\n".join(lines), encoding="utf-8")


def _title(cfg: TrainConfig, metrics: dict[str, Any], config_path: Path) -> list[str]:
    lines = [
        f"# Model card: `{cfg.name}`",
        "",
        f"VGG-16{f' at {cfg.model.width:g} of its channels' if cfg.model.width != 1 else ''}"
        f"{' with batch normalisation after every convolution' if cfg.model.batch_norm else ''} "
        f"classifying {'white-cell crops' if cfg.mode == 'cells' else 'whole images'} of peripheral blood smears "
        f"as **leukemic** or **normal**. Trained by `bcscan train` (config `{config_path}`).",
        "",
    ]
    if metrics.get("did_not_learn"):
        lines += ["> **THIS RUN DID NOT LEARN**: validation balanced accuracy "
                  f"{fmt(metrics['validation_cells']['balanced_accuracy'])} is at chance. Do not use this model.", ""]
    return lines


def _use_and_data(cfg: TrainConfig, metrics: dict[str, Any], data_dir: Path) -> list[str]:
    d = metrics["data"]
    lines = [
        "## Intended use",
        "",
        "Research screening aid inside `bcscan scan`: each white cell found by the segmentation is cropped "
        f"({cfg.crop_um:g} µm square at {cfg.segmentation.working_mpp:g} µm/px, resized to "
        f"{cfg.input_size}×{cfg.input_size}) and scored p(leukemic); per-patient summaries aggregate the cells. "
        f"Not a diagnostic device: it has never been validated on patients, it was trained on {_labs_sentence(cfg)}, "
        "and every positive needs review by a haematologist."
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
    return lines + _provenance(cfg, data_dir)


def _labs_sentence(cfg: TrainConfig) -> str:
    by_class = datasets_by_class(cfg.sources)
    return (f"leukemic cells of {', '.join(sorted(by_class[LEUKEMIC]))} and normal cells of "
            f"{', '.join(sorted(by_class[NORMAL]))} (one dataset = one lab)")


SOURCE_FIELDS = ("DATASET", "LICENCE")  # quoted from each dataset's SOURCE.txt (origin, and the licence's terms)


def source_notes(source_txt: Path) -> dict[str, str]:
    """The DATASET and LICENCE entries of a dataset's SOURCE.txt (an entry runs on over its indented lines);
    {} when the file is absent."""
    if not source_txt.is_file():
        return {}
    notes, key = {}, None
    for line in source_txt.read_text(encoding="utf-8", errors="replace").splitlines():
        heading = re.match(r"([A-Z][A-Z ]+?):?(?:\s+(.*))?$", line) if line[:1].isalpha() else None
        if heading:
            key = heading.group(1) if heading.group(1) in SOURCE_FIELDS else None
            if key:
                notes[key] = (heading.group(2) or "").strip()
        elif key and line.strip():
            notes[key] = f"{notes[key]} {line.strip()}".strip()
    return notes


def _provenance(cfg: TrainConfig, data_dir: Path) -> list[str]:
    """Origin and licence of every dataset trained on, as its SOURCE.txt states them: licences such as
    CC BY require the citation in the card of any model trained on the data."""
    lines = ["", "Data sources and licences (each dataset's `SOURCE.txt`):", ""]
    for dataset in sorted({s.dataset_name for s in cfg.sources}):
        notes = source_notes(_source_txt(cfg, dataset, Path(data_dir)))
        if not notes:
            lines.append(f"- `{dataset}`: no SOURCE.txt; origin and licence not recorded.")
            continue
        lines.append(f"- `{dataset}`: {notes.get('DATASET', 'origin not stated')} Licence: "
                     f"{notes.get('LICENCE', 'not stated')}")
    return lines


def _finetune_lines(cfg: TrainConfig, finetune: dict[str, Any], init: dict[str, Any]) -> list[str]:
    ft, verdict, replay = cfg.finetune, finetune["verdict"], finetune["replay"]
    before, after = verdict["init_model"]["balanced_accuracy"], verdict["new_model"]["balanced_accuracy"]
    return [f"- fine-tuned from `{init['path']}` (SHA-256 {init['sha256'][:12]}…) on a lab's verified cells "
            f"(`bcscan review --export-training`), split {ft.train:g} / {ft.val:g} / {ft.holdout:g} (train / "
            f"validation / held back), with a replay of that model's own training data from "
            f"`{finetune['replay_data']}` ({ft.replay_per_source} training images of each of its "
            f"{replay['sources']} sources: {replay['train_samples']} training and {replay['val_samples']} validation "
            "cells; its split kept, so none of its test images is trained on)",
            f"- on the {verdict['cells']} held-back verified cells ({verdict['blasts']} blasts): balanced accuracy "
            f"{before:.3f} before, {after:.3f} after (written only if ≥ before + {verdict['min_gain']:g})"]


def _source_txt(cfg: TrainConfig, dataset: str, data_dir: Path) -> Path:
    """The dataset's SOURCE.txt: the nearest one above any of its source folders (a dataset folder's, or the
    folder `bcscan review --export-training` wrote)."""
    for source in cfg.sources:
        if source.dataset_name == dataset:
            base = source.base(data_dir)
            folder = base / source.path
            while True:
                if (folder / "SOURCE.txt").is_file():
                    return folder / "SOURCE.txt"
                if folder == base or folder == folder.parent:
                    break
                folder = folder.parent
    return data_dir / dataset / "SOURCE.txt"


BALANCE_WORDS = {
    "undersample": "classes balanced by random undersampling",
    "source_class": "classes balanced, and within a class every dataset an equal share (a dataset with both classes "
                    "gives them 1:1; small shares drawn with repeats)",
    "source_type": "classes balanced, within a class every dataset an equal share, and within a dataset's share "
                   "every cell type an equal part (small parts drawn with repeats)",
    "none": "not balanced",
}


SINGLE_CELL_WORDS = (" Single-cell sources (one labelled cell per image) give only that cell, the one nearest the "
                     "centre, or a crop at the centre when the segmentation misses it.")


def _verified_split(cfg: TrainConfig) -> str:
    ft = cfg.finetune
    return (f" (a fine-tuning's verified cells: {ft.train:.0%}/{ft.val:.0%}/{ft.holdout:.0%}, the last held back to "
            "judge it against the model it started from)") if ft else ""


def _splits(cfg: TrainConfig, metrics: dict[str, Any], rel: str) -> list[str]:
    d = metrics["data"]
    lines = [
        "",
        f"Splits: {cfg.split.train:.0%}/{cfg.split.val:.0%}/{cfg.split.test:.0%} of the images of each source "
        f"folder{_verified_split(cfg)}, seed {cfg.seed}. Near-duplicates (16×16 average hash, Hamming ≤ {cfg.split.max_hamming}, "
        f"transitively) are kept in one split ({d['near_duplicate_groups_gt1']} groups of ≥2 images); in cells "
        "mode all crops of an image stay in its split. Image split lists: "
        f"`{rel}/splits.csv`. Training samples: {BALANCE_WORDS[d['balance']]}, "
        f"{d['train_samples_balanced']} samples.{SINGLE_CELL_WORDS if any(s.single_cell for s in cfg.sources) else ''} "
        "The held-back parts of the shared data (≈10 % of ghaderzadeh-all, "
        "test splits of bccd/txl-pbc) were never seen.",
        "",
    ]
    if metrics.get("source_shortcut_warning"):
        lines += ["**Source-shortcut warning.** " + " ".join(metrics["source_shortcut_warning"]), ""]
    return lines


def _recipe(cfg: TrainConfig, metrics: dict[str, Any]) -> list[str]:
    a, tp, cal = cfg.augmentation, cfg.training, metrics["calibration"]
    init, finetune = metrics.get("init_model"), metrics.get("finetune")
    return [
        "## Recipe",
        "",
        f"- VGG-16 conv base ({f'channels × {cfg.model.width:g}, ' if cfg.model.width != 1 else ''}"
        f"{'batch norm after each conv' if cfg.model.batch_norm else ''}"
        f"{f' (momentum {cfg.model.batch_norm_momentum:g})' if cfg.model.batch_norm and cfg.model.batch_norm_momentum != 0.99 else ''}"
        f"{', ' if cfg.model.batch_norm else ''}"
        f"{'initialised from ' + metrics['weights'] if metrics.get('weights') else 'from scratch: no ImageNet weights offline'}) "
        f"→ flatten → dense {cfg.model.hidden_units} ReLU → dropout {cfg.model.dropout} → "
        f"{'softmax over the cell types, blast types summed' if cfg.model.head == 'cell_types' else 'softmax(2)'}",
        f"- input {cfg.input_size}×{cfg.input_size}, rescale 1/255"
        f"{'; luminance only (fixed grey layer)' if cfg.model.grey_input else ''}"
        f"{'; optical density standardised per crop and channel (StainStandardisation layer)' if cfg.model.stain_standardise else ''}"
        f"; Adam lr {tp.learning_rate:g}, "
        f"schedule `{tp.lr_schedule}`, batch {tp.batch_size}, ≤ {tp.epochs} epochs"
        f"{f' of {tp.epoch_cells} cells' if tp.epoch_cells else ''}, input pipeline `{tp.input_pipeline}`, "
        f"early stopping patience {tp.early_stopping_patience or 'off'}, "
        f"time budget {tp.max_minutes or 'none'} min; {_kept_weights(metrics)}",
        *([f"- second stage: continued from `{init['path']}` (SHA-256 "
           f"{init['sha256'][:12]}…, {init['epochs_before']} epochs before, same "
           "data, seed and split) with the settings above; epochs counted in this stage"]
          if init and not finetune else []),
        *(_finetune_lines(cfg, finetune, init) if finetune else []),
        f"- augmentation: flips (h {a.horizontal_flip}, v {a.vertical_flip}), rotation ±{a.rotation_deg:g}°, "
        f"scale ±{a.scale:g}, shift ±{a.translate:g}, hue ±{a.hue:g}, saturation ±{a.saturation:g}, "
        f"brightness ±{a.brightness:g}, contrast ±{a.contrast:g}, channel gain ±{a.channel_gain:g}, "
        f"grey p={a.grayscale_p:g}, HED stain ×(1±{a.hed_scale:g}) ±{a.hed_shift:g}, blur σ ≤ {a.blur_um:g} µm, "
        f"JPEG quality ≥ {a.jpeg_quality_min}, stain transfer to another sample p={a.stain_transfer_p:g}",
        f"- calibration: temperature T = {cal['temperature']:g} fitted on the validation split (cells); image "
        f"score = sigmoid(mean cell logit / {cal.get('image_temperature', 1.0):g}), that image temperature fitted "
        "on the validation images",
        f"- training throughput {metrics['timing_s']['train_images_per_s']} samples/s; fit "
        f"{metrics['timing_s']['fit'] / 60:.1f} min; model file {metrics.get('model_file_bytes', 0) / 1e6:.1f} MB",
        "",
    ]


def _metrics_row(label: str, block: dict[str, Any]) -> str:
    return (f"| {label} | {fmt(block['accuracy'])} | {fmt(block['balanced_accuracy'])} | {fmt(block['roc_auc'])} | "
            f"{fmt(block['ece'])} |")


def _results(cfg: TrainConfig, metrics: dict[str, Any]) -> list[str]:
    """The test table: VGG-16 at image and cell level and per dataset, then the colour-only baseline."""
    ti, tc = metrics.get("test_images") or {}, metrics.get("test_cells") or {}
    base = metrics.get("colour_baseline") or {}
    lines = [
        "## Results (test split, never trained on)",
        "",
        "| | accuracy | balanced accuracy | ROC AUC | ECE |",
        "|---|---|---|---|---|",
    ]
    if ti:
        lines.append(_metrics_row(f"VGG-16, images ({ti['n']})", ti))
    if tc and cfg.mode == "cells":
        lines.append(_metrics_row(f"VGG-16, cells ({tc['n']})", tc))
    for ds, blk in metrics["per_source"]["datasets"].items():
        bi = blk.get("images")
        if bi:
            lines.append(_metrics_row(f"VGG-16, {ds} images ({bi['n']})", bi))
    if base:
        lines.append(_metrics_row("colour-only baseline, images", base["test_images"]))
        for ds, blk in base["per_source"]["datasets"].items():
            if blk.get("images"):
                lines.append(_metrics_row(f"colour-only baseline, {ds} images", blk["images"]))
    return lines


def _per_folder(metrics: dict[str, Any]) -> list[str]:
    base = metrics.get("colour_baseline") or {}
    lines = ["", "Per source folder (test, image level):", "",
             "| folder | class | images | VGG-16 accuracy | colour baseline accuracy |", "|---|---|---|---|---|"]
    for name, b in metrics["per_source"]["folders"].items():
        cb = (base.get("per_source") or {}).get("folders", {}).get(name, {}) if base else {}
        lines.append(f"| `{name}` | {b['label']} | {b['images']} | {fmt(b['image_accuracy'])} | "
                     f"{fmt(cb.get('image_accuracy'))} |")
    return lines


def _stain_swap(metrics: dict[str, Any]) -> list[str]:
    swap = metrics.get("stain_swap")
    if not swap:
        return []
    lines = ["", "Stain swap (test samples re-stained with the other dataset's colour statistics, Reinhard "
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
                lines.append(f"| {key} | {label} | {fmt(b['images']['accuracy'])} | "
                             f"{fmt(b['images']['balanced_accuracy'])} | {fmt(b['called_normal_rate_images'])} |")
    return lines


def _domain(metrics: dict[str, Any]) -> list[str]:
    """The validated range stored with the model (bcscan.model.domain) and how tight it is."""
    domain = metrics.get("domain")
    if not domain:
        return []
    labs = ", ".join(f"{lab} ({block['images']} images)" for lab, block in domain["labs"].items())
    return ["", "## Validated range (domain check at scan time)", "",
            f"The appearance of the training cells (nucleus stain colour and strength, background, sharpness; "
            f"`bcscan.scan.appearance`), one Gaussian per training lab over per-image medians: {labs}. A scan whose "
            f"cells' median lies further than {domain['threshold']} (the {domain['quantile']} quantile of the "
            f"training images' own distances) from every training lab is `outside`: its patient is never called "
            f"negative. Validation images called outside: {fmt(domain.get('validation_images_outside'))}. "
            "Other labs and degraded cells: `python benchmarks/domain_check.py DATA_DIR`."] + _certainty(domain)


def _certainty(domain: dict[str, Any]) -> list[str]:
    """The threshold on the model's own uncertainty (bcscan.model.domain.fit_uncertainty)."""
    certainty = domain.get("uncertainty")
    if not certainty:
        return []
    per_size = ", ".join(f"{t} bits for {n}" for n, t in fitted_thresholds(certainty).items())
    return ["", f"The model's certainty: a scan of at least {certainty['scan_cells']} cells, or all of a patient's "
                f"cells, whose calls' mean binary entropy exceeds the threshold for that many cells ({per_size} or more; "
                f"the {certainty['quantile']} quantile of pseudo-scans of that many of the validation cells of "
                f"{', '.join(certainty['labs'])}) is `outside` too. Judged leave one lab out: "
                "`python benchmarks/domain_features.py DATA_DIR`."]


def _closing(cfg: TrainConfig, metrics: dict[str, Any], rel: str, extra: str) -> list[str]:
    """Calibration figures, the list of report files, `extra` and the limitations."""
    cal = metrics["calibration"]
    return ["",
            f"Calibration (test): ECE before {fmt(cal.get('ece_test_images_before', cal['ece_test_before']))} → after "
            f"{fmt(cal.get('ece_test_images_after', cal['ece_test_after']))} (images); cells "
            f"{fmt(cal['ece_test_before'])} → {fmt(cal['ece_test_after'])}.",
            f"Test images in which the segmentation found no white cell: {metrics['test_images_without_cells']} "
            "(left out of the image-level figures).",
            "",
            f"Files: `{rel}/metrics.json`, `{rel}/classification_report.txt`, `{rel}/confusion_matrix.png`, "
            f"`{rel}/learning_curves.png`, `{rel}/history.csv`, `{rel}/splits.csv`.",
            "",
            extra,
            "## Limitations",
            "",
            f"- Trained on {_labs_sentence(cfg)}; the kinds of leukaemia and of normal cells are those the "
            "sources above hold, and any other kind was never seen. A dataset that supplies only normal cells lets "
            "the model call anything that looks like that lab normal; the test split measures only these labs "
            "(leave-one-lab-out: `benchmarks/cross_lab.py`).",
            "- Labels are per image (patient class), not per cell: in cells mode every white cell of a leukemic "
            "image is labelled leukemic, including any normal cell in it (label noise).",
            "- No patient identifiers: splits are by image (near-duplicates grouped), not by patient, so test "
            "figures are optimistic for new patients.",
            "- Scales (µm/px) of the sources are estimates from typical cell sizes.",
            "- Trained from scratch (no ImageNet weights offline) on a few thousand crops.",
            ""]


def _kept_weights(metrics: dict) -> str:
    """Which weights the model kept: the best epoch's, or the mean of the last epochs'."""
    averaged = metrics.get("averaged_epochs")
    if averaged:
        first, last = averaged["epochs"]
        return (f"kept the mean weights of epochs {first}-{last} of {metrics['epochs_run']} run (validation loss "
                f"{averaged['val_loss']:g}; the best single epoch was {metrics['best_epoch']})")
    kept = f"best epoch by validation loss: {metrics['best_epoch']} of {metrics['epochs_run']} run"
    earlier = metrics.get("best_epoch_of_run")
    return f"{kept} (taken from {earlier}, which kept the mean of its last epochs)" if earlier else kept
