"""What a batch keeps in `OUT_DIR/.bcscan/`: the run lock and the per-scan results.

Per-scan results are keyed by the scan's content hash, the model's hash and the
effective configuration, so a rerun after a crash reuses every scan already done and
never counts a cell twice.  A result stored before the excluded tiles were kept (no
`<key>.excluded.csv`) is still reused as it is: its counts are the same, only the
report's overlay of the tiles not counted is missing.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bcscan.results.tables import atomic_write_csv, atomic_write_json
from bcscan.scan.pipeline import CELL_RESULT_COLUMNS, EXCLUDED_TILE_RESULT_COLUMNS, ScanCells

STATE_DIR = ".bcscan"


def content_sha256(path: Path) -> str:
    """Hash of a scan's bytes; a DICOM series folder hashes its files in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


class RunLock:
    """An advisory lock in OUT_DIR: the kernel drops it when its process dies, so a killed run
    never blocks the next night."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / STATE_DIR / "lock"
        self.fh = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            self.fh = None
            return False
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return True

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


@dataclass
class StoredScan:
    meta: dict[str, Any]                  # the scan's scans.csv row
    cells: pd.DataFrame                   # CELL_RESULT_COLUMNS (empty for a failed scan)
    excluded_tiles: pd.DataFrame | None   # EXCLUDED_TILE_RESULT_COLUMNS; None: not kept (failed, or an older bcscan)


class ResultStore:
    """Per-scan results: `<key>.cells.csv` and `<key>.excluded.csv`, then `<key>.json` (written
    last: its presence marks the result complete)."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir) / STATE_DIR / "scans"

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return self.dir / f"{key}.cells.csv", self.dir / f"{key}.excluded.csv", self.dir / f"{key}.json"

    def load(self, key: str) -> StoredScan | None:
        cells_path, excluded_path, meta_path = self._paths(key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            ok = meta.get("status") == "ok"
            cells = pd.read_csv(cells_path) if ok else pd.DataFrame()
            excluded = pd.read_csv(excluded_path) if ok and excluded_path.is_file() else None
        except (OSError, ValueError):
            return None
        return StoredScan(meta, cells, excluded)

    def save(self, key: str, meta: dict[str, Any], result: ScanCells | None) -> None:
        """A scan's row and, when it was read (`result`), its cells and excluded tiles."""
        cells_path, excluded_path, meta_path = self._paths(key)
        if result is not None:
            atomic_write_csv(cells_path, result.cells, CELL_RESULT_COLUMNS)
            atomic_write_csv(excluded_path, result.excluded_tiles, EXCLUDED_TILE_RESULT_COLUMNS)
        atomic_write_json(meta_path, meta)


def remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files of a killed run (never under a final name): safe to delete under the lock."""
    for tmp in Path(out_dir).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
