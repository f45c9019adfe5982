"""A nightly batch that cron can trust: crash and rerun, one run at a time, files still being
written, bad input of every kind, output permissions, accelerator memory exhaustion."""
from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import comparable_tables, shared
from PIL import Image

from bcscan.cli.main import main
from bcscan.testing.synthetic import draw_smear, write_field_png, write_pyramidal_tiff


def write_field(path: Path, seed: int, n_wbc: int = 3, size=(900, 700)) -> None:
    rgb, _ = draw_smear(size[0], size[1], 0.25, n_wbc, seed=seed)
    write_field_png(path, rgb, 0.25)


def bcscan_process(scan_dir: Path, out_dir: Path, model: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bcscan.cli", "scan", str(scan_dir), "--out", str(out_dir),
                             "--model", str(model), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("night")
    scans = root / "scans"
    for i in range(3):
        rgb, _ = draw_smear(2600, 2000, 0.25, 20, seed=100 + i)
        write_pyramidal_tiff(scans / f"P{i}" / "slide.tif", rgb, 0.25)
        write_field(scans / f"P{i}" / "field.png", seed=200 + i)
    return scans


@pytest.mark.slow
def test_killed_runs_then_rerun_give_the_uninterrupted_result(night, tmp_path, untrained_model):
    """SIGKILL at ≥ 10 random moments; each killed run is rerun (and may be killed again) until a
    run completes; every completed chain must equal the uninterrupted run."""
    reference = tmp_path / "reference"
    t0 = time.perf_counter()
    assert bcscan_process(night, reference, untrained_model).wait() == 0
    full_run = time.perf_counter() - t0
    expected = comparable_tables(reference)

    rng = random.Random(2026)
    kills, chains = 0, 0
    while kills < 10:
        out = tmp_path / f"chain{chains}"
        while True:
            proc = bcscan_process(night, out, untrained_model)
            try:
                proc.wait(timeout=rng.uniform(0.3, full_run))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            assert proc.returncode == 0
            break
        chains += 1
        got = comparable_tables(out)
        for name in expected:
            pd.testing.assert_frame_equal(got[name], expected[name])
        assert not list(out.rglob(".*.tmp"))  # no temporary file left behind
    assert kills >= 10


def test_two_runs_at_once_one_works_and_a_killed_lock_does_not_block(night, tmp_path, untrained_model):
    out = tmp_path / "out"
    first = bcscan_process(night, out, untrained_model, "--force")
    time.sleep(1.0)
    second = bcscan_process(night, out, untrained_model)
    assert second.wait(timeout=60) == 3
    assert "another bcscan run" in second.stderr.read()
    assert first.poll() is None  # the first one is still working
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = bcscan_process(night, out, untrained_model)
    assert third.wait(timeout=300) == 0


def build_bad_corpus(folder: Path) -> dict[str, str]:
    """Every kind of bad input beside good scans; returns scan → expected words of its error."""
    write_field(folder / "good" / "field one ü.png", seed=1)
    write_field(folder / "good" / "field-two.jpg", seed=2)
    rgb, _ = draw_smear(600, 500, 0.25, 2, seed=3)
    variants = folder / "formats"
    variants.mkdir()
    Image.fromarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).save(variants / "grey.png", dpi=(101600, 101600))
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(variants / "rgba.png", dpi=(101600, 101600))
    Image.fromarray(rgb).convert("CMYK").save(variants / "cmyk.jpg", dpi=(65535, 65535))
    import tifffile

    tifffile.imwrite(variants / "rgb16.tif", rgb.astype(np.uint16) * 257, resolution=(40000, 40000),
                     resolutionunit="CENTIMETER")

    bad = folder / "bad"
    bad.mkdir()
    good_jpg = (folder / "good" / "field-two.jpg").read_bytes()
    (bad / "empty.svs").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 3])
    svs = shared("wsi", "slides", "CMU-1-Small-Region.svs").read_bytes()
    (bad / "truncated.svs").write_bytes(svs[: len(svs) // 2])
    (bad / "text.svs").write_text("not a slide at all\n")
    (bad / "image.tif").write_bytes(b"GIF89a" + bytes(200))  # another format under a slide name
    (bad / "slide-folder.svs").mkdir()
    (bad / "loop.svs").symlink_to(bad / "loop.svs")
    Image.new("L", (6000, 5000)).save(bad / "bomb.png", dpi=(101600, 101600))
    shutil.copy(folder / "good" / "field-two.jpg", bad / "copy-of-field-two.jpg")
    slide, _ = draw_smear(900, 900, 0.25, 4, seed=4)
    write_pyramidal_tiff(bad / "corrupt-tile.tif", slide, 0.25, min_side=400)
    with tifffile.TiffFile(bad / "corrupt-tile.tif") as tif:  # garble one tile in the middle of level 0
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    middle = len(offsets) // 2 + 1
    with open(bad / "corrupt-tile.tif", "r+b") as fh:
        fh.seek(offsets[middle])
        fh.write(b"\xff" * counts[middle])
    big, _ = draw_smear(1200, 1000, 0.25, 1, seed=5)
    write_pyramidal_tiff(bad / "enormous.tif", big, 0.25, min_side=300)
    return {
        "bad/empty.svs": "empty file",
        "bad/truncated.jpg": "truncated",
        "bad/truncated.svs": "",
        "bad/text.svs": "unsupported or corrupt",
        "bad/image.tif": "tiff",
        "bad/slide-folder.svs": "a folder",
        "bad/loop.svs": "symbolic link",
        "bad/bomb.png": "exceeds the limit",
        "formats/grey.png": "greyscale image",
        "bad/corrupt-tile.tif": "decoding error",
        "bad/enormous.tif": "exceeds the limit",
        "good/field-two.jpg": "same content as bad/copy-of-field-two.jpg",
        "missing/ghost.svs": "listed in the manifest but not found",
    }


def test_bad_input_corpus_fails_scan_by_scan_and_the_rest_completes(tmp_path, untrained_model):
    scans = tmp_path / "scans"
    expected = build_bad_corpus(scans)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("scan,patient_id\ngood/field one ü.png,../../etc\nmissing/ghost.svs,P-GHOST\n")
    config = tmp_path / "config.yaml"
    config.write_text("reading:\n  max_image_pixels: 20000000\n  max_slide_pixels: 1000000\n  default_mpp: 0.25\n")
    out = tmp_path / "out"
    before = set(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["scan", str(scans), "--out", str(out), "--model", str(untrained_model),
                                       "--manifest", str(manifest), "--config", str(config), "--quiet"])
    assert result.exit_code == 1, result.output

    failures = pd.read_csv(out / "failures.csv").set_index("scan")
    assert sorted(failures.index) == sorted(expected)
    for scan, words in expected.items():
        message = failures.at[scan, "error"]
        assert words.lower() in message.lower(), (scan, message)
        assert "\n" not in message and "Traceback" not in message
    scans_table = pd.read_csv(out / "scans.csv").set_index("scan")
    ok = scans_table[scans_table.status == "ok"]
    assert sorted(ok.index) == ["bad/copy-of-field-two.jpg", "formats/cmyk.jpg", "formats/rgb16.tif",
                                "formats/rgba.png", "good/field one ü.png"]
    assert (ok.n_cells >= 1).all()
    patients = pd.read_csv(out / "patients.csv")
    assert "../../etc" in set(patients.patient_id)
    created = {p for p in set(tmp_path.rglob("*")) - before if not p.is_relative_to(out)}
    assert created == set()  # nothing written outside OUT_DIR


def test_scans_still_being_written_are_left_pending(tmp_path, untrained_model):
    scans = tmp_path / "scans"
    write_field(scans / "P1" / "old.png", seed=5)
    write_field(scans / "P1" / "fresh.png", seed=6)
    old = time.time() - 3600
    os.utime(scans / "P1" / "old.png", (old, old))
    config = tmp_path / "c.yaml"
    config.write_text("batch:\n  settle_minutes: 10\n")
    args = ["scan", str(scans), "--out", str(tmp_path / "out"), "--model", str(untrained_model), "--config", str(config)]
    assert CliRunner().invoke(main, args).exit_code == 0
    status = pd.read_csv(tmp_path / "out" / "scans.csv").set_index("scan")["status"].to_dict()
    assert status == {"P1/fresh.png": "pending", "P1/old.png": "ok"}
    os.utime(scans / "P1" / "fresh.png", (old, old))
    assert CliRunner().invoke(main, args).exit_code == 0
    assert set(pd.read_csv(tmp_path / "out" / "scans.csv")["status"]) == {"ok"}


@pytest.mark.parametrize("umask, mode", [("077", 0o600), ("027", 0o640)])
def test_output_permissions_follow_the_configured_umask(tmp_path, untrained_model, umask, mode):
    write_field(tmp_path / "scans" / "P1" / "f.png", seed=7)
    config = tmp_path / "c.yaml"
    config.write_text(f'batch:\n  umask: "{umask}"\n')
    saved = os.umask(0o022)
    try:
        CliRunner().invoke(main, ["scan", str(tmp_path / "scans"), "--out", str(tmp_path / "out"),
                                  "--model", str(untrained_model), "--config", str(config)])
    finally:
        os.umask(saved)
    for name in ("cells.csv", "patients.csv", "run.json"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == mode, name


def test_out_of_accelerator_memory_shrinks_the_batch_and_keeps_results(untrained_model):
    from bcscan.model.classifier import CellClassifier, ClassificationParams

    crops = np.random.default_rng(0).integers(0, 255, (40, 50, 50, 3), dtype=np.uint8)
    params = ClassificationParams(model=str(untrained_model), batch_size=16, cpu_backend="tensorflow")  # OOM: TF's
    reference = CellClassifier(params).predict(crops)

    class ResourceExhaustedError(Exception):
        pass

    classifier = CellClassifier(params)
    compiled = classifier._predict

    def small_memory(batch):
        if len(batch) > 4:
            raise ResourceExhaustedError("OOM when allocating tensor")
        return compiled(batch)

    classifier._predict = small_memory
    np.testing.assert_allclose(classifier.predict(crops), reference, atol=1e-5)
    assert classifier.batch_size == 4
