"""How the cells of a scan look to the model: stain colour and strength of the nuclei, colour of
the background, and sharpness, measured on the very crops the model classifies.

A model is validated only on the labs, stains and scanners it was trained and tested on.
These figures, summarised per scan (median over its cells), are compared with the training
cells' (`bcscan.model.domain`) so that a scan from outside the validated range is said to be
so instead of being counted with false confidence.
"""
from __future__ import annotations

import cv2
import numpy as np

FEATURES = ("nucleus_od_r", "nucleus_od_g", "nucleus_od_b", "background_r", "background_g", "background_b",
            "log_sharpness")
NUCLEUS_QUANTILE = 0.85     # the darkest 15 % of a crop's pixels: mostly nucleus
BACKGROUND_QUANTILE = 0.30  # the palest 30 %: glass, red cells' pallor
CHUNK = 2048


def crop_appearance(crops: np.ndarray) -> np.ndarray:
    """float32 (n, len(FEATURES)) for uint8 crops (n, S, S, 3): nucleus optical density per channel
    (stain colour and strength), background colour (0-1), log of the Laplacian energy relative to
    the crop's contrast (blur lowers it, whatever the stain strength)."""
    crops = np.asarray(crops)
    if len(crops) > CHUNK:  # bounded memory for a training set's worth of crops
        return np.concatenate([crop_appearance(crops[i:i + CHUNK]) for i in range(0, len(crops), CHUNK)])
    if len(crops) == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    x = crops.astype(np.float32)
    od = -np.log((x + 1.0) / 256.0)
    flat_od = od.reshape(len(x), -1, 3)
    total = flat_od.sum(-1)
    nucleus = total >= np.quantile(total, NUCLEUS_QUANTILE, axis=1, keepdims=True)
    background = total <= np.quantile(total, BACKGROUND_QUANTILE, axis=1, keepdims=True)
    nucleus_od = (flat_od * nucleus[..., None]).sum(1) / nucleus.sum(1, keepdims=True)
    background_rgb = (x.reshape(len(x), -1, 3) * background[..., None]).sum(1) / background.sum(1, keepdims=True) / 255
    grey = od.mean(-1)
    sharpness = np.array([np.log(np.mean(cv2.Laplacian(g, cv2.CV_32F, ksize=3) ** 2) / (g.var() + 1e-6) + 1e-6)
                          for g in grey])
    return np.column_stack([nucleus_od, background_rgb, sharpness]).astype(np.float32)


def scan_appearance(per_cell: np.ndarray) -> np.ndarray | None:
    """The scan's figures: the median over its cells (None without cells)."""
    per_cell = np.asarray(per_cell, np.float32).reshape(-1, len(FEATURES))
    return np.median(per_cell, axis=0) if len(per_cell) else None
