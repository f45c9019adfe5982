"""How sharp is each training source at the classifier's input scale?  A lab scanned sharper than another (or one
class sharper than the other within a lab) is a cue a model can learn instead of the cell, and the blur
augmentation (`augmentation.blur_um`) should span the gap.

    python benchmarks/lab_sharpness.py [DATA_DIR] [--config configs/train-fourlabs.yaml] [--images 40]

Every source folder of the recipe: `--images` images spread over the folder, resampled from the source's µm/px
to the recipe's crop scale (crop_um / input_size), and the Gaussian σ of their strongest edges in µm
(`bcscan.scan.quality.edge_sigma_px`, the tile check's blur figure, green channel, glass from the 95th percentile).
Prints one markdown table: median, 10th and 90th percentile per folder.
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train-fourlabs.yaml")
    ap.add_argument("--images", type=int, default=40)
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


if __name__ == "__main__":
    main()
