"""Patients of a lab the model never saw (issue 24 item 6): pseudo-patients drawn from the cells of each
leave-one-lab-out fold's left-out lab, and the operating point chosen without that lab.

A pseudo-patient is 200 cells drawn from one left-out lab (`bcscan evaluate`'s cell_predictions.csv of the
fold written by benchmarks/cross_lab.py), with 0, 1, 2, 5 and 20 % blasts.  bcscan flags a patient for
review when at least `review_threshold_pct` % of its cells have p_leukemic >= `threshold`
(bcscan.results.aggregation.patient_flag).  For every fold the operating point (cell threshold, review
percentage) is chosen on the OTHER folds only (`choose`: 5 %-blast patients flagged first, then all-normal
patients left unflagged, each on the worst fold); then the left-out fold is scored at it.  The pair chosen on
all folds together is what a shipped configuration would use.  A lab whose only normal cells are those of
hematogone fields (ghaderzadeh-all Benign: benign B precursors that look like lymphoblasts, which no other
lab has) gives hematogone-rich patients, not normal ones: its rows are reported, and it takes no part in
choosing the point.

    python benchmarks/pseudo_patients.py runs/cross-lab/fourlabs-s0 [runs/cross-lab/fourlabs-s1 ...]
        [--draws 1000] [--cells 200] [--seed 0]

Reads OUT/<lab>/eval/cell_predictions.csv of each run folder; prints markdown tables and writes
pseudo_patients.json beside the first run folder.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bcscan, not an installed one

from bcscan.results.aggregation import FLAG_REVIEW, AggregationParams, patient_flag  # noqa: E402

BLAST_PCTS = (0, 1, 2, 5, 20)
THRESHOLDS = np.round(np.r_[np.arange(0.30, 0.96, 0.05), 0.97, 0.98, 0.99], 2)
REVIEW_PCTS = (1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0)
MIN_SENSITIVITY = 0.95  # 5 %-blast patients flagged: the target, and a screening tool's first duty
HEMATOGONES = "ghaderzadeh-all/images/Benign"


def load_cells(run: Path, lab: str) -> dict[str, np.ndarray] | None:
    """p_leukemic of the left-out lab's blast cells, normal cells and (ghaderzadeh-all) hematogone-field cells."""
    path = run / lab / "eval" / "cell_predictions.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    p = np.array([float(r["p_leukemic"]) for r in rows])
    blast = np.array([r["label"] == "leukemic" for r in rows])
    hematogone = np.array([r["file"].startswith(HEMATOGONES + "/") for r in rows])
    return {"blast": p[blast], "normal": p[~blast], "hematogone": p[hematogone],
            "hematogone_patients": bool(hematogone.any() and np.all(hematogone[~blast]))}


def flag_rates(cells: dict[str, np.ndarray], threshold: float, review_pct: float, n_cells: int, draws: int,
               rng: np.random.Generator) -> dict[int, float]:
    """Share of pseudo-patients flagged for leukemic cells, per blast percentage."""
    params = AggregationParams(review_threshold_pct=review_pct, min_cells=min(50, n_cells))
    out = {}
    for pct in BLAST_PCTS:
        n_blast = int(round(n_cells * pct / 100))
        blasts = rng.choice(cells["blast"], (draws, n_blast)) if n_blast else np.zeros((draws, 0))
        normal = rng.choice(cells["normal"], (draws, n_cells - n_blast))
        n_leukemic = (blasts >= threshold).sum(axis=1) + (normal >= threshold).sum(axis=1)
        flags = [patient_flag(n_cells, int(k), 0, params) == FLAG_REVIEW for k in n_leukemic]
        out[pct] = float(np.mean(flags))
    return out


def choose(grid: dict, names: list[str]) -> tuple[float, float]:
    """The operating point for the folds `names`, screening first: among the points that flag at least
    MIN_SENSITIVITY of the 5 %-blast patients on every fold, the one that leaves most all-normal patients
    unflagged on its worst fold (ties: on average over the folds); where none does, the most 5 %-blast
    patients flagged on the worst fold."""
    points = sorted({(t, r) for _, t, r in grid})
    sensitivity = {tr: [grid[n, tr[0], tr[1]][5] for n in names] for tr in points}
    specificity = {tr: [1 - grid[n, tr[0], tr[1]][0] for n in names] for tr in points}
    sensitive = [tr for tr in points if min(sensitivity[tr]) >= MIN_SENSITIVITY]
    if sensitive:
        return max(sensitive, key=lambda tr: (min(specificity[tr]), np.mean(specificity[tr]), min(sensitivity[tr])))
    return max(points, key=lambda tr: (min(sensitivity[tr]), min(specificity[tr]), np.mean(specificity[tr])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="cross_lab.py output folders (one per seed)")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    folds = {}
    for run in args.runs:
        for lab_dir in sorted(p for p in run.iterdir() if p.is_dir()):
            cells = load_cells(run, lab_dir.name)
            if cells is not None and len(cells["blast"]) and len(cells["normal"]):
                folds[f"{lab_dir.name} ({run.name})"] = cells
    if not folds:
        sys.exit("no fold with eval/cell_predictions.csv found")
    grid = {}
    for name, cells in folds.items():
        for t in THRESHOLDS:
            for r in REVIEW_PCTS:
                grid[name, float(t), r] = flag_rates(cells, float(t), r, args.cells, args.draws,
                                                     np.random.default_rng(args.seed))

    labs = lambda name: name.split(" (")[0]  # noqa: E731
    rows = ["| left-out lab (run) | operating point chosen without this lab | " +
            " | ".join(f"flagged at {p} % blasts" for p in BLAST_PCTS) + " |",
            "|---|---|" + "---|" * len(BLAST_PCTS)]
    result = {"cells_per_patient": args.cells, "draws": args.draws, "folds": {}}
    choosers = [n for n in folds if not folds[n]["hematogone_patients"]]
    for name in folds:
        others = [n for n in choosers if labs(n) != labs(name)]
        t, r = choose(grid, others or [name])
        rates = grid[name, t, r]
        result["folds"][name] = {"threshold": t, "review_threshold_pct": r, "flagged": rates}
        kind = " (hematogone-field patients)" if folds[name]["hematogone_patients"] else ""
        rows.append(f"| {name}{kind} | p ≥ {t:.2f}, ≥ {r:g} % | " + " | ".join(f"{rates[p]:.3f}" for p in BLAST_PCTS)
                    + " |")
    t, r = choose(grid, choosers)
    result["all_folds_operating_point"] = {"threshold": t, "review_threshold_pct": r,
                                           "flagged": {n: grid[n, t, r] for n in folds}}
    rows += ["", f"Chosen on all folds together ({', '.join(choosers)}): cell threshold p ≥ {t:.2f}, review at ≥ "
             f"{r:g} % leukemic cells.", "",
             "| left-out lab (run) | " + " | ".join(f"flagged at {p} % blasts" for p in BLAST_PCTS) + " |",
             "|---|" + "---|" * len(BLAST_PCTS)]
    rows += [f"| {n} | " + " | ".join(f"{grid[n, t, r][p]:.3f}" for p in BLAST_PCTS) + " |" for n in folds]
    hem = {n: float(np.mean(c["hematogone"] >= t)) for n, c in folds.items() if len(c["hematogone"])}
    if hem:
        rows += ["", "Hematogone-field cells (ghaderzadeh-all Benign) called leukemic at that threshold: " +
                 ", ".join(f"{n}: {v:.3f}" for n, v in hem.items())]
        result["hematogone_cells_called_leukemic"] = hem
    (args.runs[0] / "pseudo_patients.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
