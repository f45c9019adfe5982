"""Slides for the speed benchmarks, built from real smear fields: BCCD fields (640×480,
~0.065 µm/px) laid row by row in sorted file order, repeated when the area needs more."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bcscan.testing.groundtruth import SHARED_DATA
from bcscan.testing.synthetic import write_pyramidal_tiff

BCCD_MPP = 0.065


def bccd_fields(data: Path = SHARED_DATA) -> list[Path]:
    folder = data / "bccd" / "JPEGImages"
    fields = sorted(folder.glob("*.jpg"))
    if not fields:
        raise SystemExit(f"no BCCD fields in {folder}: the benchmarks need the shared data (../shared/data)")
    return fields


def write_bccd_slide(path: Path, fields: list[Path], width: int, height: int, mpp: float = BCCD_MPP) -> None:
    """A width×height pyramidal TIFF of `fields` (each decoded once), recording `mpp`."""
    fw, fh = Image.open(fields[0]).size
    mosaic = np.full((height, width, 3), 255, np.uint8)
    decoded: dict[int, np.ndarray] = {}
    places = [(x, y) for y in range(0, height, fh) for x in range(0, width, fw)]
    for k, (x, y) in enumerate(places):
        i = k % len(fields)
        if i not in decoded:
            decoded[i] = np.asarray(Image.open(fields[i]).convert("RGB"))
        part = mosaic[y:y + fh, x:x + fw]
        part[:] = decoded[i][:part.shape[0], :part.shape[1]]
    write_pyramidal_tiff(path, mosaic, mpp)
