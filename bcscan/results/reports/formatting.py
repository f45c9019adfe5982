"""Numbers, lengths and dates as both PDFs print them."""
from __future__ import annotations

import datetime as dt
import math


def as_int(value) -> int:
    """A count from a table; missing or unreadable counts as 0."""
    try:
        return 0 if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)
    except (TypeError, ValueError):
        return 0


def fmt_num(value, digits: int = 2) -> str:
    """A number with `digits` decimals; missing or unreadable as '—'."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_um(um: float) -> str:
    """A length in µm, or in mm from 1000 µm."""
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def report_date() -> str:
    """Now, as the 'Report date' line prints it."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
