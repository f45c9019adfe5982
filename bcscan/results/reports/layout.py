"""What both PDFs share on the page: paragraph styles, the text width, the table kinds (label /
value, listing), and the A4 document whose footer knows the page count ("Page i of N").

reportlab is imported inside the functions: `bcscan --help` must not load it.
"""
from __future__ import annotations

import io
from xml.sax.saxutils import escape

from bcscan import __version__
from bcscan.results.reports.fonts import FONT, FONT_BOLD, FONT_MONO

DISCLAIMER = "Decision support: to be verified by a qualified reviewer."


def styles():
    """The paragraph styles of both PDFs, by name."""
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle

    base = ParagraphStyle("body", fontName=FONT, fontSize=9, leading=11.5, splitLongWords=1)
    return {
        "body": base,
        "small": ParagraphStyle("small", parent=base, fontSize=7.5, leading=9.5),
        "tiny": ParagraphStyle("tiny", parent=base, fontSize=6.5, leading=8, alignment=1),
        "mono": ParagraphStyle("mono", parent=base, fontName=FONT_MONO, fontSize=7, leading=8.5),
        "title": ParagraphStyle("title", parent=base, fontName=FONT_BOLD, fontSize=16, leading=20, spaceAfter=4),
        "h2": ParagraphStyle("h2", parent=base, fontName=FONT_BOLD, fontSize=12, leading=15, spaceBefore=8,
                             spaceAfter=4, textColor=colors.HexColor("#1a3a5c")),
        "h3": ParagraphStyle("h3", parent=base, fontName=FONT_BOLD, fontSize=10, leading=13, spaceBefore=6,
                             spaceAfter=3),
        "label": ParagraphStyle("label", parent=base, fontName=FONT_BOLD, fontSize=8.5, leading=11),
        "big": ParagraphStyle("big", parent=base, fontName=FONT_BOLD, fontSize=15, leading=18, alignment=1),
        "bigl": ParagraphStyle("bigl", parent=base, fontSize=8, leading=10, alignment=1,
                               textColor=colors.HexColor("#444444")),
        "flag": ParagraphStyle("flag", parent=base, fontName=FONT_BOLD, fontSize=11.5, leading=14.5),
        "disclaimer": ParagraphStyle("disclaimer", parent=base, fontName=FONT_BOLD, fontSize=9.5, leading=12,
                                     textColor=colors.HexColor("#7a4b00")),
    }


def text_width() -> float:
    """Width of the text block on the A4 page, in points (42 pt margins)."""
    from reportlab.lib.pagesizes import A4

    return A4[0] - 84


def header_row(titles, st) -> list:
    """The bold header row of a listing table."""
    from reportlab.platypus import Paragraph

    return [Paragraph(f"<b>{h}</b>", st["small"]) for h in titles]


def listing_table(rows: list, widths: list[float], *style):
    """A table of rows under a header row (repeated on each page), ruled below every row; `style`
    adds TableStyle commands (paddings, backgrounds)."""
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    table = Table(rows, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#cccccc")), *style]))
    return table


def kv_table(rows: list[tuple[str, str]], st, col0: float = 105):
    """Label / value lines (the value is Paragraph markup already)."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    width = text_width()
    table = Table([[Paragraph(escape(k), st["label"]), Paragraph(v, st["body"])] for k, v in rows],
                  colWidths=[col0, width - col0])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                               ("TOPPADDING", (0, 0), (-1, -1), 1),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd"))]))
    return table


def build_pdf(story: list, title: str, footer_left: str, footer_right: str, st) -> bytes:
    """The story laid out on A4 pages, each with the footer '<left> … <right> · Page i of N'."""
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import SimpleDocTemplate

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=42, rightMargin=42, topMargin=40, bottomMargin=52,
                            title=title, author=f"bcscan {__version__}", creator=f"bcscan {__version__}")
    doc.build(story, canvasmaker=_numbered_canvas(footer_left, footer_right, st))
    return buffer.getvalue()


def _numbered_canvas(footer_left: str, footer_right: str, st):
    """A canvas class that knows the page count when it draws the footers ("Page i of N")."""
    from reportlab.lib import colors
    from reportlab.pdfgen.canvas import Canvas
    from reportlab.platypus import Paragraph

    class NumberedCanvas(Canvas):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pages = []

        def showPage(self):
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self._footer(total)
                Canvas.showPage(self)
            Canvas.save(self)

        def _footer(self, total):
            width, _ = self._pagesize
            self.saveState()
            self.setStrokeColor(colors.HexColor("#999999"))
            self.setLineWidth(0.5)
            self.line(42, 34, width - 42, 34)
            block = width - 84
            right = Paragraph(f"{footer_right} · Page {self._pageNumber} of {total}",
                              st["small"].clone("fr", alignment=2))
            right.wrap(block / 2, 30)
            right_width = max(right.getActualLineWidths0()) + 2  # as wide as its text: the rest is the left's
            _, rh = right.wrap(right_width, 30)
            right.drawOn(self, width - 42 - right_width, 30 - rh)
            left = Paragraph(footer_left, st["small"])
            _, lh = left.wrap(block - right_width - 12, 30)
            left.drawOn(self, 42, 30 - lh)
            self.restoreState()

    return NumberedCanvas
