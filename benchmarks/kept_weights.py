"""Which weights should training keep: the best single epoch's (lowest validation loss) or the mean of the last
epochs' (`training.average_last_epochs`)?  Both come from the same training, so the comparison is paired.

    python benchmarks/kept_weights.py --runs runs/cross-lab/avg12-s0 [...]      # leave one lab out
    python benchmarks/kept_weights.py --model runs/ship7/bcscan-vgg16.keras [--config configs/train-fourlabs.yaml]
    python benchmarks/kept_weights.py --runs runs/cross-lab/blur06-s0 --export-best runs/cross-lab/blur06best-s0

A training that keeps the mean weights also writes the best epoch's beside its report (best-epoch.weights.h5).
With --runs, each leave-one-lab-out fold of benchmarks/cross_lab.py: its left-out lab's cells, cell balanced
accuracy at p >= 0.5 and ROC AUC (neither depends on the calibration temperature).  With --model, each lab's test
cells of the model's own split, balanced accuracy at p >= 0.5 (pbc-normal: the share called normal).
Prints one markdown table.  Reads the recipe's crop cache (--work), so run it where the model was trained.
With --export-best OUT, each fold's best epoch becomes the model the recipe without the average trains
(`train_best_epoch`: calibrated, reported, carded), in a folder that benchmarks/cross_lab.py --out OUT then scores
on every figure without training again (give it the run's --set options less training.average_last_epochs).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from precise_bn import per_lab_balanced, recipe_samples, split_of  # noqa: E402

from bcscan.training.fit import BEST_EPOCH_WEIGHTS  # noqa: E402
from bcscan.training.metrics import metrics_block  # noqa: E402
from bcscan.training.recipe import load_train_config  # noqa: E402
from bcscan.training.train import train_best_epoch  # noqa: E402


def both_weights(model_file: Path, report_dir: Path):
    """(the saved model, its metadata, a function that loads the best epoch's weights into it)."""
    from bcscan.model.network import load_keras_model

    model, info = load_keras_model(model_file)
    best = report_dir / BEST_EPOCH_WEIGHTS
    if not best.is_file():
        raise SystemExit(f"{best}: missing; train with training.average_last_epochs to keep both")
    return model, info, lambda: model.load_weights(best)


def folds(args) -> None:
    from cross_lab import left_out_cells

    print("| left-out lab | run | mean of the last epochs: cell balanced accuracy / ROC AUC | best epoch: same |")
    print("|---|---|---|---|")
    for run in args.runs:
        for fold_dir in sorted(d for d in run.iterdir() if (d / "model" / f"lolo-{d.name}.keras").is_file()):
            lab = fold_dir.name  # (a fold still training has no model yet)
            model, info, load_best = both_weights(fold_dir / "model" / f"lolo-{lab}.keras",
                                                  fold_dir / "model" / f"lolo-{lab}")
            left = left_out_cells(args.data_dir, lab, info, args.work)
            row = [f"`{lab}`", run.name]
            for _ in ("mean", "best"):
                m = metrics_block(left.label, model.predict(left.x, batch_size=256, verbose=0)[:, 0])
                row.append(f"{m['balanced_accuracy']:.3f} / {m['roc_auc']:.3f}")
                load_best()
            print("| " + " | ".join(row) + " |", flush=True)


def export_best(args) -> None:
    """Each trained fold of the one run in --runs as the recipe without the weight average: OUT/<lab>/model."""
    import yaml

    (run,) = args.runs
    for fold_dir in sorted(d for d in run.iterdir() if (d / "model" / f"lolo-{d.name}.keras").is_file()):
        lab, out = fold_dir.name, args.export_best / fold_dir.name
        if (out / "model" / f"lolo-{lab}.keras").is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        cfg = yaml.safe_load((fold_dir / "config.yaml").read_text(encoding="utf-8"))
        cfg["training"].pop("average_last_epochs", None)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        shutil.copyfile(fold_dir / "train_wall.json", out / "train_wall.json")
        print(f"[kept-weights] {lab}: the best epoch of {fold_dir} → {out / 'model'}", flush=True)
        train_best_epoch(args.data_dir, out / "config.yaml", out / "model", fold_dir / "model" / f"lolo-{lab}",
                         work_dir=args.work)


def own_test_split(args) -> None:
    cfg = load_train_config(args.config)
    samples = recipe_samples(args.data_dir, cfg, args.work)
    report_dir = args.model.with_suffix("")
    test = np.nonzero(split_of(samples, report_dir / "splits.csv") == "test")[0]
    model, _, load_best = both_weights(args.model, report_dir)
    labs = sorted(set(samples.dataset[test]))
    print("| weights | " + " | ".join(f"{lab} (test cells, balanced)" for lab in labs) + " |")
    print("|---|" + "---|" * len(labs))
    for name in ("mean of the last epochs", "best epoch"):
        row = [name] + per_lab_balanced(samples, test, model.predict(samples.x[test], batch_size=256,
                                                                     verbose=0)[:, 0], labs)
        print("| " + " | ".join(row) + " |", flush=True)
        load_best()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--model", type=Path, help="a model `bcscan train` wrote: its own test split")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train-fourlabs.yaml")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--runs", nargs="+", type=Path, help="benchmarks/cross_lab.py output folders: judge each fold")
    ap.add_argument("--export-best", type=Path, metavar="OUT",
                    help="with one --runs folder: write its folds' best epochs as cross_lab.py folds in OUT")
    args = ap.parse_args()
    if bool(args.runs) == bool(args.model):
        ap.error("give --runs or --model")
    if args.export_best and len(args.runs or ()) != 1:
        ap.error("--export-best takes exactly one --runs folder")
    if args.export_best:
        export_best(args)
    else:
        folds(args) if args.runs else own_test_split(args)


if __name__ == "__main__":
    main()
