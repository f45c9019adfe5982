"""A compact copy of a training recipe's images, for moving them to a rented GPU machine with a small
transfer limit (the three classification sets are 207 MB; the copy of train-crosslab.yaml's images is 54 MB).

    python benchmarks/compact_data.py ../shared/data OUT [--config configs/train-crosslab.yaml]
        [--working-mpp 0.4] [--quality 88] [--fine-quality 95]

Sources scanned finer than the scan's working scale (pbc-normal 0.088, mll-bone-marrow 0.075 µm/px) are
resampled (area average) to that scale, which is what `cells_in_field` does to them first anyway; the
others keep their pixels and are re-encoded as JPEG at `--quality`.  Writes OUT/data/<the same folders>
and OUT/<config stem>-compact.yaml: the recipe with the new µm/px of each resampled source.  Figures
from the copy differ from the originals by the extra JPEG pass: say so next to them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bcscan
from bcscan.training.samples import list_images  # noqa: E402  (the images `bcscan train` reads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parent.parent / "configs"
                    / "train-crosslab.yaml")
    ap.add_argument("--working-mpp", type=float, default=0.4)
    ap.add_argument("--quality", type=int, default=88, help="JPEG quality of sources kept at their scale")
    ap.add_argument("--fine-quality", type=int, default=95, help="JPEG quality of resampled sources")
    args = ap.parse_args()
    cfg = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    total = 0
    for source in cfg["sources"]:
        resample = source["mpp"] < args.working_mpp
        scale = source["mpp"] / args.working_mpp
        quality = args.fine_quality if resample else args.quality
        for path in list_images(args.data_dir / source["path"]):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise SystemExit(f"{path}: unreadable image")
            if resample:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            target = args.out / "data" / path.relative_to(args.data_dir).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            target.write_bytes(encoded.tobytes())
            total += len(encoded)
        if resample:
            source["mpp"] = args.working_mpp
    config_out = args.out / f"{args.config.stem}-compact.yaml"
    config_out.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    print(f"{total / 1e6:.1f} MB of images in {args.out / 'data'}; recipe {config_out}")


if __name__ == "__main__":
    main()
