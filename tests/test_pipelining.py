"""The pipelined batch (tiles read and segmented in worker processes) must give exactly the
in-process results, survive a worker that dies, and leave no process behind when killed."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from click.testing import CliRunner
from helpers import comparable_tables, run_timings

from bcscan.batch.executors.pipelined import _CropBuffer, _ScanState
from bcscan.batch.settings import PipelineParams
from bcscan.cli.main import main
from bcscan.errors import ExitCode
from bcscan.testing.synthetic import draw_smear, write_field_png, write_pyramidal_tiff


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """Two patients: slides cut into many small tiles, plain fields, and one unreadable file."""
    scans = tmp_path_factory.mktemp("pipelined") / "scans"
    for i in range(2):
        rgb, _ = draw_smear(2400, 1800, 0.25, 18, seed=300 + i)
        write_pyramidal_tiff(scans / f"P{i}" / "slide.tif", rgb, 0.25)
        field, _ = draw_smear(800, 600, 0.25, 3, seed=400 + i)
        write_field_png(scans / f"P{i}" / "field.png", field, 0.25)
    (scans / "P1" / "broken.svs").write_text("not a slide\n")
    return scans


def small_tiles(out: Path, tile_px: int) -> Path:
    """A config with many tiles per slide: cells cut by tile borders, runs long enough to interrupt."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(f"tiling:\n  tile_px: {tile_px}\n")
    return config


def run_scan(scans: Path, out: Path, model: Path, *options: str, tile_px: int = 256):
    config = small_tiles(out, tile_px)
    return CliRunner().invoke(main, ["scan", str(scans), "--out", str(out), "--model", str(model), "--quiet",
                                     "--config", str(config), *options])


def test_pipelined_run_equals_the_in_process_run(batch, tmp_path, untrained_model):
    serial = run_scan(batch, tmp_path / "serial", untrained_model, "--tile-workers", "0")
    piped = run_scan(batch, tmp_path / "piped", untrained_model, "--tile-workers", "2")
    assert serial.exit_code == piped.exit_code == 1  # the broken file fails, the rest completes
    expected, got = comparable_tables(tmp_path / "serial"), comparable_tables(tmp_path / "piped")
    for name in expected:
        pd.testing.assert_frame_equal(got[name], expected[name], check_exact=False, atol=1e-3)
    assert len(got["cells.csv"]) >= 30
    assert got["scans.csv"].set_index("scan").at["P1/slide.tif", "tiles_read"] > 20
    assert list(got["failures.csv"].scan) == ["P1/broken.svs"]
    run = (tmp_path / "piped" / "run.json").read_text()
    assert '"engine": "pipelined"' in run and '"tile_workers": 2' in run
    run_timings(tmp_path / "serial")
    run_timings(tmp_path / "piped")


def test_crop_buffer_fills_batches_across_scans_in_arrival_order():
    a, b = _ScanState(0, None), _ScanState(1, None)
    buffer = _CropBuffer()
    buffer.add(a, np.zeros((5, 2, 2, 3), np.uint8))
    buffer.add(b, np.ones((4, 2, 2, 3), np.uint8))
    taken = buffer.take(7)
    assert [(s.index, len(c)) for s, c in taken] == [(0, 5), (1, 2)]
    assert buffer.size == 2 and a.unclassified == 5 and b.unclassified == 4
    buffer.drop(b)
    assert buffer.size == 0 and b.unclassified == 0 and buffer.take(3) == []


def test_pipeline_settings_default_to_the_cores_available():
    params = PipelineParams()
    assert params.worker_count() >= 1
    assert params.window() == 4 * params.worker_count()
    assert PipelineParams(workers=0).worker_count() == 0
    with pytest.raises(ValueError):
        PipelineParams(scans_in_flight=0)


def scan_process(scans: Path, out: Path, model: Path) -> subprocess.Popen:
    config = small_tiles(out, 128)
    return subprocess.Popen([sys.executable, "-m", "bcscan.cli", "scan", str(scans), "--out", str(out),
                             "--model", str(model), "--quiet", "--force", "--config", str(config),
                             "--tile-workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tile_workers(proc: subprocess.Popen, timeout: float = 60.0) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        children = [c for c in psutil.Process(proc.pid).children(recursive=True)
                    if "spawn_main" in " ".join(c.cmdline())]
        if len(children) >= 2:
            return children
        time.sleep(0.05)
    raise AssertionError("no tile worker processes appeared")


def test_a_tile_worker_that_dies_does_not_lose_any_scan(batch, tmp_path, untrained_model):
    reference = run_scan(batch, tmp_path / "reference", untrained_model, "--tile-workers", "0", tile_px=128)
    assert reference.exit_code == 1
    proc = scan_process(batch, tmp_path / "out", untrained_model)
    tile_workers(proc)[0].send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr  # only the broken file fails
    assert "tile worker process died" in (tmp_path / "out" / "bcscan.log").read_text()
    expected, got = comparable_tables(tmp_path / "reference"), comparable_tables(tmp_path / "out")
    for name in expected:
        pd.testing.assert_frame_equal(got[name], expected[name], check_exact=False, atol=1e-3)


def test_killing_a_pipelined_run_leaves_no_worker_behind(batch, tmp_path, untrained_model):
    proc = scan_process(batch, tmp_path / "out", untrained_model)
    workers = tile_workers(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert alive == []


def test_a_store_that_fails_stops_the_pipelined_run_as_the_in_process_one(batch, tmp_path, untrained_model,
                                                                          monkeypatch):
    """The pipelined run stores finished scans on a writer thread; a full disk must still stop it, in one line
    naming the error, and keep what was stored before."""
    import errno

    from bcscan.batch.store import ResultStore

    save, saved = ResultStore.save, []

    def disk_full_at_the_second_scan(self, key, meta, result):
        saved.append(key)
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.dir / key))
        return save(self, key, meta, result)

    monkeypatch.setattr(ResultStore, "save", disk_full_at_the_second_scan)
    for workers in ("0", "2"):
        saved.clear()
        result = run_scan(batch, tmp_path / f"workers-{workers}", untrained_model, "--tile-workers", workers)
        assert result.exit_code == ExitCode.CANNOT_RUN, workers
        assert "cannot write the results (No space left on device)" in result.output.splitlines()[-1], workers
        stored = tmp_path / f"workers-{workers}" / ".bcscan" / "scans" / f"{saved[0]}.json"
        assert stored.is_file(), workers
