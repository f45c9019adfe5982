"""`bcscan review OUT_DIR`: the pathologist's review of a finished scan run, in a browser or from files."""
from __future__ import annotations

import logging
import signal
import socket
import sys
from pathlib import Path

import click

from bcscan.cli.common import fail, reported_errors, say_reconciled
from bcscan.errors import EXIT_CODES_HELP, ExitCode

LOCAL = "127.0.0.1"


@click.command("review", epilog=EXIT_CODES_HELP)
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default=LOCAL, show_default=True,
              help="Address to listen on. Another than 127.0.0.1 (e.g. 0.0.0.0 for a ward network) still needs "
                   "the access token of the printed URL.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port to listen on [default: a free one].")
@click.option("--reviewer", default="", help="Reviewer name filled in on the pages (each decision still needs one).")
@click.option("--scan-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Where the scans are now (default: the scan folder recorded in run.json).")
@click.option("--import", "import_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Record the decisions of a CSV (scan,cell_id,label,reviewer[,time]) and exit; all rows or none.")
@click.option("--export", "export_csv", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every cell with its verified label and sign-off to this CSV and exit (after --import).")
@click.option("--export-training", "training_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the cells reviewers labelled as white cells to this new folder, one subfolder per label, "
                   "with the recipe lines (sources.yaml) for `bcscan train`, and exit (after --import).")
def review_command(out_dir, host, port, reviewer, scan_dir, import_csv, export_csv, training_dir):
    """Verify the model's cell calls of a finished `bcscan scan` run in OUT_DIR.

    \b
    Without --import/--export*: serves a local web page. The first line of
    output is its URL with a random access token; open it in a browser.
    Worklist of patients (flagged first); per patient a gallery of cells by
    the model's call, most suspicious first. Keys 1-9 (or b l n m e a o x u)
    label the selected cell: blast, lymphocyte, neutrophil, monocyte,
    eosinophil, basophil, other white cell, not a white cell, unsure; arrows
    move; c shows the context. Each decision is stored at once in
    OUT_DIR/review.sqlite, with its history. Signing a patient off writes
    the verified counts into patients.csv and the patient's PDF.

    \b
    For scripts and lab systems: --import records decisions from a CSV,
    --export writes every cell with its verified label, --export-training
    writes the verified white cells as folders `bcscan train` reads.
    """
    from bcscan.review.app import Review, create_app, new_token, run_stamp
    from bcscan.review.publish import open_review, publish_locked
    from bcscan.review.training_export import export_training

    seen = run_stamp(out_dir)
    with reported_errors():
        data, store, reconciliation = open_review(out_dir, scan_dir)
    say_reconciled(reconciliation)
    if import_csv or export_csv or training_dir:
        with reported_errors():
            if import_csv:
                signed = len(store.verifications())
                n = store.import_decisions(import_csv)
                click.echo(f"{n} decision(s) imported from {import_csv}", err=True)
                if len(store.verifications()) != signed:  # an import that reopened a sign-off: the reports say so
                    publish_locked(out_dir, store)
            if export_csv:
                n = store.export_verified(export_csv)
                click.echo(f"{len(data.cells)} cells ({n} decided) → {export_csv}", err=True)
            if training_dir:
                counts = export_training(data, store, training_dir)
                click.echo(f"{sum(counts.values())} verified white cells ("
                           + ", ".join(f"{n} {label}" for label, n in counts.items())
                           + f") → {training_dir}; recipe lines in {training_dir / 'sources.yaml'}", err=True)
        store.close()
        sys.exit(ExitCode.OK)

    review = Review(out_dir, data, store, new_token(), reviewer.strip(), scan_dir, seen)
    try:
        server = _server(host, port, create_app(review))
    except OSError as exc:
        store.close()
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})")
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    click.echo(f"http://{shown}:{server.port}/?token={review.token}")
    sys.stdout.flush()
    if host != LOCAL:
        click.echo(f"bcscan: listening on {host}, reachable from the network: the access token in the URL is still "
                   "required; give it only to reviewers", err=True)
    click.echo(f"bcscan: reviewing {len(data.patients)} patient(s), {len(data.cells)} cells of run {data.run_id}; "
               "Ctrl-C stops", err=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        review.close()
    sys.exit(ExitCode.OK)


def _server(host: str, port: int, app):
    """werkzeug's threaded WSGI server, quiet about each request, on a socket bound here: a port in
    use is an OSError to tell in one line (werkzeug would print its own lines and exit 1)."""
    from werkzeug.serving import get_sockaddr, make_server, select_address_family

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    family = select_address_family(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as listening:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(get_sockaddr(host, port, family))
        listening.listen(64)
        return make_server(host, port, app, threaded=True, fd=listening.fileno())  # serves a duplicate of it


def _interrupt(signum, frame):
    raise KeyboardInterrupt
