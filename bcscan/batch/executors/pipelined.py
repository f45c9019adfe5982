"""The batch as a pipeline: tiles are read, segmented and cropped in worker processes
while this process classifies the crops, so the model (the slowest stage) is kept busy.

- Worker processes (`PipelineParams.workers`) run `pipeline.plan_scan` and `pipeline.tile_cells`,
  the same code as the in-process path, and send back each tile's cells with crops already
  resized for the model.
- At most `tiles_in_flight` tile tasks are queued or running, so memory holds a bounded number
  of tiles whatever the slide size; nothing reads a whole level.
- Several scans (`scans_in_flight`) are open at once, so a small scan does not leave the model
  idle, and the classifier fills its batches with crops of whichever scans are in flight.
- Results come back in submission order, so cells are numbered exactly as in the in-process path
  and a scan's stored result is the same however it was computed.
- A finished scan's result is built and stored (written atomically, synced) on one writer thread, in order,
  while this one goes on classifying; a store that fails stops the run as it would inline.
- A scan whose tile fails becomes a failed row; the others go on.  A worker process that dies
  (e.g. a slide that crashes the reader library) breaks the pool: the scans in flight are then
  retried one at a time, and the one that kills a worker again is recorded as failed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bcscan.batch.executors.base import Executor
from bcscan.batch.plan import BatchRun, ScanJob
from bcscan.batch.scans import classifier_for, failed_meta, ok_meta, store_scan
from bcscan.batch.settings import PipelineParams
from bcscan.errors import describe_failure
from bcscan.model.network import ModelInfo
from bcscan.scan.centres import CentreParams
from bcscan.scan.pipeline import TileCells, plan_scan, scan_result, tile_cells
from bcscan.scan.platelets import PlateletParams
from bcscan.scan.quality import QualityParams
from bcscan.scan.reading import ReadingParams, open_scan
from bcscan.scan.segmentation import SegmentationParams
from bcscan.scan.tiling import Tile, TilePlan, TilingParams

log = logging.getLogger("bcscan")

OPEN_SCANS_PER_WORKER = 4


# ----------------------------------------------------------------------------- worker side

_worker: dict[str, Any] = {}


def _init_worker(parent: int, reading: ReadingParams, segmentation: SegmentationParams, tiling: TilingParams,
                 quality: QualityParams, platelets: PlateletParams, centres: CentreParams, mpp: float | None,
                 crop_um: float, input_size: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker: the classifier's threads need the rest
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker.update(reading=reading, segmentation=segmentation, tiling=tiling, quality=quality, platelets=platelets,
                   centres=centres, mpp=mpp, crop_um=crop_um, input_size=input_size, scans=OrderedDict())


def _exit_with_parent(parent: int) -> None:
    """A run killed with SIGKILL cannot stop its workers; they notice they were orphaned
    (even when that happened before they started)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _open(path: str):
    scans = _worker["scans"]
    if path in scans:
        scans.move_to_end(path)
        return scans[path]
    scan = open_scan(Path(path), _worker["reading"], mpp=_worker["mpp"])
    scans[path] = scan
    if len(scans) > OPEN_SCANS_PER_WORKER:
        scans.popitem(last=False)[1].close()
    return scan


def _failure(exc: Exception, path: str) -> tuple[str, str, str]:
    return ("error", *describe_failure(exc, path))


def _plan_task(path: str):
    try:
        scan = _open(path)
        return ("plan", plan_scan(scan, _worker["segmentation"], _worker["tiling"], _worker["crop_um"],
                                   _worker["quality"]), scan.mpp)
    except Exception as exc:  # noqa: BLE001 - reported as this scan's failure
        return _failure(exc, path)


def _tile_task(path: str, plan: TilePlan, tile: Tile):
    """`plan` without its tile list (sent once per tile: small whatever the slide size)."""
    try:
        return ("tile", tile_cells(_open(path), plan, tile, _worker["segmentation"], _worker["crop_um"],
                                   _worker["input_size"], _worker["quality"], _worker["platelets"], _worker["centres"]))
    except Exception as exc:  # noqa: BLE001
        return _failure(exc, path)


# ----------------------------------------------------------------------------- classifier side

@dataclass(eq=False)
class _ScanState:
    index: int
    job: ScanJob
    t0: float = field(default_factory=time.perf_counter)
    plan: TilePlan | None = None
    plan_head: TilePlan | None = None        # the plan without its tiles, sent with each tile task
    scan_mpp: float = 0.0
    next_tile: int = 0
    in_flight: int = 0
    tiles: list[TileCells] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    unclassified: int = 0
    error: tuple[str, str] | None = None     # (stage, message)

    def tiles_left(self) -> bool:
        return self.error is None and self.plan is not None and self.next_tile < len(self.plan.tiles)

    def done(self) -> bool:
        read_all = self.error is not None or (self.plan is not None and self.next_tile == len(self.plan.tiles))
        return read_all and self.in_flight == 0


class _CropBuffer:
    """Crops waiting for the model, in arrival order, each chunk tagged with its scan."""

    def __init__(self):
        self.chunks: deque[tuple[_ScanState, np.ndarray]] = deque()
        self.size = 0

    def add(self, state: _ScanState, crops: np.ndarray) -> None:
        self.chunks.append((state, crops))
        self.size += len(crops)
        state.unclassified += len(crops)

    def take(self, n: int) -> list[tuple[_ScanState, np.ndarray]]:
        taken, want = [], n
        while want and self.chunks:
            state, crops = self.chunks.popleft()
            if len(crops) > want:
                self.chunks.appendleft((state, crops[want:]))
                crops = crops[:want]
            taken.append((state, crops))
            want -= len(crops)
        self.size -= n - want
        return taken

    def drop(self, state: _ScanState) -> None:
        kept = deque((s, c) for s, c in self.chunks if s is not state)
        self.size = sum(len(c) for _, c in kept)
        self.chunks = kept
        state.unclassified = 0


class _Pipeline:
    def __init__(self, run: BatchRun, model_info: ModelInfo, jobs: list[ScanJob], metas: list):
        self.run_, self.model_info, self.jobs, self.metas = run, model_info, jobs, metas
        self.settings = run.settings
        self.params = run.settings.pipeline
        self.classifier = None

    def run(self, todo: deque[int], scans_in_flight: int) -> list[int]:
        """Process scans from `todo` until it is empty; returns the scans that were in flight
        when a worker process died (their partial work discarded)."""
        import multiprocessing

        executor = ProcessPoolExecutor(self.params.worker_count(), mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker,
                                       initargs=(os.getpid(), self.settings.reading, self.settings.segmentation,
                                                 self.settings.tiling, self.settings.quality,
                                                 self.settings.platelets, self.settings.centres, self.run_.mpp,
                                                 self.model_info.crop_um,
                                                 self.model_info.input_size))
        writer = ThreadPoolExecutor(1, thread_name_prefix="bcscan-store")
        stored: deque[Future] = deque()
        try:
            suspects = self._loop(executor, writer, stored, todo, scans_in_flight)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True)
        for future in stored:
            future.result()
        return suspects

    def _loop(self, executor: ProcessPoolExecutor, writer: ThreadPoolExecutor, stored: deque[Future],
              todo: deque[int], scans_in_flight: int) -> list[int]:
        """`run`'s scheduling: plan and tile tasks to the workers, their crops to the model, each finished scan
        to the writer thread (its store future appended to `stored`)."""
        active: OrderedDict[int, _ScanState] = OrderedDict()
        in_flight: deque = deque()
        buffer = _CropBuffer()
        while todo or active:
            while todo and len(active) < scans_in_flight:
                index = todo.popleft()
                state = _ScanState(index, self.jobs[index])
                active[state.index] = state
                in_flight.append((executor.submit(_plan_task, str(state.job.path)), state))
                state.in_flight += 1
            self._fill(executor, active, in_flight)
            if self.classifier is None:  # workers start reading while TensorFlow loads
                self.classifier = classifier_for(self.settings.classification)
            if in_flight:
                future, state = in_flight.popleft()
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    log.error("a tile worker process died; retrying the %d scan(s) in flight one at a time",
                              len(active))
                    return list(active)
                state.in_flight -= 1
                self._take(state, outcome, buffer)
            batch = self.classifier.batch_size
            while buffer.size >= batch:
                self._classify(buffer, batch)
            for state in [s for s in active.values() if s.done()]:
                if state.unclassified:
                    self._classify(buffer, buffer.size)
                stored.append(writer.submit(self._finish, state))
                del active[state.index]
            while stored and stored[0].done():
                stored.popleft().result()  # raises what a failed store raised
        return []

    def _fill(self, executor, active, in_flight) -> None:
        window = self.params.window()
        for state in active.values():  # oldest scan first: scans finish in order, memory stays small
            while len(in_flight) < window and state.tiles_left():
                tile = state.plan.tiles[state.next_tile]
                in_flight.append((executor.submit(_tile_task, str(state.job.path), state.plan_head, tile), state))
                state.in_flight += 1
                state.next_tile += 1

    def _take(self, state: _ScanState, outcome: tuple, buffer: _CropBuffer) -> None:
        if state.error is not None:
            return  # later tiles of a failed scan
        kind = outcome[0]
        if kind == "error":
            state.error = (outcome[1], outcome[2])
            buffer.drop(state)
        elif kind == "plan":
            state.plan, state.scan_mpp = outcome[1], outcome[2]
            state.plan_head = replace(state.plan, tiles=[], overview_excluded=[])
        else:
            found: TileCells = outcome[1]
            if len(found.crops):
                buffer.add(state, found.crops)
            state.tiles.append(found.without_crops())

    def _classify(self, buffer: _CropBuffer, n: int) -> None:
        chunks = buffer.take(n)
        if not chunks:
            return
        try:
            p = self.classifier.predict(np.concatenate([c for _, c in chunks]))
        except Exception as exc:  # noqa: BLE001 - fails the scans in this batch, not the run
            for state, _ in chunks:
                state.error = ("classify", f"{state.job.path}: classification failed ({type(exc).__name__}: {exc})")
                buffer.drop(state)
            return
        start = 0
        for state, crops in chunks:
            if state.error is None:
                state.probabilities.append(p[start:start + len(crops)])
                state.unclassified -= len(crops)
            start += len(crops)

    def _finish(self, state: _ScanState) -> None:
        job = state.job
        if state.error is not None:
            meta, result = failed_meta(job, *state.error), None
        else:
            p = np.concatenate(state.probabilities) if state.probabilities else np.zeros(0, np.float32)
            result = scan_result(state.plan, state.scan_mpp, state.tiles, p, self.settings.classification.threshold)
            meta = ok_meta(job, result, self.model_info, self.run_)
        self.metas[state.index] = store_scan(job, self.run_, meta, result, state.t0)
        self.run_.advance()


class PipelinedExecutor(Executor):
    """Tiles read and segmented in local worker processes while this process classifies."""
    name = "pipelined"

    def __init__(self, params: PipelineParams):
        self.params = params

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "tile_workers": self.params.worker_count(),
                "tiles_in_flight": self.params.window(), "scans_in_flight": self.params.scans_in_flight}

    def execute(self, run: BatchRun, model_info: ModelInfo, jobs: list[ScanJob], todo: list[int],
                metas: list[dict[str, Any] | None]) -> None:
        pipeline = _Pipeline(run, model_info, jobs, metas)
        queue: deque[int] = deque(todo)
        suspects: list[int] = []
        while queue:
            suspects += pipeline.run(queue, self.params.scans_in_flight)
        for index in suspects:  # alone, a scan that kills a worker again is the culprit
            if pipeline.run(deque([index]), 1):
                job = jobs[index]
                metas[index] = store_scan(job, run, failed_meta(
                    job, "read", f"{job.relative}: a worker process died reading or segmenting this scan "
                                 "(a crash in the slide reader?)"), None, time.perf_counter())
                run.advance()
