"""The package's imports only go downward (.ci/check_imports.py), and the check catches what it
is there to catch."""
from __future__ import annotations

import shutil
import subprocess
import sys

from helpers import REPO

CHECK = REPO / ".ci" / "check_imports.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True)


def test_no_import_cycle_and_no_upward_import():
    result = run_check()
    assert result.returncode == 0, result.stdout
    assert "OK: no import cycle, no upward import" in result.stdout


def test_the_check_reports_an_upward_import_and_a_cycle(tmp_path):
    package = tmp_path / "bcscan"
    shutil.copytree(REPO / "bcscan", package, ignore=shutil.ignore_patterns("resources", "__pycache__"))
    tiling = package / "scan" / "tiling.py"
    tiling.write_text(tiling.read_text() + "\n\ndef _planted():\n    from bcscan.cli.main import main\n")
    segmentation = package / "scan" / "segmentation.py"
    segmentation.write_text(segmentation.read_text() + "\nfrom bcscan.scan import tiling  # noqa\n")
    (package / "scan" / "tiling.py").write_text(tiling.read_text() + "\nfrom bcscan.scan import segmentation  # noqa\n")
    result = run_check(str(package))
    assert result.returncode == 1
    assert "bcscan.scan.tiling imports bcscan.cli.main: bcscan.cli is not below bcscan.scan" in result.stdout
    assert "import cycle: bcscan.scan.segmentation -> bcscan.scan.tiling -> bcscan.scan.segmentation" in result.stdout
