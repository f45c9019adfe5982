"""A run's effective configuration: one frozen dataclass per stage, read from the shipped
defaults, a --config file and command-line overrides, in that order."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bcscan import __version__
from bcscan.config import check_numbers, config_digest, default_config, load_yaml, merge, section
from bcscan.errors import ConfigError
from bcscan.model.classifier import ClassificationParams
from bcscan.results.aggregation import AggregationParams
from bcscan.results.patients import PatientParams
from bcscan.results.reports import ReportingParams
from bcscan.scan.centres import CentreParams
from bcscan.scan.platelets import PlateletParams
from bcscan.scan.quality import QualityParams
from bcscan.scan.reading import ReadingParams
from bcscan.scan.segmentation import SegmentationParams
from bcscan.scan.tiling import TilingParams


@dataclass(frozen=True)
class BatchParams:
    settle_minutes: float = 0.0  # a scan modified more recently is still being written: left for the next run
    umask: str = "077"           # octal; outputs hold patient data: by default readable by their owner only

    def __post_init__(self):
        check_numbers(self, "settle_minutes", at_least=0)
        try:
            value = int(str(self.umask), 8)
        except ValueError:
            raise ValueError(f"umask must be octal, e.g. '077' (got {self.umask!r})") from None
        if not 0 <= value <= 0o777:
            raise ValueError("umask must be between 000 and 777")

    @property
    def umask_value(self) -> int:
        return int(str(self.umask), 8)


@dataclass(frozen=True)
class PipelineParams:
    workers: int = -1          # tile worker processes; -1 = one per core but one (at least 1); 0 = no pipelining
    tiles_in_flight: int = 0   # tile tasks queued or running at once; 0 = 4 per worker
    scans_in_flight: int = 4   # scans open at once

    def __post_init__(self):
        check_numbers(self, "workers", at_least=-1)  # -1: auto, 0: no pipelining, else a number of processes
        check_numbers(self, "tiles_in_flight", at_least=0)
        check_numbers(self, "scans_in_flight", at_least=1)

    def worker_count(self) -> int:
        if self.workers >= 0:
            return self.workers
        return max(1, available_cores() - 1)

    def window(self) -> int:
        return self.tiles_in_flight or 4 * max(1, self.worker_count())


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    batch: BatchParams = field(default_factory=BatchParams)
    reading: ReadingParams = field(default_factory=ReadingParams)
    tiling: TilingParams = field(default_factory=TilingParams)
    segmentation: SegmentationParams = field(default_factory=SegmentationParams)
    quality: QualityParams = field(default_factory=QualityParams)
    platelets: PlateletParams = field(default_factory=PlateletParams)
    centres: CentreParams = field(default_factory=CentreParams)
    classification: ClassificationParams = field(default_factory=ClassificationParams)
    patients: PatientParams = field(default_factory=PatientParams)
    aggregation: AggregationParams = field(default_factory=AggregationParams)
    reporting: ReportingParams = field(default_factory=ReportingParams)
    pipeline: PipelineParams = field(default_factory=PipelineParams)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_digest(self, mpp: float | None = None) -> str:
        """What a per-scan result depends on (not patients or aggregation, which are applied later),
        including a scale forced with --mpp."""
        d = self.as_dict()
        digest = config_digest({"version": __version__, "reading": d["reading"], "tiling": d["tiling"],
                                "segmentation": d["segmentation"], "quality": d["quality"],
                                "platelets": d["platelets"], "centres": d["centres"],
                                "threshold": d["classification"]["threshold"]})
        return digest + (f"-mpp{mpp:g}" if mpp else "")


SECTIONS = {"batch": BatchParams, "reading": ReadingParams, "tiling": TilingParams, "segmentation": SegmentationParams,
            "quality": QualityParams, "platelets": PlateletParams, "centres": CentreParams,
            "classification": ClassificationParams, "patients": PatientParams, "aggregation": AggregationParams,
            "reporting": ReportingParams, "pipeline": PipelineParams}


def load_settings(config_path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Shipped defaults (configs/default.yaml) ← `config_path` ← command-line overrides."""
    data = default_config()
    if config_path is not None:
        data = merge(data, load_yaml(Path(config_path)))
    data = merge(data, overrides or {})
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)}")
    return Settings(**{name: section(cls, data.get(name), name) for name, cls in SECTIONS.items()})
