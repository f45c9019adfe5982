"""WBCs counted by eye on 16 Ghaderzadeh fields against the detector's counts: the one check of detection on
fields crowded with blasts (the box-labelled sources are normal blood).

    python benchmarks/blast_fields.py [--data ../shared/data] [--params foreground_od=0.05,split_min_radius_um=2 ...]

The fields: 4 per folder drawn with random.Random(8).sample from each sorted folder listing
(bcscan.testing.groundtruth.ghaderzadeh_fields). Counted by a developer (not a haematologist) on the image
enlarged 640 x 640 under a 4 x 4 grid: every white cell with any of its nucleus in the field, cells cut by the
edge included, platelets and smudged pink masses not. Benign (hematogone) fields hold small dark cells that are
hard to tell from platelet clumps at this scale, so their counts are the least certain (about +-1).
Prints per field: by eye, then each parameter set's count (the shipped defaults first), and per set the total,
the mean absolute error and the fields counted exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import yaml

from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.testing import groundtruth as V

BY_EYE = {
    "Benign/WBC-Benign-131.jpg": 6, "Benign/WBC-Benign-212.jpg": 7, "Benign/WBC-Benign-217.jpg": 4,
    "Benign/WBC-Benign-073.jpg": 10,
    "Early/WBC-Malignant-Early-219.jpg": 6, "Early/WBC-Malignant-Early-804.jpg": 7,
    "Early/WBC-Malignant-Early-047.jpg": 10, "Early/WBC-Malignant-Early-095.jpg": 6,
    "Pre/WBC-Malignant-Pre-161.jpg": 2, "Pre/WBC-Malignant-Pre-288.jpg": 26, "Pre/WBC-Malignant-Pre-925.jpg": 13,
    "Pre/WBC-Malignant-Pre-583.jpg": 20,
    "Pro/WBC-Malignant-Pro-236.jpg": 5, "Pro/WBC-Malignant-Pro-450.jpg": 12, "Pro/WBC-Malignant-Pro-732.jpg": 6,
    "Pro/WBC-Malignant-Pro-038.jpg": 3,
}


def parse_params(text: str) -> SegmentationParams:
    """`name=value,...` on top of the shipped defaults (values as YAML reads them: 2.5, false)."""
    changes = dict(item.split("=", 1) for item in text.split(",") if item)
    return dataclasses.replace(SegmentationParams(), **{k.strip(): yaml.safe_load(v) for k, v in changes.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=V.SHARED_DATA)
    ap.add_argument("--params", action="append", default=[], help="name=value,... over the shipped defaults")
    args = ap.parse_args(argv)
    root = args.data / "ghaderzadeh-all" / "images"
    if not root.is_dir():
        print(f"no ghaderzadeh-all/images under {args.data}", file=sys.stderr)
        return 2
    sets = {"shipped": SegmentationParams(), **{text: parse_params(text) for text in args.params}}
    images = {name: V.read_rgb(root / name) for name in BY_EYE}
    eye = np.array(list(BY_EYE.values()))
    counts = {label: np.array([len(segment(rgb, V.GHADERZADEH_MPP, p).cells) for rgb in images.values()])
              for label, p in sets.items()}
    print("| field | by eye | " + " | ".join(sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for i, name in enumerate(BY_EYE):
        print(f"| {name} | {eye[i]} | " + " | ".join(str(c[i]) for c in counts.values()) + " |")
    blasts = np.array([not name.startswith("Benign") for name in BY_EYE])
    for label, c in counts.items():
        print(f"- {label}: {c.sum()} counted where the eye saw {eye.sum()} (B-ALL fields {c[blasts].sum()} / "
              f"{eye[blasts].sum()}); mean absolute error {np.abs(c - eye).mean():.2f}; exact on {(c == eye).sum()} "
              f"of {len(eye)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
