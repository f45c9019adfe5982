"""`bcscan scan SCAN_DIR --out OUT_DIR`: the nightly batch."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import click

from bcscan.cli.common import fail, renamed_option, reported_errors, say_reconciled
from bcscan.errors import EXIT_CODES_HELP, ExitCode


@click.command("scan", epilog=EXIT_CODES_HELP)
@click.argument("scan_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if needed).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config with the keys to change (defaults: configs/default.yaml, shipped with bcscan).")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True),
              help="Microns per pixel of the scans, overriding their metadata (needed for plain images).")
@click.option("--model", type=click.Path(path_type=Path),
              help="Model .keras file (its .json beside it) [default: the model shipped with bcscan].")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns scan,patient_id (scan relative to SCAN_DIR).")
@click.option("--patient-pattern", help="Regex with a (?P<patient>...) group applied to each scan's relative path.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Cells per model batch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Where the model runs.")
@click.option("--force", is_flag=True, help="Recompute every scan instead of reusing earlier results.")
@click.option("--tile-workers", type=click.IntRange(min=0),
              help="Local processes reading and segmenting tiles while this one classifies [default: cores - 1]; "
                   "0 = everything in this process, one scan after the other.")
@click.option("--dask-scheduler", metavar="ADDRESS",
              help="Send one task per scan to a running Dask cluster: tcp://HOST:8786 or a scheduler JSON file. "
                   "SCAN_DIR, --out and the model must be the same paths on a filesystem every worker shares.")
@click.option("--dask-workers", type=click.IntRange(min=1),
              help="Start a local Dask cluster of N worker processes, one task per scan (needs bcscan[distributed]).")
@click.option("--scheduler", "old_scheduler", hidden=True, help="Old name of --dask-scheduler.")
@click.option("--workers", "old_workers", type=click.IntRange(min=1), hidden=True, help="Old name of --dask-workers.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Console and log file format; json = one object per line.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on the console (the log file keeps everything).")
@click.option("--single-cell-images", is_flag=True, default=None,
              help="Field images are single-cell exports of a cell analyser (CellaVision and the like), each centred "
                   "on one white cell: count only that cell (reading.single_cell_images). Whole slides are unaffected.")
@click.option("--allow-empty", is_flag=True,
              help="A SCAN_DIR without any scan is a run of 0 scans (exit 0), not an error (exit 2).")
def scan_command(scan_dir, out_dir, config_path, mpp, model, manifest, patient_pattern, batch_size, device, force,
                 tile_workers, dask_scheduler, dask_workers, old_scheduler, old_workers, log_format, quiet,
                 single_cell_images, allow_empty):
    """Scan every smear in SCAN_DIR and write the results to --out.

    \b
    Reads whole-slide files (SVS, NDPI, MRXS, DICOM series, pyramidal TIFF, ...)
    and field images (JPEG, PNG, TIFF); writes cells.csv, scans.csv,
    patients.csv, failures.csv, geojson/ (QuPath), reports/ (PDF) and
    run.json to --out. A scan that fails is recorded in failures.csv and the
    batch goes on; a rerun reuses the scans already done with the same model
    and config.
    """
    from bcscan.batch.executors import executor_for
    from bcscan.batch.outline import run_batch
    from bcscan.batch.plan import BatchRun
    from bcscan.batch.settings import load_settings
    from bcscan.batch.store import RunLock
    from bcscan.logs import setup_logging
    from bcscan.review.publish import republish
    from bcscan.scan.reading import find_scans

    dask_scheduler = renamed_option("--scheduler", "--dask-scheduler", old_scheduler, dask_scheduler)
    dask_workers = renamed_option("--workers", "--dask-workers", old_workers, dask_workers)
    overrides = {
        "classification": {"model": str(model) if model else None, "batch_size": batch_size, "device": device},
        "patients": {"manifest": str(manifest) if manifest else None, "filename_pattern": patient_pattern},
        "pipeline": {"workers": tile_workers},
        "reading": {"single_cell_images": single_cell_images},
    }
    n_found = len(find_scans(scan_dir))
    if not n_found and not allow_empty:  # a nightly job pointed at the wrong folder must not report success
        fail(f"{scan_dir}: no scans found (slides, DICOM series or field images); "
             "--allow-empty runs on an empty folder")
    with reported_errors():
        settings = load_settings(config_path, overrides)
        executor = executor_for(settings, dask_scheduler, dask_workers)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{out_dir}: cannot create output folder ({exc.strerror or exc})")
    lock = RunLock(out_dir)
    if not lock.acquire():
        fail(f"{out_dir}: another bcscan run is using this output folder (lock {lock.path})", ExitCode.LOCKED)
    try:
        setup_logging(log_format, quiet, out_dir / "bcscan.log")
        show_bar = sys.stderr.isatty() and not quiet
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # with a bar, log lines are printed above it instead of through it
        redirect = logging_redirect_tqdm(loggers=[logging.getLogger("bcscan")]) if show_bar else contextlib.nullcontext()
        with tqdm(total=n_found, unit="scan", disable=not show_bar, file=sys.stderr) as bar, \
                redirect, reported_errors():
            run = BatchRun(scan_dir, out_dir, settings, mpp=mpp, force=force, argv=sys.argv, progress=bar.update)
            try:
                result = run_batch(run, executor)
            except OSError as exc:  # a full or lost output disk: what was stored stays, a rerun continues
                fail(f"{exc.filename or out_dir}: cannot write the results ({exc.strerror or exc}); the scans "
                     "stored before are kept and a rerun continues from them")
            reviewed = republish(out_dir, run.scan_dir, settings.reporting, signed_only=True)
        if reviewed is not None:
            say_reconciled(reviewed[0])
    finally:
        lock.release()
    if not quiet:
        click.echo(f"{result.n_scans} scans, {result.n_failed} failed, {result.n_cells} cells → "
                   f"{out_dir / 'patients.csv'}", err=True)
    sys.exit(result.exit_code)

