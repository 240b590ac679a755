"""Head segmentation and alignment on heads drawn here at known angles, and on the real datasets.

Angles: `angle` is the head-to-tail direction counter-clockwise from +x as displayed (y up);
`rotation_deg` is the counter-clockwise rotation canonicalize applied to bring the tail to +x,
so a perfect aligner gives rotation_deg == -angle (mod 360).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from spermhead.config import PreprocessConfig
from spermhead.errors import ImageError
from spermhead.preprocess.align import (
    CanonicalImage,
    canonicalize,
    canonicalize_paths,
    load_canonical,
    segment_head,
)

PINK, PURPLE = (235, 160, 190), (95, 35, 105)


def render(angle: float, size: int = 131, length: float = 44, width: float = 26, *, tail: bool = True,
           bg: tuple[int, int, int] = PINK, head: tuple[int, int, int] = PURPLE,
           centre: tuple[float, float] | None = None, scale: float = 1.0) -> np.ndarray:
    """An elliptic head with a thin tail leaving its back end, on a flat background."""
    size = round(size * scale)
    img = np.full((size, size, 3), bg, np.uint8)
    cx, cy = centre if centre is not None else (size / 2, size / 2)
    a = math.radians(angle)
    dx, dy = math.cos(a), -math.sin(a)  # image coordinates, y down
    half = length * scale / 2
    if tail:
        start = (round(cx + dx * half * 0.9), round(cy + dy * half * 0.9))
        end = (round(cx + dx * (half + 60 * scale)), round(cy + dy * (half + 60 * scale)))
        cv2.line(img, start, end, (150, 110, 150), max(1, round(2 * scale)), cv2.LINE_AA)
    cv2.ellipse(img, (round(cx), round(cy)), (round(half), round(width * scale / 2)), -angle, 0, 360, head,
                -1, cv2.LINE_AA)
    return img


def _wrap(deg: float, period: float = 360.0) -> float:
    return abs((deg + period / 2) % period - period / 2)


def _tail_side_darkness(canon: CanonicalImage) -> tuple[float, float]:
    """Mean darkness of the strips left and right of the head, on the axis (gray canonical)."""
    img = canon.image[0].astype(np.float32)
    s = img.shape[0]
    band = img[s // 2 - 2:s // 2 + 3]
    edge = round(s * 0.1)
    return float(255 - band[:, :edge].mean()), float(255 - band[:, -edge:].mean())


# ---------------------------------------------------------------- rendered heads


@pytest.mark.parametrize("angle", list(range(-180, 180, 15)) + [7, 93, -101, 172])
def test_rendered_head_is_recovered_within_10_degrees_tail_right(angle: float):
    cfg = PreprocessConfig(image_size=64, color="gray")
    canon = canonicalize(render(angle), cfg)
    assert canon.aligned and canon.status == "aligned"
    assert canon.image.shape == (1, 64, 64) and canon.image.dtype == np.uint8
    m = canon.morphometrics
    assert m is not None
    assert _wrap(m.rotation_deg + angle) <= 10, (angle, m.rotation_deg)
    left, right = _tail_side_darkness(canon)
    assert right > left + 5, (angle, left, right)


@pytest.mark.parametrize("angle", [0, 35, 90, 150, -120])
def test_rendered_grey_scian_like_head(angle: float):
    img = render(angle, size=35, length=20, width=12, bg=(165, 165, 165), head=(60, 60, 60))
    canon = canonicalize(img, PreprocessConfig(image_size=64, color="rgb"))
    assert canon.aligned and canon.image.shape == (3, 64, 64)
    assert _wrap(canon.morphometrics.rotation_deg + angle) <= 10


def test_head_is_centred_and_scaled_by_its_length():
    cfg = PreprocessConfig(image_size=64, color="gray", margin=0.3)
    # off-centre head: the crop follows it
    canon = canonicalize(render(30, centre=(50, 80), tail=False), cfg)
    head = canon.image[0] < 120
    ys, xs = np.nonzero(head)
    assert abs(ys.mean() - 31.5) < 3
    # along the axis the head spans 1 / (1 + 2 margin) of the crop
    span = xs.max() - xs.min() + 1
    assert abs(span - 64 / 1.6) < 4


def test_image_scale_keeps_absolute_head_size():
    """scale="image" keeps a small head small (SCIAN's "small" class); scale="head" does not."""
    def head_span(length: float, scale: str) -> int:
        cfg = PreprocessConfig(image_size=64, color="gray", scale=scale)
        img = render(0, size=35, length=length, width=length * 0.6, tail=False,
                     bg=(165, 165, 165), head=(60, 60, 60))
        xs = np.nonzero(canonicalize(img, cfg).image[0] < 110)[1]
        return int(xs.max() - xs.min() + 1)

    assert head_span(14, "image") < 0.8 * head_span(20, "image")
    assert abs(head_span(14, "head") - head_span(20, "head")) <= 3


def test_morphometrics_in_original_pixels():
    m = canonicalize(render(20, tail=False), PreprocessConfig()).morphometrics
    assert m is not None
    assert abs(m.length - 45) < 3 and abs(m.width - 27) < 3
    assert abs(m.elongation - m.length / m.width) < 1e-6
    # the boundary sits a little outside the drawn (anti-aliased) edge: about half a pixel
    assert abs(m.area - math.pi * 22.5 * 13.5) / (math.pi * 22.5 * 13.5) < 0.1
    assert 0.9 < m.perimeter / (2 * math.pi * math.sqrt((22**2 + 13**2) / 2)) < 1.15
    assert set(m.to_dict()) == {"area", "length", "width", "elongation", "perimeter", "rotation_deg"}


def test_large_image_is_segmented_reduced_but_measured_in_original_pixels():
    small = canonicalize(render(60), PreprocessConfig()).morphometrics
    big = canonicalize(render(60, scale=6), PreprocessConfig())  # 786 px square
    assert big.aligned
    assert _wrap(big.morphometrics.rotation_deg + 60) <= 10
    assert abs(big.morphometrics.length / small.length - 6) < 0.5


def test_background_padding_is_not_black():
    # a head near the corner: the crop reaches outside the image and is filled with the background
    canon = canonicalize(render(45, centre=(28, 28)), PreprocessConfig(image_size=48, color="rgb"))
    assert canon.aligned
    img = canon.image.transpose(1, 2, 0)
    assert img.min(axis=2).min() > 20
    assert np.abs(img[0, 0].astype(int) - PINK).max() < 10


def test_black_padding_corners_are_not_the_head():
    # SCIAN crops often carry pure-black triangles from an earlier rotation
    img = render(0, size=35, length=22, width=13, bg=(170, 170, 170), head=(70, 70, 70))
    corners = [np.array(p, np.int32) for p in (
        [[0, 0], [14, 0], [0, 14]], [[34, 34], [16, 34], [34, 16]], [[34, 0], [24, 0], [34, 10]])]
    cv2.fillPoly(img, corners, (0, 0, 0))
    mask = segment_head(img)
    assert mask is not None
    assert not mask[:5, :5].any() and not mask[-5:, -5:].any()
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 17) < 2 and abs(ys.mean() - 17) < 2
    canon = canonicalize(img, PreprocessConfig(image_size=64, color="gray"))
    assert canon.aligned and _wrap(canon.morphometrics.rotation_deg) <= 10
    assert canon.image.min() > 30  # the corners were painted with the background


@pytest.mark.parametrize("thickness", [1, 2])
def test_a_black_frame_round_the_crop_is_padding_not_the_whole_image(thickness):
    """Crops exported with a drawn border (ImageJ, screenshots) have black on every edge pixel:
    the head still aligns as it does without the frame, and the frame is painted over."""
    img = render(30)
    framed = img.copy()
    cv2.rectangle(framed, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (0, 0, 0), thickness)
    cfg = PreprocessConfig(image_size=64, color="gray", margin=0.6)
    plain, boxed = canonicalize(img, cfg), canonicalize(framed, cfg)
    assert plain.aligned and boxed.aligned, boxed.status
    assert _wrap(boxed.morphometrics.rotation_deg - plain.morphometrics.rotation_deg) <= 3
    assert boxed.image.min() > 30  # no black frame in the crop


def test_black_padding_is_painted_in_an_image_reduced_for_segmentation():
    """Over 256 px the geometry comes from a reduced copy, and the full-size original is warped:
    its black corners are painted over too, with a wide margin that reaches them."""
    img = render(0, size=35, length=22, width=13, bg=(170, 170, 170), head=(70, 70, 70))
    corners = [np.array(p, np.int32) for p in ([[0, 0], [14, 0], [0, 14]], [[34, 34], [16, 34], [34, 16]])]
    cv2.fillPoly(img, corners, (0, 0, 0))
    big = cv2.resize(img, (350, 350), interpolation=cv2.INTER_NEAREST)  # over the working size
    canon = canonicalize(big, PreprocessConfig(image_size=64, color="gray", margin=0.6))
    assert canon.aligned and canon.image.min() > 30  # no black corner in the crop


def test_neighbour_at_the_edge_is_not_chosen():
    img = render(80)
    cv2.ellipse(img, (125, 10), (25, 14), 30, 0, 360, PURPLE, -1)  # a bigger head cut by the edge
    mask = segment_head(img)
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 65.5) < 5 and abs(ys.mean() - 65.5) < 5


def test_segment_head_removes_the_tail():
    img = render(0)
    mask = segment_head(img)
    assert mask is not None and mask.shape == img.shape[:2] and mask.dtype == bool
    xs = np.nonzero(mask)[1]
    assert xs.max() < 65.5 + 22 + 3  # the tail (to x = 147) is gone


# ---------------------------------------------------------------- fallbacks and options


def test_background_mask_paints_out_the_tail_and_neighbours():
    img = render(0)  # tail to the right
    cv2.circle(img, (30, 30), 6, PURPLE, -1)  # debris near the head, inside the crop
    keep = canonicalize(img, PreprocessConfig(image_size=64)).image[0]
    masked = canonicalize(img, PreprocessConfig(image_size=64, background="mask")).image[0]
    background = round(float(np.dot(PINK, (0.299, 0.587, 0.114))))
    # the head itself is unchanged; the tail strip right of it and the debris are gone
    assert np.array_equal(keep[28:36, 20:44], masked[28:36, 20:44])
    assert keep[30:34, 56:].min() < background - 20
    assert (keep < background - 40).sum() > (masked < background - 40).sum()
    outside = np.ones_like(masked, bool)
    outside[16:48, 8:56] = False
    assert np.abs(masked[outside].astype(int) - int(background)).max() <= 2


@pytest.mark.parametrize("img", [
    np.full((64, 64, 3), 200, np.uint8),
    np.zeros((40, 40, 3), np.uint8),
    np.random.default_rng(0).normal(180, 4, (50, 50, 3)).clip(0, 255).astype(np.uint8),
], ids=["blank", "black", "faint-noise"])
def test_fallback_flags_images_without_a_head(img: np.ndarray):
    canon = canonicalize(img, PreprocessConfig(image_size=32, color="rgb"))
    assert not canon.aligned and canon.morphometrics is None
    assert canon.status.startswith("fallback: ")
    assert canon.image.shape == (3, 32, 32) and canon.image.dtype == np.uint8
    assert segment_head(img) is None


def test_a_bright_head_on_a_dark_field_is_named_as_such():
    """Inverted contrast (a fluorescence-like image) is no head this tool can align, and the reason
    says what was seen, not "contrast 0"."""
    canon = canonicalize(255 - render(30), PreprocessConfig(image_size=32, color="gray"))
    assert not canon.aligned and "a bright head on a dark field?" in canon.status, canon.status


def test_fallback_is_a_centre_crop():
    ramp = np.linspace(150, 168, 80).astype(np.uint8)  # a faint gradient, no head
    img = np.repeat(np.tile(ramp, (40, 1))[:, :, None], 3, axis=2)
    canon = canonicalize(img, PreprocessConfig(image_size=40, color="gray"))
    assert not canon.aligned
    assert (canon.image[0] == img[:, 20:60, 0]).all()


def test_align_false_keeps_the_crop_and_measures():
    img = render(40)
    canon = canonicalize(img, PreprocessConfig(image_size=131, color="rgb", align=False))
    assert not canon.aligned and canon.status == "not aligned (align=False)"
    assert (canon.image.transpose(1, 2, 0) == img).all()
    assert canon.morphometrics is not None and canon.morphometrics.rotation_deg == 0


def test_grey_2d_input_and_bad_colour():
    grey = cv2.cvtColor(render(10), cv2.COLOR_RGB2GRAY)
    assert canonicalize(grey, PreprocessConfig()).aligned
    with pytest.raises(ValueError):
        canonicalize(render(10), PreprocessConfig(color="cmyk"))


# ---------------------------------------------------------------- files


def _write(tmp_path: Path, angles: list[float]) -> list[Path]:
    paths = []
    for i, a in enumerate(angles):
        p = tmp_path / f"head{i}.png"
        Image.fromarray(render(a)).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_canonicalize_paths(tmp_path: Path, workers: int):
    angles = [0, 45, 90, 135, 180, -45, -90, 10]
    paths = _write(tmp_path, angles)
    cfg = PreprocessConfig(image_size=32, color="rgb")
    batch, results = canonicalize_paths(paths, cfg, workers=workers)
    assert batch.shape == (8, 3, 32, 32) and batch.dtype == np.uint8
    assert len(results) == 8 and all(r.aligned for r in results)
    for i, (r, a) in enumerate(zip(results, angles, strict=True)):
        assert np.shares_memory(r.image, batch) and (r.image == batch[i]).all()
        assert _wrap(r.morphometrics.rotation_deg + a) <= 10
    single = load_canonical(paths[3], cfg)
    assert (single.image == batch[3]).all()


def test_canonicalize_paths_names_the_bad_file(tmp_path: Path):
    paths = _write(tmp_path, [0, 30])
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError) as info:
        canonicalize_paths([paths[0], bad, paths[1]], PreprocessConfig(), workers=2)
    assert str(bad) in str(info.value) and info.value.status == 415


@pytest.mark.parametrize("workers", [0, 2])
def test_canonicalize_paths_names_every_bad_file_at_once(tmp_path: Path, workers: int):
    from spermhead.errors import MAX_LISTED, DataError

    good = _write(tmp_path, [0])
    bad = [tmp_path / f"broken{i:02d}.png" for i in range(MAX_LISTED + 3)]
    for path in bad:
        path.write_text("not an image")
    with pytest.raises(DataError) as info:
        canonicalize_paths([*good, bad[0], bad[1]], PreprocessConfig(), workers=workers)
    message = str(info.value)
    assert message.startswith("2 of 3 images cannot be used") and str(bad[0]) in message and str(bad[1]) in message
    with pytest.raises(DataError, match="and 3 more") as info:
        canonicalize_paths(bad, PreprocessConfig(), workers=workers)
    assert str(bad[MAX_LISTED - 1]) in str(info.value) and str(bad[MAX_LISTED]) not in str(info.value)


def test_canonicalize_paths_empty():
    batch, results = canonicalize_paths([], PreprocessConfig(image_size=16))
    assert batch.shape == (0, 1, 16, 16) and results == []


# ---------------------------------------------------------------- real data


def _images(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() in (".bmp", ".tif", ".tiff"))


@pytest.mark.real_data
def test_real_hushem_segments(real_data: Path):
    paths = _images(real_data / "HuSHeM", "*/*")
    assert len(paths) == 216
    _, results = canonicalize_paths(paths, PreprocessConfig(image_size=64, color="rgb"), workers=2)
    ok = np.mean([r.aligned for r in results])
    assert ok >= 0.95, f"only {ok:.1%} of HuSHeM segmented"
    lengths = np.array([r.morphometrics.length for r in results if r.aligned])
    assert 30 < np.median(lengths) < 70  # heads are ~40-55 px long in 131 px crops


@pytest.mark.real_data
def test_real_scian_segments_and_ignores_padding(real_data: Path):
    paths = _images(real_data / "SCIAN-MorphoSpermGS" / "Partial-Agreement-Images", "*")
    assert len(paths) > 1000
    _, results = canonicalize_paths(paths[::4], PreprocessConfig(image_size=64, color="gray"), workers=2)
    assert np.mean([r.aligned for r in results]) >= 0.95
    # SCIAN heads are roughly horizontal already: the applied rotation stays near 0 or 180
    rot = np.array([_wrap(r.morphometrics.rotation_deg, 180) for r in results if r.aligned])
    assert np.mean(rot <= 20) >= 0.9
    padded = [p for p in paths[:200] if (np.asarray(Image.open(p)) == 0).sum() > 20][:20]
    assert padded
    for p in padded:
        grey = np.asarray(Image.open(p))
        mask = segment_head(np.repeat(grey[:, :, None], 3, axis=2))
        assert mask is not None and not (mask & (grey == 0)).any(), p.name


# ---------------------------------------------------------------- contact sheet


def test_contact_sheet(tmp_path: Path):
    from spermhead.data.samples import Sample, SampleTable
    from spermhead.preprocess.preview import contact_sheet

    paths = _write(tmp_path, [0, 60, 120, -30])
    blank = tmp_path / "blank.png"
    Image.new("RGB", (50, 50), (200, 200, 200)).save(blank)
    broken = tmp_path / "broken.bmp"
    broken.write_bytes(b"BM" + b"\0" * 20)
    samples = [Sample(f"n{i}", p, "normal", "test") for i, p in enumerate(paths[:2])]
    samples += [Sample(f"t{i}", p, "tapered", "test") for i, p in enumerate([*paths[2:], blank, broken])]
    table = SampleTable("test", samples)
    out = contact_sheet(table, PreprocessConfig(image_size=32), tmp_path / "sub" / "sheet.png", per_class=3)
    assert out.is_file()
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.width > 3 * 2 * 96 and im.height > 2 * 96
