"""Draw a small example batch for the quick start: synthetic smears, no patient data.

    python examples/make_examples.py            # writes examples/data/
    bcscan scan examples/data --out examples/out

Each patient folder holds a pyramidal TIFF slide (scale in its resolution tags,
as a scanner writes it) and/or a PNG field image (scale in its pHYs chunk).
The drawn cells are plain discs: they show the pipeline working, not biology.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bcscan.testing.synthetic import draw_smear, write_field_png, write_pyramidal_tiff

MPP = 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    args = parser.parse_args()
    batch = {
        "PAT-001": [("slide-1.tif", 4096, 3072, 40), ("field-1.png", 1280, 960, 3)],
        "PAT-002": [("slide-1.tif", 3072, 3072, 25)],
        "PAT-003": [("field-1.png", 1280, 960, 2)],
    }
    for seed, (patient, scans) in enumerate(batch.items()):
        for name, width, height, n_wbc in scans:
            rgb, _ = draw_smear(width, height, MPP, n_wbc, seed=seed * 10 + len(name))
            path = args.out / patient / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".tif"):
                write_pyramidal_tiff(path, rgb, MPP)
            else:
                write_field_png(path, rgb, MPP)
            print(f"wrote {path} ({width}x{height} px, {MPP} µm/px, {n_wbc} white cells)")


if __name__ == "__main__":
    main()
