"""Platelet clumps are not white cells (issue 26 item 3): what the clump test drops, and what it costs.

    python benchmarks/platelet_clumps.py [--data ../shared/data] [--field-step N] [--set NAME=VALUE ...]
                                         [--fit [--keep-fitted-bias]] [--sheet PNG] [--no-cost]

Every image is resampled to the working resolution and segmented as the pipeline does, then the
clump test (bcscan.scan.platelets, shipped PlateletParams) is applied.  Images are split by their
index in each folder, sorted by name: even = the fit half, odd = the report half.  Prints:

- PBC ``platelet``: the share of images with any detection, before / after, per half;
- the single-cell sets of white cells (the 7 other PBC types; every class of mll-bone-marrow and
  lmu-aml-blood, blasts included; the Zheng 2018 crops): images with a detection at the centre, and how
  many of those the test drops, per half;
- Ghaderzadeh fields (B-ALL: Early, Pre, Pro; Benign: hematogones), every N-th: detections per field
  before / after, per half (no boxes there: `--sheet` draws what was dropped, to look at);
- the box-labelled normal sources (BCCD, TXL-PBC train+val, as detection_loso.py reads them; not used
  by the fit): detections matching a WBC box and the others, dropped by the test;
- the cost: segment() alone and segment() + the test on slide-like mosaics of BCCD / TXL fields, in one
  run, interleaved, and their ratio.

`--fit` fits the logistic weights (Newton's method, a little ridge, both classes weighing the same) on
the fit half's judged detections: the platelet images' centre detections against the centre detections
of the white-cell sets and every Ghaderzadeh detection, each of these a tenth (they are not labelled and
some are clumps: counting them as white cells errs on the side of keeping blasts).  The bias is then
lowered in steps of 0.05 until no fit-half white cell is dropped (not with `--keep-fitted-bias`), and both
are printed for PlateletParams.  `--set` changes a gate of PlateletParams first (e.g. max_even=1: none).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bcscan.scan.crops import crop_cells
from bcscan.scan.platelets import FEATURES, PlateletParams, clump_features, clump_scores, white_cells
from bcscan.scan.reading import resample
from bcscan.scan.segmentation import SegmentationParams, segment
from bcscan.testing import groundtruth as V

SEG = SegmentationParams()
PLATELETS = "pbc-normal/platelet"
WHITE_CELLS = {**{f"pbc-normal/{t}": V.PBC_MPP for t in ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                                                         "monocyte", "neutrophil")},
               **{f"mll-bone-marrow/{t}": 0.075 for t in ("BLA", "LYT", "MON", "NGS", "EOS")},
               **{f"lmu-aml-blood/{t}": 0.117 for t in ("MYO", "MOB", "NGS", "LYT", "MON", "EOS", "BAS")}}
"""Folders of single white cells and their µm/px (README of ../shared/data); blasts: BLA, MYO, MOB."""
ZHENG = ("Dataset1", "Dataset2")
FIELD_FOLDERS = ("Early", "Pre", "Pro", "Benign")
CENTRE_UM = 8.0
"""A single-cell image's own cell is the detection nearest its centre, if within this distance."""
L2 = 1e-3
GHADERZADEH_WEIGHT = 0.1


@dataclasses.dataclass
class ImageDetections:
    """One image's detections: which is at the centre (-1: none) and the clump test's figures of those it tests."""

    path: Path
    index: int           # in its folder, sorted by name
    count: int
    centres: np.ndarray  # (count, 2) x, y at the working resolution
    centre: int          # label of the centre detection, or -1
    tested: np.ndarray   # labels tested
    features: np.ndarray


def working_image(path: Path, mpp: float) -> np.ndarray:
    return resample(V.read_rgb(path), mpp, SEG.working_mpp)


def detections(path: Path, index: int, mpp: float, platelets: PlateletParams) -> ImageDetections:
    work = working_image(path, mpp)
    seg = segment(work, SEG.working_mpp, SEG)
    h, w = work.shape[:2]
    centre = -1
    if seg.cells:
        distances = [np.hypot(c.x - w / 2, c.y - h / 2) * SEG.working_mpp for c in seg.cells]
        nearest = int(np.argmin(distances))
        centre = nearest + 1 if distances[nearest] <= CENTRE_UM else -1
    tested, features = clump_features(work, seg, SEG, platelets)
    centres = np.array([(c.x, c.y) for c in seg.cells]).reshape(-1, 2)
    return ImageDetections(path, index, len(seg.cells), centres, centre, tested, features)


def dropped(image: ImageDetections, platelets: PlateletParams) -> set[int]:
    return set(image.tested[clump_scores(image.features, platelets) > 0].tolist()) if platelets.enabled else set()


def collect(data: Path, field_step: int, platelets: PlateletParams) -> dict[str, list[ImageDetections]]:
    sets = {PLATELETS: V.PBC_MPP, **WHITE_CELLS}
    found = {name: [detections(f, i, mpp, platelets) for i, f in enumerate(sorted((data / name).glob("*.jpg")))]
             for name, mpp in sets.items()}
    for dataset in ZHENG:
        found[f"zheng {dataset}"] = [detections(s.image, i, s.mpp, platelets)
                                     for i, s in enumerate(V.zheng_samples(data, dataset))]
    for folder in FIELD_FOLDERS:
        files = V.ghaderzadeh_fields(data, folder, field_step)
        found[f"ghaderzadeh {folder}"] = [detections(f, i, V.GHADERZADEH_MPP, platelets) for i, f in enumerate(files)]
    return found


def fit(found: dict[str, list[ImageDetections]]) -> tuple[np.ndarray, float, float]:
    """Logistic weights and bias on the fit half (even images), both classes weighing the same; and the
    bias lowered in steps of 0.05 until no white cell of the fit half scores above zero."""
    rows, labels, weights = [], [], []
    for name, images in found.items():
        for im in images[::2]:
            if name.startswith("ghaderzadeh"):
                rows.append(im.features)
                labels.append(np.full(len(im.tested), -1.0))  # unlabelled: counted as white cells, a tenth each
                weights.append(np.full(len(im.tested), GHADERZADEH_WEIGHT))
            elif im.centre in im.tested:
                rows.append(im.features[list(im.tested).index(im.centre)][None])
                labels.append(np.full(1, float(name == PLATELETS)))
                weights.append(np.ones(1))
    x, labelled, weight = np.concatenate(rows), np.concatenate(labels), np.concatenate(weights)
    y = (labelled == 1).astype(float)
    weight = np.where(y == 1, 0.5 * weight / weight[y == 1].sum(), 0.5 * weight / weight[y == 0].sum())
    design = np.c_[np.ones(len(x)), x]
    beta = np.zeros(design.shape[1])
    ridge = L2 * np.diag([0.0] + [1.0] * x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ beta))
        hessian = design.T @ (design * (weight * p * (1 - p))[:, None]) + ridge
        step = np.linalg.solve(hessian, design.T @ (weight * (p - y)) + ridge @ beta)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    highest_white_cell = float((design[labelled == 0] @ beta).max())
    return beta[1:], float(beta[0]), float(beta[0]) - np.ceil(max(highest_white_cell, 0.0) / 0.05) * 0.05


def report(found: dict[str, list[ImageDetections]], platelets: PlateletParams) -> None:
    print("\n| set | half | images | with a detection: before / after | detections per image: before / after | "
          "centre cell dropped by the test |")
    print("|---|---|---|---|---|---|")
    for name, images in found.items():
        if name.startswith("ghaderzadeh"):
            continue
        for half, part in (("fit", images[::2]), ("report", images[1::2])):
            before = np.array([im.count for im in part])
            after = before - np.array([len(dropped(im, platelets)) for im in part])
            with_centre = [im for im in part if im.centre > 0]
            lost = sum(im.centre in dropped(im, platelets) for im in with_centre)
            print(f"| {name} | {half} | {len(part)} | {(before > 0).mean():.3f} / {(after > 0).mean():.3f} | "
                  f"{before.mean():.2f} / {after.mean():.2f} | {lost} of {len(with_centre)} |")
    print("\n| Ghaderzadeh folder | half | fields | detections per field: before / after | "
          "fields with none: before / after |")
    print("|---|---|---|---|---|")
    for name, images in found.items():
        if not name.startswith("ghaderzadeh"):
            continue
        for half, part in (("fit", images[::2]), ("report", images[1::2])):
            before = np.array([im.count for im in part])
            after = before - np.array([len(dropped(im, platelets)) for im in part])
            print(f"| {name.split()[1]} | {half} | {len(part)} | {before.mean():.2f} / {after.mean():.2f} | "
                  f"{(before == 0).mean():.3f} / {(after == 0).mean():.3f} |")


def box_sources(data: Path, platelets: PlateletParams) -> None:
    """Detection on the box-labelled normal sources with the shipped segmentation, before / after the test."""
    scores: dict[str, list[tuple[V.DetectionScore, V.DetectionScore]]] = {}
    for sample in itertools.chain(V.bccd_samples(data), V.txl_samples(data)):
        field = V.WorkingField.of(sample, SEG.working_mpp)
        scores.setdefault(sample.source, []).append((field.score(SEG), field.score(SEG, platelets)))
    print("\n| source | images | WBC boxes | F1 before / after | count exact before / after | "
          "matched detections dropped | other detections dropped |")
    print("|---|---|---|---|---|---|---|")
    for source, pairs in scores.items():
        before, after = V.pooled(p[0] for p in pairs), V.pooled(p[1] for p in pairs)
        print(f"| {source} | {before.images} | {before.gt} | {before.f1:.3f} / {after.f1:.3f} | "
              f"{before.count_exact:.3f} / {after.count_exact:.3f} | {before.tp - after.tp} | "
              f"{(before.detections - before.tp) - (after.detections - after.tp)} |")


def contact_sheet(found: dict[str, list[ImageDetections]], platelets: PlateletParams, path: Path,
                  side_um: float = 16.0, zoom: int = 4, columns: int = 10) -> int:
    """Draws every Ghaderzadeh detection the test drops, centred, `side_um` across, for a look by eye;
    returns how many."""
    side = int(round(side_um / SEG.working_mpp))
    crops = []
    for name, images in found.items():
        if not name.startswith("ghaderzadeh"):
            continue
        for im in images:
            labels = sorted(dropped(im, platelets))
            if labels:
                work = working_image(im.path, V.GHADERZADEH_MPP)
                crops += list(crop_cells(work, im.centres[[k - 1 for k in labels]], side))
    count = len(crops)
    if crops:
        crops += [np.full_like(crops[0], 255)] * (-count % columns)
        rows = [np.hstack(crops[i:i + columns]) for i in range(0, len(crops), columns)]
        sheet = cv2.resize(np.vstack(rows), None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return count


def mosaics(data: Path, n: int = 60) -> list[np.ndarray]:
    """BCCD / TXL fields at the working resolution, tiled 4x4 into slide-like images (as
    segmentation_accuracy.ms_per_megapixel does)."""
    images = [resample(V.read_rgb(s.image), s.mpp, SEG.working_mpp)
              for s in itertools.islice(itertools.chain(V.bccd_samples(data), V.txl_samples(data)), 0, 8 * n, 8)]
    out = []
    for i in range(0, len(images) - 15, 16):
        rows = []
        for r in range(4):
            row = images[i + 4 * r:i + 4 * r + 4]
            rows.append(np.hstack([im[:min(im.shape[0] for im in row)] for im in row]))
        out.append(np.vstack([r[:, :min(r.shape[1] for r in rows)] for r in rows]))
    return out


def cost(data: Path, platelets: PlateletParams, repeats: int = 4) -> tuple[float, float]:
    """ms per megapixel of segment() alone and of segment() + the clump test, best of `repeats` interleaved runs."""
    tiles = mosaics(data)
    megapixels = sum(t.shape[0] * t.shape[1] for t in tiles) / 1e6

    def alone(tile):
        return segment(tile, SEG.working_mpp, SEG)

    def tested(tile):
        return white_cells(tile, SEG, platelets)

    best = {alone: np.inf, tested: np.inf}
    tested(tiles[0])  # warm-up
    for _ in range(repeats):
        for step in best:
            t0 = time.perf_counter()
            for tile in tiles:
                step(tile)
            best[step] = min(best[step], 1000 * (time.perf_counter() - t0) / megapixels)
    return best[alone], best[tested]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=V.SHARED_DATA)
    ap.add_argument("--field-step", type=int, default=2, help="every N-th Ghaderzadeh field per folder")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a number of PlateletParams other than the shipped one (a gate, the bias)")
    ap.add_argument("--fit", action="store_true", help="fit the weights on the fit half and report with them")
    ap.add_argument("--keep-fitted-bias", action="store_true", help="with --fit: the logistic's own bias")
    ap.add_argument("--no-cost", action="store_true", help="skip the speed measurement")
    ap.add_argument("--sheet", type=Path, help="PNG of the Ghaderzadeh detections the test drops, to look at")
    args = ap.parse_args(argv)
    if not (args.data / "pbc-normal").is_dir():
        print(f"no shared data at {args.data}", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    changes = dict(item.split("=", 1) for item in args.set)
    platelets = dataclasses.replace(PlateletParams(), **{name: float(value) for name, value in changes.items()})
    print(f"PlateletParams: {platelets}")
    found = collect(args.data, args.field_step, platelets)
    if args.fit:
        weights, fitted_bias, bias = fit(found)
        platelets = dataclasses.replace(platelets, weights=tuple(round(float(w), 2) for w in weights),
                                        bias=round(fitted_bias if args.keep_fitted_bias else bias, 2))
        print(f"fitted on the fit half: weights ({', '.join(FEATURES)}) = {platelets.weights}, bias {fitted_bias:.2f}, "
              f"lowered until no fit-half white cell is dropped {bias:.2f}; used: {platelets.bias}")
    report(found, platelets)
    box_sources(args.data, platelets)
    if args.sheet:
        print(f"\n{contact_sheet(found, platelets, args.sheet)} Ghaderzadeh detections dropped: {args.sheet}")
    if not args.no_cost:
        alone, tested = cost(args.data, platelets)
        print(f"\ncost: segment() {alone:.1f} ms/MP, segment() + clump test {tested:.1f} ms/MP: "
              f"x{tested / alone:.2f} (best of 4 interleaved runs, one thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
