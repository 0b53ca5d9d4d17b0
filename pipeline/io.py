"""Reading images of every supported kind, and PNG encoding of crops.

Every reader failure becomes an `ImageReadError` whose message names the problem in words a lab
technician understands ("empty file (0 bytes)", "not an image: ..."), so that ingest can put the
file in quarantine with that reason and carry on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

# Smear scans reach tens of megapixels; PIL's default guard (~89 MP warns, 178 MP fails) would
# quarantine real slides. 400 MP (1.2 GB as RGB) is still a sane bound against decompression bombs.
Image.MAX_IMAGE_PIXELS = 400_000_000

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# The pixel cap checked from a file's header before anything is decoded (`--max-megapixels`): the
# 800 MP at which PIL refuses a decompression bomb (twice MAX_IMAGE_PIXELS), for every format
# (tifffile has no cap of its own).
DEFAULT_MAX_MEGAPIXELS = 800.0
# Estimated peak bytes per pixel of decoding, converting to 8-bit RGB and detecting one image: a
# 16-bit source peaks at ~39 B/px in the float conversion (measured for issue 10); 8-bit is an
# estimate (RGB copies plus the detector's float and label arrays), not a measurement.
PEAK_BYTES_PER_PIXEL_8BIT = 24
PEAK_BYTES_PER_PIXEL_WIDE = 40


class ImageReadError(ValueError):
    """An input file that cannot be used as an image; the message is the quarantine reason."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: `pixels` is (H, W, 3) uint8 RGB; `note` says what was adapted, if anything."""

    pixels: np.ndarray
    note: str | None = None


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of the bytes: the content identity used for provenance and re-run skips."""
    return hashlib.sha256(data).hexdigest()


def has_image_extension(name: str) -> bool:
    """True when the file name ends in a supported image extension (any letter case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding pixels."""

    width: int
    height: int
    channels: int
    bits: int  # per channel sample
    format: str

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def peak_bytes(self) -> int:
        """Estimated peak memory to ingest the image (decode, 8-bit RGB, detection)."""
        per_pixel = PEAK_BYTES_PER_PIXEL_8BIT if self.bits <= 8 else PEAK_BYTES_PER_PIXEL_WIDE
        return self.width * self.height * max(per_pixel, 3 * self.channels * max(1, self.bits // 8))


def read_header(data: bytes) -> ImageHeader | None:
    """Size and sample depth of an image from its header (first TIFF page; PIL without load), or
    None when the header is not readable (decoding then says what is wrong)."""
    try:
        if data[:4] in _TIFF_MAGIC:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages.first
                shape = page.shape
                channels = page.samplesperpixel
                planar = len(shape) == 3 and channels > 1 and shape[0] == channels
                h, w = (shape[1], shape[2]) if planar else (shape[0], shape[1])
                return ImageHeader(int(w), int(h), int(channels), int(page.bitspersample), "TIFF")
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header only
            w, h = im.size
            bits = 16 if im.mode.startswith("I;16") or im.mode in ("I", "F") else 8
            return ImageHeader(int(w), int(h), len(im.getbands()), bits, str(im.format))
    except Exception:  # noqa: BLE001 - an unreadable header is for the decoder to report
        return None


def check_decode_budget(data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                        memory_bytes: int | None = None) -> ImageHeader | None:  # fmt: skip
    """Refuse, from the header alone, an image over the pixel cap or the memory budget.

    Raises ImageReadError naming the image's size and the limit; returns the header (or None)."""
    header = read_header(data)
    if header is None:
        return None
    size = f"{header.width}x{header.height} px ({header.megapixels:.0f} MP, {header.bits}-bit {header.format})"
    if header.megapixels > max_megapixels:
        raise ImageReadError(f"image too large: {size} is over the {max_megapixels:g} MP limit "
                             "(--max-megapixels); not decoded")  # fmt: skip
    if memory_bytes is not None and header.peak_bytes() > memory_bytes:
        raise ImageReadError(
            f"image too large for the worker memory budget: {size} needs about {header.peak_bytes() / 2**30:.1f} GiB "
            f"to ingest, the budget is {memory_bytes / 2**30:.1f} GiB (--worker-memory-gb); not decoded"
        )
    return header


def decode_image(data: bytes) -> LoadedImage:
    """Decode image bytes by their content (not their extension) to (H, W, 3) uint8 RGB.

    Accepts 8- or 16-bit, RGB, RGBA, greyscale or palette images, and multi-page TIFFs (first
    page, said in the note). Raises ImageReadError with a readable reason for anything else.
    """
    if len(data) == 0:
        raise ImageReadError("empty file (0 bytes)")
    notes: list[str] = []
    if data[:4] in _TIFF_MAGIC:
        pixels, n_pages = _decode_tiff(data)
        if n_pages > 1:
            notes.append(f"multi-page TIFF ({n_pages} pages): used the first page")
    else:
        pixels = _decode_with_pil(data)
    rgb, conversion = _to_rgb8(pixels)
    if conversion:
        notes.append(conversion)
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise ImageReadError(f"image too small to hold a cell ({rgb.shape[1]}x{rgb.shape[0]} px)")
    return LoadedImage(rgb, "; ".join(notes) or None)


def _decode_with_pil(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                if im.mode == "P" or im.mode == "PA":
                    im = im.convert("RGBA")
                elif im.mode == "CMYK" or im.mode == "YCbCr" or im.mode == "LAB" or im.mode == "HSV":
                    im = im.convert("RGB")
                elif im.mode in ("1", "LA"):
                    im = im.convert("L" if im.mode == "1" else "RGBA")
                im.load()
                return np.asarray(im)
    except UnidentifiedImageError:
        raise ImageReadError(f"not an image: content is not a known image format ({_sniff(data)})") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"image too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        # PIL says "image file is truncated", "broken data stream", ... for damaged files.
        raise ImageReadError(f"truncated or corrupt image data: {err}") from None


def _decode_tiff(data: bytes) -> tuple[np.ndarray, int]:
    """First page of a TIFF via tifffile (which, with imagecodecs, reads CCITT/LZW/JPEG/16-bit RGB)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            n_pages = len(tif.pages)
            page = tif.pages[0]
            arr = page.asarray()
            if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                cmap = np.asarray(page.colormap)  # (3, 2**bits), 16-bit entries
                arr = (cmap[:, arr].transpose(1, 2, 0) >> 8).astype(np.uint8)
            elif page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
                arr = np.iinfo(arr.dtype).max - arr if arr.dtype.kind in "ui" else arr
            return arr, n_pages
    except Exception as tiff_err:  # noqa: BLE001 - any tifffile failure: let PIL have a go
        try:
            return _decode_with_pil(data), 1
        except ImageReadError as pil_err:
            raise ImageReadError(f"unreadable TIFF: {tiff_err}; PIL: {pil_err}") from None


def _to_rgb8(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Any decoded pixel array as (H, W, 3) uint8, and a note when the conversion was lossy."""
    note = None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) TIFFs
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            lo, hi = 0.0, 1.0 if float(np.nanmax(arr)) <= 1.0 else float(np.nanmax(arr))
        else:
            lo, hi = 0.0, float(np.iinfo(arr.dtype).max)
            # 12-bit cameras store in 16-bit words: stretch by the used range, not the container.
            used = float(arr.max()) if arr.size else 0.0
            if 0 < used <= 4095 and arr.dtype.itemsize >= 2:
                hi = 4095.0
        note = f"{arr.dtype} pixels scaled to 8-bit"
        arr = np.clip((np.nan_to_num(arr.astype(np.float32)) - lo) * (255.0 / (hi - lo)), 0, 255)
        arr = (arr + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2), note
    if arr.ndim != 3:
        raise ImageReadError(f"unsupported pixel layout: array of shape {arr.shape}")
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2), note
    if channels == 2:  # grey + alpha
        arr = arr[:, :, :1]
        return np.repeat(_composite_on_white(arr, None), 3, axis=2), note
    if channels == 4:
        return _composite_on_white(arr[:, :, :3], arr[:, :, 3]), note
    if channels == 3:
        return np.ascontiguousarray(arr), note
    raise ImageReadError(f"unsupported pixel layout: {channels} channels")


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Transparent pixels become white, the colour of an empty slide, not black (which looks like stain)."""
    if alpha is None:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32)[:, :, None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return (out + 0.5).astype(np.uint8)


_KNOWN_KINDS = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF", "an HDF5 file"),
    (b"GIF8", "a GIF image (not supported)"),
    (b"RIFF", "a RIFF file (WebP, AVI or WAV; not supported)"),
)


def _sniff(data: bytes) -> str:
    """What kind of file the bytes look like, in words. Never the content itself: the file may hold
    anything (a link to a secrets file was once quoted into a report)."""
    for magic, kind in _KNOWN_KINDS:
        if data.startswith(magic):
            return kind
    head = data[:512]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) or b >= 128 for b in head)
    if printable == len(head):
        text = head.lstrip().lower()
        if text.startswith((b"<html", b"<!doctype html")):
            return "an HTML page"
        if text.startswith(b"<"):
            return "an XML or HTML text file"
        if text.startswith((b"{", b"[")):
            return "a JSON text file"
        return "a text file"
    return "binary data of an unknown format"


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W, 3) uint8 array (fast compression: crops are small)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB from PNG bytes written by `encode_png`."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
