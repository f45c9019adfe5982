"""The samples of a training or evaluation run: discover the images of each source folder, decode
each once, hash it (near-duplicates) and cut its samples: the whole image (`image` mode, as in
the paper) or one crop per white cell found by `pipeline.cells_in_field` (`cells` mode, exactly
the crops `bcscan scan` classifies; each crop inherits its image's label; in a single-cell source
only the centre cell, since its neighbours are not what the label names).  Cached as an .npz
in the work folder, so a re-run does not re-segment."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcscan.errors import TrainingError
from bcscan.model.network import CLASSES
from bcscan.scan.single_cell import centre_cell
from bcscan.training.duplicates import average_hash
from bcscan.training.recipe import SourceSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
CACHE_VERSION = 4


@dataclass
class Samples:
    """All samples of a data collection; images are the unit of splitting and aggregation."""
    x: np.ndarray            # uint8 N×S×S×3 at input_size, exactly what the model sees at scan time
    x_margin: np.ndarray     # uint8 N×M×M×3 larger crops for augmentation (== x in image mode)
    image: np.ndarray        # int, index into `files` for each sample
    files: list[str]         # image paths relative to DATA_DIR (or their source's root)
    source: np.ndarray       # int, index into `sources` for each image
    ahash: np.ndarray        # uint8 packed bits of each image's average hash
    n_cells: np.ndarray      # samples per image
    sources: list[SourceSpec]

    @property
    def image_label(self) -> np.ndarray:
        return np.array([CLASSES.index(self.sources[s].label) for s in self.source], dtype=np.int64)

    @property
    def label(self) -> np.ndarray:
        return self.image_label[self.image]

    @property
    def dataset(self) -> np.ndarray:
        """Dataset name of each sample (what `balance: source_class` balances over)."""
        return self._per_sample([s.dataset_name for s in self.sources])

    @property
    def cell_type(self) -> np.ndarray:
        """Cell type each sample's source names ('' where it names none): what `balance: source_type` adds."""
        return self._per_sample([s.cell_type for s in self.sources])

    def _per_sample(self, per_source: list[str]) -> np.ndarray:
        return np.array(per_source, dtype=object)[self.source[self.image]]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover(data_dir: Path, sources: list[SourceSpec], max_per_source: int = 0, seed: int = 0,
             only: set[str] | None = None) -> list[tuple[str, int]]:
    """(relative path, source index) of every image; a seeded subset when max_per_source > 0."""
    out: list[tuple[str, int]] = []
    for i, src in enumerate(sources):
        base = src.base(data_dir)
        folder = base / src.path
        if not folder.is_dir():
            raise TrainingError(f"{folder}: source folder not found")
        files = [p.relative_to(base).as_posix() for p in list_images(folder)]
        if only is not None:
            files = [f for f in files if f in only]
        if not files and only is None:
            raise TrainingError(f"{folder}: no images (.jpg/.png/.bmp/.tif) in source folder")
        if max_per_source and len(files) > max_per_source:
            rng = np.random.default_rng([seed, i])
            files = sorted(rng.choice(files, max_per_source, replace=False).tolist())
        out.extend((f, i) for f in files)
    return out


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    from bcscan.scan.reading import black_margins_to_glass

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TrainingError(f"{path}: cannot decode image")
    return black_margins_to_glass(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))  # as bcscan scan reads it


def _extract_one(args):
    """Worker: (path, mpp, mode, input_size, crop_um, margin, seg_params, hash_size, single_cell) → arrays."""
    path, mpp, mode, input_size, crop_um, margin, seg_params, hash_size, single_cell = args
    import cv2

    cv2.setNumThreads(1)
    rgb = _read_rgb(Path(path))
    h = average_hash(rgb, hash_size)
    from bcscan.scan.crops import crop_cells, crop_side_px, resize_square

    if mode == "image":
        x = resize_square(rgb, input_size)[None]
        return h, x, x
    from bcscan.scan.pipeline import cells_in_field

    fc = cells_in_field(rgb, mpp, seg_params, crop_um)
    centres, crops = fc.centres, fc.crops
    if single_cell:
        centres = centre_cell(fc.centres, fc.image.shape)
        crops = crop_cells(fc.image, centres, crop_side_px(crop_um, seg_params.working_mpp))
    msize = int(round(input_size * margin))
    x = np.stack([resize_square(c, input_size) for c in crops]) if len(crops) else \
        np.zeros((0, input_size, input_size, 3), np.uint8)
    if len(crops):
        big = crop_cells(fc.image, centres, crop_side_px(crop_um * margin, seg_params.working_mpp))
        xm = np.stack([resize_square(c, msize) for c in big])
    else:
        xm = np.zeros((0, msize, msize, 3), np.uint8)
    return h, x, xm


def _cache_key(files, source: SourceSpec, mode, input_size, crop_um, margin, seg_params, hash_size, base) -> str:
    digest = hashlib.sha256()
    meta = {"v": CACHE_VERSION, "mode": mode, "input": input_size, "crop_um": crop_um, "margin": margin,
            "seg": dataclasses.asdict(seg_params) if seg_params is not None else None, "hash": hash_size,
            "mpp": source.mpp, "single_cell": source.single_cell}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for rel in files:
        st = (Path(base) / rel).stat()
        digest.update(f"{rel}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


def collect_samples(data_dir: Path, sources: list[SourceSpec], mode: str, input_size: int, crop_um: float,
                    margin: float, seg_params, *, max_per_source: int = 0, seed: int = 0,
                    hash_size: int = 16, cache_dir: Path | None = None, workers: int = 0,
                    only: set[str] | None = None, progress: bool = False) -> Samples:
    """Decode, hash and (cells mode) segment every image once; cached per source folder when `cache_dir`
    is given, so that recipes and leave-one-lab-out folds that share a source cut its crops once."""
    files = discover(data_dir, sources, max_per_source, seed, only)
    if not files:
        raise TrainingError(f"{data_dir}: no images selected")
    margin = margin if mode == "cells" else 1.0
    parts = []
    for si, source in enumerate(sources):
        rel = [f for f, s in files if s == si]
        if rel:
            parts.append(_source_samples(data_dir, rel, source, mode, input_size, crop_um, margin, seg_params,
                                         hash_size, cache_dir, workers, progress))
    joined = {k: np.concatenate([p[k] for p in parts]) for k in ("x", "x_margin", "ahash", "n_cells")}
    return Samples(joined["x"], joined["x_margin"], np.repeat(np.arange(len(files)), joined["n_cells"]),
                   [f for f, _ in files], np.array([s for _, s in files]), joined["ahash"], joined["n_cells"],
                   list(sources))


def _source_samples(data_dir: Path, files: list[str], source: SourceSpec, mode, input_size, crop_um, margin,
                    seg_params, hash_size, cache_dir, workers, progress) -> dict[str, np.ndarray]:
    """The arrays of one source folder's `files`: x, x_margin, ahash and n_cells (read from or written to the
    cache)."""
    cache, base = None, source.base(data_dir)
    if cache_dir is not None:
        key = _cache_key(files, source, mode, input_size, crop_um, margin, seg_params, hash_size, base)
        cache = Path(cache_dir) / f"samples-{mode}-{source.path.replace('/', '_')}-{key}.npz"
        if cache.is_file():
            log.info("sample cache %s", cache)
            with np.load(cache, allow_pickle=False) as z:
                return {k: z[k] for k in ("x", "x_margin", "ahash", "n_cells")}
    jobs = [(str(base / rel), source.mpp, mode, input_size, crop_um, margin, seg_params, hash_size,
             source.single_cell) for rel in files]
    workers = workers or min(4, os.cpu_count() or 1)
    results = []
    t0 = time.time()
    import sys

    # fork is safe only before TensorFlow or JAX starts its threads; otherwise decode in this process
    threaded = "tensorflow" in sys.modules or "jax" in sys.modules
    if workers > 1 and len(jobs) > 50 and not threaded and hasattr(os, "fork"):
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for i, r in enumerate(pool.imap(_extract_one, jobs, chunksize=16)):
                results.append(r)
                if progress and (i + 1) % 500 == 0:
                    log.warning("  %s: %d/%d images prepared (%.0f s)", source.path, i + 1, len(jobs),
                                time.time() - t0)
    else:
        results = [_extract_one(j) for j in jobs]
    msize = int(round(input_size * margin))
    n_cells = np.array([len(r[1]) for r in results], dtype=np.int64)
    arrays = {"x": np.concatenate([r[1] for r in results]) if n_cells.sum() else
              np.zeros((0, input_size, input_size, 3), np.uint8),
              "x_margin": np.concatenate([r[2] for r in results]) if n_cells.sum() else
              np.zeros((0, msize, msize, 3), np.uint8),
              "ahash": np.stack([r[0] for r in results]), "n_cells": n_cells}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + f".tmp-{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    return arrays
