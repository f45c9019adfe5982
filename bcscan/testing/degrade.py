"""Real fields degraded in physical units, for the quality-control tests and benchmark.

Every degradation works on the field at its *native* scale (`mpp` µm/px), as the
fault would happen on the microscope, before the pipeline resamples it:

- `blur`: Gaussian defocus of `sigma_um` µm.
- `scale_od`: every pixel's optical density relative to the glass multiplied
  by `factor` (Beer-Lambert: < 1 = faded / under-stained, > 1 = over-stained).
- `exposure`: intensities multiplied by `factor` and clipped to 0..255 (over-
  or under-exposed camera).
- `stack`: `layers` copies of the field laid over one another, each shifted,
  transmittances multiplied (Beer-Lambert), so the red cells overlap as in the
  thick end of a smear.  The field is first mirrored into a 2 × 2 periodic
  mosaic so shifted copies have no seams; the result has the field's size.
- `thin`: the field kept in a random share of small blocks, glass elsewhere:
  red cells sparse, as at the feathered edge where the smear runs out.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bcscan.scan.reading import Scan, resample
from bcscan.testing.groundtruth import (
    GHADERZADEH_MPP,
    LMU_MPP,
    PBC_MPP,
    SHARED_DATA,
    bccd_samples,
    ghaderzadeh_fields,
    read_rgb,
    txl_samples,
)

SMEAR_TILE_MPP = 0.25  # wsi/smear full-resolution tiles (SOURCE.txt: red cells ~30 px across)
SMEAR_OVERVIEW_MPP = 16.0  # its test-thumbnail.png: 0.25 µm/px ÷ 64 (checked: area OD at the tiles' places matches)

GLASS_PERCENTILE = 90.0  # the segmenter's notion of the glass colour (mean of the brightest 10 %)


def glass_colour(rgb: np.ndarray, percentile: float = GLASS_PERCENTILE) -> np.ndarray:
    """Mean RGB of the brightest pixels (float, 0..255)."""
    brightness = rgb.sum(axis=2, dtype=np.uint16)
    return rgb[brightness >= np.percentile(brightness, percentile)].mean(axis=0).astype(np.float64)


def blur(rgb: np.ndarray, mpp: float, sigma_um: float) -> np.ndarray:
    if sigma_um <= 0:
        return rgb
    return cv2.GaussianBlur(rgb, (0, 0), sigma_um / mpp, borderType=cv2.BORDER_REFLECT)


def _transmittance(rgb: np.ndarray, glass: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float64) + 0.5) / glass


def _from_transmittance(t: np.ndarray, glass: np.ndarray) -> np.ndarray:
    return np.clip(np.round(t * glass - 0.5), 0, 255).astype(np.uint8)


def scale_od(rgb: np.ndarray, factor: float) -> np.ndarray:
    """OD relative to the glass × `factor` (the glass itself is unchanged).  The glass here is the
    brightest 1 %, so that almost no pixel is brighter than it (a darker reference would darken the
    glass of fields whose background is near 255)."""
    glass = glass_colour(rgb, 99.0)
    return _from_transmittance(_transmittance(rgb, glass) ** factor, glass)


def exposure(rgb: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(np.round(rgb.astype(np.float64) * factor), 0, 255).astype(np.uint8)


def mirror_mosaic(rgb: np.ndarray) -> np.ndarray:
    """2 × 2 mosaic of the field and its mirror images: periodic and seamless."""
    top = np.concatenate([rgb, rgb[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def stack(rgb: np.ndarray, layers: int) -> np.ndarray:
    """`layers` shifted copies of the field on top of one another (transmittances multiplied)."""
    h, w = rgb.shape[:2]
    glass = glass_colour(rgb)
    mosaic = _transmittance(mirror_mosaic(rgb), glass)
    out = np.ones_like(mosaic)
    # Shifts by irrational fractions of the mosaic: copies never line up with one another.
    for i in range(layers):
        dy = int(round((i * 0.381966 % 1.0) * 2 * h))
        dx = int(round((i * 0.618034 % 1.0) * 2 * w))
        out *= np.roll(mosaic, (dy, dx), axis=(0, 1))
    return _from_transmittance(out[:h, :w], glass)


def thin(rgb: np.ndarray, mpp: float, keep: float, block_um: float = 8.0, seed: int = 0) -> np.ndarray:
    """The field in a random `keep` share of `block_um` µm blocks (about one red cell), the glass colour
    in the others."""
    h, w = rgb.shape[:2]
    block = max(1, int(round(block_um / mpp)))
    kept = np.random.default_rng(seed).random((-(-h // block), -(-w // block))) < keep
    mask = np.repeat(np.repeat(kept, block, axis=0), block, axis=1)[:h, :w]
    out = np.empty_like(rgb)
    out[:] = np.round(glass_colour(rgb)).astype(np.uint8)
    out[mask] = rgb[mask]
    return out


# --------------------------------------------------------------------------- real fields of known scale
@dataclass(frozen=True)
class Field:
    source: str
    path: Path
    mpp: float


def field_sources(data: Path = SHARED_DATA) -> dict[str, list[Field]]:
    """Every untouched real field of known scale in ../shared/data, by source (sorted paths)."""
    data = Path(data)
    out: dict[str, list[Field]] = {}
    out["bccd"] = [Field("bccd", s.image, s.mpp) for s in bccd_samples(data)]
    for s in txl_samples(data):
        out.setdefault(f"txl-{s.source}", []).append(Field(f"txl-{s.source}", s.image, s.mpp))
    out["ghaderzadeh"] = [Field("ghaderzadeh", p, GHADERZADEH_MPP) for p in ghaderzadeh_fields(data)]
    out["pbc-normal"] = [Field("pbc-normal", p, PBC_MPP) for p in sorted((data / "pbc-normal").glob("*/*.jpg"))]
    out["lmu-aml-blood"] = [Field("lmu-aml-blood", p, LMU_MPP)
                            for p in sorted((data / "lmu-aml-blood").glob("*/*.jpg"))]
    out["wsi-smear"] = [Field("wsi-smear", p, SMEAR_TILE_MPP)
                        for p in sorted((data / "wsi" / "smear").glob("I_*.png"))]
    return {k: v for k, v in out.items() if v}


def sample_fields(data: Path = SHARED_DATA, per_source: int = 40, seed: int = 0) -> list[Field]:
    """`per_source` fields drawn at random from each source, seeded by (seed, source) so that a source added
    does not change the others' draws; all of a smaller source."""
    chosen = []
    for source, fields in sorted(field_sources(data).items()):
        rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
        idx = rng.choice(len(fields), size=min(per_source, len(fields)), replace=False)
        chosen += [fields[i] for i in sorted(idx)]
    return chosen


def smear_pieces(data: Path = SHARED_DATA, working_mpp: float = 0.4, side_px: int = 128,
                 stride_px: int = 64) -> Iterator[tuple[str, np.ndarray]]:
    """Overlapping square pieces ("file:x,y", RGB at `working_mpp`) of the real wsi/smear monolayer tiles: most
    hold no white cell, as most tiles of a slide do, which the fields of the other sources (nearly all with one)
    cannot show."""
    for path in sorted((Path(data) / "wsi" / "smear").glob("I_*.png")):
        work = resample(read_rgb(path), SMEAR_TILE_MPP, working_mpp)
        for y in range(0, work.shape[0] - side_px + 1, stride_px):
            for x in range(0, work.shape[1] - side_px + 1, stride_px):
                yield f"{path.name}:{x},{y}", np.ascontiguousarray(work[y:y + side_px, x:x + side_px])


class RealSmearSlide(Scan):
    """The real wsi/smear slide as far as it is here: its overview as the thumbnail, and at full resolution
    (0.25 µm/px) a seamless mosaic of one of its monolayer tiles wherever a region is read, so the red-cell
    cover of any tile read is the monolayer's.  `reads` counts the regions read."""

    def __init__(self, data: Path = SHARED_DATA, tile: int = 1):
        root = Path(data) / "wsi" / "smear"
        self.path = root / "test-thumbnail.png"
        self._overview = read_rgb(self.path)
        self._mosaic = mirror_mosaic(read_rgb(sorted(root.glob("I_*.png"))[tile]))
        self.mpp = SMEAR_TILE_MPP
        down = SMEAR_OVERVIEW_MPP / SMEAR_TILE_MPP
        self.level_dimensions = [(round(self._overview.shape[1] * down), round(self._overview.shape[0] * down))]
        self.level_downsamples = [1.0]
        self.vendor = "wsi/smear pieces"
        self.reads = 0

    def read(self, level, x, y, width, height):
        self.reads += 1
        h, w = self._mosaic.shape[:2]
        reps = (-(-(y % h + height) // h), -(-(x % w + width) // w), 1)
        return np.tile(self._mosaic, reps)[y % h: y % h + height, x % w: x % w + width].copy()

    def thumbnail(self, max_side):
        return self._overview
