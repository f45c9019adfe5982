"""The cell classifier on this machine's device (GPU when there is one): crops/s of `CellClassifier.predict`
by batch size, as ratios measured side by side in one run, and the out-of-memory fallback at a batch
too large for the accelerator.

    python benchmarks/classifier_device.py [--batches 64,256,1024] [--crops 16384] [--oom-batch 131072]
    KERAS_BACKEND=jax python benchmarks/classifier_device.py   (a GPU machine with JAX but no TensorFlow)

The model is a freshly initialised VGG-16 with batch norm at 64 px (the shipped architecture; speed does not
depend on the weights), saved with bcscan's metadata, so the benchmark needs no model file.  With
`--oom-batch` the classifier starts at that batch size: on an accelerator it should halve the batch until it
fits and give the same p as the small batch (max |Δp| printed).  0 skips it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bcscan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--crops", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--oom-batch", type=int, default=0)
    args = ap.parse_args()

    from bcscan.model.classifier import CellClassifier, ClassificationParams, configure_backend
    from bcscan.model.network import CLASSES, ModelInfo, build_vgg16, save_model

    device = configure_backend()
    folder = Path(tempfile.mkdtemp())
    model_path = folder / "vgg16-bn.keras"
    save_model(build_vgg16(64, len(CLASSES), batch_norm=True), model_path,
               ModelInfo(name="vgg16-bn", classes=CLASSES, input_size=64, crop_um=24.0, working_mpp=0.4))
    crops = np.random.default_rng(0).integers(0, 256, (args.crops, 64, 64, 3), dtype=np.uint8)
    batches = [int(b) for b in args.batches.split(",")]
    classifiers = {b: CellClassifier(ClassificationParams(model=str(model_path), batch_size=b)) for b in batches}
    for clf in classifiers.values():  # compile outside the timing
        clf.predict(crops[: clf.batch_size])
    seconds = {b: [] for b in batches}
    for _ in range(args.rounds):  # interleaved, so a busy machine slows every batch size alike
        for b, clf in classifiers.items():
            t0 = time.perf_counter()
            clf.predict(crops)
            seconds[b].append(time.perf_counter() - t0)
    rate = {b: args.crops / float(np.median(seconds[b])) for b in batches}
    engine = classifiers[batches[0]].engine
    print(f"device {device}, engine {engine}, {args.crops} crops of 64 px, median of {args.rounds} rounds")
    print(f"{'batch':>7} {'crops/s':>10} {'vs batch ' + str(batches[0]):>14}")
    for b in batches:
        print(f"{b:>7} {rate[b]:>10.0f} {rate[b] / rate[batches[0]]:>14.2f}")
    if args.oom_batch:
        big = np.resize(crops, (args.oom_batch, 64, 64, 3))
        clf = CellClassifier(ClassificationParams(model=str(model_path), batch_size=args.oom_batch))
        t0 = time.perf_counter()
        p_big = clf.predict(big)
        p_small = classifiers[batches[0]].predict(big[: args.crops])
        print(f"out-of-memory fallback: asked batch {args.oom_batch}, ran at {clf.batch_size} on {clf.device} "
              f"({time.perf_counter() - t0:.0f} s); max |Δp| vs batch {batches[0]}: "
              f"{float(np.abs(p_big[: args.crops] - p_small).max()):.2g}")


if __name__ == "__main__":
    main()
