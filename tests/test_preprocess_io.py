"""read_image: every supported format decodes to H x W x 3 uint8 RGB; every bad file gets a
one-line ImageError that names it, with the HTTP status the server answers with."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spermhead.errors import ImageError
from spermhead.preprocess.io import read_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _bad(source, name: str | None = None, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        read_image(source, name=name, **kw)
    err = info.value
    assert "\n" not in str(err)
    return err


# ---------------------------------------------------------------- good files


@pytest.mark.parametrize("fmt,suffix", [("BMP", ".bmp"), ("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif")])
def test_rgb_formats_from_path_and_bytes(tmp_path: Path, fmt: str, suffix: str):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[5:15, 10:20] = 200, (20, 40, 160)
    path = tmp_path / f"head{suffix}"
    Image.fromarray(rgb).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    for source in (path, str(path), path.read_bytes()):
        out = read_image(source)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
        if fmt == "JPEG":  # lossy: compare away from the edges
            assert np.abs(out[10, 15].astype(int) - (20, 40, 160)).max() <= 12
            assert np.abs(out[1, 1].astype(int) - (200, 0, 0)).max() <= 12
        else:
            assert (out == rgb).all()


def test_grey_is_replicated(tmp_path: Path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    path = tmp_path / "grey.tif"
    Image.fromarray(grey).save(path)  # 8-bit TIFF, like SCIAN
    out = read_image(path)
    assert out.shape == (8, 25, 3)
    assert (out[..., 0] == grey).all() and (out[..., 1] == grey).all() and (out[..., 2] == grey).all()


def test_16_bit_tiff_is_scaled_by_its_range(tmp_path: Path):
    # values in 1000..1999: a blind >> 8 would give 3..7, nearly black
    values = (1000 + np.arange(40 * 25).reshape(40, 25)).astype(np.uint16)
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    out = read_image(path)[..., 0]
    assert out.min() <= 5 and out.max() >= 250
    assert (np.diff(out.astype(int).ravel()) >= 0).all()  # order kept


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_16_bit_colour_is_scaled_by_its_range_with_its_colours(suffix: str):
    """Pillow gives 16-bit colour as its high bytes: a 12-bit camera's image (0-4095) came out
    0-15, nearly black, and alignment found no head in it."""
    import cv2

    rgb = np.zeros((20, 30, 3), np.uint16)
    rgb[..., 0] = (np.arange(30) * 4095 // 29)[None, :]  # red rises left to right over 12 bits
    rgb[5:15, 10:20] = (0, 4095, 2000)  # a green-blue patch
    for image in (rgb, np.dstack([rgb, np.full((20, 30), 65535, np.uint16)])):  # opaque alpha too
        ok, data = cv2.imencode(suffix, np.ascontiguousarray(image[..., [2, 1, 0, *range(3, image.shape[2])]]))
        assert ok
        out = read_image(data.tobytes())
        assert out.shape == (20, 30, 3) and out[..., 0].max() >= 250  # the full range, not 0-15
        assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()  # order kept
        assert out[10, 15, 1] > 240 and 100 < out[10, 15, 2] < 150 and out[10, 15, 0] < 10  # colours kept


def _with_exif_orientation(png: bytes, orientation: int) -> bytes:
    """A PNG with an eXIf chunk holding only an orientation (OpenCV cannot write one)."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) \
        + b"\x00\x00\x00\x00"
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff) & 0xFFFFFFFF)
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


def test_16_bit_colour_is_turned_by_its_exif_orientation_as_8_bit_is():
    import cv2

    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:5, :10] = (250, 0, 0)  # a red corner shows how each orientation turns the image
    rgb[-5:, :10] = (0, 250, 0)
    for orientation in range(1, 9):
        shown = [read_image(_with_exif_orientation(cv2.imencode(".png", a[..., ::-1])[1].tobytes(), orientation))
                 for a in (rgb, rgb.astype(np.uint16) * 16)]
        assert shown[0].shape == shown[1].shape, orientation
        assert ((shown[0] > 128) == (shown[1] > 128)).all(), orientation


def test_png_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (50, 60, 70)).save(buf, "PNG", exif=exif)
    assert read_image(buf.getvalue()).shape == (20, 10, 3)  # shown upright: 10 wide, 20 high


def test_16_bit_png_and_constant_image():
    deep = np.full((10, 10), 40000, np.uint16)
    deep[3:6, 3:6] = 50000
    out = read_image(_encode(Image.fromarray(deep), "PNG"))
    assert out[4, 4, 0] > out[0, 0, 0]
    flat = read_image(_encode(Image.fromarray(np.full((4, 4), 7, np.uint16)), "TIFF"))
    assert flat.shape == (4, 4, 3) and flat.dtype == np.uint8


def test_cmyk_jpeg_becomes_rgb():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow
    assert Image.open(io.BytesIO(_encode(red, "JPEG"))).mode == "CMYK"
    out = read_image(_encode(red, "JPEG"))
    assert out.shape == (16, 16, 3)
    r, g, b = out[8, 8].astype(int)
    assert r > 200 and g < 50 and b < 50


def test_png_alpha_is_filled_with_the_images_own_background():
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., :3] = (230, 150, 180)  # pink background, opaque
    rgba[..., 3] = 255
    rgba[10:20, 10:20] = (90, 20, 80, 255)  # a dark head
    rgba[0:5, 20:30, 3] = 0  # a transparent corner, its hidden colour black
    out = read_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == (30, 30, 3)
    assert tuple(out[2, 25]) == (230, 150, 180)  # not black
    assert tuple(out[15, 15]) == (90, 20, 80)


def test_fully_transparent_png_becomes_white():
    rgba = np.zeros((6, 6, 4), np.uint8)
    out = read_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out == 255).all()


def test_palette_and_grey_alpha_png():
    la = Image.fromarray(np.dstack([np.full((5, 5), 60, np.uint8), np.full((5, 5), 255, np.uint8)]), "LA")
    assert (read_image(_encode(la, "PNG")) == 60).all()
    pal = Image.new("RGB", (5, 5), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(read_image(_encode(pal, "PNG"))[2, 2]) == (10, 200, 30)


# ---------------------------------------------------------------- bad files


def test_zero_byte_file(tmp_path: Path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    err = _bad(path)
    assert (err.problem, err.status) == ("empty file", 400)
    assert str(err) == f"{path}: empty file"
    assert _bad(b"", name="upload.png").status == 400


def test_missing_file(tmp_path: Path):
    err = _bad(tmp_path / "nope.bmp")
    assert (err.problem, err.status) == ("no such file", 400)
    assert "nope.bmp" in str(err)


def test_text_named_png(tmp_path: Path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    err = _bad(path)
    assert err.status == 415
    assert err.problem == "not a supported image (BMP, PNG, JPEG, TIFF)"
    assert str(path) in str(err)


def test_other_image_formats_are_refused():
    gif = _encode(Image.new("RGB", (4, 4)), "GIF")
    assert _bad(gif, name="anim.gif").status == 415


def test_truncated_bmp(tmp_path: Path):
    data = _encode(Image.new("RGB", (131, 131), (200, 150, 170)), "BMP")
    path = tmp_path / "cut.bmp"
    path.write_bytes(data[: len(data) // 3])
    err = _bad(path)
    assert (err.problem, err.status) == ("truncated or corrupt image data", 400)
    assert "cut.bmp" in str(err)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncated_other_formats(fmt: str):
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    err = _bad(data[: len(data) // 2], name=f"cut.{fmt.lower()}")
    assert err.status == 400 and err.problem == "truncated or corrupt image data"


def test_header_only_garbage():
    assert _bad(b"BM" + b"\x00" * 10, name="stub.bmp").status == 400


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels (without making the test allocate them)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_png_is_refused_from_its_header_fast(tmp_path: Path):
    # 20000 x 20000 grey: 400 M pixels, 1.2 GB as RGB; the file itself is small
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20000, 20000))
    start = time.perf_counter()
    err = _bad(path)
    assert time.perf_counter() - start < 0.5
    assert err.status == 413
    assert err.problem == "image is 20000 x 20000 = 400,000,000 pixels, over the limit of 40,000,000"
    assert str(path) in str(err)


def test_max_pixels_limit():
    data = _encode(Image.new("RGB", (131, 131)), "BMP")
    err = _bad(data, name="a.bmp", max_pixels=10_000)
    assert err.status == 413
    assert err.problem == "image is 131 x 131 = 17,161 pixels, over the limit of 10,000"
    assert read_image(data, max_pixels=17_161).shape == (131, 131, 3)


def test_name_defaults():
    err = _bad(b"plain text")
    assert err.name == "<bytes>" and err.status == 415


@pytest.mark.parametrize("seed", range(6))
def test_16_bit_data_is_stretched_through_a_histogram_as_through_float_percentiles(seed: int):
    """A 16-bit image is stretched by a lookup table built from its histogram (a float copy of a
    40-megapixel colour image took 3 GB); the percentiles are numpy's, to within one grey level."""
    from spermhead.preprocess.io import _stretch

    rng = np.random.default_rng(seed)
    top = [7, 300, 4096, 65535, 65535, 1][seed]
    values = rng.integers(0, top + 1, size=(37, 53)).astype(np.uint16 if seed % 2 else np.int32)
    if seed == 5:
        values[:] = 1  # constant: the middle grey
    data = values.astype(np.float64)
    lo, hi = np.percentile(data, (0.5, 99.5))
    if hi <= lo:
        lo, hi = data.min(), data.max()
    expected = (np.full(values.shape, 128) if hi <= lo
                else np.clip((data - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8))
    out = _stretch(values)
    assert out.dtype == np.uint8 and out.shape == values.shape
    assert np.abs(out.astype(int) - expected).max() <= 1 and (out == expected).mean() > 0.99


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_malformed_exif_block_leaves_the_pixels_readable(fmt):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:5, :10] = 255
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, exif=b"Exif\x00\x00garbagegarbage")
    out = read_image(buf.getvalue())
    assert out.shape == (20, 40, 3)  # as stored, not refused as corrupt
    assert out[:5, :10].mean() > 200 and out[10:].mean() < 30



@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_a_stack_of_frames_is_refused_by_name(tmp_path: Path, fmt: str):
    # a z-stack or time series: which frame is the head is not known, so none is guessed
    frames = [Image.fromarray(np.full((20, 30), 40 * i, np.uint8)) for i in range(3)]
    path = tmp_path / f"stack.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"stack\.(tiff|png).*3 frames"):
        read_image(path)


def test_a_tiff_with_a_thumbnail_page_is_read_as_its_first_page(tmp_path: Path):
    big = Image.fromarray(np.full((40, 60), 200, np.uint8))
    path = tmp_path / "with-thumb.tif"
    big.save(path, "TIFF", save_all=True, append_images=[big.resize((15, 10))])
    assert Image.open(path).n_frames == 2
    out = read_image(path)
    assert out.shape == (40, 60, 3) and (out == 200).all()


@pytest.mark.parametrize("dtype, channels", [(np.float64, 1), (np.float32, 3)])
def test_floating_point_tiffs_pillow_cannot_open_are_scaled_by_their_range(tmp_path: Path, dtype, channels: int):
    import cv2

    ramp = np.linspace(-3.0, 5.0, 20 * 30).reshape(20, 30)
    data = (ramp if channels == 1 else np.dstack([ramp * 0.25, ramp * 0.5, ramp])).astype(dtype)  # BGR, as OpenCV writes
    path = tmp_path / "float.tif"
    assert cv2.imwrite(str(path), data)
    with pytest.raises(Exception):  # noqa: B017 - the layout Pillow has no mode for
        Image.open(path).load()
    out = read_image(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] < 10 and out[-1, -1, 0] > 245  # its own range, low to high
    if channels == 3:  # colours kept: scaled together, and in RGB order (OpenCV's is BGR)
        assert out[-1, -1, 0] > out[-1, -1, 1] > out[-1, -1, 2]
    with pytest.raises(ImageError, match="over the limit"):
        read_image(path, max_pixels=100)


def _raw_tiff(data: np.ndarray, orientation: int) -> bytes:
    """An uncompressed little-endian TIFF of `data` (H x W or H x W x 3; unsigned or float) with
    its Orientation tag, written by hand: Pillow writes neither 16-bit colour nor 64-bit floats."""
    height, width = data.shape[:2]
    channels = 1 if data.ndim == 2 else data.shape[2]
    bits, kind = data.dtype.itemsize * 8, 3 if data.dtype.kind == "f" else 1
    pixels = data.astype(data.dtype.newbyteorder("<")).tobytes()
    n_tags = 12
    lists_at = 8 + 2 + 12 * n_tags + 4  # per-channel values that do not fit in their entry
    lists = struct.pack(f"<{channels}H", *[bits] * channels) + struct.pack(f"<{channels}H", *[kind] * channels)
    pixels_at = lists_at + (len(lists) if channels > 1 else 0)

    def entry(tag: int, value: int, per_channel: int | None = None) -> bytes:
        if per_channel is not None and channels > 1:  # LONG offset of the list
            return struct.pack("<HHII", tag, 3, channels, lists_at + per_channel)
        return struct.pack("<HHIHH", tag, 3, 1, value, 0) if value < 65536 else struct.pack("<HHII", tag, 4, 1, value)

    entries = [entry(256, width), entry(257, height), entry(258, bits, 0), entry(259, 1),
               entry(262, 1 if channels == 1 else 2), struct.pack("<HHII", 273, 4, 1, pixels_at),
               entry(274, orientation), entry(277, channels), entry(278, height),
               struct.pack("<HHII", 279, 4, 1, len(pixels)), entry(284, 1), entry(339, kind, 2 * channels)]
    assert len(entries) == n_tags
    return (b"II*\x00" + struct.pack("<IH", 8, n_tags) + b"".join(entries) + struct.pack("<I", 0)
            + (lists if channels > 1 else b"") + pixels)


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
@pytest.mark.parametrize("kind", ["16-bit colour", "64-bit grey"])
def test_a_deep_or_float_tiff_is_turned_by_its_orientation_tag_once(kind: str, orientation: int):
    """OpenCV reads these TIFFs (Pillow cannot, or keeps 8 of 16 bits), and OpenCV 5 turns them by
    their tag itself: turned again, 3 came back unturned and 6 upside down, and a float file
    turned by 6 was refused as corrupt."""
    from spermhead.preprocess.io import _oriented

    rng = np.random.default_rng(0)
    data = (rng.integers(0, 65535, (13, 9, 3)).astype(np.uint16) if kind == "16-bit colour"
            else rng.random((13, 9)) * 4 - 1)
    stored = read_image(_raw_tiff(data, 1), name="as-stored.tif")
    assert stored.shape == (13, 9, 3)
    upright = read_image(_raw_tiff(data, orientation), name="tagged.tif")
    assert np.array_equal(upright, _oriented(stored, orientation))


@pytest.mark.parametrize("dtype, channels", [(np.float64, 1), (np.float32, 3)])
def test_a_floating_point_stack_is_refused_as_other_stacks_are(tmp_path: Path, dtype, channels: int):
    import cv2

    shape = (20, 30) if channels == 1 else (20, 30, 3)
    path = tmp_path / "float-stack.tif"
    assert cv2.imwritemulti(str(path), [np.full(shape, float(i), dtype) for i in range(3)])
    with pytest.raises(ImageError, match=r"float-stack\.tif.*3 frames"):
        read_image(path)


def test_a_tiffs_mask_page_of_the_images_size_is_no_frame(tmp_path: Path):
    from PIL import TiffImagePlugin

    image = Image.fromarray(np.full((40, 60), 200, np.uint8))
    mask = Image.fromarray(np.full((40, 60), 255, np.uint8))
    path = tmp_path / "with-mask.tif"
    # Pillow's save_all gives every page the same tags: each page is written as it writes them
    with open(path, "w+b") as fh, TiffImagePlugin.AppendingTiffWriter(fh) as tiff:
        for page, tags in ((image, {}), (mask, {254: 4})):  # NewSubfileType 4: a transparency mask
            page.encoderinfo, page.encoderconfig = {"tiffinfo": tags}, ()
            TiffImagePlugin._save(page, tiff, str(path))
            tiff.newFrame()
    assert Image.open(path).n_frames == 2
    out = read_image(path)
    assert out.shape == (40, 60, 3) and (out == 200).all()
