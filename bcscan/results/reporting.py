"""The pathologist's PDF report per patient, and the batch summary (PDF + CSV).

Everything is rebuilt from the tables a `bcscan scan` run leaves in OUT_DIR
(cells.csv, scans.csv, patients.csv, failures.csv, run.json), so `bcscan report
OUT_DIR` regenerates the reports without the model.  The scans themselves are
only needed for pictures (thumbnails, cell crops); a scan that cannot be opened
any more gets a note instead.

The numbers and the flag of a patient are printed exactly as `patients.csv`
holds them: the report never recomputes a call.  Every string that comes from a
file or a file name is escaped before it reaches reportlab's Paragraph markup,
and characters that DejaVu Sans lacks (CJK, Hangul) are set in a fallback font.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import math
import unicodedata
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from bcscan import __version__
from bcscan.errors import ReportError, ReportsIncomplete
from bcscan.results.aggregation import FLAG_INCOMPLETE, FLAG_INSUFFICIENT, FLAG_NEGATIVE, FLAG_REVIEW, PATIENT_COLUMNS
from bcscan.results.tables import (
    CELL_COLUMNS,
    CLASS_COLOURS,
    FAILURE_COLUMNS,
    SCAN_COLUMNS,
    atomic_write_bytes,
    atomic_write_csv,
    safe_filename,
)

log = logging.getLogger("bcscan")

REPORTS_DIR = "reports"
SUMMARY_COLUMNS = ["patient_id", "n_scans", "n_scans_failed", "n_cells", "n_leukemic", "n_normal", "pct_leukemic",
                   "ci_low", "ci_high", "flag", "report", "failed_scans"]
DISCLAIMER = "Decision support: to be verified by a qualified reviewer."


@dataclass(frozen=True)
class ReportingParams:
    gallery_suspicious: int = 24      # crops of the cells with the highest p_leukemic
    gallery_normal: int = 12          # crops of a random (seeded) sample of the normal cells
    gallery_columns: int = 6
    crop_um: float | None = None      # side of a gallery crop; None = the model's crop size (else 20 µm)
    crop_px: int = 112                # gallery crop side in the PDF image, pixels
    thumbnail_px: int = 1400          # long side of a scan thumbnail, pixels
    max_scan_sections: int = 12       # scans shown with a thumbnail; more are listed in a table only
    uncertain_low: float = 0.35       # cells with p_leukemic in [low, high] are counted as "uncertain"
    uncertain_high: float = 0.65
    histogram_bins: int = 20
    sample_seed: int = 0
    fallback_font: str | None = None  # a TTF with the scripts DejaVu Sans lacks (CJK ...); None = search

    def __post_init__(self):
        for name in ("gallery_suspicious", "gallery_normal", "max_scan_sections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 1 <= self.gallery_columns <= 12:
            raise ValueError("gallery_columns must be in 1..12")
        if self.crop_um is not None and not self.crop_um > 0:
            raise ValueError("crop_um must be > 0")
        if not 32 <= self.crop_px <= 512:
            raise ValueError("crop_px must be in 32..512")
        if not 128 <= self.thumbnail_px <= 8192:
            raise ValueError("thumbnail_px must be in 128..8192")
        if not 0.0 <= self.uncertain_low <= self.uncertain_high <= 1.0:
            raise ValueError("need 0 <= uncertain_low <= uncertain_high <= 1")
        if not 2 <= self.histogram_bins <= 200:
            raise ValueError("histogram_bins must be in 2..200")


# --------------------------------------------------------------------------------------------- text and fonts

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


def _register_fonts(params: ReportingParams) -> None:
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
    # The fallback font is registered lazily (parsing a CJK font takes a moment): see _fallback_for.
    _fonts["fallback_key"] = params.fallback_font
    _fonts["fallback_path"] = params.fallback_font
    _fonts.pop("fallback", None)


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


def _clean(text: Any) -> str:
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
    text = _clean(text)
    covered = _fonts["mono" if mono else "main"]
    parts: list[str] = []
    run_font, run = None, []

    def flush():
        if run:
            chunk = escape("".join(run))
            parts.append(f'<font name="{run_font}">{chunk}</font>' if run_font else chunk)
            run.clear()

    for ch in text:
        if ord(ch) in covered or ch.isspace():
            font = None
        else:
            fallback = _fallback_ttf()
            if fallback and ord(ch) in fallback[1]:
                font = fallback[0]
            else:
                font = _cid_font(ch)
                if font is None:
                    ch = f"[U+{ord(ch):04X}]"  # no font can draw it: keep it unambiguous
        if font != run_font:
            flush()
            run_font = font
        run.append(ch)
    flush()
    return "".join(parts)


def _styles():
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


# ------------------------------------------------------------------------------------------------ the inputs

@dataclass
class RunData:
    out_dir: Path
    scan_dir: Path | None
    run: dict[str, Any]
    cells: pd.DataFrame
    scans: pd.DataFrame
    patients: pd.DataFrame
    failures: pd.DataFrame

    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id", "unknown"))

    def config(self, section: str) -> dict[str, Any]:
        value = (self.run.get("config") or {}).get(section)
        return value if isinstance(value, dict) else {}


def _read_table(path: Path, columns: list[str], numeric: list[str]) -> pd.DataFrame:
    """A CSV read as text (a patient called "NA" stays "NA"), then its numeric columns converted."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: missing (run `bcscan scan` into this folder first)") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}")
    for column in numeric:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan), errors="coerce")
    return frame


def load_run(out_dir: Path, scan_dir: Path | None = None) -> RunData:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ReportError(f"{out_dir}: not a folder")
    try:
        run = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{out_dir / 'run.json'}: missing (the scan run did not finish)") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{out_dir / 'run.json'}: unreadable ({exc})") from exc
    if not isinstance(run, dict):
        raise ReportError(f"{out_dir / 'run.json'}: not a bcscan run record")
    cells = _read_table(out_dir / "cells.csv", CELL_COLUMNS,
                        ["cell_id", "x", "y", "x0", "y0", "x1", "y1", "area_um2", "p_leukemic"])
    scans = _read_table(out_dir / "scans.csv", SCAN_COLUMNS,
                        ["n_cells", "n_leukemic", "n_normal", "mpp", "level", "working_mpp", "tiles_read",
                         "tiles_skipped", "seconds"])
    patients = _read_table(out_dir / "patients.csv", PATIENT_COLUMNS[:9],
                           ["n_scans", "n_cells", "n_leukemic", "n_normal", "pct_leukemic", "ci_low", "ci_high",
                            "n_scans_failed"])
    if (out_dir / "failures.csv").is_file():
        failures = _read_table(out_dir / "failures.csv", FAILURE_COLUMNS, [])
    else:
        failures = scans[scans["status"] != "ok"].assign(stage="").reindex(columns=FAILURE_COLUMNS)
    if scan_dir is None and run.get("scan_dir"):
        scan_dir = Path(run["scan_dir"])
    return RunData(out_dir, Path(scan_dir) if scan_dir else None, run, cells, scans, patients, failures)


def report_names(patient_ids: list[str]) -> dict[str, str]:
    """patient_id → report file name, unique even where two IDs make the same safe name
    (including names that differ only in case, on a case-insensitive file system)."""
    base = {pid: safe_filename(pid) for pid in patient_ids}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    names = {}
    for pid, name in base.items():
        if counts[name.lower()] > 1:
            name = f"{name[:100]}-{hashlib.sha256(pid.encode('utf-8')).hexdigest()[:8]}"
        names[pid] = f"{name}.pdf"
    return names


# --------------------------------------------------------------------------------------------- the pictures

def _nice_length(target_um: float) -> float:
    """1, 2 or 5 × 10^k µm, the largest not above `target_um`."""
    if target_um <= 0:
        return 1.0
    exp = math.floor(math.log10(target_um))
    for m in (5, 2, 1):
        if m * 10 ** exp <= target_um:
            return m * 10 ** exp
    return 10 ** exp


def _fmt_um(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def marked_thumbnail(thumb: np.ndarray, cells: pd.DataFrame, level0_width: int, mpp: float) -> tuple[np.ndarray, float]:
    """The thumbnail with every cell marked in its class colour (leukemic drawn last, on top) and a
    scale bar; returns (image, scale bar length in µm).

    Sparse cells get rings with a white halo (visible on pink red cells).  Where rings would crowd
    each other, normal cells become small dots and only leukemic cells keep their ring."""
    import cv2

    img = np.ascontiguousarray(thumb.copy())
    h, w = img.shape[:2]
    scale = w / float(level0_width)
    radii = ((cells["x1"] - cells["x0"]).to_numpy(float) * scale / 2 + 2.5) if len(cells) else np.zeros(0)
    typical = float(np.median(radii)) if len(radii) else 3.0
    dense = len(cells) > 0 and math.sqrt(w * h / len(cells)) < 5 * max(typical, 3.0)
    for label in ("normal", "leukemic"):
        mine = cells[cells["label"] == label]
        if not len(mine):
            continue
        colour = tuple(int(c) for c in CLASS_COLOURS.get(label, [128, 128, 128]))
        xs = (mine["x"].to_numpy(float) * scale).round().astype(int)
        ys = (mine["y"].to_numpy(float) * scale).round().astype(int)
        rs = np.maximum(3, ((mine["x1"] - mine["x0"]).to_numpy(float) * scale / 2 + 2.5).round()).astype(int)
        if dense and label != "leukemic":
            for x, y in zip(xs, ys):
                cv2.circle(img, (int(x), int(y)), 2, colour, -1, cv2.LINE_AA)
            continue
        for x, y, r in zip(xs, ys, rs):
            cv2.circle(img, (int(x), int(y)), int(max(r, 5) if dense else r), (255, 255, 255), 4, cv2.LINE_AA)
            cv2.circle(img, (int(x), int(y)), int(max(r, 5) if dense else r), colour, 2, cv2.LINE_AA)
    um_per_px = mpp / scale
    bar_um = _nice_length(img.shape[1] * 0.2 * um_per_px)
    bar_px = max(1, int(round(bar_um / um_per_px)))
    thick = max(3, h // 120)
    x0, y1 = max(4, w // 40), h - max(4, h // 30)
    cv2.rectangle(img, (x0 - 2, y1 - thick - 2), (x0 + bar_px + 2, y1 + 2), (255, 255, 255), -1)
    cv2.rectangle(img, (x0, y1 - thick), (x0 + bar_px, y1), (0, 0, 0), -1)
    return img, bar_um


def _rl_image(rgb: np.ndarray, width_pt: float, height_pt: float, jpeg: bool = True):
    """A reportlab Image flowable of an RGB array, fit in width × height points, aspect kept."""
    import cv2
    from reportlab.platypus import Image

    ok, buf = cv2.imencode(".jpg" if jpeg else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 88] if jpeg else [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ReportError("cannot encode an image")
    h, w = rgb.shape[:2]
    k = min(width_pt / w, height_pt / h)
    return Image(io.BytesIO(buf.tobytes()), width=w * k, height=h * k)


def histogram_png(p: np.ndarray, threshold: float, bins: int) -> np.ndarray:
    """Distribution of p_leukemic (counts, log scale when they span decades) as an RGB array."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 2.1), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(p, 0, 1), bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    colours = ["#%02x%02x%02x" % tuple(CLASS_COLOURS["leukemic" if c >= threshold else "normal"]) for c in centres]
    ax.bar(centres, counts, width=edges[1] - edges[0], color=colours, edgecolor="white", linewidth=0.5)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.text(threshold, 1.0, f" threshold {threshold:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=7)
    if counts.max(initial=0) >= 50 and counts[counts > 0].min(initial=1) * 20 < counts.max(initial=0):
        ax.set_yscale("log")
        ax.set_ylabel("cells (log)", fontsize=8)
    else:
        ax.set_ylabel("cells", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    if ax.get_yscale() == "linear":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, 1)
    ax.set_xlabel("p_leukemic (model probability that a cell is leukemic)", fontsize=8)
    ax.tick_params(labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout(pad=0.4)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# ------------------------------------------------------------------------------------------ a patient's report

FLAG_TEXT = {
    FLAG_REVIEW: ("Leukemic cells detected — review recommended", "#c62828", "#fdecea"),
    FLAG_INCOMPLETE: ("Incomplete: a scan failed or is pending — no negative call can be made", "#8a5a00",
                      "#fff4e0"),
    FLAG_INSUFFICIENT: ("Insufficient cells for a reliable count — no negative call", "#8a5a00", "#fff4e0"),
    FLAG_NEGATIVE: ("Negative: leukemic cells below the review threshold", "#1b5e20", "#e8f5e9"),
}


def _flag_reason(flag: str, patient: pd.Series, agg: dict[str, Any]) -> str:
    """Why this flag, in the patient's own numbers."""
    n, pct = _int(patient["n_cells"]), _num(patient["pct_leukemic"])
    threshold, min_cells = agg.get("review_threshold_pct", "?"), agg.get("min_cells", "?")
    failed = _int(patient.get("n_scans_failed"))
    if flag == FLAG_REVIEW:
        return f"{pct} % of {n:,} cells are called leukemic, at or above the review threshold of {threshold} %."
    if flag == FLAG_INCOMPLETE:
        counted = (f"the {n:,} cells counted ({pct} % leukemic) do not support a negative call" if n
                   else "no cells were counted")
        return f"{failed} scan(s) of this patient gave no result (see below); {counted}."
    if flag == FLAG_INSUFFICIENT:
        return (f"Only {n:,} cells were found; at least {min_cells} are needed for a negative call. "
                "A new smear or a manual differential is advised.")
    if flag == FLAG_NEGATIVE:
        return f"{pct} % of {n:,} cells are called leukemic, below the review threshold of {threshold} %."
    return ""


def _int(value) -> int:
    try:
        return 0 if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)
    except (TypeError, ValueError):
        return 0


def _num(value, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


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


@dataclass
class ScanPicture:
    thumb: np.ndarray | None
    bar_um: float
    note: str
    crops: dict[tuple[str, int], np.ndarray]


def _scan_pictures(data: RunData, scan_row: pd.Series, cells: pd.DataFrame, gallery: pd.DataFrame,
                   params: ReportingParams, crop_um: float, want_thumbnail: bool) -> ScanPicture:
    """Open one scan once: its marked thumbnail and the gallery crops that lie on it."""
    import cv2

    from bcscan.errors import ScanError
    from bcscan.scan.reading import ReadingParams, open_scan

    scan = str(scan_row["scan"])
    if data.scan_dir is None:
        return ScanPicture(None, 0.0, "scan folder unknown: no picture", {})
    path = data.scan_dir / scan
    if not path.exists():
        return ScanPicture(None, 0.0, f"scan file not found at {path}: pictures omitted", {})
    mpp = scan_row.get("mpp")
    mpp = float(mpp) if mpp is not None and not pd.isna(mpp) and float(mpp) > 0 else None
    try:
        reading = ReadingParams(**data.config("reading"))
    except (TypeError, ValueError):
        reading = ReadingParams()
    note = ""
    finished = str(data.run.get("finished", ""))
    try:
        mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
        if finished and mtime > dt.datetime.fromisoformat(finished):
            note = "scan file modified after the run: pictures may not match the counts"
    except (OSError, ValueError):
        pass
    try:
        with open_scan(path, reading, mpp=mpp) as handle:
            thumb, bar_um = None, 0.0
            if want_thumbnail:
                raw = handle.thumbnail(params.thumbnail_px)
                thumb, bar_um = marked_thumbnail(raw, cells, handle.dimensions[0], handle.mpp)
            crops = {}
            side = max(8, int(round(crop_um / handle.mpp)))
            for row in gallery.itertuples(index=False):
                region = handle.read(0, int(round(row.x)) - side // 2, int(round(row.y)) - side // 2, side, side)
                crop = cv2.resize(region, (params.crop_px, params.crop_px),
                                  interpolation=cv2.INTER_AREA if side > params.crop_px else cv2.INTER_LINEAR)
                crops[(scan, int(row.cell_id))] = crop
            return ScanPicture(thumb, bar_um, note, crops)
    except Exception as exc:  # pictures are optional: a scan that cannot give them gets a note
        log.warning("report pictures of %s: %s", scan, exc)
        reason = str(exc) if isinstance(exc, ScanError) else f"{type(exc).__name__}: {exc}"
        return ScanPicture(None, 0.0, f"scan could not be opened for pictures: {reason}", {})


def _select_gallery(cells: pd.DataFrame, params: ReportingParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    suspicious = cells.sort_values(["p_leukemic", "scan", "cell_id"], ascending=[False, True, True],
                                   kind="mergesort").head(params.gallery_suspicious)
    rest = cells[(cells["label"] == "normal") & ~cells.index.isin(suspicious.index)]
    n = min(params.gallery_normal, len(rest))
    normal = rest.sample(n=n, random_state=params.sample_seed) if n else rest.head(0)
    return suspicious, normal.sort_values("p_leukemic", ascending=False, kind="mergesort")


class _NumberedCanvas:
    """A canvas that knows the page count when it draws the footers ("Page i of N")."""

    @staticmethod
    def make(footer_left: str, footer_right: str, styles):
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
                right = Paragraph(f"{footer_right} · Page {self._pageNumber} of {total}",
                                  styles["small"].clone("fr", alignment=2))
                _, rh = right.wrap(width * 0.42, 30)
                right.drawOn(self, width - 42 - width * 0.42, 30 - rh)
                left = Paragraph(footer_left, styles["small"])
                _, lh = left.wrap(width * 0.45, 30)
                left.drawOn(self, 42, 30 - lh)
                self.restoreState()

        return NumberedCanvas


def _doc(buffer, title: str):
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import SimpleDocTemplate

    return SimpleDocTemplate(buffer, pagesize=A4, leftMargin=42, rightMargin=42, topMargin=40, bottomMargin=52,
                             title=title, author=f"bcscan {__version__}", creator=f"bcscan {__version__}")


def _kv_table(rows: list[tuple[str, str]], styles, col0: float = 105):
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import Paragraph, Table, TableStyle

    width = A4[0] - 84
    table = Table([[Paragraph(escape(k), styles["label"]), Paragraph(v, styles["body"])] for k, v in rows],
                  colWidths=[col0, width - col0])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                               ("TOPPADDING", (0, 0), (-1, -1), 1),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd"))]))
    return table


def render_patient_report(data: RunData, patient: pd.Series, params: ReportingParams) -> bytes:
    """One patient's report as PDF bytes."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import KeepTogether, PageBreak, Paragraph, Spacer, Table, TableStyle

    _register_fonts(params)
    st = _styles()
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
    story.append(_kv_table([
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

    n_cells, n_leuk, n_norm = _int(patient["n_cells"]), _int(patient["n_leukemic"]), _int(patient["n_normal"])
    big = [[Paragraph(f"{n_cells:,}", st["big"]), Paragraph(f"{n_leuk:,}", st["big"]),
            Paragraph(f"{n_norm:,}", st["big"]),
            # no cells: a percentage of nothing is not a result (patients.csv keeps 0 and 0–100)
            Paragraph(f"{_num(patient['pct_leukemic'])} %" if n_cells else "—", st["big"]),
            Paragraph(f"{_num(patient['ci_low'])}–{_num(patient['ci_high'])} %" if n_cells else "—", st["big"])],
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
                      [Paragraph(escape(_flag_reason(flag, patient, agg)), st["body"])],
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
    n_failed = _int(patient.get("n_scans_failed"))
    uncertain = int(cells["p_leukemic"].between(params.uncertain_low, params.uncertain_high).sum())
    rules = (f"Review at ≥ {agg.get('review_threshold_pct', '?')} % leukemic cells; a negative call needs "
             f"≥ {agg.get('min_cells', '?')} cells and every scan read. A cell is called leukemic at "
             f"p_leukemic ≥ {threshold:g}. Scans: {_int(patient.get('n_scans'))} read, {n_failed} failed. "
             f"Uncertain cells (p_leukemic {params.uncertain_low:g}–{params.uncertain_high:g}): {uncertain:,}.")
    story.append(Paragraph(escape(rules), st["small"]))

    story.append(Paragraph(f"Scans at a glance ({len(scans)})", st["h3"]))
    story.append(_scan_overview(scans, scan_ids, width, st))
    if len(cells):
        story.append(Paragraph("Distribution of p_leukemic over the patient's cells", st["h3"]))
        story.append(_rl_image(histogram_png(cells["p_leukemic"].to_numpy(float), threshold, params.histogram_bins),
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
            pictures[scan] = _scan_pictures(data, row, scan_cells, mine, params, crop_um, want)

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
            block = [head, _kv_table([
                ("Status", f'<font color="#c62828"><b>scan {markup(row["status"])}</b></font>'
                           + (f" at stage {markup(stage)}" if stage else "")),
                ("Error", markup(row.get("error", "") or "no result")),
                ("Effect", "No cells counted from this scan; no negative call is made for the patient."),
            ], st)]
            story.append(KeepTogether(block + [Spacer(1, 6)]))
            continue
        tiles_read, tiles_skipped = _int(row["tiles_read"]), _int(row["tiles_skipped"])
        notes = []
        total_tiles = tiles_read + tiles_skipped
        if total_tiles:
            notes.append(f"{tiles_skipped:,} of {total_tiles:,} tiles skipped as blank glass")
        if _int(row["n_cells"]) == 0:
            notes.append("no white cells found on this scan")
        pic = pictures.get(scan)
        if pic is not None and pic.note:
            notes.append(pic.note)
        if i >= params.max_scan_sections:
            notes.append(f"thumbnail omitted (only the first {params.max_scan_sections} scans are pictured)")
        notes.append("blur and stain checks: not measured by this version — judge from the thumbnail and crops")
        block = [head, _kv_table([
            ("Cells", f"{_int(row['n_cells']):,} (leukemic {_int(row['n_leukemic']):,}, "
                      f"normal {_int(row['n_normal']):,})"),
            ("Scale", escape(f"{_num(row['mpp'], 4)} µm/px at level 0; segmented at {_num(row['working_mpp'], 3)} "
                             f"µm/px (pyramid level {_int(row['level'])})")),
            ("Size, time", escape(f"{tiles_read:,} tiles read in {_num(row['seconds'], 1)} s")),
            ("Quality notes", markup("; ".join(notes))),
        ], st)]
        if pic is not None and pic.thumb is not None:
            block += [Spacer(1, 3), _rl_image(pic.thumb, width, 235),
                      Paragraph(legend + escape(f" Scale bar: {_fmt_um(pic.bar_um)}."), st["small"])]
        story.append(KeepTogether(block + [Spacer(1, 6)]))

    if not len(cells):
        story.append(Paragraph("Cell gallery", st["h2"]))
        story.append(Paragraph("No cells were counted for this patient: no gallery.", st["body"]))
    else:
        story.append(PageBreak())
        story.append(Paragraph("Cell gallery", st["h2"]))
        story.append(Paragraph(escape(
            f"Crops of {_fmt_um(crop_um)} around each cell centre. Position = level-0 pixel (x, y) on the scan, "
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
    story += [Paragraph("Input files", st["h3"]), table, Paragraph("Run", st["h3"]), _kv_table([
        ("Model file", markup(model.get("path", ""))),
        ("Model sha256", markup(model.get("sha256", ""), mono=True)),
        ("Config digest", markup(data.run.get("config_digest", ""))),
        ("Run started", markup(data.run.get("started", ""))),
        ("Run finished", markup(data.run.get("finished", ""))),
        ("Output folder", markup(data.out_dir.resolve())),
        ("Tables", "cells.csv, scans.csv, patients.csv, failures.csv, run.json, geojson/"),
    ], st)]

    buffer = io.BytesIO()
    doc = _doc(buffer, f"bcscan report — {_clean(pid)}")
    canvas = _NumberedCanvas.make(f"Patient {markup(pid[:80] + ('…' if len(pid) > 80 else ''))} · "
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
        n, k = _int(row.n_cells), _int(row.n_leukemic)
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
            image = _rl_image(framed, img_side, img_side)
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


# ---------------------------------------------------------------------------------------------- the summary

def summary_table(data: RunData, names: dict[str, str]) -> pd.DataFrame:
    rows = []
    for patient in data.patients.itertuples(index=False):
        pid = str(patient.patient_id)
        failed = data.scans[(data.scans["patient_id"] == pid) & (data.scans["status"] != "ok")]
        rows.append({
            "patient_id": pid, "n_scans": _int(patient.n_scans),
            "n_scans_failed": _int(getattr(patient, "n_scans_failed", len(failed))),
            "n_cells": _int(patient.n_cells), "n_leukemic": _int(patient.n_leukemic),
            "n_normal": _int(patient.n_normal), "pct_leukemic": patient.pct_leukemic,
            "ci_low": patient.ci_low, "ci_high": patient.ci_high, "flag": patient.flag,
            "report": f"{REPORTS_DIR}/{names[pid]}",
            "failed_scans": "; ".join(f"{s}: {e}" for s, e in zip(failed["scan"], failed["error"])),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def render_summary(data: RunData, summary: pd.DataFrame, params: ReportingParams) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import Paragraph, Spacer, Table, TableStyle

    _register_fonts(params)
    st = _styles()
    width = A4[0] - 84
    model = data.run.get("model") or {}
    counts = data.run.get("counts") or {}
    story = [Paragraph("bcscan batch summary", st["title"]), _kv_table([
        ("Run ID", markup(data.run_id)),
        ("Run", markup(f"{data.run.get('started', '')} → {data.run.get('finished', '')}")),
        ("Scan folder", markup(data.run.get("scan_dir", ""))),
        ("bcscan version", escape(str(data.run.get("bcscan_version", "unknown")))),
        ("Model", markup(f"{model.get('name', 'unknown')} · sha256 {model.get('sha256', '')}")),
        ("Totals", escape(f"{len(summary)} patients, {counts.get('scans', len(data.scans))} scans "
                          f"({len(data.failures)} failed), {len(data.cells):,} cells")),
        ("Report date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ], st), Spacer(1, 4), Paragraph(escape(DISCLAIMER), st["disclaimer"]),
        Paragraph(f"Patients ({len(summary)})", st["h2"])]
    tally = summary["flag"].value_counts()
    story.append(Paragraph(markup(" · ".join(f"{flag}: {tally[flag]}" for flag in
                                             [f for f in FLAG_TEXT if f in tally] +
                                             [f for f in tally.index if f not in FLAG_TEXT])), st["body"]))
    story.append(Spacer(1, 3))
    head = ["Patient ID", "Scans read (failed)", "Cells", "Leuk.", "Normal", "% leuk.", "95 % CI", "Flag"]
    rows = [[Paragraph(f"<b>{h}</b>", st["small"]) for h in head]]
    style = [("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 3),
             ("RIGHTPADDING", (0, 0), (-1, -1), 3), ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#cccccc")),
             ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee"))]
    for i, r in enumerate(summary.itertuples(index=False), start=1):
        rows.append([Paragraph(markup(r.patient_id), st["small"]),
                     Paragraph(f"{r.n_scans} ({r.n_scans_failed})", st["small"]),
                     Paragraph(f"{r.n_cells:,}", st["small"]), Paragraph(f"{r.n_leukemic:,}", st["small"]),
                     Paragraph(f"{r.n_normal:,}", st["small"]), Paragraph(_num(r.pct_leukemic), st["small"]),
                     Paragraph(f"{_num(r.ci_low)}–{_num(r.ci_high)}", st["small"]),
                     Paragraph(markup(r.flag), st["small"])])
        fg, bg = FLAG_TEXT.get(str(r.flag), ("", "#333333", "#ffffff"))[1:]
        if r.flag != FLAG_NEGATIVE:
            style.append(("BACKGROUND", (0, i), (-1, i), colors.HexColor(bg)))
    fractions = [0.20, 0.08, 0.08, 0.07, 0.09, 0.08, 0.13, 0.27]
    table = Table(rows, colWidths=[width * f for f in fractions], repeatRows=1)
    table.setStyle(TableStyle(style))
    story.append(table)
    story.append(Paragraph(f"Failed scans ({len(data.failures)})", st["h2"]))
    if len(data.failures):
        patient_of = dict(zip(data.scans["scan"], data.scans["patient_id"]))
        rows = [[Paragraph(f"<b>{h}</b>", st["small"]) for h in ("Scan", "Patient", "Stage", "Why")]]
        for f in data.failures.itertuples(index=False):
            rows.append([Paragraph(markup(f.scan), st["small"]),
                         Paragraph(markup(patient_of.get(f.scan, "")), st["small"]),
                         Paragraph(markup(f.stage), st["small"]), Paragraph(markup(f.error), st["small"])])
        table = Table(rows, colWidths=[width * 0.27, width * 0.15, width * 0.08, width * 0.5], repeatRows=1)
        table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                   ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#cccccc")),
                                   ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee"))]))
        story.append(table)
    else:
        story.append(Paragraph("None: every scan was read.", st["body"]))
    story.append(Paragraph(escape("One report per patient in reports/ (file names in summary.csv); "
                                  "all cells in cells.csv."), st["small"]))
    buffer = io.BytesIO()
    doc = _doc(buffer, "bcscan batch summary")
    doc.build(story, canvasmaker=_NumberedCanvas.make(escape(DISCLAIMER), f"Run {markup(data.run_id)}", st))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ entry point

def params_from(run: dict[str, Any], override: ReportingParams | None) -> ReportingParams:
    """Explicit params, else the `reporting` section recorded in run.json, else the defaults."""
    if override is not None:
        return override
    recorded = (run.get("config") or {}).get("reporting")
    if isinstance(recorded, dict):
        known = {f.name for f in fields(ReportingParams)}
        try:
            return ReportingParams(**{k: v for k, v in recorded.items() if k in known})
        except (TypeError, ValueError):
            log.warning("run.json: unusable reporting section, using the defaults")
    return ReportingParams()


def write_reports(out_dir: Path, scan_dir: Path | None = None, params: ReportingParams | None = None,
                  patients: list[str] | None = None) -> list[Path]:
    """Write reports/<patient>.pdf for every patient (or those in `patients`), summary.pdf and
    summary.csv into `out_dir`, from its tables.  Returns the files written.

    Raises ReportError when the tables cannot be read, or, after writing every report it could,
    when some patient's report failed (the message names them)."""
    out_dir = Path(out_dir)
    data = load_run(out_dir, scan_dir)
    params = params_from(data.run, params)
    ids = [str(p) for p in data.patients["patient_id"]]
    names = report_names(ids)
    wanted = ids if patients is None else [p for p in ids if p in set(patients)]
    if patients is not None and len(wanted) != len(set(patients)):
        unknown = sorted(set(patients) - set(ids))
        raise ReportError(f"patient(s) not in patients.csv: {', '.join(_clean(u) for u in unknown)}")
    written: list[Path] = []
    failed: list[str] = []
    reports = out_dir / REPORTS_DIR
    for pid in wanted:
        row = data.patients[data.patients["patient_id"] == pid].iloc[0]
        target = reports / names[pid]
        if target.resolve().parent != reports.resolve():  # safe_filename makes one path component: never
            raise ReportError(f"unsafe report name for patient {_clean(pid)!r}")
        try:
            atomic_write_bytes(target, render_patient_report(data, row, params))
        except Exception as exc:  # one patient's report must not cost the others theirs
            log.exception("report for patient %r failed", pid)
            failed.append(f"{_clean(pid)} ({type(exc).__name__}: {_clean(exc)})")
            continue
        written.append(target)
        log.info("report %s", target)
    summary = summary_table(data, names)
    atomic_write_csv(out_dir / "summary.csv", summary, SUMMARY_COLUMNS)
    atomic_write_bytes(out_dir / "summary.pdf", render_summary(data, summary, params))
    written += [out_dir / "summary.csv", out_dir / "summary.pdf"]
    if failed:
        raise ReportsIncomplete(f"{len(failed)} report(s) failed: {'; '.join(failed)}")
    return written
