"""On-the-fly training augmentation (TensorFlow): flips, rotation, scale/translation inside the
margin crop, colour / stain jitter, stain jitter in HED optical density, blur and JPEG; seeded."""
from __future__ import annotations

import numpy as np

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


def make_augmenter(params: AugmentParams, input_size: int, margin: float, crop_um: float, seed: int):
    """Batched augmentation: uint8 B×M×M×3 (margin crops of `crop_um` × margin µm) → float32 B×S×S×3 in [0, 1]."""
    import keras
    import tensorflow as tf

    rot = keras.layers.RandomRotation(params.rotation_deg / 360.0, fill_mode="reflect", seed=seed) \
        if params.rotation_deg > 0 else None
    gen = tf.random.Generator.from_seed(seed)
    inner = 1.0 / margin  # the crop_um window inside the margin crop, as a fraction
    stain_rng = np.random.default_rng([seed, 1])

    blur_px = params.blur_um * input_size / crop_um
    stain_on = params.hed_scale > 0 or params.hed_shift > 0
    optics_on = blur_px > 0 or params.jpeg_quality_min < 100

    def numpy_stage(batch):
        if stain_on:
            batch = hed_jitter(batch, stain_rng, params.hed_scale, params.hed_shift)
        if optics_on:
            batch = optics_jitter(batch, stain_rng, blur_px, params.jpeg_quality_min)
        return batch

    def augment(batch):
        if stain_on or optics_on:  # numpy, before the TF ops
            shape = batch.shape
            batch = tf.numpy_function(numpy_stage, [batch], tf.uint8, stateful=True)
            batch.set_shape(shape)
        x = tf.cast(batch, tf.float32) / 255.0
        b = tf.shape(x)[0]
        if params.scale > 0 or params.translate > 0 or margin != 1.0:
            s = gen.uniform([b], 1 - params.scale, 1 + params.scale) if params.scale > 0 else tf.ones([b])
            half = 0.5 * inner * s
            t = params.translate * inner
            cy = 0.5 + (gen.uniform([b], -t, t) if t > 0 else tf.zeros([b]))
            cx = 0.5 + (gen.uniform([b], -t, t) if t > 0 else tf.zeros([b]))
            boxes = tf.stack([cy - half, cx - half, cy + half, cx + half], axis=1)
            x = tf.image.crop_and_resize(x, boxes, tf.range(b), (input_size, input_size),
                                         extrapolation_value=1.0)
        if params.horizontal_flip:
            flip = gen.uniform([b, 1, 1, 1]) < 0.5
            x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        if params.vertical_flip:
            flip = gen.uniform([b, 1, 1, 1]) < 0.5
            x = tf.where(flip, tf.reverse(x, axis=[1]), x)
        if rot is not None:
            x = rot(x, training=True)
        if params.hue or params.saturation or params.brightness:
            hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 1.0))
            h, sat, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
            if params.hue:
                h = tf.math.floormod(h + gen.uniform([b, 1, 1], -params.hue, params.hue), 1.0)
            if params.saturation:
                sat = tf.clip_by_value(sat * gen.uniform([b, 1, 1], 1 - params.saturation, 1 + params.saturation), 0, 1)
            if params.brightness:
                v = tf.clip_by_value(v * gen.uniform([b, 1, 1], 1 - params.brightness, 1 + params.brightness), 0, 1)
            x = tf.image.hsv_to_rgb(tf.stack([h, sat, v], axis=-1))
        if params.channel_gain:
            x = x * gen.uniform([b, 1, 1, 3], 1 - params.channel_gain, 1 + params.channel_gain)
        if params.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * gen.uniform([b, 1, 1, 1], 1 - params.contrast, 1 + params.contrast) + mean
        if params.grayscale_p > 0:
            grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
            x = tf.where(gen.uniform([b, 1, 1, 1]) < params.grayscale_p, grey, x)
        return tf.clip_by_value(x, 0.0, 1.0)

    return augment
