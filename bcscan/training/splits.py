"""Train/validation/test split by image: near-duplicate groups kept together, stratified by
source folder, seeded; class balancing of the training samples; the split list and its digest."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from bcscan.errors import TrainingError
from bcscan.model.network import CLASSES
from bcscan.training.duplicates import near_duplicate_groups
from bcscan.training.recipe import SplitParams
from bcscan.training.samples import Samples


def split_images(samples: Samples, params: SplitParams, seed: int,
                 source_params: dict[int, SplitParams] | None = None,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split name ('train'/'val'/'test') per image, near-duplicate groups kept together,
    stratified by source folder; returns (split per image, group per image).  `source_params` splits the
    named sources otherwise (a fine-tuning's verified cells); a source's split depends only on the sources
    before it, so appending sources leaves the earlier ones' split as it was.  `groups` (the group of each
    image, numbered by its first image) replaces the near-duplicate groups."""
    if groups is None:
        groups = near_duplicate_groups(samples.ahash, params.max_hamming)
    split = np.empty(len(groups), dtype=object)
    uniq = np.unique(groups)
    stratum = {g: samples.source[g] for g in uniq}  # the group's root image decides its stratum
    rng = np.random.default_rng(seed)
    for s in sorted(set(stratum.values())):
        sp = (source_params or {}).get(int(s), params)
        gs = np.array([g for g in uniq if stratum[g] == s])
        gs = gs[rng.permutation(len(gs))]
        sizes = np.array([np.sum(groups == g) for g in gs])
        total = sizes.sum()
        cum = np.cumsum(sizes)
        # at least one image in each non-empty split when the stratum is tiny
        n_test = max(sp.test * total, 1.0 if sp.test > 0 and total >= 3 else 0.0)
        n_val = max(sp.val * total, 1.0 if sp.val > 0 and total >= 3 else 0.0)
        for g, c, size in zip(gs, cum, sizes):
            before = c - size
            if before < n_test and sp.test > 0:
                name = "test"
            elif before < n_test + n_val and sp.val > 0:
                name = "val"
            else:
                name = "train"
            split[groups == g] = name
    return split, groups


def balance_indices(labels: np.ndarray, rng: np.random.Generator, how: str,
                    datasets: np.ndarray | None = None, cell_types: np.ndarray | None = None) -> np.ndarray:
    """Positions (into `labels`) of the training samples: equal counts per class.

    `undersample` draws each class down to the smallest.  `source_class` also gives every
    (dataset, class) pair an equal share of its class, so a dataset that supplies both classes
    supplies them 1:1 and cannot predict the class by its stain; a pair with fewer samples than
    its share is drawn with replacement (augmentation makes the repeats differ).  `source_type`
    also splits each pair's share equally among its cell types, so that a lab's rare normal types
    (lmu-aml-blood: 21 monocytes beside 1,017 neutrophils) weigh as much as its common one."""
    idx = np.arange(len(labels))
    if how == "none":
        return idx
    counts = [np.sum(labels == c) for c in range(len(CLASSES))]
    n = min(counts)
    if n == 0:
        raise TrainingError(f"training split has no samples of class {CLASSES[int(np.argmin(counts))]}")
    if how == "undersample":
        chosen = [rng.choice(idx[labels == c], n, replace=False) for c in range(len(CLASSES))]
        return np.sort(np.concatenate(chosen))
    if datasets is None or (how == "source_type" and cell_types is None):
        raise TrainingError(f"balance {how} needs the dataset{' and cell type' * (how == 'source_type')} of every sample")
    chosen = []
    for c in range(len(CLASSES)):
        pairs = [idx[(labels == c) & (datasets == d)] for d in np.unique(datasets[labels == c])]
        share = max(1, n // len(pairs))
        for pair in pairs:
            strata = [pair] if how == "source_class" else [pair[cell_types[pair] == t] for t in np.unique(cell_types[pair])]
            part = max(1, share // len(strata))
            chosen += [rng.choice(p, part, replace=len(p) < part) for p in strata]
    return np.sort(np.concatenate(chosen))


def epoch_draws(pool: np.ndarray, labels: np.ndarray, datasets: np.ndarray, how: str, seed: int,
                first: np.ndarray, epoch_cells: int = 0, cell_types: np.ndarray | None = None):
    """`draw(epoch)`: the training positions of each epoch, `first` at epoch 0 and then a fresh balanced
    draw from the whole training `pool` (positions into `labels`).  A single draw leaves most of a large
    (dataset, class) pair unused for the whole run: in the ghaderzadeh-left-out fold of the cross-lab
    recipe, 1,280 of about 4,000 training cells.  `epoch_cells` > 0 cuts each epoch's draw to that many
    cells, so that validation, early stopping and the learning-rate plateau act every few minutes."""
    def balanced(epoch: int) -> np.ndarray:
        if epoch == 0:
            return first
        return pool[balance_indices(labels[pool], np.random.default_rng([seed, epoch]), how, datasets[pool],
                                    None if cell_types is None else cell_types[pool])]

    def draw(epoch: int) -> np.ndarray:
        chosen = balanced(epoch)
        if 0 < epoch_cells < len(chosen):  # a uniform subset of a balanced draw stays balanced on average
            chosen = np.sort(np.random.default_rng([seed, epoch, 1]).choice(chosen, epoch_cells, replace=False))
        return chosen

    return draw


def split_digest(files: list[str], split_img: np.ndarray) -> str:
    """SHA-256 of the split itself (file and split name per image): a model continued with
    `--init-model` must have been trained on exactly this split."""
    return hashlib.sha256("\n".join(f"{file}\t{split}" for file, split in zip(files, split_img)).encode()).hexdigest()


def write_splits_csv(path: Path, samples: Samples, split_img, groups) -> None:
    """splits.csv: file, source folder, label, split, near-duplicate group and cell count per image."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "source", "label", "split", "group", "n_cells"])
        for i, f in enumerate(samples.files):
            src = samples.sources[samples.source[i]]
            w.writerow([f, src.path, src.label, split_img[i], int(groups[i]), int(samples.n_cells[i])])
