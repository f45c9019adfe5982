"""`bcscan review OUT_DIR --export-training DEST`: the cells a reviewer labelled as white cells, as
image folders `bcscan train` reads, so a lab's own verified cells can teach the model.

One folder per review label (blast, lymphocyte, ...); each image one cell at its centre, cut at the
scale the run segmented at, twice the model's crop wide (the crop and the margin training cuts
around it).  DEST/sources.yaml holds the recipe lines (`single_cell: true`, blast = leukemic, the
other white cells = normal); DEST/SOURCE.txt says where the cells come from.  Cells nobody decided,
and cells marked "not a white cell" or "unsure", are left out.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from bcscan.errors import BcscanError, ReviewError
from bcscan.results.reports import RunData
from bcscan.results.reports.scan_pictures import cell_crop, open_recorded_scan
from bcscan.results.tables import atomic_write_bytes, atomic_write_text, safe_filename
from bcscan.results.verification import BLAST, WHITE_CELL_LABELS
from bcscan.review.store import ReviewStore, now
from bcscan.scan.segmentation import SegmentationParams
from bcscan.training.finetune import verified_cell_name

IMAGE_CROPS = 2.0  # an image's side, in model crop widths


def export_training(data: RunData, store: ReviewStore, dest: Path) -> dict[str, int]:
    """Write the folders; returns cells per label.  Refuses a DEST that holds anything already (a
    cell relabelled since an earlier export would otherwise stay in its old folder)."""
    import cv2

    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ReviewError(f"{dest}: exists and is not an empty folder; --export-training writes a new one")
    if data.scan_dir is None:
        raise ReviewError("the run recorded no scan folder: give --scan-dir")
    mpp = float(data.config("segmentation").get("working_mpp") or SegmentationParams().working_mpp)
    side_um = IMAGE_CROPS * data.model_crop_um
    cells = store.labelled_cells()
    cells = cells[cells["review_label"].isin(WHITE_CELL_LABELS)]
    counts = {label: 0 for label in WHITE_CELL_LABELS}
    for scan, group in cells.groupby("scan", sort=True):
        row = data.scans[data.scans["scan"] == scan].iloc[0]
        try:
            handle = open_recorded_scan(data, row)
        except (BcscanError, OSError) as exc:
            raise ReviewError(f"{data.scan_dir / scan}: cannot be opened for the training export ({exc})") from exc
        with handle:
            for cell in group.itertuples():
                rgb = cell_crop(handle, cell.x, cell.y, side_um, int(round(side_um / mpp)))
                ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise ReviewError(f"cell {int(cell.cell_id)} of {scan}: cannot encode its image")
                name = verified_cell_name(safe_filename(scan), int(cell.cell_id))
                atomic_write_bytes(dest / folder_of(cell.review_label) / name, png.tobytes())
                counts[cell.review_label] += 1
    sources = [{"path": folder_of(label), "label": "leukemic" if label == BLAST else "normal", "mpp": mpp,
                "dataset": "local-verified", "single_cell": True} for label, n in counts.items() if n]
    atomic_write_text(dest / "sources.yaml", "# the `sources:` of a recipe, DATA_DIR = this folder\n"
                      + yaml.safe_dump({"sources": sources}, sort_keys=False))
    atomic_write_text(dest / "SOURCE.txt", (  # the headings a model card quotes (training.card.source_notes)
        f"DATASET: White cells verified with `bcscan review` in {data.out_dir.resolve()} (run {data.run_id}), "
        f"exported {now()}. One cell per image, at its centre, {mpp:g} um/px, {side_um:g} um wide. Labels are the "
        f"reviewers' (review.sqlite keeps who decided each and when).\n"
        "LICENCE: patient data of this lab; keep it, and models trained on it, inside the lab.\n"))
    return {label: n for label, n in counts.items() if n}


def folder_of(label: str) -> str:
    return label.replace(" ", "-")
