"""Boxing white cells by eye on leukaemic fields (issue 26 item 1): draws the fields and renders them for a person to read.

    python benchmarks/box_fields.py list                 # the drawn fields, one per line
    python benchmarks/box_fields.py grid  [--first I --count N]   # enlarged fields under a labelled pixel grid
    python benchmarks/box_fields.py check [--first I --count N]   # the same with the recorded boxes drawn on them

Renders PNG sheets into runs/boxing/ (two fields per sheet) to be viewed with an image viewer; box corners are read
off in original pixels and written into bcscan/testing/data/leukaemic_boxes.csv by hand. The fields are drawn with a
fixed seed from each sorted folder listing, not chosen by how they look. Neither mode runs the detector: the boxes are
made blind to it (benchmarks/leukaemic_fields.py scores it afterwards).
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np

from bcscan.testing import groundtruth as G

SEED = 26
# (folder under ../shared/data, fields drawn): B-ALL subtypes, hematogones, and single-cell crops whose neighbours are blasts.
DRAWS: tuple[tuple[str, int], ...] = (
    ("ghaderzadeh-all/images/Early", 12), ("ghaderzadeh-all/images/Pre", 12), ("ghaderzadeh-all/images/Pro", 12),
    ("ghaderzadeh-all/images/Benign", 4), ("mll-bone-marrow/BLA", 10), ("lmu-aml-blood/MYO", 10),
)
SECOND_SEED = 27
# A second round (#60 on), drawn with its own seed from what the first left, so the first round's fields stay put:
# more fields of the B-ALL subtypes and hematogones, whose folds train on one another's fields.
SECOND_DRAWS: tuple[tuple[str, int], ...] = (
    ("ghaderzadeh-all/images/Early", 8), ("ghaderzadeh-all/images/Pro", 8), ("ghaderzadeh-all/images/Pre", 6),
    ("ghaderzadeh-all/images/Benign", 4),
)
ZOOM = 3
GRID_STEP = 20  # original pixels between labelled grid lines
OUT = G.REPO_ROOT / "runs" / "boxing"
KIND_COLOURS = {"blast": (255, 0, 0), "normal": (0, 160, 0), "unsure": (255, 160, 0)}


def drawn_fields(data: Path = G.SHARED_DATA) -> list[str]:
    """Image paths relative to `data`: per folder of DRAWS, a seeded sample of its sorted listing; then per folder
    of SECOND_DRAWS, a sample (SECOND_SEED) of the fields not drawn before."""
    fields: list[str] = []
    for seed, draws in ((SEED, DRAWS), (SECOND_SEED, SECOND_DRAWS)):
        rng = random.Random(seed)
        for folder, count in draws:
            names = sorted(p.relative_to(data).as_posix() for p in (data / folder).glob("*.jpg"))
            fields.extend(sorted(rng.sample([n for n in names if n not in fields], count)))
    return fields


def render(rgb: np.ndarray, title: str, boxes: list[tuple[G.LeukaemicBox, int]] = ()) -> np.ndarray:
    """The image enlarged ZOOM times (nearest), a grid every GRID_STEP original pixels labelled in original pixels,
    and the given boxes numbered in their kind's colour."""
    h, w = rgb.shape[:2]
    big = cv2.resize(rgb, (w * ZOOM, h * ZOOM), interpolation=cv2.INTER_NEAREST)
    margin = 30
    canvas = np.full((h * ZOOM + 2 * margin, w * ZOOM + 2 * margin, 3), 255, np.uint8)
    canvas[margin:margin + h * ZOOM, margin:margin + w * ZOOM] = big
    font = cv2.FONT_HERSHEY_SIMPLEX
    for v in range(0, max(w, h) + 1, GRID_STEP):
        if v <= w:
            x = margin + v * ZOOM
            cv2.line(canvas, (x, margin), (x, margin + h * ZOOM), (0, 255, 255), 1)
            cv2.putText(canvas, str(v), (x - 10, margin - 8), font, 0.4, (0, 0, 0), 1)
            cv2.putText(canvas, str(v), (x - 10, margin * 2 + h * ZOOM - 10), font, 0.4, (0, 0, 0), 1)
        if v <= h:
            y = margin + v * ZOOM
            cv2.line(canvas, (margin, y), (margin + w * ZOOM, y), (0, 255, 255), 1)
            cv2.putText(canvas, str(v), (0, y + 4), font, 0.35, (0, 0, 0), 1)
            cv2.putText(canvas, str(v), (margin + w * ZOOM + 2, y + 4), font, 0.35, (0, 0, 0), 1)
    for box, number in boxes:
        colour = KIND_COLOURS[box.kind]
        p0 = (margin + int(box.x0 * ZOOM), margin + int(box.y0 * ZOOM))
        p1 = (margin + int(box.x1 * ZOOM), margin + int(box.y1 * ZOOM))
        cv2.rectangle(canvas, p0, p1, colour, 2)
        cv2.putText(canvas, str(number), (p0[0] + 3, p0[1] + 16), font, 0.55, colour, 2)
    cv2.putText(canvas, title, (margin, 12), font, 0.4, (200, 0, 0), 1)
    return canvas


def write_sheets(fields: list[str], first: int, with_boxes: bool, data: Path) -> None:
    """Two rendered fields per PNG, named by the index of the first."""
    OUT.mkdir(parents=True, exist_ok=True)
    recorded = G.leukaemic_boxes_by_image() if with_boxes else {}
    for start in range(0, len(fields), 2):
        panels = []
        for index, rel in enumerate(fields[start:start + 2], first + start):
            boxes = [(b, n) for n, b in enumerate(recorded.get(rel, []), 1)]
            panels.append(render(G.read_rgb(data / rel), f"#{index} {rel}", boxes))
        height = max(p.shape[0] for p in panels)
        sheet = np.hstack([np.pad(p, ((0, height - p.shape[0]), (0, 10), (0, 0)), constant_values=255) for p in panels])
        name = f"{'check' if with_boxes else 'grid'}_{first + start:03d}.png"
        cv2.imwrite(str(OUT / name), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(OUT / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("list", "grid", "check"))
    parser.add_argument("--data", type=Path, default=G.SHARED_DATA)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=2)
    args = parser.parse_args()
    fields = drawn_fields(args.data)
    if args.mode == "list":
        print("\n".join(f"{i}\t{rel}" for i, rel in enumerate(fields)))
        return
    write_sheets(fields[args.first:args.first + args.count], args.first, args.mode == "check", args.data)


if __name__ == "__main__":
    main()
