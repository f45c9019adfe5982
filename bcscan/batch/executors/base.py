"""What an executor is: the part of a batch that turns planned scans into stored results."""
from __future__ import annotations

from typing import Any

from bcscan.batch.plan import BatchRun, ScanJob
from bcscan.batch.scans import loaded_classifier, model_load_seconds
from bcscan.model.network import ModelInfo


class Executor:
    """Executes the scans of a batch; `outline.run_batch` plans before and collects after, the same
    for every executor.  This base serves executors that load the model in this process."""
    name = "in-process"

    def execute(self, run: BatchRun, model_info: ModelInfo, jobs: list[ScanJob], todo: list[int],
                metas: list[dict[str, Any] | None]) -> None:
        """Fill `metas[i]` (the scans.csv row) for every index in `todo`, storing each scan's result
        and calling `run.advance()` as each scan settles.  A scan that fails is a failed row."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The executor and its settings, for run.json."""
        return {"engine": self.name}

    def device(self, run: BatchRun) -> str:
        """Where the model ran."""
        classifier = loaded_classifier(run.settings.classification)
        return classifier.engine if classifier is not None else "not loaded in this process"

    def model_load_seconds(self, run: BatchRun, since: float) -> float:
        """Seconds spent loading the model for this run (0 when it was loaded before `since`)."""
        return model_load_seconds(run.settings.classification, since)
