"""ReportingParams: what the reports show (gallery sizes, picture sizes, bins, fonts), and
where a `bcscan report` run takes them from."""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

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
        for name in ("gallery_suspicious", "gallery_normal", "max_scan_sections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 1 <= self.gallery_columns <= 12:
            raise ValueError("gallery_columns must be in 1..12")
        if self.crop_um is not None and not self.crop_um > 0:
            raise ValueError("crop_um must be > 0")
        if not 32 <= self.crop_px <= 512:
            raise ValueError("crop_px must be in 32..512")
        if not 128 <= self.thumbnail_px <= 8192:
            raise ValueError("thumbnail_px must be in 128..8192")
        if not 0.0 <= self.uncertain_low <= self.uncertain_high <= 1.0:
            raise ValueError("need 0 <= uncertain_low <= uncertain_high <= 1")
        if not 2 <= self.histogram_bins <= 200:
            raise ValueError("histogram_bins must be in 2..200")


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
