"""Training augmentation as TensorFlow ops, for the `tf_data` input pipeline (`training.input_pipeline`).

The same geometry, stain jitter and blur as `augment.make_augmenter` (one affine warp from the margin crop,
HED optical-density jitter, Gaussian blur, channel gain, contrast, brightness, grey samples), but run by tf.data's own
threads outside Python's lock: on a 2-core CPU the NumPy/OpenCV augmenter in a Keras worker thread
competes with the model for the interpreter, and a network at a quarter width trains faster than it is
fed.  Random draws are stateless, seeded per (run seed, epoch, batch), so a run repeats.
"""
from __future__ import annotations

import numpy as np

from bcscan.errors import ConfigError
from bcscan.training.recipe import AugmentParams

# augmentations only the NumPy/OpenCV augmenter has: a recipe asking for them keeps the `keras` pipeline
NOT_IN_TF = ("hue", "saturation", "stain_transfer_p")


def unsupported(params: AugmentParams) -> list[str]:
    """The recipe's augmentations that `make_tf_augmenter` does not implement."""
    names = [name for name in NOT_IN_TF if getattr(params, name)]
    return names + (["jpeg_quality_min"] if params.jpeg_quality_min < 100 else [])


def gaussian_blur(x, sigma_px, radius: int):
    """Each float B×H×W×C sample of `x` blurred by a Gaussian of its own σ (`sigma_px`, B; under 0.05 px left
    as it is, as augment.optics_jitter does), separable, `radius` px each side, mirrored border (OpenCV's
    default)."""
    import tensorflow as tf

    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.maximum(sigma_px, 1e-3)[:, None]
    weights = tf.exp(-0.5 * tf.square(offsets[None, :] / sigma))
    weights = tf.where((sigma_px > 0.05)[:, None], weights / tf.reduce_sum(weights, axis=1, keepdims=True),
                       tf.cast(tf.equal(offsets, 0.0), tf.float32)[None, :])
    # one depthwise convolution per axis, each sample's channels as channels of one image
    b, h, w, c = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2], x.shape[3]
    stacked = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, b * c])
    padded = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    taps = tf.transpose(tf.repeat(weights, c, axis=0))                    # 2r+1 × B·C
    along_x = tf.nn.depthwise_conv2d(padded, taps[None, :, :, None], [1, 1, 1, 1], "VALID")
    both = tf.nn.depthwise_conv2d(along_x, taps[:, None, :, None], [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(both, [h, w, b, c]), [2, 0, 1, 3])


def make_tf_augmenter(params: AugmentParams, input_size: int, margin: float, crop_um: float):
    """`augment(uint8 B×M×M×3 margin crops, int64 seed[2]) → float32 B×S×S×3 in [0, 1]` as TF ops."""
    import tensorflow as tf
    from skimage.color import hed_from_rgb, rgb_from_hed

    missing = unsupported(params)
    if missing:
        raise ConfigError(f"training.input_pipeline tf_data does not implement augmentation {', '.join(missing)}; "
                          "use input_pipeline: keras or leave them out")
    log_adjust = float(-np.log(1e-6))  # skimage's density unit, as augment.hed_jitter
    to_hed = tf.constant(hed_from_rgb, tf.float32)
    to_rgb = tf.constant(rgb_from_hed, tf.float32)
    stain_on = params.hed_scale > 0 or params.hed_shift > 0
    blur_px = params.blur_um * input_size / crop_um   # the margin crop has the output's pixel size
    blur_radius = int(np.ceil(3 * blur_px))

    def uniform(seed, shape, low, high):
        return tf.random.stateless_uniform(shape, seed, low, high)

    def spread(seed, shape, s):
        return uniform(seed, shape, 1.0 - s, 1.0 + s) if s > 0 else tf.ones(shape)

    def warp_matrices(seeds, b, side):
        """Per sample the inverse map [a0 a1 a2 b0 b1 b2 0 0] from output to margin-crop pixels: zoom, shift,
        flips and rotation about the centre, as augment.make_augmenter's OpenCV warp."""
        step = side / margin / input_size * spread(seeds[0], [b], params.scale)
        shift = params.translate * side / margin
        centre = (side - 1) / 2 + (uniform(seeds[1], [b, 2], -shift, shift) if shift > 0 else tf.zeros([b, 2]))
        angle = uniform(seeds[2], [b], -1.0, 1.0) * np.deg2rad(params.rotation_deg)
        flips = tf.where(uniform(seeds[3], [b, 2], 0.0, 1.0) < 0.5, -1.0, 1.0)
        flip_x = flips[:, 0] if params.horizontal_flip else tf.ones([b])
        flip_y = flips[:, 1] if params.vertical_flip else tf.ones([b])
        cos, sin = tf.cos(angle) * step, tf.sin(angle) * step
        a0, a1, b0, b1 = cos * flip_x, -sin * flip_y, sin * flip_x, cos * flip_y
        out_centre = (input_size - 1) / 2
        a2 = centre[:, 0] - (a0 + a1) * out_centre
        b2 = centre[:, 1] - (b0 + b1) * out_centre
        zero = tf.zeros([b])
        return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)

    def augment(batch, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=11)
        b = tf.shape(batch)[0]
        side = batch.shape[1]
        x = tf.cast(batch, tf.float32) / 255.0
        if stain_on:
            od = -tf.math.log(tf.maximum(x, 1e-6)) / log_adjust
            hed = tf.einsum("bhwc,cd->bhwd", od, to_hed)
            hed = hed * spread(seeds[4], [b, 1, 1, 3], params.hed_scale) \
                + uniform(seeds[5], [b, 1, 1, 3], -params.hed_shift, params.hed_shift)
            x = tf.clip_by_value(tf.exp(-tf.einsum("bhwd,dc->bhwc", hed, to_rgb) * log_adjust), 0.0, 1.0)
        if blur_px > 0:
            x = gaussian_blur(x, uniform(seeds[10], [b], 0.0, blur_px), blur_radius)
        x = tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=warp_matrices(seeds, b, side),
                                                  output_shape=[input_size, input_size], fill_value=0.0,
                                                  interpolation="BILINEAR", fill_mode="REFLECT")
        if params.brightness:
            x = x * spread(seeds[6], [b, 1, 1, 1], params.brightness)
        if params.channel_gain:
            x = x * spread(seeds[7], [b, 1, 1, 3], params.channel_gain)
        if params.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * spread(seeds[8], [b, 1, 1, 1], params.contrast) + mean
        if params.grayscale_p > 0:
            grey = tf.repeat(tf.reduce_sum(x * [0.2989, 0.587, 0.114], axis=-1, keepdims=True), 3, axis=-1)
            x = tf.where(uniform(seeds[9], [b, 1, 1, 1], 0.0, 1.0) < params.grayscale_p, grey, x)
        return tf.clip_by_value(x, 0.0, 1.0)

    return augment
