"""The `bcscan` command line: thin Click commands over the batch, reports and training."""
from bcscan.cli.main import main

__all__ = ["main"]
