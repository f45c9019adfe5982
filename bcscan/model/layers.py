"""The one custom layer of the bcscan network, kept in its own module because Keras must know it
(registered under the package name) before a model that contains it can be loaded."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bcscan")
class StainStandardisation(keras.layers.Layer):
    """Each crop's optical density, standardised per channel over the crop (a Reinhard-style stain
    normalisation against the crop's own statistics).

    Beer–Lambert: a thicker or thinner stain multiplies a channel's optical density, a colour cast
    shifts it; both cancel here, so the convolutions see the pattern of stain (chromatin, nucleoli,
    nucleus/cytoplasm ratio), not its strength or the lab's colour. It is part of the saved model, so
    training, `evaluate` and `scan` apply it alike. Input: RGB in [0, 1] (the rescaled crop).
    """

    def __init__(self, epsilon: float = 1e-4, **kwargs):
        kwargs.setdefault("dtype", "float32")  # logs and variances stay float32 under mixed precision
        super().__init__(**kwargs)
        self.epsilon = epsilon  # added to a crop's OD variance: a blank crop stays finite

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}

    def call(self, x):
        od = -ops.log(ops.cast(x, "float32") * (255.0 / 256.0) + 1.0 / 256.0)
        centred = od - ops.mean(od, axis=(1, 2), keepdims=True)
        return centred / ops.sqrt(ops.mean(centred * centred, axis=(1, 2), keepdims=True) + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape
