"""Any supported image file -> HxWx3 uint8 RGB array, with one-line errors naming the file.

Formats are told by their magic bytes, not their suffix, and opened with the matching Pillow
plugin class. That restricts input to BMP, PNG, JPEG and TIFF, and lets us refuse oversized
images from the header with our own limit before anything is decoded (Pillow's global
decompression-bomb check is left untouched for everyone else).
"""

from __future__ import annotations

import functools
import io
import os
import struct
from pathlib import Path
from typing import IO

import numpy as np
from PIL import BmpImagePlugin, Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from spermhead.config import MAX_PIXELS
from spermhead.errors import ImageError

SUPPORTED = "not a supported image (BMP, PNG, JPEG, TIFF)"
CORRUPT = "truncated or corrupt image data"

# Errors Pillow raises on bad headers or data: none of them mean "our bug".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                  struct.error, ZeroDivisionError, Image.DecompressionBombError)


def _plugin_for(prefix: bytes) -> type[ImageFile.ImageFile] | None:
    """The Pillow class for a file's first bytes, or None when it is none of ours."""
    if prefix.startswith(b"BM"):
        return BmpImagePlugin.BmpImageFile
    if prefix.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile
    if prefix.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile
    if prefix[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return TiffImagePlugin.TiffImageFile
    return None


def _open_source(source: Path | str | bytes, name: str) -> IO[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise ImageError(name, "empty file", 400)
        return io.BytesIO(data)
    path = Path(source)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ImageError(name, "no such file", 400) from None
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})", 400) from None
    if path.is_dir():
        raise ImageError(name, "is a folder, not an image file", 400)
    if size == 0:
        raise ImageError(name, "empty file", 400)
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by read_image
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})", 400) from None


def read_image(source: Path | str | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a BMP, PNG, JPEG or TIFF (path or bytes) into an HxWx3 uint8 RGB array.

    Grey is replicated to three channels; transparent pixels are filled with the image's own
    background colour; CMYK is converted; 16-bit (grey or colour) and float data are scaled by
    their actual value range. Raises `ImageError` (with an HTTP status) naming the file.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    fh = _open_source(source, name)
    try:
        plugin = _plugin_for(fh.read(16))
        fh.seek(0)
        if plugin is None:
            raise ImageError(name, SUPPORTED, 415)
        try:
            im = plugin(fh)
        except _DECODE_ERRORS:
            # Pillow has no mode for 64-bit or colour floating-point TIFFs, which OpenCV reads
            if plugin is TiffImagePlugin.TiffImageFile and (rgb := _float_tiff(fh, name, max_pixels)) is not None:
                return rgb
            raise ImageError(name, CORRUPT, 400) from None
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                name, f"image is {width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,}", 413
            )
        if width < 1 or height < 1:
            raise ImageError(name, CORRUPT, 400)
        if (frames := _stack_frames(im, name)) > 1:
            raise ImageError(name, STACK.format(frames), 400)
        try:
            # Pillow hands 16-bit colour over as its high bytes: a 12-bit camera's image comes out
            # nearly black, so such files are decoded again with OpenCV, all 16 bits kept
            deep = im.mode in ("RGB", "RGBA") and ";16" in _rawmode(im)
            if deep and (rgb := _deep_colour(fh)) is not None:  # Pillow's own decode would go unused
                # OpenCV leaves a PNG's EXIF out, but some versions (5.0) turn a TIFF by its tag
                turned = isinstance(im, TiffImagePlugin.TiffImageFile) and _opencv_turns_tiffs()
                return rgb if turned else _oriented(rgb, _orientation(im))
            im.load()
            if isinstance(im, JpegImagePlugin.JpegImageFile | PngImagePlugin.PngImageFile):
                im = _upright(im)  # phone photos store their rotation in EXIF
            return _to_rgb(im)
        except _DECODE_ERRORS:
            raise ImageError(name, CORRUPT, 400) from None
    finally:
        fh.close()


def _float_tiff(fh: IO[bytes], name: str, max_pixels: int) -> np.ndarray | None:
    """A floating-point TIFF Pillow cannot open, as 8-bit RGB scaled by its own range over all
    its channels; None where it is no such file. Its pages are read from its directories first:
    its size is checked against the limit, and a stack refused, before anything is decoded."""
    import cv2

    try:
        fh.seek(0)
        directory = TiffImagePlugin.ImageFileDirectory_v2(fh.read(8))
        pages, offset, seen, orientation = [], directory.next, set(), 1
        while offset and offset not in seen and len(pages) < MAX_PAGES:  # a looped chain ends too
            seen.add(offset)
            fh.seek(offset)
            directory.load(fh)
            # ImageWidth, ImageLength, NewSubfileType
            pages.append((int(directory[256]), int(directory[257]), int(directory.get(254, 0))))
            if len(pages) == 1:
                orientation = int(directory.get(EXIF_ORIENTATION, 1))
            offset = directory.next
    except (*_DECODE_ERRORS, AttributeError):
        return None
    if not pages:
        return None
    width, height, _ = pages[0]
    if width * height > max_pixels:
        raise ImageError(name, f"image is {width} x {height} = {width * height:,} pixels, over the limit of "
                               f"{max_pixels:,}", 413)
    if (frames := _same_size_pages(pages)) > 1:
        raise ImageError(name, STACK.format(frames), 400)
    fh.seek(0)
    data = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    turned = _opencv_turns_tiffs()  # by the Orientation tag, as some OpenCV versions do
    upright = (width, height) if turned and orientation in (5, 6, 7, 8) else (height, width)
    if data is None or data.dtype.kind != "f" or data.shape[:2] != upright:
        return None
    if not turned:
        data = _oriented(data, orientation)
    if data.ndim == 2:
        return np.repeat(_stretch(data)[:, :, None], 3, axis=2)
    if data.ndim == 3 and data.shape[2] in (3, 4):
        return np.ascontiguousarray(_stretch(data[:, :, 2::-1]))  # BGR(A) -> RGB; alpha left out
    return None


MAX_PAGES = 10_000
STACK = ("holds {} frames of one size (a stack or a series), which one is the head is not known: save "
         "each frame as its own file")


def _same_size_pages(pages: list[tuple[int, int, int]]) -> int:
    """How many of a file's pages (width, height, TIFF NewSubfileType) are frames of the first
    one's size. A reduced-resolution page (a thumbnail, a pyramid's level) or a mask does not
    count (NewSubfileType bits 1 and 4), nor does a page of another size."""
    width, height, _ = pages[0]
    return sum((w, h) == (width, height) and not kind & 0b101 for w, h, kind in pages)


def _stack_frames(im: ImageFile.ImageFile, name: str) -> int:
    """How many frames of the first one's size a file holds (a z-stack, a time series, an
    animated PNG), as `_same_size_pages` counts them: a TIFF's thumbnail, pyramid levels and
    masks do not count, its first page is the image."""
    try:
        count = int(getattr(im, "n_frames", 1))
        if count < 2:
            return 1
        pages = []
        for index in range(min(count, MAX_PAGES)):
            im.seek(index)
            kind = im.tag_v2.get(254, 0) if isinstance(im, TiffImagePlugin.TiffImageFile) else 0
            pages.append((*im.size, int(kind)))
        im.seek(0)
        return _same_size_pages(pages)
    except _DECODE_ERRORS:
        raise ImageError(name, CORRUPT, 400) from None


EXIF_ORIENTATION = 0x0112


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) where the EXIF block cannot be parsed."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS:
        return 1


def _upright(im: Image.Image) -> Image.Image:
    """`im` turned as its EXIF says; as stored where a malformed EXIF block says nothing usable
    (the pixels decode fine: refusing the image as corrupt would be wrong)."""
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im


def _oriented(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """`rgb` as shown upright under its EXIF orientation (2-8), as ImageOps.exif_transpose turns an image."""
    turned = {2: rgb[:, ::-1], 3: rgb[::-1, ::-1], 4: rgb[::-1], 5: rgb.swapaxes(0, 1),
              6: np.rot90(rgb, -1), 7: np.rot90(rgb, 2).swapaxes(0, 1), 8: np.rot90(rgb, 1)}.get(orientation, rgb)
    return np.ascontiguousarray(turned)


@functools.cache
def _opencv_turns_tiffs() -> bool:
    """Whether this OpenCV turns a TIFF by its Orientation tag as it decodes it (5.0 does, whatever
    the flags): asked once, of a 2-pixel TIFF mirrored by its tag."""
    import cv2

    buffer = io.BytesIO()
    Image.fromarray(np.array([[1, 2]], dtype=np.uint16)).save(buffer, "TIFF", tiffinfo={EXIF_ORIENTATION: 2})
    data = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    return data is not None and data.ravel().tolist() == [2, 1]


def _rawmode(im: Image.Image) -> str:
    """The pixel layout of the file's first tile (e.g. 'RGB;16B'), as Pillow will decode it."""
    tile = getattr(im, "tile", None)
    if not tile:
        return ""
    args = tile[0].args
    raw = args[0] if isinstance(args, tuple) and args else args
    return raw if isinstance(raw, str) else ""


def _deep_colour(fh: IO[bytes]) -> np.ndarray | None:
    """A 16-bit colour PNG or TIFF as 8-bit RGB, scaled by its own range over all three channels
    (so colour balance is kept); None where OpenCV does not read it as 16-bit colour."""
    import cv2

    fh.seek(0)
    data = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3 or data.shape[2] not in (3, 4):
        return None
    rgb = _stretch(data[:, :, 2::-1])
    if data.shape[2] == 3:
        return np.ascontiguousarray(rgb)
    return _composite(np.dstack([rgb, (data[:, :, 3] >> 8).astype(np.uint8)]))


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode == "L":
        return np.repeat(np.asarray(im, dtype=np.uint8)[:, :, None], 3, axis=2)
    if mode in ("I", "F") or mode.startswith("I;"):
        return np.repeat(_stretch(np.asarray(im))[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return _composite(rgba)
    if mode == "1":
        return np.repeat((np.asarray(im, dtype=np.uint8) * 255)[:, :, None], 3, axis=2)
    # CMYK (Pillow already undoes Adobe's inverted JPEG CMYK), YCbCr, P, LAB, HSV ...
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit/32-bit/float grey to 8 bits by its own range (robust percentiles)."""
    if values.dtype.kind in "ui" and values.size and values.min() >= 0 and values.max() < 1 << 16:
        return _stretch_u16(values.astype(np.uint16, copy=False))
    data = values.astype(np.float32)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(finite, (0.5, 99.5))
    if hi <= lo:  # near-constant image: fall back to the full range
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.full(values.shape, 128, np.uint8)
    scaled = (np.nan_to_num(data, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _stretch_u16(values: np.ndarray) -> np.ndarray:
    """`_stretch` for 16-bit data through a histogram and a lookup table: the same percentiles
    without float copies of the image (a 40-megapixel colour image took 3 GB and 14 s that way)."""
    hist = np.zeros(1 << 16, np.int64)
    for top in range(0, len(values), 256):  # in bands: bincount copies its input as 64-bit integers
        hist += np.bincount(values[top:top + 256].ravel(), minlength=1 << 16)
    cdf = np.cumsum(hist)
    n = int(cdf[-1])

    def percentile(q: float) -> float:  # numpy's linear interpolation between order statistics
        pos = q * (n - 1)
        k = int(pos)
        a, b = (int(np.searchsorted(cdf, j, side="right")) for j in (k, min(k + 1, n - 1)))
        return a + (pos - k) * (b - a)

    lo, hi = percentile(0.005), percentile(0.995)
    if hi <= lo:  # near-constant image: fall back to the full range
        lo, hi = float(np.searchsorted(cdf, 0, side="right")), float(np.searchsorted(cdf, n - 1, side="right"))
    if hi <= lo:
        return np.full(values.shape, 128, np.uint8)
    lut = np.clip((np.arange(1 << 16, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo)) + 0.5, 0, 255)
    return lut.astype(np.uint8)[values]


def _composite(rgba: np.ndarray) -> np.ndarray:
    """Lay RGBA over the image's own background: the median of its opaque border pixels."""
    alpha = rgba[:, :, 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[:, :, :3])
    border = np.concatenate([rgba[0], rgba[-1], rgba[:, 0], rgba[:, -1]])
    opaque = border[border[:, 3] == 255, :3]
    background = np.median(opaque, axis=0) if len(opaque) else np.full(3, 255.0)
    out = np.empty(rgba.shape[:2] + (3,), np.uint8)
    for top in range(0, len(rgba), 512):  # in bands: float copies of a whole large image take gigabytes
        band = rgba[top:top + 512]
        a = band[:, :, 3:].astype(np.float32) / 255.0
        mixed = band[:, :, :3].astype(np.float32) * a + background.astype(np.float32) * (1.0 - a)
        out[top:top + 512] = np.clip(mixed + 0.5, 0, 255)
    return out
