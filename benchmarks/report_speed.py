"""Time of a patient's PDF report with many cells (target: a few seconds for 5,000 cells).

    python benchmarks/report_speed.py [--cells 5000] [--scans 2] [--repeat 3] [--keep DIR]

Draws synthetic pyramidal slides (not timed), writes the tables a `bcscan scan` run
would leave for one patient with --cells cells spread over --scans slides, then
times `write_reports` (thumbnails with every cell marked, gallery crops read from
the slides, histogram, PDF) and prints seconds, pages and PDF size.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bcscan.results.aggregation import AggregationParams, summarise_patients
from bcscan.results.reports import ReportingParams, report_names, write_reports
from bcscan.results.tables import CELL_COLUMNS, FAILURE_COLUMNS, SCAN_COLUMNS, atomic_write_csv, atomic_write_json
from bcscan.testing.synthetic import draw_smear, write_pyramidal_tiff

MPP = 0.25


def build(root: Path, n_cells: int, n_scans: int, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    scan_dir, out = root / "scans", root / "out"
    (scan_dir / "BENCH-001").mkdir(parents=True)
    scans, cells = [], []
    per_scan = np.array_split(np.arange(n_cells), n_scans)
    for s, ids in enumerate(per_scan):
        rel = f"BENCH-001/slide{s}.tif"
        field, _ = draw_smear(2000, 1500, MPP, 8, seed=seed + s)  # tiled: drawing a whole slide takes a minute
        img = np.tile(field, (-(-size[1] // 1500), -(-size[0] // 2000), 1))[:size[1], :size[0]]
        write_pyramidal_tiff(scan_dir / rel, img, MPP)
        x = rng.uniform(40, size[0] - 40, len(ids))
        y = rng.uniform(40, size[1] - 40, len(ids))
        p = rng.beta(0.6, 4.0, len(ids))
        r = rng.uniform(22, 28, len(ids))
        label = np.where(p >= 0.5, "leukemic", "normal")
        cells.append(pd.DataFrame({"scan": rel, "patient_id": "BENCH-001", "cell_id": np.arange(len(ids)),
                                   "x": x.round(1), "y": y.round(1),
                                   "x0": (x - r).astype(int), "y0": (y - r).astype(int),
                                   "x1": (x + r).astype(int), "y1": (y + r).astype(int), "area_um2": 110.0,
                                   "label": label, "p_leukemic": p.round(4)}))
        scans.append({"scan": rel, "patient_id": "BENCH-001", "status": "ok", "n_cells": len(ids),
                      "n_leukemic": int((label == "leukemic").sum()), "n_normal": int((label == "normal").sum()),
                      "mpp": MPP, "level": 0, "working_mpp": 0.4, "tiles_read": 40, "tiles_skipped": 8,
                      "seconds": 30.0, "sha256": f"{s:064x}", "error": ""})
    cells_df = pd.concat(cells, ignore_index=True)
    scans_df = pd.DataFrame(scans)
    patients = summarise_patients(scans_df, cells_df, AggregationParams())
    atomic_write_csv(out / "cells.csv", cells_df, CELL_COLUMNS)
    atomic_write_csv(out / "scans.csv", scans_df, SCAN_COLUMNS)
    atomic_write_csv(out / "patients.csv", patients, list(patients.columns))
    atomic_write_csv(out / "failures.csv", scans_df.head(0), FAILURE_COLUMNS)
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    atomic_write_json(out / "run.json", {
        "run_id": "bench", "bcscan_version": "bench", "started": now, "finished": now, "scan_dir": str(scan_dir),
        "config": {"classification": {"threshold": 0.5}, "aggregation": {"review_threshold_pct": 5.0, "min_cells": 50}},
        "model": {"name": "bench", "sha256": "0" * 64, "crop_um": 20.0},
        "inputs": [{"scan": s["scan"], "sha256": s["sha256"], "status": "ok"} for s in scans]})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--scans", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(8000, 6000), metavar=("W", "H"),
                        help="level-0 size of each synthetic slide (pixels at 0.25 µm/px)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args(argv)
    import pypdf

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        out = build(root, args.cells, args.scans, tuple(args.size))
        print(f"built {args.scans} slide(s) of {args.size[0]}x{args.size[1]} px and {args.cells:,} cells "
              f"in {time.perf_counter() - t0:.1f} s (not timed)")
        params = ReportingParams()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            write_reports(out, params=params)
            times.append(time.perf_counter() - t0)
        report = out / "reports" / report_names(["BENCH-001"])["BENCH-001"]
        pages = len(pypdf.PdfReader(str(report)).pages)
        print(f"report for 1 patient, {args.cells:,} cells, {args.scans} scan(s): "
              f"first {times[0]:.2f} s (font/matplotlib start-up included), best {min(times):.2f} s "
              f"over {args.repeat} run(s); {pages} pages, {report.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
