"""Text from files made safe for reportlab's Paragraph markup: printed as written (escaped,
control characters shown as \\xNN), with the glyphs DejaVu Sans lacks set in a fallback font."""
from __future__ import annotations

import math
import unicodedata
from typing import Any
from xml.sax.saxutils import escape

from bcscan.results.reports.fonts import fallback_font, has_glyph


def clean(text: Any) -> str:
    """A value from a file as one printable line: control characters shown as \\xNN, None/NaN as ''."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch not in "\t":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(" " if ch == "\t" else ch)
    return "".join(out)


def markup(text: Any, mono: bool = False) -> str:
    """Paragraph markup that prints `text` as written: escaped, with glyphs DejaVu lacks in a fallback font."""
    text = clean(text)
    parts: list[str] = []
    run_font, run = None, []

    def flush():
        if run:
            chunk = escape("".join(run))
            parts.append(f'<font name="{run_font}">{chunk}</font>' if run_font else chunk)
            run.clear()

    for ch in text:
        if has_glyph(ch, mono) or ch.isspace():
            font = None
        else:
            font = fallback_font(ch)
            if font is None:
                ch = f"[U+{ord(ch):04X}]"  # no font can draw it: keep it unambiguous
        if font != run_font:
            flush()
            run_font = font
        run.append(ch)
    flush()
    return "".join(parts)
