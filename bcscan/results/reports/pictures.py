"""The pictures of a report, drawn from arrays: a scan thumbnail with every cell marked, the tiles
not counted for quality hatched and a scale bar, the p_leukemic histogram, and any RGB array as a
reportlab Image."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from bcscan.errors import ReportError
from bcscan.results.tables import CLASS_COLOURS
from bcscan.scan.pipeline import REASON_SEPARATOR
from bcscan.scan.quality import REASONS

# One colour per quality reason (RGB), apart from the class colours and from a smear's pinks and purples.
REASON_COLOURS = {"blur": (255, 140, 0), "faint_stain": (230, 200, 0), "dark_stain": (110, 40, 170),
                  "dark_background": (70, 70, 70), "thick": (130, 75, 20), "thin": (0, 185, 200),
                  "clipped": (20, 160, 60)}
UNKNOWN_REASON_COLOUR = (128, 128, 128)  # a reason this version does not know (a table from a newer bcscan)
HATCH_SPACING_PX = 8   # thumbnail pixels from one hatch line of a tile not counted to the next
HATCH_LINE_PX = 2      # ...and their width: a quarter of the tile hatched, the smear visible between
HATCH_OPACITY = 0.85


def class_rgb(label: str) -> tuple[int, int, int]:
    """The colour a cell of this class is marked in (grey for an unknown class), as RGB."""
    return tuple(int(c) for c in CLASS_COLOURS.get(label, [128, 128, 128]))


def class_hex(label: str) -> str:
    """The same colour as '#rrggbb'."""
    return "#%02x%02x%02x" % class_rgb(label)


def reason_hex(reason: str) -> str:
    """The colour a tile excluded for this reason is hatched in, as '#rrggbb'."""
    return "#%02x%02x%02x" % REASON_COLOURS[reason]


def tile_reasons(reasons: str) -> list[str]:
    """The reasons of an excluded_tiles row ("blur+faint_stain") as a list."""
    return [r for r in str(reasons).split(REASON_SEPARATOR) if r]


def hatch_excluded_tiles(img: np.ndarray, excluded: pd.DataFrame, scale: float) -> None:
    """Hatch, in place, each tile of `excluded` (EXCLUDED_TILE_COLUMNS, level-0 px; `scale`: thumbnail px
    per level-0 px) with diagonal lines in its reasons' colours, taken in turn: a tile failed for two
    reasons shows both.  The lines run on across neighbouring tiles, so an excluded area reads as one."""
    import cv2

    h, w = img.shape[:2]
    layer, mask = img.copy(), np.zeros((h, w), np.uint8)
    for row in excluded.itertuples(index=False):
        colours = [REASON_COLOURS.get(r, UNKNOWN_REASON_COLOUR) for r in tile_reasons(row.reasons)] \
            or [UNKNOWN_REASON_COLOUR]
        x0, y0 = max(int(math.floor(row.x * scale)), 0), max(int(math.floor(row.y * scale)), 0)
        x1, y1 = min(int(math.ceil((row.x + row.width) * scale)), w), min(int(math.ceil((row.y + row.height) * scale)), h)
        if x1 <= x0 or y1 <= y0:
            continue
        patch, patch_mask = layer[y0:y1, x0:x1].copy(), np.zeros((y1 - y0, x1 - x0), np.uint8)
        first = -((x0 + y0) % HATCH_SPACING_PX)  # lines where x + y is a multiple of the spacing, image-wide
        for c in range(first, (x1 - x0) + (y1 - y0), HATCH_SPACING_PX):
            colour = colours[((x0 + y0 + c) // HATCH_SPACING_PX) % len(colours)]
            for dx in range(HATCH_LINE_PX):  # 1-px diagonals side by side: a line HATCH_LINE_PX px wide
                cv2.line(patch, (c + dx, 0), (c + dx - (y1 - y0), y1 - y0), colour, 1)
                cv2.line(patch_mask, (c + dx, 0), (c + dx - (y1 - y0), y1 - y0), 255, 1)
        layer[y0:y1, x0:x1][patch_mask > 0] = patch[patch_mask > 0]
        mask[y0:y1, x0:x1] |= patch_mask
    hatched = mask > 0
    img[hatched] = np.round((1 - HATCH_OPACITY) * img[hatched] + HATCH_OPACITY * layer[hatched]).astype(np.uint8)


def excluded_shares(excluded: pd.DataFrame, level0_area: float) -> list[tuple[str, int, float]]:
    """(reason, tiles, share of the scan's level-0 area) for each reason that excluded a tile, in
    REASONS order; a tile failed for two reasons counts for both, as in scans.csv."""
    shares = []
    for reason in REASONS:
        mine = excluded[[reason in tile_reasons(r) for r in excluded["reasons"]]]
        if len(mine):
            shares.append((reason, len(mine), float((mine["width"] * mine["height"]).sum()) / level0_area))
    return shares


def _nice_length(target_um: float) -> float:
    """1, 2 or 5 × 10^k µm, the largest not above `target_um`."""
    if target_um <= 0:
        return 1.0
    exp = math.floor(math.log10(target_um))
    for m in (5, 2, 1):
        if m * 10 ** exp <= target_um:
            return m * 10 ** exp
    return 10 ** exp


def marked_thumbnail(thumb: np.ndarray, cells: pd.DataFrame, level0_width: int, mpp: float,
                     excluded: pd.DataFrame | None = None) -> tuple[np.ndarray, float]:
    """The thumbnail with the tiles not counted for quality hatched (`excluded`, EXCLUDED_TILE_COLUMNS),
    every cell marked in its class colour (leukemic drawn last, on top) and a scale bar; returns
    (image, scale bar length in µm).

    Sparse cells get rings with a white halo (visible on pink red cells).  Where rings would crowd
    each other, normal cells become small dots and only leukemic cells keep their ring."""
    import cv2

    img = np.ascontiguousarray(thumb.copy())
    h, w = img.shape[:2]
    scale = w / float(level0_width)
    if excluded is not None:
        hatch_excluded_tiles(img, excluded, scale)
    radii = ((cells["x1"] - cells["x0"]).to_numpy(float) * scale / 2 + 2.5) if len(cells) else np.zeros(0)
    typical = float(np.median(radii)) if len(radii) else 3.0
    dense = len(cells) > 0 and math.sqrt(w * h / len(cells)) < 5 * max(typical, 3.0)
    for label in ("normal", "leukemic"):
        mine = cells[cells["label"] == label]
        if not len(mine):
            continue
        colour = class_rgb(label)
        xs = (mine["x"].to_numpy(float) * scale).round().astype(int)
        ys = (mine["y"].to_numpy(float) * scale).round().astype(int)
        rs = np.maximum(3, ((mine["x1"] - mine["x0"]).to_numpy(float) * scale / 2 + 2.5).round()).astype(int)
        if dense and label != "leukemic":
            for x, y in zip(xs, ys):
                cv2.circle(img, (int(x), int(y)), 2, colour, -1, cv2.LINE_AA)
            continue
        for x, y, r in zip(xs, ys, rs):
            cv2.circle(img, (int(x), int(y)), int(max(r, 5) if dense else r), (255, 255, 255), 4, cv2.LINE_AA)
            cv2.circle(img, (int(x), int(y)), int(max(r, 5) if dense else r), colour, 2, cv2.LINE_AA)
    um_per_px = mpp / scale
    bar_um = _nice_length(img.shape[1] * 0.2 * um_per_px)
    bar_px = max(1, int(round(bar_um / um_per_px)))
    thick = max(3, h // 120)
    x0, y1 = max(4, w // 40), h - max(4, h // 30)
    cv2.rectangle(img, (x0 - 2, y1 - thick - 2), (x0 + bar_px + 2, y1 + 2), (255, 255, 255), -1)
    cv2.rectangle(img, (x0, y1 - thick), (x0 + bar_px, y1), (0, 0, 0), -1)
    return img, bar_um


def rl_image(rgb: np.ndarray, width_pt: float, height_pt: float, jpeg: bool = True):
    """A reportlab Image flowable of an RGB array, fit in width × height points, aspect kept."""
    import cv2
    from reportlab.platypus import Image

    ok, buf = cv2.imencode(".jpg" if jpeg else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 88] if jpeg else [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ReportError("cannot encode an image")
    h, w = rgb.shape[:2]
    k = min(width_pt / w, height_pt / h)
    return Image(io.BytesIO(buf.tobytes()), width=w * k, height=h * k)


def histogram_png(p: np.ndarray, threshold: float, bins: int) -> np.ndarray:
    """Distribution of p_leukemic (counts, log scale when they span decades) as an RGB array."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 2.1), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(p, 0, 1), bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    colours = [class_hex("leukemic" if c >= threshold else "normal") for c in centres]
    ax.bar(centres, counts, width=edges[1] - edges[0], color=colours, edgecolor="white", linewidth=0.5)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.text(threshold, 1.0, f" threshold {threshold:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=7)
    if counts.max(initial=0) >= 50 and counts[counts > 0].min(initial=1) * 20 < counts.max(initial=0):
        ax.set_yscale("log")
        ax.set_ylabel("cells (log)", fontsize=8)
    else:
        ax.set_ylabel("cells", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    if ax.get_yscale() == "linear":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, 1)
    ax.set_xlabel("p_leukemic (model probability that a cell is leukemic)", fontsize=8)
    ax.tick_params(labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout(pad=0.4)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
