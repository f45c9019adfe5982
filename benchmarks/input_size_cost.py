"""What a finer cell crop costs (issue 11, item 4): VGG-16 (batch norm, the shipped head) inference
on CPU at 64, 96 and 128 px per 24 µm crop, measured side by side in one run (rounds interleaved,
so a busy machine slows every size alike), and how much detail each source can give such a crop.

    python benchmarks/input_size_cost.py [--sizes 64,96,128] [--batch 64] [--rounds 5]

Prints crops/s per size and its ratio to 64 px, and the µm/px each size asks of a 24 µm crop next to
the native scale of each training source: a crop finer than its source's scan adds pixels, not detail.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

CROP_UM = 24.0
SOURCE_MPP = {"ghaderzadeh-all": 0.45, "pbc-normal": 0.088, "mll-bone-marrow": 0.075, "scan working scale": 0.4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,96,128")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from bcscan.model.classifier import configure_backend
    from bcscan.model.network import build_vgg16
    from bcscan.training.predict import predict_probs

    configure_backend("cpu")
    rng = np.random.default_rng(0)
    models = {s: build_vgg16(s, batch_norm=True) for s in sizes}
    crops = {s: rng.integers(0, 256, (args.batch * 4, s, s, 3), dtype=np.uint8) for s in sizes}
    for s in sizes:  # trace and warm up outside the timing
        predict_probs(models[s], crops[s][: args.batch], args.batch)
    seconds = {s: [] for s in sizes}
    for _ in range(args.rounds):
        for s in sizes:
            t0 = time.perf_counter()
            predict_probs(models[s], crops[s], args.batch)
            seconds[s].append(time.perf_counter() - t0)
    rate = {s: len(crops[s]) / float(np.median(seconds[s])) for s in sizes}
    print(f"{'input px':>8} {'µm/px of a 24 µm crop':>22} {'crops/s':>9} {'vs 64 px':>9}")
    for s in sizes:
        print(f"{s:>8} {CROP_UM / s:>22.3f} {rate[s]:>9.1f} {rate[s] / rate[sizes[0]]:>9.2f}")
    print("\nnative scale of each source (µm/px) and the crop side it can fill with real detail:")
    for name, mpp in SOURCE_MPP.items():
        print(f"  {name:<20} {mpp:>6.3f} µm/px → {CROP_UM / mpp:>5.0f} px per 24 µm")


if __name__ == "__main__":
    main()
