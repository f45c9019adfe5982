"""The same night's batch, shared out over a Dask cluster: one task per scan.

`DaskExecutor` executes a batch's scans (the outline, `outline.run_batch`, plans before and
collects after, as for every executor) by handing each scan to a Dask worker:

- `workers=N` starts a `distributed.LocalCluster` of N single-threaded worker processes on this
  machine (and closes it at the end);
- `scheduler="tcp://HOST:8786"` (or the path of a scheduler JSON file written by
  `dask scheduler --scheduler-file`) connects to a cluster that is already running, e.g. workers
  on several GPU nodes or submitted to Slurm/PBS by dask-jobqueue.

Workers run `scans.process_scan`, which writes each scan's result under
`OUT_DIR/.bcscan/scans/<key>` atomically (cells first, the json that marks it complete last)
and keeps one loaded model per worker process.  The client then rebuilds every table, GeoJSON,
`run.json` and report from those stored results, exactly as the single-machine run does.  A worker
killed mid-scan makes the scheduler run the task again on another worker; the result is keyed by
the scan's content, the model and the configuration, and read once per scan, so a retried
scan is never counted twice.

OUT_DIR, SCAN_DIR and the model file must be reachable under the same absolute paths on every
worker node (a shared filesystem); this is checked before any scan is sent out.

Dask is an optional dependency (`pip install 'bcscan[distributed]'`) imported only here, inside
the functions: `bcscan --help` and a plain `bcscan scan` never import it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from bcscan import __version__
from bcscan.batch.executors.base import Executor
from bcscan.batch.plan import BatchRun, ScanJob
from bcscan.batch.scans import failed_meta, loaded_classifier, model_load_seconds, one_line, process_scan
from bcscan.batch.store import STATE_DIR, ResultStore
from bcscan.errors import ConfigError
from bcscan.model.network import ModelInfo, resolve_model_path

log = logging.getLogger("bcscan")

DEFAULT_RETRIES = 2            # re-runs of a task that raised (e.g. a transient I/O error on the share)
CONNECT_TIMEOUT_S = 30         # to reach a running scheduler
WORKER_WAIT_S = 600            # for a first worker to join (Slurm jobs may wait in the queue)
RESULT_VISIBLE_WAIT_S = 60     # for results written on another node to appear (NFS attribute caches)


class DaskExecutor(Executor):
    """One Dask task per scan, on a cluster this run joins (`scheduler`) or starts (`workers`).
    Raises ConfigError (no Dask, scheduler unreachable, no worker, paths not shared) when
    nothing can run; a scan that fails, even one whose worker keeps dying, is a failed row."""
    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None, retries: int = DEFAULT_RETRIES):
        if scheduler and workers:
            raise ConfigError("--dask-scheduler and --dask-workers exclude each other "
                              "(a cluster is either joined or started)")
        if workers is not None and workers < 1:
            raise ConfigError("--dask-workers must be at least 1")
        try:
            import distributed
        except ImportError:
            raise ConfigError("--dask-scheduler/--dask-workers need Dask: pip install 'bcscan[distributed]'") from None
        self.distributed = distributed
        self.scheduler, self.workers, self.retries = scheduler, workers, retries
        self.info: dict[str, Any] = {"engine": f"dask.distributed {distributed.__version__}"}
        self.devices: list[str] = []
        self.load_seconds = 0.0

    def describe(self) -> dict[str, Any]:
        return self.info

    def device(self, run: BatchRun) -> str:
        return "+".join(self.devices) if self.devices else "not loaded in this process"

    def model_load_seconds(self, run: BatchRun, since: float) -> float:
        """The longest model load among the workers (they load in parallel, once each)."""
        return round(self.load_seconds, 2)

    def execute(self, run: BatchRun, model_info: ModelInfo, jobs: list[ScanJob], todo: list[int],
                metas: list[dict[str, Any] | None]) -> None:
        if not todo:  # every scan settled already: no cluster needed
            return
        distributed = self.distributed
        model_path = resolve_model_path(run.settings.classification.model).resolve()
        # The same classification parameters, the model by absolute path (not part of the result key).
        settings = replace(run.settings, classification=replace(run.settings.classification, model=str(model_path)))
        worker_run = replace(run, settings=settings, progress=None)  # a progress bar stays with the client
        cluster = client = None
        futures: dict[Any, int] = {}
        try:
            cluster, client = _connect(distributed, self.scheduler, self.workers)
            self.info["scheduler"] = "LocalCluster" if cluster is not None else str(self.scheduler)
            resources = _check_workers(client, run.scan_dir, run.out_dir, model_path,
                                       [jobs[i] for i in todo], self.info)
            run_token = uuid.uuid4().hex[:8]  # task keys unique per run: two runs may share one scheduler
            for i in todo:
                future = client.submit(scan_task, jobs[i], worker_run, __version__,
                                       key=f"bcscan-scan-{i:05d}-{run_token}", pure=False, retries=self.retries,
                                       resources=resources)
                futures[future] = i
            devices: set[str] = set()
            scan_workers: dict[str, str] = {}
            for future in distributed.as_completed(list(futures), loop=client.loop):
                i = futures[future]
                metas[i], answer = _outcome(distributed, future, jobs[i])
                if answer.get("worker"):
                    scan_workers[jobs[i].relative] = answer["worker"]
                if answer.get("device"):
                    devices.add(answer["device"])
                self.load_seconds = max(self.load_seconds, answer.get("model_load_s", 0.0))
                run.advance()
            self.info["scans"] = scan_workers  # which worker made each result (after any retry)
            self.info["devices"] = self.devices = sorted(devices)
        finally:
            if client is not None:
                if futures and any(metas[i] is None for i in todo):  # interrupted: leave nothing running
                    client.cancel(list(futures), force=True)
                client.close()
            if cluster is not None:
                close_local_cluster(cluster)
        _wait_until_visible(run.out_dir, jobs, metas)


def close_local_cluster(cluster) -> None:
    """Shut our local cluster down. Its worker processes get a few seconds to exit; on a loaded machine
    they can take longer, and by then every result is written, so a slow exit is a warning, not a
    failed run (the processes still end with this one)."""
    try:
        cluster.close()
    except TimeoutError as exc:
        log.warning("local Dask cluster: worker processes slow to exit (%s); results are complete",
                    one_line(str(exc)) or "timeout")


def scan_task(job: ScanJob, run: BatchRun, client_version: str) -> dict[str, Any]:
    """What a worker runs for one scan: `process_scan` with the batch's umask, its log lines
    captured for the client's log, and the worker's bcscan version checked against the client's
    (a result is keyed by the client's version, so a different one must not write it)."""
    if __version__ != client_version:
        return {"meta": failed_meta(job, "worker", f"{job.relative}: bcscan {__version__} on worker "
                                                   f"{_worker_address()}, {client_version} on the client (install "
                                                   "the same version on every node)"),
                "logs": [], "device": "", "worker": _worker_address()}
    os.umask(run.settings.batch.umask_value)  # outputs hold patient data, whichever process writes them
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    records: list[tuple[int, str]] = []
    handler = _ListHandler(records)
    bcscan_log = logging.getLogger("bcscan")
    saved_level = bcscan_log.level
    bcscan_log.addHandler(handler)
    bcscan_log.setLevel(logging.DEBUG)
    started = time.perf_counter()
    try:
        meta = process_scan(job, run)
    finally:
        bcscan_log.removeHandler(handler)
        bcscan_log.setLevel(saved_level)
    classifier = loaded_classifier(run.settings.classification)
    return {"meta": meta, "logs": records, "device": classifier.engine if classifier else "",
            "worker": _worker_address(), "model_load_s": model_load_seconds(run.settings.classification, started)}


def check_worker(scan_dir: str, out_dir: str, model_path: str, probe: str, probe_text: str,
                 sample_scan: str | None, client_version: str) -> str:
    """Run on every worker before any scan is sent: '' when this worker sees what the client sees."""
    problems = []
    if __version__ != client_version:
        problems.append(f"bcscan {__version__} here, {client_version} on the client")
    if not Path(scan_dir).is_dir():
        problems.append(f"SCAN_DIR {scan_dir} not found")
    elif sample_scan and not Path(sample_scan).exists():
        problems.append(f"SCAN_DIR {scan_dir} is not the client's (a scan is missing)")
    try:
        if Path(probe).read_text() != probe_text:
            problems.append(f"OUT_DIR {out_dir} is not the client's")
    except OSError:
        problems.append(f"OUT_DIR {out_dir} is not shared with the client")
    if not os.access(Path(probe).parent, os.W_OK):
        problems.append(f"OUT_DIR {out_dir} is not writable")
    if not Path(model_path).is_file():
        problems.append(f"model {model_path} not found")
    return "; ".join(problems)


def _connect(distributed, scheduler: str | None, workers: int | None):
    if scheduler is None:
        n = workers or max(1, (os.cpu_count() or 1) // 2)
        log.info("starting a local Dask cluster of %d worker process(es)", n)
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
        try:
            return cluster, distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
    try:
        if Path(scheduler).suffix == ".json" or Path(scheduler).is_file():
            client = distributed.Client(scheduler_file=scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        else:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler {scheduler}: {one_line(str(exc)) or type(exc).__name__}") \
            from None
    log.info("connected to the Dask scheduler %s", client.scheduler.address)
    return None, client


def _check_workers(client, scan_dir: Path, out_dir: Path, model_path: Path, jobs: list[ScanJob],
                   executor: dict[str, Any]) -> dict[str, float] | None:
    """Every connected worker must see SCAN_DIR, OUT_DIR and the model as the client does.
    Returns the resources each task asks for: one GPU when the cluster has GPU workers."""
    if not _workers_info(client):
        log.info("waiting up to %d s for a first Dask worker", WORKER_WAIT_S)
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise ConfigError(f"no Dask worker joined the scheduler within {WORKER_WAIT_S} s") from None
    probe = out_dir / STATE_DIR / f"dask-probe-{uuid.uuid4().hex}"
    probe_text = f"{os.uname().nodename} {os.getpid()} {time.time()}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(probe_text)
    sample = next((str(j.path) for j in jobs if j.outcome is None), None)
    try:
        answers = client.run(check_worker, str(scan_dir), str(out_dir), str(model_path), str(probe), probe_text,
                             sample, __version__)
    except Exception as exc:  # noqa: BLE001 - e.g. bcscan not installed in a worker's environment
        raise ConfigError(f"a Dask worker cannot run bcscan ({type(exc).__name__}: {one_line(str(exc))[:200]}): "
                          "install the same bcscan version on every node") from None
    finally:
        probe.unlink(missing_ok=True)
    bad = {worker: problem for worker, problem in answers.items() if problem}
    if bad:
        raise ConfigError("Dask workers cannot run this batch (SCAN_DIR, OUT_DIR and the model must be the same "
                          "paths on a filesystem shared by every node): "
                          + "; ".join(f"{w}: {p}" for w, p in sorted(bad.items())))
    info = _workers_info(client)
    n_gpu = sum(1 for w in info.values() if (w.get("resources") or {}).get("GPU", 0) > 0)
    executor["workers"] = len(info)
    executor["gpu_workers"] = n_gpu
    if n_gpu:
        log.info("%d Dask worker(s), %d with a GPU: scans go to the GPU workers", len(info), n_gpu)
        return {"GPU": 1}
    log.info("%d Dask worker(s), none advertising a GPU resource", len(info))
    return None


def _workers_info(client) -> dict[str, dict[str, Any]]:
    """Every connected worker (recent versions list only the first 5 unless asked for all)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025: no n_workers argument, always all workers
        return client.scheduler_info()["workers"]


def _outcome(distributed, future, job: ScanJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scan's row for scans.csv and the worker's answer (worker, device, model load time); a
    task that could not finish (its worker died too often, or it raised after its retries) is a
    failed scan, stored nowhere, so the next run tries it again."""
    try:
        answer = future.result()
    except distributed.KilledWorker as exc:
        log.error("scan %s failed at stage worker (details in failures.csv)", job.number)
        return failed_meta(job, "worker", f"{job.relative}: Dask workers died while processing it, the scan was "
                                          f"given up ({one_line(str(exc))[:200]})"), {}
    except Exception as exc:  # noqa: BLE001 - one scan must never stop the batch
        log.error("scan %s failed at stage worker (details in failures.csv)", job.number)
        return failed_meta(job, "worker", f"{job.relative}: task failed on its Dask worker: "
                                          f"{type(exc).__name__}: {one_line(str(exc))[:300]}"), {}
    for level, message in answer["logs"]:
        log.log(level, "%s [%s]", message, answer["worker"])
    return answer["meta"], answer


def _wait_until_visible(out_dir: Path, jobs: list[ScanJob], metas: list[dict[str, Any]]) -> None:
    """Results written on another node may take a moment to appear here (NFS caches); one that never
    does means OUT_DIR is not shared."""
    store = ResultStore(out_dir)
    missing = [job for job, meta in zip(jobs, metas) if meta["status"] == "ok" and job.key]
    deadline = time.monotonic() + RESULT_VISIBLE_WAIT_S
    while True:
        missing = [job for job in missing if store.load(job.key) is None]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if missing:
        raise ConfigError(f"{len(missing)} scan result(s) written by Dask workers are not visible in "
                          f"{store.dir} on this machine: OUT_DIR must be on a filesystem shared by every node")


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


class _ListHandler(logging.Handler):
    """Collects this task's log lines (only its own thread's: a worker started with several threads
    runs several tasks at once)."""

    def __init__(self, records: list[tuple[int, str]]):
        super().__init__(logging.DEBUG)
        self.records = records
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        try:
            self.records.append((record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001
            pass
