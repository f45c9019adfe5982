"""The batch summary: summary.csv (one line per patient, with its report's file name) and
summary.pdf (the run, every patient's numbers and flag, the failed scans)."""
from __future__ import annotations

from xml.sax.saxutils import escape

import pandas as pd

from bcscan.results.aggregation import FLAG_NEGATIVE
from bcscan.results.reports.flags import FLAG_TEXT
from bcscan.results.reports.fonts import register_fonts
from bcscan.results.reports.formatting import as_int, fmt_num, report_date
from bcscan.results.reports.layout import (
    DISCLAIMER,
    build_pdf,
    header_row,
    kv_table,
    listing_table,
    styles,
    text_width,
)
from bcscan.results.reports.markup import markup
from bcscan.results.reports.params import ReportingParams
from bcscan.results.reports.report_files import REPORTS_DIR
from bcscan.results.reports.run_data import RunData
from bcscan.results.verification import UNVERIFIED

SUMMARY_COLUMNS = ["patient_id", "n_scans", "n_scans_failed", "n_scans_outside", "n_scans_low_quality", "n_cells",
                   "n_leukemic", "n_normal", "pct_leukemic", "ci_low", "ci_high", "flag", "verified_flag", "report",
                   "failed_scans"]


def summary_table(data: RunData, names: dict[str, str]) -> pd.DataFrame:
    """summary.csv: one line per patient, with its report's file name and its failed scans."""
    rows = []
    for patient in data.patients.itertuples(index=False):
        pid = str(patient.patient_id)
        failed = data.scans[(data.scans["patient_id"] == pid) & (data.scans["status"] != "ok")]
        rows.append({
            "patient_id": pid, "n_scans": as_int(patient.n_scans),
            "n_scans_failed": as_int(getattr(patient, "n_scans_failed", len(failed))),
            "n_scans_outside": as_int(getattr(patient, "n_scans_outside", 0)),
            "n_scans_low_quality": as_int(getattr(patient, "n_scans_low_quality", 0)),
            "n_cells": as_int(patient.n_cells), "n_leukemic": as_int(patient.n_leukemic),
            "n_normal": as_int(patient.n_normal), "pct_leukemic": patient.pct_leukemic,
            "ci_low": patient.ci_low, "ci_high": patient.ci_high, "flag": patient.flag,
            "verified_flag": getattr(patient, "verified_flag", "") or UNVERIFIED,
            "report": f"{REPORTS_DIR}/{names[pid]}",
            "failed_scans": "; ".join(f"{s}: {e}" for s, e in zip(failed["scan"], failed["error"])),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def render_summary(data: RunData, summary: pd.DataFrame, params: ReportingParams) -> bytes:
    """summary.pdf as bytes: the run, every patient's numbers and flag, the failed scans."""
    from reportlab.platypus import Paragraph

    register_fonts(params)
    st = styles()
    story = _run_facts(data, summary, st) + _patients(summary, st) + _failed_scans(data, st)
    story.append(Paragraph(escape("One report per patient in reports/ (file names in summary.csv); "
                                  "all cells in cells.csv."), st["small"]))
    return build_pdf(story, "bcscan batch summary", escape(DISCLAIMER), f"Run {markup(data.run_id)}", st)


def _run_facts(data: RunData, summary: pd.DataFrame, st) -> list:
    """Title, the run (ID, times, scan folder, versions, model, totals) and the disclaimer."""
    from reportlab.platypus import Paragraph, Spacer

    model = data.run.get("model") or {}
    counts = data.run.get("counts") or {}
    return [Paragraph("bcscan batch summary", st["title"]), kv_table([
        ("Run ID", markup(data.run_id)),
        ("Run", markup(f"{data.run.get('started', '')} → {data.run.get('finished', '')}")),
        ("Scan folder", markup(data.run.get("scan_dir", ""))),
        ("bcscan version", escape(str(data.run.get("bcscan_version", "unknown")))),
        ("Model", markup(f"{model.get('name', 'unknown')} · sha256 {model.get('sha256', '')}")),
        ("Totals", escape(f"{len(summary)} patients, {counts.get('scans', len(data.scans))} scans "
                          f"({len(data.failures)} failed), {len(data.cells):,} cells")),
        ("Report date", report_date()),
    ], st), Spacer(1, 4), Paragraph(escape(DISCLAIMER), st["disclaimer"])]


def _patients(summary: pd.DataFrame, st) -> list:
    """How many patients per flag, then one line per patient; every flag but negative tinted."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Spacer

    tally = summary["flag"].value_counts()
    flags = [f for f in FLAG_TEXT if f in tally] + [f for f in tally.index if f not in FLAG_TEXT]
    tally_line = Paragraph(markup(" · ".join(f"{flag}: {tally[flag]}" for flag in flags)), st["body"])
    rows = [header_row(["Patient ID", "Scans read (failed)", "Cells", "Leuk.", "Normal", "% leuk.", "95 % CI",
                        "Flag"], st)]
    style = [("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
             ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee"))]
    for i, r in enumerate(summary.itertuples(index=False), start=1):
        rows.append([Paragraph(markup(r.patient_id), st["small"]),
                     Paragraph(f"{r.n_scans} ({r.n_scans_failed})", st["small"]),
                     Paragraph(f"{r.n_cells:,}", st["small"]), Paragraph(f"{r.n_leukemic:,}", st["small"]),
                     Paragraph(f"{r.n_normal:,}", st["small"]), Paragraph(fmt_num(r.pct_leukemic), st["small"]),
                     Paragraph(f"{fmt_num(r.ci_low)}–{fmt_num(r.ci_high)}", st["small"]),
                     Paragraph(f"{markup(r.flag)}<br/><i>{markup(r.verified_flag)}</i>", st["small"])])
        if r.flag != FLAG_NEGATIVE:
            background = FLAG_TEXT.get(str(r.flag), ("", "#333333", "#ffffff"))[2]
            style.append(("BACKGROUND", (0, i), (-1, i), colors.HexColor(background)))
    width = text_width()
    fractions = [0.20, 0.08, 0.08, 0.07, 0.09, 0.08, 0.13, 0.27]
    return [Paragraph(f"Patients ({len(summary)})", st["h2"]),
            tally_line, Spacer(1, 3),
            listing_table(rows, [width * f for f in fractions], *style)]


def _failed_scans(data: RunData, st) -> list:
    """Every failed scan with its patient, stage and error; or a line saying every scan was read."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph

    story = [Paragraph(f"Failed scans ({len(data.failures)})", st["h2"])]
    if not len(data.failures):
        return story + [Paragraph("None: every scan was read.", st["body"])]
    patient_of = dict(zip(data.scans["scan"], data.scans["patient_id"]))
    rows = [header_row(["Scan", "Patient", "Stage", "Why"], st)]
    for f in data.failures.itertuples(index=False):
        rows.append([Paragraph(markup(f.scan), st["small"]),
                     Paragraph(markup(patient_of.get(f.scan, "")), st["small"]),
                     Paragraph(markup(f.stage), st["small"]), Paragraph(markup(f.error), st["small"])])
    width = text_width()
    return story + [listing_table(rows, [width * 0.27, width * 0.15, width * 0.08, width * 0.5],
                                  ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")))]
