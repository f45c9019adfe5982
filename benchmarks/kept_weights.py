"""Which weights should training keep: the best single epoch's (lowest validation loss) or the mean of the last
epochs' (`training.average_last_epochs`)?  Both come from the same training, so the comparison is paired.

    python benchmarks/kept_weights.py --runs runs/cross-lab/avg12-s0 [...]      # leave one lab out
    python benchmarks/kept_weights.py --model runs/ship7/bcscan-vgg16.keras [--config configs/train-fourlabs.yaml]

A training that keeps the mean weights also writes the best epoch's beside its report (best-epoch.weights.h5).
With --runs, each leave-one-lab-out fold of benchmarks/cross_lab.py: its left-out lab's cells, cell balanced
accuracy at p >= 0.5 and ROC AUC (neither depends on the calibration temperature).  With --model, each lab's test
cells of the model's own split, balanced accuracy at p >= 0.5 (pbc-normal: the share called normal).
Prints one markdown table.  Reads the recipe's crop cache (--work), so run it where the model was trained.
"""
from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    if bool(args.runs) == bool(args.model):
        ap.error("give --runs or --model")
    folds(args) if args.runs else own_test_split(args)


if __name__ == "__main__":
    main()
