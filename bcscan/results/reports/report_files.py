"""Where the reports go: OUT_DIR/reports/<patient>.pdf, one distinct safe file name per patient."""
from __future__ import annotations

import hashlib

from bcscan.results.tables import safe_filename

REPORTS_DIR = "reports"


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
