"""How sharp is each training source at the classifier's input scale?  A lab scanned sharper than another (or one
class sharper than the other within a lab) is a cue a model can learn instead of the cell, and the blur
augmentation (`augmentation.blur_um`) should span the gap.

    python benchmarks/lab_sharpness.py [DATA_DIR] [--config configs/train-fourlabs.yaml] [--images 40]
    python benchmarks/lab_sharpness.py --model models/bcscan-vgg16.keras [--splits models/bcscan-vgg16/splits.csv]

Every source folder of the recipe: `--images` images spread over the folder, resampled from the source's µm/px
to the recipe's crop scale (crop_um / input_size), and the Gaussian σ of their strongest edges in µm
(`bcscan.scan.quality.edge_sigma_px`, the tile check's blur figure, green channel, glass from the 95th percentile).
Prints one markdown table: median, 10th and 90th percentile per folder.

With --model: does the model use that cue?  Per lab and class, up to 300 of the recipe's crops (its cache in --work)
that the model did not train on: the test split of --splits, and every cell of a lab the split does not hold (a
leave-one-lab-out fold's left-out lab); each blurred by 0, 0.15, 0.3 and 0.45 µm (Gaussian σ on the 64-px crop);
the share called leukemic at p >= 0.5.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bcscan.scan.quality import QualityParams, edge_sigma_px  # noqa: E402
from bcscan.scan.reading import resample  # noqa: E402
from bcscan.training.recipe import load_train_config  # noqa: E402


def edge_sigma_um(path: Path, mpp: float, scale: float, quality: QualityParams) -> float:
    """The σ (µm) of the strongest edges of the image at `path` (`mpp` µm/px) resampled to `scale` µm/px."""
    green = resample(np.ascontiguousarray(cv2.imread(str(path))[..., ::-1]), mpp, scale)[..., 1].astype(np.float32)
    return edge_sigma_px(green, float(np.percentile(green, 95)), scale, quality.min_edge_gradient,
                         quality.min_edge_px) * scale


BLUR_UM = (0.0, 0.15, 0.3, 0.45)


def blur_response(args, cfg) -> None:
    """The share of each (lab, class) called leukemic as its crops are blurred (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from precise_bn import recipe_samples

    from bcscan.model.network import CLASSES, LEUKEMIC, load_keras_model

    samples = recipe_samples(args.data_dir, cfg, args.work)
    with open(args.splits, newline="", encoding="utf-8") as fh:
        split = {row["file"]: row["split"] for row in csv.DictReader(fh)}
    unseen = np.array([split.get(f, "test") == "test" for f in samples.files])[samples.image]
    model, _ = load_keras_model(args.model)
    scale, rng = cfg.crop_um / cfg.input_size, np.random.default_rng(0)
    print(f"\n{args.model}: share called leukemic (p >= 0.5) of cells it did not train on, blurred by")
    print("| lab | class | cells | " + " | ".join(f"{b:g} µm" for b in BLUR_UM) + " |")
    print("|---|---|---|" + "---|" * len(BLUR_UM))
    for lab in dict.fromkeys(samples.dataset):
        for label, name in enumerate(CLASSES):
            pool = np.nonzero(unseen & (samples.dataset == lab) & (samples.label == label))[0]
            if not len(pool):
                continue
            crops = samples.x[rng.choice(pool, min(300, len(pool)), replace=False)]
            shares = []
            for blur in BLUR_UM:
                x = np.stack([cv2.GaussianBlur(c, (0, 0), blur / scale) for c in crops]) if blur else crops
                p = model.predict(x.astype(np.float32) / 255, batch_size=256, verbose=0)[:, CLASSES.index(LEUKEMIC)]
                shares.append(f"{np.mean(p >= 0.5):.2f}")
            print(f"| `{lab}` | {name} | {len(crops)} | " + " | ".join(shares) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train-fourlabs.yaml")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--model", type=Path, help="also: the share of cells this model calls leukemic as they blur")
    ap.add_argument("--splits", type=Path, default=ROOT / "models" / "bcscan-vgg16" / "splits.csv",
                    help="the model's split (splits.csv of its training report)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work", help="the recipe's crop cache")
    args = ap.parse_args()
    cfg, quality = load_train_config(args.config), QualityParams()
    scale = cfg.crop_um / cfg.input_size
    print(f"| source folder ({scale:.3f} µm/px) | label | images | edge σ, µm: median | p10 | p90 |")
    print("|---|---|---|---|---|---|")
    for source in cfg.sources:
        files = sorted(p for p in (args.data_dir / source.path).iterdir() if p.suffix.lower() in {".jpg", ".png"})
        picked = files[::max(1, len(files) // args.images)][:args.images]
        sigma = np.array([edge_sigma_um(f, source.mpp, scale, quality) for f in picked])
        sigma = sigma[np.isfinite(sigma)]
        print(f"| `{source.path}` | {source.label} | {len(sigma)} | {np.median(sigma):.2f} | "
              f"{np.percentile(sigma, 10):.2f} | {np.percentile(sigma, 90):.2f} |", flush=True)
    if args.model:
        blur_response(args, cfg)


if __name__ == "__main__":
    main()
