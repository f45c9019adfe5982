"""The "Verified" section of a patient's report: who signed off, when, the verified counts with their
CI and conclusion, and every cell whose call the reviewer changed; or, without a sign-off, a box
that says the result is not verified."""
from __future__ import annotations

from xml.sax.saxutils import escape

from bcscan.results.reports.formatting import fmt_num
from bcscan.results.reports.layout import header_row, kv_table, listing_table
from bcscan.results.reports.markup import markup
from bcscan.results.reports.patient_view import PatientView
from bcscan.results.verification import CONCLUSIONS

NOT_VERIFIED = ("NOT VERIFIED: no reviewer has signed off this result. The counts above are the model's "
                "calls (decision support); verify them with `bcscan review OUT_DIR`.")


def verified_section(view: PatientView) -> list:
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    st = view.st
    v = view.data.verifications.get(view.pid)
    story = [Paragraph("Verified", st["h2"])]
    if v is None:
        box = Table([[Paragraph(escape(NOT_VERIFIED), st["disclaimer"])]], colWidths=[view.width])
        box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colors.HexColor("#c62828")),
                                 ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fdecea"))]))
        return story + [box]
    c = v.counts
    story.append(kv_table([
        ("Reviewer", markup(v.reviewer)),
        ("Signed off", markup(v.signed_at)),
        ("Verified counts", escape(f"{c.n_blasts:,} blasts of {c.n_cells:,} white cells: {fmt_num(c.pct_blasts)} % "
                                   f"(95 % CI {fmt_num(c.ci_low)}–{fmt_num(c.ci_high)} %, Wilson)")),
        ("Conclusion", markup(CONCLUSIONS.get(v.conclusion, v.conclusion))),
        ("Comment", markup(v.comment or "—")),
    ], view.st))
    if not v.reclassified:
        return story + [Paragraph("No cell was reclassified: the reviewer confirmed the model's calls.", st["small"])]
    rows = [header_row(["Cell", "Position (x, y)", "Model's call", "Verified as", "By", "When"], st)]
    positions = view.cells.set_index(["scan", "cell_id"])[["x", "y"]]
    for r in v.reclassified:
        x, y = positions.loc[(r.scan, r.cell_id)] if (r.scan, r.cell_id) in positions.index else ("?", "?")
        rows.append([Paragraph(f"{view.scan_ids.get(r.scan, '?')} #{r.cell_id}", st["small"]),
                     Paragraph(f"{fmt_num(x, 0)}, {fmt_num(y, 0)}", st["small"]),
                     Paragraph(markup(r.model_label), st["small"]), Paragraph(markup(r.label), st["small"]),
                     Paragraph(markup(r.reviewer), st["small"]), Paragraph(markup(r.decided_at), st["small"])])
    w = view.width
    story.append(Paragraph(f"Reclassified cells ({len(v.reclassified)})", st["h3"]))
    return story + [listing_table(rows, [w * f for f in (0.10, 0.16, 0.14, 0.18, 0.18, 0.24)])]
