"""How much of a trained model's validation loss, and its test figures, comes from its batch-norm running statistics?

    python benchmarks/precise_bn.py [--model models/bcscan-vgg16.keras] [--config configs/train-fourlabs.yaml]
        [--splits models/bcscan-vgg16/splits.csv] [--work runs/cross-lab/work] [--draws 5] [--cells 2048]
    python benchmarks/precise_bn.py --runs runs/cross-lab/cos36-s0 runs/cross-lab/cos36-s1     # leave one lab out

The weights stay those of the epoch training kept.  Each draw replaces every batch-norm layer's running mean and
variance by the statistics of one batch of balanced training crops (the recipe's `balance`, drawn as training
draws an epoch), then scores the validation cells (loss) and the test cells of each lab (balanced accuracy at
p >= 0.5, uncalibrated).  The stored statistics are scored too.  Near the end of a cosine schedule the learning
rate is ~1e-5, so an epoch-to-epoch swing of the validation loss much larger than the spread over draws is the
running statistics' doing, and the epoch kept for its low loss is partly kept for its statistics.
With --runs, each leave-one-lab-out fold model of benchmarks/cross_lab.py's runs instead: its left-out lab's
cells scored with the stored statistics and with statistics re-estimated on its own training crops (one draw).
Prints one markdown table.  Reads the recipe's crop cache (--work), so run it where the model was trained.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bcscan.training.recipe import load_train_config  # noqa: E402
from bcscan.training.samples import collect_samples  # noqa: E402
from bcscan.training.splits import balance_indices  # noqa: E402


def reestimate(model, norms, crops: np.ndarray) -> None:
    """Every batch-norm layer's running statistics set to those of `crops` (one batch, training mode)."""
    for layer in norms:
        layer.momentum = 0.0
    model(crops.astype("float32"), training=True)


def balanced_batch(samples, train: np.ndarray, cfg, rng: np.random.Generator, cells: int) -> np.ndarray:
    """`cells` training crops drawn as training draws an epoch (the recipe's balance)."""
    pool = train[balance_indices(samples.label[train], rng, cfg.balance, samples.dataset[train],
                                 samples.cell_type[train])]
    return rng.choice(pool, min(cells, len(pool)), replace=False)


def recipe_samples(data_dir: Path, cfg, work: Path):
    """The recipe's crops as `bcscan train` cut them (its cache in `work`)."""
    return collect_samples(data_dir, cfg.sources, cfg.mode, cfg.input_size, cfg.crop_um, cfg.margin, cfg.segmentation,
                           seed=cfg.seed, hash_size=cfg.split.hash_size, cache_dir=work)


def model_and_norms(path: Path):
    """The saved model, its metadata and its batch-norm layers."""
    import keras

    from bcscan.model.network import load_keras_model

    model, info = load_keras_model(path)
    return model, info, [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def split_of(samples, splits_csv: Path) -> np.ndarray:
    with open(splits_csv, newline="", encoding="utf-8") as fh:
        named = {row["file"]: row["split"] for row in csv.DictReader(fh)}
    return np.array([named[f] for f in samples.files], dtype=object)[samples.image]


def per_lab_balanced(samples, cells: np.ndarray, p_leukemic: np.ndarray, labs: list[str]) -> list[str]:
    """Each lab's balanced accuracy at p >= 0.5 over `cells` (a lab with one class: that class's recall)."""
    out = []
    for lab in labs:
        mine = samples.dataset[cells] == lab
        y, called = samples.label[cells][mine], p_leukemic[mine] >= 0.5
        out.append(f"{np.mean([np.mean(called[y == c] == (c == 0)) for c in (0, 1) if np.any(y == c)]):.3f}")
    return out


def folds(args) -> None:
    """Leave one lab out: each fold model's left-out lab, stored against re-estimated statistics."""
    from cross_lab import left_out_cells

    from bcscan.training.metrics import metrics_block

    print("| left-out lab | run | stored: cell balanced accuracy / ROC AUC | re-estimated: cell balanced accuracy / ROC AUC |")
    print("|---|---|---|---|")
    for run in args.runs:
        for fold_dir in sorted(d for d in run.iterdir() if (d / "config.yaml").is_file()):
            lab = fold_dir.name
            cfg = load_train_config(fold_dir / "config.yaml")
            samples = recipe_samples(args.data_dir, cfg, args.work)
            train = np.nonzero(split_of(samples, fold_dir / "model" / f"lolo-{lab}" / "splits.csv") == "train")[0]
            model, info, norms = model_and_norms(fold_dir / "model" / f"lolo-{lab}.keras")
            left = left_out_cells(args.data_dir, lab, info, args.work)
            row = [f"`{lab}`", run.name]
            for reestimated in (False, True):
                if reestimated:
                    reestimate(model, norms, samples.x[balanced_batch(samples, train, cfg,
                                                                      np.random.default_rng(cfg.seed), args.cells)])
                m = metrics_block(left.label, model.predict(left.x, batch_size=256, verbose=0)[:, 0])
                row.append(f"{m['balanced_accuracy']:.3f} / {m['roc_auc']:.3f}")
            print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "bcscan-vgg16.keras")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train-fourlabs.yaml")
    ap.add_argument("--splits", type=Path, default=ROOT / "models" / "bcscan-vgg16" / "splits.csv")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--cells", type=int, default=2048, help="training crops per draw (one batch)")
    ap.add_argument("--runs", nargs="+", type=Path, help="benchmarks/cross_lab.py output folders: judge each fold")
    args = ap.parse_args()
    if args.runs:
        folds(args)
        return

    cfg = load_train_config(args.config)
    samples = recipe_samples(args.data_dir, cfg, args.work)
    split = split_of(samples, args.splits)
    train, val, test = (np.nonzero(split == name)[0] for name in ("train", "val", "test"))
    model, _, norms = model_and_norms(args.model)
    labs = sorted(set(samples.dataset[test]))

    def scores() -> list[str]:
        p_val = model.predict(samples.x[val], batch_size=256, verbose=0)
        loss = -np.mean(np.log(np.clip(p_val[np.arange(len(val)), samples.label[val]], 1e-7, 1.0)))
        return [f"{loss:.4f}"] + per_lab_balanced(samples, test, model.predict(samples.x[test], batch_size=256,
                                                                               verbose=0)[:, 0], labs)

    rows = [["stored (the kept epoch's)"] + scores()]
    for draw in range(args.draws):
        batch = balanced_batch(samples, train, cfg, np.random.default_rng([cfg.seed, 1000 + draw]), args.cells)
        reestimate(model, norms, samples.x[batch])
        rows.append([f"{len(batch):,} balanced training crops, draw {draw}"] + scores())
    header = ["batch-norm statistics", "validation loss"] + [f"{lab} (test cells, balanced)" for lab in labs]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
