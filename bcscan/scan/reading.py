"""Reading scans: whole-slide files through OpenSlide, field images through PIL/tifffile.

Every scan, whatever its format, is seen by the rest of bcscan through `Scan`:
a pyramid of levels, its physical scale, and `read()` of a region of a level
as an RGB uint8 array.  All failures become `ScanError` with a one-line
message that names the file and the problem.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bcscan.config import check_flags, check_numbers
from bcscan.errors import ScanError

SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIX = ".dcm"
SCAN_SUFFIXES = SLIDE_SUFFIXES | IMAGE_SUFFIXES | {DICOM_SUFFIX}


@dataclass(frozen=True)
class ReadingParams:
    default_mpp: float | None = None     # µm/px for field images with no --mpp; None = refuse
    max_image_pixels: int = 400_000_000  # decompression-bomb guard for field images
    max_slide_pixels: int = 20_000_000_000
    max_mpp: float = 2.0                 # coarser scans cannot show a white cell's nucleus
    slide_cache_mb: int = 256            # decoded-tile cache shared by the slides open in a process
    single_cell_images: bool = False    # each field image shows one white cell at its centre: count only it

    def __post_init__(self):
        if self.default_mpp is not None:
            check_numbers(self, "default_mpp", above=0)
        check_numbers(self, "max_mpp", "max_image_pixels", "max_slide_pixels", above=0)
        check_numbers(self, "slide_cache_mb", at_least=0)
        check_flags(self, "single_cell_images")


# A TIFF resolution this coarse is a page-layout placeholder (72 or 96 dpi), not a microscope scale.
PLACEHOLDER_MPP = 50.0


_tile_caches: dict[int, object] = {}


def _tile_cache(megabytes: int):
    """One OpenSlide tile cache per process: read windows overlap by the tiling margin, and with
    OpenSlide's default 32 MB the shared tiles are decoded again (measured: 25 % slower reads)."""
    import openslide

    if megabytes not in _tile_caches:
        _tile_caches[megabytes] = openslide.OpenSlideCache(megabytes << 20)
    return _tile_caches[megabytes]


def find_scans(scan_dir: Path) -> list[Path]:
    """All scans below `scan_dir`, sorted; a folder of DICOM files is one scan (a WSI series)."""
    scans: set[Path] = set()
    for root, dirs, files in os.walk(scan_dir, followlinks=False):
        dirs.sort()
        root_path = Path(root)
        # An MRXS slide keeps its tiles in a sibling folder of the same name.
        mrxs_dirs = {Path(f).stem for f in files if f.lower().endswith(".mrxs")}
        dirs[:] = [d for d in dirs if d not in mrxs_dirs and not d.startswith(".")]
        if any(f.lower().endswith(DICOM_SUFFIX) for f in files):
            scans.add(root_path)
        # A folder named like a slide file is listed, so that it fails with a clear message.
        for d in dirs:
            if Path(d).suffix.lower() in SLIDE_SUFFIXES | IMAGE_SUFFIXES:
                scans.add(root_path / d)
        for name in files:
            if name.startswith("."):
                continue
            suffix = Path(name).suffix.lower()
            if suffix in SCAN_SUFFIXES and suffix != DICOM_SUFFIX:
                scans.add(root_path / name)
    return sorted(scans)


class Scan:
    """One scan as a pyramid of RGB levels with a physical scale (µm per level-0 pixel)."""

    path: Path
    mpp: float
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    vendor: str
    whole_slide = True  # a whole slide (a smear to pick the counting area on), not a field the microscopist chose
    single_cell = False  # an image centred on the one white cell it was taken for (`scan.single_cell`)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 array of a region given in `level` pixel coordinates."""
        raise NotImplementedError

    def thumbnail(self, max_side: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level_for(self, target_mpp: float) -> int:
        """The coarsest level that is still at least as fine as `target_mpp`."""
        best = 0
        for level in range(len(self.level_downsamples)):
            if self.level_mpp(level) <= target_mpp * 1.001:
                best = level
        return best


class SlideScan(Scan):
    def __init__(self, path: Path, slide, mpp: float):
        self.path = path
        self._slide = slide
        self.mpp = mpp
        self.level_dimensions = list(slide.level_dimensions)
        self.level_downsamples = list(slide.level_downsamples)
        self.vendor = slide.properties.get("openslide.vendor", "unknown")

    def read(self, level, x, y, width, height):
        import openslide

        down = self.level_downsamples[level]
        try:
            region = self._slide.read_region((int(round(x * down)), int(round(y * down))), level, (int(width), int(height)))
        except openslide.OpenSlideError as exc:
            raise ScanError(f"{self.path}: unreadable region at level {level} ({x},{y}): {exc}") from exc
        return rgba_to_rgb(np.asarray(region))

    def thumbnail(self, max_side):
        import openslide

        try:
            thumb = self._slide.get_thumbnail((max_side, max_side))
        except openslide.OpenSlideError as exc:
            raise ScanError(f"{self.path}: cannot read thumbnail: {exc}") from exc
        return np.asarray(thumb.convert("RGB"))

    def close(self):
        self._slide.close()


class FieldImageScan(Scan):
    """A plain field image, held decoded in memory (size-limited by `max_image_pixels`)."""

    whole_slide = False

    def __init__(self, path: Path, rgb: np.ndarray, mpp: float, single_cell: bool = False):
        self.path = path
        self._rgb = rgb
        self.mpp = mpp
        self.single_cell = single_cell
        self.level_dimensions = [(rgb.shape[1], rgb.shape[0])]
        self.level_downsamples = [1.0]
        self.vendor = "image"

    def read(self, level, x, y, width, height):
        if level != 0:
            raise ValueError("field images have a single level")
        return crop_padded(self._rgb, x, y, width, height)

    def thumbnail(self, max_side):
        import cv2

        h, w = self._rgb.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return cv2.resize(self._rgb, size, interpolation=cv2.INTER_AREA)


def crop_padded(rgb: np.ndarray, x: int, y: int, width: int, height: int, fill: int = 255) -> np.ndarray:
    """A `width`×`height` window of `rgb` at (x, y); parts outside the image are `fill` (white glass)."""
    out = np.full((height, width, rgb.shape[2]), fill, dtype=rgb.dtype)
    h, w = rgb.shape[:2]
    sx0, sy0 = max(x, 0), max(y, 0)
    sx1, sy1 = min(x + width, w), min(y + height, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y:sy1 - y, sx0 - x:sx1 - x] = rgb[sy0:sy1, sx0:sx1]
    return out


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide marks pixels outside the scanned area with alpha 0: show them as white glass."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    rgb = cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2RGB)  # 14x faster than numpy slicing
    alpha = rgba[..., 3]
    if alpha.min() == 0:
        rgb[alpha == 0] = 255
    return rgb


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, grey+alpha, RGBA, 16-bit, float) as RGB uint8."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            top = 1.0 if np.nanmax(arr) <= 1.0 else float(np.nanmax(arr))
            arr = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255)
        elif arr.dtype == bool:
            arr = arr * 255
        else:
            arr = arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max)
        arr = np.round(arr).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3:
        raise ValueError(f"unsupported image shape {arr.shape}")
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 2:  # grey + alpha: composite on white
        grey = composite_on_white(arr[..., :1], arr[..., 1])
        return np.repeat(grey, 3, axis=2)
    if channels == 4:
        return composite_on_white(arr[..., :3], arr[..., 3])
    if channels == 3:
        return np.ascontiguousarray(arr)
    raise ValueError(f"unsupported number of channels ({channels})")


NO_DATA_LEVEL = 12  # a pixel no channel of which exceeds this is black (JPEG leaves pure black at 0-10)
NO_DATA_SHARE = 0.9  # an edge row or column this black is padding, not a dark object cut by the edge
NO_DATA_RINGING_PX = 2  # JPEG ringing along the padding's inner edge, whitened with it


def black_margins_to_glass(rgb: np.ndarray) -> np.ndarray:
    """Black rows and columns along an image's edges as white glass.

    Cell-analyser exports cut around a cell near the border of what was scanned pad the rest with black
    (13 of lmu-aml-blood's 2,113 crops); read as stain, that black fails the stain check and spoils the cell's
    crop.  OpenSlide's no-data pixels are read as glass too (:func:`rgba_to_rgb`).  Only whole edge rows and
    columns count, so a dark object cut by the edge stays.  The four outermost lines are looked at first: when
    none is padding (nearly every image) the rest is not read."""
    if not any(_black(line).mean() >= NO_DATA_SHARE for line in (rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1])):
        return rgb
    black = _black(rgb)
    rows, cols = black.mean(axis=1) >= NO_DATA_SHARE, black.mean(axis=0) >= NO_DATA_SHARE
    margins = [_run_length(rows), _run_length(rows[::-1]), _run_length(cols), _run_length(cols[::-1])]
    if not any(margins):
        return rgb
    top, bottom, left, right = (m + NO_DATA_RINGING_PX if m else 0 for m in margins)
    out = rgb.copy()
    h, w = out.shape[:2]
    out[:top] = 255
    out[h - bottom:] = 255
    out[:, :left] = 255
    out[:, w - right:] = 255
    return out


def _black(rgb: np.ndarray) -> np.ndarray:
    """Pixels no channel of which exceeds NO_DATA_LEVEL."""
    return rgb.max(axis=-1) <= NO_DATA_LEVEL


def _run_length(flags: np.ndarray) -> int:
    """How many leading entries of `flags` are True."""
    return int(np.argmin(flags)) if not flags.all() else len(flags)


def composite_on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.round(colour.astype(np.float32) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _slide_mpp(slide) -> float | None:
    props = slide.properties
    try:
        mpp_x = float(props.get("openslide.mpp-x", "nan"))
        mpp_y = float(props.get("openslide.mpp-y", "nan"))
    except ValueError:
        return None
    if not (math.isfinite(mpp_x) and 0 < mpp_x < PLACEHOLDER_MPP):
        return None
    if math.isfinite(mpp_y) and mpp_y > 0:
        return (mpp_x + mpp_y) / 2
    return mpp_x


def _mpp_from_resolution(pixels_per_unit: float, unit_um: float) -> float | None:
    """Scale from a resolution tag, or None for a missing tag or a page-layout placeholder."""
    if not pixels_per_unit or pixels_per_unit <= 0:
        return None
    mpp = unit_um / pixels_per_unit
    return mpp if mpp < PLACEHOLDER_MPP else None


def _decode_field_image(path: Path, max_pixels: int) -> tuple[np.ndarray, float | None]:
    """Decode a plain image, with a pixel-count guard checked before the pixels are decoded.
    Returns the pixels and the scale recorded in the file, if it records a real one."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() in {".tif", ".tiff"}:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                if int(np.prod(page.shape[:2])) > max_pixels:
                    raise ScanError(f"{path}: image of {page.shape[1]}x{page.shape[0]} pixels exceeds the limit of {max_pixels:,} pixels")
                units = {2: 25400.0, 3: 10000.0}  # RESUNIT inch, centimetre
                unit = units.get(int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2)
                mpp = None
                if unit and "XResolution" in page.tags:
                    num, den = page.tags["XResolution"].value
                    mpp = _mpp_from_resolution(num / den if den else 0, unit)
                return page.asarray(), mpp
        except ScanError:
            raise
        except Exception as exc:  # tifffile raises many kinds for bad files
            raise ScanError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below, before decoding
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ScanError(f"{path}: image of {img.width}x{img.height} pixels exceeds the limit of {max_pixels:,} pixels")
            if img.mode == "CMYK" or img.mode == "P" or img.mode.startswith("YCbCr"):
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            img.load()
            dpi = img.info.get("dpi", (0, 0))[0]
            return np.asarray(img), _mpp_from_resolution(float(dpi or 0), 25400.0)
    except UnidentifiedImageError as exc:
        raise ScanError(f"{path}: not an image file that can be decoded") from exc
    except OSError as exc:
        raise ScanError(f"{path}: corrupt or truncated image ({exc})") from exc


def open_scan(path: Path, params: ReadingParams, mpp: float | None = None) -> Scan:
    """Open any supported scan. `mpp` overrides the scale recorded in the file."""
    import openslide
    from PIL import UnidentifiedImageError

    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ScanError(f"{path}: broken or looping symbolic link")
    if path.is_dir():
        dicoms = sorted(p for p in path.iterdir() if p.suffix.lower() == DICOM_SUFFIX)
        if not dicoms:
            raise ScanError(f"{path}: a folder, not a scan file")
        target = dicoms[0]
    else:
        target = path
    try:
        if not os.access(target, os.R_OK):
            raise ScanError(f"{path}: permission denied")
        if target.stat().st_size == 0:
            raise ScanError(f"{path}: empty file (0 bytes)")
    except OSError as exc:
        raise ScanError(f"{path}: cannot access ({exc.strerror or exc})") from exc

    fmt = None
    try:
        fmt = openslide.OpenSlide.detect_format(str(target))
    except (openslide.OpenSlideError, OSError):
        fmt = None
    is_slide = fmt is not None and not (fmt == "generic-tiff" and _is_flat_tiff(target))
    if is_slide:
        try:
            slide = openslide.OpenSlide(str(target))
        except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError, OSError) as exc:
            raise ScanError(f"{path}: cannot open slide ({fmt}): {exc}") from exc
        if params.slide_cache_mb:
            slide.set_cache(_tile_cache(params.slide_cache_mb))
        w, h = slide.dimensions
        if w * h > params.max_slide_pixels:
            slide.close()
            raise ScanError(f"{path}: slide of {w}x{h} pixels exceeds the limit of {params.max_slide_pixels:,} pixels")
        try:
            scale = mpp or _slide_mpp(slide) or params.default_mpp
            if not scale:
                raise ScanError(f"{path}: scale unknown (no microns-per-pixel in the file); "
                                "give --mpp or set reading.default_mpp")
            _check_scale(path, scale, params)
        except ScanError:
            slide.close()
            raise
        return SlideScan(path, slide, scale)

    if target.suffix.lower() not in IMAGE_SUFFIXES:
        raise ScanError(f"{path}: unsupported or corrupt scan format ('{target.suffix}' is not an image OpenSlide or PIL can open)")
    try:
        decoded, recorded_mpp = _decode_field_image(target, params.max_image_pixels)
        if _is_greyscale(decoded):
            raise ScanError(f"{path}: greyscale image: white cells are found by their stain colour, "
                            "a colour scan is needed")
        rgb = to_rgb8(decoded)
    except ScanError:
        raise
    except (UnidentifiedImageError, ValueError, OSError) as exc:
        raise ScanError(f"{path}: cannot decode image ({exc})") from exc
    if min(rgb.shape[:2]) < 8:
        raise ScanError(f"{path}: image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small to hold a cell")
    rgb = black_margins_to_glass(rgb)
    scale = mpp or recorded_mpp or params.default_mpp
    if not scale:
        raise ScanError(f"{path}: scale unknown (no resolution recorded in the image); "
                        "give --mpp or set reading.default_mpp")
    _check_scale(path, scale, params)
    return FieldImageScan(path, rgb, scale, params.single_cell_images)


def _is_greyscale(image: np.ndarray) -> bool:
    """One channel (with or without alpha), or three identical ones."""
    if image.ndim == 2 or image.shape[-1] <= 2:
        return True
    colour = image[..., :3]
    return bool((colour[..., 0] == colour[..., 1]).all() and (colour[..., 1] == colour[..., 2]).all())


def _check_scale(path: Path, mpp: float, params: ReadingParams) -> None:
    if mpp > params.max_mpp:
        raise ScanError(f"{path}: scale {mpp:g} µm/px is too coarse to see white cells (limit {params.max_mpp:g}); "
                        f"check --mpp or the scan's metadata")


def _is_flat_tiff(path: Path) -> bool:
    """A single-page, untiled TIFF is a field image; OpenSlide would read it as a one-level slide
    but cannot decode every photometric (16-bit, CMYK) that a field image may use."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return len(tif.pages) == 1 and not page.is_tiled and not page.subifds
    except Exception:
        return False


def resample(rgb: np.ndarray, from_mpp: float, to_mpp: float) -> np.ndarray:
    """Rescale an image from one physical scale to another (area averaging when shrinking)."""
    import cv2

    factor = from_mpp / to_mpp
    if abs(factor - 1.0) < 1e-3:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interp)
