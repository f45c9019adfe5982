"""ReportingParams: what the reports show (gallery sizes, picture sizes, bins, fonts), and
where a `bcscan report` run takes them from."""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from bcscan.config import check_numbers

log = logging.getLogger("bcscan")


@dataclass(frozen=True)
class ReportingParams:
    gallery_suspicious: int = 24      # crops of the cells with the highest p_leukemic
    gallery_normal: int = 12          # crops of a random (seeded) sample of the normal cells
    gallery_columns: int = 6
    crop_um: float | None = None      # side of a gallery crop; None = the model's crop size (else 20 µm)
    crop_px: int = 112                # gallery crop side in the PDF image, pixels
    thumbnail_px: int = 1400          # long side of a scan thumbnail, pixels
    max_scan_sections: int = 12       # scans shown with a thumbnail; more are listed in a table only
    uncertain_low: float = 0.35       # cells with p_leukemic in [low, high] are counted as "uncertain"
    uncertain_high: float = 0.65
    histogram_bins: int = 20
    sample_seed: int = 0
    fallback_font: str | None = None  # a TTF with the scripts DejaVu Sans lacks (CJK ...); None = search

    def __post_init__(self):
        check_numbers(self, "gallery_suspicious", "gallery_normal", "max_scan_sections", at_least=0)
        check_numbers(self, "gallery_columns", at_least=1, at_most=12)
        if self.crop_um is not None:
            check_numbers(self, "crop_um", above=0)
        check_numbers(self, "crop_px", at_least=32, at_most=512)
        check_numbers(self, "thumbnail_px", at_least=128, at_most=8192)
        if not 0.0 <= self.uncertain_low <= self.uncertain_high <= 1.0:
            raise ValueError("need 0 <= uncertain_low <= uncertain_high <= 1")
        check_numbers(self, "histogram_bins", at_least=2, at_most=200)


def params_from(run: dict[str, Any], override: ReportingParams | None) -> ReportingParams:
    """Explicit params, else the `reporting` section recorded in run.json, else the defaults."""
    if override is not None:
        return override
    recorded = (run.get("config") or {}).get("reporting")
    if isinstance(recorded, dict):
        known = {f.name for f in fields(ReportingParams)}
        try:
            return ReportingParams(**{k: v for k, v in recorded.items() if k in known})
        except (TypeError, ValueError):
            log.warning("run.json: unusable reporting section, using the defaults")
    return ReportingParams()
