"""One patient's PDF report: who and what, the result at a glance, every scan with its marked
thumbnail, a gallery of the most suspicious and of some normal cells, and the traceability page.

The numbers and the flag are printed exactly as patients.csv holds them: the report never
recomputes a call.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pandas as pd

from bcscan import __version__
from bcscan.results.reports.flags import FLAG_TEXT, every_flag, flag_reason, patient_uncertain
from bcscan.results.reports.fonts import register_fonts
from bcscan.results.reports.formatting import as_int, fmt_num, report_date
from bcscan.results.reports.gallery import gallery_section, select_gallery
from bcscan.results.reports.layout import DISCLAIMER, build_pdf, header_row, kv_table, listing_table
from bcscan.results.reports.markup import clean, markup
from bcscan.results.reports.params import ReportingParams
from bcscan.results.reports.patient_scans import scan_sections, scans_at_a_glance
from bcscan.results.reports.patient_view import PatientView
from bcscan.results.reports.pictures import histogram_png, rl_image
from bcscan.results.reports.run_data import RunData
from bcscan.results.reports.scan_pictures import patient_pictures
from bcscan.results.reports.verified import verified_section


def render_patient_report(data: RunData, patient: pd.Series, params: ReportingParams) -> bytes:
    """One patient's report as PDF bytes."""
    register_fonts(params)
    view = PatientView.of(data, patient, params)
    story = _front_matter(view) + _result_at_a_glance(view) + verified_section(view) + scans_at_a_glance(view)
    story += _distribution(view)
    # gallery selection first: crops are cut while each scan is open for its thumbnail
    suspicious, normal = select_gallery(view.cells, params)
    pictures = patient_pictures(data, view.scans, view.cells, pd.concat([suspicious, normal]), params, view.crop_um)
    story += scan_sections(view, pictures) + gallery_section(view, suspicious, normal, pictures)
    story += _traceability(view)
    pid = view.pid
    footer_left = f"Patient {markup(pid[:80] + ('…' if len(pid) > 80 else ''))} · {escape(DISCLAIMER)}"
    return build_pdf(story, f"bcscan report — {clean(pid)}", footer_left, f"Run {markup(data.run_id)}", view.st)


# ------------------------------------------------------------------------------------------------- page one

def _front_matter(view: PatientView) -> list:
    """Title, who and what (patient, dates, versions, model, run), and the disclaimer box."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Spacer, Table, TableStyle

    st, data, model = view.st, view.data, view.model
    facts = kv_table([
        ("Patient ID", markup(view.pid)),
        ("Scan date(s)", escape(_scan_dates(view))),
        ("Report date", report_date()),
        ("bcscan version", escape(f"{data.run.get('bcscan_version', 'unknown')} (report made by {__version__})")),
        ("Model", markup(f"{model.get('name', 'unknown')} · sha256 {str(model.get('sha256', ''))[:16]}…")),
        ("Run ID", markup(data.run_id)),
    ], st)
    box = Table([[Paragraph(escape(DISCLAIMER), st["disclaimer"])]], colWidths=[view.width])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1, colors.HexColor("#c78a00")),
                             ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fff8e6"))]))
    return [Paragraph("Peripheral blood smear — leukemia screening report", st["title"]), facts, Spacer(1, 5), box]


def _scan_dates(view: PatientView) -> str:
    """The scans' file dates, or the run date where the files are not found."""
    data = view.data
    dates = [_file_date(data.scan_dir / str(scan)) if data.scan_dir else None for scan in view.scans["scan"]]
    known = sorted({d for d in dates if d})
    if known:
        text = ", ".join(known) + " (scan file dates)"
    else:
        text = f"{_run_date(data.run)} (run date; scan files not found)"
    if known and None in dates:
        text += f"; run date {_run_date(data.run)} for scans not found"
    return text


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


def _result_at_a_glance(view: PatientView) -> list:
    """The counts, the flag with its reason, the failed scans, and the rules behind the call."""
    from reportlab.platypus import Paragraph, Spacer

    st, scans = view.st, view.scans
    story = [Paragraph("Result at a glance", st["h2"]), _counts_table(view), Spacer(1, 5), _flag_box(view),
             Spacer(1, 3)]
    failed_scans = scans[scans["status"] != "ok"]
    for scan, status, error in zip(failed_scans["scan"], failed_scans["status"], failed_scans["error"]):
        story.append(Paragraph(f'<font color="#c62828"><b>Scan {markup(status)}:</b></font> '
                               f"{view.scan_ids[str(scan)]} {markup(scan)} — {markup(error or 'no result')}",
                               st["small"]))
    if len(failed_scans):
        story.append(Spacer(1, 3))
    story.append(Paragraph(escape(_rules(view)), st["small"]))
    return story


def _counts_table(view: PatientView):
    """Cells, leukemic, normal, % leukemic and its 95 % CI in big figures."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    st, patient, width = view.st, view.patient, view.width
    n_cells, n_leuk, n_norm = as_int(patient["n_cells"]), as_int(patient["n_leukemic"]), as_int(patient["n_normal"])
    big = [[Paragraph(f"{n_cells:,}", st["big"]), Paragraph(f"{n_leuk:,}", st["big"]),
            Paragraph(f"{n_norm:,}", st["big"]),
            # no cells: a percentage of nothing is not a result (patients.csv keeps 0 and 0–100)
            Paragraph(f"{fmt_num(patient['pct_leukemic'])} %" if n_cells else "—", st["big"]),
            Paragraph(f"{fmt_num(patient['ci_low'])}–{fmt_num(patient['ci_high'])} %" if n_cells else "—", st["big"])],
           [Paragraph(t, st["bigl"]) for t in ("Cells analysed", "Leukemic", "Normal", "% leukemic",
                                                "95 % CI (Wilson)")]]
    table = Table(big, colWidths=[width * 0.17] * 4 + [width * 0.32])
    table.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.75, colors.HexColor("#888888")),
                               ("INNERGRID", (0, 0), (-1, 0), 0.25, colors.HexColor("#cccccc")),
                               ("LINEBEFORE", (1, 1), (-1, 1), 0.25, colors.HexColor("#cccccc")),
                               ("TEXTCOLOR", (1, 0), (1, 0), colors.HexColor("#c62828"))]))
    return table


def _flag_box(view: PatientView):
    """The flag's headline in its colours, why (in the patient's numbers), and the flag as written."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    st, flag = view.st, str(view.patient["flag"])
    text, fg, bg = FLAG_TEXT.get(flag, (f"Flag: {flag}", "#333333", "#eeeeee"))
    rows = [[Paragraph(f'<font color="{fg}">{escape(text)}</font>', st["flag"])],
            [Paragraph(escape(flag_reason(flag, view.patient, view.agg)), st["body"])]]
    for also in every_flag(view.patient, view.agg)[1:]:  # what else holds: every flag on page 1
        also_text = FLAG_TEXT.get(also, (also, "", ""))[0]
        rows.append([Paragraph(f"<b>Also: {escape(also_text)}.</b> {escape(flag_reason(also, view.patient, view.agg))}",
                               st["body"])])
    rows.append([Paragraph(f"flag: {markup(flag)}", st["small"])])
    box = Table(rows, colWidths=[view.width])
    box.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(bg)),
                             ("BOX", (0, 0), (-1, -1), 1.2, colors.HexColor(fg))]))
    return box


def _rules(view: PatientView) -> str:
    """The rules behind the call, with the settings of this run."""
    patient, agg, params = view.patient, view.agg, view.params
    uncertain = int(view.cells["p_leukemic"].between(params.uncertain_low, params.uncertain_high).sum())
    return (f"Review at ≥ {agg.get('review_threshold_pct', '?')} % leukemic cells; a negative call needs "
            f"≥ {agg.get('min_cells', '?')} cells and every scan read. A cell is called leukemic at "
            f"p_leukemic ≥ {view.threshold:g}. Scans: {as_int(patient.get('n_scans'))} read, "
            f"{as_int(patient.get('n_scans_failed'))} failed. "
            f"Uncertain cells (p_leukemic {params.uncertain_low:g}–{params.uncertain_high:g}): {uncertain:,}."
            + _certainty_rule(patient))


def _certainty_rule(patient: pd.Series) -> str:
    """The certainty check over all the patient's cells, where it judged them (patients.csv's threshold)."""
    if pd.isna(patient.get("uncertainty_threshold")) or pd.isna(patient.get("uncertainty")):
        return ""
    verdict = "outside" if patient_uncertain(patient) else "inside"
    return (f" The model's certainty over all {as_int(patient['n_cells']):,} cells: mean entropy of its calls "
            f"{fmt_num(patient['uncertainty'], 3)} bits, outside above {fmt_num(patient['uncertainty_threshold'], 3)} "
            f"for that many cells: {verdict} the validated range.")


def _distribution(view: PatientView) -> list:
    """The histogram of p_leukemic over the patient's cells (nothing when there are none)."""
    from reportlab.platypus import Paragraph

    if not len(view.cells):
        return []
    picture = histogram_png(view.cells["p_leukemic"].to_numpy(float), view.threshold, view.params.histogram_bins)
    return [Paragraph("Distribution of p_leukemic over the patient's cells", view.st["h3"]),
            rl_image(picture, view.width, 150, jpeg=False)]


# ------------------------------------------------------------------------------------------- the last page

def _traceability(view: PatientView) -> list:
    """Every input file with its SHA-256, and the run (model file, config digest, times, output folder)."""
    from reportlab.platypus import PageBreak, Paragraph

    st, data, model, scans, width = view.st, view.data, view.model, view.scans, view.width
    inputs = {str(i.get("scan")): i for i in data.run.get("inputs", []) if isinstance(i, dict)}
    rows = [header_row(["Scan", "Status", "SHA-256 of the input file"], st)]
    for scan, status, sha in zip(scans["scan"], scans["status"], scans["sha256"]):
        sha = sha or inputs.get(str(scan), {}).get("sha256", "")
        rows.append([Paragraph(f"{view.scan_ids[str(scan)]}: {markup(scan)}", st["small"]),
                     Paragraph(markup(status), st["small"]), Paragraph(markup(sha or "—", mono=True), st["mono"])])
    return [PageBreak(), Paragraph("Traceability", st["h2"]), Paragraph("Input files", st["h3"]),
            listing_table(rows, [width * 0.33, width * 0.08, width * 0.59]), Paragraph("Run", st["h3"]), kv_table([
                ("Model file", markup(model.get("path", ""))),
                ("Model sha256", markup(model.get("sha256", ""), mono=True)),
                ("Config digest", markup(data.run.get("config_digest", ""))),
                ("Run started", markup(data.run.get("started", ""))),
                ("Run finished", markup(data.run.get("finished", ""))),
                ("Output folder", markup(data.out_dir.resolve())),
                ("Tables", "cells.csv, scans.csv, patients.csv, failures.csv, run.json, geojson/"),
            ], st)]
