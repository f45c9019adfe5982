"""On-the-fly training augmentation (NumPy/OpenCV, any Keras backend): flips, rotation, scale/translation inside the
margin crop, colour / stain jitter, stain transfer between the samples of a batch, stain jitter in HED optical
density, blur and JPEG; seeded."""
from __future__ import annotations

import numpy as np

from bcscan.training.baselines import lab_stats, restain
from bcscan.training.recipe import AugmentParams


def hed_jitter(batch: np.ndarray, rng: np.random.Generator, scale: float, shift: float) -> np.ndarray:
    """Stain augmentation of uint8 B×H×W×3 RGB samples: colour deconvolution into haematoxylin, eosin and
    DAB optical densities (skimage's matrices and units), each multiplied by U(1-scale, 1+scale) and
    shifted by U(-shift, shift) per sample, and back to RGB.  The H&E matrix is not that of a Romanowsky
    stain; it serves as an optical-density basis in which the labs' stain strengths and glass tints
    differ.  Not skimage's rgb2hed/hed2rgb: rgb2hed clips negative densities, so their round trip
    shifts colours by ~13/255 on average even without any jitter; this one is exact."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    if len(batch) == 0:
        return batch
    log_adjust = -np.log(1e-6)  # skimage's density unit
    od = -np.log(np.maximum(batch.astype(np.float32) / 255.0, 1e-6)) / log_adjust
    hed = od @ hed_from_rgb.astype(np.float32)
    shape = (len(batch), 1, 1, 3)
    hed = hed * rng.uniform(1 - scale, 1 + scale, shape).astype(np.float32) \
        + rng.uniform(-shift, shift, shape).astype(np.float32)
    rgb = np.exp(-(hed @ rgb_from_hed.astype(np.float32)) * log_adjust)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def stain_transfer(batch: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """With probability p per sample, Reinhard colour transfer (CIELAB mean and std) to another sample of the
    batch, drawn at random: balanced batches mix the labs, so a cell is shown in the stain of the others."""
    out = batch.copy()
    for i in np.flatnonzero(rng.uniform(size=len(batch)) < p):
        j = int(rng.integers(len(batch)))
        out[i] = restain(batch[i:i + 1], *lab_stats(batch[j:j + 1]))[0]
    return out


def optics_jitter(batch: np.ndarray, rng: np.random.Generator, blur_px: float, jpeg_quality_min: int) -> np.ndarray:
    """Scanner optics on uint8 B×H×W×3 samples: Gaussian blur of σ ~ U(0, blur_px) pixels, then JPEG at
    a quality ~ U(jpeg_quality_min, 100), per sample.  Labs differ in focus, optics and compression;
    a source scanned sharper than the others (CellaVision crops resampled from 0.09 µm/px) must not be
    recognisable by its sharpness."""
    import cv2

    out = np.empty_like(batch)
    for i, sample in enumerate(batch):
        sigma = rng.uniform(0.0, blur_px) if blur_px > 0 else 0.0
        x = cv2.GaussianBlur(sample, (0, 0), sigma) if sigma > 0.05 else sample
        if jpeg_quality_min < 100:
            quality = int(rng.integers(jpeg_quality_min, 101))
            _, buf = cv2.imencode(".jpg", x[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            x = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        out[i] = x
    return out


def make_augmenter(params: AugmentParams, input_size: int, margin: float, crop_um: float):
    """Batched augmentation in NumPy/OpenCV, so that training runs on any Keras backend and in worker
    threads: `augment(uint8 B×M×M×3 margin crops of crop_um × margin µm, rng) → float32 B×S×S×3 in [0, 1]`.
    The caller passes the generator (one per epoch and batch), so a run is reproducible whatever the
    number of workers."""
    import cv2

    blur_px = params.blur_um * input_size / crop_um
    stain_on = params.hed_scale > 0 or params.hed_shift > 0
    optics_on = blur_px > 0 or params.jpeg_quality_min < 100
    hsv_on = bool(params.hue or params.saturation or params.brightness)

    def factors(rng, spread, shape=None):
        return np.asarray(rng.uniform(1 - spread, 1 + spread, shape), np.float32)

    def warp(sample: np.ndarray, rng) -> np.ndarray:
        """Zoom, shift, flips and rotation about the centre in one bilinear warp from the margin crop to
        the output size (mirrored border); the crop_um window when all are off."""
        side = sample.shape[0]
        step = side / margin / input_size * (factors(rng, params.scale) if params.scale > 0 else 1.0)
        shift = params.translate * side / margin
        centre = (side - 1) / 2 + (rng.uniform(-shift, shift, 2) if shift > 0 else np.zeros(2))
        angle = np.deg2rad(rng.uniform(-params.rotation_deg, params.rotation_deg)) if params.rotation_deg else 0.0
        flip_x = -1.0 if params.horizontal_flip and rng.uniform() < 0.5 else 1.0
        flip_y = -1.0 if params.vertical_flip and rng.uniform() < 0.5 else 1.0
        cos, sin = np.cos(angle) * step, np.sin(angle) * step
        linear = np.array([[cos * flip_x, -sin * flip_y], [sin * flip_x, cos * flip_y]])
        out_centre = (input_size - 1) / 2
        matrix = np.hstack([linear, (centre - linear @ [out_centre, out_centre])[:, None]])
        return cv2.warpAffine(sample, matrix, (input_size, input_size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)

    def hsv_jitter(x: np.ndarray, rng) -> np.ndarray:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # float32: hue in degrees, saturation and value in [0, 1]
        if params.hue:
            hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * rng.uniform(-params.hue, params.hue), 360.0)
        if params.saturation:
            hsv[..., 1] = np.clip(hsv[..., 1] * factors(rng, params.saturation), 0.0, 1.0)
        if params.brightness:
            hsv[..., 2] = np.clip(hsv[..., 2] * factors(rng, params.brightness), 0.0, 1.0)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if params.stain_transfer_p > 0:
            batch = stain_transfer(batch, rng, params.stain_transfer_p)
        if stain_on:
            batch = hed_jitter(batch, rng, params.hed_scale, params.hed_shift)
        if optics_on:
            batch = optics_jitter(batch, rng, blur_px, params.jpeg_quality_min)
        x = np.stack([warp(sample, rng) for sample in batch]).astype(np.float32) * np.float32(1 / 255)
        if hsv_on:
            x = np.stack([hsv_jitter(sample, rng) for sample in x])
        b = len(x)
        if params.channel_gain:
            x = x * factors(rng, params.channel_gain, (b, 1, 1, 3))
        if params.contrast:
            mean = x.mean(axis=(1, 2, 3), keepdims=True)
            x = (x - mean) * factors(rng, params.contrast, (b, 1, 1, 1)) + mean
        if params.grayscale_p > 0:
            grey = np.repeat(x @ np.array([0.2989, 0.587, 0.114], np.float32), 3).reshape(x.shape)
            x = np.where(rng.uniform(size=(b, 1, 1, 1)) < params.grayscale_p, grey, x)
        return np.clip(x, 0.0, 1.0, dtype=np.float32)

    return augment
