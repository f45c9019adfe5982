"""A lab's own verified cells teaching a trained model (issue 25):
`bcscan train VERIFIED_DIR --config configs/finetune-local.yaml --init-model MODEL.keras --replay-data DATA_DIR`.

- Sources: the init model's own (its metadata records them), read from DATA_DIR, first and in their order;
  then the verified cells of VERIFIED_DIR/sources.yaml (`bcscan review --export-training` writes it).
- Split: the replay sources split exactly as in the init model's run (same seed and split parameters,
  checked by the digest it recorded), so none of its test images is trained on; the verified images split
  train / val / holdout (`finetune`).
- Replay: `replay_per_source` training images of each replay source and a proportional share of its
  validation images; every replay test image stays in the test split, so the card shows what the other
  labs lost or gained.
- Verdict: balanced accuracy of the init model and of the new one on the held-back verified cells; the
  new model is written only when it does at least `min_gain` better.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bcscan.config import load_yaml
from bcscan.errors import ConfigError, TrainingError
from bcscan.model.network import CLASSES, LEUKEMIC, ModelInfo
from bcscan.training.duplicates import near_duplicate_groups
from bcscan.training.metrics import metrics_block
from bcscan.training.predict import predict_probs
from bcscan.training.recipe import FinetuneParams, SourceSpec, SplitParams
from bcscan.training.samples import Samples
from bcscan.training.splits import split_digest

VERIFIED_SOURCES = "sources.yaml"
CELL_SUFFIX = "-cell"


def verified_cell_name(scan_stem: str, cell_id: int) -> str:
    """The file name of a verified cell's image (`bcscan review --export-training`): its scan and cell id."""
    return f"{scan_stem}{CELL_SUFFIX}{cell_id}.png"


def finetune_groups(samples: Samples, n_replay: int, max_hamming: int) -> np.ndarray:
    """The split groups of a fine-tuning: the replayed images' near-duplicate groups, as the init model's run
    formed them; the verified cells grouped by scan, so a patient's cells are all trained on or all held back
    (their images' hashes would join unrelated cells: a small field padded to the crop's width hashes alike)."""
    replay = np.nonzero(samples.source < n_replay)[0]
    groups = np.empty(len(samples.files), np.int64)
    groups[replay] = replay[near_duplicate_groups(samples.ahash[replay], max_hamming)]
    first: dict[str, int] = {}
    for i in np.nonzero(samples.source >= n_replay)[0]:
        scan = Path(samples.files[i]).name.rsplit(CELL_SUFFIX, 1)[0]
        groups[i] = first.setdefault(scan, int(i))
    return groups


def finetune_sources(init_model: Path, info: ModelInfo, replay_dir: Path, verified_dir: Path) -> tuple[list[dict], int]:
    """(the recipe's source lines, how many of them are replay sources)."""
    replay = []
    for line in (info.training or {}).get("sources") or []:
        if line.get("root"):
            raise TrainingError(f"{init_model}: a fine-tuned model (its sources lie in two folders); fine-tune the "
                                "model it started from, on all the verified cells")
        line = {k: v for k, v in line.items() if v not in ("", None)}
        replay.append(line | {"dataset": SourceSpec(**line).dataset_name, "root": str(replay_dir)})
    if not replay:
        raise TrainingError(f"{init_model}: its metadata records no training sources, so nothing can be replayed")
    listing = Path(verified_dir) / VERIFIED_SOURCES
    if not listing.is_file():
        raise TrainingError(f"{listing}: not found; DATA_DIR of a fine-tuning is a folder written by "
                            "`bcscan review OUT --export-training DEST`")
    try:
        verified = list(load_yaml(listing).get("sources") or [])
    except ConfigError as exc:
        raise TrainingError(str(exc)) from exc
    labels = {line.get("label") for line in verified}
    if not set(CLASSES) <= labels:
        raise TrainingError(f"{listing}: the verified cells are {sorted(map(str, labels)) or 'none'} only; judging "
                            "a fine-tuned model needs blasts and normal white cells among them")
    return replay + verified, len(replay)


def replay_digest(samples: Samples, split_img: np.ndarray, n_replay: int) -> str:
    """The split digest over the replay sources' images, to compare with the one the init model recorded."""
    mine = samples.source < n_replay
    return split_digest([f for f, m in zip(samples.files, mine) if m], split_img[mine])


def unreplayed_images(samples: Samples, split_img: np.ndarray, n_replay: int, params: FinetuneParams,
                      split: SplitParams, seed: int) -> np.ndarray:
    """Mask of the replay sources' training and validation images left out of this run (all but a seeded
    `replay_per_source` training images per source, and the same share of its validation images)."""
    rng = np.random.default_rng([seed, 25])
    n_val = max(1, round(params.replay_per_source * split.val / split.train)) if params.replay_per_source else 0
    left_out = np.zeros(len(split_img), bool)
    for source in range(n_replay):
        for name, keep in (("train", params.replay_per_source), ("val", n_val)):
            images = np.nonzero((samples.source == source) & (split_img == name))[0]
            if len(images) > keep:
                left_out[rng.choice(images, len(images) - keep, replace=False)] = True
    return left_out


def holdout_verdict(init_model: Path, model, x: np.ndarray, labels: np.ndarray, min_gain: float) -> dict[str, Any]:
    """Both models on the held-back verified cells (the 0.5 decision of each softmax, which temperature
    scaling does not move): is the new one at least `min_gain` better in balanced accuracy?"""
    from bcscan.model.network import load_keras_model

    if len(set(labels.tolist())) < len(CLASSES):
        raise TrainingError(f"the {len(labels)} held-back verified cells are all of one class; verify more blasts "
                            "and normal cells, or raise finetune.holdout")
    li = CLASSES.index(LEUKEMIC)
    before = metrics_block(labels, predict_probs(load_keras_model(init_model)[0], x)[:, li])
    after = metrics_block(labels, predict_probs(model, x)[:, li])
    return {"cells": int(len(labels)), "blasts": int(np.sum(labels == li)),
            "init_model": {k: before[k] for k in ("balanced_accuracy", "roc_auc", "per_class")},
            "new_model": {k: after[k] for k in ("balanced_accuracy", "roc_auc", "per_class")},
            "min_gain": min_gain,
            "written": bool(after["balanced_accuracy"] >= before["balanced_accuracy"] + min_gain)}
