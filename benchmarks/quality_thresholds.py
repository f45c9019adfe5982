"""Tile quality figures on real fields, untouched and degraded in physical units: the evidence behind
the thresholds of `bcscan.scan.quality.QualityParams` (= the `quality:` section of configs/default.yaml).

    python benchmarks/quality_thresholds.py [--data ../shared/data] [--per-source 40] [--seed 0] [--csv F]
    python benchmarks/quality_thresholds.py --cost-only     # the cost ratio alone (needs git: see cost())

Fields: `--per-source` seeded random fields of every source of known scale in ../shared/data (BCCD, the
four TXL-PBC sources, Ghaderzadeh, PBC, the wsi/smear monolayer tiles).  Each is degraded at its native
scale, then resampled to the working scale, segmented and measured exactly as the pipeline would:

  blur σ 0.5 / 1 / 2 µm (Gaussian)            -> expected reason `blur`
  OD × 0.35 / 0.5 (faded, under-stained)      -> `faint_stain`
  OD × 1.8 / 2.5 (over-stained)               -> `dark_stain`
  exposure × 1.5 (clipped highlights)         -> `clipped`
  exposure × 0.5 (dark glass)                 -> `dark_background`
  thick: shifted copies of the field stacked (transmittances multiplied) until the red cells
         cover the area 1.5 / 2.5 / 3.5 / 4.5 times over   -> `thick`

Crowding needs `crowding_min_area_um2` outside white cells, more than most of these fields hold (a PBC
or TXL field is 26-40 µm across), so for the crowding rows (untouched and thick) fields of such sources
are first laid side by side, k × k distinct fields of the same source, into one mosaic.

Prints, per source and degradation, the fraction flagged with the expected reason and with any reason,
and the 2nd / 50th / 98th percentiles of the figure that decides it; the fraction flagged among the fields
degraded past a threshold (quality.THRESHOLDS) by a margin, judged on the cells of the untouched field; then the cost of segment() + measure_tile()
against segment() of the day issue 13 was filed, on 1024² working-scale tiles.
"""
from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
import time
import types
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from bcscan.scan.quality import QualityParams, measure_tile, past_threshold
from bcscan.scan.reading import resample
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.testing import degrade as D
from bcscan.testing.groundtruth import SHARED_DATA, bccd_samples, read_rgb, txl_samples

SEG = SegmentationParams()
QP = QualityParams()
BEFORE_ISSUE_13 = "bd3a947"  # the last commit before issue 13 changed segment()

# name -> (function of (rgb, mpp), expected reason, decisive figure)
FIELD_DEGRADATIONS = {
    "untouched": (lambda r, m: r, None, None),
    "blur σ0.5µm": (lambda r, m: D.blur(r, m, 0.5), "blur", "edge_sigma_um"),
    "blur σ1µm": (lambda r, m: D.blur(r, m, 1.0), "blur", "edge_sigma_um"),
    "blur σ2µm": (lambda r, m: D.blur(r, m, 2.0), "blur", "edge_sigma_um"),
    "OD×0.35": (lambda r, m: D.scale_od(r, 0.35), "faint_stain", "rbc_od"),
    "OD×0.5": (lambda r, m: D.scale_od(r, 0.5), "faint_stain", "rbc_od"),
    "OD×1.8": (lambda r, m: D.scale_od(r, 1.8), "dark_stain", "rbc_od"),
    "OD×2.5": (lambda r, m: D.scale_od(r, 2.5), "dark_stain", "rbc_od"),
    "exposure×1.5": (lambda r, m: D.exposure(r, 1.5), "clipped", "clipped_fraction"),
    "exposure×0.5": (lambda r, m: D.exposure(r, 0.5), "dark_background", "glass_brightness"),
}
CROWDING_DEPTHS = (1.5, 2.5, 3.5, 4.5)
FIGURES = ("edge_sigma_um", "nucleus_od", "rbc_od", "glass_brightness", "rbc_coverage", "glass_fraction",
           "overlap_fraction", "clipped_fraction")


def measure(work: np.ndarray):
    seg = segment(work, SEG.working_mpp, SEG)
    return measure_tile(work, seg, SEG, QP)


PAST_MARGINS = (0.0, 0.1, 0.2, 0.3)


def row(q, source: str, name: str, kind: str, reference=None) -> dict:
    """`reference`: the same measures on the cells of the untouched field (fields only)."""
    ref = {f"ref_{f}": getattr(reference, f) if reference is not None else np.nan for f in FIGURES}
    return {"source": source, "degradation": name, "kind": kind, "reasons": ",".join(q.reasons),
            "not_assessed": ",".join(q.not_assessed), **{f: getattr(q, f) for f in FIGURES}, **ref}


def past_by(df: pd.DataFrame, reason: str, margin: float) -> pd.Series:
    """Rows whose reference figures are past a threshold of `reason` by `margin` × that threshold."""
    reference = {figure: df[f"ref_{figure}"] for figure in FIGURES}
    return pd.Series(past_threshold(reference, reason, QP, margin), index=df.index, dtype=bool)


def layers_for(depth: float, coverage: float) -> int:
    """Copies to stack so that the red cells cover the area `depth` times over."""
    return max(2, min(16, math.ceil(depth / max(coverage, 0.05))))


def field_rows(fields: list[D.Field]) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    """Each field untouched and degraded, measured as the pipeline does (its own segmentation of the degraded
    pixels), and, as the reference for how far a degradation went, by the same measures on the cells found in
    the untouched field, which the degradation cannot move."""
    rows, works = [], defaultdict(list)
    for f in fields:
        rgb = read_rgb(f.path)
        untouched_cells = None
        for name, (fn, _, _) in FIELD_DEGRADATIONS.items():
            work = resample(fn(rgb, f.mpp), f.mpp, SEG.working_mpp)
            cells = segment(work, SEG.working_mpp, SEG)
            q = measure_tile(work, cells, SEG, QP)
            if name == "untouched":  # the first entry: its cells are the reference for every degradation after it
                works[f.source].append(work)
                untouched_cells, reference = cells, q
            else:
                reference = measure_tile(work, untouched_cells, SEG, QP)
            rows.append(row(q, f.source, name, "field", reference))
    return rows, works


def mosaics(works: list[np.ndarray], min_area_um2: float) -> list[np.ndarray]:
    """Fields laid k × k side by side (distinct fields, cropped to a common size) to reach `min_area_um2`."""
    h = min(w.shape[0] for w in works)
    w = min(w.shape[1] for w in works)
    area = h * w * SEG.working_mpp ** 2
    k = max(1, math.ceil(math.sqrt(3.0 * min_area_um2 / area)))  # 3: room for the white cells (stacks copy them)
    out = []
    for i in range(0, len(works) - k * k + 1, k * k):
        tiles = [x[:h, :w] for x in works[i:i + k * k]]
        out.append(np.concatenate([np.concatenate(tiles[r * k:(r + 1) * k], axis=1) for r in range(k)], axis=0))
    return out


def crowding_rows(works_by_source: dict[str, list[np.ndarray]]) -> list[dict]:
    rows = []
    for source, works in works_by_source.items():
        units = mosaics(works, QP.crowding_min_area_um2)
        for work in units:
            q0 = measure(work)
            rows.append(row(q0, source, "untouched", "crowding"))
            for depth in CROWDING_DEPTHS:
                cov = q0.rbc_coverage if not math.isnan(q0.rbc_coverage) else 0.5
                rows.append(row(measure(D.stack(work, layers_for(depth, cov))), source, f"thick ×{depth:g} cover",
                                "crowding"))
    return rows


def pct(s: pd.Series) -> str:
    s = s.dropna()
    if s.empty:
        return "–"
    return f"{s.quantile(0.02):.2f} / {s.median():.2f} / {s.quantile(0.98):.2f}"


def report(df: pd.DataFrame) -> None:
    def flagged(sub: pd.DataFrame, reason: str | None) -> float:
        if reason is None:
            return float((sub["reasons"] != "").mean())
        return float(sub["reasons"].str.split(",").apply(lambda r: reason in r).mean())

    print("\n## Untouched fields: fraction flagged (any reason), reasons seen")
    print("| source | fields | flagged | reasons (count) | crowding units (mosaic k×k) | crowding flagged |")
    print("|---|---|---|---|---|---|")
    for source, sub in df[(df.degradation == "untouched")].groupby("source"):
        f = sub[sub.kind == "field"]
        c = sub[sub.kind == "crowding"]
        counts = f["reasons"][f["reasons"] != ""].str.split(",").explode().value_counts()
        seen = ", ".join(f"{k} {v}" for k, v in counts.items()) or "–"
        c_flag = (c["reasons"].str.contains("thick|thin")).mean() if len(c) else float("nan")
        print(f"| {source} | {len(f)} | {flagged(f, None):.3f} | {seen} | {len(c)} | {c_flag:.3f} |")
    allf = df[(df.degradation == "untouched") & (df.kind == "field")]
    allc = df[(df.degradation == "untouched") & (df.kind == "crowding")]
    print(f"| **all** | {len(allf)} | {flagged(allf, None):.3f} | | {len(allc)} | "
          f"{allc['reasons'].str.contains('thick|thin').mean():.3f} |")

    print("\n## Degraded: fraction flagged with the expected reason (any reason); figure p2 / p50 / p98")
    sources = sorted(df.source.unique())
    degs = [(n, e, fig) for n, (_, e, fig) in FIELD_DEGRADATIONS.items()] + \
           [(f"thick ×{d:g} cover", "thick", "glass_fraction") for d in CROWDING_DEPTHS]
    for name, expected, fig in degs:
        kind = "crowding" if name.startswith("thick") else "field"
        figs = ["untouched", name]
        print(f"\n### {name} -> `{expected or '–'}` (figure: {fig or '–'})")
        print("| source | n | flagged as expected | any | " + " | ".join(f"{fig} {x}" for x in figs) + " |")
        print("|---|---|---|---|---|---|")
        for source in sources:
            sub = df[(df.source == source) & (df.kind == kind) & (df.degradation == name)]
            base = df[(df.source == source) & (df.kind == kind) & (df.degradation == "untouched")]
            if sub.empty:
                continue
            print(f"| {source} | {len(sub)} | {flagged(sub, expected):.3f} | {flagged(sub, None):.3f} | "
                  f"{pct(base[fig]) if fig else '–'} | {pct(sub[fig]) if fig else '–'} |")
        sub = df[(df.kind == kind) & (df.degradation == name)]
        print(f"| **all** | {len(sub)} | {flagged(sub, expected):.3f} | {flagged(sub, None):.3f} | | |")

    print("\n## Fields degraded past a stated threshold by a margin (figures on the untouched field's cells): "
          "fraction flagged with the expected reason (fields past)")
    print("| degradation -> reason | " + " | ".join(f"past by ≥ {m:.0%}" for m in PAST_MARGINS) + " |")
    print("|---|" + "---|" * len(PAST_MARGINS))
    fields = df[df.kind == "field"]
    totals = np.zeros((len(PAST_MARGINS), 2))
    for name, (_, expected, _) in FIELD_DEGRADATIONS.items():
        if expected is None:
            continue
        sub = fields[fields.degradation == name]
        cells = []
        for k, margin in enumerate(PAST_MARGINS):
            past = sub[past_by(sub, expected, margin)]
            caught = flagged(past, expected) * len(past) if len(past) else 0.0
            totals[k] += (caught, len(past))
            cells.append(f"{caught / len(past):.3f} ({len(past)})" if len(past) else "– (0)")
        print(f"| {name} -> `{expected}` | " + " | ".join(cells) + " |")
    print("| **all** | " + " | ".join(f"{c / max(n, 1):.3f} ({n:.0f})" for c, n in totals) + " |")

    print("\n## Other figures, untouched fields (p2 / p50 / p98)")
    cols = ["rbc_od", "rbc_coverage", "glass_fraction", "overlap_fraction"]
    print("| source | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for source in sources:
        sub = df[(df.source == source) & (df.degradation == "untouched") & (df.kind == "field")]
        print(f"| {source} | " + " | ".join(pct(sub[c]) for c in cols) + " |")


def box_free_strip(shape: tuple[int, int], boxes: np.ndarray, margin_px: float) -> tuple[int, int, int, int]:
    """The largest strip of a field (x0, y0, x1, y1) left, right, above or below every ground-truth box."""
    h, w = shape
    if len(boxes) == 0:
        return 0, 0, w, h
    x0, y0 = (max(0, int(boxes[:, k].min() - margin_px)) for k in (0, 1))
    x1, y1 = (min(n, int(math.ceil(boxes[:, k].max() + margin_px))) for k, n in ((2, w), (3, h)))
    return max([(0, 0, x0, h), (x1, 0, w, h), (0, 0, w, y0), (0, y1, w, h)],
               key=lambda c: (c[2] - c[0]) * (c[3] - c[1]))


def cell_free_pieces(data: Path, min_side_um: float = 12.0) -> None:
    """Untouched real pieces without a white cell, the commonest tile of a slide and the one where the stain
    check has no segmented nucleus to go by: the wsi/smear monolayer tiles cut into overlapping 51 µm pieces
    (those where the segmenter finds no cell), and the strip of every BCCD / TXL train+val field that lies
    outside all its boxes (2 µm margin; at least `min_side_um` on each side)."""
    print("\n## Untouched pieces without a white cell: fraction flagged (any reason)")
    print("| pieces | n | flagged | reasons (count) | nucleus figure from faint blobs |")
    print("|---|---|---|---|---|")

    def line(label: str, works) -> None:
        n = flagged = faint_blobs = 0
        reasons = Counter()
        for work in works:
            seg = segment(work, SEG.working_mpp, SEG)
            if seg.cells:
                continue
            q = measure_tile(work, seg, SEG, QP)
            n += 1
            flagged += not q.ok
            reasons.update(q.reasons)
            faint_blobs += math.isfinite(q.nucleus_od)
        seen = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "–"
        print(f"| {label} | {n} | {flagged / max(n, 1):.3f} ({flagged}) | {seen} | {faint_blobs} |")

    def strips():
        for s in itertools.chain(bccd_samples(data), txl_samples(data)):
            rgb = read_rgb(s.image)
            x0, y0, x1, y1 = box_free_strip(rgb.shape[:2], s.boxes, 2.0 / s.mpp)
            if min(x1 - x0, y1 - y0) * s.mpp >= min_side_um:
                yield resample(np.ascontiguousarray(rgb[y0:y1, x0:x1]), s.mpp, SEG.working_mpp)

    line("wsi/smear monolayer, 51 µm pieces", (w for _, w in D.smear_pieces(data, SEG.working_mpp)))
    line("BCCD / TXL fields outside every box", strips())




def smear_overview(data: Path, tile_px: int = 1024) -> None:
    """wsi/smear: the three full-resolution monolayer tiles, and the overview cut into blocks the size of
    a 1024² working-scale tile, judged by overview_crowding calibrated on those three tiles."""
    from bcscan.scan.quality import od_per_cover, overview_crowding

    root = data / "wsi" / "smear"
    tiles = []
    print("\n## wsi/smear")
    print("| full-resolution tile | reasons | edge σ µm | rbc_coverage | glass_fraction | area_od | overview area_od there |")
    print("|---|---|---|---|---|---|---|")
    overview = read_rgb(root / "test-thumbnail.png")
    ov = overview_crowding(overview, D.SMEAR_OVERVIEW_MPP, D.SMEAR_OVERVIEW_MPP, 1.0, QP)  # per-pixel area OD
    for path in sorted(root.glob("I_*.png")):
        work = resample(read_rgb(path), D.SMEAR_TILE_MPP, SEG.working_mpp)
        q = measure(work)
        tiles.append(q)
        x, y = (int(v) for v in path.stem.split("_")[2:4])
        scale = D.SMEAR_TILE_MPP / D.SMEAR_OVERVIEW_MPP
        bx, by = int(x * scale), int(y * scale)
        there = float(np.nanmean(ov.cover[by:by + 8, bx:bx + 8]))
        print(f"| {path.name} | {','.join(q.reasons) or 'pass'} | {q.edge_sigma_um:.2f} | {q.rbc_coverage:.2f} | "
              f"{q.glass_fraction:.2f} | {q.area_od:.3f} | {there:.3f} |")
    k = od_per_cover(tiles)
    block_um = tile_px * SEG.working_mpp
    ov = overview_crowding(overview, D.SMEAR_OVERVIEW_MPP, block_um, k, QP)
    rows, cols = ov.cover.shape
    print(f"\nOverview {overview.shape[1]}×{overview.shape[0]} px at an assumed {D.SMEAR_OVERVIEW_MPP:g} µm/px "
          f"(a red cell is half a pixel: the per-tile crowding measure cannot be judged there); blocks of "
          f"{ov.block_px} px = {block_um:.0f} µm (one 1024² working tile); area OD per unit red-cell cover from "
          f"the three tiles: {k:.3f}.  Map (columns = blocks left to right; T thick, t thin, . readable, "
          f"space glass), and the verdicts per third of the smear's length:")
    sym = {"thick": "T", "thin": "t", "glass": " ", "": "."}
    print("```")
    for r in range(rows):
        print("".join(sym[v] for v in ov.verdict[r]))
    print("```")
    smear = ov.verdict != "glass"
    xs = np.nonzero(smear.any(axis=0))[0]
    thirds = np.array_split(np.arange(xs.min(), xs.max() + 1), 3)
    print("| part of the smear (columns) | blocks | thick | thin | readable | cover p2 / p50 / p98 |")
    print("|---|---|---|---|---|---|")
    for name, cs in zip(("thick end (left)", "middle", "feathered edge (right)"), thirds):
        v = ov.verdict[:, cs][smear[:, cs]]
        c = ov.cover[:, cs][smear[:, cs]]
        print(f"| {name} ({cs[0]}-{cs[-1]}) | {v.size} | {np.mean(v == 'thick'):.2f} | {np.mean(v == 'thin'):.2f} | "
              f"{np.mean(v == ''):.2f} | {pct(pd.Series(c))} |")
    for path, q in zip(sorted(root.glob("I_*.png")), tiles):
        x, y = (int(v) for v in path.stem.split("_")[2:4])
        r, c = int(y * D.SMEAR_TILE_MPP / block_um), int(x * D.SMEAR_TILE_MPP / block_um)
        print(f"- {path.name}: overview block ({r}, {c}) -> {ov.verdict[r, c] or 'readable'} "
              f"(cover {ov.cover[r, c]:.2f}); the tile itself: {','.join(q.reasons) or 'pass'}")


def segmentation_at(rev: str):
    """`bcscan.scan.segmentation` as it was at git revision `rev` (the time's code with the time's defaults)."""
    shown = subprocess.run(["git", "show", f"{rev}:bcscan/scan/segmentation.py"], cwd=Path(__file__).parent,
                           capture_output=True, text=True)
    if shown.returncode:
        sys.exit(f"the cost ratio needs commit {rev} of this repository's history: {shown.stderr.strip()}")
    source = shown.stdout
    module = types.ModuleType(f"segmentation_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:bcscan/scan/segmentation.py", "exec"), module.__dict__)
    return module


def cost(works: list[np.ndarray], repeats: int = 5) -> None:
    """Segmentation + quality now against the segmentation of the day issue 13 was filed (code and defaults of
    BEFORE_ISSUE_13; the acceptance ratio, <= 1.2), on 1024² working-scale tiles mirror-tiled from real fields.

    The three steps run interleaved on each tile, in alternating order, and each keeps its best of
    `repeats`: a load that comes and goes then slows all three alike, and the ratio holds on a busy machine."""
    before = segmentation_at(BEFORE_ISSUE_13)
    steps = (lambda tile: before.segment(tile, SEG.working_mpp, before.SegmentationParams()),
             lambda tile: segment(tile, SEG.working_mpp, SEG))
    best = np.full((len(works), 3), np.inf)  # per tile: segment before, segment now, measure_tile
    for i, work in enumerate(works):
        tile = np.pad(work, ((0, max(0, 1024 - work.shape[0])), (0, max(0, 1024 - work.shape[1])), (0, 0)),
                      mode="symmetric")[:1024, :1024].copy()
        for r in range(repeats):
            for step in ((0, 1) if r % 2 else (1, 0)):
                t0 = time.perf_counter()
                seg = steps[step](tile)
                t1 = time.perf_counter()
                best[i, step] = min(best[i, step], t1 - t0)
                if step == 1:
                    measure_tile(tile, seg, SEG, QP)
                    best[i, 2] = min(best[i, 2], time.perf_counter() - t1)
    then, now, quality = best.sum(axis=0) * 1000 / (len(works) * 1024 * 1024 / 1e6)
    print(f"\n## Cost on {len(works)} 1024² tiles, best of {repeats}, ms/MP: segment at {BEFORE_ISSUE_13} (before "
          f"issue 13) {then:.0f}, segment now {now:.0f}, measure_tile {quality:.0f}; (segment + measure_tile) / "
          f"segment before **{(now + quality) / then:.2f}** (target <= 1.2), measure_tile / segment {quality / now:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA)
    ap.add_argument("--per-source", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", type=Path, help="write every measurement here")
    ap.add_argument("--cost-only", action="store_true", help="only the cost ratio (a minute)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no shared data at {args.data}", file=sys.stderr)
        return 2
    if args.cost_only:
        cost([resample(read_rgb(f.path), f.mpp, SEG.working_mpp) for f in D.sample_fields(args.data, 2, args.seed)])
        return 0
    t0 = time.time()
    fields = D.sample_fields(args.data, args.per_source, args.seed)
    rows, works = field_rows(fields)
    rows += crowding_rows(works)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(f"# quality thresholds: {len(fields)} real fields, {len(df)} measurements, {time.time() - t0:.0f} s")
    print("QualityParams:", QP)
    report(df)
    cell_free_pieces(args.data)
    smear_overview(args.data)
    cost([w for ws in works.values() for w in ws[:2]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
