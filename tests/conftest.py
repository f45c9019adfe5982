"""Fixtures shared by the tests: a small untrained model with the real interface (real Keras
VGG-16 file + metadata), for wiring tests that must not depend on the shipped model's weights.
Plain helpers are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A freshly initialised VGG-16 (32 px input) saved with its metadata, as `bcscan train` would."""
    from bcscan.model.network import ModelInfo, build_vgg16, save_model

    path = tmp_path_factory.mktemp("model") / "untrained.keras"
    model = build_vgg16(32, batch_norm=True, hidden_units=16, seed=1)
    save_model(model, path, ModelInfo(name="untrained-test", classes=["leukemic", "normal"], input_size=32,
                                      crop_um=20.0, working_mpp=0.4))
    return path
