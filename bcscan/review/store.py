"""OUT_DIR/review.sqlite: every decision a reviewer makes on a cell, and every sign-off.

Nothing is overwritten: a decision is a new row that names the label it replaces, a sign-off that a
later decision invalidates is marked reopened (the row stays), and a decision whose cell a re-run of
`bcscan scan` no longer finds is set aside in `dropped`, not deleted.  SQLite in WAL mode with a busy
timeout, each change one IMMEDIATE transaction, so two browsers (or a browser and an import) on the
same folder lose no decision.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bcscan.errors import ReviewError
from bcscan.results.tables import atomic_write_text
from bcscan.results.verification import (
    CONCLUSIONS,
    REVIEW_LABELS,
    UNSURE,
    Reclassification,
    Verification,
    VerifiedCounts,
    changes_the_call,
    verified_counts,
)

DATABASE = "review.sqlite"
BUSY_TIMEOUT_S = 30.0
MOVED_FRACTION = 0.25  # a re-run's cell is the same cell when its centre moved less than this share of its width
IMPORT_COLUMNS = ("scan", "cell_id", "label", "reviewer")  # plus an optional `time`
EXPORT_COLUMNS = ["scan", "patient_id", "cell_id", "x", "y", "model_label", "p_leukemic", "label", "reviewer", "time",
                  "signed_off_by", "signed_off_at"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scan TEXT NOT NULL, cell_id INTEGER NOT NULL, patient_id TEXT NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL,           -- the cell's centre when decided: a re-run must find it there
    model_label TEXT NOT NULL,                  -- the model's call
    label TEXT NOT NULL, previous_label TEXT,   -- NULL: the cell had no decision before (the model's call stood)
    reviewer TEXT NOT NULL, decided_at TEXT NOT NULL, source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_cell ON decisions (scan, cell_id);
CREATE TABLE IF NOT EXISTS dropped (
    decision_id INTEGER PRIMARY KEY REFERENCES decisions (id), dropped_at TEXT NOT NULL, run_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL, reviewer TEXT NOT NULL, signed_at TEXT NOT NULL,
    n_cells INTEGER NOT NULL, n_blasts INTEGER NOT NULL, ci_low REAL NOT NULL, ci_high REAL NOT NULL,
    conclusion TEXT NOT NULL, comment TEXT NOT NULL,
    cells_digest TEXT NOT NULL,                 -- the patient's cells when signed: a re-run that changes them reopens
    reopened_at TEXT, reopened_by TEXT, reopen_reason TEXT);
CREATE INDEX IF NOT EXISTS signoffs_patient ON signoffs (patient_id);
"""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Decision:
    scan: str
    cell_id: int
    label: str
    previous_label: str | None
    reviewer: str
    decided_at: str
    reopened: bool  # the decision reopened the patient's sign-off


@dataclass(frozen=True)
class Reconciliation:
    kept: int      # cells whose decisions still apply
    dropped: int   # cells whose decisions were set aside: the cell is gone or moved
    reopened: int  # sign-offs reopened because the patient's cells changed


class ReviewStore:
    """The decisions on one run's cells.  `cells` is that run's cells.csv (scan, patient_id, cell_id,
    x, y, x0, x1, label, p_leukemic); `run_id` names the run in what reconciliation records."""

    def __init__(self, out_dir: Path, cells: pd.DataFrame, run_id: str):
        self.path = Path(out_dir) / DATABASE
        self.use_run(cells, run_id)
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        """Connect and create the tables.  Switching a new file to WAL takes a lock that SQLite's busy
        timeout does not wait for, so two browsers opening a new folder at once retry here instead."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            db = None
            try:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
                db.executescript(SCHEMA)
                return db
            except sqlite3.OperationalError as exc:
                if db is not None:
                    db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise ReviewError(f"{self.path}: cannot open the review database ({exc})") from exc
                time.sleep(0.05)
            except sqlite3.Error as exc:
                if db is not None:
                    db.close()
                raise ReviewError(f"{self.path}: cannot open the review database ({exc})") from exc

    def use_run(self, cells: pd.DataFrame, run_id: str) -> None:
        """Decide on the cells of this run from now on (reconcile() then sets aside what it lost)."""
        self.run_id = run_id
        cells = cells.assign(cell_id=cells["cell_id"].astype(int))
        self.cells = cells.set_axis(pd.MultiIndex.from_arrays([cells["scan"], cells["cell_id"]], names=[None, None]))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _transaction(self):
        """BEGIN IMMEDIATE: the write lock is taken before reading, so a concurrent writer waits
        (busy timeout) instead of both reading the same 'previous label'."""
        return _Immediate(self.db)

    # --------------------------------------------------------------------------------------- decisions

    def decide(self, scan: str, cell_id: int, label: str, reviewer: str, at: str | None = None,
               source: str = "browser") -> Decision:
        """Record one decision at once; reopens the patient's sign-off if there is one."""
        reviewer = _reviewer(reviewer)
        if label not in REVIEW_LABELS:
            raise ReviewError(f"unknown label {label!r} (one of: {', '.join(REVIEW_LABELS)})")
        cell = self.cell(scan, cell_id)
        at = at or now()
        with self._transaction():
            return self._insert(cell, label, reviewer, at, source)

    def _insert(self, cell: pd.Series, label: str, reviewer: str, at: str, source: str) -> Decision:
        scan, cell_id, pid = str(cell["scan"]), int(cell["cell_id"]), str(cell["patient_id"])
        current = self._current(scan, cell_id)
        previous = current["label"] if current else None
        self.db.execute(
            "INSERT INTO decisions (scan, cell_id, patient_id, x, y, model_label, label, previous_label, reviewer,"
            " decided_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (scan, cell_id, pid, float(cell["x"]), float(cell["y"]), str(cell["label"]), label, previous, reviewer,
             at, source))
        reopened = previous != label and self._reopen(
            pid, reviewer, at, f"cell {cell_id} of {scan} changed from {previous or 'the model call'} to {label}")
        return Decision(scan, cell_id, label, previous, reviewer, at, reopened)

    def _current(self, scan: str, cell_id: int) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM decisions WHERE scan = ? AND cell_id = ? AND id NOT IN (SELECT decision_id FROM dropped)"
            " ORDER BY id DESC LIMIT 1", (scan, int(cell_id))).fetchone()

    def cell(self, scan: str, cell_id: int) -> pd.Series:
        try:
            return self.cells.loc[(scan, int(cell_id))]
        except (KeyError, TypeError, ValueError):
            raise ReviewError(f"no cell {cell_id} in scan {scan!r} of this run") from None

    def current_labels(self) -> pd.DataFrame:
        """The standing decision of every decided cell: scan, cell_id, label, previous_label, reviewer, decided_at."""
        return pd.read_sql_query(
            "SELECT d.scan, d.cell_id, d.patient_id, d.model_label, d.label, d.previous_label, d.reviewer, d.decided_at"
            " FROM decisions d JOIN (SELECT MAX(id) AS id FROM decisions"
            " WHERE id NOT IN (SELECT decision_id FROM dropped) GROUP BY scan, cell_id) last ON d.id = last.id"
            " ORDER BY d.id", self.db)

    def history(self, scan: str, cell_id: int) -> list[dict]:
        """Every decision ever made on the cell, oldest first, set-aside ones too."""
        rows = self.db.execute(
            "SELECT d.*, dr.dropped_at FROM decisions d LEFT JOIN dropped dr ON dr.decision_id = d.id"
            " WHERE d.scan = ? AND d.cell_id = ? ORDER BY d.id", (scan, int(cell_id))).fetchall()
        return [dict(r) for r in rows]

    def labelled_cells(self) -> pd.DataFrame:
        """cells.csv with the standing review label (`review_label`, None where undecided)."""
        current = self.current_labels().set_index(["scan", "cell_id"])
        labels = current["label"].reindex(self.cells.index)
        return self.cells.assign(review_label=labels.where(labels.notna(), None).to_numpy())

    # --------------------------------------------------------------------------------------- sign-offs

    def sign_off(self, patient_id: str, reviewer: str, conclusion: str, comment: str = "") -> Verification:
        """Sign off a patient's verified counts; refused while a cell of theirs is marked unsure."""
        reviewer = _reviewer(reviewer)
        if conclusion not in CONCLUSIONS:
            raise ReviewError(f"unknown conclusion {conclusion!r} (one of: {', '.join(CONCLUSIONS)})")
        at = now()
        with self._transaction():
            cells = self._patient_cells(patient_id)
            if not len(cells):
                raise ReviewError(f"patient {patient_id!r} has no cells in this run: nothing to sign off")
            unsure = int((cells["review_label"] == UNSURE).sum())
            if unsure:
                raise ReviewError(f"{unsure} cell(s) of patient {patient_id!r} are marked unsure: "
                                  "decide them before signing off")
            counts = verified_counts(cells["label"], cells["review_label"])
            self._reopen(patient_id, reviewer, at, "signed off again")
            self.db.execute(
                "INSERT INTO signoffs (patient_id, reviewer, signed_at, n_cells, n_blasts, ci_low, ci_high, conclusion,"
                " comment, cells_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (patient_id, reviewer, at, counts.n_cells, counts.n_blasts, counts.ci_low, counts.ci_high, conclusion,
                 comment.strip(), _digest(cells)))
        return self.verification(patient_id)

    def _patient_cells(self, patient_id: str) -> pd.DataFrame:
        cells = self.labelled_cells()
        return cells[cells["patient_id"] == patient_id]

    def _reopen(self, patient_id: str, by: str, at: str, reason: str) -> bool:
        changed = self.db.execute(
            "UPDATE signoffs SET reopened_at = ?, reopened_by = ?, reopen_reason = ?"
            " WHERE patient_id = ? AND reopened_at IS NULL", (at, by, reason, patient_id)).rowcount
        return changed > 0

    def signoff(self, patient_id: str) -> sqlite3.Row | None:
        """The patient's standing sign-off, None when unsigned or reopened."""
        return self.db.execute("SELECT * FROM signoffs WHERE patient_id = ? AND reopened_at IS NULL",
                               (patient_id,)).fetchone()

    def signoff_history(self, patient_id: str) -> list[dict]:
        rows = self.db.execute("SELECT * FROM signoffs WHERE patient_id = ? ORDER BY id", (patient_id,)).fetchall()
        return [dict(r) for r in rows]

    def verification(self, patient_id: str) -> Verification | None:
        """The standing sign-off as the report prints it, with the cells reclassified from the model's call."""
        row = self.signoff(patient_id)
        if row is None:
            return None
        current = self.current_labels()
        mine = current[current["patient_id"] == patient_id]
        changed = mine[[changes_the_call(m, lab) for m, lab in zip(mine["model_label"], mine["label"])]]
        reclassified = tuple(Reclassification(str(r.scan), int(r.cell_id), str(r.model_label), str(r.label),
                                              str(r.reviewer), str(r.decided_at)) for r in changed.itertuples())
        counts = VerifiedCounts(int(row["n_cells"]), int(row["n_blasts"]), float(row["ci_low"]), float(row["ci_high"]))
        return Verification(patient_id, row["reviewer"], row["signed_at"], counts, row["conclusion"], row["comment"],
                            reclassified)

    def verifications(self) -> dict[str, Verification]:
        pids = [r[0] for r in self.db.execute("SELECT DISTINCT patient_id FROM signoffs WHERE reopened_at IS NULL")]
        return {pid: self.verification(pid) for pid in pids}

    # ---------------------------------------------------------------------------------- re-run of the scan

    def reconcile(self) -> Reconciliation:
        """Set aside the decisions whose cell this run no longer has at the same place, and reopen the
        sign-offs whose patient's cells changed.  Idempotent: run it whenever the store is opened."""
        at = now()
        with self._transaction():
            current = self.current_labels()
            dropped_cells = 0
            for row in current.itertuples():
                decision = self._current(row.scan, row.cell_id)
                if self._still_there(decision):
                    continue
                dropped_cells += 1
                self.db.execute(
                    "INSERT INTO dropped (decision_id, dropped_at, run_id) SELECT id, ?, ? FROM decisions"
                    " WHERE scan = ? AND cell_id = ? AND id NOT IN (SELECT decision_id FROM dropped)",
                    (at, self.run_id, row.scan, int(row.cell_id)))
            reopened = 0
            for sign in self.db.execute("SELECT * FROM signoffs WHERE reopened_at IS NULL").fetchall():
                if _digest(self._patient_cells(sign["patient_id"])) != sign["cells_digest"]:
                    reopened += self._reopen(sign["patient_id"], "bcscan", at,
                                             f"run {self.run_id} changed the patient's cells or decisions")
        return Reconciliation(len(current) - dropped_cells, dropped_cells, reopened)

    def _still_there(self, decision: sqlite3.Row) -> bool:
        key = (decision["scan"], int(decision["cell_id"]))
        if key not in self.cells.index:
            return False
        cell = self.cells.loc[key]
        width = max(float(cell["x1"]) - float(cell["x0"]), 1.0)
        moved = ((float(cell["x"]) - decision["x"]) ** 2 + (float(cell["y"]) - decision["y"]) ** 2) ** 0.5
        return moved <= MOVED_FRACTION * width

    # -------------------------------------------------------------------------------------- import, export

    def import_decisions(self, path: Path) -> int:
        """decisions.csv (scan, cell_id, label, reviewer, optional time), all rows or none: a bad row
        is named by its line and nothing is recorded."""
        rows = _read_decisions(Path(path))
        checked = []
        for line, row in rows:
            where = f"{path}:{line}"
            if row["label"] not in REVIEW_LABELS:
                raise ReviewError(f"{where}: unknown label {row['label']!r} (one of: {', '.join(REVIEW_LABELS)})")
            try:
                cell = self.cell(row["scan"], int(row["cell_id"]))
                reviewer = _reviewer(row["reviewer"])
            except (ReviewError, ValueError) as exc:
                raise ReviewError(f"{where}: {exc}") from None
            checked.append((cell, row["label"], reviewer, _time(row.get("time"), where)))
        source, imported_at = f"import:{Path(path).name}", now()
        with self._transaction():
            for cell, label, reviewer, at in checked:
                self._insert(cell, label, reviewer, at or imported_at, source)
        return len(checked)

    def export_verified(self, path: Path) -> int:
        """verified.csv: every cell with the model's call and its standing review label, reviewer and
        time (empty where undecided) and the patient's sign-off; importable as decisions.csv."""
        cells = self.labelled_cells()
        current = self.current_labels().set_index(["scan", "cell_id"]).reindex(cells.index)
        signed = {pid: self.signoff(pid) for pid in cells["patient_id"].unique()}
        table = pd.DataFrame({
            "scan": cells["scan"].to_numpy(), "patient_id": cells["patient_id"].to_numpy(),
            "cell_id": cells["cell_id"].to_numpy(), "x": cells["x"].to_numpy(), "y": cells["y"].to_numpy(),
            "model_label": cells["label"].to_numpy(), "p_leukemic": cells["p_leukemic"].to_numpy(),
            "label": current["label"].to_numpy(), "reviewer": current["reviewer"].to_numpy(),
            "time": current["decided_at"].to_numpy(),
            "signed_off_by": [signed[p]["reviewer"] if signed[p] else "" for p in cells["patient_id"]],
            "signed_off_at": [signed[p]["signed_at"] if signed[p] else "" for p in cells["patient_id"]],
        })
        buffer = io.StringIO()
        table.to_csv(buffer, index=False, columns=EXPORT_COLUMNS, lineterminator="\n")
        atomic_write_text(Path(path), buffer.getvalue())
        return int(table["label"].notna().sum())


class _Immediate:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _reviewer(name) -> str:
    name = " ".join(str(name or "").split())
    if not name:
        raise ReviewError("a reviewer name is required to decide or sign off")
    return name


def _digest(cells: pd.DataFrame) -> str:
    """The patient's cells and their standing labels, as a sign-off saw them."""
    key = cells[["scan", "cell_id", "x", "y", "label", "review_label"]].astype(str).sort_values(["scan", "cell_id"])
    return hashlib.sha256(key.to_csv(index=False).encode("utf-8")).hexdigest()


def _time(text, where: str) -> str | None:
    """An import's time as ISO 8601 UTC; None (now) when the column is empty."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ReviewError(f"{where}: time {text!r} is not ISO 8601 (e.g. 2026-12-06T14:30:00+00:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def _read_decisions(path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in IMPORT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ReviewError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(needs {', '.join(IMPORT_COLUMNS)}, optional time)")
            return [(line, {k: (v or "").strip() for k, v in row.items() if k}) for line, row in
                    enumerate(reader, start=2) if (row.get("label") or "").strip()]
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ReviewError(f"{path}: not a readable CSV ({exc})") from exc
