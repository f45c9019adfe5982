"""The validated range stored with a model: how the training cells look, per training lab
(`bcscan.model.domain`), fitted on the training split's images."""
from __future__ import annotations

from typing import Any

import numpy as np

from bcscan.model.domain import distances, fit_reference
from bcscan.scan.appearance import crop_appearance
from bcscan.training.samples import Samples


def image_appearance(samples: Samples, images: np.ndarray) -> np.ndarray:
    """Per image (of `images`, each with at least one cell): the median appearance of its cells,
    as a scan's figures are the median over its cells."""
    per_cell = crop_appearance(samples.x)
    return np.array([np.median(per_cell[samples.image == i], axis=0) for i in images]).reshape(len(images), -1)


def images_with_cells(samples: Samples, split_img: np.ndarray, split: str) -> np.ndarray:
    return np.nonzero((split_img == split) & (samples.n_cells > 0))[0]


def fit_domain(samples: Samples, split_img: np.ndarray) -> dict[str, Any]:
    """The reference for the model's metadata, from the training images; with the fraction of the
    validation images it would call outside (should be small: they come from the same labs)."""
    train_images = images_with_cells(samples, split_img, "train")
    labs = [samples.sources[samples.source[i]].dataset_name for i in train_images]
    reference = fit_reference(image_appearance(samples, train_images), labs)
    val_images = images_with_cells(samples, split_img, "val")
    if reference and len(val_images):
        outside = distances(reference, image_appearance(samples, val_images)) > reference["threshold"]
        reference["validation_images_outside"] = round(float(outside.mean()), 4)
    return reference
