"""The review of an output folder, opened against its run, and its sign-offs put where a result is
read: the verified columns of patients.csv and the "Verified" section of the PDFs."""
from __future__ import annotations

from pathlib import Path

from bcscan.batch.store import RunLock
from bcscan.errors import LockedError, ReviewError
from bcscan.results.reports import RunData, load_run, write_reports
from bcscan.results.reports.params import ReportingParams
from bcscan.results.tables import atomic_write_csv
from bcscan.results.verification import with_verified_columns
from bcscan.review.store import DATABASE, Reconciliation, ReviewStore


def open_review(out_dir: Path, scan_dir: Path | None = None) -> tuple[RunData, ReviewStore, Reconciliation]:
    """The run's tables, its review store, and what reconciling the store with this run did."""
    data = load_run(Path(out_dir), scan_dir)
    store = ReviewStore(out_dir, data.cells, data.run_id)
    return data, store, store.reconcile()


def has_review(out_dir: Path) -> bool:
    return (Path(out_dir) / DATABASE).is_file()


def publish(out_dir: Path, store: ReviewStore, patients: list[str] | None = None, scan_dir: Path | None = None,
            params: ReportingParams | None = None) -> list[Path]:
    """patients.csv with every patient's verified columns, and the reports of `patients` (every
    patient when None) rewritten with their Verified section.  The caller holds the folder's RunLock."""
    out_dir = Path(out_dir)
    verifications = store.verifications()
    table = with_verified_columns(load_run(out_dir, scan_dir).patients, verifications)
    atomic_write_csv(out_dir / "patients.csv", table, list(table.columns))
    return write_reports(out_dir, scan_dir, params, patients, verifications)


def republish(out_dir: Path, scan_dir: Path | None = None, params: ReportingParams | None = None,
              patients: list[str] | None = None, signed_only: bool = False
              ) -> tuple[Reconciliation, list[Path]] | None:
    """For `bcscan report`, or after `bcscan scan`, in a reviewed folder: reconcile the decisions with
    the run now in it and publish the sign-offs that still stand, rewriting the reports of `patients`
    (every patient when None; with `signed_only`, the signed-off ones, whose reports a scan has just
    written as not verified).  None where nobody has reviewed the folder.  The caller holds the lock."""
    if not has_review(out_dir):
        return None
    _, store, reconciliation = open_review(out_dir, scan_dir)
    with store:
        if signed_only:
            patients = list(store.verifications())
        return reconciliation, publish(out_dir, store, patients, scan_dir, params)


def publish_locked(out_dir: Path, store: ReviewStore, patients: list[str] | None = None) -> list[Path]:
    """publish() under the folder's lock: refused (LockedError) while a scan or report run holds it."""
    lock = RunLock(Path(out_dir))
    try:
        locked = lock.acquire()
    except OSError as exc:
        raise ReviewError(f"{out_dir}: cannot lock the output folder ({exc.strerror or exc})") from exc
    if not locked:
        raise LockedError(f"{out_dir}: a bcscan run is using this output folder; the reports were not updated "
                          "(run `bcscan report` when it has finished)")
    try:
        return publish(out_dir, store, patients)
    finally:
        lock.release()
