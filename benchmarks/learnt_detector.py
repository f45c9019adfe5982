"""A learnt white-cell detector (issue 26 item 2), leave one source out: what a small network does where the
colour rules stop; and the training of the centre network bcscan ships (`scan.centres`).

    python benchmarks/learnt_detector.py [--data ../shared/data] [--work runs/learnt-detector] [--seed 0]
                                         [--folds all | SOURCE,...] [--steps 2000]
    python benchmarks/learnt_detector.py --ship models/bcscan-centres.onnx     # every source, about 4 minutes

The network: a small U-Net (8-64 channels, 0.16 M parameters) on each image's optical density at 0.8 µm/px, that
marks white-cell centres as a heat map at 1.6 µm/px and regresses each cell's box size there (CenterNet's
penalty-reduced focal loss; Zhou et al. 2019, "Objects as points").  Trained from scratch on the box-labelled
sources, every (source) an equal share of each batch of 32 random 64 x 64 crops (images smaller than a crop are
padded with glass), quarter turns, flips and a stain gain per channel; 2,000 steps (3-4 minutes on this CPU).
Detections: heat-map peaks above 0.3 (none within 3.2 µm of a higher one: `scan.centres.peaks`) with their
regressed boxes.

Scored three ways: the network alone (its peaks and boxes), the shipped detection (the colour rules' cells
reconciled with the fold's network exported to ONNX, `scan.centres`, then the platelet test) and the colour rules
alone; each matched to the boxes one-to-one at IoU >= 0.5, and by centres (each box holding the other's centre,
`groundtruth.match_centres`: where a cell is, as it is counted and cropped, however tightly its outline is drawn).

Platelet clumps are taught as what is not a white cell: the fit half of `pbc-normal/platelet` (even images by
name, as benchmarks/platelet_clumps.py splits them) joins every fold's training as one more source, with no box
(`--no-platelet-negatives`: without).  Each fold reports the share of the report half (odd images, never trained
on) with any detection of the shipped detection (issue 26: <= 5 %).  The three images of either half that hold a
white cell (groundtruth.PLATELET_IMAGES_WITH_A_WHITE_CELL) are in neither.

Sources: the leukaemic fields boxed by eye (bcscan/testing/data/leukaemic_boxes.csv: Ghaderzadeh Early, Pre, Pro,
Benign, mll-bone-marrow, lmu-aml-blood) and the normal box-labelled sources (BCCD and the four TXL-PBC sources),
as benchmarks/compact_nuclei.py scores them (IoU >= 0.5, one-to-one; blasts: boxes marked blast).  For each source
a model is trained on all the others and scored on it, at the threshold 0.3 and, for reading only, 0.2 / 0.4 / 0.5.
Prints one line per fold and threshold and a markdown table; the fold models are kept in --work (Keras and ONNX).
A second table splits recall between cells inside the image and cells cut by its edge (a box within EDGE_PX of the
border): a third of the Ghaderzadeh boxes are such half cells, which a slide's overlapping tiles show whole.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import operator
import pickle
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np

from bcscan.model.onnx_backend import keras_to_onnx
from bcscan.scan.centres import METADATA_KEYS, CentreMaps, CentreParams, network_input, padded_batch, peaks
from bcscan.scan.platelets import PlateletParams
from bcscan.scan.segmentation import SegmentationParams
from bcscan.testing import groundtruth as G

MPP = 0.8          # µm/px of the network's input
STRIDE = 2         # its heat map is at MPP * STRIDE
CROP = 64          # px of a training crop
SIGMA_UM = 2.0     # spread of a centre's mark on the heat map
BACKGROUND_PERCENTILE = 90.0  # the glass of an image's optical density: its brightest tenth
MAX_OD = 3.0       # optical density clipped here
SIZE_UNIT_UM = 10.0  # box sizes are regressed in this unit
PLATELETS = "pbc-platelet"  # the source name of the platelet images taught as negatives
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
EDGE_PX = 2  # a box this close to its image's border (own pixels) is a cell cut by the edge
MIN_VISIBLE_UM = 1.5  # with visible-only targets, a cut cell narrower than this is not marked


def input_of(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """The network's input of an image at `mpp` (`scan.centres.network_input` with this recipe's scale)."""
    return network_input(rgb, mpp, MPP, BACKGROUND_PERCENTILE, MAX_OD)


def fields(data: Path, cache: Path) -> list[dict]:
    """Every boxed field as optical density at MPP with its boxes there (and in its own pixels), blast marks and
    source; cached in `cache`."""
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    blasts = {image: [b.kind == "blast" for b in boxes] for image, boxes in G.leukaemic_boxes_by_image().items()}
    samples = [s for s in list(G.bccd_samples(data)) + list(G.txl_samples(data)) if s.source in G.NORMAL_BOX_SOURCES]
    out = []
    for s in samples + list(G.leukaemic_samples(data)):
        rgb = G.read_rgb(s.image)
        od = input_of(rgb, s.mpp)
        scale = np.array([od.shape[1] / rgb.shape[1], od.shape[0] / rgb.shape[0]] * 2)
        boxes = np.asarray(s.boxes, float).reshape(-1, 4)
        out.append(dict(source=s.source, image=s.image, mpp=s.mpp, od=od, boxes=boxes * scale, original_boxes=boxes, to_original=1 / scale,
                        blast=np.array(blasts.get(str(s.image.relative_to(data)), [False] * len(boxes)), bool)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(out))
    return out


def platelet_negatives(data: Path, half: str) -> list[dict]:
    """The PBC platelet images of one half ("fit": even by name, "report": odd) as items without boxes, but for
    those that hold a white cell (G.PLATELET_IMAGES_WITH_A_WHITE_CELL)."""
    paths = [path for path in sorted((data / "pbc-normal" / "platelet").glob("*.jpg"))[{"fit": 0, "report": 1}[half]::2]
             if path.stem not in G.PLATELET_IMAGES_WITH_A_WHITE_CELL]
    none = np.zeros((0, 4))
    return [dict(source=PLATELETS, image=path, mpp=G.PBC_MPP, boxes=none, original_boxes=none, blast=np.zeros(0, bool),
                 od=input_of(G.read_rgb(path), G.PBC_MPP))
            for path in paths]


def pipeline_detections(item: dict, centres: CentreParams | None) -> np.ndarray:
    """Boxes (the item's own pixels) of segment(), reconciled with the learnt centres given `centres`, and the
    platelet test, as `bcscan scan` finds them on fields."""
    params = SegmentationParams()
    sample = G.BoxSample(item["image"], item["original_boxes"], item["mpp"], item["source"])
    return G.WorkingField.of(sample, params.working_mpp).detections(params, PlateletParams(), centres)


def platelet_share(items: list[dict], centres: CentreParams | None) -> float:
    """The share of platelet images (`items`) with any detection of the shipped detection."""
    return float(np.mean([len(pipeline_detections(item, centres)) > 0 for item in items]))


def targets(h: int, w: int, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heat map, box size (µm / SIZE_UNIT_UM) and where a size is set, at the heat map's resolution."""
    oh, ow = -(-h // STRIDE), -(-w // STRIDE)
    heat = np.zeros((oh, ow), np.float32)
    size = np.zeros((oh, ow, 2), np.float32)
    mask = np.zeros((oh, ow), np.float32)
    yy, xx = np.mgrid[0:oh, 0:ow]
    sigma = SIGMA_UM / (MPP * STRIDE)
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        if not (0 <= cx < ow and 0 <= cy < oh):
            continue
        heat = np.maximum(heat, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)))
        heat[int(cy), int(cx)] = 1.0
        size[int(cy), int(cx)] = ((x1 - x0) * MPP / SIZE_UNIT_UM, (y1 - y0) * MPP / SIZE_UNIT_UM)
        mask[int(cy), int(cx)] = 1.0
    return heat, size, mask


def augment(od: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, stain_mix: float = 0.0,
            blur_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A random quarter turn and flip (boxes follow) and a stain gain per channel; optionally each channel's
    optical density mixed with the others' (up to `stain_mix` of each: dyes absorbing elsewhere, Raabin's violet
    red cells) and a Gaussian blur of up to `blur_px`."""
    h, w = od.shape[:2]
    turns = rng.integers(4)
    od = np.rot90(od, turns)
    for _ in range(turns):  # counter-clockwise: (x, y) -> (y, w - x)
        boxes = np.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], 1) if len(boxes) else boxes
        h, w = w, h
    if rng.random() < 0.5:
        od = od[:, ::-1]
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1) if len(boxes) else boxes
    od = od * rng.uniform(0.75, 1.3, 3).astype(np.float32) * rng.uniform(0.8, 1.2)
    if stain_mix > 0:
        mix = np.eye(3, dtype=np.float32) + rng.uniform(-stain_mix, stain_mix, (3, 3)).astype(np.float32) * (1 - np.eye(3, dtype=np.float32))
        od = np.maximum(od @ mix, 0.0)
    if blur_px > 0:
        sigma = rng.uniform(0, blur_px)
        od = cv2.GaussianBlur(np.ascontiguousarray(od), (0, 0), sigma) if sigma > 0.1 else od
    return np.ascontiguousarray(od, dtype=np.float32), boxes


def crop(od: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
         visible_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A random CROP x CROP window (glass around an image smaller than that) and the boxes centred in it; with
    `visible_only`, every box cut to the window's image part (a cut cell marked at the centre of what is seen,
    as the ground truth boxes cells cut by an image's edge), if at least MIN_VISIBLE_UM of it is seen."""
    h, w = od.shape[:2]
    y0, x0 = rng.integers(0, max(h - CROP, 0) + 1), rng.integers(0, max(w - CROP, 0) + 1)
    out = np.zeros((CROP, CROP, 3), np.float32)
    part = od[y0:y0 + CROP, x0:x0 + CROP]
    oy, ox = rng.integers(0, CROP - part.shape[0] + 1), rng.integers(0, CROP - part.shape[1] + 1)
    out[oy:oy + part.shape[0], ox:ox + part.shape[1]] = part
    b = boxes - np.array([x0, y0, x0, y0]) + np.array([ox, oy, ox, oy])
    if visible_only:
        b = np.clip(b, [ox, oy, ox, oy], [ox + part.shape[1], oy + part.shape[0]] * 2)
        return out, b[np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * MPP >= MIN_VISIBLE_UM]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    inside = (cx >= ox) & (cx < ox + part.shape[1]) & (cy >= oy) & (cy < oy + part.shape[0])
    return out, b[inside]


def whole_cells(items: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every boxed cell not cut by its image's edge as its optical density and an elliptic mask inside its box:
    what `paste` puts into training crops."""
    cells = []
    for item in items:
        h, w = item["od"].shape[:2]
        for x0, y0, x1, y1 in np.round(item["boxes"]).astype(int):
            if x0 > 0 and y0 > 0 and x1 < w and y1 < h and min(x1 - x0, y1 - y0) >= 4:
                disc = np.zeros((y1 - y0, x1 - x0), np.uint8)
                cv2.ellipse(disc, ((x1 - x0) // 2, (y1 - y0) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, 1, -1)
                cells.append((item["od"][y0:y1, x0:x1], disc.astype(bool)))
    return cells


def paste(od: np.ndarray, boxes: np.ndarray, cells: list, count: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` cells of `cells` (whole_cells) pasted into the crop `od` at random places, each turned and flipped at
    random and marked; a box whose centre a pasted cell covers is no longer a target (copy-paste augmentation,
    Ghiasi et al. 2021: crowding the crops as blasts crowd a leukaemic field)."""
    od = od.copy()
    for _ in range(count):
        cell, disc = cells[rng.integers(len(cells))]
        turns, flip = rng.integers(4), rng.random() < 0.5
        cell, disc = np.rot90(cell, turns), np.rot90(disc, turns)
        if flip:
            cell, disc = cell[:, ::-1], disc[:, ::-1]
        ch, cw = disc.shape
        if ch >= CROP or cw >= CROP:
            continue
        y0, x0 = rng.integers(0, CROP - ch + 1), rng.integers(0, CROP - cw + 1)
        od[y0:y0 + ch, x0:x0 + cw][disc] = cell[disc]
        if len(boxes):
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            covered = ((cx - x0 - cw / 2) / (cw / 2)) ** 2 + ((cy - y0 - ch / 2) / (ch / 2)) ** 2 < 1
            boxes = boxes[~covered]
        boxes = np.concatenate([boxes.reshape(-1, 4), [[x0, y0, x0 + cw, y0 + ch]]])
    return od, boxes


def batches(items: list[dict], rng: np.random.Generator, size: int = 32, visible_only: bool = False,
            paste_cells: int = 0, **augmentation):
    """Endless batches (input, heat map, box size, size mask), every source an equal share; with `paste_cells`,
    half the crops get 1 to that many whole cells of the boxed sources pasted in (`paste`)."""
    by_source: dict[str, list[dict]] = {}
    for item in items:
        by_source.setdefault(item["source"], []).append(item)
    sources = list(by_source)
    cells = whole_cells(items) if paste_cells else []
    while True:
        parts = []
        for _ in range(size):
            group = by_source[sources[rng.integers(len(sources))]]
            item = group[rng.integers(len(group))]
            od, boxes = crop(*augment(item["od"], item["boxes"], rng, **augmentation), rng, visible_only)
            if cells and rng.random() < 0.5:
                od, boxes = paste(od, boxes, cells, int(rng.integers(1, paste_cells + 1)), rng)
            parts.append((od, *targets(CROP, CROP, boxes)))
        x, heat, box_size, mask = (np.stack(p).astype(np.float32) for p in zip(*parts))
        yield x, heat[..., None], box_size, mask[..., None]


def network(width: int = 8):
    """The U-Net: input any size divisible by 8, heat map (sigmoid) and box size at half its resolution."""
    import tensorflow as tf
    layers = tf.keras.layers

    def block(x, channels):
        for _ in range(2):
            x = layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization()(x))
        return x

    inputs = layers.Input((None, None, 3))
    a = block(inputs, width)                                   # 0.8 µm/px
    b = block(layers.MaxPool2D()(a), 2 * width)                # 1.6
    c = block(layers.MaxPool2D()(b), 4 * width)                # 3.2
    d = block(layers.MaxPool2D()(c), 4 * width)                # 6.4
    u = block(layers.Concatenate()([layers.UpSampling2D()(d), c]), 4 * width)
    u = block(layers.Concatenate()([layers.UpSampling2D()(u), b]), 2 * width)  # 1.6
    heat = layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=tf.keras.initializers.Constant(-2.19))(u)
    return tf.keras.Model(inputs, [heat, layers.Conv2D(2, 1)(u)])


def train(items: list[dict], steps: int, seed: int, **augmentation):
    """The network trained `steps` batches on `items` (focal loss on the heat map, L1 on the sizes)."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    model = network()
    optimiser = tf.keras.optimizers.Adam(tf.keras.optimizers.schedules.CosineDecay(2e-3, steps))

    @tf.function(jit_compile=True)
    def step(x, heat, box_size, mask):
        with tf.GradientTape() as tape:
            p, size = model(x, training=True)
            p = tf.clip_by_value(p, 1e-4, 1 - 1e-4)
            centre = tf.cast(heat >= 0.999, tf.float32)
            centres = tf.maximum(tf.reduce_sum(centre), 1.0)
            focal = -tf.reduce_sum(centre * (1 - p) ** 2 * tf.math.log(p)
                                   + (1 - centre) * (1 - heat) ** 4 * p ** 2 * tf.math.log(1 - p))
            loss = focal / centres + 0.1 * tf.reduce_sum(mask * tf.abs(size - box_size)) / centres
        optimiser.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    draws = batches(items, np.random.default_rng(seed), **augmentation)
    for _ in range(steps):
        step(*next(draws))
    return model


def network_maps(model, od: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The network's heat map and box sizes on `od` (padded to a multiple of 8), and `od`'s height and width."""
    heat, size = (t.numpy()[0] for t in model(padded_batch(od), training=False))
    return heat[..., 0], size, od.shape[:2]


def detect(maps: tuple[np.ndarray, np.ndarray, tuple[int, int]], params: CentreParams) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) at MPP of the heat map's peaks, as `scan.centres` finds them (`maps`: network_maps)."""
    heat, size, (h, w) = maps
    centres, box_um = peaks(CentreMaps(heat, size * SIZE_UNIT_UM, MPP * STRIDE, np.array([STRIDE, STRIDE], float)),
                            params)
    keep = (centres[:, 0] < w) & (centres[:, 1] < h)
    half = box_um[keep] / MPP / 2
    return np.concatenate([centres[keep] - half, centres[keep] + half], 1)


def network_boxes(maps: tuple, item: dict, threshold: float) -> np.ndarray:
    """The network's detections on `item` (its network_maps) in the item's own pixels."""
    h, w = item["od"].shape[:2]
    found = detect(maps, dataclasses.replace(CentreParams(), threshold=threshold))
    return np.clip(found, 0, [w, h, w, h]) * item["to_original"]


def score(maps: dict[int, tuple], items: list[dict], threshold: float) -> dict[str, G.BlastScore]:
    """Per source, the network's detections against the boxes (own pixels, IoU >= 0.5, one-to-one) and blasts
    found; `maps`: each item's network_maps, by id."""
    out: dict[str, G.BlastScore] = {}
    for item in items:
        s = blast_score(network_boxes(maps[id(item)], item, threshold), item)
        out[item["source"]] = out[item["source"]] + s if item["source"] in out else s
    return out


def cut_by_edge(item: dict) -> np.ndarray:
    """Which of the item's boxes reach its image's border: cells cut by the edge, which a slide's overlapping tiles
    show whole."""
    h, w = np.array(item["od"].shape[:2]) * item["to_original"][[1, 0]]
    b = item["original_boxes"]
    return (b[:, 0] <= EDGE_PX) | (b[:, 1] <= EDGE_PX) | (b[:, 2] >= w - EDGE_PX) | (b[:, 3] >= h - EDGE_PX)


def recall_by_cut(items: list[dict], detections: dict[int, np.ndarray]) -> np.ndarray:
    """Boxes matched and boxes in all of `items` by `detections` (by id, boxes in its own pixels): a row for the
    cells inside the image and one for those cut by its edge."""
    counts = np.zeros((2, 2), int)
    for item in items:
        matched = np.zeros(len(item["original_boxes"]), bool)
        matched[[j for _, j, _ in G.match_boxes(detections[id(item)], item["original_boxes"])]] = True
        cut = cut_by_edge(item)
        counts += [[np.sum(matched & ~cut), np.sum(~cut)], [np.sum(matched & cut), np.sum(cut)]]
    return counts


def blast_score(found: np.ndarray, item: dict, match=G.match_boxes) -> G.BlastScore:
    """Boxes `found` (the item's own pixels) against its boxes under `match`, and which of its blasts they match."""
    matched = {j for _, j, _ in match(found, item["original_boxes"])}
    blasts = set(np.nonzero(item["blast"])[0].tolist())
    return G.BlastScore(G.score_boxes(found, item["original_boxes"], match), len(blasts), len(blasts & matched))


def pooled_score(items: list[dict], detections: dict[int, np.ndarray], match=G.match_boxes) -> G.BlastScore:
    """Each item's `detections` (by id, boxes in its own pixels) against its boxes under `match`, added up."""
    return functools.reduce(operator.add, (blast_score(detections[id(item)], item, match) for item in items))


def print_scores(title: str, rows: dict[str, tuple], platelets: dict[str, float], leukaemic: list[str]) -> None:
    """The markdown table of each fold's (network, shipped, rules) scores, and the leukaemic folds pooled."""
    print(f"\n| left-out source ({title}) | network: P / R / F1 | blast recall | colour rules with the network's centres "
          f"(shipped): P / R / F1 | blast recall | colour rules alone: P / R / F1 | blast recall | platelet images with "
          f"a detection (shipped) |\n|---|---|---|---|---|---|---|---|")
    if leukaemic:
        rows = {**rows, "leukaemic sources pooled": tuple(
            functools.reduce(operator.add, (rows[f][k] for f in leukaemic)) for k in range(3))}
    for fold, results in rows.items():
        cells = [f"{r.cells.precision:.3f} / {r.cells.recall:.3f} / {r.cells.f1:.3f}" for r in results]
        blasts = [f"{r.blast_recall:.3f} ({r.blasts_found}/{r.blasts})" if r.blasts else "–" for r in results]
        share = f"{platelets[fold]:.3f}" if fold in platelets else "–"
        print(f"| {fold} | " + " | ".join(f"{c} | {b}" for c, b in zip(cells, blasts)) + f" | {share} |")


def save_onnx(model, path: Path, provenance: dict) -> None:
    """`model` as the ONNX file `scan.centres` reads: its input scale and units in the metadata, with `provenance`."""
    import onnx
    graph = onnx.load_from_string(keras_to_onnx(model, ("heat", "box_size")))
    meta = dict(zip(METADATA_KEYS, (MPP, STRIDE, BACKGROUND_PERCENTILE, MAX_OD, SIZE_UNIT_UM)))
    onnx.helper.set_model_props(graph, {**{k: str(v) for k, v in meta.items()}, "provenance": json.dumps(provenance)})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    onnx.save(graph, str(partial))
    partial.replace(path)  # a scan reading the shipped model never sees half a file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=G.SHARED_DATA)
    ap.add_argument("--work", type=Path, default=G.REPO_ROOT / "runs" / "learnt-detector")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--folds", default="all", help="comma-separated sources to leave out, or all")
    ap.add_argument("--stain-mix", type=float, default=0.0, help="augmentation: mix up to this share of each "
                    "channel's optical density into the others")
    ap.add_argument("--blur-px", type=float, default=0.0, help="augmentation: Gaussian blur of up to this sigma")
    ap.add_argument("--visible-targets", action=argparse.BooleanOptionalAction, default=False,
                    help="mark a cell cut by a training crop's edge at the centre of its visible part")
    ap.add_argument("--paste-cells", type=int, default=0, help="augmentation: paste 1 to this many whole boxed "
                    "cells into half the training crops (0: none)")
    ap.add_argument("--name", default="", help="suffix of the kept fold models' names (a variant)")
    ap.add_argument("--reuse", action="store_true", help="score the fold models kept in --work, train the missing")
    ap.add_argument("--platelet-negatives", action=argparse.BooleanOptionalAction, default=True,
                    help="train with the fit half of pbc-normal/platelet as images without a white cell")
    ap.add_argument("--keep-threshold", type=float, default=CentreParams().keep_threshold,
                    help="the shipped detection's keep_threshold (scan.centres) to score with")
    ap.add_argument("--ship", type=Path, help="train on every source and write the ONNX centre model here "
                    "(its Keras twin in --work), no scoring")
    args = ap.parse_args()
    import tensorflow as tf
    boxes_digest = hashlib.sha256(G.LEUKAEMIC_BOXES.read_bytes()).hexdigest()[:12]  # new boxes, new cache
    items = fields(args.data, args.work / f"fields-{boxes_digest}.pkl")
    sources = sorted({item["source"] for item in items})
    negatives = platelet_negatives(args.data, "fit") if args.platelet_negatives else []
    if args.ship:
        model = train(items + negatives, args.steps, args.seed, stain_mix=args.stain_mix, blur_px=args.blur_px,
                      visible_only=args.visible_targets, paste_cells=args.paste_cells)
        model.save(args.work / f"s{args.seed}{args.name}-all.keras")
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=G.REPO_ROOT).stdout.strip()
        save_onnx(model, args.ship, {"trained_on": {s: sum(i["source"] == s for i in items + negatives)
                                                    for s in sources + [PLATELETS] * bool(negatives)},
                                     "steps": args.steps, "seed": args.seed, "stain_mix": args.stain_mix,
                                     "blur_px": args.blur_px, "visible_targets": args.visible_targets,
                                     "paste_cells": args.paste_cells, "date": dt.date.today().isoformat(), "commit": commit,
                                     "command": "python benchmarks/learnt_detector.py --ship"})
        return
    folds = sources if args.folds == "all" else args.folds.split(",")
    report_half = platelet_negatives(args.data, "report")
    rows, by_centre, platelets, cuts = {}, {}, {}, {}
    print(f"keep_threshold {args.keep_threshold}")
    for fold in folds:
        t = time.perf_counter()
        path = args.work / f"s{args.seed}{args.name}-without-{fold}.keras"
        if args.reuse and path.exists():
            model = tf.keras.models.load_model(path)
        else:
            model = train([item for item in items if item["source"] != fold] + negatives, args.steps, args.seed,
                          stain_mix=args.stain_mix, blur_px=args.blur_px,
                          visible_only=args.visible_targets, paste_cells=args.paste_cells)
            model.save(path)
        save_onnx(model, path.with_suffix(".onnx"), {"left_out": fold, "seed": args.seed, "steps": args.steps})
        left_out = [item for item in items if item["source"] == fold]
        centres = CentreParams(model=str(path.with_suffix(".onnx")), keep_threshold=args.keep_threshold)
        maps = {id(item): network_maps(model, item["od"]) for item in left_out}
        for threshold in THRESHOLDS:
            c = score(maps, left_out, threshold)[fold].cells
            print(f"{fold} threshold {threshold}: P {c.precision:.3f} R {c.recall:.3f} F1 {c.f1:.3f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        network = {id(item): network_boxes(maps[id(item)], item, centres.threshold) for item in left_out}
        shipped = {id(item): pipeline_detections(item, centres) for item in left_out}
        rules = {id(item): pipeline_detections(item, None) for item in left_out}
        rows[fold] = tuple(pooled_score(left_out, found) for found in (network, shipped, rules))
        by_centre[fold] = tuple(pooled_score(left_out, found, G.match_centres) for found in (network, shipped, rules))
        platelets[fold] = platelet_share(report_half, centres)
        cuts[fold] = (recall_by_cut(left_out, network), recall_by_cut(left_out, shipped))
    leukaemic = [f for f in rows if f not in G.NORMAL_BOX_SOURCES]
    for matching, scores in (("IoU >= 0.5", rows), ("matched by centres", by_centre)):
        print_scores(f"seed {args.seed}, {matching}", scores, platelets, leukaemic)
    if leukaemic:
        cuts["leukaemic sources pooled"] = tuple(sum(cuts[f][k] for f in leukaemic) for k in range(2))
    print(f"\n| left-out source (seed {args.seed}) | network: recall of cells inside the image | of cells cut by its "
          f"edge | shipped: inside | cut by the edge |\n|---|---|---|---|---|")
    for fold, counts in cuts.items():
        print(f"| {fold} | " + " | ".join(f"{m / n:.3f} ({m}/{n})" if n else "–" for c in counts for m, n in c) + " |")
    print(f"\nPlatelet images (report half, {len(report_half)}) with a detection of the colour rules alone: "
          f"{platelet_share(report_half, None):.3f}")


if __name__ == "__main__":
    main()
