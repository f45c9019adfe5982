"""Cell crops of a fixed physical size, cut and resized the same way for training and scanning,
so the model sees at scan time exactly what it saw in training."""
from __future__ import annotations

import math

import numpy as np

from bcscan.scan.reading import crop_padded


def crop_side_px(crop_um: float, mpp: float) -> int:
    """Crop side in pixels at `mpp`, rounded to an even number so the centre pixel is well defined."""
    return max(2, 2 * int(math.ceil(crop_um / mpp / 2)))


def crop_cells(image: np.ndarray, centres: np.ndarray, side: int) -> np.ndarray:
    """Square `side`×`side` crops centred on each (x, y); outside the image is white glass."""
    crops = np.empty((len(centres), side, side, 3), dtype=np.uint8)
    half = side // 2
    for i, (x, y) in enumerate(np.asarray(centres, dtype=np.float64).reshape(-1, 2)):
        crops[i] = crop_padded(image, int(round(x)) - half, int(round(y)) - half, side, side)
    return crops


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 image → size×size (area averaging when shrinking); training and scanning share it."""
    import cv2

    if image.shape[0] == size and image.shape[1] == size:
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_crops(crops: np.ndarray, input_size: int) -> np.ndarray:
    """uint8 crops → uint8 input_size×input_size crops (a no-op when already at that size)."""
    if crops.shape[1:3] == (input_size, input_size):
        return crops
    out = np.empty((len(crops), input_size, input_size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        out[i] = resize_square(crop, input_size)
    return out
