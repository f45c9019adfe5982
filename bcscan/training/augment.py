"""On-the-fly training augmentation (TensorFlow): flips, rotation, scale/translation inside the
margin crop, colour / stain jitter; seeded."""
from __future__ import annotations

from bcscan.training.recipe import AugmentParams


def make_augmenter(params: AugmentParams, input_size: int, margin: float, seed: int):
    """Batched augmentation: uint8 B×M×M×3 (margin crops) → float32 B×S×S×3 in [0, 1]."""
    import keras
    import tensorflow as tf

    rot = keras.layers.RandomRotation(params.rotation_deg / 360.0, fill_mode="reflect", seed=seed) \
        if params.rotation_deg > 0 else None
    gen = tf.random.Generator.from_seed(seed)
    inner = 1.0 / margin  # the crop_um window inside the margin crop, as a fraction

    def augment(batch):
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
