"""Two models side by side in `bcscan scan` (issue 24 item 8): cells classified per second, as a ratio in one run.

    .venv/bin/python benchmarks/model_speed.py --baseline OLD.keras [--candidate models/bcscan-vgg16.keras]
        [--fields 120] [--repeats 2] [DATA_DIR]

The old model of a checkout: `git show REV:models/bcscan-vgg16.keras > old.keras` (and its .json).
Both models scan the same folder of BCCD fields (0.063 µm/px; 640×480, a few white cells each) with
`bcscan scan --force --quiet`, alternately, `--repeats` times each, so machine load hits both alike;
each run's rate is cells / scanning seconds (run.json: scans_s - model_load_s, the time after the model was
loaded, as benchmarks/pipeline_speed.py counts it) and cells / wall seconds of the whole command.  A second figure times the classifier alone (CellClassifier.predict on the same
cells' crops, each model at its own crop size), the stage a smaller network speeds up.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's bcscan, not an installed one

BCCD_MPP = 0.063


def scan_once(model: Path, scans: Path, out: Path) -> dict:
    """One `bcscan scan` of `scans` with `model`: cells, wall seconds and the run's own timings."""
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "bcscan.cli", "scan", str(scans), "--out", str(out), "--model",
                           str(model), "--mpp", str(BCCD_MPP), "--force", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.time() - t0
    if done.returncode not in (0, 1):
        sys.exit(f"bcscan scan with {model} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    run = json.loads((out / "run.json").read_text())
    cells = int(sum(1 for _ in open(out / "cells.csv", encoding="utf-8")) - 1)
    return {"cells": cells, "wall_s": wall, "timings": run.get("timings", {}), "device": run.get("device")}


def classifier_alone(model: Path, fields: list[Path], repeats: int) -> dict:
    """Cells/s of CellClassifier.predict on the fields' cells, cut at the model's own crop size."""
    import cv2

    from bcscan.model.classifier import CellClassifier, ClassificationParams
    from bcscan.model.network import load_model_info
    from bcscan.scan.pipeline import cells_in_field
    from bcscan.scan.segmentation import SegmentationParams

    crop_um = load_model_info(model).crop_um
    crops = np.concatenate([cells_in_field(cv2.imread(str(f))[..., ::-1], BCCD_MPP, SegmentationParams(),
                                           crop_um).crops for f in fields])
    clf = CellClassifier(ClassificationParams(model=str(model), device="cpu"))
    clf.predict(crops[:64])  # compile
    rates = []
    for _ in range(repeats):
        t0 = time.time()
        clf.predict(crops)
        rates.append(len(crops) / (time.time() - t0))
    return {"cells": int(len(crops)), "cells_per_s": float(np.median(rates)), "engine": clf.engine}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--baseline", type=Path, required=True, help="today's model (.keras, its .json beside it)")
    ap.add_argument("--candidate", type=Path, default=ROOT / "models" / "bcscan-vgg16.keras")
    ap.add_argument("--fields", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    fields = sorted((args.data_dir / "bccd" / "JPEGImages").glob("*.jpg"))[:args.fields]
    models = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        scans = Path(tmp) / "scans" / "patient"
        scans.mkdir(parents=True)
        for f in fields:
            shutil.copy(f, scans / f.name)
        runs = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                runs[name].append(scan_once(model, scans.parent, Path(tmp) / f"out-{name}"))
    alone = {name: classifier_alone(model, fields, args.repeats) for name, model in models.items()}
    result = {"fields": len(fields), "repeats": args.repeats, "models": {k: str(v) for k, v in models.items()}}
    for name, rs in runs.items():
        scanning_s = [r["timings"]["scans_s"] - r["timings"]["model_load_s"] for r in rs]
        result[name] = {"cells": rs[0]["cells"], "device": rs[0]["device"],
                        "wall_cells_per_s": float(np.median([r["cells"] / r["wall_s"] for r in rs])),
                        "scanning_cells_per_s": float(np.median([r["cells"] / s for r, s in zip(rs, scanning_s)])),
                        "classifier_alone": alone[name]}
    b, c = result["baseline"], result["candidate"]
    print(json.dumps(result, indent=2))
    print(f"\ncandidate / baseline, cells per second: `bcscan scan` scanning (run.json) "
          f"{c['scanning_cells_per_s'] / b['scanning_cells_per_s']:.2f}, whole command "
          f"{c['wall_cells_per_s'] / b['wall_cells_per_s']:.2f}")
    print(f"classifier alone ({c['classifier_alone']['engine']} vs {b['classifier_alone']['engine']}): "
          f"{c['classifier_alone']['cells_per_s'] / b['classifier_alone']['cells_per_s']:.2f}")


if __name__ == "__main__":
    main()
