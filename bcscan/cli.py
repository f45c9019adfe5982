"""The `bcscan` command line: a thin layer over the stage modules.

Heavy libraries (TensorFlow, OpenSlide) are imported inside commands so that
`bcscan --help` and argument errors answer at once.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__

# TensorFlow's C++ start-up chatter is not for a pathologist's log; real errors still raise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_CODES_HELP = """\b
Exit codes:
  0  every scan was processed
  1  the batch completed but some scans failed (see failures.csv)
  2  nothing could run (bad arguments, config or model)
  3  another bcscan run holds the lock on OUT_DIR"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bcscan")
def main():
    """Leukemia screening of peripheral blood smear scans.

    Finds every white blood cell in each scan, classifies it as leukemic (blast)
    or normal with a VGG-16 network, and counts per patient. Decision support
    only: every result is to be verified by a qualified reviewer.
    """


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("scan_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if needed).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config with the keys to change (defaults: configs/default.yaml).")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True),
              help="Microns per pixel of the scans, overriding their metadata (needed for plain images).")
@click.option("--model", type=click.Path(path_type=Path), help="Model .keras file (its .json beside it).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns scan,patient_id (scan relative to SCAN_DIR).")
@click.option("--patient-pattern", help="Regex with a (?P<patient>...) group applied to each scan's relative path.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Cells per model batch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Where the model runs.")
@click.option("--force", is_flag=True, help="Recompute every scan instead of reusing earlier results.")
@click.option("--tile-workers", type=click.IntRange(min=0),
              help="Processes reading and segmenting tiles while this one classifies [default: cores - 1]; "
                   "0 = everything in this process, one scan after the other.")
@click.option("--scheduler", metavar="ADDRESS",
              help="Send one task per scan to a running Dask cluster: tcp://HOST:8786 or a scheduler JSON file. "
                   "SCAN_DIR, --out and the model must be the same paths on a filesystem every worker shares.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Start a local Dask cluster of N worker processes (needs bcscan[distributed]).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Console and log file format; json = one object per line.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on the console (the log file keeps everything).")
def scan(scan_dir, out_dir, config_path, mpp, model, manifest, patient_pattern, batch_size, device, force,
         tile_workers, scheduler, workers, log_format, quiet):
    """Scan every smear in SCAN_DIR and write the results to --out.

    \b
    Reads whole-slide files (SVS, NDPI, MRXS, DICOM series, pyramidal TIFF, ...)
    and field images (JPEG, PNG, TIFF); writes cells.csv, scans.csv,
    patients.csv, failures.csv, geojson/ (QuPath) and run.json to --out.
    A scan that fails is recorded in failures.csv and the batch goes on;
    a rerun reuses the scans already done with the same model and config.
    """
    from .batch import EXIT_CANNOT_RUN, EXIT_LOCKED, RunLock, load_settings, run_batch
    from .config import ConfigError
    from .logs import setup_logging
    from .model import ModelError
    from .patients import PatientError

    overrides = {
        "classification": {"model": str(model) if model else None, "batch_size": batch_size, "device": device},
        "patients": {"manifest": str(manifest) if manifest else None, "filename_pattern": patient_pattern},
        "pipeline": {"workers": tile_workers},
    }
    try:
        settings = load_settings(config_path, overrides)
        out_dir.mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        _fail(f"config: {exc}", EXIT_CANNOT_RUN)
    except OSError as exc:
        _fail(f"{out_dir}: cannot create output folder ({exc.strerror or exc})", EXIT_CANNOT_RUN)

    lock = RunLock(out_dir)
    if not lock.acquire():
        _fail(f"{out_dir}: another bcscan run is using this output folder (lock {lock.path})", EXIT_LOCKED)
    try:
        setup_logging(log_format, quiet, out_dir / "bcscan.log")
        from .reading import find_scans

        n_scans = len(find_scans(scan_dir))
        show_bar = sys.stderr.isatty() and not quiet
        import contextlib
        import logging

        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # with a bar, log lines are printed above it instead of through it
        redirect = logging_redirect_tqdm(loggers=[logging.getLogger("bcscan")]) if show_bar else contextlib.nullcontext()
        with tqdm(total=n_scans, unit="scan", disable=not show_bar, file=sys.stderr) as bar, redirect:
            if scheduler or workers:
                from .distributed import run_batch_dask

                result = run_batch_dask(scan_dir, out_dir, settings, mpp=mpp, force=force, scheduler=scheduler,
                                        workers=workers, progress=bar.update, argv=sys.argv)
            else:
                result = run_batch(scan_dir, out_dir, settings, mpp=mpp, force=force, progress=bar.update,
                                   argv=sys.argv)
    except (ConfigError, ModelError, PatientError) as exc:
        _fail(str(exc), EXIT_CANNOT_RUN)
    finally:
        lock.release()
    summary = (f"{result.n_scans} scans, {result.n_failed} failed, {result.n_cells} cells → "
               f"{out_dir / 'patients.csv'}")
    if not quiet:
        click.echo(summary, err=True)
    sys.exit(result.exit_code)


def _fail(message: str, code: int):
    click.echo(f"bcscan: error: {message}", err=True)
    sys.exit(code)


from .cli_report import report_command  # noqa: E402  (commands register after the group exists)
from .cli_train import evaluate_command, train_command  # noqa: E402

main.add_command(report_command)
main.add_command(train_command)
main.add_command(evaluate_command)

if __name__ == "__main__":
    main()
