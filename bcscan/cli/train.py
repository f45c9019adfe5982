"""Click commands `bcscan train` and `bcscan evaluate` (registered on the main group by cli.py).

TensorFlow is imported inside the command bodies only, so `bcscan --help` stays instant.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from bcscan.cli.common import fail, reported_errors
from bcscan.errors import EXIT_CODES_HELP, ExitCode


@click.command("train", context_settings={"show_default": True}, epilog=EXIT_CODES_HELP)
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Training recipe (YAML), e.g. configs/train-fourlabs.yaml or configs/paper.yaml.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for NAME.keras, NAME.json, NAME.md and the report folder NAME/.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Local Keras VGG-16 'notop' weights file (e.g. ImageNet); default: train from scratch.")
@click.option("--init-model", type=click.Path(path_type=Path), default=None,
              help="Continue training a bcscan model (.keras) trained earlier with the same config and seed; "
                   "with a fine-tuning recipe (configs/finetune-local.yaml), the model to fine-tune.")
@click.option("--replay-data", type=click.Path(path_type=Path), default=None,
              help="Fine-tuning: the data folder the --init-model was trained on (its training cells are "
                   "replayed beside the verified ones in DATA_DIR).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the config's epochs.")
@click.option("--seed", type=int, default=None, help="Override the config's seed (splits, sampling, init).")
@click.option("--max-images-per-source", type=click.IntRange(min=1), default=None,
              help="Use a seeded random subset of each source folder (quick runs).")
@click.option("--max-minutes", type=float, default=None, help="Stop before an epoch would overrun this budget.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the config's initial learning rate (e.g. lower when continuing with --init-model).")
@click.option("--work", "work_dir", type=click.Path(path_type=Path), default=None,
              help="Cache of decoded/segmented samples and checkpoints [default: OUT/NAME/work].")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto")
@click.option("--card-section", "card_sections", multiple=True, type=click.Path(path_type=Path),
              help="Markdown file to copy into the model card, e.g. the leave-one-lab-out tables that "
                   "benchmarks/cross_lab.py wrote (repeatable).")
def train_command(data_dir, config_path, out_dir, weights, init_model, replay_data, epochs, seed,
                  max_images_per_source, max_minutes, learning_rate, work_dir, device, card_sections):
    """Train the VGG-16 leukemic/normal classifier on labelled folders under DATA_DIR.

    Fine-tuning on a lab's own verified cells: DATA_DIR is the folder `bcscan review OUT
    --export-training DATA_DIR` wrote, with --config configs/finetune-local.yaml, --init-model and
    --replay-data; the new model is written only if it does better on the held-back verified cells
    (exit status 5 otherwise).

    Writes the model and its metadata (read by `bcscan scan`), metrics.json, a classification
    report, confusion matrix and learning-curve PNGs and a model card.  Exits with status 4
    (after writing everything, flagged in metrics.json as "did_not_learn") when the validation
    balanced accuracy stayed at chance.

    Runs on TensorFlow; with the environment variable KERAS_BACKEND=jax it runs on JAX (a GPU machine
    without a TensorFlow build for its CUDA; lr_schedule cosine_time needs TensorFlow).
    """
    from bcscan.training.train import train

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with reported_errors():
        metrics = train(data_dir, config_path, out_dir, weights=weights, init_model=init_model, epochs=epochs,
                        seed=seed, max_images_per_source=max_images_per_source, work_dir=work_dir,
                        max_minutes=max_minutes, learning_rate=learning_rate, device=device,
                        card_sections=card_sections, replay_data=replay_data, echo=click.echo)
    name = metrics["config"].get("name", "bcscan-vgg16")
    click.echo(f"[train] test accuracy {_f(metrics['accuracy'])}, balanced accuracy {_f(metrics['balanced_accuracy'])}, "
               f"ROC AUC {_f(metrics['roc_auc'])}, ECE {_f(metrics['calibration'].get('ece_test_images_before'))} → "
               f"{_f(metrics['ece'])} (T = {metrics['calibration']['temperature']:g})")
    base = (metrics.get("colour_baseline") or {}).get("test_images") or {}
    click.echo(f"[train] colour-only baseline: accuracy {_f(base.get('accuracy'))}, "
               f"balanced accuracy {_f(base.get('balanced_accuracy'))}")
    for ds, block in metrics["per_source"]["datasets"].items():
        b = block.get("images") or {}
        click.echo(f"[train]   {ds}: accuracy {_f(b.get('accuracy'))}, balanced {_f(b.get('balanced_accuracy'))}, "
                   f"called normal {_f(block.get('called_normal_rate_images'))} ({b.get('n', 0)} images)")
    for line in metrics.get("source_shortcut_warning") or []:
        click.echo(f"[train] WARNING (source shortcut): {line}", err=True)
    click.echo(f"[train] wrote {out_dir / (name + '.keras')}, {out_dir / (name + '.json')}, "
               f"{out_dir / (name + '.md')} and {out_dir / name}/")
    if metrics.get("did_not_learn"):
        val = metrics["validation_cells"]["balanced_accuracy"]
        click.echo(f"[train] DID NOT LEARN: validation balanced accuracy {_f(val)} is at chance (0.5); "
                   "the model is useless (try batch norm, a lower learning rate, more epochs or --weights)", err=True)
        raise SystemExit(ExitCode.DID_NOT_LEARN)


@click.command("evaluate", context_settings={"show_default": True}, epilog=EXIT_CODES_HELP)
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--class-map", "class_map", multiple=True, required=True,
              help="CLASS=FOLDER[,FOLDER...] (folders relative to DATA_DIR), e.g. "
                   "leukemic=ghaderzadeh-all/images/Early,ghaderzadeh-all/images/Pre; repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(["image", "cells"]), default=None,
              help="Samples: whole images or segmented white cells [default: as the model was trained].")
@click.option("--mpp", type=float, default=None, help="µm per pixel of the images (cells mode).")
@click.option("--model-name", default=None, help="Model file stem inside MODEL_DIR [default: the only *.keras].")
@click.option("--splits", "splits_csv", type=click.Path(path_type=Path), default=None,
              help="splits.csv written by `bcscan train`: evaluate only its images of --split.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test")
@click.option("--single-cell", is_flag=True,
              help="Each image is one labelled cell at its centre (CellaVision-style crops): score only that cell, "
                   "not its neighbours, and cut it at the centre when the segmentation misses it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto")
def evaluate_command(model_dir, data_dir, class_map, out_dir, mode, mpp, model_name, splits_csv, split, single_cell,
                     device):
    """Score labelled image folders with a trained model (MODEL_DIR or a .keras file).

    In cells mode each image's score is the mean calibrated p(leukemic) of its cells.
    Writes metrics.json (accuracy, balanced_accuracy, roc_auc, ece, per-class precision/recall/F1,
    confusion matrix), classification_report.txt, confusion_matrix.png and predictions.csv.
    """
    from bcscan.model.network import load_model_info
    from bcscan.training.evaluate import evaluate, parse_class_map

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model_path = _model_path(Path(model_dir), model_name)
    with reported_errors():
        cmap = parse_class_map(list(class_map))
        info = load_model_info(model_path)
        if mode is None:
            mode = "cells" if info.crop_um else "image"
        metrics = evaluate(model_path, data_dir, cmap, out_dir, mode=mode, mpp=mpp, splits_csv=splits_csv,
                           split=split, single_cell=single_cell, device=device, echo=click.echo)
    click.echo(f"[evaluate] {metrics['images_total']} images ({metrics['images_without_cells']} without cells), "
               f"{metrics['samples']['n']} samples, mode {mode}")
    click.echo(f"[evaluate] accuracy {_f(metrics['accuracy'])}, balanced accuracy {_f(metrics['balanced_accuracy'])}, "
               f"ROC AUC {_f(metrics['roc_auc'])}, ECE {_f(metrics['ece'])}, called normal "
               f"{_f(metrics['called_normal_rate_images'])} (images) / {_f(metrics['called_normal_rate_samples'])} (cells)")
    click.echo(f"[evaluate] wrote {out_dir}/metrics.json, classification_report.txt, confusion_matrix.png, predictions.csv")


def _model_path(model_dir: Path, name: str | None) -> Path:
    if model_dir.suffix == ".keras":
        return model_dir
    if not model_dir.is_dir():
        fail(f"{model_dir}: model folder not found")
    if name:
        return model_dir / f"{name}.keras"
    found = sorted(model_dir.glob("*.keras"))
    if len(found) != 1:
        fail(f"{model_dir}: expected exactly one *.keras model, found {len(found)} (use --model-name)")
    return found[0]


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
