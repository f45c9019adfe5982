"""Per-patient PDF reports and the batch summary: printed numbers equal patients.csv, hostile
patient IDs render as written and stay inside OUT_DIR, failed scans and too few cells are
reported as such, missing scans give a note instead of a crash, `bcscan report` CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pandas as pd
import pytest
from click.testing import CliRunner

from bcscan.results.aggregation import (
    FLAG_INCOMPLETE,
    FLAG_INSUFFICIENT,
    FLAG_NEGATIVE,
    FLAG_REVIEW,
)
from bcscan.results.reports import ReportingParams, report_names, write_reports
from bcscan.testing.runs import make_out_dir
from bcscan.testing.synthetic import draw_smear

pypdf = pytest.importorskip("pypdf")

HOSTILE = "<b>P&amp;\"q'</b> ../../etc/患者-Ø"


PATIENTS = {
    "LEUK-001": [{"name": "slide A.tif", "kind": "slide", "n": 40, "leukemic": 0.3, "size": (2400, 1800)},
                 {"name": "field.png", "kind": "field", "n": 6, "leukemic": 0.5}],
    "NORM-002": [{"name": "slide.tif", "kind": "slide", "n": 30, "leukemic": 0.0, "size": (2000, 1500)}],
    "FEW-003": [{"name": "few.png", "kind": "field", "n": 4, "leukemic": 0.0, "size": (800, 600)}],
    "FAIL-004": [{"name": "good.png", "kind": "field", "n": 20, "leukemic": 0.0},
                 {"name": "broken.svs", "kind": "broken"}],
    HOSTILE: [{"name": "we<i>rd & 'name'.png", "kind": "field", "n": 12, "leukemic": 0.0, "size": (900, 700)}],
}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    out = make_out_dir(tmp_path_factory.mktemp("rep"), PATIENTS)
    write_reports(out)
    return out


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() or "" for page in pypdf.PdfReader(str(path)).pages)


def read_patients(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "patients.csv", dtype={"patient_id": str}, keep_default_na=False).set_index("patient_id")


def glance_numbers(text: str) -> dict[str, float]:
    """The 'result at a glance' figures as printed."""
    m = re.search(r"Result at a glance\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+) %\s+([\d.]+)–([\d.]+) %\s+"
                  r"Cells analysed\s+Leukemic\s+Normal\s+% leukemic", text)
    assert m, text[:1500]
    n, k, norm, pct, lo, hi = m.groups()
    return {"n_cells": int(n.replace(",", "")), "n_leukemic": int(k.replace(",", "")),
            "n_normal": int(norm.replace(",", "")), "pct_leukemic": float(pct), "ci_low": float(lo),
            "ci_high": float(hi)}


def test_every_patient_report_prints_the_numbers_and_flag_of_patients_csv(out_dir):
    patients = read_patients(out_dir)
    names = report_names(list(patients.index))
    assert set(patients.flag) == {FLAG_REVIEW, FLAG_NEGATIVE, FLAG_INSUFFICIENT, FLAG_INCOMPLETE}
    for pid, row in patients.iterrows():
        text = pdf_text(out_dir / "reports" / names[pid])
        printed = glance_numbers(text)
        for key, value in printed.items():
            assert value == pytest.approx(float(row[key]), abs=0.005), (pid, key)
        assert f"flag: {row.flag}" in text, pid
        assert "Decision support: to be verified by a qualified reviewer" in text
        assert "20261128T000000Z-abc123" in text and "Page 1 of" in text
        assert "f" * 64 in text.replace("\n", "")  # model hash on the traceability page
    assert patients.loc["LEUK-001", "n_leukemic"] > 0


def test_flags_failed_scan_and_too_few_cells(out_dir):
    patients = read_patients(out_dir)
    names = report_names(list(patients.index))
    fail = re.sub(r"\s+", " ", pdf_text(out_dir / "reports" / names["FAIL-004"]))
    assert patients.loc["FAIL-004", "flag"] == FLAG_INCOMPLETE
    assert "scan failed" in fail and "broken.svs" in fail and "not a <b>slide</b> & co" in fail
    few = pdf_text(out_dir / "reports" / names["FEW-003"])
    assert patients.loc["FEW-003", "flag"] == FLAG_INSUFFICIENT
    assert "Insufficient cells for a reliable count" in few and "Negative" not in few


def test_hostile_patient_id_renders_as_written_and_stays_inside_out_dir(out_dir):
    reports = sorted((out_dir / "reports").iterdir())
    assert len(reports) == len(PATIENTS)
    assert all(p.suffix == ".pdf" and p.parent == out_dir / "reports" for p in reports)
    root = out_dir.parent
    outside = [p for p in root.rglob("*") if p.is_file() and out_dir not in p.parents and "scans" not in p.parts]
    assert outside == []
    name = report_names([HOSTILE])[HOSTILE]
    assert "/" not in name and ".." not in name.split("_")[0]
    text = pdf_text(out_dir / "reports" / name)
    flat = text.replace("\n", "")
    assert HOSTILE in flat  # markup printed, not interpreted; CJK in the fallback font
    assert "we<i>rd & 'name'.png" in flat
    summary = re.sub(r"\s+", "", pdf_text(out_dir / "summary.pdf"))  # narrow column: wrapped at its space
    assert re.sub(r"\s+", "", HOSTILE) in summary


def test_summary_csv_and_pdf(out_dir):
    patients = read_patients(out_dir)
    summary = pd.read_csv(out_dir / "summary.csv", dtype={"patient_id": str}, keep_default_na=False)
    assert list(summary.patient_id) == list(patients.index)
    merged = summary.set_index("patient_id")
    for column in ("n_cells", "n_leukemic", "pct_leukemic", "ci_low", "ci_high", "flag", "n_scans_failed",
                   "n_scans_outside", "n_scans_low_quality"):
        assert list(merged[column]) == list(patients[column]), column
    assert all((out_dir / r).is_file() for r in summary.report)
    assert "broken.svs" in merged.loc["FAIL-004", "failed_scans"]
    text = re.sub(r"\s+", " ", pdf_text(out_dir / "summary.pdf"))
    assert "Failed scans (1)" in text and "broken.svs" in text
    for flag in patients.flag:
        assert flag in text


def test_new_user_wording_footer_on_one_line_tile_counts_scale_and_gallery_title(out_dir):
    names = report_names(list(read_patients(out_dir).index))
    pages = [page.extract_text() for page in pypdf.PdfReader(out_dir / "reports" / names["LEUK-001"]).pages]
    footer = "Patient LEUK-001 · Decision support: to be verified by a qualified reviewer."
    assert all(footer in page for page in pages), pages[0][-300:]  # not wrapped onto a second line
    text = " ".join(" ".join(page.split()) for page in pages)
    assert "4 tiles read in" in text
    assert "0.5000 µm/px as scanned; cells found on a copy at 0.400 µm/px, read from pyramid level 0" in text
    assert "Most suspicious cells: the 24 highest p_leukemic of 46" in text
    normal = " ".join(" ".join(p.extract_text().split()) for p in pypdf.PdfReader(
        out_dir / "reports" / names["NORM-002"]).pages)
    assert "Most suspicious" not in normal
    assert re.search(r"Cells of highest p_leukemic: the 24 highest of 30; none is called leukemic \(highest p "
                     r"0\.4\d\d, called leukemic from 0\.5\)", normal)


def test_page_one_lists_every_flag_of_the_patient(tmp_path):
    out = make_out_dir(tmp_path, {"P": [{"name": "a.png", "kind": "field", "n": 5, "leukemic": 0.0},
                                        {"name": "b.svs", "kind": "broken"}]})
    patients = pd.read_csv(out / "patients.csv", dtype=str, keep_default_na=False)
    assert patients.flag.tolist() == [FLAG_INCOMPLETE]
    patients["n_scans_outside"] = "1"  # as if its read scan were outside the validated range
    patients.to_csv(out / "patients.csv", index=False)
    write_reports(out)
    page_one = " ".join(pypdf.PdfReader(out / "reports" / "P.pdf").pages[0].extract_text().split())
    assert "Incomplete: a scan failed or is pending" in page_one
    assert "Also: Outside the validated range (stain, scanner or cells the model is unsure of) — review; no negative call." \
        in page_one
    assert "Also: Insufficient cells for a reliable count — no negative call. Only 5 cells were found; at least 10" \
        in page_one


def test_one_tile_is_one_tile(tmp_path):
    out = make_out_dir(tmp_path, {"P": [{"name": "a.png", "kind": "field", "n": 5, "leukemic": 0.0}]})
    scans = pd.read_csv(out / "scans.csv", dtype=str, keep_default_na=False)
    scans["tiles_read"] = "1"
    scans.to_csv(out / "scans.csv", index=False)
    write_reports(out)
    assert "1 tile read in" in " ".join(pdf_text(out / "reports" / "P.pdf").split())


def test_summary_csv_counts_the_scans_outside_and_of_low_quality(tmp_path):
    out = make_out_dir(tmp_path, {"P": [{"name": "a.png", "kind": "field", "n": 5, "leukemic": 0.0}]})
    patients = pd.read_csv(out / "patients.csv", dtype=str, keep_default_na=False)
    patients[["n_scans_outside", "n_scans_low_quality"]] = ["2", "1"]  # as a run with such scans writes them
    patients.to_csv(out / "patients.csv", index=False)
    write_reports(out)
    summary = pd.read_csv(out / "summary.csv")
    assert summary[["n_scans_failed", "n_scans_outside", "n_scans_low_quality"]].values.tolist() == [[0, 2, 1]]


def test_gallery_is_capped_and_long_ids_wrap(tmp_path):
    long_id = "X" * 150 + "-long-patient-identifier-without-spaces"
    out = make_out_dir(tmp_path, {long_id: [{"name": "s.tif", "kind": "slide", "n": 120, "leukemic": 0.2,
                                              "size": (3000, 2400)}]})
    params = ReportingParams(gallery_suspicious=6, gallery_normal=3)
    written = write_reports(out, params=params)
    report = next(p for p in written if p.parent.name == "reports")
    reader = pypdf.PdfReader(str(report))
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert long_id in text.replace("\n", "")
    assert len(reader.pages) <= 5
    assert text.count(" x ") == 9 or len(re.findall(r"S1 x [\d,]+ y [\d,]+", text)) == 9


def test_missing_scans_give_notes_not_a_crash(tmp_path):
    out = make_out_dir(tmp_path, {"P": [{"name": "a.png", "kind": "field", "n": 15, "leukemic": 0.2}]})
    written = write_reports(out, scan_dir=tmp_path / "nowhere")
    text = pdf_text(written[0])
    assert "scan file not found" in text and "image unavailable" in text
    assert "run date; scan files not found" in text


def test_report_cli(tmp_path):
    from bcscan.cli.report import report_command

    out = make_out_dir(tmp_path, {"P": [{"name": "a.png", "kind": "field", "n": 15, "leukemic": 0.0}],
                                  "Q": [{"name": "b.png", "kind": "field", "n": 15, "leukemic": 0.0}]})
    runner = CliRunner()
    result = runner.invoke(report_command, [str(out), "--patient", "Q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "reports").iterdir()) == ["Q.pdf"]
    result = runner.invoke(report_command, [str(tmp_path / "scans")])
    assert result.exit_code == 2 and "run.json" in result.output and "Traceback" not in result.output
    result = runner.invoke(report_command, [str(out), "--patient", "nobody"])
    assert result.exit_code == 2 and "nobody" in result.output


def test_reporting_params_are_checked():
    with pytest.raises(ValueError):
        ReportingParams(gallery_columns=0)
    with pytest.raises(ValueError):
        ReportingParams(uncertain_low=0.8, uncertain_high=0.2)
    assert json.dumps(ReportingParams().__dict__)


def test_reports_from_a_real_scan_run(tmp_path, untrained_model):
    """The tables `bcscan scan` really writes (untrained model) make reports whose numbers match."""
    from bcscan.batch.outline import run_batch
    from bcscan.batch.plan import BatchRun
    from bcscan.batch.settings import load_settings

    scans = tmp_path / "scans"
    (scans / "NA").mkdir(parents=True)  # a patient called "NA" must not become a missing value
    field, drawn = draw_smear(700, 500, 0.25, 4, seed=3)
    cv2.imwrite(str(scans / "NA" / "f.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    (scans / "NA" / "bad.svs").write_text("x")
    out = tmp_path / "out"
    settings = load_settings(overrides={"classification": {"model": str(untrained_model)}})
    run_batch(BatchRun(scans, out, settings, mpp=0.25))
    written = write_reports(out)
    patients = read_patients(out)
    assert list(patients.index) == ["NA"] and patients.loc["NA", "n_cells"] == len(drawn)
    text = pdf_text(written[0])
    printed = glance_numbers(text)
    for key, value in printed.items():
        assert value == pytest.approx(float(patients.loc["NA", key]), abs=0.005), key
    assert f"flag: {patients.loc['NA', 'flag']}" in re.sub(r"\s+", " ", text)
    assert "bad.svs" in text and "image unavailable" not in text


def test_non_latin_id_without_a_cjk_font_uses_a_standard_cid_font(tmp_path):
    """No CJK TrueType font on the machine: the characters go in a standard Adobe CID font
    (viewers supply the glyphs) and the text stays exact."""
    pid = "患者-Ø 환자"
    out = make_out_dir(tmp_path, {pid: [{"name": "a.png", "kind": "field", "n": 5, "leukemic": 0.0}]})
    written = write_reports(out, params=ReportingParams(fallback_font=str(tmp_path / "no-such-font.ttf")))
    reader = pypdf.PdfReader(str(written[0]))
    assert pid in reader.pages[0].extract_text()
    fonts = {str(f["/BaseFont"]) for page in reader.pages
             for f in (page["/Resources"].get("/Font") or {}).values() if "/BaseFont" in f.get_object()}
    assert any("STSong" in f for f in fonts) and any("HYSMyeongJo" in f for f in fonts)
