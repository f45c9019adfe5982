"""Tile extraction: bcscan beside peer tools (histolab) on the same slide, tile size and level.

    .venv/bin/python benchmarks/peer_tiling.py [--size 20000] [--tile 512] \
        [--peer-python benchmarks/.peer-venv/bin/python]

Why: to see whether bcscan's tiling (`plan_tiles` + `read_tile`) costs more than
reading the pixels (a bare OpenSlide `read_region` loop) and than what a peer
whole-slide tool takes to cut the same grid.

How: builds, in a temp dir, a pyramidal zlib TIFF of --size² px (rounded down to
a multiple of --tile, so that every tool cuts the same full grid, no partial edge
tiles) from a mosaic of real BCCD smear fields (../shared/data/bccd/JPEGImages,
repeated as needed).  The file records 0.4 µm/px, bcscan's working scale, so
bcscan reads level 0 without resampling: the same pixels as a peer at level 0
(the true BCCD scale, ~0.065 µm/px, does not matter for tiling).  Each row is
timed once after a 2-tile warm-up, all in one run:

  raw read_region           openslide read_region + RGB numpy array, bcscan's venv (the read limit)
  bcscan (full grid)        plan_tiles (incl. its overview) + read_tile, content_min_fraction=0,
                            margin 0.4 µm = 1 px (so its arrays are (tile+2)² inside the slide)
  bcscan (blank skipped)    the same with default content_min_fraction (blank glass not read)
  histolab (no tissue chk)  GridTiler(level=0, check_tissue=False, pixel_overlap=0)._tiles_generator,
                            with a whole-slide extraction mask, each PIL tile -> RGB numpy; no PNGs
  histolab (tissue check)   the same with check_tissue=True (its default, tissue_percent=80)

"tiles" is kept/grid; tiles/s and MP/s count the tiles (and their pixels) returned;
"bcscan ×" is bcscan (full grid) tiles/s ÷ the row's tiles/s (> 1: bcscan faster).
histolab 0.7.0 drops every tile that touches the right or bottom edge (its
`_has_valid_coords` wants x_br < width, though x_br is exclusive), so it returns
(k-1)² of the k² grid tiles; all tiles are tile² px, so per-tile rates still compare.
bcscan's overview (thumbnail) is a fixed cost: small --size runs overstate it.

Peers run in a separate venv (their pins clash with bcscan's), in a child process
that prints JSON.  Setup, once, from the repository root:

    python3 -m venv benchmarks/.peer-venv
    benchmarks/.peer-venv/bin/pip install histolab openslide-bin

histolab 0.7.0 pins openslide-python 1.3.1, which does not look for openslide-bin's
library itself, so the child preloads `openslide_bin/libopenslide.so.1`.
TIAToolbox is left out: 2.1.x needs torch<2.13, i.e. PyPI's CUDA build (torch 2.12.1
with cuDNN, cuBLAS, NCCL, ... wheels: several GB), and numpy>=2 / scikit-image 0.26 / openslide-python>=1.4,
which conflict with histolab's pins in one venv.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from bccd_mosaic import bccd_fields, write_bccd_slide

WARMUP = 2
PEER_CODE = r"""
import ctypes, json, os, sys, time
import numpy as np
try:  # openslide-python < 1.4 does not find openslide-bin's library by itself
    import openslide_bin
    ctypes.CDLL(os.path.join(os.path.dirname(openslide_bin.__file__), "libopenslide.so.1"))
except ImportError:
    pass
import histolab, openslide
from histolab.masks import BinaryMask
from histolab.slide import Slide
from histolab.tiler import GridTiler
from histolab.types import CoordinatePair

path, T, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class WholeSlide(BinaryMask):  # the full grid, as bcscan and the raw loop cut it
    def _mask(self, slide):
        w, h = slide.dimensions
        return np.ones((max(1, h // 32), max(1, w // 32)), dtype=bool)

rows = []
for name, check in (("histolab (no tissue chk)", False), ("histolab (tissue check)", True)):
    slide = Slide(path, processed_path=os.path.dirname(path))
    w, h = slide.dimensions
    for i in range(warmup):
        np.asarray(slide.extract_tile(CoordinatePair(i * T, 0, (i + 1) * T, T), (T, T), level=0).image.convert("RGB"))
    tiler = GridTiler(tile_size=(T, T), level=0, check_tissue=check, pixel_overlap=0)
    t0 = time.perf_counter()
    n = px = 0
    for tile, _ in tiler._tiles_generator(slide, WholeSlide()):
        rgb = np.asarray(tile.image.convert("RGB"))
        n += 1
        px += rgb.shape[0] * rgb.shape[1]
    rows.append(dict(name=name, tiles=n, grid=(w // T) * (h // T), seconds=time.perf_counter() - t0, pixels=px))
print(json.dumps(dict(versions={"histolab": histolab.__version__, "openslide-python": openslide.__version__,
                                "libopenslide": openslide.__library_version__}, rows=rows)))
"""


def build_slide(path: Path, size: int, mpp: float) -> None:
    write_bccd_slide(path, bccd_fields(), size, size, mpp)


def timed_rows(path: Path, tile: int, mpp: float) -> list[dict]:
    import openslide

    from bcscan.scan.reading import ReadingParams, open_scan
    from bcscan.scan.tiling import TilingParams, plan_tiles, read_tile

    rows = []
    slide = openslide.OpenSlide(str(path))
    w, h = slide.dimensions
    grid = [(x, y) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
    for x, y in grid[:WARMUP]:
        np.asarray(slide.read_region((x, y), 0, (tile, tile)).convert("RGB"))
    t0 = time.perf_counter()
    px = sum(np.asarray(slide.read_region((x, y), 0, (tile, tile)).convert("RGB")).shape[0] * tile for x, y in grid)
    rows.append(dict(name="raw read_region", tiles=len(grid), grid=len(grid), seconds=time.perf_counter() - t0, pixels=px))
    slide.close()

    for name, params in (("bcscan (full grid)", TilingParams(tile_px=tile, margin_um=mpp, content_min_fraction=0.0)),
                         ("bcscan (blank skipped)", TilingParams(tile_px=tile, margin_um=mpp))):
        with open_scan(path, ReadingParams()) as scan:
            for i in range(WARMUP):
                scan.read(0, i * tile, 0, tile, tile)
            t0 = time.perf_counter()
            plan = plan_tiles(scan, mpp, params)
            assert plan.level == 0 and plan.level_mpp == mpp and plan.margin_px == 1, "slide must be read at level 0 unresampled"
            px = sum(read_tile(scan, plan, t).shape[0] * (t.read[2] - t.read[0]) for t in plan.tiles)
            rows.append(dict(name=name, tiles=len(plan.tiles), grid=len(plan.tiles) + plan.skipped,
                             seconds=time.perf_counter() - t0, pixels=px))
    return rows


def peer_rows(peer_python: Path, path: Path, tile: int) -> tuple[list[dict], dict]:
    if not peer_python.exists():
        print(f"peer venv missing ({peer_python}): see this script's docstring for its setup; peers skipped")
        return [], {}
    done = subprocess.run([str(peer_python), "-c", PEER_CODE, str(path), str(tile), str(WARMUP)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"peer run failed ({peer_python}):\n{done.stderr.strip()}")
        return [], {}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["rows"], out["versions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="slide side in px (rounded down to a multiple of --tile)")
    parser.add_argument("--tile", type=int, default=512, help="tile side in px, at level 0")
    parser.add_argument("--peer-python", type=Path, default=Path("benchmarks/.peer-venv/bin/python"))
    args = parser.parse_args()
    mpp = 0.4  # bcscan's working scale: level 0, no resampling
    size = args.size // args.tile * args.tile
    if size < args.tile:
        raise SystemExit("--size must be at least --tile")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bccd_mosaic.tif"
        t0 = time.perf_counter()
        build_slide(path, size, mpp)
        print(f"slide {size}x{size} px of BCCD fields, {path.stat().st_size / 1e6:.0f} MB zlib TIFF "
              f"(built in {time.perf_counter() - t0:.1f} s); tile {args.tile} px at level 0")
        rows = timed_rows(path, args.tile, mpp)
        peers, versions = peer_rows(args.peer_python, path, args.tile)
        rows += peers

    import openslide
    print(f"bcscan venv: openslide-python {openslide.__version__}, libopenslide {openslide.__library_version__}"
          + ("; peer venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else ""))
    ref = rows[1]["tiles"] / rows[1]["seconds"]
    print(f"\n{'':26}{'tiles':>13}{'seconds':>9}{'tiles/s':>9}{'MP/s':>8}{'bcscan ×':>10}")
    for r in rows:
        rate = r["tiles"] / r["seconds"]
        print(f"{r['name']:26}{r['tiles']:>6}/{r['grid']:<6}{r['seconds']:>9.2f}{rate:>9.1f}"
              f"{r['pixels'] / 1e6 / r['seconds']:>8.1f}{ref / rate if rate else float('inf'):>10.2f}")


if __name__ == "__main__":
    main()
