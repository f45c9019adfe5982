"""write_reports: every patient's PDF, then summary.csv and summary.pdf, from a run's tables.

One patient's report failing costs no other patient theirs: the failures are named together
at the end (ReportsIncomplete).
"""
from __future__ import annotations

import logging
from pathlib import Path

from bcscan.errors import ReportError, ReportsIncomplete
from bcscan.results.reports.markup import clean
from bcscan.results.reports.params import ReportingParams, params_from
from bcscan.results.reports.patient import render_patient_report
from bcscan.results.reports.report_files import REPORTS_DIR, report_names
from bcscan.results.reports.run_data import load_run
from bcscan.results.reports.summary import SUMMARY_COLUMNS, render_summary, summary_table
from bcscan.results.tables import atomic_write_bytes, atomic_write_csv
from bcscan.results.verification import Verification

log = logging.getLogger("bcscan")


def write_reports(out_dir: Path, scan_dir: Path | None = None, params: ReportingParams | None = None,
                  patients: list[str] | None = None, verifications: dict[str, Verification] | None = None
                  ) -> list[Path]:
    """Write reports/<patient>.pdf for every patient (or those in `patients`), summary.pdf and
    summary.csv into `out_dir`, from its tables.  Returns the files written.  `verifications`:
    the reviewers' standing sign-offs by patient (bcscan.review); a patient without one is reported
    as not verified.

    Raises ReportError when the tables cannot be read, or, after writing every report it could,
    when some patient's report failed (the message names them)."""
    out_dir = Path(out_dir)
    data = load_run(out_dir, scan_dir)
    data.verifications = dict(verifications or {})
    params = params_from(data.run, params)
    ids = [str(p) for p in data.patients["patient_id"]]
    names = report_names(ids)
    wanted = ids if patients is None else [p for p in ids if p in set(patients)]
    if patients is not None and len(wanted) != len(set(patients)):
        unknown = sorted(set(patients) - set(ids))
        raise ReportError(f"patient(s) not in patients.csv: {', '.join(clean(u) for u in unknown)}")
    written: list[Path] = []
    failed: list[str] = []
    reports = out_dir / REPORTS_DIR
    for pid in wanted:
        row = data.patients[data.patients["patient_id"] == pid].iloc[0]
        target = reports / names[pid]
        if target.resolve().parent != reports.resolve():  # safe_filename makes one path component: never
            raise ReportError(f"unsafe report name for patient {clean(pid)!r}")
        try:
            atomic_write_bytes(target, render_patient_report(data, row, params))
        except Exception as exc:  # one patient's report must not cost the others theirs
            log.exception("report for patient %r failed", pid)
            failed.append(f"{clean(pid)} ({type(exc).__name__}: {clean(exc)})")
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
