"""Logging for people at a terminal and for cron: human lines or one JSON object per line,
always mirrored to `OUT_DIR/bcscan.log`."""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="seconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(log_format: str = "text", quiet: bool = False, log_file: Path | None = None) -> None:
    """Console at INFO (ERROR with --quiet); the log file always at INFO in the same format."""
    root = logging.getLogger("bcscan")
    root.setLevel(logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.INFO)
    console.setFormatter(formatter)
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
