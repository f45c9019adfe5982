"""The fonts of both PDFs: DejaVu Sans (shipped with matplotlib) for text, and, for the
characters it lacks (CJK, Hangul), a system TrueType font or else a standard Adobe CID font.

reportlab is imported inside the functions: `bcscan --help` must not load it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bcscan.results.reports.params import ReportingParams

log = logging.getLogger("bcscan")

FONT = "DejaVuSans"
FONT_BOLD = "DejaVuSans-Bold"
FONT_MONO = "DejaVuSansMono"
# TrueType fonts (reportlab cannot embed CFF/OpenType-PS such as Noto CJK) with CJK coverage.
FALLBACK_FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/unfonts-core/UnBatang.ttf",
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
]
_fonts: dict[str, Any] = {}


def register_fonts(params: ReportingParams) -> None:
    """DejaVu Sans (shipped with matplotlib, a dependency) as the text font, plus fallbacks."""
    if _fonts.get("fallback_key") == params.fallback_font and "main" in _fonts:
        return
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    ttf_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    if "main" not in _fonts:
        main = TTFont(FONT, str(ttf_dir / "DejaVuSans.ttf"))
        for font in (main, TTFont(FONT_BOLD, str(ttf_dir / "DejaVuSans-Bold.ttf")),
                     TTFont("DejaVuSans-Oblique", str(ttf_dir / "DejaVuSans-Oblique.ttf")),
                     TTFont("DejaVuSans-BoldOblique", str(ttf_dir / "DejaVuSans-BoldOblique.ttf")),
                     TTFont(FONT_MONO, str(ttf_dir / "DejaVuSansMono.ttf"))):
            pdfmetrics.registerFont(font)
        pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=FONT_BOLD, italic="DejaVuSans-Oblique",
                                      boldItalic="DejaVuSans-BoldOblique")
        _fonts["main"] = set(main.face.charToGlyph)
        _fonts["mono"] = set(pdfmetrics.getFont(FONT_MONO).face.charToGlyph)
    # The fallback font is registered lazily (parsing a CJK font takes a moment): see _fallback_ttf.
    _fonts["fallback_key"] = params.fallback_font
    _fonts["fallback_path"] = params.fallback_font
    _fonts.pop("fallback", None)


def has_glyph(ch: str, mono: bool = False) -> bool:
    """Whether DejaVu Sans (or DejaVu Sans Mono) draws `ch`; register_fonts must have run."""
    return ord(ch) in _fonts["mono" if mono else "main"]


def fallback_font(ch: str) -> str | None:
    """The font for a character DejaVu lacks: the fallback TrueType font where it has the glyph,
    else a standard CID font; None when no font can draw it."""
    fallback = _fallback_ttf()
    if fallback and ord(ch) in fallback[1]:
        return fallback[0]
    return _cid_font(ch)


def _fallback_ttf():
    """(font name, covered code points) of a system TTF with CJK glyphs, or None."""
    if "fallback" in _fonts:
        return _fonts["fallback"]
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    candidates = [_fonts.get("fallback_path")] if _fonts.get("fallback_path") else FALLBACK_FONT_CANDIDATES
    result = None
    for path in candidates:
        if not path or not Path(path).is_file():
            continue
        try:
            font = TTFont("bcscan-fallback", path, subfontIndex=0)
            pdfmetrics.registerFont(font)
        except Exception as exc:  # a font reportlab cannot embed: try the next
            log.debug("fallback font %s unusable: %s", path, exc)
            continue
        for bold in (0, 1):
            for italic in (0, 1):
                addMapping("bcscan-fallback", bold, italic, "bcscan-fallback")
        result = ("bcscan-fallback", set(font.face.charToGlyph))
        break
    _fonts["fallback"] = result
    return result


def _cid_font(ch: str) -> str | None:
    """A standard (non-embedded) Adobe CID font for CJK characters: every PDF viewer substitutes one."""
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    cp = ord(ch)
    if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
        name = "HYSMyeongJo-Medium"
    elif (0x2E80 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF or 0xFF00 <= cp <= 0xFFEF
          or 0x20000 <= cp <= 0x2FFFF):
        name = "STSong-Light"
    else:
        return None
    if name not in _fonts.setdefault("cid", set()):
        pdfmetrics.registerFont(UnicodeCIDFont(name))
        for bold in (0, 1):
            for italic in (0, 1):
                addMapping(name, bold, italic, name)
        _fonts["cid"].add(name)
    return name
