"""Ground truth for the segmentation stage: loaders, scales, matching and scores.

The shared data sets (``../shared/data``) carry boxes or masks but no pixel
size, so this module also holds the scale table that turns their pixels into
micrometres.  Everything here is plain numpy / OpenCV and is used by the tests,
the benchmarks and anyone who wants to score a detector.
"""
from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from bcscan.scan.centres import CentreParams
from bcscan.scan.platelets import PlateletParams, white_cells
from bcscan.scan.reading import resample
from bcscan.scan.segmentation import Segmentation, SegmentationParams

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# µm per pixel of each data set, keyed by (width, height) where a set mixes
# sources.  BCCD / TXL / PBC / Ghaderzadeh: shared/data/README.md (a WBC taken
# as ~12 µm, a red cell as ~7.5 µm).  Zheng 2018: measured here from the
# median expert whole-cell area (see ZHENG_MPP).
TXL_MPP_BY_SIZE: dict[tuple[int, int], float] = {
    (575, 575): 0.046,
    (360, 363): 0.088,
    (366, 369): 0.088,
    (360, 360): 0.088,
    (416, 416): 0.076,
    (640, 480): 0.058,
}
TXL_SOURCE_BY_SIZE: dict[tuple[int, int], str] = {
    (575, 575): "raabin-575",
    (360, 363): "pbc-360",
    (366, 369): "pbc-360",
    (360, 360): "pbc-360",
    (416, 416): "bcd-416",
    (640, 480): "bccd-640",
}
BCCD_MPP = 0.063
PBC_MPP = 0.088
GHADERZADEH_MPP = 0.45
MLL_MPP = 0.075  # mll-bone-marrow: red cells ~100 px for 7.5 µm (its SOURCE.txt)
LMU_MPP = 0.117  # lmu-aml-blood: 0.075 at the original 400 px, resized to 256 (its SOURCE.txt)
# pbc-normal/platelet images that hold a white cell besides the platelets (all 450 looked at by eye, nineteenth session,
# by a developer; doubtful, kept: the 163rd, 215th, 384th and 423rd by sorted name): not images without a white cell.
PLATELET_IMAGES_WITH_A_WHITE_CELL = frozenset({"PLATELET_128416", "PLATELET_160909", "PLATELET_603847"})
# The leukaemic fields boxed by eye (issue 26 item 1; how: the file's header). Scale by the data set, the first folder.
LEUKAEMIC_BOXES = Path(__file__).resolve().parent / "data" / "leukaemic_boxes.csv"
LEUKAEMIC_MPP: dict[str, float] = {"ghaderzadeh-all": GHADERZADEH_MPP, "mll-bone-marrow": MLL_MPP,
                                   "lmu-aml-blood": LMU_MPP}
# Zheng 2018: the median expert whole-cell mask taken as a 12 µm-diameter disc
# (113 µm², the convention behind the other sets' scales): Dataset1 median
# 4405 px² -> 0.160 µm/px, Dataset2 median 19136 px² -> 0.077 µm/px.
ZHENG_MPP: dict[str, float] = {"Dataset1": 0.160, "Dataset2": 0.077}
# Ground-truth boxes of one image overlapping at least this much are one cell labelled twice.
DOUBLE_BOX_IOU = 0.5
# TXL-PBC raabin-575 train+val labels looked over by eye (ninth session): all 450 fields on contact sheets with their
# boxes, doubtful ones enlarged, without the detector's output. By a developer, not a haematologist; a violet sliver
# at the field edge that might be a white cell was left as labelled. Other sources were not looked over.
# Boxes on a red cell or a platelet (image stem -> the box, original pixels):
TXL_BOXES_NOT_ON_A_WBC: dict[str, tuple[int, int, int, int]] = {
    "0c17c658-7cc6-52ba-98ef-f240d42b6c11": (1, 1, 110, 55),      # red cell in the corner
    "19539d0f-2ebc-545a-9471-21fc68b8e6d0": (196, 452, 386, 573),  # red cell below the WBC
    "2a77e71f-edc5-5d42-9b16-39adbd8ef0ce": (374, 82, 516, 224),   # red cell over the WBC's edge
    "3abfbc94-8066-509c-a9d0-d9f5b4de716d": (1, 1, 54, 68),        # red cell in the corner
    "53de3b82-e87b-5c1e-94bd-19b39de999bc": (1, 1, 106, 59),       # red cell in the corner
    "70142f83-ceac-5019-a57c-dd1b5573ac92": (1, 335, 81, 479),     # red cell at the left edge
    "9c463012-b6ab-5088-a21c-2cbdc2e45e09": (202, 397, 245, 440),  # platelet below the WBC
    "af5d0c0c-8484-5135-bdf2-3732adf858b7": (219, 502, 376, 575),  # red cell at the bottom edge
    "027b917d-c172-5be9-8dba-6bd4ef20d22d": (1, 1, 64, 141),       # red cell at the left edge
    "3e08ca80-08dd-5b2c-b91e-60539d5b6a04": (1, 142, 138, 277),    # red cell at the left edge
    "666561c9-bbd8-5434-ad54-fc0e5edd8186": (432, 166, 537, 288),  # red cell beside the WBC
}
# Fields whose label file is empty although a white cell fills their centre: left out.
TXL_UNLABELLED_WBC: frozenset[str] = frozenset({
    "2bd943ad-5094-5962-9932-d39d5952db03", "501ef848-89f1-5c3a-9737-c77489b73fb8",
    "56e02fda-cdab-537d-b7b8-2f99b2842aba", "a08819de-ed86-5f71-9274-e8b675b026de",
    "d17b8459-f618-58ef-9fad-f8f95dd66cc6",
})


@dataclass(frozen=True)
class BoxSample:
    """One field image with its ground-truth WBC boxes (x0, y0, x1, y1; x1/y1 exclusive)."""

    image: Path
    boxes: np.ndarray  # float (N, 4)
    mpp: float
    source: str


@dataclass(frozen=True)
class LeukaemicBox:
    """One white cell boxed by eye on a leukaemic field (original pixels, x1/y1 exclusive)."""

    image: str  # relative to ../shared/data
    x0: int
    y0: int
    x1: int
    y1: int
    kind: str  # blast, normal or unsure
    edge: bool  # cut by the image edge
    note: str


@dataclass(frozen=True)
class MaskSample:
    """One Zheng 2018 crop: nucleus and whole-cell masks drawn by experts."""

    image: Path
    nucleus: np.ndarray  # bool
    cell: np.ndarray  # bool, nucleus + cytoplasm
    mpp: float
    source: str


@dataclass(frozen=True)
class DetectionScore:
    images: int
    gt: int
    detections: int
    tp: int
    exact_counts: int = 0
    """Images whose number of detections equals their number of ground-truth boxes."""

    @property
    def count_exact(self) -> float:
        return self.exact_counts / self.images if self.images else 1.0

    @property
    def precision(self) -> float:
        return self.tp / self.detections if self.detections else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.gt if self.gt else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: "DetectionScore") -> "DetectionScore":
        return DetectionScore(self.images + other.images, self.gt + other.gt, self.detections + other.detections,
                              self.tp + other.tp, self.exact_counts + other.exact_counts)


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- loaders
def load_voc_boxes(xml_path: Path, label: str = "WBC") -> np.ndarray:
    """Boxes of objects named `label` in a Pascal VOC file, as (N, 4) float, x1/y1 exclusive.

    VOC coordinates are 1-based inclusive; converting to 0-based exclusive keeps
    the width (xmax - xmin + 1) right.
    """
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip() != label:
            continue
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0 - 1, y0 - 1, x1, y1))
    return np.asarray(boxes, dtype=float).reshape(-1, 4)


def load_yolo_boxes(txt_path: Path, width: int, height: int, cls: int = 0) -> np.ndarray:
    """Boxes of class `cls` in a YOLO label file (normalised cx cy w h) as pixel (N, 4)."""
    boxes = []
    for line in Path(txt_path).read_text().splitlines():
        parts = line.split()
        if len(parts) < 5 or int(float(parts[0])) != cls:
            continue
        cx, cy, w, h = (float(v) for v in parts[1:5])
        boxes.append(((cx - w / 2) * width, (cy - h / 2) * height,
                      (cx + w / 2) * width, (cy + h / 2) * height))
    return np.asarray(boxes, dtype=float).reshape(-1, 4)


def load_zheng_mask(mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus, whole cell) bool masks from a Zheng 2018 mask (255 nucleus, 128 cytoplasm)."""
    m = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise OSError(f"cannot read mask {mask_path}")
    return m > 191, m > 64


def merge_double_boxes(boxes: np.ndarray, iou_min: float = DOUBLE_BOX_IOU) -> np.ndarray:
    """Boxes with any pair overlapping at IoU >= `iou_min` replaced by the box around both, repeatedly.

    Two white cells do not overlap that much in a smear; such a pair is one cell labelled twice (7 of
    the 1,588 BCCD / TXL train+val fields, all checked by eye), which one-to-one matching would count
    as a miss and a wrong count whatever the detector did."""
    boxes = np.asarray(boxes, float).reshape(-1, 4).copy()
    while len(boxes) > 1:
        iou = box_iou(boxes, boxes)
        np.fill_diagonal(iou, 0.0)
        if iou.max() < iou_min:
            break
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        boxes[i] = [*np.minimum(boxes[i, :2], boxes[j, :2]), *np.maximum(boxes[i, 2:], boxes[j, 2:])]
        boxes = np.delete(boxes, j, axis=0)
    return boxes


def bccd_samples(data: Path = SHARED_DATA) -> Iterator[BoxSample]:
    root = Path(data) / "bccd"
    for img in sorted((root / "JPEGImages").glob("*.jpg")):
        xml = root / "Annotations" / f"{img.stem}.xml"
        if xml.exists():
            yield BoxSample(img, merge_double_boxes(load_voc_boxes(xml)), BCCD_MPP, "bccd")


def ghaderzadeh_fields(data: Path = SHARED_DATA, folder: str = "*", step: int = 1) -> list[Path]:
    """Every `step`-th Ghaderzadeh field of `folder` (Benign, Early, Pre, Pro; "*" = all), sorted: no boxes,
    but the only fields crowded with blasts, so detection is checked on them by WBCs found per field."""
    return sorted((Path(data) / "ghaderzadeh-all" / "images").glob(f"{folder}/*.jpg"))[::step]


def leukaemic_boxes_by_image(path: Path = LEUKAEMIC_BOXES) -> dict[str, list[LeukaemicBox]]:
    """The boxed leukaemic fields, image path (relative to ../shared/data) -> its boxes, in file order."""
    rows = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    by_image: dict[str, list[LeukaemicBox]] = {}
    for row in csv.DictReader(rows):
        box = LeukaemicBox(row["image"], int(row["x0"]), int(row["y0"]), int(row["x1"]), int(row["y1"]),
                           row["kind"], row["edge"] == "yes", row["note"])
        by_image.setdefault(box.image, []).append(box)
    return by_image


def leukaemic_source(image: str) -> str:
    """Scoring source of a boxed leukaemic field: the data set, and the subtype folder for Ghaderzadeh."""
    parts = image.split("/")
    return f"ghaderzadeh-{parts[2].lower()}" if parts[0] == "ghaderzadeh-all" else parts[0]


def leukaemic_samples(data: Path = SHARED_DATA, path: Path = LEUKAEMIC_BOXES) -> Iterator[BoxSample]:
    """The boxed leukaemic fields as BoxSamples (every white cell, whatever its kind)."""
    for image, boxes in leukaemic_boxes_by_image(path).items():
        yield _leukaemic_sample(data, image, boxes)


def _leukaemic_sample(data: Path, image: str, boxes: list[LeukaemicBox]) -> BoxSample:
    coords = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], float).reshape(-1, 4)
    return BoxSample(Path(data) / image, coords, LEUKAEMIC_MPP[image.split("/")[0]], leukaemic_source(image))


def txl_samples(data: Path = SHARED_DATA, splits: Sequence[str] = ("train", "val"),
                audited: bool = True) -> Iterator[BoxSample]:
    """TXL-PBC fields with their boxes; `audited`: with the label corrections above (TXL_BOXES_NOT_ON_A_WBC dropped,
    TXL_UNLABELLED_WBC left out)."""
    root = Path(data) / "txl-pbc"
    for split in splits:
        for img in sorted((root / "images" / split).glob("*.jpg")):
            lbl = root / "labels" / split / f"{img.stem}.txt"
            if not lbl.exists() or (audited and img.stem in TXL_UNLABELLED_WBC):
                continue
            w_full, h_full = _jpeg_size(img) or read_rgb(img).shape[1::-1]
            mpp = TXL_MPP_BY_SIZE.get((w_full, h_full))
            if mpp is None:
                raise ValueError(f"{img}: no scale known for size {w_full}x{h_full}")
            boxes = merge_double_boxes(load_yolo_boxes(lbl, w_full, h_full))
            if audited and img.stem in TXL_BOXES_NOT_ON_A_WBC:
                not_a_wbc = np.array([TXL_BOXES_NOT_ON_A_WBC[img.stem]], float)
                boxes = boxes[box_iou(boxes, not_a_wbc)[:, 0] < 0.9]
            yield BoxSample(img, boxes, mpp, TXL_SOURCE_BY_SIZE[(w_full, h_full)])


NORMAL_BOX_SOURCES = ("bccd", "bccd-640", "bcd-416", "pbc-360", "raabin-575")
"""The box-labelled sources of normal blood: BCCD and the four TXL-PBC sources (told apart by image size)."""


def normal_box_samples(data: Path = SHARED_DATA, step: int = 1) -> list[BoxSample]:
    """Every `step`-th field of each of NORMAL_BOX_SOURCES (train and val parts), source by source."""
    samples = list(bccd_samples(data)) + list(txl_samples(data))
    return [s for source in NORMAL_BOX_SOURCES for s in [x for x in samples if x.source == source][::step]]


def zheng_samples(data: Path = SHARED_DATA, dataset: str = "Dataset1") -> Iterator[MaskSample]:
    root = Path(data) / "wbc-seg-zheng2018" / dataset
    for img in sorted((root / "images").glob("*.png")):
        mask = root / "masks" / img.name
        if mask.exists():
            nucleus, cell = load_zheng_mask(mask)
            yield MaskSample(img, nucleus, cell, ZHENG_MPP[dataset], f"zheng-{dataset}")


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker without decoding the pixels."""
    with open(path, "rb") as f:
        data = f.read(65536)
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
        i += 2 + length
    return None


# --------------------------------------------------------------------------- scores
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of boxes (x0, y0, x1, y1), x1/y1 exclusive."""
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def one_to_one(scores: np.ndarray, admissible: np.ndarray, best_first_high: bool) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (pred index, gt index, score) among the admissible pairs, best score first."""
    pairs = sorted(((scores[i, j], i, j) for i, j in zip(*np.nonzero(admissible))), reverse=best_first_high)
    used_p, used_g, matches = set(), set(), []
    for v, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            matches.append((int(i), int(j), float(v)))
    return matches


def match_boxes(pred: np.ndarray, gt: np.ndarray, iou_min: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matches (pred index, gt index, IoU), greedy by decreasing IoU, IoU >= iou_min."""
    iou = box_iou(pred, gt)
    return one_to_one(iou, iou >= iou_min, best_first_high=True)


def match_centres(pred: np.ndarray, gt: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one matches (pred index, gt index, distance of the centres) of boxes that each hold the other's
    centre, nearest first: the cell found where it is, however tightly its outline is drawn.  Cells are counted and
    cropped at their centres, and experts mark held-back fields with centres; a detection over two touching cells
    holds neither's centre (or takes one of them), as a merge should score.  Small cells are where IoU >= 0.5 is
    harsh: a 20-px box drawn 3 px off each way and 2 px wider per side falls under it."""
    pred = np.asarray(pred, float).reshape(-1, 4)
    gt = np.asarray(gt, float).reshape(-1, 4)
    pc, gc = (pred[:, :2] + pred[:, 2:]) / 2, (gt[:, :2] + gt[:, 2:]) / 2

    def holds(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
        return ((points[None, :, 0] >= boxes[:, None, 0]) & (points[None, :, 0] < boxes[:, None, 2])
                & (points[None, :, 1] >= boxes[:, None, 1]) & (points[None, :, 1] < boxes[:, None, 3]))

    distance = np.hypot(pc[:, None, 0] - gc[None, :, 0], pc[:, None, 1] - gc[None, :, 1])
    return one_to_one(distance, holds(pred, gc) & holds(gt, pc).T, best_first_high=False)


def score_boxes(pred: np.ndarray, gt: np.ndarray, match=match_boxes) -> DetectionScore:
    """Detection counts of one image under `match` (match_boxes: IoU >= 0.5; match_centres); add scores together
    to pool a data set."""
    pred = np.asarray(pred, float).reshape(-1, 4)
    gt = np.asarray(gt, float).reshape(-1, 4)
    return DetectionScore(1, len(gt), len(pred), len(match(pred, gt)), int(len(pred) == len(gt)))


def cell_boxes(segmentation: Segmentation) -> np.ndarray:
    """The detections of a segmentation as (N, 4) float boxes (x0, y0, x1, y1)."""
    return np.array([[c.x0, c.y0, c.x1, c.y1] for c in segmentation.cells], float).reshape(-1, 4)


@dataclass(frozen=True)
class WorkingField:
    """A BoxSample decoded once and resampled to the working resolution, so that a parameter
    search can segment it many times; scores equal those of segment() on the original image."""

    sample: BoxSample
    rgb: np.ndarray
    working_mpp: float
    to_original: np.ndarray  # (x, y, x, y) factors from working to original pixels

    @classmethod
    def of(cls, sample: BoxSample, working_mpp: float) -> "WorkingField":
        rgb = read_rgb(sample.image)
        work = resample(rgb, sample.mpp, working_mpp)
        fx, fy = rgb.shape[1] / work.shape[1], rgb.shape[0] / work.shape[0]
        return cls(sample, work, working_mpp, np.array([fx, fy, fx, fy]))

    def detections(self, params: SegmentationParams, platelets: PlateletParams | None = None,
                   centres: CentreParams | None = None) -> np.ndarray:
        """Boxes (original pixels) of segment(), reconciled with the learnt centres given `centres` and, given
        `platelets`, the clump test after it, as the pipeline runs them."""
        if params.working_mpp != self.working_mpp:
            raise ValueError(f"field resampled to {self.working_mpp} µm/px, params work at {params.working_mpp}")
        return cell_boxes(white_cells(self.rgb, params, platelets, centres)) * self.to_original

    def score(self, params: SegmentationParams, platelets: PlateletParams | None = None) -> DetectionScore:
        """Scores of detections() against the field's ground-truth boxes."""
        return score_boxes(self.detections(params, platelets), self.sample.boxes)


@dataclass(frozen=True)
class BlastScore:
    """Detection on the leukaemic fields: every white cell, and the blasts among them."""

    cells: DetectionScore
    blasts: int
    blasts_found: int

    @property
    def blast_recall(self) -> float:
        """Share of the blast boxes matched; NaN for a source without blasts (Ghaderzadeh Benign: hematogones)."""
        return self.blasts_found / self.blasts if self.blasts else float("nan")

    def __add__(self, other: "BlastScore") -> "BlastScore":
        return BlastScore(self.cells + other.cells, self.blasts + other.blasts, self.blasts_found + other.blasts_found)


def leukaemic_scores(params: SegmentationParams, platelets: PlateletParams | None = None,
                     data: Path = SHARED_DATA, centres: CentreParams | None = None,
                     match=match_boxes) -> dict[str, BlastScore]:
    """Per source, detections (as WorkingField.detections makes them) on the boxed leukaemic fields: white cells
    one-to-one under `match` (IoU >= 0.5 unless told), and which of the boxes marked "blast" were matched."""
    scores: dict[str, BlastScore] = {}
    for image, boxes in leukaemic_boxes_by_image().items():
        sample = _leukaemic_sample(data, image, boxes)
        found = WorkingField.of(sample, params.working_mpp).detections(params, platelets, centres)
        matched = {j for _, j, _ in match(found, sample.boxes)}
        blasts = {i for i, box in enumerate(boxes) if box.kind == "blast"}
        field = BlastScore(score_boxes(found, sample.boxes, match), len(blasts), len(blasts & matched))
        scores[sample.source] = scores[sample.source] + field if sample.source in scores else field
    return scores


def pooled(scores: Iterable[DetectionScore]) -> DetectionScore:
    total = DetectionScore(0, 0, 0, 0)
    for s in scores:
        total = total + s
    return total


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two bool masks (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 2.0 * np.logical_and(a, b).sum() / s if s else 1.0
