"""White-cell centres from a small learnt network, reconciled with the colour rules' cells (issue 26).

The colour rules (`scan.segmentation`) outline cells well but, on leukaemic smears, merge touching blasts and
miss faint ones.  A small U-Net (trained by benchmarks/learnt_detector.py on the box-labelled sources, shipped as
ONNX so that scan workers need no TensorFlow) marks every white cell's centre on a heat map.  The two are
reconciled cell by cell:

- a rule cell holding one centre stays as it is;
- a rule cell holding several is split between them (each pixel to its nearest centre): touching cells merged;
- a rule cell holding none stays only where the heat map inside it reaches `keep_threshold`, or where it
  touches the image's edge (the network sees too little of a cut cell: a whole slide read tile by tile and its
  fields read one by one would disagree there);
- a centre outside every rule cell adds a cell: an ellipse of the network's box size over pixels no cell owns.

Chosen leave one source out over 11 box sources, two seeds (benchmarks/README.md, "A learnt detector").
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bcscan.config import check_flags, check_numbers, packaged
from bcscan.errors import ModelError
from bcscan.scan.reading import resample
from bcscan.scan.segmentation import Segmentation, collect_cells, optical_density

SHIPPED_CENTRE_MODEL = "bcscan-centres.onnx"
# What the network was trained on (benchmarks/learnt_detector.py): stored in the ONNX file's metadata.
METADATA_KEYS = ("input_mpp", "stride", "background_percentile", "max_od", "size_unit_um")


@dataclass(frozen=True)
class CentreParams:
    """The learnt centres and their reconciliation with the colour rules' cells."""

    enabled: bool = True
    model: str | None = None
    """An ONNX file written by benchmarks/learnt_detector.py --ship; None: the one shipped with bcscan."""
    threshold: float = 0.3
    """A heat-map peak above this is a white-cell centre (fixed before any source was scored)."""
    peak_min_distance_um: float = 3.2
    """Peaks closer than this are one centre (a neutrophil's lobes gave two at 1.6 µm)."""
    keep_threshold: float = 0.1
    """A rule cell without a centre stays when the heat map inside it reaches this."""

    def __post_init__(self) -> None:
        check_flags(self, "enabled")
        if self.model is not None and not (isinstance(self.model, str) and self.model):
            raise ValueError(f"model must be the path of an ONNX file or null, got {self.model!r}")
        check_numbers(self, "threshold", "keep_threshold", at_least=0, below=1)
        check_numbers(self, "peak_min_distance_um", above=0)

    def model_path(self) -> Path:
        return Path(self.model).expanduser() if self.model else packaged(SHIPPED_CENTRE_MODEL)


@dataclass(frozen=True)
class CentreMaps:
    """The network's output on one image: the centre heat map and each position's box size (µm), at
    `heat_mpp`; `scale` turns heat-map pixels into the image's."""

    heat: np.ndarray       # (h, w) in [0, 1]
    box_um: np.ndarray     # (h, w, 2): width, height
    heat_mpp: float
    scale: np.ndarray      # (x, y) image pixels per heat-map pixel


def network_input(rgb: np.ndarray, mpp: float, input_mpp: float, background_percentile: float,
                  max_od: float) -> np.ndarray:
    """What the network reads of `rgb` (at `mpp` µm/px): its optical density at `input_mpp`, clipped at `max_od`
    (the same in training, benchmarks/learnt_detector.py, and in a scan)."""
    od = optical_density(resample(rgb, mpp, input_mpp), background_percentile)
    return np.minimum(od, max_od).astype(np.float32)


def padded_batch(od: np.ndarray) -> np.ndarray:
    """`od` as a batch of one, padded with glass (0) to a multiple of 8: the U-Net pools three times."""
    h, w = od.shape[:2]
    x = np.zeros((1, -(-h // 8) * 8, -(-w // 8) * 8, 3), np.float32)
    x[0, :h, :w] = od
    return x


class CentreNetwork:
    """The ONNX centre network on one CPU thread (scan workers are one process per core)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        if not path.is_file():
            raise ModelError(f"{path}: white-cell centre model not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            meta = self.session.get_modelmeta().custom_metadata_map
            self.input_mpp, self.stride, self.background_percentile, self.max_od, self.size_unit_um = (
                float(meta[key]) for key in METADATA_KEYS)
        except Exception as exc:  # onnxruntime raises its own types; a file without metadata a KeyError
            raise ModelError(f"{path}: not a bcscan centre model ({type(exc).__name__}: {exc})") from exc

    def maps(self, rgb: np.ndarray, mpp: float) -> CentreMaps:
        """The heat map and box sizes of `rgb` (at `mpp` µm/px): its optical density at the network's scale,
        padded to a multiple of 8."""
        od = network_input(rgb, mpp, self.input_mpp, self.background_percentile, self.max_od)
        h, w = od.shape[:2]
        heat, box = self.session.run(["heat", "box_size"], {"image": padded_batch(od)})
        oh, ow = -(-h // int(self.stride)), -(-w // int(self.stride))
        scale = np.array([rgb.shape[1] / w, rgb.shape[0] / h]) * self.stride
        return CentreMaps(heat[0, :oh, :ow, 0], box[0, :oh, :ow] * self.size_unit_um, self.input_mpp * self.stride,
                          scale)


@functools.lru_cache(maxsize=2)
def centre_network(model: str | None) -> CentreNetwork:
    """The network of `CentreParams.model`: one session per model and process (a worker loads it once; finding
    package data on every tile would cost too)."""
    return CentreNetwork(CentreParams(model=model).model_path())


def peaks(maps: CentreMaps, params: CentreParams) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) in the image's pixels of the heat map's peaks above the threshold, and their box sizes
    (µm); peaks within `peak_min_distance_um` of a higher one are not centres."""
    radius = max(int(round(params.peak_min_distance_um / maps.heat_mpp)), 1)
    heat = maps.heat.astype(np.float32)
    ys, xs = np.nonzero((heat == cv2.dilate(heat, np.ones((2 * radius + 1,) * 2, np.uint8))) & (heat > params.threshold))
    return (np.stack([xs + 0.5, ys + 0.5], 1) * maps.scale).reshape(-1, 2), maps.box_um[ys, xs].reshape(-1, 2)


def reconcile(seg: Segmentation, maps: CentreMaps, params: CentreParams, mpp: float) -> Segmentation:
    """`seg` (cells of an image at `mpp`) reconciled with the network's centres (module docstring)."""
    labels = seg.cell_labels.copy()
    h, w = labels.shape
    centres, box_um = peaks(maps, params)
    cx = np.clip(centres[:, 0].astype(int), 0, w - 1)
    cy = np.clip(centres[:, 1].astype(int), 0, h - 1)
    owner = labels[cy, cx]
    if np.array_equal(np.sort(owner), np.arange(1, len(seg.cells) + 1)):
        return seg  # one centre in every cell, none outside: the common case of normal blood
    next_label = len(seg.cells) + 1
    for index, cell in enumerate(seg.cells, start=1):
        inside = np.nonzero(owner == index)[0]
        if len(inside) == 1:
            continue
        window = labels[cell.y0:cell.y1, cell.x0:cell.x1]
        own = window == index
        if not len(inside):
            if min(cell.x0, cell.y0) == 0 or cell.x1 == w or cell.y1 == h:
                continue
            hx0, hy0 = int(cell.x0 / maps.scale[0]), int(cell.y0 / maps.scale[1])
            hx1, hy1 = int(np.ceil(cell.x1 / maps.scale[0])), int(np.ceil(cell.y1 / maps.scale[1]))
            if maps.heat[hy0:hy1, hx0:hx1].max(initial=0.0) < params.keep_threshold:
                window[own] = 0
            continue
        ys, xs = np.nonzero(own)
        nearest = ((xs[:, None] + cell.x0 - centres[inside, 0]) ** 2
                   + (ys[:, None] + cell.y0 - centres[inside, 1]) ** 2).argmin(1)
        window[ys, xs] = np.where(nearest == 0, index, next_label + nearest - 1)
        next_label += len(inside) - 1
    for k in np.nonzero(owner == 0)[0]:
        ax, ay = (int(round(a)) for a in np.maximum(box_um[k] / mpp / 2, 1.0))
        x0, y0 = max(cx[k] - ax, 0), max(cy[k] - ay, 0)
        window = labels[y0:cy[k] + ay + 1, x0:cx[k] + ax + 1]
        disc = np.zeros(window.shape, np.uint8)
        cv2.ellipse(disc, (int(cx[k] - x0), int(cy[k] - y0)), (ax, ay), 0, 0, 360, 1, -1)
        free = (disc > 0) & (window == 0)
        if free.any():
            window[free] = next_label
            next_label += 1
    return collect_cells(labels, seg.nucleus_mask, mpp)


def with_centres(rgb: np.ndarray, seg: Segmentation, mpp: float, params: CentreParams) -> Segmentation:
    """`seg` of `rgb` (at `mpp`) reconciled with the centre network's centres, or as it is when disabled."""
    if not params.enabled:
        return seg
    return reconcile(seg, centre_network(params.model).maps(rgb, mpp), params, mpp)
