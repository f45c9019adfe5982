"""`bcscan report OUT_DIR`: the PDF reports again from the tables of a finished scan run.

No model and no TensorFlow: the numbers come from patients.csv / cells.csv, the
pictures from the scans (found through run.json's scan folder or --scan-dir).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_CANNOT_RUN = 2
EXIT_LOCKED = 3

REPORT_EXIT_CODES_HELP = """\b
Exit codes:
  0  every report was written
  1  some patients' reports failed (named on stderr); the others were written
  2  nothing could run (no finished scan run in OUT_DIR, bad config or patient)
  3  a bcscan run holds the lock on OUT_DIR"""


def _fail(message: str, code: int):
    click.echo(f"bcscan: error: {message}", err=True)
    sys.exit(code)


@click.command("report", epilog=REPORT_EXIT_CODES_HELP)
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
    finished `bcscan scan` run, without rerunning the model.

    Scans that cannot be found any more get a note instead of their pictures.
    """
    from .batch import RunLock
    from .config import ConfigError, load_yaml, section
    from .reporting import ReportError, ReportingParams, ReportsIncomplete, write_reports

    params = None
    if config_path is not None:
        try:
            params = section(ReportingParams, load_yaml(config_path).get("reporting"), "reporting")
        except ConfigError as exc:
            _fail(f"config: {exc}", EXIT_CANNOT_RUN)
    if not (out_dir / "run.json").is_file():
        _fail(f"{out_dir / 'run.json'}: missing (not the output folder of a finished bcscan scan run)",
              EXIT_CANNOT_RUN)
    lock = RunLock(out_dir)
    try:
        locked = lock.acquire()
    except OSError as exc:
        _fail(f"{out_dir}: cannot lock output folder ({exc.strerror or exc})", EXIT_CANNOT_RUN)
    if not locked:
        _fail(f"{out_dir}: a bcscan run is using this output folder (lock {lock.path})", EXIT_LOCKED)
    try:
        written = write_reports(out_dir, scan_dir=scan_dir, params=params, patients=list(patients) or None)
    except ReportsIncomplete as exc:
        _fail(str(exc), EXIT_SOME_FAILED)
    except ReportError as exc:
        _fail(str(exc), EXIT_CANNOT_RUN)
    except OSError as exc:
        _fail(f"{out_dir}: cannot write reports ({exc.strerror or exc})", EXIT_CANNOT_RUN)
    finally:
        lock.release()
    if not quiet:
        n = sum(1 for p in written if p.suffix == ".pdf" and p.parent.name == "reports")
        click.echo(f"{n} patient report(s) → {out_dir / 'reports'}; summary → {out_dir / 'summary.pdf'}", err=True)
    sys.exit(EXIT_OK)
