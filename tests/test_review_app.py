"""`bcscan review` as a real server on 127.0.0.1: the token on every request (cookie after the first
visit) and on every change, a foreign Origin or a path in place of a cell id refused, a decision
stored at once, the sign-off in patients.csv and the PDF; import/export and errors from the CLI."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from bcscan.cli.main import main
from bcscan.results.tables import CELL_COLUMNS, atomic_write_csv, atomic_write_json
from bcscan.review.store import DATABASE
from bcscan.testing.runs import make_out_dir

pypdf = pytest.importorskip("pypdf")

PATIENTS = {"P1": [{"name": "a.tif", "kind": "slide", "n": 16, "leukemic": 0.25}],
            "P2": [{"name": "b.png", "kind": "field", "n": 8, "leukemic": 0.0}]}


def start_review(out: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`bcscan review OUT` in its own process; returns it and the URL it printed first."""
    process = subprocess.Popen([sys.executable, "-m", "bcscan.cli", "review", str(out), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    return err


class Client:
    """A browser's view of the server: its cookies, and every answer's status code."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=20) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def decide(self, token: str | None, reviewer: str = "Dr T", **headers) -> tuple[int, bytes]:
        body = json.dumps({"scan": 0, "cell": 2, "label": "lymphocyte", "reviewer": reviewer}).encode()
        if token:
            headers["X-Review-Token"] = token
        return self.request("/decide", body, {"Content-Type": "application/json", **headers})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = make_out_dir(tmp_path_factory.mktemp("review"), PATIENTS)
    process, url = start_review(out)
    yield out, process, url
    stop(process)


def test_every_request_needs_the_token_and_every_change_needs_it_again(served):
    out, _, url = served
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    base, token = url.split("/?token=")
    stranger = Client(base)
    assert stranger.request("/")[0] == 403
    assert stranger.request("/patient/0")[0] == 403
    assert stranger.request("/scan/0/cell/2/crop.jpg")[0] == 403
    assert stranger.request("/static/review.js")[0] == 403
    assert stranger.request("/?token=" + "x" * len(token))[0] == 403
    assert stranger.decide(token)[0] == 403  # the header alone, without the cookie of a visit

    reviewer = Client(base)
    status, page = reviewer.request("/?token=" + token)  # sets the cookie, then the worklist without the token
    assert status == 200 and b"Worklist" in page and b">P1</a>" in page
    status, page = reviewer.request("/patient/0")
    assert status == 200 and b"Flag: <b>review: leukemic cells detected</b>" in page
    assert reviewer.decide(None)[0] == 403  # cookie only: a cross-site form could send that
    assert reviewer.decide(token, Origin="http://evil.example")[0] == 403
    assert reviewer.decide(token, reviewer=" ")[0] == 400
    assert not sqlite3.connect(out / DATABASE).execute("SELECT COUNT(*) FROM decisions").fetchone()[0]

    status, body = reviewer.decide(token, Origin=base)
    assert status == 200 and json.loads(body)["label"] == "lymphocyte"
    rows = sqlite3.connect(out / DATABASE).execute("SELECT scan, cell_id, label, reviewer FROM decisions").fetchall()
    assert rows == [("patient0/a.tif", 2, "lymphocyte", "Dr T")]
    status, history = reviewer.request("/scan/0/cell/2/history")
    assert status == 200 and [(h["label"], h["previous_label"], h["reviewer"]) for h in json.loads(history)] == [
        ("lymphocyte", None, "Dr T")]


def test_urls_take_cell_ids_never_paths(served):
    _, _, url = served
    base, token = url.split("/?token=")
    client = Client(base)
    client.request("/?token=" + token)
    status, crop = client.request("/scan/0/cell/2/crop.jpg")
    assert status == 200 and crop[:2] == b"\xff\xd8"  # a JPEG
    for path in ("/scan/0/cell/..%2F..%2Fetc%2Fpasswd/crop.jpg", "/scan/patient0%2Fa.tif/cell/2/crop.jpg",
                 "/scan/0/cell/999/crop.jpg", "/scan/9/thumbnail.jpg", "/patient/..%2Frun.json"):
        assert client.request(path)[0] == 404, path


def test_sign_off_writes_patients_csv_and_the_pdf(served):
    out, _, url = served
    base, token = url.split("/?token=")
    client = Client(base)
    client.request("/?token=" + token)
    form = urllib.parse.urlencode({"token": token, "reviewer": "Dr S", "conclusion": "inconclusive",
                                   "comment": "smear thin"}).encode()
    status, page = client.request("/patient/1/sign-off", form)  # P2: 8 normal cells
    assert status == 200 and b"Signed off by Dr S" in page
    patients = pd.read_csv(out / "patients.csv", dtype=str, keep_default_na=False).set_index("patient_id")
    assert patients.loc["P2", ["verified_by", "verified_cells", "verified_blasts", "verified_pct_blasts"]].tolist() == [
        "Dr S", "8", "0", "0.0"]
    assert patients.loc["P1", "verified_flag"] == "unverified" and patients.loc["P1", "verified_by"] == ""
    assert "Dr S" in pdf_text(out / "reports" / "P2.pdf") and not (out / "reports" / "P1.pdf").exists()

    result = CliRunner().invoke(main, ["report", str(out)])  # every report again, the sign-off kept
    assert result.exit_code == 0, result.output
    p2 = pdf_text(out / "reports" / "P2.pdf")
    assert "Signed off" in p2 and "Dr S" in p2 and "0 blasts of 8 white cells" in p2 and "smear thin" in p2
    assert "NOT VERIFIED" in pdf_text(out / "reports" / "P1.pdf") and "NOT VERIFIED" not in p2
    assert pd.read_csv(out / "patients.csv").set_index("patient_id").loc["P2", "verified_by"] == "Dr S"
    summary = pd.read_csv(out / "summary.csv").set_index("patient_id")["verified_flag"]
    assert summary.to_dict() == {"P1": "unverified",
                                 "P2": "verified: inconclusive, new smear or manual differential"}
    assert "verified: inconclusive" in " ".join(pdf_text(out / "summary.pdf").split())


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(path).pages)


def test_cli_import_export_and_one_line_errors(tmp_path):
    out = make_out_dir(tmp_path, PATIENTS)
    cells = pd.read_csv(out / "cells.csv")
    decisions = cells[cells.patient_id == "P1"].head(2)[["scan", "cell_id"]].assign(label=["blast", "unsure"],
                                                                                     reviewer="LIS")
    decisions.to_csv(tmp_path / "decisions.csv", index=False)
    runner = CliRunner()
    result = runner.invoke(main, ["review", str(out), "--import", str(tmp_path / "decisions.csv"),
                                  "--export", str(tmp_path / "verified.csv")])
    assert result.exit_code == 0, result.output
    verified = pd.read_csv(tmp_path / "verified.csv", keep_default_na=False)
    assert len(verified) == len(cells) and sorted(verified.label) == [""] * (len(cells) - 2) + ["blast", "unsure"]

    (tmp_path / "bad.csv").write_text("scan,cell_id,label,reviewer\npatient0/a.tif,1,blastoid,LIS\n")
    result = runner.invoke(main, ["review", str(out), "--import", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"bcscan: error: {tmp_path / 'bad.csv'}:2: unknown label 'blastoid' "
                                                   "(one of: blast, lymphocyte, neutrophil, monocyte, eosinophil, "
                                                   "basophil, other white cell, not a white cell, unsure)"]
    result = runner.invoke(main, ["review", str(tmp_path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "run.json" in result.output


def test_a_port_in_use_is_one_line_and_exit_2(served):
    out, _, url = served
    port = url.split(":")[2].split("/")[0]
    result = subprocess.run([sys.executable, "-m", "bcscan.cli", "review", str(out), "--port", port],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"bcscan: error: cannot listen on 127.0.0.1:{port} (")
    assert result.stderr.count("\n") == 1


def test_host_keeps_the_token_and_says_so(tmp_path):
    out = make_out_dir(tmp_path, PATIENTS)
    process, url = start_review(out, "--host", "0.0.0.0", "--port", "0")
    port = url.split(":")[2].split("/")[0]
    try:
        assert "?token=" in url
        assert Client(f"http://127.0.0.1:{port}").request("/")[0] == 403
    finally:
        err = stop(process)
    assert "the access token in the URL is still required" in err


def test_a_rerun_while_the_review_is_open_sets_aside_the_decisions_of_cells_it_lost(tmp_path):
    out = make_out_dir(tmp_path, PATIENTS)
    process, url = start_review(out)
    try:
        base, token = url.split("/?token=")
        client = Client(base)
        client.request("/?token=" + token)
        assert client.decide(token)[0] == 200  # scan 0, cell 2
        cells = pd.read_csv(out / "cells.csv", dtype={"patient_id": str})
        atomic_write_csv(out / "cells.csv", cells[cells.cell_id != 2], CELL_COLUMNS)  # the re-run lost the cell
        run = json.loads((out / "run.json").read_text())
        atomic_write_json(out / "run.json", {**run, "run_id": "20261206T000000Z-rerun"})
        status, page = client.request("/")
        assert status == 200 and b"20261206T000000Z-rerun" in page
        assert client.decide(token)[0] == 400  # no cell 2 in this run
    finally:
        stop(process)
    db = sqlite3.connect(out / DATABASE)
    assert db.execute("SELECT d.cell_id, r.run_id FROM decisions d JOIN dropped r ON r.decision_id = d.id").fetchall() \
        == [(2, "20261206T000000Z-rerun")]


def test_export_training_writes_one_cell_per_image_in_folders_bcscan_train_reads(tmp_path):
    from bcscan.scan.pipeline import cells_in_field
    from bcscan.scan.segmentation import SegmentationParams
    from bcscan.training.recipe import SourceSpec
    from bcscan.scan.single_cell import centre_cell
    from bcscan.training.samples import list_images

    out = make_out_dir(tmp_path, PATIENTS)
    cells = pd.read_csv(out / "cells.csv")
    chosen = cells[cells.patient_id == "P1"].head(4)
    chosen[["scan", "cell_id"]].assign(label=["blast", "lymphocyte", "lymphocyte", "not a white cell"],
                                       reviewer="Dr E").to_csv(tmp_path / "decisions.csv", index=False)
    dest = tmp_path / "local-cells"
    args = ["review", str(out), "--import", str(tmp_path / "decisions.csv"), "--export-training", str(dest)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == ["SOURCE.txt", "blast", "lymphocyte", "sources.yaml"]
    sources = [SourceSpec(**s) for s in yaml.safe_load((dest / "sources.yaml").read_text())["sources"]]
    assert [(s.path, s.label, s.mpp, s.single_cell) for s in sources] == [("blast", "leukemic", 0.4, True),
                                                                          ("lymphocyte", "normal", 0.4, True)]
    images = list_images(dest / "lymphocyte")
    assert len(images) == 2 and len(list_images(dest / "blast")) == 1
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    assert rgb.shape == (100, 100, 3)  # 2 × the 20 µm crop at 0.4 µm/px
    field = cells_in_field(rgb, 0.4, SegmentationParams(), 20.0)  # what training's single-cell path does
    centre = centre_cell(field.centres, rgb.shape)
    assert len(field.centres) >= 1 and np.hypot(*(centre[0] - 50)) < 3  # the verified cell, at the centre

    again = CliRunner().invoke(main, ["review", str(out), "--export-training", str(dest)])
    assert again.exit_code == 2 and "not an empty folder" in again.output


def test_a_scan_rerun_into_a_reviewed_folder_keeps_the_sign_off_and_says_what_it_dropped(tmp_path, untrained_model):
    from bcscan.review.publish import open_review
    from bcscan.testing.synthetic import draw_smear, write_field_png

    scans, out = tmp_path / "scans", tmp_path / "out"
    for patient, seed in (("A", 1), ("B", 2)):
        (scans / patient).mkdir(parents=True)
        write_field_png(scans / patient / "field.png", draw_smear(900, 700, 0.25, 4, seed=seed)[0], 0.25)
    scan = ["scan", str(scans), "--out", str(out), "--model", str(untrained_model), "--tile-workers", "0", "--quiet"]
    assert CliRunner().invoke(main, scan).exit_code == 0
    _, store, _ = open_review(out)
    with store:
        for patient in ("A", "B"):
            cell = store.cells[store.cells.patient_id == patient].iloc[0]
            store.decide(cell.scan, cell.cell_id, "monocyte", "Dr R")
            store.sign_off(patient, "Dr R", "negative")

    again = CliRunner().invoke(main, scan + ["--force"])  # the same cells again
    assert again.exit_code == 0 and "set aside" not in again.output
    verified = pd.read_csv(out / "patients.csv").set_index("patient_id")["verified_by"]
    assert verified.to_dict() == {"A": "Dr R", "B": "Dr R"}
    assert "Dr R" in pdf_text(out / "reports" / "A.pdf")

    (scans / "B" / "field.png").unlink()  # B's scan is gone: its decision and sign-off cannot stand
    (scans / "B" / "other.png").write_bytes((scans / "A" / "field.png").read_bytes()[:100])
    rerun = CliRunner().invoke(main, scan)
    assert rerun.exit_code == 1  # the truncated scan fails
    assert ("bcscan: review: 1 cell decision(s) set aside, their cells are not in this run any more (1 kept; all in "
            "the history); 1 sign-off(s) reopened") in rerun.output
    patients = pd.read_csv(out / "patients.csv", keep_default_na=False).set_index("patient_id")
    assert patients.loc["A", "verified_by"] == "Dr R" and patients.loc["B", "verified_flag"] == "unverified"
    assert "NOT VERIFIED" in pdf_text(out / "reports" / "B.pdf")
