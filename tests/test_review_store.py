"""review.sqlite: decisions with their history, sign-offs that later decisions reopen, two writers
losing nothing, import/export round trip, and reconciliation with a re-run of the scan."""
from __future__ import annotations

import shutil
import sqlite3
import threading

import pandas as pd
import pytest

from bcscan.errors import ReviewError
from bcscan.results.reports import load_run
from bcscan.results.tables import CELL_COLUMNS, atomic_write_csv
from bcscan.review.publish import open_review
from bcscan.review.store import DATABASE, ReviewStore
from bcscan.testing.runs import make_out_dir

PATIENTS = {"P1": [{"name": "a.png", "kind": "field", "n": 20, "leukemic": 0.25}],
            "P2": [{"name": "b.png", "kind": "field", "n": 12, "leukemic": 0.0}]}


@pytest.fixture
def out(tmp_path):
    return make_out_dir(tmp_path, PATIENTS)


def store_of(out) -> ReviewStore:
    data = load_run(out)
    return ReviewStore(out, data.cells, data.run_id)


def cells_of(out, patient: str) -> pd.DataFrame:
    cells = load_run(out).cells
    return cells[cells.patient_id == patient].sort_values("p_leukemic", ascending=False)


def test_a_decision_is_a_new_row_naming_the_label_it_replaces(out):
    cell = cells_of(out, "P1").iloc[0]
    with store_of(out) as store:
        first = store.decide(cell.scan, cell.cell_id, "lymphocyte", "Dr A")
        second = store.decide(cell.scan, cell.cell_id, "blast", "Dr B")
        history = store.history(cell.scan, cell.cell_id)
        current = store.current_labels()
    assert (first.previous_label, second.previous_label) == (None, "lymphocyte")
    assert [(h["label"], h["previous_label"], h["reviewer"]) for h in history] == [
        ("lymphocyte", None, "Dr A"), ("blast", "lymphocyte", "Dr B")]
    assert all(h["model_label"] == "leukemic" and h["x"] == cell.x for h in history)
    assert current[["cell_id", "label", "reviewer"]].values.tolist() == [[cell.cell_id, "blast", "Dr B"]]
    con = sqlite3.connect(out / DATABASE)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_decision_needs_a_reviewer_a_known_label_and_a_cell_of_the_run(out):
    cell = cells_of(out, "P1").iloc[0]
    with store_of(out) as store:
        for args, message in [(("  ", "blast"), "reviewer name is required"), (("Dr A", "blastoid"), "unknown label")]:
            with pytest.raises(ReviewError, match=message):
                store.decide(cell.scan, cell.cell_id, args[1], args[0])
        with pytest.raises(ReviewError, match="no cell 999"):
            store.decide(cell.scan, 999, "blast", "Dr A")
        assert store.current_labels().empty


def test_two_connections_writing_at_once_lose_no_decision(out):
    """Two stores (two browsers' servers) on one file, each deciding every cell of P1 in turn."""
    cells = cells_of(out, "P1")
    labels = {0: ["lymphocyte", "blast"], 1: ["neutrophil", "monocyte"]}
    errors = []

    def reviewer(k: int) -> None:
        try:
            with store_of(out) as store:
                for round_ in range(5):
                    for cell in cells.itertuples():
                        store.decide(cell.scan, cell.cell_id, labels[k][round_ % 2], f"Dr {k}")
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = pd.read_sql_query("SELECT * FROM decisions ORDER BY id", sqlite3.connect(out / DATABASE))
    assert len(rows) == 2 * 5 * len(cells) == 200
    for _, chain in rows.groupby(["scan", "cell_id"]):  # each decision names the one before it, none lost
        assert chain["previous_label"].iloc[1:].tolist() == chain["label"].iloc[:-1].tolist()
        assert pd.isna(chain["previous_label"].iloc[0])


def test_browsers_opening_a_new_folder_at_once_all_get_the_store(out):
    """Switching a new file to WAL is not covered by SQLite's busy timeout: before the store retried
    it, about one round in fourteen of three simultaneous opens failed with 'database is locked'."""
    data = load_run(out)
    for round_ in range(100):
        fresh = out / f"browser-{round_}"
        fresh.mkdir()
        errors = []

        def open_store() -> None:
            try:
                ReviewStore(fresh, data.cells, data.run_id).close()
            except ReviewError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"round {round_}: {errors[0]}"


def test_sign_off_counts_blasts_among_white_cells_and_a_later_change_reopens_it(out):
    cells = cells_of(out, "P1")  # 20 cells, 5 called leukemic
    assert (cells.label == "leukemic").sum() == 5
    leukemic, normal = cells[cells.label == "leukemic"], cells[cells.label == "normal"]
    with store_of(out) as store:
        store.decide(leukemic.iloc[0].scan, leukemic.iloc[0].cell_id, "lymphocyte", "Dr A")   # not a blast
        store.decide(normal.iloc[0].scan, normal.iloc[0].cell_id, "blast", "Dr A")            # a missed blast
        store.decide(normal.iloc[1].scan, normal.iloc[1].cell_id, "not a white cell", "Dr A")  # an artefact
        store.decide(normal.iloc[2].scan, normal.iloc[2].cell_id, "unsure", "Dr A")
        with pytest.raises(ReviewError, match="1 cell.* unsure"):
            store.sign_off("P1", "Dr A", "positive")
        store.decide(normal.iloc[2].scan, normal.iloc[2].cell_id, "monocyte", "Dr A")
        v = store.sign_off("P1", "Dr A", "positive", "blasts seen")
        assert (v.counts.n_cells, v.counts.n_blasts, v.counts.pct_blasts) == (19, 5, 26.32)
        assert (v.counts.ci_low, v.counts.ci_high) == (11.81, 48.79)  # Wilson 95 % of 5/19, by hand
        assert sorted((r.model_label, r.label) for r in v.reclassified) == [
            ("leukemic", "lymphocyte"), ("normal", "blast"), ("normal", "not a white cell")]
        assert store.verifications().keys() == {"P1"}

        change = store.decide(leukemic.iloc[1].scan, leukemic.iloc[1].cell_id, "eosinophil", "Dr B")
        assert change.reopened and store.verification("P1") is None
        again = store.sign_off("P1", "Dr B", "positive")
        history = store.signoff_history("P1")
    assert again.counts.n_blasts == 4
    assert [(h["reviewer"], h["n_blasts"], h["reopened_by"]) for h in history] == [("Dr A", 5, "Dr B"),
                                                                                  ("Dr B", 4, None)]
    assert "changed from the model call to eosinophil" in history[0]["reopen_reason"]


def test_import_then_export_round_trips_and_a_bad_row_records_nothing(out, tmp_path):
    cells = cells_of(out, "P2")
    decisions = pd.DataFrame({"scan": cells.scan[:3], "cell_id": cells.cell_id[:3],
                              "label": ["lymphocyte", "blast", "not a white cell"], "reviewer": "Lab LIS",
                              "time": ["2026-12-01T09:00:00+01:00", "", "2026-12-01T10:00:00"]})
    decisions.to_csv(tmp_path / "decisions.csv", index=False)
    bad = pd.concat([decisions, pd.DataFrame([{"scan": "x/y.png", "cell_id": 1, "label": "blast",
                                                "reviewer": "Lab LIS"}])])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with store_of(out) as store:
        with pytest.raises(ReviewError, match=r"bad.csv:5: no cell 1 in scan 'x/y.png'"):
            store.import_decisions(tmp_path / "bad.csv")
        assert store.current_labels().empty
        assert store.import_decisions(tmp_path / "decisions.csv") == 3
        assert store.export_verified(tmp_path / "verified.csv") == 3
    exported = pd.read_csv(tmp_path / "verified.csv", keep_default_na=False)
    assert len(exported) == 32  # every cell of the run
    decided = exported[exported.label != ""]
    assert decided[["cell_id", "label"]].values.tolist() == decisions[["cell_id", "label"]].values.tolist()
    assert decided.time.iloc[0] == "2026-12-01T08:00:00+00:00" and decided.time.iloc[2] == "2026-12-01T10:00:00+00:00"

    fresh = tmp_path / "fresh"
    shutil.copytree(out, fresh, ignore=shutil.ignore_patterns("review.sqlite*"))
    with store_of(fresh) as store:
        assert store.import_decisions(tmp_path / "verified.csv") == 3
        store.export_verified(tmp_path / "verified-again.csv")
    assert (tmp_path / "verified-again.csv").read_text() == (tmp_path / "verified.csv").read_text()


def test_a_rerun_keeps_the_decisions_whose_cells_remain_and_says_how_many_it_dropped(out):
    cells = cells_of(out, "P1")
    kept, gone, moved = cells.iloc[0], cells.iloc[1], cells.iloc[2]
    with store_of(out) as store:
        for cell in (kept, gone, moved):
            store.decide(cell.scan, cell.cell_id, "monocyte", "Dr A")
        store.sign_off("P1", "Dr A", "inconclusive")
        store.sign_off("P2", "Dr A", "negative")

    table = load_run(out).cells
    table = table[~((table.scan == gone.scan) & (table.cell_id == gone.cell_id))].copy()
    at = (table.scan == moved.scan) & (table.cell_id == moved.cell_id)
    table.loc[at, ["x", "x0", "x1"]] += 30  # another cell under the same id
    atomic_write_csv(out / "cells.csv", table, CELL_COLUMNS)

    data, store, reconciliation = open_review(out)
    with store:
        assert (reconciliation.kept, reconciliation.dropped, reconciliation.reopened) == (1, 2, 1)
        assert store.current_labels()["cell_id"].tolist() == [kept.cell_id]
        assert store.verification("P1") is None and store.verification("P2") is not None  # P2's cells unchanged
        assert store.history(gone.scan, gone.cell_id)[0]["dropped_at"]  # set aside, not deleted
        assert store.reconcile().dropped == 0  # idempotent
