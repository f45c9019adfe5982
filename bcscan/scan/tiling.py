"""Tiling a scan at the segmenter's working scale, skipping blank glass.

Tiles are laid on the scan as seen at `working_mpp`.  Each tile has a *core*
(the tiles' cores partition the scan) and a *read* window: the core plus a
margin larger than the biggest cell and half a crop.  A cell belongs to the
tile whose core holds its centre, so a cell cut by a tile border is counted
exactly once and is always whole in its owner's read window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from bcscan.config import check_numbers
from bcscan.scan.reading import Scan


@dataclass(frozen=True)
class TilingParams:
    tile_px: int = 1024                 # core side at working scale
    margin_um: float = 32.0             # read margin each side: > largest cell radius + half a crop
    thumbnail_px: int = 2048            # longest side of the overview used to find blank glass
    content_min_fraction: float = 0.005 # tiles with less non-glass in the overview are skipped unread
    glass_max_saturation: int = 18      # HSV saturation (0-255) at or below which a bright pixel is glass
    glass_min_value: int = 200          # HSV value above which a pixel may be glass

    def __post_init__(self):
        check_numbers(self, "tile_px", at_least=64)
        check_numbers(self, "margin_um", above=0)
        check_numbers(self, "content_min_fraction", at_least=0, below=1)
        check_numbers(self, "thumbnail_px", above=0)
        check_numbers(self, "glass_max_saturation", "glass_min_value", at_least=0, at_most=255)


@dataclass(frozen=True)
class Tile:
    core: tuple[int, int, int, int]   # x0, y0, x1, y1 at working scale (x1, y1 exclusive)
    read: tuple[int, int, int, int]   # core + margin, clipped to the scan

    def owns(self, x: float, y: float) -> bool:
        x0, y0, x1, y1 = self.core
        return x0 <= x < x1 and y0 <= y < y1


@dataclass
class TilePlan:
    level: int                 # pyramid level read
    level_mpp: float
    scan_mpp: float            # level-0 scale
    working_mpp: float
    width: int                 # scan size at working scale
    height: int
    margin_px: int
    tiles: list[Tile]          # tiles to read, in raster order
    skipped: int               # blank tiles never read
    overview_excluded: list[tuple[Tile, str]] = field(default_factory=list)
    """Tiles never read because the overview shows them outside the monolayer: (tile, "thick" or "thin")."""
    od_per_cover: float = math.nan
    """The overview's area OD per red-cell layer, calibrated on the slide's own tiles (NaN: not judged)."""

    @property
    def to_level0(self) -> float:
        """Multiply working-scale coordinates by this to get level-0 pixels."""
        return self.working_mpp / self.scan_mpp


def content_mask(rgb: np.ndarray, params: TilingParams) -> np.ndarray:
    """True where a pixel is not bright, unstained glass."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    glass = (hsv[..., 1] <= params.glass_max_saturation) & (hsv[..., 2] >= params.glass_min_value)
    return ~glass


def read_overview(scan: Scan, params: TilingParams) -> np.ndarray:
    """The scan's overview (RGB, longest side `thumbnail_px`): where the glass is, and the smear's crowding."""
    return scan.thumbnail(params.thumbnail_px)


def plan_tiles(scan: Scan, working_mpp: float, params: TilingParams, overview: np.ndarray | None = None) -> TilePlan:
    """Lay the tile grid and drop tiles that the overview (read here unless given) shows to be blank glass."""
    level = scan.best_level_for(working_mpp)
    w0, h0 = scan.dimensions
    width = max(1, round(w0 * scan.mpp / working_mpp))
    height = max(1, round(h0 * scan.mpp / working_mpp))
    margin = int(math.ceil(params.margin_um / working_mpp))
    size = params.tile_px

    if overview is None:
        overview = read_overview(scan, params)
    mask = content_mask(overview, params).astype(np.uint8)
    integral = cv2.integral(mask)
    sx, sy = overview.shape[1] / width, overview.shape[0] / height

    tiles, skipped = [], 0
    for y0 in range(0, height, size):
        for x0 in range(0, width, size):
            x1, y1 = min(x0 + size, width), min(y0 + size, height)
            # overview window of the read area: a cell in the margin may still have its centre in the core
            ox0, oy0 = int((x0 - margin) * sx), int((y0 - margin) * sy)
            ox1, oy1 = math.ceil((x1 + margin) * sx), math.ceil((y1 + margin) * sy)
            ox0, oy0 = max(ox0, 0), max(oy0, 0)
            ox1, oy1 = min(max(ox1, ox0 + 1), mask.shape[1]), min(max(oy1, oy0 + 1), mask.shape[0])
            area = max(1, (ox1 - ox0) * (oy1 - oy0))
            content = integral[oy1, ox1] - integral[oy0, ox1] - integral[oy1, ox0] + integral[oy0, ox0]
            if content / area < params.content_min_fraction:
                skipped += 1
                continue
            read = (max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin, width), min(y1 + margin, height))
            tiles.append(Tile((x0, y0, x1, y1), read))
    return TilePlan(level, scan.level_mpp(level), scan.mpp, working_mpp, width, height, margin, tiles, skipped)


def tile_overview_window(plan: TilePlan, tile: Tile, overview_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The overview pixels (x0, y0, x1, y1) under a tile's core (at least one pixel)."""
    sx, sy = overview_shape[1] / plan.width, overview_shape[0] / plan.height
    x0, y0, x1, y1 = tile.core
    ox0, oy0 = min(int(x0 * sx), overview_shape[1] - 1), min(int(y0 * sy), overview_shape[0] - 1)
    return ox0, oy0, max(math.ceil(x1 * sx), ox0 + 1), max(math.ceil(y1 * sy), oy0 + 1)


def core_area_um2(plan: TilePlan, tile: Tile) -> float:
    x0, y0, x1, y1 = tile.core
    return (x1 - x0) * (y1 - y0) * plan.working_mpp ** 2


def read_tile(scan: Scan, plan: TilePlan, tile: Tile) -> np.ndarray:
    """The tile's read window as RGB at working scale (read from the plan's level, then resampled)."""
    x0, y0, x1, y1 = tile.read
    factor = plan.working_mpp / plan.level_mpp  # >= 1: level pixels per working pixel
    lx0, ly0 = int(math.floor(x0 * factor)), int(math.floor(y0 * factor))
    lx1, ly1 = int(math.ceil(x1 * factor)), int(math.ceil(y1 * factor))
    lw, lh = scan.level_dimensions[plan.level]
    lx1, ly1 = min(max(lx1, lx0 + 1), lw), min(max(ly1, ly0 + 1), lh)
    region = scan.read(plan.level, lx0, ly0, lx1 - lx0, ly1 - ly0)
    size = (x1 - x0, y1 - y0)
    if region.shape[1] == size[0] and region.shape[0] == size[1]:
        return region
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA)
