"""Image decoding: every supported kind reads to (H, W, 3) uint8; every bad kind says why."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.io import ImageReadError, decode_image, decode_png, encode_png, has_image_extension


def _rgb(h=40, w=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_png_rgb_round_trips_exactly():
    arr = _rgb()
    out = decode_image(_pil_bytes(Image.fromarray(arr), "PNG"))
    assert out.pixels.dtype == np.uint8 and np.array_equal(out.pixels, arr) and out.note is None


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "1", "LA"])
def test_pil_modes_become_rgb(mode):
    im = Image.fromarray(_rgb()).convert(mode)
    out = decode_image(_pil_bytes(im, "PNG"))
    assert out.pixels.shape == (40, 50, 3) and out.pixels.dtype == np.uint8


def test_rgba_transparent_pixels_become_white():
    arr = np.zeros((20, 20, 4), dtype=np.uint8)
    arr[:10, :, 3] = 255  # top half opaque black, bottom half transparent
    out = decode_image(_pil_bytes(Image.fromarray(arr, "RGBA"), "PNG")).pixels
    assert out[:10].max() == 0 and out[10:].min() == 255


def test_16bit_tiff_rgb_is_scaled_to_8bit_with_a_note():
    arr16 = (np.linspace(0, 65535, 30 * 30 * 3).reshape(30, 30, 3)).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr16, photometric="rgb")
    out = decode_image(buf.getvalue())
    assert out.pixels.dtype == np.uint8 and out.pixels.max() == 255 and out.pixels.min() == 0
    assert "uint16" in out.note


def test_multipage_tiff_takes_first_page_and_says_so():
    pages = np.stack([np.full((20, 20, 3), v, np.uint8) for v in (10, 200)])
    buf = io.BytesIO()
    tifffile.imwrite(buf, pages, photometric="rgb")
    out = decode_image(buf.getvalue())
    assert int(out.pixels.mean()) == 10 and "first page" in out.note


@pytest.mark.parametrize("compression", ["lzw", "jpeg", "zlib"])
def test_compressed_tiffs_read(compression):
    arr = np.full((32, 32, 3), 120, np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb", compression=compression)
    out = decode_image(buf.getvalue())
    assert abs(int(out.pixels.mean()) - 120) <= 3


def test_ccitt_bilevel_tiff_reads_via_pil():
    im = Image.fromarray((np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)).convert("1")
    out = decode_image(_pil_bytes(im, "TIFF", compression="group4"))
    assert out.pixels.shape == (64, 64, 3) and set(np.unique(out.pixels)) == {0, 255}


def test_png_named_jpg_is_read_by_content():
    arr = _rgb()
    data = _pil_bytes(Image.fromarray(arr), "PNG")  # the caller never looks at the extension
    assert np.array_equal(decode_image(data).pixels, arr)


def test_empty_file_is_refused_with_reason():
    with pytest.raises(ImageReadError, match="empty file"):
        decode_image(b"")


def test_text_file_is_refused_as_not_an_image():
    with pytest.raises(ImageReadError, match="not an image.*text"):
        decode_image(b"this is a note, not a picture\n" * 3)


def test_truncated_jpeg_is_refused():
    data = _pil_bytes(Image.fromarray(_rgb(200, 200)), "JPEG", quality=90)
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_tiny_image_is_refused():
    with pytest.raises(ImageReadError, match="too small"):
        decode_image(_pil_bytes(Image.fromarray(_rgb(4, 4)), "PNG"))


def test_png_crop_codec_is_lossless():
    arr = _rgb(128, 128)
    assert np.array_equal(decode_png(encode_png(arr)), arr)


@pytest.mark.parametrize(
    "name,ok", [("a.JPG", True), ("b.Tiff", True), ("c.png", True), ("d.xml", False), ("e", False)]
)
def test_extensions_match_any_case(name, ok):
    assert has_image_extension(name) is ok
