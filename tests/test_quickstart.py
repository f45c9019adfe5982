"""The README's quick start: draw the example batch, scan it with the shipped defaults and model."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import REPO

from bcscan.cli.main import main
from bcscan.model.classifier import ClassificationParams
from bcscan.model.network import resolve_model_path


def test_examples_scan_with_shipped_defaults(tmp_path):
    model = resolve_model_path(ClassificationParams().model)
    if not model.is_file():
        pytest.fail(f"the shipped model {model} is missing: `bcscan scan` has no default model")
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "examples" / "make_examples.py"), "--out", str(data)], check=True,
                   capture_output=True)
    result = CliRunner().invoke(main, ["scan", str(data), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    patients = pd.read_csv(tmp_path / "out" / "patients.csv").set_index("patient_id")
    assert patients["n_cells"].to_dict() == {"PAT-001": 43, "PAT-002": 25, "PAT-003": 2}
    assert (tmp_path / "out" / "reports" / "PAT-001.pdf").is_file()
