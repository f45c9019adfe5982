"""Wall time of the same batch with 1 and 2 Dask worker processes (and in-process, for reference).

    python benchmarks/dask_workers.py [--slides 4] [--fields 4] [--workers 1 2] [--model PATH]
                                      [--cpu-threads 0] [--no-local]

Builds synthetic pyramidal TIFF slides and field PNGs (and one bad file), then times
`run_batch` with `DaskExecutor(workers=N)` end to end for each N, every run from scratch (`--force`
into a fresh OUT_DIR), so each figure includes what `bcscan scan --dask-workers N` really costs:
starting the worker processes, importing TensorFlow and loading the model once per worker.
Also prints the summed per-scan compute seconds (scans.csv), which shows how much each scan
slows down when the workers compete for the same cores, and checks that every run wrote the
same cells.csv.  Without --model, an untrained full-width VGG-16 (64 px input, batch
norm) stands in: timing does not depend on the weights.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pandas as pd  # noqa: E402

from bcscan.batch.executors import InProcessExecutor  # noqa: E402
from bcscan.batch.outline import run_batch  # noqa: E402
from bcscan.batch.plan import BatchRun  # noqa: E402
from bcscan.batch.settings import load_settings  # noqa: E402
from bcscan.testing.synthetic import write_batch  # noqa: E402


def make_batch(scans: Path, n_slides: int, n_fields: int) -> None:
    write_batch(scans, n_slides, n_fields, slide_size=(3000, 2200), wbc_per_slide=30, seed=500)


def make_model(path: Path) -> Path:
    from bcscan.model.network import ModelInfo, build_vgg16, save_model

    model = build_vgg16(64, batch_norm=True, hidden_units=256, seed=1)
    save_model(model, path, ModelInfo(name="untrained-benchmark", classes=["leukemic", "normal"], input_size=64,
                                      crop_um=20.0, working_mpp=0.4))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", type=Path, help="model .keras (default: an untrained stand-in)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="TensorFlow intra-op threads per process (0 = all)")
    parser.add_argument("--no-local", action="store_true", help="skip the in-process reference run")
    args = parser.parse_args()

    from bcscan.batch.executors.dask_cluster import DaskExecutor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scans = tmp / "scans"
        make_batch(scans, args.slides, args.fields)
        model = args.model or make_model(tmp / "model" / "bench.keras")
        settings = load_settings(None, {"classification": {"model": str(model), "cpu_threads": args.cpu_threads}})
        print(f"batch: {args.slides} slides 3000x2200 + {args.fields} fields + 1 bad file; "
              f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}; cpu_threads={args.cpu_threads}")

        rows, cells = [], {}
        runs = [("in-process run_batch", None)] if not args.no_local else []
        runs += [(f"dask LocalCluster, {n} worker(s)", n) for n in args.workers]
        for label, n in runs:
            out = tmp / f"out-{n or 'local'}"
            t0 = time.perf_counter()
            executor = InProcessExecutor() if n is None else DaskExecutor(workers=n)
            result = run_batch(BatchRun(scans, out, settings, force=True), executor)
            wall = time.perf_counter() - t0
            scan_seconds = pd.read_csv(out / "scans.csv")["seconds"].sum()
            cells[label] = (out / "cells.csv").read_text()
            rows.append((label, n, wall, scan_seconds, result.n_cells))
            print(f"{label:32s} wall {wall:7.1f} s   summed per-scan compute {scan_seconds:7.1f} s   "
                  f"{result.n_cells} cells", flush=True)

        by_workers = {n: wall for _, n, wall, _, _ in rows if n is not None}
        if 1 in by_workers and 2 in by_workers:
            print(f"speed-up 2 workers vs 1: {by_workers[1] / by_workers[2]:.2f}x (wall time, end to end)")
        print("cells.csv identical across runs:", len(set(cells.values())) == 1)


if __name__ == "__main__":
    main()
