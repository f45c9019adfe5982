"""A scan folder and the OUT_DIR a `bcscan scan` run would leave over it, written without the model:
for tests and benchmarks of what reads a finished run (reports, review), with known cells."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from bcscan.results.aggregation import AggregationParams, summarise_patients
from bcscan.results.tables import CELL_COLUMNS, FAILURE_COLUMNS, SCAN_COLUMNS, atomic_write_csv, atomic_write_json
from bcscan.testing.synthetic import draw_smear, write_pyramidal_tiff

MPP = 0.5  # the scale of the drawn scans


def make_out_dir(root: Path, patients: dict[str, list[dict]], seed: int = 0) -> Path:
    """A scan folder and the OUT_DIR a `bcscan scan` run would leave, without the model.

    `patients`: patient_id → list of scans, each {"name", "kind": "slide"|"field"|"broken",
    "n": white cells, "leukemic": fraction called leukemic, "size": (w, h)}.
    """
    rng = np.random.default_rng(seed)
    scan_dir, out = root / "scans", root / "out"
    scan_rows, cell_rows, inputs = [], [], []
    for p_index, (pid, scans) in enumerate(patients.items()):
        folder = scan_dir / f"patient{p_index}"
        folder.mkdir(parents=True, exist_ok=True)
        for s_index, spec in enumerate(scans):
            rel = f"patient{p_index}/{spec['name']}"
            path = scan_dir / rel
            if spec["kind"] == "broken":
                path.write_text("not a slide")
                scan_rows.append({"scan": rel, "patient_id": pid, "status": "failed", "stage": "read",
                                  "sha256": "0" * 64, "error": f"{path}: cannot open slide: not a <b>slide</b> & co"})
                inputs.append({"scan": rel, "sha256": "0" * 64, "status": "failed"})
                continue
            w, h = spec.get("size", (1600, 1200))
            img, drawn = draw_smear(w, h, MPP, spec["n"], seed=seed * 100 + p_index * 10 + s_index)
            if spec["kind"] == "slide":
                write_pyramidal_tiff(path, img, MPP)
            else:
                cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            n_leuk = int(round(spec["leukemic"] * len(drawn)))
            p = np.concatenate([rng.uniform(0.5, 1.0, n_leuk), rng.uniform(0.0, 0.5, len(drawn) - n_leuk)])
            for i, (c, pl) in enumerate(zip(drawn, p)):
                x0, y0, x1, y1 = c.box
                cell_rows.append({"scan": rel, "patient_id": pid, "cell_id": i, "x": round(c.x, 1), "y": round(c.y, 1),
                                  "x0": x0, "y0": y0, "x1": x1, "y1": y1, "area_um2": 110.0,
                                  "label": "leukemic" if pl >= 0.5 else "normal", "p_leukemic": round(float(pl), 4)})
            sha = f"{p_index:02d}{s_index:02d}" + "ab" * 30
            scan_rows.append({"scan": rel, "patient_id": pid, "status": "ok", "n_cells": len(drawn),
                              "n_leukemic": n_leuk, "n_normal": len(drawn) - n_leuk, "mpp": MPP, "level": 0,
                              "working_mpp": 0.4, "tiles_read": 4, "tiles_skipped": 2, "seconds": 1.5,
                              "sha256": sha, "error": ""})
            inputs.append({"scan": rel, "sha256": sha, "status": "ok"})
    scans = pd.DataFrame(scan_rows).reindex(columns=SCAN_COLUMNS + ["stage"])
    cells = pd.DataFrame(cell_rows, columns=CELL_COLUMNS)
    agg = AggregationParams(review_threshold_pct=5.0, min_cells=10)
    table = summarise_patients(scans, cells, agg)
    atomic_write_csv(out / "cells.csv", cells, CELL_COLUMNS)
    atomic_write_csv(out / "scans.csv", scans, SCAN_COLUMNS)
    atomic_write_csv(out / "patients.csv", table, list(table.columns))
    atomic_write_csv(out / "failures.csv", scans[scans.status == "failed"], FAILURE_COLUMNS)
    now = dt.datetime.now(dt.timezone.utc)
    atomic_write_json(out / "run.json", {
        "run_id": "20261128T000000Z-abc123", "bcscan_version": "0.1.0", "started": now.isoformat(),
        "finished": (now + dt.timedelta(seconds=5)).isoformat(), "scan_dir": str(scan_dir),
        "config": {"classification": {"threshold": 0.5}, "aggregation": {"review_threshold_pct": 5.0, "min_cells": 10},
                   "reading": {}},
        "config_digest": "deadbeef", "inputs": inputs,
        "model": {"name": "test-model", "sha256": "f" * 64, "path": "models/x.keras", "crop_um": 20.0}})
    return out
