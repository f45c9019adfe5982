"""Fine-tuning on a lab's verified cells (`bcscan train VERIFIED --config <finetune recipe> --init-model M
--replay-data D`): the replayed images keep the init model's split, part of the verified cells is held back,
a model that does worse on them is not written, and the lab joins the domain reference.

Synthetic data (tests/test_training.py's generator): the init model learns `lab` (big nuclei leukemic,
small normal); the "hospital" has single-cell images of its own stain, as `bcscan review --export-training`
writes them.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import yaml
from click.testing import CliRunner
from test_training import synthetic_field, write_config, write_dataset

from bcscan.cli.train import train_command
from bcscan.errors import ExitCode
from bcscan.training.finetune import verified_cell_name

HOSPITAL_MPP = 0.4


def write_verified(root: Path, per_label: int = 20) -> Path:
    """An --export-training folder: blast (big nucleus) and lymphocyte (small) single-cell images, bluer stain;
    two cells of each scan (patient), as the exporter names them."""
    rng = np.random.default_rng(7)
    lines = []
    for label, cls, nucleus in (("blast", "leukemic", 5.0), ("lymphocyte", "normal", 3.0)):
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            field = synthetic_field(rng, size=90, mpp=HOSPITAL_MPP, n_wbc=1, nucleus_um=nucleus, tint=(-25, 0, 15))
            cv2.imwrite(str(root / label / verified_cell_name(f"{label}-scan{i // 2}", i % 2 + 1)), field[..., ::-1])
        lines.append({"path": label, "label": cls, "mpp": HOSPITAL_MPP, "dataset": "local-verified",
                      "single_cell": True})
    (root / "sources.yaml").write_text(yaml.safe_dump({"sources": lines}), encoding="utf-8")
    (root / "SOURCE.txt").write_text("DATASET: Verified with bcscan review at a test hospital.\n"
                                     "LICENCE: internal\n", encoding="utf-8")
    return root


def finetune_recipe(path: Path, **finetune) -> Path:
    """The tiny training recipe of test_training, as a fine-tuning recipe: no sources, a `finetune` section."""
    write_config(path, name="tiny-local", training={"epochs": 2, "batch_size": 8, "jit_compile": False,
                                                    "learning_rate": 1e-4},
                 finetune={"replay_per_source": 5, **finetune})
    recipe = yaml.safe_load(path.read_text())
    del recipe["sources"]
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def splits(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {r["file"]: r["split"] for r in csv.DictReader(fh)}


def test_finetune_keeps_the_replayed_split_holds_back_verified_cells_and_refuses_a_worse_model(tmp_path):
    data, work = write_dataset(tmp_path / "data"), tmp_path / "work"
    base = tmp_path / "base"
    trained = CliRunner().invoke(train_command, [str(data), "--config", str(write_config(tmp_path / "tiny.yaml")),
                                                 "--out", str(base), "--work", str(work)])
    assert trained.exit_code in (0, ExitCode.DID_NOT_LEARN), trained.output
    init = base / "tiny.keras"
    verified = write_verified(tmp_path / "verified")

    def finetune(recipe: Path, out: Path, replay: Path = data):
        return CliRunner().invoke(train_command, [str(verified), "--config", str(recipe), "--out", str(out),
                                                  "--init-model", str(init), "--replay-data", str(replay),
                                                  "--work", str(work)])

    # min_gain -1: written whatever the held-back cells say, so the outputs can be checked
    out = tmp_path / "local"
    result = finetune(finetune_recipe(tmp_path / "ft.yaml", min_gain=-1.0), out)
    assert result.exit_code in (0, ExitCode.DID_NOT_LEARN), result.output
    metrics = json.loads((out / "tiny-local" / "metrics.json").read_text())
    ft = metrics["finetune"]
    # the replayed images: every one in the split the init model's run gave it; 5 training images per source
    before, after = splits(base / "tiny" / "splits.csv"), splits(out / "tiny-local" / "splits.csv")
    assert {f: after[f] for f in before} == before
    assert ft["replay"]["sources"] == 2
    replay_train_cells = ft["replay"]["train_samples"]
    assert 0 < replay_train_cells <= 2 * 5 * 4       # synthetic fields hold about 2 cells each
    # the verified images: 0.6 / 0.15 / 0.25 of each folder, a scan's cells in one split (a patient is trained on
    # or held back, never both); the held-back ones judge both models
    mine = {f: s for f, s in after.items() if f not in before}
    assert len(mine) == 40
    by_scan = {}
    for f, split in mine.items():
        by_scan.setdefault(Path(f).name.split("-cell")[0], set()).add(split)
    assert len(by_scan) == 20 and all(len(splits) == 1 for splits in by_scan.values())
    held = [f for f, split in mine.items() if split == "test"]
    assert len(held) == 12 and sum(f.startswith("blast/") for f in held) == 6   # 3 of each folder's 10 scans
    verdict = ft["verdict"]
    assert verdict["cells"] == 12 and verdict["blasts"] == 6
    for model in ("init_model", "new_model"):
        assert 0 <= verdict[model]["balanced_accuracy"] <= 1
    assert verdict["written"] and (out / "tiny-local.keras").is_file()
    # the hospital's cells are a lab of the new model's domain reference; the card says what happened
    info = json.loads((out / "tiny-local.json").read_text())
    assert set(info["domain"]["labs"]) == {"lab", "local-verified"}
    card = (out / "tiny-local.md").read_text()
    assert f"fine-tuned from `{init}`" in card and "held-back verified cells (6 blasts)" in card
    assert "- `local-verified`: Verified with bcscan review at a test hospital. Licence: internal" in card

    # a gain nobody can reach: the report is written, the model is not, exit 5
    out = tmp_path / "refused"
    result = finetune(finetune_recipe(tmp_path / "strict.yaml", min_gain=1.0), out)
    assert result.exit_code == ExitCode.NOT_BETTER, result.output
    assert "held-back verified cells" in result.output and "model not written" in result.output
    assert (out / "tiny-local" / "metrics.json").is_file() and not (out / "tiny-local.keras").exists()

    # replay data that differ from what the model was trained on (an image gone) would move its test images
    fewer = tmp_path / "fewer"
    for f in before:
        if not f.endswith("/000.png"):
            (fewer / f).parent.mkdir(parents=True, exist_ok=True)
            (fewer / f).write_bytes((data / f).read_bytes())
    result = finetune(tmp_path / "ft.yaml", tmp_path / "o", replay=fewer)
    assert result.exit_code == ExitCode.CANNOT_RUN and "leak its training images" in result.output


def test_finetune_recipe_needs_its_model_and_replay_data(tmp_path):
    verified = write_verified(tmp_path / "verified", per_label=2)
    recipe = finetune_recipe(tmp_path / "ft.yaml")
    result = CliRunner().invoke(train_command, [str(verified), "--config", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "needs --init-model" in result.output and "Traceback" not in result.output
    ordinary = write_config(tmp_path / "tiny.yaml")
    result = CliRunner().invoke(train_command, [str(verified), "--config", str(ordinary), "--out", str(tmp_path / "o"),
                                                "--replay-data", str(tmp_path)])
    assert result.exit_code == ExitCode.CANNOT_RUN and "not a fine-tuning recipe" in result.output
