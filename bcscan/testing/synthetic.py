"""Synthetic smear fields and pyramidal TIFF slides, drawn in code.

For the quick start, tests and benchmarks: no patient image is ever shipped
with bcscan.  Drawn cells are deliberately simple (discs): they exercise the
pipeline's geometry, not its biology.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GLASS = (236, 232, 238)
RBC = (222, 150, 160)
RBC_PALLOR = (232, 190, 195)
CYTOPLASM = (190, 175, 215)
NUCLEUS = (85, 35, 125)


@dataclass(frozen=True)
class DrawnCell:
    x: float   # centre, pixels
    y: float
    radius: float  # whole-cell radius, pixels

    @property
    def box(self) -> tuple[int, int, int, int]:
        r = self.radius
        return (int(self.x - r), int(self.y - r), int(np.ceil(self.x + r)), int(np.ceil(self.y + r)))


def draw_smear(width: int, height: int, mpp: float, n_wbc: int, rbc_density: float = 0.25, seed: int = 0,
               margin_um: float = 10.0) -> tuple[np.ndarray, list[DrawnCell]]:
    """A field of red cells (≈7.5 µm) with `n_wbc` white cells (≈12 µm, violet nucleus) that do not touch."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    px = 1.0 / mpp
    wbcs: list[DrawnCell] = []
    margin = margin_um * px
    for _ in range(n_wbc * 50):
        if len(wbcs) == n_wbc:
            break
        r = rng.uniform(5.5, 7.0) * px
        x, y = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        if all(np.hypot(x - c.x, y - c.y) > (r + c.radius + 4 * px) for c in wbcs):
            wbcs.append(DrawnCell(float(x), float(y), float(r)))
    n_rbc = int(rbc_density * width * height / (np.pi * (3.75 * px) ** 2))
    for _ in range(n_rbc):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        if any(np.hypot(x - c.x, y - c.y) < c.radius + 4.5 * px for c in wbcs):
            continue
        r = rng.uniform(3.4, 4.0) * px
        cv2.circle(img, (int(x), int(y)), int(round(r)), RBC, -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), int(round(r * 0.4)), RBC_PALLOR, -1, cv2.LINE_AA)
    for c in wbcs:
        centre = (int(round(c.x)), int(round(c.y)))
        cv2.circle(img, centre, int(round(c.radius)), CYTOPLASM, -1, cv2.LINE_AA)
        axes = (int(round(c.radius * 0.62)), int(round(c.radius * 0.5)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, NUCLEUS, -1, cv2.LINE_AA)
    noise = rng.normal(0, 2.0, img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, wbcs


def write_pyramidal_tiff(path: Path, rgb: np.ndarray, mpp: float, tile: int = 256, min_side: int = 512,
                         compression: str = "zlib") -> None:
    """A tiled, multi-resolution TIFF that OpenSlide opens as 'generic-tiff' with its scale.

    Levels are halvings down to `min_side`; zlib needs no extra codec (JPEG needs imagecodecs).
    """
    import tifffile

    levels = [rgb]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=rgb.nbytes > 2**31) as tif:
        for i, level in enumerate(levels):
            scale = rgb.shape[1] / level.shape[1]
            pixels_per_cm = 1e4 / (mpp * scale)
            tif.write(level, tile=(tile, tile), compression=compression, photometric="rgb",
                      subfiletype=0 if i == 0 else 1, resolution=(pixels_per_cm, pixels_per_cm),
                      resolutionunit="CENTIMETER")


def write_field_png(path: Path, rgb: np.ndarray, mpp: float) -> None:
    """A field image that records its own scale (PNG pHYs), as a microscope camera can."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, dpi=(25400 / mpp, 25400 / mpp))


def write_batch(scans: Path, n_slides: int, n_fields: int, slide_size: tuple[int, int] = (3000, 2200),
                wbc_per_slide: int = 30, seed: int = 0, mpp: float = 0.25) -> Path:
    """A night's batch: patient folders P0, P1, … with a pyramidal slide and/or a field image each,
    plus one file that is not a slide (P0/broken.svs)."""
    for i in range(n_slides):
        rgb, _ = draw_smear(slide_size[0], slide_size[1], mpp, wbc_per_slide, seed=seed + i)
        write_pyramidal_tiff(scans / f"P{i}" / "slide.tif", rgb, mpp)
    for i in range(n_fields):
        rgb, _ = draw_smear(900, 700, mpp, 3, seed=seed + 100 + i)
        write_field_png(scans / f"P{i}" / "field.png", rgb, mpp)
    (scans / "P0").mkdir(parents=True, exist_ok=True)
    (scans / "P0" / "broken.svs").write_text("not a slide")
    return scans
