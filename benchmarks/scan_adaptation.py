"""Adaptation per scan (issue 24 item 5), judged on leave-one-lab-out folds.

Pseudo-scans of 200 cells are drawn from each fold's left-out lab (`benchmarks/cross_lab.py` output): all
normal, and 2, 20 and 80 % blasts.  Each fold model scores every pseudo-scan
  (a) as it is: each crop's optical density standardised inside the model (`model.stain_standardise`);
  (b) after stain normalisation of the scan against the training labs (Reinhard: one CIELAB shift and scale
      for the whole scan, from the scan's own cells' statistics to those of the fold's training cells);
  (c) with the batch-norm statistics re-estimated on the scan's own cells (one forward pass in training mode,
      momentum 0), which a patient's mix of classes moves: hence the blast shares.
Per fold, adaptation and blast share: normal cells called leukemic, blasts called leukemic (calibrated p >= 0.5)
and the ROC AUC of the pooled cells.

    python benchmarks/scan_adaptation.py runs/cross-lab/fourlabs-s0 [runs/cross-lab/fourlabs-s1 ...]
        [--work runs/cross-lab/work] [--labs mll-bone-marrow,...] [--scans 10] [--cells 200] [--json F]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's bcscan, not an installed one

from cross_lab import LABS, left_out_cells  # noqa: E402

from bcscan.model.classifier import calibrate  # noqa: E402
from bcscan.model.network import load_keras_model  # noqa: E402
from bcscan.training.baselines import lab_stats  # noqa: E402
from bcscan.training.metrics import roc_auc  # noqa: E402
from bcscan.training.predict import predict_probs  # noqa: E402
from bcscan.training.recipe import load_train_config  # noqa: E402
from bcscan.training.samples import collect_samples  # noqa: E402

BLAST_SHARES = (0.0, 0.02, 0.2, 0.8)
ADAPTATIONS = ("none", "stain normalised", "batch-norm re-estimated")


def normalise_scan(x: np.ndarray, ref_mean: np.ndarray, ref_std: np.ndarray) -> np.ndarray:
    """One Reinhard transform for all of a scan's crops: the scan's mean CIELAB statistics onto the reference's."""
    import cv2

    mean, std = lab_stats(x)
    lab = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2LAB) for c in x]).astype(np.float32)
    lab = (lab - mean) / np.maximum(std, 1e-3) * ref_std + ref_mean
    return np.stack([cv2.cvtColor(np.clip(c, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB) for c in lab])


class BatchNormOnScan:
    """A copy of the model whose batch-norm statistics are those of the cells it is given."""

    def __init__(self, model):
        import keras

        self.model = keras.models.clone_model(model)
        self.weights = model.get_weights()
        self.model.set_weights(self.weights)
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.0

    def probabilities(self, x_uint8: np.ndarray) -> np.ndarray:
        self.model.set_weights(self.weights)
        self.model(x_uint8.astype(np.float32) / 255.0, training=True)  # moving statistics := the scan's
        return predict_probs(self.model, x_uint8)


def fold_cells(run: Path, lab: str, work: Path, data_dir: Path):
    """(model, info, left-out lab's crops, is_blast, training labs' CIELAB reference) of one fold."""
    model_file = next((run / lab / "model").glob("*.keras"))
    model, info = load_keras_model(model_file)
    left_out = left_out_cells(data_dir, lab, info, work)
    cfg = load_train_config(run / lab / "config.yaml")
    train = collect_samples(data_dir, cfg.sources, cfg.mode, cfg.input_size, cfg.crop_um, cfg.margin,
                            cfg.segmentation, hash_size=cfg.split.hash_size, cache_dir=work)
    sample = np.random.default_rng(0).choice(len(train.x), min(3000, len(train.x)), replace=False)
    return model, info, left_out.x, left_out.label == 0, lab_stats(train.x[np.sort(sample)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--scans", type=int, default=10)
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--labs", default=",".join(LABS), help="left-out labs to score (comma-separated)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = ["| fold (run) | adaptation | blasts in scan | scans | normal cells called leukemic | blasts called leukemic "
            "| ROC AUC |", "|---|---|---|---|---|---|---|"]
    result = []
    for run in args.runs:
        for lab in [lab for lab in args.labs.split(",") if (run / lab / "model").is_dir()]:
            model, info, x, blast, (ref_mean, ref_std) = fold_cells(run, lab, args.work, args.data_dir)
            adapted = BatchNormOnScan(model)
            score = {"none": lambda s: predict_probs(model, s),
                     "stain normalised": lambda s: predict_probs(model, normalise_scan(s, ref_mean, ref_std)),
                     "batch-norm re-estimated": adapted.probabilities}
            rng = np.random.default_rng(0)
            for share in BLAST_SHARES:
                n_blast = int(round(args.cells * share))
                scans = [np.concatenate([rng.choice(np.flatnonzero(blast), n_blast, replace=False),
                                         rng.choice(np.flatnonzero(~blast), args.cells - n_blast, replace=False)])
                         for _ in range(args.scans)]
                for name in ADAPTATIONS:
                    p = np.concatenate([calibrate(score[name](x[s]), info.temperature)[:, 0] for s in scans])
                    y = np.concatenate([blast[s] for s in scans])
                    entry = {"fold": f"{lab} ({run.name})", "adaptation": name, "blast_share": share,
                             "scans": len(scans), "normal_called_leukemic": float(np.mean(p[~y] >= 0.5)),
                             "blasts_called_leukemic": float(np.mean(p[y] >= 0.5)) if y.any() else None,
                             "roc_auc": roc_auc(y, p) if y.any() else None}
                    result.append(entry)
                    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
                    rows.append(f"| {entry['fold']} | {name} | {share:.0%} | {len(scans)} | "
                                f"{f(entry['normal_called_leukemic'])} | {f(entry['blasts_called_leukemic'])} | "
                                f"{f(entry['roc_auc'])} |")
                    print(rows[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
