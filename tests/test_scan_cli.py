"""`bcscan scan` end to end on generated scans: outputs and their schemas, patients, exit codes,
failure isolation, reuse of finished scans, provenance."""
from __future__ import annotations

import json
import shutil

import cv2
import pandas as pd
import pytest
from click.testing import CliRunner

from bcscan.cli.main import main
from bcscan.results.tables import CELL_COLUMNS, SCAN_COLUMNS
from bcscan.testing.synthetic import draw_smear, write_pyramidal_tiff


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    scans = root / "scans"
    (scans / "P1").mkdir(parents=True)
    (scans / "P2 ünï").mkdir(parents=True)
    slide, slide_cells = draw_smear(3000, 2200, 0.25, 25, seed=11)
    write_pyramidal_tiff(scans / "P1" / "slide A.tif", slide, 0.25)
    field, field_cells = draw_smear(800, 600, 0.25, 3, seed=12)
    cv2.imwrite(str(scans / "P1" / "field.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(scans / "P2 ünï" / "field.jpg"), cv2.cvtColor(field[::-1], cv2.COLOR_RGB2BGR))
    (scans / "P2 ünï" / "broken.svs").write_text("not a slide")
    return {"scans": scans, "root": root, "expected": {"P1/slide A.tif": len(slide_cells),
                                                        "P1/field.png": len(field_cells),
                                                        "P2 ünï/field.jpg": len(field_cells)}}


def run(args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_scan_writes_every_output_and_isolates_the_bad_scan(batch, untrained_model):
    out = batch["root"] / "out"
    result = run(["scan", batch["scans"], "--out", out, "--model", untrained_model, "--mpp", 0.25, "--quiet"])
    assert result.exit_code == 1, result.output  # one scan failed, the batch completed

    scans = pd.read_csv(out / "scans.csv")
    assert list(scans.columns) == SCAN_COLUMNS
    ok = scans[scans.status == "ok"].set_index("scan")
    assert ok["n_cells"].to_dict() == batch["expected"]
    assert ok.loc["P1/slide A.tif", "level"] == 0 and ok.loc["P1/slide A.tif", "mpp"] == 0.25

    failures = pd.read_csv(out / "failures.csv")
    assert failures[["scan", "stage"]].values.tolist() == [["P2 ünï/broken.svs", "read"]]
    assert "broken.svs" in failures.error[0]

    cells = pd.read_csv(out / "cells.csv")
    assert list(cells.columns) == CELL_COLUMNS
    assert len(cells) == sum(batch["expected"].values())
    assert (cells.x0 <= cells.x).all() and (cells.x < cells.x1).all() and (cells.y0 <= cells.y).all()
    assert cells.label.isin(["leukemic", "normal"]).all() and cells.p_leukemic.between(0, 1).all()
    assert ((cells.p_leukemic >= 0.5) == (cells.label == "leukemic")).all()
    assert not cells.duplicated(["scan", "cell_id"]).any()

    patients = pd.read_csv(out / "patients.csv").set_index("patient_id")
    assert patients.loc["P1", "n_scans"] == 2 and patients.loc["P1", "n_cells"] == 28
    assert patients.loc["P2 ünï", "n_scans_failed"] == 1
    for pid, row in patients.iterrows():
        mine = cells[cells.patient_id == pid]
        assert row.n_leukemic == (mine.label == "leukemic").sum() and row.n_normal == (mine.label == "normal").sum()

    geo = json.loads((out / "geojson" / "P1_slide_A.tif.geojson").read_text())
    assert len(geo["features"]) == 25
    assert geo["features"][0]["properties"]["classification"]["name"] in ("leukemic", "normal")

    run_json = json.loads((out / "run.json").read_text())
    assert run_json["model"]["sha256"] and len(run_json["inputs"]) == 4
    assert run_json["centre_model"]["path"].endswith("bcscan-centres.onnx") and len(run_json["centre_model"]["sha256"]) == 64
    assert all(len(i["sha256"]) == 64 for i in run_json["inputs"])
    assert run_json["config"]["segmentation"]["working_mpp"] > 0 and "tensorflow" in run_json["software"]


def test_rerun_reuses_results_and_gives_identical_tables(batch, untrained_model):
    out = batch["root"] / "out-rerun"
    args = ["scan", batch["scans"], "--out", out, "--model", untrained_model, "--mpp", 0.25, "--quiet"]
    run(args)
    first = {name: (out / name).read_text() for name in ("cells.csv", "patients.csv")}
    second_run = run(args + ["--log-format", "json"])
    assert second_run.exit_code == 1
    assert {name: (out / name).read_text() for name in first} == first
    log_lines = [json.loads(line) for line in (out / "bcscan.log").read_text().splitlines() if line.startswith("{")]
    assert sum("reused" in line["message"] for line in log_lines) == 3


def test_missing_model_and_bad_config_exit_2(batch, tmp_path):
    result = run(["scan", batch["scans"], "--out", tmp_path / "o", "--model", tmp_path / "none.keras"])
    assert result.exit_code == 2 and "model file not found" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling:\n  tile_pixels: 3\n")
    result = run(["scan", batch["scans"], "--out", tmp_path / "o", "--config", bad])
    assert result.exit_code == 2 and "tile_pixels" in result.output
    no_centres = tmp_path / "no-centres.yaml"
    no_centres.write_text(f"centres:\n  model: {tmp_path / 'none.onnx'}\n")
    result = run(["scan", batch["scans"], "--out", tmp_path / "o", "--config", no_centres])
    assert result.exit_code == 2 and "none.onnx: white-cell centre model not found" in result.output
    assert "Traceback" not in result.output


def test_corrupt_model_is_refused(batch, tmp_path, untrained_model):
    import shutil

    model = tmp_path / "m.keras"
    shutil.copy(untrained_model, model)
    shutil.copy(untrained_model.with_suffix(".json"), model.with_suffix(".json"))
    with open(model, "r+b") as fh:
        fh.seek(2000)
        fh.write(b"\0" * 64)
    result = run(["scan", batch["scans"], "--out", tmp_path / "o", "--model", model])
    assert result.exit_code == 2 and "does not match its metadata" in result.output


def test_help_is_instant_and_lists_exit_codes():
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bcscan.cli", "scan", "--help"], capture_output=True, text=True)
    assert time.perf_counter() - t0 < 3.0
    assert "Exit codes" in out.stdout and "failures.csv" in out.stdout
    assert "tensorflow" not in out.stderr.lower()


def test_old_dask_option_names_still_work_with_a_warning(batch, tmp_path):
    result = run(["scan", batch["scans"], "--out", tmp_path / "o", "--scheduler", "tcp://127.0.0.1:9",
                  "--dask-workers", "2"])
    assert "--scheduler is renamed --dask-scheduler" in result.output
    assert result.exit_code == 2 and "--dask-scheduler and --dask-workers exclude each other" in result.output
    result = run(["scan", batch["scans"], "--out", tmp_path / "o", "--workers", "2", "--dask-workers", "2"])
    assert "--workers is renamed --dask-workers" in result.output
    assert result.exit_code == 2 and "give only --dask-workers" in result.output
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_every_command_documents_the_same_exit_codes():
    from bcscan.errors import EXIT_CODES_HELP

    for command in ("scan", "report", "train", "evaluate"):
        result = run([command, "--help"])
        assert result.exit_code == 0 and "the model did not learn" in result.output, command
    assert EXIT_CODES_HELP.count("\n") == 7 and "5  train, fine-tuning" in EXIT_CODES_HELP  # a line per code


def test_a_missing_default_config_is_one_line_naming_it(tmp_path, monkeypatch):
    from bcscan import config
    from bcscan.batch.settings import load_settings
    from bcscan.errors import ConfigError

    monkeypatch.setattr(config, "packaged", lambda name: tmp_path / "site-packages" / "bcscan" / name)
    with pytest.raises(ConfigError, match=r"site-packages/bcscan/default.yaml: the default configuration is missing"):
        load_settings()


def test_an_empty_scan_folder_exits_2_in_one_line_unless_allowed(tmp_path, untrained_model):
    (tmp_path / "empty").mkdir()
    args = ["scan", tmp_path / "empty", "--out", tmp_path / "out", "--model", untrained_model, "--quiet"]
    refused = run(args)
    assert refused.exit_code == 2
    assert refused.output.splitlines() == [f"bcscan: error: {tmp_path / 'empty'}: no scans found (slides, DICOM "
                                           "series or field images); --allow-empty runs on an empty folder"]
    assert not (tmp_path / "out").exists()
    allowed = run(args + ["--allow-empty"])
    assert allowed.exit_code == 0, allowed.output
    assert pd.read_csv(tmp_path / "out" / "scans.csv").empty


def test_the_domain_distance_is_written_and_printed_beside_its_threshold(batch, untrained_model, tmp_path):
    """The untrained model given the shipped model's validated range."""
    from helpers import SHIPPED_MODEL
    from pypdf import PdfReader

    from bcscan.model.network import load_model_info, metadata_path

    reference = load_model_info(SHIPPED_MODEL).domain
    model = tmp_path / "with-domain.keras"
    shutil.copyfile(untrained_model, model)
    metadata = json.loads(metadata_path(untrained_model).read_text())
    metadata_path(model).write_text(json.dumps({**metadata, "domain": reference}))
    out = tmp_path / "out"
    result = run(["scan", batch["scans"], "--out", out, "--model", model, "--mpp", 0.25, "--quiet"])
    assert result.exit_code == 1, result.output  # the broken scan
    scans = pd.read_csv(out / "scans.csv").set_index("scan")
    ok = scans[scans.status == "ok"]
    assert ((ok.domain == "outside") == (ok.domain_distance > ok.domain_threshold)).all()
    assert (ok.domain_threshold == reference["threshold"]).all() and scans.domain_threshold.isna().sum() == 1
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(out / "reports" / "P1.pdf").pages)
    distance = ok.loc["P1/field.png", "domain_distance"]
    assert f"appearance distance {distance:.2f}; outside above {reference['threshold']:.2f}" in text


@pytest.mark.parametrize("args, message", [
    (["scan"], "Missing argument 'SCAN_DIR'. (see 'bcscan scan --help')"),
    (["scan", ".", "--out", "x", "--batch-size", "0"],
     "Invalid value for '--batch-size': 0 is not in the range x>=1. (see 'bcscan scan --help')"),
    (["review", "/no/such/folder"],
     "Invalid value for 'OUT_DIR': Directory '/no/such/folder' does not exist. (see 'bcscan review --help')"),
    (["nosuch"], "No such command 'nosuch'. (see 'bcscan --help')"),
])
def test_usage_errors_are_one_line_with_exit_2(args, message):
    result = CliRunner().invoke(main, args, prog_name="bcscan")
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"bcscan: error: {message}"]


@pytest.mark.parametrize("yaml_text, message", [
    ("centres:\n  peak_min_distance_um: true\n", "section 'centres': peak_min_distance_um must be a finite number, got True"),
    ("centres:\n  model: 3\n", "section 'centres': model must be the path of an ONNX file or null, got 3"),
    ("centres:\n  enabled: 1\n", "section 'centres': enabled must be true or false, got 1"),
    ("tiling:\n  tile_px: big\n", "section 'tiling': tile_px must be a finite number, got 'big'"),
    ("segmentation:\n  background_percentile: 100\n", "section 'segmentation': background_percentile must be < 100, got 100"),
    ("quality:\n  clip_level: .nan\n", "section 'quality': clip_level must be a finite number, got nan"),
    ("platelets:\n  weights: [1, 2, 3, 4, x]\n", "section 'platelets': weights[4] must be a finite number, got 'x'"),
    ("aggregation:\n  review_threshold_pct: 0\n", "section 'aggregation': review_threshold_pct must be > 0, got 0"),
    ("pipeline:\n  scans_in_flight: 0\n", "section 'pipeline': scans_in_flight must be >= 1, got 0"),
])
def test_a_bad_value_in_any_section_is_a_config_error_naming_it(tmp_path, yaml_text, message):
    from bcscan.batch.settings import load_settings
    from bcscan.errors import ConfigError

    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert str(error.value) == message
