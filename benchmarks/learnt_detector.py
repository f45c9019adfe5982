"""A learnt white-cell detector (issue 26 item 2), leave one source out: what a small network does where the
colour rules stop.

    python benchmarks/learnt_detector.py [--data ../shared/data] [--work runs/learnt-detector] [--seed 0]
                                         [--folds all | SOURCE,...] [--steps 2000]

The network: a small U-Net (8-64 channels, 0.16 M parameters) on each image's optical density at 0.8 µm/px, that
marks white-cell centres as a heat map at 1.6 µm/px and regresses each cell's box size there (CenterNet's
penalty-reduced focal loss; Zhou et al. 2019, "Objects as points").  Trained from scratch on the box-labelled
sources, every (source) an equal share of each batch of 32 random 64 x 64 crops (images smaller than a crop are
padded with glass), quarter turns, flips and a stain gain per channel; 2,000 steps (3-4 minutes on this CPU).
Detections: heat-map peaks (3 x 3 maxima) above 0.3 with their regressed boxes.

Sources: the leukaemic fields boxed by eye (bcscan/testing/data/leukaemic_boxes.csv: Ghaderzadeh Early, Pre, Pro,
Benign, mll-bone-marrow, lmu-aml-blood) and the normal box-labelled sources (BCCD and the four TXL-PBC sources),
as benchmarks/compact_nuclei.py scores them (IoU >= 0.5, one-to-one; blasts: boxes marked blast).  For each source
a model is trained on all the others and scored on it, at the threshold 0.3 and, for reading only, 0.2 / 0.4 / 0.5.
Prints one line per fold and threshold and a markdown table; the fold models are kept in --work.
"""
from __future__ import annotations

import argparse
import functools
import operator
import pickle
import time
from pathlib import Path

import cv2
import numpy as np

from bcscan.scan.platelets import PlateletParams, white_cells
from bcscan.scan.reading import resample
from bcscan.scan.segmentation import SegmentationParams, optical_density
from bcscan.testing import groundtruth as G

MPP = 0.8          # µm/px of the network's input
STRIDE = 2         # its heat map is at MPP * STRIDE
CROP = 64          # px of a training crop
SIGMA_UM = 2.0     # spread of a centre's mark on the heat map
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
THRESHOLD = 0.3


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
        work = resample(rgb, s.mpp, MPP)
        scale = np.array([work.shape[1] / rgb.shape[1], work.shape[0] / rgb.shape[0]] * 2)
        boxes = np.asarray(s.boxes, float).reshape(-1, 4)
        out.append(dict(source=s.source, image=s.image, mpp=s.mpp, od=np.minimum(optical_density(work, 90.0), 3.0).astype(np.float32),
                        boxes=boxes * scale, original_boxes=boxes, to_original=1 / scale,
                        blast=np.array(blasts.get(str(s.image.relative_to(data)), [False] * len(boxes)), bool)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(out))
    return out


def targets(h: int, w: int, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heat map, box size (µm / 10) and where a size is set, at the heat map's resolution."""
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
        size[int(cy), int(cx)] = ((x1 - x0) * MPP / 10, (y1 - y0) * MPP / 10)
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


def crop(od: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random CROP x CROP window (glass around an image smaller than that) and the boxes centred in it."""
    h, w = od.shape[:2]
    y0, x0 = rng.integers(0, max(h - CROP, 0) + 1), rng.integers(0, max(w - CROP, 0) + 1)
    out = np.zeros((CROP, CROP, 3), np.float32)
    part = od[y0:y0 + CROP, x0:x0 + CROP]
    oy, ox = rng.integers(0, CROP - part.shape[0] + 1), rng.integers(0, CROP - part.shape[1] + 1)
    out[oy:oy + part.shape[0], ox:ox + part.shape[1]] = part
    b = boxes - np.array([x0, y0, x0, y0]) + np.array([ox, oy, ox, oy])
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    inside = (cx >= ox) & (cx < ox + part.shape[1]) & (cy >= oy) & (cy < oy + part.shape[0])
    return out, b[inside]


def batches(items: list[dict], rng: np.random.Generator, size: int = 32, **augmentation):
    """Endless batches (input, heat map, box size, size mask), every source an equal share."""
    by_source: dict[str, list[dict]] = {}
    for item in items:
        by_source.setdefault(item["source"], []).append(item)
    sources = list(by_source)
    while True:
        parts = []
        for _ in range(size):
            group = by_source[sources[rng.integers(len(sources))]]
            item = group[rng.integers(len(group))]
            od, boxes = crop(*augment(item["od"], item["boxes"], rng, **augmentation), rng)
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
    h, w = od.shape[:2]
    x = np.zeros((1, -(-h // 8) * 8, -(-w // 8) * 8, 3), np.float32)
    x[0, :h, :w] = od
    heat, size = (t.numpy()[0] for t in model(x, training=False))
    return heat[..., 0], size, (h, w)


def detect(maps: tuple[np.ndarray, np.ndarray, tuple[int, int]], threshold: float) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) at MPP of the heat map's peaks above `threshold` (`maps`: network_maps)."""
    heat, size, (h, w) = maps
    ys, xs = np.nonzero((heat == cv2.dilate(heat, np.ones((3, 3), np.uint8))) & (heat > threshold))
    cx, cy = (xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE
    keep = (cx < w) & (cy < h)
    half = size[ys[keep], xs[keep]] * 10 / MPP / 2
    return np.stack([cx[keep] - half[:, 0], cy[keep] - half[:, 1], cx[keep] + half[:, 0], cy[keep] + half[:, 1]], 1)


def with_rule(rule: np.ndarray, learnt: np.ndarray) -> np.ndarray:
    """The shipped detections `rule` reconciled with the network's `learnt` boxes (same pixels): a rule detection
    holding one learnt centre stays, one holding several gives way to their learnt boxes (touching cells merged),
    one holding none is dropped; learnt centres outside every rule detection add their boxes (cells the colour
    rules missed).  What a detector combining the two would give: the rule's outlines, the network's count."""
    cx, cy = (learnt[:, 0] + learnt[:, 2]) / 2, (learnt[:, 1] + learnt[:, 3]) / 2
    inside = ((cx[None, :] >= rule[:, 0:1]) & (cx[None, :] <= rule[:, 2:3])
              & (cy[None, :] >= rule[:, 1:2]) & (cy[None, :] <= rule[:, 3:4]))  # rule x learnt
    kept = [rule[i:i + 1] if inside[i].sum() == 1 else learnt[inside[i]] for i in range(len(rule))]
    return np.concatenate(kept + [learnt[~inside.any(axis=0)]]).reshape(-1, 4)


def score(maps: dict[int, tuple], items: list[dict], threshold: float, rule: dict[int, np.ndarray] | None = None
          ) -> dict[str, G.BlastScore]:
    """Per source, the detections against the boxes (own pixels, IoU >= 0.5, one-to-one) and blasts found;
    `maps`: each item's network_maps, by id; given `rule` (the shipped detections of each item, by id), those
    reconciled with the network's (with_rule)."""
    out: dict[str, G.BlastScore] = {}
    for item in items:
        h, w = item["od"].shape[:2]
        found = np.clip(detect(maps[id(item)], threshold), 0, [w, h, w, h]) * item["to_original"]
        if rule is not None:
            found = with_rule(rule[id(item)], found)
        s = blast_score(found, item)
        out[item["source"]] = out[item["source"]] + s if item["source"] in out else s
    return out


def blast_score(found: np.ndarray, item: dict) -> G.BlastScore:
    """Boxes `found` (the item's own pixels) against its boxes, and which of its blasts they match."""
    matched = {j for _, j, _ in G.match_boxes(found, item["original_boxes"])}
    blasts = set(np.nonzero(item["blast"])[0].tolist())
    return G.BlastScore(G.score_boxes(found, item["original_boxes"]), len(blasts), len(blasts & matched))


def shipped_detections(items: list[dict]) -> dict[int, np.ndarray]:
    """The shipped detector's boxes (segment() and the platelet-clump test) of each item, in its own pixels."""
    params = SegmentationParams()
    return {id(item): G.WorkingField.of(G.BoxSample(item["image"], item["original_boxes"], item["mpp"],
                                                    item["source"]), params.working_mpp).detections(params, PlateletParams())
            for item in items}


def cost(model, data: Path, repeats: int = 5) -> dict[str, float]:
    """ms per working megapixel, one thread, best of `repeats` interleaved passes over benchmarks/
    segmentation_cost.py's 1,024-px tiles: the shipped detection, and the network with its input (optical density
    at MPP) and its peaks."""
    from segmentation_cost import best_seconds, boxed_fields, mosaics
    params, platelets = SegmentationParams(), PlateletParams()
    tiles = mosaics([(f.sample.source, f.rgb) for f in boxed_fields(data, params.working_mpp)])
    detect(network_maps(model, np.zeros((64, 64, 3), np.float32)), THRESHOLD)  # warm-up (graph, kernels)

    def network_pass(rgb):
        od = np.minimum(optical_density(resample(rgb, params.working_mpp, MPP), 90.0), 3.0)
        detect(network_maps(model, od), THRESHOLD)

    runs = {"shipped detection": lambda rgb: white_cells(rgb, params, platelets), "network": network_pass}
    best = best_seconds(runs, tiles, repeats)
    megapixels = sum(t.shape[0] * t.shape[1] for t in tiles) / 1e6
    return {name: 1000 * seconds / megapixels for name, seconds in best.items()}


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
    ap.add_argument("--name", default="", help="suffix of the kept fold models' names (a variant)")
    ap.add_argument("--reuse", action="store_true", help="score the fold models kept in --work, train the missing")
    ap.add_argument("--cost", action="store_true", help="only time the first fold's model against the shipped "
                    "detection, one thread")
    args = ap.parse_args()
    import tensorflow as tf
    if args.cost:
        cv2.setNumThreads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        model = tf.keras.models.load_model(sorted(args.work.glob(f"s{args.seed}-without-*.keras"))[0])
        print(" | ".join(f"{name}: {ms:.0f} ms per working megapixel" for name, ms in cost(model, args.data).items()))
        return
    items = fields(args.data, args.work / "fields.pkl")
    sources = sorted({item["source"] for item in items})
    folds = sources if args.folds == "all" else args.folds.split(",")
    rule = shipped_detections(items)
    rows = {}
    for fold in folds:
        t = time.perf_counter()
        path = args.work / f"s{args.seed}{args.name}-without-{fold}.keras"
        if args.reuse and path.exists():
            model = tf.keras.models.load_model(path)
        else:
            model = train([item for item in items if item["source"] != fold], args.steps, args.seed,
                          stain_mix=args.stain_mix, blur_px=args.blur_px)
            model.save(path)
        left_out = [item for item in items if item["source"] == fold]
        maps = {id(item): network_maps(model, item["od"]) for item in left_out}
        for threshold in THRESHOLDS:
            c = score(maps, left_out, threshold)[fold].cells
            print(f"{fold} threshold {threshold}: P {c.precision:.3f} R {c.recall:.3f} F1 {c.f1:.3f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        rows[fold] = (score(maps, left_out, THRESHOLD)[fold], score(maps, left_out, THRESHOLD, rule)[fold],
                      functools.reduce(operator.add, (blast_score(rule[id(i)], i) for i in left_out)))
    print(f"\n| left-out source (seed {args.seed}) | network: P / R / F1 | blast recall | network with the rule: "
          f"P / R / F1 | blast recall | shipped rule: P / R / F1 | blast recall |\n|---|---|---|---|---|---|---|")
    leukaemic = [f for f in rows if f not in G.NORMAL_BOX_SOURCES]
    if leukaemic:
        rows["leukaemic sources pooled"] = tuple(functools.reduce(operator.add, (rows[f][k] for f in leukaemic))
                                                 for k in range(3))
    for fold, results in rows.items():
        cells = [f"{r.cells.precision:.3f} / {r.cells.recall:.3f} / {r.cells.f1:.3f}" for r in results]
        blasts = [f"{r.blast_recall:.3f} ({r.blasts_found}/{r.blasts})" if r.blasts else "–" for r in results]
        print(f"| {fold} | " + " | ".join(f"{c} | {b}" for c, b in zip(cells, blasts)) + " |")


if __name__ == "__main__":
    main()
