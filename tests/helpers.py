"""Helpers shared by the tests: where the real data is (skipped where absent, a failure in CI),
and a run's output tables in a form two runs can be compared in."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHIPPED_MODEL = REPO / "models" / "bcscan-vgg16.keras"
TABLES = ("cells.csv", "scans.csv", "patients.csv", "failures.csv", "excluded_tiles.csv")
REQUIRE_SHARED_DATA = "BCSCAN_REQUIRE_SHARED_DATA"  # set by .ci/run: a missing real data set fails the test


def shared(*parts: str) -> Path:
    """A path inside ../shared/data; where it is absent the test is skipped with the reason, or fails
    when BCSCAN_REQUIRE_SHARED_DATA is set, so CI cannot go green without the real-data tests."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"shared data not available: {path} (tests that use real images need ../shared/data)"
        if os.environ.get(REQUIRE_SHARED_DATA):
            pytest.fail(f"{reason}; {REQUIRE_SHARED_DATA} is set")
        pytest.skip(reason)
    return path


def comparable_tables(out_dir: Path, names: tuple[str, ...] = TABLES) -> dict[str, pd.DataFrame]:
    """A run's tables without the columns that legitimately differ between runs (timings)."""
    return {name: pd.read_csv(Path(out_dir) / name).drop(columns=["seconds"], errors="ignore") for name in names}


def run_timings(out_dir: Path) -> dict[str, float]:
    """run.json's timings, checked to hold every figure (whichever executor ran)."""
    import json

    timings = json.loads((Path(out_dir) / "run.json").read_text(encoding="utf-8"))["timings"]
    assert set(timings) == {"plan_s", "scans_s", "model_load_s"}, timings
    assert timings["scans_s"] > 0 and timings["model_load_s"] >= 0, timings  # 0: loaded by an earlier run
    return timings
