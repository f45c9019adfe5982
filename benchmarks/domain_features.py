"""A domain check on the model's own features, judged per leave-one-lab-out fold beside today's stain check
(issue 24 item 7): does it flag the left-out lab where the fold model falls short, and seldom the training labs?

For every fold of every run (a `benchmarks/cross_lab.py` output folder):

- stain check: the fold model's stored reference (stain and sharpness figures, median per image or scan);
- feature check: the fold model's penultimate-layer features (`fc`, 256 after ReLU, or `flatten`) of every cell,
  reduced by a PCA fitted on the training split's cells, pooled per image or scan; per training lab, mean and
  shrunk inverse covariance of the training images' pooled features (as `bcscan.model.domain` fits the stain
  figures); threshold: the 99.5 % quantile of the training images' distances to their nearest lab.

Both are scored on the same images and the same pseudo-scans of 20 images of one lab: every image of the left-out
lab, and the training labs' validation and test images.  The first feature variant (`fc`, 32 dimensions, mean) is
the one reported; the others (`VARIANTS`: layer, dimensions, pooling, and a threshold for scans set on the training
split's pseudo-scans, for the stain check too) are printed beside it, each the same on every fold.

Last, the check on the model's output that `bcscan scan` applies (`bcscan.model.domain.uncertainty_verdict`: the mean
binary entropy of a scan's calls against a threshold `bcscan train` fits on the validation cells), on pseudo-scans of
its cells drawn from the left-out lab and from each training lab's test cells, and as `bcscan scan` pools it over a
patient's cells (patients.csv) on pseudo-patients of 200 cells.

    python benchmarks/domain_features.py [DATA_DIR] [--runs runs/cross-lab/fourlabs-s0 runs/cross-lab/fourlabs-s1]
        [--work runs/cross-lab/work] [--out runs/domain-features] [--labs mll-bone-marrow,...]

The features are cached per fold model under OUT/features, so a rerun only refits the references.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's bcscan

from cross_lab import LABS, left_out_cells  # noqa: E402
from domain_check import SCAN_IMAGES  # noqa: E402

from bcscan.model.domain import OUTSIDE, SHRINKAGE, distances, fit_uncertainty, uncertainty_verdict  # noqa: E402
from bcscan.model.network import load_keras_model, load_model_info  # noqa: E402
from bcscan.scan.appearance import crop_appearance  # noqa: E402
from bcscan.training.predict import predict_probs  # noqa: E402
from bcscan.training.recipe import load_train_config  # noqa: E402
from bcscan.training.samples import collect_samples  # noqa: E402

QUANTILE = 0.995
LAYERS = ("flatten", "fc")


@dataclass(frozen=True)
class Variant:
    """A feature check: which layer, how many PCA dimensions, how an image or scan pools its cells (`mean`,
    `median` of the features; `cell distances`: one Gaussian per lab over the training cells, and the mean of the cells'
    distances, which does not shrink as a lab's images hold more cells), and whether scans are judged against the
    99.5 % quantile of the training split's pseudo-scans (`scan_threshold`) instead of the images' threshold."""
    layer: str = "fc"
    dims: int = 32
    pool: str = "mean"
    scan_threshold: bool = False

    @property
    def name(self) -> str:
        return f"{self.layer}, PCA {self.dims}, {self.pool}" + (", scan threshold" if self.scan_threshold else "")


VARIANTS = [Variant(), Variant(pool="median"), Variant(dims=8), Variant(dims=64), Variant(layer="flatten"),
            Variant(scan_threshold=True), Variant(pool="cell distances", scan_threshold=True)]
STAIN, STAIN_SCAN = "stain", "stain, scan threshold"
CERTAINTY = "certainty (as shipped)"
CERTAINTY_DRAWS = 300  # 50-cell pseudo-scans drawn per lab to judge (the threshold: fit_uncertainty's 1,000)
PATIENT_CELLS = 200  # the check pooled over a patient's cells (patients.csv): pseudo-patients of issue 24 item 6's size


@dataclass
class Cells:
    """The cells of a set of images, with what both checks read."""
    image: np.ndarray     # image index of each cell
    lab: np.ndarray       # lab of each image
    split: np.ndarray     # split of each image (the left-out lab's images: "left-out")
    stain: np.ndarray     # per cell: `crop_appearance` figures
    features: dict        # per cell: layer name -> features

    def pooled(self, values: np.ndarray, groups: list[np.ndarray], pool: str) -> np.ndarray:
        """Per group of images: the mean or median of its cells' values, as a scan pools its cells."""
        order = np.argsort(self.image, kind="stable")
        starts = np.searchsorted(self.image[order], np.arange(len(self.lab) + 1))
        reduce = np.mean if pool == "mean" else np.median
        return np.array([reduce(values[np.concatenate([order[starts[i]:starts[i + 1]] for i in g])], axis=0)
                         for g in groups])

    def groups(self, splits: tuple[str, ...]) -> dict[str, tuple[list, np.ndarray]]:
        """images: each image of `splits` with a cell, alone; scans: pseudo-scans of SCAN_IMAGES such images of one
        lab (drawn as `benchmarks/domain_check.py` draws them); each as (groups of image indices, lab of each)."""
        with_cells = np.isin(np.arange(len(self.lab)), self.image)
        images, scans = [], []
        for lab in sorted(set(self.lab)):
            own = np.nonzero(with_cells & (self.lab == lab) & np.isin(self.split, splits))[0]
            order = np.random.default_rng(0).permutation(own)
            images += [own[i:i + 1] for i in range(len(own))]
            scans += [order[i:i + SCAN_IMAGES] for i in range(0, len(order) - SCAN_IMAGES + 1, SCAN_IMAGES)]
        return {"images": (images, self.lab[[g[0] for g in images]]),
                "scans": (scans, self.lab[[g[0] for g in scans]])}


def layer_features(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of LAYERS for uint8 crops, computed as the model sees them at scan time (×1/255)."""
    import keras

    model, _ = load_keras_model(model_path)
    outputs = [model.get_layer(name).output for name in LAYERS]
    joined = keras.Model(model.input, keras.layers.Concatenate()(outputs))
    values = predict_probs(joined, x, batch_size=256)
    bounds = np.cumsum([0] + [int(o.shape[-1]) for o in outputs])
    return {name: values[:, a:b] for name, a, b in zip(LAYERS, bounds[:-1], bounds[1:])}


def fold_cells(data_dir: Path, fold_dir: Path, lab: str, work: Path, cache: Path) -> tuple[Cells, Cells]:
    """(the training labs' cells, every cell of the left-out lab), cut as the fold model cuts them."""
    model = fold_dir / "model" / f"lolo-{lab}.keras"
    info = load_model_info(model)
    cfg = load_train_config(fold_dir / "config.yaml")
    train = collect_samples(data_dir, cfg.sources, cfg.mode, cfg.input_size, cfg.crop_um, cfg.margin,
                            cfg.segmentation, max_per_source=cfg.max_images_per_source, seed=cfg.seed,
                            hash_size=cfg.split.hash_size, cache_dir=work)
    with open(fold_dir / "model" / f"lolo-{lab}" / "splits.csv", newline="", encoding="utf-8") as fh:
        split = {row["file"]: row["split"] for row in csv.DictReader(fh)}
    left = left_out_cells(data_dir, lab, info, work)
    cache_file = cache / f"{fold_dir.parent.name}-{lab}-{info.sha256[:12]}.npz"
    if not cache_file.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, **{k: v.astype(np.float16)
                                for k, v in layer_features(model, np.concatenate([train.x, left.x])).items()})
    with np.load(cache_file) as z:
        both = {k: z[k].astype(np.float32) for k in LAYERS}
    n = len(train.x)
    return (Cells(train.image, np.array([train.sources[s].dataset_name for s in train.source]),
                  np.array([split[f] for f in train.files]), crop_appearance(train.x),
                  {k: v[:n] for k, v in both.items()}),
            Cells(left.image, np.full(len(left.files), lab), np.full(len(left.files), "left-out"),
                  crop_appearance(left.x), {k: v[n:] for k, v in both.items()}))


def feature_reference(values: np.ndarray, labs: np.ndarray) -> dict:
    """Per lab, mean and shrunk inverse covariance of feature rows, in `bcscan.model.domain`'s form so that its
    `distances` reads it (its `fit_reference` is bound to the stain figures)."""
    reference = {"features": [f"pc{i}" for i in range(values.shape[1])], "labs": {}}
    for lab in sorted(set(labs)):
        own = values[labs == lab]
        cov = np.cov(own.T)
        cov = cov + SHRINKAGE * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(cov))
        reference["labs"][lab] = {"mean": own.mean(0), "precision": np.linalg.inv(cov)}
    return reference


def feature_score(train: Cells, fit_images: list, fit_labs: np.ndarray, variant: Variant):
    """`score(cells, groups)`: the variant's distance of each group of images, fitted on the training split."""
    fit_cells = np.isin(train.image, np.concatenate(fit_images))
    features = train.features[variant.layer][fit_cells]
    centre = features.mean(0)
    axes = np.linalg.svd(features - centre, full_matrices=False)[2][:variant.dims]

    def project(cells: Cells) -> np.ndarray:
        return (cells.features[variant.layer] - centre) @ axes.T

    if variant.pool == "cell distances":
        reference = feature_reference(project(train)[fit_cells], train.lab[train.image][fit_cells])
        return lambda cells, groups: cells.pooled(distances(reference, project(cells))[:, None], groups, "mean")[:, 0]
    reference = feature_reference(train.pooled(project(train), fit_images, variant.pool), fit_labs)
    return lambda cells, groups: distances(reference, cells.pooled(project(cells), groups, variant.pool))


def fold_p_leukemic(model_path: Path, cells: Cells) -> np.ndarray:
    """The fold model's calibrated p_leukemic of each cell, from its `fc` features through its output layer."""
    from bcscan.model.classifier import calibrate

    info = load_model_info(model_path)
    weights, bias = load_keras_model(model_path)[0].get_layer("predictions").get_weights()
    logits = cells.features["fc"] @ weights + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return calibrate(probs / probs.sum(1, keepdims=True), info.temperature)[:, info.leukemic_index]


def certainty_check(model_path: Path, train: Cells, left: Cells) -> dict:
    """The scan-time certainty check as `bcscan train` fits it (`fit_uncertainty` on the training labs' validation
    cells) and `bcscan scan` applies it (`uncertainty_verdict`, the threshold fitted for that many cells), on
    pseudo-scans of its `scan_cells` cells and pseudo-patients of PATIENT_CELLS drawn from each training lab's test
    cells and from the left-out lab."""
    p_train, p_left = fold_p_leukemic(model_path, train), fold_p_leukemic(model_path, left)
    cell_lab, cell_split = train.lab[train.image], train.split[train.image]
    reference = fit_uncertainty(p_train[cell_split == "val"], cell_lab[cell_split == "val"])
    rng = np.random.default_rng(1)

    def outside(p: np.ndarray, n: int) -> float:
        draws = [p[rng.choice(len(p), n, replace=len(p) < n)] for _ in range(CERTAINTY_DRAWS)]
        return round(float(np.mean([uncertainty_verdict(reference, d)[0] == OUTSIDE for d in draws])), 3)

    result = {"threshold": reference["threshold"], "patient_threshold": reference["thresholds"][str(PATIENT_CELLS)],
              "scan_cells": reference["scan_cells"]}
    for kind, n in (("", reference["scan_cells"]), ("patients_", PATIENT_CELLS)):
        result[f"{kind}left_out"] = outside(p_left, n)
        result[f"{kind}training_labs_test"] = {
            lab: outside(p_train[(cell_split == "test") & (cell_lab == lab)], n) for lab in sorted(set(cell_lab))}
    return result


def judged(score, image_threshold: float, scan_threshold: float, sets: dict) -> dict:
    """Share called outside, overall and in the worst lab, per set (name -> (Cells, groups, lab of each))."""
    out = {"image_threshold": round(image_threshold, 3), "scan_threshold": round(scan_threshold, 3)}
    for name, (cells, groups, labs) in sets.items():
        far = score(cells, groups) > (scan_threshold if name.endswith("scans") else image_threshold)
        out[name] = {"n": int(len(far)), "outside": round(float(far.mean()), 3),
                     "worst_lab": round(max(float(far[labs == lab].mean()) for lab in set(labs)), 3)}
    return out


def fold_result(data_dir: Path, fold_dir: Path, lab: str, work: Path, cache: Path) -> dict:
    """Every check on one fold: the left-out lab and the training labs' held-out (val, test) images and scans."""
    train, left = fold_cells(data_dir, fold_dir, lab, work, cache)
    sets = {f"{name}_{kind}": (cells, *groups)
            for name, cells, splits in (("left_out", left, ("left-out",)), ("training_labs", train, ("val", "test")))
            for kind, groups in cells.groups(splits).items()}
    fit = train.groups(("train",))
    (fit_images, fit_labs), fit_scans = fit["images"], fit["scans"][0]
    stain_reference = load_model_info(fold_dir / "model" / f"lolo-{lab}.keras").domain

    def stain(cells: Cells, groups: list) -> np.ndarray:
        return distances(stain_reference, cells.pooled(cells.stain, groups, "median"))

    threshold = stain_reference["threshold"]
    result = {STAIN: judged(stain, threshold, threshold, sets),
              STAIN_SCAN: judged(stain, threshold, float(np.quantile(stain(train, fit_scans), QUANTILE)), sets)}
    for variant in VARIANTS:
        score = feature_score(train, fit_images, fit_labs, variant)
        threshold = float(np.quantile(score(train, fit_images), QUANTILE))
        scan_threshold = float(np.quantile(score(train, fit_scans), QUANTILE)) if variant.scan_threshold else threshold
        result[variant.name] = judged(score, threshold, scan_threshold, sets)
    result[CERTAINTY] = certainty_check(fold_dir / "model" / f"lolo-{lab}.keras", train, left)
    return result


def pair(block: dict, kind: str) -> str:
    return f"{block[f'{kind}_images']['outside']:.2f} / {block[f'{kind}_scans']['outside']:.2f}"


def worst_pair(block: dict) -> str:
    return f"{block['training_labs_images']['worst_lab']:.2f} / {block['training_labs_scans']['worst_lab']:.2f}"


def tables(folds: list[dict]) -> str:
    folds = sorted(folds, key=lambda f: (list(LABS).index(f["lab"]), f["run"]))
    main = VARIANTS[0].name
    rows = [f"Share called outside (images / {SCAN_IMAGES}-image scans of one lab). Training labs: their validation "
            f"and test images, all labs together (the worst lab). Feature check: {main}; stain check: the fold "
            "model's stored reference.", "",
            "| left-out lab | run | cell balanced accuracy | stain check: left-out lab | feature check: left-out lab "
            "| stain check: training labs | feature check: training labs |", "|---|---|---|---|---|---|---|"]
    for f in folds:
        s, m = f[STAIN], f[main]
        rows.append(f"| `{f['lab']}` | {f['run']} | {f['balanced_accuracy']:.3f} | {pair(s, 'left_out')} | "
                    f"{pair(m, 'left_out')} | {pair(s, 'training_labs')} ({worst_pair(s)}) | "
                    f"{pair(m, 'training_labs')} ({worst_pair(m)}) |")
    rows += ["", "Every check: the left-out lab called outside (images / scans) per fold; the training labs' worst lab "
                 "over all folds (images / scans).", "",
             "| check | " + " | ".join(f"{f['lab']} {f['run'][-2:]} ({f['balanced_accuracy']:.2f})" for f in folds)
             + " | training labs, worst |", "|---|" + "---|" * (len(folds) + 1)]
    for name in [STAIN, STAIN_SCAN, *(v.name for v in VARIANTS)]:
        worst = {k: max(f[name][f"training_labs_{k}"]["worst_lab"] for f in folds) for k in ("images", "scans")}
        rows.append(f"| {name} | " + " | ".join(pair(f[name], "left_out") for f in folds)
                    + f" | {worst['images']:.2f} / {worst['scans']:.2f} |")
    scan_cells = folds[0][CERTAINTY]["scan_cells"]
    rows += ["", f"The certainty check as shipped (mean entropy of the calls over a scan or a patient; thresholds "
                 f"fitted on the training labs' validation cells for that many cells): share of {scan_cells}-cell "
                 f"pseudo-scans and {PATIENT_CELLS}-cell pseudo-patients called outside.", "",
             f"| left-out lab | run | cell balanced accuracy | threshold (bits): scans / patients | left-out lab: scans / "
             f"{PATIENT_CELLS}-cell patients | training labs' test cells, each lab: scans / {PATIENT_CELLS}-cell "
             "patients |",
             "|---|---|---|---|---|---|"]
    for f in folds:
        c = f[CERTAINTY]
        pooled = c["patients_training_labs_test"]
        rows.append(f"| `{f['lab']}` | {f['run']} | {f['balanced_accuracy']:.3f} | {c['threshold']:.3f} / "
                    f"{c['patient_threshold']:.3f} | "
                    f"{c['left_out']:.2f} / {c['patients_left_out']:.2f} | "
                    + ", ".join(f"{k} {v:.2f} / {pooled[k]:.2f}" for k, v in c["training_labs_test"].items()) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--runs", nargs="+", type=Path,
                    default=[ROOT / "runs" / "cross-lab" / f"fourlabs-s{s}" for s in (0, 1)])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "domain-features")
    ap.add_argument("--labs", default=",".join(LABS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folds = []
    for run in args.runs:
        accuracy = {r["left_out"]: r["cells"]["balanced_accuracy"]
                    for r in json.loads((run / "cross_lab.json").read_text())["results"]}
        for lab in args.labs.split(","):
            t0 = time.time()
            result = fold_result(args.data_dir, run / lab, lab, args.work, args.out / "features")
            folds.append({"run": run.name, "lab": lab, "balanced_accuracy": accuracy[lab],
                          "seconds": round(time.time() - t0), **result})
            print(f"[domain-features] {run.name} {lab}: {folds[-1]['seconds']} s", flush=True)
            (args.out / "domain_features.json").write_text(json.dumps({"variants": [v.name for v in VARIANTS],
                                                                       "folds": folds}, indent=2) + "\n")
    md = tables(folds)
    (args.out / "domain_features.md").write_text(md + "\n", encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
