"""Cheaper than a new recipe? Leave one lab out (issue 24), the fold models already trained, scored on every cell of
their left-out lab (as `benchmarks/cross_lab.py` scores them) four ways:

- each run's fold model alone (the cross_lab figure);
- test-time augmentation: the mean calibrated p_leukemic over the 8 flips and quarter turns of each crop
  (the training already augments with them, so the network should give them the same call);
- the runs' fold models together: the mean of their calibrated p_leukemic (an ensemble of seeds);
- both.

Cell balanced accuracy and ROC AUC (threshold 0.5, as cross_lab), and the classifier's cost of each per crop
(views × models).  Runs are `benchmarks/cross_lab.py` output folders with the same folds.

    python benchmarks/ensemble_tta.py [DATA_DIR] --runs runs/cross-lab/fourlabs-s0 runs/cross-lab/fourlabs-s1
        [--work runs/cross-lab/work] [--labs mll-bone-marrow,...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cross_lab import LABS, left_out_cells  # noqa: E402

from bcscan.model.classifier import calibrate  # noqa: E402
from bcscan.model.network import load_keras_model, load_model_info  # noqa: E402
from bcscan.training.metrics import metrics_block  # noqa: E402
from bcscan.training.predict import predict_probs  # noqa: E402

VIEWS = [(k, flip) for flip in (False, True) for k in range(4)]  # the 8 symmetries of a square crop


def view(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k, axes=(1, 2))
    return np.ascontiguousarray(x[:, :, ::-1] if flip else x)


def p_views(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Calibrated p_leukemic of every crop under every view: (views, crops)."""
    model, info = load_keras_model(model_path)
    li = info.classes.index("leukemic")
    return np.stack([calibrate(predict_probs(model, view(x, k, flip), 256), info.temperature)[:, li]
                     for k, flip in VIEWS])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--labs", default=",".join(LABS))
    args = ap.parse_args()
    print("| left-out lab | way | cost × one pass | cell balanced accuracy | ROC AUC |\n|---|---|---|---|---|")
    for lab in args.labs.split(","):
        models = [run / lab / "model" / f"lolo-{lab}.keras" for run in args.runs]
        cells = left_out_cells(args.data_dir, lab, load_model_info(models[0]), args.work)
        p = np.stack([p_views(m, cells.x) for m in models])  # (runs, views, crops)

        def line(way: str, cost: int, scores: list[np.ndarray]) -> None:
            blocks = [metrics_block(cells.label, s) for s in scores]
            print(f"| `{lab}` | {way} | {cost} | " + " / ".join(f"{b['balanced_accuracy']:.3f}" for b in blocks)
                  + " | " + " / ".join(f"{b['roc_auc']:.3f}" for b in blocks) + " |", flush=True)

        line("each run alone", 1, [p[r, 0] for r in range(len(models))])
        line("each run, 8 views", 8, [p[r].mean(0) for r in range(len(models))])
        line(f"{len(models)} runs together", len(models), [p[:, 0].mean(0)])
        line(f"{len(models)} runs together, 8 views", 8 * len(models), [p.mean((0, 1))])


if __name__ == "__main__":
    main()
