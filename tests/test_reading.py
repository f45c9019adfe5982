"""Reading: real whole-slide files through OpenSlide, field images in every pixel format, and a
clear one-line ScanError for each kind of bad file."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import tifffile
from helpers import shared
from PIL import Image

from bcscan.errors import ScanError
from bcscan.scan.reading import FieldImageScan, ReadingParams, SlideScan, find_scans, open_scan
from bcscan.testing.synthetic import draw_smear, write_pyramidal_tiff

PARAMS = ReadingParams()


@pytest.mark.parametrize("relative, vendor, mpp, levels", [
    ("CMU-1-Small-Region.svs", "aperio", 0.499, 1),
    ("test3-DAPI-2-(387).ndpi", "hamamatsu", 0.228, 7),
    ("CMU-1-Small-Region_dicom", "dicom", 0.499, 12),
    ("openslide-python-fixtures/small.svs", "aperio", None, 1),
])
def test_real_slides_open_with_their_scale(relative, vendor, mpp, levels):
    path = shared("wsi", "slides", relative)
    with open_scan(path, ReadingParams(default_mpp=1.0)) as scan:
        assert isinstance(scan, SlideScan)
        assert scan.vendor == vendor
        assert len(scan.level_dimensions) == levels
        if mpp is not None:
            assert scan.mpp == pytest.approx(mpp, abs=0.002)
        region = scan.read(0, 0, 0, 16, 16)
        assert region.shape == (16, 16, 3) and region.dtype == np.uint8


@pytest.mark.parametrize("name", ["unreadable.svs", "unopenable.tiff"])
def test_files_made_to_fail_give_one_line_errors(name):
    path = shared("wsi", "slides", "openslide-python-fixtures", name)
    with pytest.raises(ScanError) as err:
        scan = open_scan(path, ReadingParams(default_mpp=0.5))
        scan.read(0, 0, 0, scan.dimensions[0], scan.dimensions[1])  # unreadable.svs fails on read
    message = str(err.value)
    assert name in message and "\n" not in message


def test_dicom_series_is_one_scan_and_companions_are_skipped(tmp_path):
    series = tmp_path / "P1" / "slide_dicom"
    series.mkdir(parents=True)
    for i in range(3):
        (series / f"level-{i}.dcm").write_bytes(b"x")
    (tmp_path / "P1" / "a.svs").write_bytes(b"x")
    (tmp_path / "P1" / "notes.txt").write_text("x")
    (tmp_path / ".hidden.svs").write_bytes(b"x")
    assert find_scans(tmp_path) == [tmp_path / "P1" / "a.svs", series]


def test_pyramidal_tiff_written_by_bcscan_is_a_slide_with_scale(tmp_path):
    rgb, _ = draw_smear(1500, 1200, 0.25, 3)
    write_pyramidal_tiff(tmp_path / "s.tif", rgb, 0.25, min_side=300)
    with open_scan(tmp_path / "s.tif", PARAMS) as scan:
        assert isinstance(scan, SlideScan)
        assert scan.mpp == pytest.approx(0.25)
        assert scan.level_dimensions[:3] == [(1500, 1200), (750, 600), (375, 300)]
        assert scan.best_level_for(0.5) == 1 and scan.best_level_for(0.4) == 0
        assert np.array_equal(scan.read(0, 100, 200, 50, 40), rgb[200:240, 100:150])


def field_variants(rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    return {
        "field.jpg": lambda p: Image.fromarray(rgb).save(p, quality=95),
        "field.png": lambda p: Image.fromarray(rgb).save(p),
        "rgba.png": lambda p: Image.fromarray(rgba).save(p),
        "cmyk.jpg": lambda p: Image.fromarray(rgb).convert("CMYK").save(p),
        "palette.png": lambda p: Image.fromarray(rgb).convert("P").save(p),
        "rgb16.tif": lambda p: tifffile.imwrite(p, rgb.astype(np.uint16) * 257),
        "flat.tif": lambda p: tifffile.imwrite(p, rgb),
    }


def test_field_images_in_every_pixel_format_read_as_rgb8(tmp_path):
    rgb, _ = draw_smear(200, 160, 0.4, 1)
    for name, write in field_variants(rgb).items():
        write(tmp_path / name)
        with open_scan(tmp_path / name, PARAMS, mpp=0.4) as scan:
            assert isinstance(scan, FieldImageScan), name
            out = scan.read(0, 0, 0, 200, 160)
            assert out.shape == (160, 200, 3) and out.dtype == np.uint8, name
            if name in ("field.png", "rgba.png", "rgb16.tif", "flat.tif", "palette.png"):
                tolerance = 40 if name == "palette.png" else 1
                assert np.abs(out.astype(int) - rgb).mean() < tolerance, name


def test_greyscale_images_are_refused_with_the_reason(tmp_path):
    rgb, _ = draw_smear(200, 160, 0.4, 1)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    cv2.imwrite(str(tmp_path / "grey16.png"), grey.astype(np.uint16) * 257)
    for name in ("grey.png", "grey16.png"):
        with pytest.raises(ScanError, match="greyscale image"):
            open_scan(tmp_path / name, PARAMS, mpp=0.4)


def test_field_image_needs_a_scale(tmp_path):
    rgb, _ = draw_smear(100, 100, 0.4, 0)
    Image.fromarray(rgb).save(tmp_path / "f.png")
    with pytest.raises(ScanError, match="scale unknown"):
        open_scan(tmp_path / "f.png", PARAMS)
    with open_scan(tmp_path / "f.png", ReadingParams(default_mpp=0.3)) as scan:
        assert scan.mpp == 0.3


def bad_files(tmp_path):
    rgb, _ = draw_smear(300, 300, 0.4, 1)
    good = tmp_path / "good.jpg"
    Image.fromarray(rgb).save(good)
    data = good.read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.svs").write_text("this is not a slide\n")
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "folder.svs").mkdir()
    tiff = tmp_path / "good.tif"
    write_pyramidal_tiff(tiff, np.tile(rgb, (4, 4, 1)), 0.4, min_side=300)
    (tmp_path / "truncated.tif").write_bytes(tiff.read_bytes()[:4000])
    shutil.copy(shared("wsi", "slides", "openslide-python-fixtures", "unopenable.tiff"), tmp_path / "unopenable.tiff")
    return {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.svs": "unsupported or corrupt",
        "text.png": "not an image",
        "folder.svs": "a folder",
        "truncated.tif": "TIFF",
        "unopenable.tiff": "TIFF",
    }


def test_bad_files_give_clear_one_line_errors(tmp_path):
    for name, expected in bad_files(tmp_path).items():
        with pytest.raises(ScanError) as err:
            with open_scan(tmp_path / name, PARAMS, mpp=0.4) as scan:
                scan.read(0, 0, 0, *scan.dimensions)
        message = str(err.value)
        assert name in message and expected.lower() in message.lower() and "\n" not in message, (name, message)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("L", (5000, 4000)).save(tmp_path / "huge.png")
    with pytest.raises(ScanError, match="exceeds the limit"):
        open_scan(tmp_path / "huge.png", ReadingParams(max_image_pixels=10_000_000), mpp=0.4)


def test_unreadable_permissions(tmp_path):
    import os

    path = tmp_path / "locked.jpg"
    Image.new("RGB", (64, 64)).save(path)
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as a user who can read any file (root): permission cannot be denied")
    with pytest.raises(ScanError, match="permission denied"):
        open_scan(path, PARAMS, mpp=0.4)


def test_black_margins_read_as_glass_and_a_dark_object_at_the_edge_stays(tmp_path):
    from bcscan.scan.reading import NO_DATA_RINGING_PX, black_margins_to_glass

    rgb = np.full((60, 80, 3), (230, 200, 210), np.uint8)
    rgb[:, :10] = (2, 1, 3)  # padding on the left (full columns) ...
    rgb[50:] = 0  # ... and at the bottom: a cell cut near a corner of what was scanned
    rgb[0:6, 40:50] = (5, 5, 5)  # a black speck cut by the top edge: part of the image, not padding
    out = black_margins_to_glass(rgb)
    glass = np.zeros((60, 80), bool)
    glass[:, :10 + NO_DATA_RINGING_PX] = True
    glass[50 - NO_DATA_RINGING_PX:] = True
    assert (out[glass] == 255).all()
    assert np.array_equal(out[~glass], rgb[~glass])  # the speck and the rest untouched
    assert black_margins_to_glass(out) is out  # nothing to do: the same array back
    path = tmp_path / "padded.png"
    Image.fromarray(rgb).save(path)
    assert np.array_equal(open_scan(path, ReadingParams(), mpp=0.4).read(0, 0, 0, 80, 60), out)
