"""The scan-time domain check (bcscan.model.domain) on real cells: how often it calls the training
labs' own held-out images outside the validated range (should be rare), and how often other labs
and re-stained, greyish, faded, over-stained or blurred cells (should be nearly always).

    python benchmarks/domain_check.py ../shared/data [--model models/bcscan-vgg16.keras]
        [--config configs/train-fourlabs.yaml] [--splits models/bcscan-vgg16/splits.csv] [--write]

Cells are cut exactly as `bcscan train` and `bcscan scan` cut them (cached under --work).  The
reference is fitted on the model's own training split (splits.csv), as `bcscan train` fits it;
--write stores it in the model's metadata (.json beside the .keras; the model file is unchanged).
A "scan" of 20 images pools their cells, as a slide's median pools many cells.
Degradations act on the crops the model sees (blur in µm at the recipe's crop_um / input_size).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np

from bcscan.model.domain import distances
from bcscan.model.network import load_model_info, metadata_path
from bcscan.scan.appearance import crop_appearance
from bcscan.training.baselines import lab_stats, restain
from bcscan.training.domain_fit import fit_domain
from bcscan.training.recipe import SourceSpec, load_train_config
from bcscan.training.samples import collect_samples

OTHER_LABS = {  # labs to score when the model never saw them: (source folders, µm/px)
    "mll-bone-marrow": ([f"mll-bone-marrow/{c}" for c in ("BLA", "LYT", "MON", "NGS", "EOS")], 0.075),
    "lmu-aml-blood": ([f"lmu-aml-blood/{c}" for c in ("MYO", "MOB", "NGS", "LYT", "MON", "EOS", "BAS")], 0.117),
    "bccd": (["bccd/JPEGImages"], 0.063),
}
SCAN_IMAGES = 20


def per_image(x: np.ndarray, image: np.ndarray, images: np.ndarray) -> np.ndarray:
    figures = crop_appearance(x)
    return np.array([np.median(figures[image == i], axis=0) for i in images])


def per_scan(x: np.ndarray, image: np.ndarray, images: np.ndarray, rng) -> np.ndarray:
    """Pools of SCAN_IMAGES images' cells: the median over many cells, as for a slide."""
    order = rng.permutation(images)
    pools = [order[i:i + SCAN_IMAGES] for i in range(0, len(order) - SCAN_IMAGES + 1, SCAN_IMAGES)]
    figures = crop_appearance(x)
    return np.array([np.median(figures[np.isin(image, pool)], axis=0) for pool in pools])


def greyish(x: np.ndarray, colour: float = 0.5) -> np.ndarray:
    """The stain's colour mostly washed out (pure grey images are refused when read)."""
    grey = cv2.cvtColor(x.reshape(-1, x.shape[2], 3), cv2.COLOR_RGB2GRAY).reshape(x.shape[:3])[..., None]
    return np.clip(grey + colour * (x.astype(np.float32) - grey), 0, 255).astype(np.uint8)


def degradations(x_other: dict[str, np.ndarray], px_per_um: float) -> dict[str, callable]:
    od = lambda x, f: np.clip(255.0 * ((x.astype(np.float64) + 1) / 256.0) ** f, 0, 255).astype(np.uint8)  # noqa: E731
    out = {
        "blur sigma 0.5 um": lambda x: np.stack([cv2.GaussianBlur(c, (0, 0), 0.5 * px_per_um) for c in x]),
        "blur sigma 1 um": lambda x: np.stack([cv2.GaussianBlur(c, (0, 0), 1.0 * px_per_um) for c in x]),
        "greyish (colour x 0.5)": greyish,
        "faded (OD x 0.5)": lambda x: od(x, 0.5),
        "over-stained (OD x 1.8)": lambda x: od(x, 1.8),
    }
    for lab, x in x_other.items():
        mean, std = lab_stats(x)
        out[f"re-stained as {lab}"] = lambda x, m=mean, s=std: restain(x, m, s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model", type=Path, default=Path("models/bcscan-vgg16.keras"))
    parser.add_argument("--config", type=Path, default=Path("configs/train-fourlabs.yaml"))
    parser.add_argument("--splits", type=Path, default=Path("models/bcscan-vgg16/splits.csv"))
    parser.add_argument("--work", type=Path, default=Path("runs/domain-work"))
    parser.add_argument("--write", action="store_true", help="store the fitted reference in the model's metadata")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cfg = load_train_config(args.config)
    info = load_model_info(args.model)

    def cells(sources):
        return collect_samples(args.data_dir, sources, "cells", cfg.input_size, cfg.crop_um, 1.0, cfg.segmentation,
                               cache_dir=args.work)

    samples = cells(cfg.sources)
    split = {row["file"]: row["split"] for row in csv.DictReader(open(args.splits, encoding="utf-8"))}
    split_img = np.array([split.get(f, "") for f in samples.files])
    reference = fit_domain(samples, split_img)
    print(f"reference: {len(reference['labs'])} lab(s) {sorted(reference['labs'])}, threshold "
          f"{reference['threshold']} (quantile {reference['quantile']} of the training images' distances); "
          f"validation images outside: {reference['validation_images_outside']:.3f}")
    if args.write:
        meta = json.loads(metadata_path(args.model).read_text(encoding="utf-8"))
        meta["domain"] = reference
        metadata_path(args.model).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote the reference into {metadata_path(args.model)} (model {info.sha256[:12]} unchanged)")

    rows = []

    def report(name: str, x: np.ndarray, image: np.ndarray, images: np.ndarray) -> None:
        d_img = distances(reference, per_image(x, image, images))
        d_scan = distances(reference, per_scan(x, image, images, rng)) if len(images) >= SCAN_IMAGES else []
        row = {"set": name, "images": int(len(images)), "images_outside": round(float(np.mean(d_img > reference["threshold"])), 3),
               "scans": len(d_scan),
               "scans_outside": round(float(np.mean(np.asarray(d_scan) > reference["threshold"])), 3) if len(d_scan) else None,
               "median_distance": round(float(np.median(d_img)), 2)}
        rows.append(row)
        print(f"{name:44s} images {row['images']:5d} outside {row['images_outside']:.3f}   "
              f"scans of {SCAN_IMAGES} images {row['scans']:4d} outside "
              f"{row['scans_outside'] if row['scans_outside'] is not None else '-'}   median distance {row['median_distance']}")

    test = np.nonzero((split_img == "test") & (samples.n_cells > 0))[0]
    cell_of_test = np.isin(samples.image, test)
    lab_of_image = np.array([samples.sources[s].dataset_name for s in samples.source])
    for lab in sorted(set(lab_of_image[test])):
        own = test[lab_of_image[test] == lab]
        report(f"{lab}: test split (training lab)", samples.x, samples.image, own)
    other = {}
    for lab, (folders, mpp) in OTHER_LABS.items():
        if lab in reference["labs"]:
            continue
        if not all((args.data_dir / f).is_dir() for f in folders):
            print(f"{lab}: not in {args.data_dir}, skipped")
            continue
        s = cells([SourceSpec(f, "normal", mpp, lab) for f in folders])
        other[lab] = s.x
        report(f"{lab} (another lab, never trained on)", s.x, s.image, np.nonzero(s.n_cells > 0)[0])
    x_test, image_test = samples.x[cell_of_test], samples.image[cell_of_test]
    for name, transform in degradations(other, cfg.input_size / cfg.crop_um).items():
        report(f"training labs' test split, {name}", transform(x_test), image_test, test)
    if args.json:
        args.json.write_text(json.dumps({"threshold": reference["threshold"], "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
