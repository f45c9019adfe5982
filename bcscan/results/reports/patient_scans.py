"""The scans in a patient's report: the 'scans at a glance' table on the first page, and one
section per scan (counts, scale, quality notes, the marked thumbnail; or why it failed)."""
from __future__ import annotations

from xml.sax.saxutils import escape

import pandas as pd

from bcscan.results.aggregation import is_uncertain
from bcscan.results.reports.formatting import as_int, fmt_num, fmt_um
from bcscan.results.reports.layout import header_row, kv_table, listing_table
from bcscan.results.reports.markup import markup
from bcscan.results.reports.patient_view import PatientView
from bcscan.results.reports.pictures import class_hex, reason_hex, rl_image
from bcscan.results.reports.scan_pictures import ScanPicture
from bcscan.scan.counting_area import AREA_EXCLUDED
from bcscan.scan.quality import REASONS


def scans_at_a_glance(view: PatientView) -> list:
    """One line per scan: status, counts, % leukemic; failed scans in red."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph

    st, scans, width = view.st, view.scans, view.width
    rows = [header_row(["", "Scan", "Status", "Cells", "Leukemic", "% leukemic"], st)]
    style = [("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]
    for i, row in enumerate(scans.itertuples(index=False), start=1):
        ok = row.status == "ok"
        n, k = as_int(row.n_cells), as_int(row.n_leukemic)
        rows.append([Paragraph(view.scan_ids[str(row.scan)], st["small"]), Paragraph(markup(row.scan), st["small"]),
                     Paragraph(markup(row.status), st["small"]),
                     Paragraph(f"{n:,}" if ok else "—", st["small"]), Paragraph(f"{k:,}" if ok else "—", st["small"]),
                     Paragraph(f"{100.0 * k / n:.2f}" if ok and n else "—", st["small"])])
        if not ok:
            style.append(("BACKGROUND", (0, i), (-1, i), colors.HexColor("#fdecea")))
    table = listing_table(rows, [width * f for f in (0.05, 0.48, 0.1, 0.1, 0.12, 0.15)], *style)
    return [Paragraph(f"Scans at a glance ({len(scans)})", st["h3"]), table]


def scan_sections(view: PatientView, pictures: dict[str, ScanPicture]) -> list:
    """The 'Scans' page(s): each scan's section, kept together on one page."""
    from reportlab.platypus import KeepTogether, PageBreak, Paragraph, Spacer

    st, data = view.st, view.data
    story = [PageBreak(), Paragraph(f"Scans ({len(view.scans)})", st["h2"])]
    stages = data.failures.set_index("scan")["stage"].to_dict() if len(data.failures) else {}
    for i, row in view.scans.iterrows():
        scan = str(row["scan"])
        head = Paragraph(f"{view.scan_ids[scan]}: {markup(scan)}", st["h3"])
        if row["status"] != "ok":
            block = [head, _failed_scan_facts(view, row, stages.get(scan, ""))]
        else:
            block = [head, *_read_scan_facts(view, row, i, pictures.get(scan))]
        story.append(KeepTogether(block + [Spacer(1, 6)]))
    return story


def _failed_scan_facts(view: PatientView, row: pd.Series, stage: str):
    """Status, error and effect of a scan that gave no result."""
    return kv_table([
        ("Status", f'<font color="#c62828"><b>scan {markup(row["status"])}</b></font>'
                   + (f" at stage {markup(stage)}" if stage else "")),
        ("Error", markup(row.get("error", "") or "no result")),
        ("Effect", "No cells counted from this scan; no negative call is made for the patient."),
    ], view.st)


def _read_scan_facts(view: PatientView, row: pd.Series, index: int, pic: ScanPicture | None) -> list:
    """Counts, scale, size and time, quality notes; the marked thumbnail where there is one."""
    from reportlab.platypus import Paragraph, Spacer

    tiles_read = as_int(row["tiles_read"])
    block = [kv_table([
        ("Cells", f"{as_int(row['n_cells']):,} (leukemic {as_int(row['n_leukemic']):,}, "
                  f"normal {as_int(row['n_normal']):,})"),
        ("Scale", escape(f"{fmt_num(row['mpp'], 4)} µm/px as scanned; cells found on a copy at "
                         f"{fmt_num(row['working_mpp'], 3)} µm/px, read from pyramid level {as_int(row['level'])}")),
        ("Size, time", escape(f"{tiles_read:,} tile{'' if tiles_read == 1 else 's'} read in "
                              f"{fmt_num(row['seconds'], 1)} s")),
        ("Quality notes", markup("; ".join(_quality_notes(view, row, index, pic)))),
    ], view.st)]
    if pic is not None and pic.thumb is not None:
        block += [Spacer(1, 3), rl_image(pic.thumb, view.width, 235),
                  Paragraph(_legend() + escape(f" Scale bar: {fmt_um(pic.bar_um)}."), view.st["small"])]
        excluded = _excluded_legend(pic.excluded_shares, as_int(row.get("tiles_low_quality")))
        if excluded:
            block.append(Paragraph(excluded, view.st["small"]))
    return block


def _quality_notes(view: PatientView, row: pd.Series, index: int, pic: ScanPicture | None) -> list[str]:
    tiles_read, tiles_skipped = as_int(row["tiles_read"]), as_int(row["tiles_skipped"])
    notes = []
    total_tiles = tiles_read + tiles_skipped
    if total_tiles:
        notes.append(f"{tiles_skipped:,} of {total_tiles:,} tiles skipped as blank glass")
    if as_int(row["n_cells"]) == 0:
        notes.append("no white cells found on this scan")
    if pic is not None and pic.note:
        notes.append(pic.note)
    max_sections = view.params.max_scan_sections
    if index >= max_sections:
        notes.append(f"thumbnail omitted (only the first {max_sections} scans are pictured)")
    notes += _check_notes(row)
    return notes


def _check_notes(row: pd.Series) -> list[str]:
    """The scan's quality figures and whether its cells look like those the model was validated on."""
    notes = []
    if pd.notna(row.get("domain_threshold")):  # each check's threshold is recorded where it judged the scan
        distance = (f"appearance distance {fmt_num(row.get('domain_distance'))}; outside above "
                    f"{fmt_num(row.get('domain_threshold'))}")
        notes.append(f"WARNING: stain or scanner outside the validated range ({distance}): the cells' stain colour "
                     "or strength, background or sharpness differ from the labs the model was validated on; its "
                     "calls here are not reliable" if row.get("domain_distance") > row.get("domain_threshold")
                     else f"cells' appearance inside the validated range ({distance})")
    if pd.notna(row.get("uncertainty_threshold")):
        certainty = (f"mean entropy of its calls {fmt_num(row.get('uncertainty'), 3)} bits; outside above "
                     f"{fmt_num(row.get('uncertainty_threshold'), 3)}")
        notes.append(f"WARNING: the model is less certain on this scan's cells than on any lab it was validated on "
                     f"({certainty}): cells unlike those it learnt from; its calls here are not reliable"
                     if is_uncertain(row.get("uncertainty"), row.get("uncertainty_threshold"))
                     else f"the model as certain on its cells as on the labs it was validated on ({certainty})")
    if "readable_fraction" not in row or pd.isna(row.get("readable_fraction")):
        return notes
    excluded = ", ".join(f"{as_int(row.get(f'tiles_{reason}'))} {reason.replace('_', ' ')}" for reason in REASONS
                         if as_int(row.get(f"tiles_{reason}")))
    verdict = "INSUFFICIENT QUALITY: " if str(row.get("quality")) == "insufficient" else ""
    notes.append(f"{verdict}{as_int(row.get('tiles_low_quality'))} tile(s) not counted"
                 + (f" ({excluded})" if excluded else "") + f"; {fmt_num(100 * row['readable_fraction'], 0)} % of "
                 "the tiles read were fit to count")
    notes += _area_notes(row)
    notes.append(f"quality figures (medians over tiles): edge blur {fmt_num(row.get('edge_sigma_um'))} µm, "
                 f"nucleus OD {fmt_num(row.get('nucleus_od'))}, red-cell OD {fmt_num(row.get('rbc_od'))}, glass "
                 f"brightness {fmt_num(row.get('glass_brightness'), 0)}, red-cell cover "
                 f"{fmt_num(row.get('rbc_coverage'))}, clipped {fmt_num(row.get('clipped_fraction'))}")
    return notes


def _area_notes(row: pd.Series) -> list[str]:
    """Where the scan was counted: the monolayer's area, and the area excluded by reason (none for a result
    stored before bcscan recorded it)."""
    if pd.isna(row.get("area_counted_mm2")):
        return []
    excluded = [f"{reason} {fmt_num(row.get(f'area_excluded_{reason}_mm2'), 2)} mm²" for reason in AREA_EXCLUDED
                if float(row.get(f"area_excluded_{reason}_mm2") or 0) > 0]
    unread = as_int(row.get("tiles_excluded_overview"))
    return [f"counted in {fmt_num(row.get('area_counted_mm2'), 2)} mm²"
            + (f"; not counted: {', '.join(excluded)}" if excluded else "")
            + (f" ({unread:,} tile(s) of it judged thick or thin on the slide's overview, not read)" if unread else "")]


def _legend() -> str:
    """Paragraph markup explaining the marks on a thumbnail."""
    return (f'<font color="{class_hex("leukemic")}">●</font> leukemic   '
            f'<font color="{class_hex("normal")}">●</font> normal — every detected '
            "cell is marked in its class colour (normal cells as dots where rings would crowd); the black bar is "
            "the scale.")


def _excluded_legend(shares: list[tuple[str, int, float]] | None, tiles_low_quality: int) -> str:
    """Paragraph markup saying what the hatching on a thumbnail means and how much each reason excluded
    ('' when no tile was excluded); or why tiles that were excluded are not drawn."""
    if shares is None:
        return (f"The {tiles_low_quality:,} tile(s) not counted for quality are not drawn: this scan's result was "
                "stored by an earlier bcscan that did not record where they lie." if tiles_low_quality else "")
    parts = [f'<font color="{reason_hex(reason)}">■</font> {reason.replace("_", " ")}: {n:,} tile(s), '
             f"{_percent(share)} of the scan" for reason, n, share in shares]
    return "Hatched, not counted: " + "; ".join(parts) + "." if parts else ""


def _percent(share: float) -> str:
    return f"{100 * share:.1f} %" if share >= 0.001 else "< 0.1 %"
