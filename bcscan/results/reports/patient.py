"""One patient's PDF report: who and what, the result at a glance, every scan with its marked
thumbnail, a gallery of the most suspicious and of some normal cells, and the traceability page.

The numbers and the flag are printed exactly as patients.csv holds them: the report never
recomputes a call.
"""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pandas as pd

from bcscan import __version__
from bcscan.results.reports.flags import FLAG_TEXT, flag_reason
from bcscan.results.reports.fonts import register_fonts
from bcscan.results.reports.formatting import as_int, fmt_num, fmt_um
from bcscan.results.reports.layout import DISCLAIMER, NumberedCanvas, document, kv_table, styles
from bcscan.results.reports.markup import clean, markup
from bcscan.results.reports.params import ReportingParams
from bcscan.results.reports.pictures import histogram_png, rl_image
from bcscan.results.reports.run_data import RunData
from bcscan.results.reports.scan_pictures import ScanPicture, scan_pictures
from bcscan.results.tables import CLASS_COLOURS


def _file_date(path: Path | None) -> str | None:
    try:
        if path is None:
            return None
        stat = path.stat()
        return dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc).strftime("%Y-%m-%d")
    except OSError:
        return None


def _run_date(run: dict[str, Any]) -> str:
    return str(run.get("started", ""))[:10] or "unknown"


def _select_gallery(cells: pd.DataFrame, params: ReportingParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    suspicious = cells.sort_values(["p_leukemic", "scan", "cell_id"], ascending=[False, True, True],
                                   kind="mergesort").head(params.gallery_suspicious)
    rest = cells[(cells["label"] == "normal") & ~cells.index.isin(suspicious.index)]
    n = min(params.gallery_normal, len(rest))
    normal = rest.sample(n=n, random_state=params.sample_seed) if n else rest.head(0)
    return suspicious, normal.sort_values("p_leukemic", ascending=False, kind="mergesort")


def render_patient_report(data: RunData, patient: pd.Series, params: ReportingParams) -> bytes:
    """One patient's report as PDF bytes."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import KeepTogether, PageBreak, Paragraph, Spacer, Table, TableStyle

    register_fonts(params)
    st = styles()
    width = A4[0] - 84
    pid = str(patient["patient_id"])
    cells = data.cells[data.cells["patient_id"] == pid]
    scans = data.scans[data.scans["patient_id"] == pid].reset_index(drop=True)
    model = data.run.get("model") or {}
    threshold = float(data.config("classification").get("threshold", 0.5))
    agg = data.config("aggregation")
    crop_um = params.crop_um or float(model.get("crop_um") or 20.0)
    scan_ids = {str(s): f"S{i + 1}" for i, s in enumerate(scans["scan"])}

    story: list = [Paragraph("Peripheral blood smear — leukemia screening report", st["title"])]
    dates = []
    for scan in scans["scan"]:
        date = _file_date(data.scan_dir / str(scan)) if data.scan_dir else None
        dates.append(date)
    known = sorted({d for d in dates if d})
    if known:
        date_text = ", ".join(known) + " (scan file dates)"
    else:
        date_text = f"{_run_date(data.run)} (run date; scan files not found)"
    if known and None in dates:
        date_text += f"; run date {_run_date(data.run)} for scans not found"
    story.append(kv_table([
        ("Patient ID", markup(pid)),
        ("Scan date(s)", escape(date_text)),
        ("Report date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("bcscan version", escape(f"{data.run.get('bcscan_version', 'unknown')} (report made by {__version__})")),
        ("Model", markup(f"{model.get('name', 'unknown')} · sha256 {str(model.get('sha256', ''))[:16]}…")),
        ("Run ID", markup(data.run_id)),
    ], st))
    story.append(Spacer(1, 5))
    box = Table([[Paragraph(escape(DISCLAIMER), st["disclaimer"])]], colWidths=[width])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1, colors.HexColor("#c78a00")),
                             ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fff8e6"))]))
    story += [box, Paragraph("Result at a glance", st["h2"])]

    n_cells, n_leuk, n_norm = as_int(patient["n_cells"]), as_int(patient["n_leukemic"]), as_int(patient["n_normal"])
    big = [[Paragraph(f"{n_cells:,}", st["big"]), Paragraph(f"{n_leuk:,}", st["big"]),
            Paragraph(f"{n_norm:,}", st["big"]),
            # no cells: a percentage of nothing is not a result (patients.csv keeps 0 and 0–100)
            Paragraph(f"{fmt_num(patient['pct_leukemic'])} %" if n_cells else "—", st["big"]),
            Paragraph(f"{fmt_num(patient['ci_low'])}–{fmt_num(patient['ci_high'])} %" if n_cells else "—", st["big"])],
           [Paragraph(t, st["bigl"]) for t in ("Cells analysed", "Leukemic", "Normal", "% leukemic",
                                                "95 % CI (Wilson)")]]
    glance = Table(big, colWidths=[width * 0.17] * 4 + [width * 0.32])
    glance.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.75, colors.HexColor("#888888")),
                                ("INNERGRID", (0, 0), (-1, 0), 0.25, colors.HexColor("#cccccc")),
                                ("LINEBEFORE", (1, 1), (-1, 1), 0.25, colors.HexColor("#cccccc")),
                                ("TEXTCOLOR", (1, 0), (1, 0), colors.HexColor("#c62828"))]))
    story.append(glance)
    flag = str(patient["flag"])
    text, fg, bg = FLAG_TEXT.get(flag, (f"Flag: {flag}", "#333333", "#eeeeee"))
    flag_box = Table([[Paragraph(f'<font color="{fg}">{escape(text)}</font>', st["flag"])],
                      [Paragraph(escape(flag_reason(flag, patient, agg)), st["body"])],
                      [Paragraph(f"flag: {markup(flag)}", st["small"])]], colWidths=[width])
    flag_box.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(bg)),
                                  ("BOX", (0, 0), (-1, -1), 1.2, colors.HexColor(fg))]))
    story += [Spacer(1, 5), flag_box]
    story.append(Spacer(1, 3))
    failed_scans = scans[scans["status"] != "ok"]
    for scan, status, error in zip(failed_scans["scan"], failed_scans["status"], failed_scans["error"]):
        story.append(Paragraph(f'<font color="#c62828"><b>Scan {markup(status)}:</b></font> {scan_ids[str(scan)]} '
                               f"{markup(scan)} — {markup(error or 'no result')}", st["small"]))
    if len(failed_scans):
        story.append(Spacer(1, 3))
    n_failed = as_int(patient.get("n_scans_failed"))
    uncertain = int(cells["p_leukemic"].between(params.uncertain_low, params.uncertain_high).sum())
    rules = (f"Review at ≥ {agg.get('review_threshold_pct', '?')} % leukemic cells; a negative call needs "
             f"≥ {agg.get('min_cells', '?')} cells and every scan read. A cell is called leukemic at "
             f"p_leukemic ≥ {threshold:g}. Scans: {as_int(patient.get('n_scans'))} read, {n_failed} failed. "
             f"Uncertain cells (p_leukemic {params.uncertain_low:g}–{params.uncertain_high:g}): {uncertain:,}.")
    story.append(Paragraph(escape(rules), st["small"]))

    story.append(Paragraph(f"Scans at a glance ({len(scans)})", st["h3"]))
    story.append(_scan_overview(scans, scan_ids, width, st))
    if len(cells):
        story.append(Paragraph("Distribution of p_leukemic over the patient's cells", st["h3"]))
        story.append(rl_image(histogram_png(cells["p_leukemic"].to_numpy(float), threshold, params.histogram_bins),
                               width, 150, jpeg=False))

    # gallery selection first: crops are cut while each scan is open for its thumbnail
    suspicious, normal = _select_gallery(cells, params)
    gallery = pd.concat([suspicious, normal])
    pictures: dict[str, ScanPicture] = {}
    for i, row in scans.iterrows():
        scan = str(row["scan"])
        if row["status"] != "ok":
            continue
        scan_cells = cells[cells["scan"] == scan]
        want = i < params.max_scan_sections
        mine = gallery[gallery["scan"] == scan]
        if want or len(mine):
            pictures[scan] = scan_pictures(data, row, scan_cells, mine, params, crop_um, want)

    story.append(PageBreak())
    story.append(Paragraph(f"Scans ({len(scans)})", st["h2"]))
    legend = (f'<font color="#{"%02x%02x%02x" % tuple(CLASS_COLOURS["leukemic"])}">●</font> leukemic   '
              f'<font color="#{"%02x%02x%02x" % tuple(CLASS_COLOURS["normal"])}">●</font> normal — every detected '
              "cell is marked in its class colour (normal cells as dots where rings would crowd); the black bar is "
              "the scale.")
    failures = data.failures.set_index("scan")["stage"].to_dict() if len(data.failures) else {}
    for i, row in scans.iterrows():
        scan = str(row["scan"])
        sid = scan_ids[scan]
        head = Paragraph(f"{sid}: {markup(scan)}", st["h3"])
        if row["status"] != "ok":
            stage = failures.get(scan, "")
            block = [head, kv_table([
                ("Status", f'<font color="#c62828"><b>scan {markup(row["status"])}</b></font>'
                           + (f" at stage {markup(stage)}" if stage else "")),
                ("Error", markup(row.get("error", "") or "no result")),
                ("Effect", "No cells counted from this scan; no negative call is made for the patient."),
            ], st)]
            story.append(KeepTogether(block + [Spacer(1, 6)]))
            continue
        tiles_read, tiles_skipped = as_int(row["tiles_read"]), as_int(row["tiles_skipped"])
        notes = []
        total_tiles = tiles_read + tiles_skipped
        if total_tiles:
            notes.append(f"{tiles_skipped:,} of {total_tiles:,} tiles skipped as blank glass")
        if as_int(row["n_cells"]) == 0:
            notes.append("no white cells found on this scan")
        pic = pictures.get(scan)
        if pic is not None and pic.note:
            notes.append(pic.note)
        if i >= params.max_scan_sections:
            notes.append(f"thumbnail omitted (only the first {params.max_scan_sections} scans are pictured)")
        notes.append("blur and stain checks: not measured by this version — judge from the thumbnail and crops")
        block = [head, kv_table([
            ("Cells", f"{as_int(row['n_cells']):,} (leukemic {as_int(row['n_leukemic']):,}, "
                      f"normal {as_int(row['n_normal']):,})"),
            ("Scale", escape(f"{fmt_num(row['mpp'], 4)} µm/px at level 0; segmented at {fmt_num(row['working_mpp'], 3)} "
                             f"µm/px (pyramid level {as_int(row['level'])})")),
            ("Size, time", escape(f"{tiles_read:,} tiles read in {fmt_num(row['seconds'], 1)} s")),
            ("Quality notes", markup("; ".join(notes))),
        ], st)]
        if pic is not None and pic.thumb is not None:
            block += [Spacer(1, 3), rl_image(pic.thumb, width, 235),
                      Paragraph(legend + escape(f" Scale bar: {fmt_um(pic.bar_um)}."), st["small"])]
        story.append(KeepTogether(block + [Spacer(1, 6)]))

    if not len(cells):
        story.append(Paragraph("Cell gallery", st["h2"]))
        story.append(Paragraph("No cells were counted for this patient: no gallery.", st["body"]))
    else:
        story.append(PageBreak())
        story.append(Paragraph("Cell gallery", st["h2"]))
        story.append(Paragraph(escape(
            f"Crops of {fmt_um(crop_um)} around each cell centre. Position = level-0 pixel (x, y) on the scan, "
            f"the same coordinates as cells.csv and the QuPath GeoJSON in geojson/. All {len(cells):,} cells of "
            f"this patient are in cells.csv."), st["small"]))
    n_normal_cells = int((cells["label"] == "normal").sum())
    for title, chosen in ((f"Most suspicious cells: the {len(suspicious)} highest p_leukemic of {len(cells):,}",
                           suspicious),
                          (f"Sample of normal cells: {len(normal)} of {n_normal_cells:,}, chosen at random", normal)):
        if not len(cells):
            break
        story.append(Paragraph(escape(title), st["h3"]))
        if not len(chosen):
            story.append(Paragraph("None.", st["body"]))
            continue
        story.append(_gallery_table(chosen, pictures, scan_ids, params, width, st))

    story.append(PageBreak())
    story.append(Paragraph("Traceability", st["h2"]))
    inputs = {str(i.get("scan")): i for i in data.run.get("inputs", []) if isinstance(i, dict)}
    rows = [[Paragraph("<b>Scan</b>", st["small"]), Paragraph("<b>Status</b>", st["small"]),
             Paragraph("<b>SHA-256 of the input file</b>", st["small"])]]
    for scan, status, sha in zip(scans["scan"], scans["status"], scans["sha256"]):
        sha = sha or inputs.get(str(scan), {}).get("sha256", "")
        rows.append([Paragraph(f"{scan_ids[str(scan)]}: {markup(scan)}", st["small"]),
                     Paragraph(markup(status), st["small"]), Paragraph(markup(sha or "—", mono=True), st["mono"])])
    table = Table(rows, colWidths=[width * 0.33, width * 0.08, width * 0.59], repeatRows=1)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#cccccc"))]))
    story += [Paragraph("Input files", st["h3"]), table, Paragraph("Run", st["h3"]), kv_table([
        ("Model file", markup(model.get("path", ""))),
        ("Model sha256", markup(model.get("sha256", ""), mono=True)),
        ("Config digest", markup(data.run.get("config_digest", ""))),
        ("Run started", markup(data.run.get("started", ""))),
        ("Run finished", markup(data.run.get("finished", ""))),
        ("Output folder", markup(data.out_dir.resolve())),
        ("Tables", "cells.csv, scans.csv, patients.csv, failures.csv, run.json, geojson/"),
    ], st)]

    buffer = io.BytesIO()
    doc = document(buffer, f"bcscan report — {clean(pid)}")
    canvas = NumberedCanvas.make(f"Patient {markup(pid[:80] + ('…' if len(pid) > 80 else ''))} · "
                                  f"{escape(DISCLAIMER)}", f"Run {markup(data.run_id)}", st)
    doc.build(story, canvasmaker=canvas)
    return buffer.getvalue()


def _scan_overview(scans: pd.DataFrame, scan_ids: dict[str, str], width: float, st):
    """One line per scan: status, counts, % leukemic; failed scans in red."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    head = ["", "Scan", "Status", "Cells", "Leukemic", "% leukemic"]
    rows = [[Paragraph(f"<b>{h}</b>", st["small"]) for h in head]]
    style = [("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#cccccc")),
             ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]
    for i, row in enumerate(scans.itertuples(index=False), start=1):
        ok = row.status == "ok"
        n, k = as_int(row.n_cells), as_int(row.n_leukemic)
        rows.append([Paragraph(scan_ids[str(row.scan)], st["small"]), Paragraph(markup(row.scan), st["small"]),
                     Paragraph(markup(row.status), st["small"]),
                     Paragraph(f"{n:,}" if ok else "—", st["small"]), Paragraph(f"{k:,}" if ok else "—", st["small"]),
                     Paragraph(f"{100.0 * k / n:.2f}" if ok and n else "—", st["small"])])
        if not ok:
            style.append(("BACKGROUND", (0, i), (-1, i), colors.HexColor("#fdecea")))
    table = Table(rows, colWidths=[width * f for f in (0.05, 0.48, 0.1, 0.1, 0.12, 0.15)], repeatRows=1)
    table.setStyle(TableStyle(style))
    return table


def _gallery_table(chosen: pd.DataFrame, pictures: dict[str, ScanPicture], scan_ids: dict[str, str],
                   params: ReportingParams, width: float, st):
    import cv2
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    ncol = params.gallery_columns
    cell_w = width / ncol
    img_side = cell_w - 8
    grid, row_cells = [], []
    for cell in chosen.itertuples(index=False):
        pic = pictures.get(str(cell.scan))
        crop = pic.crops.get((str(cell.scan), int(cell.cell_id))) if pic else None
        colour = tuple(int(c) for c in CLASS_COLOURS.get(cell.label, [128, 128, 128]))
        if crop is not None:
            framed = cv2.copyMakeBorder(crop, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=colour)
            image = rl_image(framed, img_side, img_side)
        else:
            image = Paragraph("image unavailable (scan not found)", st["tiny"])
        caption = Paragraph(f"<b>p {float(cell.p_leukemic):.3f}</b> {escape(str(cell.label))}<br/>"
                            f"{scan_ids.get(str(cell.scan), '?')} x {int(round(cell.x)):,} y {int(round(cell.y)):,}",
                            st["tiny"])
        row_cells.append([image, caption])
        if len(row_cells) == ncol:
            grid.append(row_cells)
            row_cells = []
    if row_cells:
        grid.append(row_cells + [""] * (ncol - len(row_cells)))
    table = Table(grid, colWidths=[cell_w] * ncol)
    table.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
                               ("LEFTPADDING", (0, 0), (-1, -1), 2), ("RIGHTPADDING", (0, 0), (-1, -1), 2),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#eeeeee"))]))
    return table
