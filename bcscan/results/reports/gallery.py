"""The cell gallery of a patient's report: crops of the most suspicious cells and of a seeded
random sample of the normal ones, each framed in its class colour and captioned with its
p_leukemic and position."""
from __future__ import annotations

from xml.sax.saxutils import escape

import pandas as pd

from bcscan.results.reports.formatting import fmt_um
from bcscan.results.reports.params import ReportingParams
from bcscan.results.reports.patient_view import PatientView
from bcscan.results.reports.pictures import class_rgb, rl_image
from bcscan.results.reports.scan_pictures import ScanPicture


def select_gallery(cells: pd.DataFrame, params: ReportingParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the cells of highest p_leukemic, a seeded random sample of the other normal cells)."""
    suspicious = cells.sort_values(["p_leukemic", "scan", "cell_id"], ascending=[False, True, True],
                                   kind="mergesort").head(params.gallery_suspicious)
    rest = cells[(cells["label"] == "normal") & ~cells.index.isin(suspicious.index)]
    n = min(params.gallery_normal, len(rest))
    normal = rest.sample(n=n, random_state=params.sample_seed) if n else rest.head(0)
    return suspicious, normal.sort_values("p_leukemic", ascending=False, kind="mergesort")


def gallery_section(view: PatientView, suspicious: pd.DataFrame, normal: pd.DataFrame,
                    pictures: dict[str, ScanPicture]) -> list:
    """The 'Cell gallery' page(s): both selections, or a line saying there are no cells."""
    from reportlab.platypus import PageBreak, Paragraph

    st, cells = view.st, view.cells
    if not len(cells):
        return [Paragraph("Cell gallery", st["h2"]),
                Paragraph("No cells were counted for this patient: no gallery.", st["body"])]
    story = [PageBreak(), Paragraph("Cell gallery", st["h2"]), Paragraph(escape(
        f"Crops of {fmt_um(view.crop_um)} around each cell centre. Position = level-0 pixel (x, y) on the scan, "
        f"the same coordinates as cells.csv and the QuPath GeoJSON in geojson/. All {len(cells):,} cells of "
        f"this patient are in cells.csv."), st["small"])]
    n_normal_cells = int((cells["label"] == "normal").sum())
    for title, chosen in ((_suspicious_title(view, suspicious), suspicious),
                          (f"Sample of normal cells: {len(normal)} of {n_normal_cells:,}, chosen at random", normal)):
        story.append(Paragraph(escape(title), st["h3"]))
        story.append(_gallery_table(view, chosen, pictures) if len(chosen) else Paragraph("None.", st["body"]))
    return story


def _suspicious_title(view: PatientView, suspicious: pd.DataFrame) -> str:
    """'Most suspicious' only where some cell is called leukemic; otherwise what the highest p is."""
    n, cells = len(suspicious), view.cells
    if (cells["label"] == "leukemic").any():
        return f"Most suspicious cells: the {n} highest p_leukemic of {len(cells):,}"
    return (f"Cells of highest p_leukemic: the {n} highest of {len(cells):,}; none is called leukemic "
            f"(highest p {cells['p_leukemic'].max():.3f}, called leukemic from {view.threshold:g})")


def _gallery_table(view: PatientView, chosen: pd.DataFrame, pictures: dict[str, ScanPicture]):
    """The chosen cells' crops in rows of `gallery_columns`, captioned."""
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    ncol = view.params.gallery_columns
    cell_w = view.width / ncol
    grid, row_cells = [], []
    for cell in chosen.itertuples(index=False):
        row_cells.append(_gallery_cell(view, cell, pictures.get(str(cell.scan)), cell_w - 8))
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


def _gallery_cell(view: PatientView, cell, pic: ScanPicture | None, img_side: float) -> list:
    """[crop framed in the class colour (or a note), caption] for one cell (a cells.csv row tuple)."""
    import cv2
    from reportlab.platypus import Paragraph

    st = view.st
    crop = pic.crops.get((str(cell.scan), int(cell.cell_id))) if pic else None
    if crop is not None:
        framed = cv2.copyMakeBorder(crop, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=class_rgb(cell.label))
        image = rl_image(framed, img_side, img_side)
    else:
        image = Paragraph("image unavailable (scan not found)", st["tiny"])
    caption = Paragraph(f"<b>p {float(cell.p_leukemic):.3f}</b> {escape(str(cell.label))}<br/>"
                        f"{view.scan_ids.get(str(cell.scan), '?')} x {int(round(cell.x)):,} y {int(round(cell.y)):,}",
                        st["tiny"])
    return [image, caption]
