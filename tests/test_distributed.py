"""The Dask executor: the night's batch over a real Dask cluster (worker processes, not threads)
gives exactly the single-process outputs, survives a worker killed mid-scan without counting a
cell twice, and never imports Dask where it is not asked for."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import TABLES, comparable_tables, run_timings

from bcscan.batch.executors import InProcessExecutor
from bcscan.batch.outline import run_batch
from bcscan.batch.plan import BatchRun
from bcscan.batch.settings import load_settings
from bcscan.testing.synthetic import write_batch

distributed = pytest.importorskip("distributed", reason="needs the optional extra: pip install 'bcscan[distributed]'")

def make_batch(root: Path, n_slides: int = 2, n_fields: int = 2, slide_size=(2200, 1700)) -> Path:
    """Pyramidal TIFF slides and field PNGs for a few patients, plus one bad file."""
    return write_batch(root / "scans", n_slides, n_fields, slide_size=slide_size, wbc_per_slide=15, seed=300)


def assert_same_tables(out_dir: Path, expected: dict[str, pd.DataFrame]) -> None:
    got = comparable_tables(out_dir)
    for name in TABLES:
        pd.testing.assert_frame_equal(got[name], expected[name], obj=name)
    cells = got["cells.csv"]
    assert not cells.duplicated(["scan", "cell_id"]).any()
    assert len(cells) == expected["scans.csv"]["n_cells"].sum()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return make_batch(tmp_path_factory.mktemp("dask"))


@pytest.fixture(scope="module")
def settings(untrained_model):
    return load_settings(None, {"classification": {"model": str(untrained_model)}})


@pytest.fixture(scope="module")
def reference(batch, settings, tmp_path_factory):
    """The single-process run that every distributed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = run_batch(BatchRun(batch, out, settings), InProcessExecutor())
    assert result.n_scans == 5 and result.n_failed == 1 and result.n_cells > 30
    return comparable_tables(out)


def test_local_cluster_of_two_worker_processes_gives_the_single_process_outputs(batch, settings, reference, tmp_path,
                                                                                monkeypatch, caplog):
    """... also when its worker processes are slow to exit at the end (a loaded machine)."""
    from bcscan.batch.executors.dask_cluster import DaskExecutor

    close = distributed.LocalCluster.close

    def slow_to_exit(cluster, *args, **kwargs):
        close(cluster, *args, **kwargs)
        raise TimeoutError()

    monkeypatch.setattr(distributed.LocalCluster, "close", slow_to_exit)
    done = []
    result = run_batch(BatchRun(batch, tmp_path / "out", settings, progress=done.append, argv=["test"]),
                       DaskExecutor(workers=2))
    assert (result.exit_code, result.n_scans, result.n_failed) == (1, 5, 1)
    assert sum(done) == 5
    assert_same_tables(tmp_path / "out", reference)
    assert pd.read_csv(tmp_path / "out" / "failures.csv")["scan"].tolist() == ["P0/broken.svs"]
    executor = json.loads((tmp_path / "out" / "run.json").read_text())["executor"]
    assert executor["scheduler"] == "LocalCluster" and executor["workers"] == 2
    assert len(executor["scans"]) == 5 and all(w.startswith("tcp://") for w in executor["scans"].values())
    assert json.loads((tmp_path / "out" / "run.json").read_text())["device"].startswith("cpu/")
    assert run_timings(tmp_path / "out")["model_load_s"] > 0  # fresh worker processes loaded the model
    assert "worker processes slow to exit (timeout); results are complete" in caplog.text


def test_worker_killed_mid_scan_is_retried_elsewhere_and_counted_once(batch, settings, reference, tmp_path):
    """Our own cluster (2 worker processes, each advertising one 'GPU' resource so the resource
    path is exercised), joined through --scheduler; SIGKILL to the worker executing a scan."""
    from bcscan.batch.executors.dask_cluster import DaskExecutor, close_local_cluster

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       resources={"GPU": 1})
    killed: dict[str, object] = {}
    from bcscan.scan.reading import find_scans

    slide_indices = {i for i, p in enumerate(find_scans(batch)) if p.suffix == ".tif"}
    stop = threading.Event()

    store = tmp_path / "out" / ".bcscan" / "scans"

    def executing_slides(watcher) -> dict[str, str]:
        running = watcher.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
        return {w: k for w, keys in running.items() for k in keys if k.startswith("bcscan-scan-")
                and int(k.split("-")[2]) in slide_indices}

    def kill_a_busy_worker():
        """Once some scan is finished (TensorFlow and the model are loaded, work is under way), SIGKILL
        the worker process that has been computing a slide for half a second and still is."""
        with distributed.Client(cluster.scheduler_address, set_as_default=False) as watcher:
            while not stop.is_set():
                busy = executing_slides(watcher) if list(store.glob("*.json")) else {}
                if busy:
                    time.sleep(0.5)
                    still = executing_slides(watcher)
                    worker = next((w for w, k in sorted(busy.items()) if still.get(w) == k), None)
                    if worker is not None:
                        pid = watcher.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed.update(worker=worker, pid=pid, key=busy[worker],
                                      stored_before=len(list(store.glob("*.json"))))
                        return
                time.sleep(0.1)

    watcher = threading.Thread(target=kill_a_busy_worker, daemon=True)
    watcher.start()
    try:
        result = run_batch(BatchRun(batch, tmp_path / "out", settings), DaskExecutor(scheduler=cluster.scheduler_address))
        stop.set()
        watcher.join(timeout=30)
        first = {name: (tmp_path / "out" / name).read_text() for name in ("cells.csv", "patients.csv")}
        run_json = json.loads((tmp_path / "out" / "run.json").read_text())
        # a rerun reuses every stored result (no task is sent) and rewrites identical tables
        rerun = run_batch(BatchRun(batch, tmp_path / "out", settings), DaskExecutor(scheduler=cluster.scheduler_address))
        assert rerun.n_cells == result.n_cells
        assert {name: (tmp_path / "out" / name).read_text() for name in first} == first
    finally:
        stop.set()
        watcher.join(timeout=30)
        close_local_cluster(cluster)  # tolerates worker processes slow to exit on a loaded machine

    assert killed, "no slide was seen executing on a worker"
    print("killed:", killed)
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # that worker process is really gone
    assert (result.exit_code, result.n_scans, result.n_failed) == (1, 5, 1)
    assert_same_tables(tmp_path / "out", reference)
    index = int(killed["key"].split("-")[2])
    killed_scan = run_json["inputs"][index]["scan"]
    # the killed scan was finished by another worker process
    assert run_json["executor"]["scans"][killed_scan] != killed["worker"]
    assert run_json["executor"]["gpu_workers"] == 2
    assert len(list(store.glob("*.json"))) == 5  # four results + the bad scan's failure, each once


def test_workers_that_do_not_see_the_shared_paths_are_refused(tmp_path):
    from bcscan.batch.executors.dask_cluster import check_worker

    probe = tmp_path / "probe"
    probe.write_text("client-token")
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    import bcscan

    ok = check_worker(str(tmp_path), str(tmp_path), str(model), str(probe), "client-token", None, bcscan.__version__)
    assert ok == ""
    bad = check_worker(str(tmp_path / "nope"), str(tmp_path), str(tmp_path / "none.keras"), str(tmp_path / "other"),
                       "client-token", None, "0.0.0")
    assert "SCAN_DIR" in bad and "OUT_DIR" in bad and "model" in bad and "0.0.0" in bad


def test_unreachable_scheduler_and_bad_options_cannot_run(batch, settings, tmp_path, monkeypatch):
    import bcscan.batch.executors.dask_cluster as bd
    from bcscan.errors import ConfigError

    monkeypatch.setattr(bd, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        run_batch(BatchRun(batch, tmp_path / "o", settings), bd.DaskExecutor(scheduler="tcp://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="exclude each other"):
        bd.DaskExecutor(scheduler="tcp://127.0.0.1:9", workers=2)


def test_dask_is_not_imported_unless_asked_for():
    code = ("import sys, bcscan.cli, bcscan.batch.outline, bcscan.batch.executors; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


CLIENT = """
import sys
from pathlib import Path
from bcscan.batch.executors.dask_cluster import DaskExecutor
from bcscan.batch.outline import run_batch
from bcscan.batch.plan import BatchRun
from bcscan.batch.settings import load_settings

if __name__ == "__main__":
    scans, out, model = map(Path, sys.argv[1:4])
    settings = load_settings(None, {"classification": {"model": str(model)}})
    run_batch(BatchRun(scans, out, settings), DaskExecutor(workers=2))
"""


@pytest.mark.slow
def test_client_killed_mid_batch_leaves_no_workers_and_the_rerun_completes_it(batch, settings, reference, tmp_path,
                                                                            untrained_model):
    """SIGKILL to the client (the process cron started) while its local cluster works: its worker
    processes go away with it, and the next run reuses what was stored and finishes identically."""
    import psutil

    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = tmp_path / "out"
    args = [sys.executable, str(script), str(batch), str(out), str(untrained_model)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / ".bcscan" / "scans"
    deadline = time.monotonic() + 240
    while not len(list(store.glob("*.json"))) >= 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the batch finished before it could be killed"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the worker processes (and multiprocessing helpers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, f"worker processes outlived their killed client: {alive}"
    assert not (out / "cells.csv").exists()

    assert subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    assert_same_tables(out, reference)
