"""Learning from the lab (issue 25): one lab of ../shared/data plays the hospital.

A model that never saw the lab (a leave-one-lab-out fold model of benchmarks/cross_lab.py) is the hospital's
shipped model.  Through the product's own commands:
  1. `bcscan scan` scans a seeded draw of the lab's images (its own mix of cells), 1.5 × `--verified` of them
     (a reviewer can verify only the cells a scan found). The images are single-cell crops, not smear fields:
     the tile-quality check reads a cell that fills the tile as dark stain (it excluded 43 % of an lmu draw,
     nine in ten of its neutrophils), so the scan runs with that check's two limits lifted (SCAN_CONFIG);
  2. the labelled cell of each image (the detected cell nearest its centre) gets its folder's cell type as a
     reviewer's decision, for the first `--verified` images of the draw that have one: `bcscan review
     --import`, then `bcscan review --export-training`;
  3. `bcscan train --config configs/finetune-local.yaml --init-model MODEL --replay-data DATA_DIR` fine-tunes it
     (it holds back a quarter of the verified cells and refuses a model that does worse on them);
  4. `bcscan evaluate` scores the lab's other images with the model before and after, and the domain check of
     each model is applied to those images (per image and per pseudo-scan of 20 images).

    python benchmarks/finetune_local.py ../shared/data \
        --init-model runs/cross-lab/fourlabs-s0/mll-bone-marrow/model/lolo-mll-bone-marrow.keras \
        --lab mll-bone-marrow --out runs/finetune/mll-s0 [--verified 200] [--seed 0] [--work runs/cross-lab/work]
    python benchmarks/finetune_local.py --table runs/finetune/mll-s0 runs/finetune/mll-s1   # the Markdown table
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's bcscan, not an installed one

from cross_lab import LABS, image_predictions, per_folder, run  # noqa: E402

from bcscan.results.verification import BLAST, REVIEW_LABELS  # noqa: E402

# the cell types the lab folders hold, as review labels (cross_lab.LABS names the folders)
FOLDER_LABELS = {"LYT": "lymphocyte", "MON": "monocyte", "NGS": "neutrophil", "EOS": "eosinophil",
                 "BAS": "basophil", "Benign": "other white cell"}
REVIEWER = "benchmark (the dataset's label)"
# single-cell crops as scans: a cell filling the tile is not dark stain (the only quality check lifted)
SCAN_CONFIG = {"quality": {"max_nucleus_od": 100.0, "max_rbc_od": 100.0}}


def lab_images(data_dir: Path, lab: str) -> list[tuple[str, str]]:
    """(path relative to DATA_DIR, review label) of every image of the lab."""
    from bcscan.training.samples import list_images

    out = []
    for cls in ("leukemic", "normal"):
        for folder in LABS[lab][cls]:
            label = BLAST if cls == "leukemic" else FOLDER_LABELS[Path(folder).name]
            out += [(p.relative_to(data_dir).as_posix(), label) for p in list_images(data_dir / folder)]
    return out


def decisions(cells_csv: Path, drawn: list[tuple[str, str]], scans: Path, wanted: int, out: Path) -> list[str]:
    """decisions.csv: the detected cell nearest the image centre gets the image's label (a single-cell lab's
    image shows its labelled cell at the centre), for the first `wanted` scans of the draw with a cell;
    returns their images (relative to DATA_DIR)."""
    import cv2

    rows, by_scan = [], {}
    with open(cells_csv, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            by_scan.setdefault(r["scan"], []).append(r)
    decided = []
    for rel, label in drawn:
        cells = by_scan.get(scan_name(rel))
        if not cells or len(decided) == wanted:
            continue
        h, w = cv2.imread(str(scans / scan_name(rel))).shape[:2]
        nearest = min(cells, key=lambda r: (float(r["x"]) - w / 2) ** 2 + (float(r["y"]) - h / 2) ** 2)
        rows.append({"scan": scan_name(rel), "cell_id": nearest["cell_id"], "label": label, "reviewer": REVIEWER})
        decided.append(rel)
    unknown = {r["label"] for r in rows} - set(REVIEW_LABELS)
    if unknown:
        raise SystemExit(f"not review labels: {sorted(unknown)}")
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["scan", "cell_id", "label", "reviewer"])
        writer.writeheader()
        writer.writerows(rows)
    return decided


def scan_name(rel: str) -> str:
    return rel.replace("/", "_")


def evaluate(py: list[str], model: Path, data_dir: Path, lab: str, splits_csv: Path, out: Path) -> dict:
    spec = LABS[lab]
    if not (out / "metrics.json").is_file():
        rc, _ = run(py + ["evaluate", str(model), str(data_dir), "--class-map",
                          f"leukemic={','.join(spec['leukemic'])}", "--class-map", f"normal={','.join(spec['normal'])}",
                          "--mpp", str(spec["mpp"]), "--splits", str(splits_csv), "--split", "test", "--out", str(out)]
                    + (["--single-cell"] if spec.get("single_cell") else []), out.parent / f"{out.name}.log")
        if rc:
            raise SystemExit(f"evaluation failed (exit {rc}): {out.parent / f'{out.name}.log'}")
    m = json.loads((out / "metrics.json").read_text())
    return {"images": m["images_total"], "balanced_accuracy": m["samples"]["balanced_accuracy"],
            "roc_auc": m["samples"]["roc_auc"], "called_normal": m["called_normal_rate_samples"],
            "per_folder": per_folder(m, image_predictions(out / "predictions.csv"))}


def domain_inside(model: Path, data_dir: Path, lab: str, others: set[str], work: Path) -> dict:
    """Share of the lab's other images, and of pseudo-scans of 20 of them, inside the model's domain reference."""
    from cross_lab import left_out_cells
    from domain_check import per_image, per_scan

    from bcscan.model.domain import distances
    from bcscan.model.network import load_model_info

    info = load_model_info(model)
    s = left_out_cells(data_dir, lab, info, work)
    images = np.array([i for i, f in enumerate(s.files) if f in others and s.n_cells[i] > 0])
    d_img = distances(info.domain, per_image(s.x, s.image, images))
    d_scan = distances(info.domain, per_scan(s.x, s.image, images, np.random.default_rng(0)))
    return {"images_inside": float(np.mean(d_img <= info.domain["threshold"])),
            "scans_inside": float(np.mean(d_scan <= info.domain["threshold"])), "scans": int(len(d_scan))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path, nargs="?")
    ap.add_argument("--init-model", type=Path)
    ap.add_argument("--lab", choices=sorted(LABS), default="mll-bone-marrow")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--verified", type=int, default=200, help="images of the lab taken as verified")
    ap.add_argument("--seed", type=int, default=0, help="which images are verified")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cross-lab" / "work")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "finetune-local.yaml")
    ap.add_argument("--table", type=Path, nargs="+", help="print the Markdown table of these outputs and exit")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads((d / "finetune_local.json").read_text()) for d in args.table]))
        return
    if not (args.data_dir and args.init_model and args.out):
        ap.error("DATA_DIR, --init-model and --out are needed")
    data_dir, out = args.data_dir.resolve(), args.out.resolve()
    py = [sys.executable, "-m", "bcscan.cli"]
    images = lab_images(data_dir, args.lab)
    order = np.random.default_rng(args.seed).permutation(len(images))
    drawn = [images[i] for i in order[:int(1.5 * args.verified)]]

    # 1. the hospital's scans, scanned by its model
    hospital = out / "hospital"
    scans = hospital / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    for rel, _ in drawn:
        if not (scans / scan_name(rel)).is_file():
            shutil.copyfile(data_dir / rel, scans / scan_name(rel))
    result: dict = {"lab": args.lab, "init_model": str(args.init_model), "seed": args.seed, "scanned": len(drawn)}
    (hospital / "scan-config.yaml").write_text(yaml.safe_dump(SCAN_CONFIG), encoding="utf-8")
    rc, result["scan_wall_s"] = run(py + ["scan", str(scans), "--out", str(hospital / "run"), "--mpp",
                                          str(LABS[args.lab]["mpp"]), "--model", str(args.init_model), "--config",
                                          str(hospital / "scan-config.yaml"), "--quiet"], hospital / "scan.log")
    if rc not in (0, 1):
        raise SystemExit(f"scan failed (exit {rc}): {hospital / 'scan.log'}")
    # 2. the reviewers' decisions, and the verified cells as training folders
    verified = decisions(hospital / "run" / "cells.csv", drawn, scans, args.verified, hospital / "decisions.csv")
    labels = dict(images)
    result["verified"] = len(verified)
    result["verified_labels"] = {k: [labels[f] for f in verified].count(k) for k in sorted(set(labels.values()))}
    others = set(labels) - set(verified)
    exported = out / "verified"
    if not exported.is_dir():
        for step in (["--import", str(hospital / "decisions.csv")], ["--export-training", str(exported)]):
            rc, _ = run(py + ["review", str(hospital / "run")] + step, hospital / f"review{step[0]}.log")
            if rc:
                raise SystemExit(f"bcscan review {step[0]} failed (exit {rc}): {hospital / f'review{step[0]}.log'}")
    # 3. fine-tuning
    model_dir = out / "model"
    model = model_dir / "bcscan-vgg16-local.keras"
    if not (model_dir / "bcscan-vgg16-local" / "metrics.json").is_file():
        rc, result["train_wall_s"] = run(py + ["train", str(exported), "--config", str(args.config), "--init-model",
                                               str(args.init_model), "--replay-data", str(data_dir), "--out",
                                               str(model_dir), "--work", str(args.work)], out / "train.log")
        result["train_exit"] = rc
    metrics = json.loads((model_dir / "bcscan-vgg16-local" / "metrics.json").read_text())
    result["holdout"] = metrics["finetune"]["verdict"]
    result["training"] = {"epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
                          "fit_min": round(metrics["timing_s"]["fit"] / 60, 1),
                          "replay": metrics["finetune"]["replay"]}
    result["other_labs_test_images"] = {ds: (b.get("images") or {}).get("balanced_accuracy")
                                        for ds, b in metrics["per_source"]["datasets"].items()}
    # 4. the lab's other images, before and after
    splits_csv = out / "other_images.csv"
    with open(splits_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "split"])
        writer.writerows([f, "test"] for f in sorted(others))
    result["other_images"] = len(others)
    result["before"] = evaluate(py, args.init_model, data_dir, args.lab, splits_csv, out / "eval-before")
    result["before"]["domain"] = domain_inside(args.init_model, data_dir, args.lab, others, args.work)
    if model.is_file():
        result["after"] = evaluate(py, model, data_dir, args.lab, splits_csv, out / "eval-after")
        result["after"]["domain"] = domain_inside(model, data_dir, args.lab, others, args.work)
    (out / "finetune_local.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table([result]))


def table(results: list[dict]) -> str:
    lines = ["| lab | seed | verified (blasts) | held back: bal. acc before → after | other images | bal. acc "
             "before → after | ROC AUC before → after | blasts found before → after | normal types called normal "
             "before → after | domain: images (scans) inside before → after | fit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b, a, h = r["before"], r.get("after"), r["holdout"]
        folders = sorted(b["per_folder"])
        blasts = [f for f in folders if b["per_folder"][f]["label"] == "leukemic"]
        normals = [f for f in folders if b["per_folder"][f]["label"] == "normal"]

        def acc(block, names):
            return "/".join(f"{block['per_folder'][f]['image_accuracy']:.2f}" for f in names) if block else "–"

        def arrow(key, fmt="{:.3f}"):
            return f"{fmt.format(b[key])} → {fmt.format(a[key]) if a else 'not written'}"

        dom = (f"{b['domain']['images_inside']:.2f} ({b['domain']['scans_inside']:.2f}) → "
               + (f"{a['domain']['images_inside']:.2f} ({a['domain']['scans_inside']:.2f})" if a else "–"))
        lines.append(
            f"| {r['lab']} | {r['seed']} | {r['verified']} ({r['verified_labels'].get(BLAST, 0)}) | "
            f"{h['init_model']['balanced_accuracy']:.3f} → {h['new_model']['balanced_accuracy']:.3f} ({h['cells']} cells) | "
            f"{r['other_images']} | {arrow('balanced_accuracy')} | {arrow('roc_auc')} | "
            f"{acc(b, blasts)} → {acc(a, blasts)} | {', '.join(Path(f).name for f in normals)}: {acc(b, normals)} → "
            f"{acc(a, normals)} | {dom} | {r['training']['epochs_run']} epochs, {r['training']['fit_min']} min |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
