"""`bcscan report OUT_DIR`: the PDF reports again from the tables of a finished scan run.

No model and no TensorFlow: the numbers come from patients.csv / cells.csv, the
pictures from the scans (found through run.json's scan folder or --scan-dir).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from bcscan.cli.common import fail, reported_errors, say_reconciled
from bcscan.errors import EXIT_CODES_HELP, ExitCode


@click.command("report", epilog=EXIT_CODES_HELP)
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--scan-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Where the scans are now (default: the scan folder recorded in run.json).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config whose 'reporting:' section to use (default: the one recorded in run.json).")
@click.option("--patient", "patients", multiple=True,
              help="Only this patient's report (repeatable); summary.pdf/csv are always rewritten.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def report_command(out_dir, scan_dir, config_path, patients, quiet):
    """Write OUT_DIR/reports/<patient>.pdf, summary.pdf and summary.csv from the tables of a
    finished `bcscan scan` run, without rerunning the model.  Where the run was reviewed
    (`bcscan review`), patients.csv gets the signed-off verified counts and each PDF its
    Verified section.

    Scans that cannot be found any more get a note instead of their pictures. Exit code 1
    when some patients' reports failed (named on stderr; the others were written).
    """
    from bcscan.batch.store import RunLock
    from bcscan.config import load_yaml, section
    from bcscan.results.reports import ReportingParams, write_reports
    from bcscan.review.publish import republish

    params = None
    if config_path is not None:
        with reported_errors():
            params = section(ReportingParams, load_yaml(config_path).get("reporting"), "reporting")
    if not (out_dir / "run.json").is_file():
        fail(f"{out_dir / 'run.json'}: missing (not the output folder of a finished bcscan scan run)")
    lock = RunLock(out_dir)
    try:
        locked = lock.acquire()
    except OSError as exc:
        fail(f"{out_dir}: cannot lock output folder ({exc.strerror or exc})")
    if not locked:
        fail(f"{out_dir}: a bcscan run is using this output folder (lock {lock.path})", ExitCode.LOCKED)
    try:
        with reported_errors():
            reviewed = republish(out_dir, scan_dir, params, list(patients) or None)
            if reviewed is None:
                written = write_reports(out_dir, scan_dir=scan_dir, params=params, patients=list(patients) or None)
            else:
                written = reviewed[1]
                say_reconciled(reviewed[0])
    except OSError as exc:
        fail(f"{out_dir}: cannot write reports ({exc.strerror or exc})")
    finally:
        lock.release()
    if not quiet:
        n = sum(1 for p in written if p.suffix == ".pdf" and p.parent.name == "reports")
        click.echo(f"{n} patient report(s) → {out_dir / 'reports'}; summary → {out_dir / 'summary.pdf'}", err=True)
    sys.exit(ExitCode.OK)
