"""Pipelined `bcscan scan` against each stage alone and against the one-process path, by slide size.

    .venv/bin/python benchmarks/pipeline_speed.py [--sizes 20000,28284,40000] [--workers N]
                                                  [--model PATH] [--json PATH]

Why: the pipeline (bcscan/batch/executors/pipelined.py) reads and segments tiles in worker processes while the
main process classifies, so a scan should take little more than its slowest stage, clearly less
than with `--tile-workers 0`, and its memory should not grow with the slide.  The results are
ratios measured side by side in one run; absolute seconds depend on the machine and its load.

For each size (square side in level-0 pixels; 20000/28284/40000 = areas 1x/2x/4x) a pyramidal
TIFF is built from the BCCD fields (../shared/data/bccd/JPEGImages, 0.065 um/px) in sorted
order, repeated to fill it, alone in its scan folder.  Then, in this order:
  1. each stage alone, in this process, over the tiles bcscan plans: OpenSlide read_region of
     the same level windows (raw), read_tile, segment, and the owned cells' crops classified by
     each bare engine (Keras/XLA; ONNX Runtime session when installed; batches of 32/64/128) and
     by CellClassifier.predict (its default engine) at that engine's best batch;
  2. `bcscan scan --force --quiet` as a subprocess, pipelined (--workers N, else bcscan's default)
     then with --tile-workers 0: wall time and peak RSS of the process tree (main + tile workers,
     summed, so shared pages count once per process), sampled every 0.05 s.
"Scanning" is the run's processing time after the model was loaded (run.json timings: scans_s -
model_load_s): what pipelining can shorten.  The whole run adds planning (hashing the slide),
loading the model, imports and writing the tables and reports.
Slides are written to a temporary folder ($TMPDIR), one size at a time (40000^2: 4.8 GB in memory while it is written).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from bccd_mosaic import bccd_fields, write_bccd_slide

from bcscan.batch.settings import PipelineParams
from bcscan.model.classifier import ClassificationParams, resolve_model_path, to_model_input
from bcscan.model.network import load_model_info
from bcscan.scan.crops import crop_side_px
from bcscan.scan.pipeline import owned_cells
from bcscan.scan.quality import measure_tile
from bcscan.scan.reading import ReadingParams, open_scan
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.scan.tiling import TilingParams, plan_tiles, read_tile

BATCH_SIZES = (32, 64, 128)
SWEEP_CROPS = 512
MB = 1024 * 1024


# ----------------------------------------------------------------------------- slides

def build_slide(fields: list[Path], side: int, folder: Path) -> Path:
    path = folder / "slide.tif"
    write_bccd_slide(path, fields, side, side)
    return path


# ----------------------------------------------------------------------------- stages alone

def level_window(plan, tile, level_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """x, y, width, height of the region tiling.read_tile reads for `tile` (same arithmetic)."""
    factor = plan.working_mpp / plan.level_mpp
    x0, y0, x1, y1 = tile.read
    lx0, ly0 = math.floor(x0 * factor), math.floor(y0 * factor)
    lx1 = min(max(math.ceil(x1 * factor), lx0 + 1), level_size[0])
    ly1 = min(max(math.ceil(y1 * factor), ly0 + 1), level_size[1])
    return lx0, ly0, lx1 - lx0, ly1 - ly0


def time_raw_reads(slide: Path, plan) -> float:
    """OpenSlide read_region of every tile's level window, as an RGBA array; a fresh handle, cold tile cache."""
    import openslide

    handle = openslide.OpenSlide(str(slide))
    down = handle.level_downsamples[plan.level]
    total = 0.0
    for tile in plan.tiles:
        x, y, w, h = level_window(plan, tile, handle.level_dimensions[plan.level])
        t0 = time.perf_counter()
        np.asarray(handle.read_region((round(x * down), round(y * down)), plan.level, (w, h)))
        total += time.perf_counter() - t0
    handle.close()
    return total


def time_tile_stages(slide: Path, crop_um: float, input_size: int) -> tuple[dict, np.ndarray]:
    """read_tile and segment of every planned tile, each timed alone, one tile in memory at a time;
    also the crops of the cells each tile owns (pipeline.owned_cells, as a scan cuts them)."""
    seg_params = SegmentationParams()
    side = crop_side_px(crop_um, seg_params.working_mpp)
    t_read = t_seg = 0.0
    crops = []
    with open_scan(slide, ReadingParams()) as scan:
        plan = plan_tiles(scan, seg_params.working_mpp, TilingParams())
        t_raw = time_raw_reads(slide, plan)
        for tile in plan.tiles:
            t0 = time.perf_counter()
            rgb = read_tile(scan, plan, tile)
            t1 = time.perf_counter()
            seg = segment(rgb, seg_params.working_mpp, seg_params)
            quality = measure_tile(rgb, seg, seg_params)  # part of the segment stage, as in a scan
            t_read, t_seg = t_read + t1 - t0, t_seg + time.perf_counter() - t1
            crops.append(owned_cells(rgb, seg, plan, tile, side, input_size, quality).crops)
    stages = {"level": plan.level, "tiles": len(plan.tiles), "tiles_skipped": plan.skipped,
              "working_mp": plan.width * plan.height / 1e6,
              "read_raw_s": t_raw, "read_tile_s": t_read, "segment_s": t_seg}
    return stages, np.concatenate(crops)


def batches_of(x: np.ndarray, size: int, pad: bool) -> list[np.ndarray]:
    """Batches of `size` as CellClassifier.predict makes them: for XLA the last one padded to a power of two."""
    out = []
    for start in range(0, len(x), size):
        batch = x[start:start + size]
        extra = min(size, 1 << (len(batch) - 1).bit_length()) - len(batch) if pad else 0
        out.append(np.concatenate([batch, np.zeros((extra,) + batch.shape[1:], batch.dtype)]) if extra else batch)
    return out


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_classify(crops: np.ndarray, model_path: Path) -> dict:
    """Each bare engine (TensorFlow/XLA; ONNX Runtime when installed) at its best batch size (chosen on
    the first SWEEP_CROPS crops), then bcscan's CellClassifier (its default engine) at that batch size;
    each timed over all crops after running every batch shape once."""
    from bcscan.model.classifier import CellClassifier, configure_backend
    from bcscan.model.network import load_keras_model

    device = configure_backend()  # the process-wide settings CellClassifier uses, set before both
    import tensorflow as tf

    model, info = load_keras_model(model_path)
    xla = tf.function(lambda b: model(b, training=False), jit_compile=True)
    engines = {"tensorflow-xla": lambda b: xla(b).numpy()}
    try:
        from bcscan.model.onnx_backend import OnnxRunner

        engines["onnxruntime"] = OnnxRunner(model)
    except ImportError:
        pass
    x = to_model_input(crops, info.input_size)

    def timed_passes(run, data, size, pad) -> float:
        batches = batches_of(data, size, pad)
        for batch in {b.shape: b for b in batches}.values():
            run(batch)
        return seconds(lambda: [run(b) for b in batches])

    bare, best = {}, {}
    for engine, run in engines.items():
        pad = engine == "tensorflow-xla"
        sweep = {size: timed_passes(run, x[:SWEEP_CROPS], size, pad) for size in BATCH_SIZES}
        best[engine] = min(sweep, key=sweep.get)
        bare[engine] = timed_passes(run, x, best[engine], pad)
    engine = CellClassifier(ClassificationParams(model=str(model_path))).engine.split("/")[1]
    classifier = CellClassifier(ClassificationParams(model=str(model_path), batch_size=best[engine]))
    first_batch_s = seconds(lambda: classifier.predict(crops[:best[engine]]))
    classifier.predict(crops[len(crops) - len(crops) % best[engine]:])  # the last batch's shape
    return {"device": device, "engine": engine, "batch_size": best[engine], "bare_s": bare[engine],
            "bare_s_by_engine": bare, "best_batch_by_engine": best, "bare_xla_s": bare["tensorflow-xla"],
            "bcscan_first_batch_s": first_batch_s, "bcscan_s": seconds(lambda: classifier.predict(crops))}


# ----------------------------------------------------------------------------- the CLI

def tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass  # exited between listing and sampling
    return total


def run_cli(scan_dir: Path, out: Path, model: Path, tile_workers: int | None) -> dict:
    """`bcscan scan` from scratch: wall seconds, peak RSS of its process tree, cells found."""
    command = [str(Path(sys.executable).with_name("bcscan")), "scan", str(scan_dir), "--out", str(out),
               "--model", str(model), "--force", "--quiet"]
    if tile_workers is not None:
        command += ["--tile-workers", str(tile_workers)]
    with tempfile.TemporaryFile() as stderr:
        t0 = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        root, peak = psutil.Process(process.pid), 0
        while True:
            peak = max(peak, tree_rss(root))
            try:
                process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - t0
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command)} exited with {process.returncode}:\n"
                             f"{stderr.read().decode(errors='replace')[-3000:]}")
    with open(out / "scans.csv", newline="") as fh:
        cells = sum(int(row["n_cells"]) for row in csv.DictReader(fh))
    timings = json.loads((out / "run.json").read_text())["timings"]
    shutil.rmtree(out)
    return {"wall_s": wall, "peak_rss_mb": peak / MB, "cells": cells, **timings,
            "scanning_s": timings["scans_s"] - timings["model_load_s"]}


def measure_size(fields: list[Path], side: int, tmp: Path, model: Path, workers: int | None) -> dict:
    info = load_model_info(model)
    folder = tmp / f"slide-{side}"
    slide = build_slide(fields, side, folder)
    stages, crops = time_tile_stages(slide, info.crop_um, info.input_size)
    result = {"side": side, "level0_mp": side * side / 1e6, "crops": len(crops), **stages}
    result.update(time_classify(crops, model))
    result["pipelined"] = run_cli(folder, tmp / "out", model, workers)
    result["single"] = run_cli(folder, tmp / "out", model, 0)
    shutil.rmtree(folder)
    return result


# ----------------------------------------------------------------------------- tables

def blank_or(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return " " * width if value is None else format(value, spec)


def ratios(r: dict) -> dict:
    stages = {"read_tile": r["read_tile_s"], "segment": r["segment_s"], "classify": r["bcscan_s"]}
    slowest = max(stages, key=stages.get)
    piped, single = r["pipelined"], r["single"]
    return {"slowest_stage": slowest,
            "stage_sum_over_slowest": sum(stages.values()) / stages[slowest],
            "pipelined_scanning_over_slowest_stage": piped["scanning_s"] / stages[slowest],
            "pipelined_wall_over_slowest_stage": piped["wall_s"] / stages[slowest],
            "single_over_pipelined_scanning": single["scanning_s"] / piped["scanning_s"],
            "single_over_pipelined_wall": single["wall_s"] / piped["wall_s"],
            "bcscan_over_bare_classify_throughput": r["bare_s"] / r["bcscan_s"],
            "read_tile_over_raw_read_throughput": r["read_raw_s"] / r["read_tile_s"]}


def print_size(r: dict, workers: int) -> None:
    n, mp = r["crops"], r["level0_mp"]
    print(f"\n== {r['side']}x{r['side']}: {mp:.0f} MP at level 0, {r['working_mp']:.1f} MP at "
          f"{SegmentationParams().working_mpp} um/px read from level {r['level']}, {r['tiles']} tiles "
          f"({r['tiles_skipped']} blank skipped), {n} cells, {workers} tile worker(s)\n"
          f"   classify on {r['device']} with {r['engine']}, batch {r['batch_size']}; CellClassifier's first "
          f"batch {r['bcscan_first_batch_s']:.2f} s")
    rows = [("read: OpenSlide read_region (raw)", r["read_raw_s"], None),
            ("read: read_tile", r["read_tile_s"], None),
            ("segment", r["segment_s"], None),
            ("classify: bare Keras model, XLA", r["bare_xla_s"], None),
            (f"classify: bare model, {r['engine']}", r["bare_s"], None),
            ("classify: CellClassifier.predict", r["bcscan_s"], None)]
    for mode, label in (("pipelined", "pipelined"), ("single", "--tile-workers 0")):
        run = r[mode]
        rows += [(f"bcscan scan, {label}: scanning", run["scanning_s"], None),
                 (f"bcscan scan, {label}: whole run", run["wall_s"], run["peak_rss_mb"])]
    print(f"{'stage':<44}{'seconds':>9}{'L0 MP/s':>9}{'cells/s':>9}{'peak RSS MB':>13}")
    for label, secs, rss in rows:
        print(f"{label:<44}{secs:9.2f}{mp / secs:9.1f}{n / secs:9.1f}{blank_or(rss, '13.0f')}".rstrip())
    for mode in ("pipelined", "single"):
        run = r[mode]
        print(f"   {mode}: plan (hash) {run['plan_s']:.2f} s, model load {run['model_load_s']:.2f} s, "
              f"scanning {run['scanning_s']:.2f} s, rest (imports, tables, reports) "
              f"{run['wall_s'] - run['plan_s'] - run['scans_s']:.2f} s")

    q = r["ratios"]
    print(f"{'ratio':<52}{'value':>7}  target")
    for label, value, target in [
            (f"pipelined scanning / slowest stage ({q['slowest_stage']})", q["pipelined_scanning_over_slowest_stage"],
             "<= 1.25"),
            ("pipelined whole run / slowest stage", q["pipelined_wall_over_slowest_stage"], ""),
            ("--tile-workers 0 / pipelined, scanning", q["single_over_pipelined_scanning"],
             f">= 1.5 (upper bound sum/max of stages = {q['stage_sum_over_slowest']:.2f})"),
            ("--tile-workers 0 / pipelined, whole run", q["single_over_pipelined_wall"], ""),
            ("CellClassifier / bare model (same engine)", q["bcscan_over_bare_classify_throughput"], ">= 0.9"),
            ("CellClassifier / bare Keras model (XLA)", r["bare_xla_s"] / r["bcscan_s"], ""),
            ("read_tile / raw read throughput", q["read_tile_over_raw_read_throughput"], "")]:
        print(f"{label:<52}{value:7.2f}  {target}")
    if len({n, r["pipelined"]["cells"], r["single"]["cells"]}) > 1:
        print(f"WARNING: cell counts differ: stages {n}, pipelined {r['pipelined']['cells']}, "
              f"--tile-workers 0 {r['single']['cells']}")


def print_scaling(results: list[dict]) -> None:
    base = results[0]
    print(f"\n== scaling (vs {base['side']}x{base['side']})")
    print(f"{'side':>7}{'area x':>8}{'cells':>7}{'scanning s':>12}{'time x':>8}{'wall s':>8}{'wall x':>8}"
          f"{'RSS MB piped':>14}{'RSS MB single':>15}")
    for r in results:
        p, b = r["pipelined"], base["pipelined"]
        print(f"{r['side']:>7}{r['level0_mp'] / base['level0_mp']:8.2f}{p['cells']:7}{p['scanning_s']:12.2f}"
              f"{p['scanning_s'] / b['scanning_s']:8.2f}{p['wall_s']:8.2f}{p['wall_s'] / b['wall_s']:8.2f}"
              f"{p['peak_rss_mb']:14.0f}{r['single']['peak_rss_mb']:15.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,28284,40000", help="slide sides in level-0 pixels, comma-separated")
    parser.add_argument("--workers", type=int, help="--tile-workers of the pipelined runs [default: bcscan's]")
    parser.add_argument("--model", default=ClassificationParams().model)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1 (the non-pipelined runs use --tile-workers 0 anyway)")

    sizes = sorted(int(s) for s in args.sizes.split(","))
    fields = bccd_fields()
    model = resolve_model_path(args.model).resolve()
    workers = PipelineParams(workers=-1 if args.workers is None else args.workers).worker_count()

    with tempfile.TemporaryDirectory(prefix="bcscan-speed-") as tmp:
        results = []
        for side in sizes:
            result = measure_size(fields, side, Path(tmp), model, args.workers)
            result["ratios"] = ratios(result)
            print_size(result, workers)
            results.append(result)
    print_scaling(results)
    if args.json:
        args.json.write_text(json.dumps({"tile_workers": workers, "model": str(model),
                                         "sizes": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
