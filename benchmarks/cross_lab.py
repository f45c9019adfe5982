"""Leave-one-lab-out (LOLO) evaluation of a training recipe (issues 11, 24).

For each left-out lab holding both classes (ghaderzadeh-all, mll-bone-marrow, lmu-aml-blood):

1. write a config = the base recipe's sources minus the left-out lab's, plus the sources of every
   other both-class lab that the base recipe lacks;
2. `bcscan train` it under a time budget (`--max-minutes`), with a shared `--work` cache so each
   set of images is segmented once;
3. `bcscan evaluate` the model on ALL images of the left-out lab (no split filter);
4. collect cell- and image-level figures and the accuracy per class folder from the two metrics.json
   files, plus a colour-only baseline (logistic regression on HSV histograms of the same balanced
   training cells, scored on the left-out lab) into OUT/cross_lab.json and markdown tables.

Everything model-related goes through the `bcscan` CLI (subprocesses); only the colour baseline
reads the training cache in-process (`colour_baseline_left_out`, skipped with --no-colour-baseline).
A fold whose model and evaluation already exist is not redone (delete its folder to redo it).

    python benchmarks/cross_lab.py [DATA_DIR] [--config configs/train-fourlabs.yaml] [--out runs/cross-lab/NAME]
        [--work runs/cross-lab/work] [--max-minutes 20] [--labs ghaderzadeh-all,mll-bone-marrow] [--mll-mpp 0.075]
        [--init-model M.keras --learning-rate 0.0003]   (a further stage of a model trained on the fold's split)
        [--set augmentation.blur_um=0.5 ...]           (change the recipe without a new config file)
        [--without pbc-normal]                         (train without a one-class source)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's bcscan (in-process colour baseline), not an installed one
G = "ghaderzadeh-all/images"
M = "mll-bone-marrow"
L = "lmu-aml-blood"
# The labs with both classes: their folders, classes and scale (µm/px).
LABS = {
    "ghaderzadeh-all": {"mpp": 0.45, "leukemic": [f"{G}/Early", f"{G}/Pre", f"{G}/Pro"], "normal": [f"{G}/Benign"]},
    "mll-bone-marrow": {"mpp": 0.075, "single_cell": True, "leukemic": [f"{M}/BLA"],
                        "normal": [f"{M}/{c}" for c in ("LYT", "MON", "NGS", "EOS")]},
    "lmu-aml-blood": {"mpp": 0.117, "single_cell": True, "leukemic": [f"{L}/MYO", f"{L}/MOB"],
                      "normal": [f"{L}/{c}" for c in ("NGS", "LYT", "MON", "EOS", "BAS")]},
}


def dataset_of(source: dict) -> str:
    return source.get("dataset") or Path(source["path"]).parts[0]


def fold_config(base: dict, left_out: str, without: tuple[str, ...] = ()) -> dict:
    """The base recipe without the left-out lab's sources (nor those of the datasets in `without`), with every
    other both-class lab added."""
    cfg = json.loads(json.dumps(base))
    sources = [s for s in cfg["sources"] if dataset_of(s) != left_out and dataset_of(s) not in without]
    have = {s["path"] for s in sources}
    for lab, spec in LABS.items():
        if lab == left_out:
            continue
        for label in ("leukemic", "normal"):
            sources += [{"path": p, "label": label, "mpp": spec["mpp"], "single_cell": spec.get("single_cell", False)}
                        for p in spec[label] if p not in have]
    cfg["sources"] = sources
    cfg["name"] = f"lolo-{left_out}"
    cfg["description"] = f"{base.get('description', '').strip()} | leave-one-lab-out: {left_out} left out".strip(" |")
    return cfg


def apply_settings(cfg: dict, settings: list[str]) -> dict:
    """`section.key=value` (value read as YAML) into the recipe."""
    for item in settings:
        path, sep, value = item.partition("=")
        if not sep or not path:
            sys.exit(f"--set {item!r}: expected section.key=value")
        *sections, key = path.split(".")
        node = cfg
        for name in sections:
            node = node.setdefault(name, {})
        node[key] = yaml.safe_load(value)
    return cfg


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return rc, round(time.time() - t0, 1)


def colour_baseline_left_out(data_dir: Path, cfg_path: Path, splits_csv: Path, work: Path, lab: str) -> dict:
    """HSV-histogram logistic regression on the fold's balanced training cells, scored on the left-out lab.

    Uses bcscan internals (sample cache, balancing, metrics), so that the cells are the very ones
    `bcscan train` trained on and `bcscan evaluate` scored."""
    import csv

    import numpy as np

    from bcscan.scan.segmentation import SegmentationParams
    from bcscan.training.baselines import LogisticRegression, hsv_histograms
    from bcscan.training.metrics import image_level, metrics_block
    from bcscan.training.recipe import load_train_config
    from bcscan.training.samples import collect_samples
    from bcscan.training.splits import balance_indices

    cfg = load_train_config(cfg_path)
    tr = collect_samples(data_dir, cfg.sources, cfg.mode, cfg.input_size, cfg.crop_um, cfg.margin, cfg.segmentation,
                         max_per_source=cfg.max_images_per_source, seed=cfg.seed, hash_size=cfg.split.hash_size,
                         cache_dir=work)
    with open(splits_csv, newline="", encoding="utf-8") as fh:
        split = {row["file"]: row["split"] for row in csv.DictReader(fh)}
    split_smp = np.array([split[f] for f in tr.files], dtype=object)[tr.image]
    train_idx = np.nonzero(split_smp == "train")[0]
    train_idx = train_idx[balance_indices(tr.label[train_idx], np.random.default_rng(cfg.seed), cfg.balance,
                                          tr.dataset[train_idx], tr.cell_type[train_idx])]
    clf = LogisticRegression().fit(hsv_histograms(tr.x[train_idx]), (tr.label[train_idx] == 0).astype(float))
    seg = SegmentationParams(working_mpp=cfg.segmentation.working_mpp)
    te = collect_samples(data_dir, lab_sources(lab), "cells", cfg.input_size, cfg.crop_um, 1.0, seg, cache_dir=work)
    p = clf.predict_proba(hsv_histograms(te.x))
    _, iy, ip = image_level(te.image, te.label, p)
    cells, images = metrics_block(te.label, p), metrics_block(iy, ip)
    cells["called_normal"] = float(np.mean(p < 0.5))
    images["called_normal"] = float(np.mean(ip < 0.5))
    return {"model": "logistic regression on HSV histograms of the fold's balanced training cells",
            "train_cells": int(len(train_idx)), "cells": cells, "images": images}


def lab_sources(lab: str) -> list:
    """The source folders of a both-class lab, as SourceSpecs (its scale; single-cell labs score the centre cell)."""
    from bcscan.training.recipe import SourceSpec

    spec = LABS[lab]
    return [SourceSpec(path=p, label=c, mpp=spec["mpp"], single_cell=spec.get("single_cell", False))
            for c in ("leukemic", "normal") for p in spec[c]]


def left_out_cells(data_dir: Path, lab: str, info, work: Path):
    """Every cell of a lab, cut as the model `info` (a ModelInfo) cuts them at scan time (cached in `work`)."""
    from bcscan.scan.segmentation import SegmentationParams
    from bcscan.training.samples import collect_samples

    return collect_samples(data_dir, lab_sources(lab), "cells", info.input_size, info.crop_um, 1.0,
                           SegmentationParams(working_mpp=info.working_mpp), cache_dir=work)


def domain_left_out(data_dir: Path, model: Path, work: Path, lab: str) -> dict:
    """The share of the left-out lab's images, and of pseudo-scans of 20 of its images, that the fold model's
    domain check (its reference, fitted on the training labs) calls outside the validated range."""
    import numpy as np

    from domain_check import SCAN_IMAGES, per_image, per_scan

    from bcscan.model.domain import distances
    from bcscan.model.network import load_model_info

    info = load_model_info(model)
    s = left_out_cells(data_dir, lab, info, work)
    images = np.nonzero(s.n_cells > 0)[0]
    threshold = info.domain["threshold"]
    d_img = distances(info.domain, per_image(s.x, s.image, images))
    d_scan = distances(info.domain, per_scan(s.x, s.image, images, np.random.default_rng(0)))
    return {"threshold": threshold, "images": int(len(images)), "images_outside": float(np.mean(d_img > threshold)),
            "scans_of": SCAN_IMAGES, "scans": int(len(d_scan)), "scans_outside": float(np.mean(d_scan > threshold))}


def pick(block: dict | None, called_normal: float | None = None) -> dict:
    block = block or {}
    out = {k: block.get(k) for k in ("n", "accuracy", "balanced_accuracy", "roc_auc", "ece")}
    out["called_normal"] = block.get("called_normal", called_normal)
    out["recall"] = {c: (v or {}).get("recall") for c, v in (block.get("per_class") or {}).items()}
    return out


def fold(args, base: dict, lab: str, image_p: dict) -> dict:
    """Train, evaluate and collect one fold; its image predictions go into `image_p[lab]`."""
    d = args.out / lab
    d.mkdir(parents=True, exist_ok=True)
    cfg = fold_config(base, lab, tuple(args.without))
    cfg_path = d / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    model_dir, eval_dir = d / "model", d / "eval"
    model = model_dir / f"{cfg['name']}.keras"
    py = [sys.executable, "-m", "bcscan.cli"]
    res: dict = {"left_out": lab, "config": str(cfg_path), "train_sources": [s["path"] for s in cfg["sources"]]}
    if not model.is_file():
        print(f"[cross-lab] {lab}: training ({args.max_minutes:g} min budget) → {model_dir}", flush=True)
        extra = ["--init-model", str(args.init_model)] if args.init_model else []
        extra += ["--learning-rate", str(args.learning_rate)] if args.learning_rate else []
        rc, wall = run(py + ["train", str(args.data_dir), "--config", str(cfg_path), "--out", str(model_dir),
                             "--work", str(args.work), "--max-minutes", str(args.max_minutes)] + extra, d / "train.log")
        res["train_exit"], res["train_wall_s"] = rc, wall
        (d / "train_wall.json").write_text(json.dumps({"exit": rc, "wall_s": wall}) + "\n")
        if not model.is_file():
            res["error"] = f"training failed (exit {rc}, see {d / 'train.log'})"
            return res
    if (d / "train_wall.json").is_file():
        w = json.loads((d / "train_wall.json").read_text())
        res["train_exit"], res["train_wall_s"] = w["exit"], w["wall_s"]
    spec = LABS[lab]
    if not (eval_dir / "metrics.json").is_file():
        print(f"[cross-lab] {lab}: evaluating on all its images → {eval_dir}", flush=True)
        cmaps = [f"{c}={','.join(spec[c])}" for c in ("leukemic", "normal")]
        rc, wall = run(py + ["evaluate", str(model_dir), str(args.data_dir), "--class-map", cmaps[0],
                             "--class-map", cmaps[1], "--mpp", str(spec["mpp"]), "--out", str(eval_dir)]
                       + (["--single-cell"] if spec.get("single_cell") else []),
                       d / "evaluate.log")
        res["evaluate_exit"], res["evaluate_wall_s"] = rc, wall
        if rc:
            res["error"] = f"evaluation failed (exit {rc}, see {d / 'evaluate.log'})"
            return res
    tm = json.loads((model_dir / cfg["name"] / "metrics.json").read_text())
    em = json.loads((eval_dir / "metrics.json").read_text())
    predictions = image_predictions(eval_dir / "predictions.csv")
    image_p[lab] = predictions
    res |= {"mpp": spec["mpp"],
            "cells": pick(em["samples"], em.get("called_normal_rate_samples")),
            "images": pick(em["images"], em.get("called_normal_rate_images")),
            "images_total": em["images_total"], "images_without_cells": em["images_without_cells"],
            "per_folder": per_folder(em, predictions),
            "images_threshold_ceiling": threshold_ceiling(*predictions[1:]),
            "in_lab_test": {"images": pick(tm.get("test_images")), "cells": pick(tm.get("test_cells"))},
            "in_lab_colour_baseline": {"images": pick((tm.get("colour_baseline") or {}).get("test_images")),
                                       "cells": pick((tm.get("colour_baseline") or {}).get("test_samples"))},
            "training": {"max_minutes": ((tm.get("config") or {}).get("training") or {}).get("max_minutes",
                                                                                             args.max_minutes),
                         "init_model": tm.get("init_model"),
                         "learning_rate": ((tm.get("config") or {}).get("training") or {}).get("learning_rate"),
                         "epochs_run": tm.get("epochs_run"),
                         "best_epoch": tm.get("best_epoch"), "averaged_epochs": tm.get("averaged_epochs"),
                         "stopped_for_time_budget": tm.get("stopped_for_time_budget"),
                         "did_not_learn": tm.get("did_not_learn"), "timing_s": tm.get("timing_s"),
                         "train_samples_balanced": (tm.get("data") or {}).get("train_samples_balanced"),
                         "augmentation": (tm.get("config") or {}).get("augmentation"),
                         "balance": (tm.get("config") or {}).get("balance")}}
    domain = d / "domain.json"
    if not domain.is_file():
        domain.write_text(json.dumps(domain_left_out(args.data_dir, model, args.work, lab), indent=2) + "\n")
    res["domain_left_out"] = json.loads(domain.read_text())
    if args.colour_baseline:
        cb = d / "colour_baseline.json"
        if not cb.is_file():
            print(f"[cross-lab] {lab}: colour-only baseline", flush=True)
            try:
                cb.write_text(json.dumps(colour_baseline_left_out(args.data_dir, cfg_path, model_dir / cfg["name"] /
                                                                  "splits.csv", args.work, lab), indent=2) + "\n")
            except Exception as exc:  # internals moved in a refactor: the CNN figures still stand
                res["colour_baseline_error"] = f"{type(exc).__name__}: {exc}"
        if cb.is_file():
            c = json.loads(cb.read_text())
            res["colour_baseline"] = {"cells": pick(c["cells"]), "images": pick(c["images"])}
    return res


def image_predictions(predictions_csv: Path):
    """(folder, p_leukemic, is_normal) per image of an evaluation that found a cell."""
    import csv

    import numpy as np

    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["p_leukemic"] not in ("", "nan")]
    return (np.array([str(Path(r["file"]).parent) for r in rows]), np.array([float(r["p_leukemic"]) for r in rows]),
            np.array([r["label"] == "normal" for r in rows]))


def per_folder(eval_metrics: dict, predictions) -> dict:
    """Accuracy per class folder, and for a leukemic folder the image ROC AUC against all normal images of
    the lab (`predictions` from image_predictions): a threshold-free view of which subtype the model ranks
    (its calibration is fitted in-lab)."""
    from bcscan.training.metrics import roc_auc

    folder, p, normal = predictions
    out = {}
    for name, v in ((eval_metrics.get("per_source") or {}).get("folders") or {}).items():
        out[name] = {k: v[k] for k in ("label", "images", "image_accuracy", "sample_accuracy")}
        if v["label"] == "leukemic":
            pick_rows = normal | (folder == name)
            out[name]["image_auc_vs_normal"] = roc_auc(folder[pick_rows] == name, p[pick_rows])
    return out


def threshold_ceiling(p, normal) -> dict:
    """The best image balanced accuracy any threshold on p(leukemic) reaches on the left-out lab, and that threshold.

    Chosen with the left-out labels, so a ceiling, never an operating point: it tells a model whose
    threshold is off (ceiling high) from one whose ranking is not good enough (ceiling low)."""
    import numpy as np

    order = np.argsort(-p)
    # Calling the top k leukemic, k = 0..n: recall of each class from cumulative counts.
    leukemic_called = np.concatenate([[0], np.cumsum(~normal[order])]) / max((~normal).sum(), 1)
    normal_kept = 1 - np.concatenate([[0], np.cumsum(normal[order])]) / max(normal.sum(), 1)
    balanced = (leukemic_called + normal_kept) / 2
    cut = np.flatnonzero(np.r_[True, np.diff(p[order]) != 0, True])  # only cuts between distinct p
    k = cut[np.argmax(balanced[cut])]
    return {"balanced_accuracy": float(balanced[k]), "threshold": float(p[order][k - 1]) if k else 1.0}


def transferred_thresholds(results: list[dict], image_p: dict) -> None:
    """Each fold scored at the threshold the other folds' ceilings chose (their mean): an operating point
    chosen on labs the model never saw without looking at this one, the honest counterpart of the ceiling."""
    from bcscan.training.metrics import metrics_block

    ceilings = {r["left_out"]: r["images_threshold_ceiling"]["threshold"] for r in results
                if r.get("images_threshold_ceiling")}
    for r in results:
        others = [t for lab, t in ceilings.items() if lab != r["left_out"]]
        if r["left_out"] in ceilings and others:
            threshold = sum(others) / len(others)
            p, normal = image_p[r["left_out"]][1:]
            block = metrics_block(normal.astype(int), p, threshold)  # class 1 = normal, as the model's output
            r["images_at_other_folds_threshold"] = {"threshold": threshold,
                                                    "balanced_accuracy": block["balanced_accuracy"]}


def table(results: list[dict], recipe: str) -> str:
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    rows = ["| recipe | left-out lab | level | n | bal. acc | ROC AUC | ECE | called normal | best threshold: bal. acc "
            "(ceiling) | at the other folds' threshold: bal. acc | colour: bal. acc / AUC | domain check: outside | epochs (budget) | train wall |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {recipe} | {r['left_out']} | – | – | {r['error']} ||||||||||")
            continue
        t = r["training"]
        wall = "–" if r.get("train_wall_s") is None else f"{r['train_wall_s'] / 60:.0f} min"
        for level in ("cells", "images"):
            m, c = r[level], (r.get("colour_baseline") or {}).get(level) or {}
            ceiling = r.get("images_threshold_ceiling") if level == "images" else None
            transfer = r.get("images_at_other_folds_threshold") if level == "images" else None
            dom = r.get("domain_left_out") or {}
            outside = (f"{f(dom.get('images_outside'))} of images" if level == "cells" else
                       f"{f(dom.get('scans_outside'))} of scans of {dom.get('scans_of')}") if dom else "–"
            rows.append(f"| {recipe} | {r['left_out']} | {level} | {m['n']} | {f(m['balanced_accuracy'])} | "
                        f"{f(m['roc_auc'])} | {f(m['ece'])} | {f(m['called_normal'])} | "
                        f"{'–' if ceiling is None else f(ceiling['balanced_accuracy']) + ' at p ≥ ' + f(ceiling['threshold'])} | "
                        f"{'–' if transfer is None else f(transfer['balanced_accuracy']) + ' at p ≥ ' + f(transfer['threshold'])} | "
                        f"{f(c.get('balanced_accuracy'))} / {f(c.get('roc_auc'))} | {outside} | "
                        f"{t['epochs_run']} ({t['max_minutes']:g} min) | {wall} |")
    return "\n".join(rows)


def folder_table(results: list[dict]) -> str:
    """Accuracy per class folder of the left-out lab: a subtype the model misses shows here (in
    ghaderzadeh-all, Pro-B fields are paler and blurrier than Early and Pre)."""
    rows = ["| left-out lab | folder | label | images | image accuracy | cell accuracy | image AUC vs the lab's normal |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        for folder, v in (r.get("per_folder") or {}).items():
            auc = v.get("image_auc_vs_normal")
            rows.append(f"| {r['left_out']} | {folder} | {v['label']} | {v['images']} | {v['image_accuracy']:.3f} | "
                        f"{v['sample_accuracy']:.3f} | {'–' if auc is None else f'{auc:.3f}'} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=ROOT.parent / "shared" / "data", type=Path)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train-fourlabs.yaml")
    ap.add_argument("--out", type=Path, default=None, help="[runs/cross-lab/<config stem>]")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--labs", default=",".join(LABS))
    ap.add_argument("--mll-mpp", type=float, default=LABS[M]["mpp"])
    ap.add_argument("--init-model", type=Path, default=None,
                    help="continue this model (bcscan train --init-model; refused unless trained on the fold's split, "
                         "e.g. models/bcscan-vgg16.keras for a fold of the same recipe and seed)")
    ap.add_argument("--learning-rate", type=float, default=None, help="bcscan train --learning-rate")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change the recipe, e.g. augmentation.blur_um=0.5 (repeatable; recorded in each fold's config)")
    ap.add_argument("--without", action="append", default=[], metavar="DATASET",
                    help="leave this one-class source out of training too, e.g. pbc-normal (repeatable)")
    ap.add_argument("--no-colour-baseline", dest="colour_baseline", action="store_false")
    args = ap.parse_args()
    if set(args.without) & set(LABS):
        sys.exit(f"--without {', '.join(sorted(set(args.without) & set(LABS)))}: a lab with both classes is "
                 "left out with --labs, and otherwise trained on")
    LABS[M]["mpp"] = args.mll_mpp
    args.out = args.out or ROOT / "runs" / "cross-lab" / args.config.stem
    args.data_dir, args.out, args.work = args.data_dir.resolve(), args.out.resolve(), args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    base = apply_settings(yaml.safe_load(args.config.read_text(encoding="utf-8")), args.settings)
    results, image_p = [], {}
    for lab in args.labs.split(","):
        if lab not in LABS:
            sys.exit(f"unknown lab {lab!r} (one of {', '.join(LABS)})")
        results.append(fold(args, base, lab, image_p))
        transferred_thresholds(results, image_p)
        (args.out / "cross_lab.json").write_text(json.dumps({"recipe": str(args.config), "data_dir": str(args.data_dir),
                                                             "labs": LABS, "results": results}, indent=2) + "\n")
    md = table(results, " ".join([args.config.stem, *args.settings, *(f"without {w}" for w in args.without)])) + "\n\n" + folder_table(results)
    (args.out / "cross_lab.md").write_text(md + "\n", encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
