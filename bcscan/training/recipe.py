"""The training recipe: the YAML config of `bcscan train` as typed, validated dataclasses.

A source folder maps to one model class and has its own scale in µm/px; `shortcut_check`
warns when the recipe's classes come from different datasets (a lab/stain shortcut).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcscan.config import check_numbers, load_yaml, section
from bcscan.errors import ConfigError
from bcscan.model.network import CLASSES, LEUKEMIC, NORMAL


@dataclass(frozen=True)
class SourceSpec:
    path: str                  # folder relative to DATA_DIR
    label: str                 # model class: leukemic | normal
    mpp: float = 0.0           # µm per pixel of this source's images (cells mode)
    dataset: str = ""          # name used for per-dataset reports; default: first path component
    single_cell: bool = False  # each image is one labelled cell at its centre: only that cell is a sample
    cell_type: str = ""        # what the images show (e.g. myeloblast, neutrophil): the targets of model.head cell_types
    root: str = ""             # folder `path` is relative to, when not DATA_DIR (a fine-tuning's replay data)

    def __post_init__(self):
        if self.label not in CLASSES:
            raise ValueError(f"source {self.path}: label must be one of {CLASSES}, got {self.label!r}")
        if self.mpp < 0:
            raise ValueError(f"source {self.path}: mpp must be >= 0")

    @property
    def dataset_name(self) -> str:
        return self.dataset or Path(self.path).parts[0]

    def base(self, data_dir: Path) -> Path:
        """The folder this source's image paths are relative to."""
        return Path(self.root) if self.root else Path(data_dir)


@dataclass(frozen=True)
class SplitParams:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    hash_size: int = 16
    max_hamming: int = 3

    def __post_init__(self):
        if min(self.train, self.val, self.test) < 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError("train + val + test must be 1 and each >= 0")


@dataclass(frozen=True)
class ModelParams:
    batch_norm: bool = True
    batch_norm_momentum: float = 0.99  # share of the running statistics kept per step (Keras' default)
    hidden_units: int = 256
    dropout: float = 0.5
    grey_input: bool = False       # a fixed luminance layer first: the model cannot use colour (lab cue)
    stain_standardise: bool = False  # each crop's optical density standardised per channel (model.layers)
    width: float = 1.0             # channel multiplier of the VGG-16 blocks (1.0 = the paper's; 0.25 for CPUs)
    head: str = "binary"           # binary (leukemic / normal) | cell_types (one class per source cell_type)

    def __post_init__(self):
        check_numbers(self, "width", above=0)
        check_numbers(self, "batch_norm_momentum", at_least=0, below=1)
        if self.head not in {"binary", "cell_types"}:
            raise ValueError("head must be binary or cell_types")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"        # constant | plateau | cosine (over epochs) | cosine_time (over max_minutes)
    plateau_patience: int = 1            # plateau: epochs without a lower validation loss before the rate drops
    early_stopping_patience: int = 0     # 0 = off
    input_pipeline: str = "keras"        # keras (NumPy/OpenCV augmentation, any backend) | tf_data (TF ops, faster)
    max_minutes: float = 0.0             # 0 = no time budget
    jit_compile: bool = True
    deterministic: bool = False          # tf op determinism (slower)
    did_not_learn_margin: float = 0.10   # val balanced accuracy below 0.5 + margin = did not learn
    store_float16: bool = False          # store weights as float16 (half the file)
    rebalance_each_epoch: bool = False   # a fresh balanced draw of the training cells every epoch (all are seen)
    epoch_cells: int = 0                 # > 0: an epoch is this many cells of the balanced draw (validation more often)
    average_last_epochs: int = 0         # > 0: keep the mean weights of the last N epochs, not the best epoch's

    def __post_init__(self):
        if self.lr_schedule not in {"constant", "plateau", "cosine", "cosine_time"}:
            raise ValueError("lr_schedule must be constant, plateau, cosine or cosine_time")
        if self.lr_schedule == "cosine_time" and self.max_minutes <= 0:
            raise ValueError("lr_schedule cosine_time needs max_minutes > 0")
        if self.epoch_cells and not self.rebalance_each_epoch:
            raise ValueError("epoch_cells needs rebalance_each_epoch: true")
        if self.average_last_epochs and (self.early_stopping_patience or self.average_last_epochs > self.epochs):
            raise ValueError("average_last_epochs needs early_stopping_patience 0 and at most `epochs` epochs")
        if self.input_pipeline not in {"keras", "tf_data"}:
            raise ValueError("input_pipeline must be keras or tf_data")
        check_numbers(self, "epochs", "batch_size", at_least=1)
        check_numbers(self, "learning_rate", above=0)


@dataclass(frozen=True)
class AugmentParams:
    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotation_deg: float = 0.0        # uniform in ±rotation_deg
    scale: float = 0.0               # zoom factor uniform in [1-scale, 1+scale]
    translate: float = 0.0           # shift, fraction of the crop side
    hue: float = 0.0                 # hue shift, fraction of the colour wheel
    saturation: float = 0.0          # saturation factor in [1-s, 1+s]
    brightness: float = 0.0          # value factor in [1-b, 1+b]
    contrast: float = 0.0            # contrast factor in [1-c, 1+c]
    channel_gain: float = 0.0        # per-channel (stain cast) gain in [1-g, 1+g]
    grayscale_p: float = 0.0         # probability of a grey-level sample
    hed_scale: float = 0.0           # stain augmentation in HED optical density: each stain × U(1-s, 1+s)
    hed_shift: float = 0.0           # ... then + U(-b, b) (both per sample and stain; Tellez et al. 2019)
    stain_transfer_p: float = 0.0    # probability of a Reinhard transfer to another sample's colours (other labs)
    blur_um: float = 0.0             # Gaussian blur σ ~ U(0, blur_um) µm per sample (focus, optics)
    jpeg_quality_min: int = 100      # JPEG at quality ~ U(min, 100) per sample; 100 = off

    def __post_init__(self):
        check_numbers(self, "blur_um", at_least=0)
        check_numbers(self, "jpeg_quality_min", at_least=1, at_most=100)
        check_numbers(self, "stain_transfer_p", at_least=0, at_most=1)


@dataclass(frozen=True)
class FinetuneParams:
    """A lab's own verified cells (`bcscan review --export-training`) teaching a trained model (`--init-model`).

    The model's own training images are replayed beside them so it does not forget the other labs; part of
    the verified cells is held back, and the new model is written only when it does better on them."""
    replay_per_source: int = 40   # training images of each of the init model's sources (its own training split)
    train: float = 0.6            # the verified images: trained on ...
    val: float = 0.15             # ... early stopping ...
    holdout: float = 0.25         # ... held back to judge the new model against the init model
    min_gain: float = 0.0         # the new model's balanced accuracy on the held-back cells must beat init + this

    def __post_init__(self):
        check_numbers(self, "replay_per_source", at_least=0)
        if min(self.train, self.val, self.holdout) <= 0 or abs(self.train + self.val + self.holdout - 1) > 1e-6:
            raise ValueError("train + val + holdout must be 1 and each > 0")

    @property
    def local_split(self) -> SplitParams:
        return SplitParams(train=self.train, val=self.val, test=self.holdout)


@dataclass
class TrainConfig:
    name: str = "bcscan-vgg16"
    mode: str = "cells"              # image | cells
    input_size: int = 64
    crop_um: float = 24.0            # cells mode: physical side of each crop
    crop_margin: float = 1.25        # cells mode: training crops cached this much larger (scale/shift room)
    balance: str = "undersample"     # undersample | source_class | source_type | none (see splits.balance_indices)
    max_images_per_source: int = 0   # 0 = all (a seeded random subset otherwise)
    seed: int = 0
    sources: list[SourceSpec] = field(default_factory=list)
    segmentation: Any = None         # SegmentationParams
    split: SplitParams = field(default_factory=SplitParams)
    model: ModelParams = field(default_factory=ModelParams)
    training: TrainParams = field(default_factory=TrainParams)
    augmentation: AugmentParams = field(default_factory=AugmentParams)
    finetune: FinetuneParams | None = None   # a fine-tuning recipe (configs/finetune-local.yaml)
    raw: dict = field(default_factory=dict)

    @property
    def margin(self) -> float:
        return self.crop_margin if self.mode == "cells" else 1.0


BALANCE_MODES = ("undersample", "source_class", "source_type", "none")
TOP_KEYS = {"name", "mode", "input_size", "crop_um", "crop_margin", "balance", "max_images_per_source",
            "seed", "sources", "segmentation", "split", "model", "training", "augmentation", "finetune",
            "description"}


def load_train_config(path: Path, overrides: dict[str, Any] | None = None,
                      sources: list[dict[str, Any]] | None = None) -> TrainConfig:
    """Read a training config; `overrides` (epochs, seed, max_images_per_source, ...) win.  `sources`, when
    given, are the recipe's source lines (a fine-tuning recipe lists none: they come from its data)."""
    from bcscan.scan.segmentation import SegmentationParams

    raw = load_yaml(path)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s): {', '.join(unknown)}")
    raw = json.loads(json.dumps(raw))  # deep copy, plain types
    overrides = overrides or {}
    for key in ("seed", "max_images_per_source", "input_size"):
        if overrides.get(key) is not None:
            raw[key] = overrides[key]
    for key in ("epochs", "max_minutes", "batch_size", "learning_rate"):
        if overrides.get(key) is not None:
            raw.setdefault("training", {})[key] = overrides[key]
    if sources is not None:
        raw["sources"] = json.loads(json.dumps(sources))
    try:
        sources = [section(SourceSpec, s, f"sources[{i}]") for i, s in enumerate(raw.get("sources") or [])]
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not sources:
        raise ConfigError(f"{path}: no 'sources' listed")
    labels = {s.label for s in sources}
    if labels != set(CLASSES):
        raise ConfigError(f"{path}: sources must cover both classes {CLASSES}, got {sorted(labels)}")
    try:
        cfg = TrainConfig(
            name=str(raw.get("name", "bcscan-vgg16")),
            mode=str(raw.get("mode", "cells")),
            input_size=int(raw.get("input_size", 64)),
            crop_um=float(raw.get("crop_um", 24.0)),
            crop_margin=float(raw.get("crop_margin", 1.25)),
            balance=str(raw.get("balance", "undersample")),
            max_images_per_source=int(raw.get("max_images_per_source") or 0),
            seed=int(raw.get("seed", 0)),
            sources=sources,
            segmentation=section(SegmentationParams, raw.get("segmentation"), "segmentation"),
            split=section(SplitParams, raw.get("split"), "split"),
            model=section(ModelParams, raw.get("model"), "model"),
            training=section(TrainParams, raw.get("training"), "training"),
            augmentation=section(AugmentParams, raw.get("augmentation"), "augmentation"),
            finetune=section(FinetuneParams, raw["finetune"], "finetune") if "finetune" in raw else None,
            raw=raw,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if cfg.mode not in {"image", "cells"}:
        raise ConfigError(f"{path}: mode must be 'image' or 'cells', got {cfg.mode!r}")
    if cfg.balance not in BALANCE_MODES:
        raise ConfigError(f"{path}: balance must be one of {', '.join(BALANCE_MODES)}")
    if cfg.input_size < 32:
        raise ConfigError(f"{path}: input_size must be >= 32 (VGG-16 pools 5 times)")
    if cfg.model.head == "cell_types":
        cell_type_table(sources, path)
    if cfg.mode == "cells":
        missing = [s.path for s in sources if s.mpp <= 0]
        if missing:
            raise ConfigError(f"{path}: cells mode needs 'mpp' for every source (missing: {', '.join(missing)})")
        if cfg.crop_margin < 1:
            raise ConfigError(f"{path}: crop_margin must be >= 1")
    return cfg


def cell_type_table(sources: list[SourceSpec], where: Path | str = "recipe") -> tuple[list[str], list[int], list[int]]:
    """(cell types in order, the model class of each type, the type of each source) for `model.head: cell_types`:
    the network must tell a myeloblast from a monocyte, not a lab from a lab, and p_leukemic is the sum over
    the blast types.  Every source names its type, and a type belongs to one class."""
    missing = [s.path for s in sources if not s.cell_type]
    if missing:
        raise ConfigError(f"{where}: model.head cell_types needs a cell_type for every source (missing: "
                          f"{', '.join(missing)})")
    types = sorted({s.cell_type for s in sources}, key=lambda t: (CLASSES.index(
        next(s.label for s in sources if s.cell_type == t)), t))
    classes = []
    for t in types:
        labels = {s.label for s in sources if s.cell_type == t}
        if len(labels) > 1:
            raise ConfigError(f"{where}: cell_type {t!r} is labelled both {' and '.join(sorted(labels))}")
        classes.append(CLASSES.index(labels.pop()))
    return types, classes, [types.index(s.cell_type) for s in sources]


def datasets_by_class(sources: list[SourceSpec]) -> dict[str, set[str]]:
    """The datasets (labs) each class draws on."""
    return {c: {s.dataset_name for s in sources if s.label == c} for c in CLASSES}


def shortcut_check(sources: list[SourceSpec]) -> list[str]:
    """Lines of warning when a class draws on a dataset the other class does not."""
    by_class = datasets_by_class(sources)
    lines = []
    a, b = by_class[LEUKEMIC], by_class[NORMAL]
    if not (a & b):
        lines.append(f"the classes come from different datasets (leukemic: {sorted(a)}, normal: {sorted(b)}): "
                     "the model can learn the lab/stain instead of the cells; accuracy says little, "
                     "see per-source accuracy and a held-out lab")
    else:
        for c, other in ((LEUKEMIC, NORMAL), (NORMAL, LEUKEMIC)):
            only = by_class[c] - by_class[other]
            if only:
                lines.append(f"dataset(s) {sorted(only)} supply only class '{c}': any image that looks like "
                             f"{'them' if len(only) > 1 else 'it'} can be called '{c}' from stain/scanner cues; "
                             f"judge the model on datasets holding both classes ({sorted(a & b)}) and on other labs")
    return lines
