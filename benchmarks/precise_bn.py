"""How much of a trained model's validation loss, and its test figures, comes from its batch-norm running statistics?

    python benchmarks/precise_bn.py [--model models/bcscan-vgg16.keras] [--config configs/train-fourlabs.yaml]
        [--splits models/bcscan-vgg16/splits.csv] [--work runs/cross-lab/work] [--draws 5] [--cells 2048]

The weights stay those of the epoch training kept.  Each draw replaces every batch-norm layer's running mean and
variance by the statistics of one batch of balanced training crops (the recipe's `balance`, drawn as training
draws an epoch), then scores the validation cells (loss) and the test cells of each lab (balanced accuracy at
p >= 0.5, uncalibrated).  The stored statistics are scored too.  Near the end of a cosine schedule the learning
rate is ~1e-5, so an epoch-to-epoch swing of the validation loss much larger than the spread over draws is the
running statistics' doing, and the epoch kept for its low loss is partly kept for its statistics.
Prints one markdown table.  Reads the recipe's crop cache (--work), so run it where the model was trained.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "bcscan-vgg16.keras")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train-fourlabs.yaml")
    ap.add_argument("--splits", type=Path, default=ROOT / "models" / "bcscan-vgg16" / "splits.csv")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--cells", type=int, default=2048, help="training crops per draw (one batch)")
    args = ap.parse_args()

    import keras

    from bcscan.model.network import load_keras_model
    from bcscan.training.recipe import load_train_config
    from bcscan.training.samples import collect_samples
    from bcscan.training.splits import balance_indices

    cfg = load_train_config(args.config)
    samples = collect_samples(args.data_dir, cfg.sources, cfg.mode, cfg.input_size, cfg.crop_um, cfg.margin,
                              cfg.segmentation, seed=cfg.seed, hash_size=cfg.split.hash_size, cache_dir=args.work)
    with open(args.splits, newline="", encoding="utf-8") as fh:
        split_of = {row["file"]: row["split"] for row in csv.DictReader(fh)}
    split = np.array([split_of[f] for f in samples.files], dtype=object)[samples.image]
    train, val, test = (np.nonzero(split == name)[0] for name in ("train", "val", "test"))
    model, _ = load_keras_model(args.model)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    labs = sorted(set(samples.dataset[test]))

    def scores() -> list[str]:
        p_val = model.predict(samples.x[val], batch_size=256, verbose=0)
        loss = -np.mean(np.log(np.clip(p_val[np.arange(len(val)), samples.label[val]], 1e-7, 1.0)))
        p = model.predict(samples.x[test], batch_size=256, verbose=0)[:, 0]
        out = [f"{loss:.4f}"]
        for lab in labs:
            mine = samples.dataset[test] == lab
            y, called = samples.label[test][mine], p[mine] >= 0.5
            recalls = [np.mean(called[y == c] == (c == 0)) for c in (0, 1) if np.any(y == c)]
            out.append(f"{np.mean(recalls):.3f}")
        return out

    rows = [["stored (the kept epoch's)"] + scores()]
    for layer in norms:  # the next call in training mode sets the running statistics to that batch's
        layer.momentum = 0.0
    for draw in range(args.draws):
        rng = np.random.default_rng([cfg.seed, 1000 + draw])
        pool = train[balance_indices(samples.label[train], rng, cfg.balance, samples.dataset[train],
                                     samples.cell_type[train])]
        batch = rng.choice(pool, min(args.cells, len(pool)), replace=False)
        model(samples.x[batch].astype("float32"), training=True)
        rows.append([f"{len(batch):,} balanced training crops, draw {draw}"] + scores())
    header = ["batch-norm statistics", "validation loss"] + [f"{lab} (test cells, balanced)" for lab in labs]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
