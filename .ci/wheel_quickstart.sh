#!/usr/bin/env bash
# The README quick start from a wheel, in a fresh virtual environment outside the checkout:
# the default config and the shipped models must come with the package, from any install.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip wheel -q --no-deps "$repo" -w "$work/dist"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$work"/dist/bcscan-*.whl
cd "$work"   # nothing of the checkout on the path from here
"$work/venv/bin/python" "$repo/examples/make_examples.py" --out "$work/data"
"$work/venv/bin/bcscan" scan "$work/data" --out "$work/out" --quiet
"$work/venv/bin/python" - "$work" "$repo/models/bcscan-vgg16.json" <<'PY'
import json, sys
from pathlib import Path
work, shipped = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
run = json.loads((work / "out" / "run.json").read_text())
model = Path(run["model"]["path"])
assert str(model).startswith(str(work / "venv")), f"the scan used {model}, not the installed package's model"
assert run["model"]["sha256"] == shipped["sha256"], "the installed model is not the shipped one"
centres = Path(run["centre_model"]["path"])
assert str(centres).startswith(str(work / "venv")), f"the scan used {centres}, not the installed centre model"
assert run["counts"]["scans"] == 4 and run["counts"]["failed"] == 0, run["counts"]
print(f"wheel quick start: {run['counts']['scans']} scans, {run['counts']['cells']} cells, model {model.name} "
      f"(sha256 {run['model']['sha256'][:12]}) and {centres.name} from the installed package")
PY
