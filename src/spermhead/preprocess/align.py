"""Head segmentation, rotation to horizontal, crop and morphometrics -> `CanonicalImage`.

Canonical orientation (docs/ARCHITECTURE.md): the head's major axis horizontal, the midpiece
(tail side) pointing right, the head centred in a square of (1 + 2 x `cfg.margin`) x its length.

How: Otsu threshold on the darkest channel (purple stain on pink, or grey), the largest most
central component, an opening that removes the tail, a limited growth into a pale acrosome,
image moments for the axis, three cues for the tail side, one warpAffine for the crop. All of
it works on the head's bounding box of a small crop, so one image takes a fraction of a
millisecond; `canonicalize_paths` runs many of them in a thread pool (OpenCV and Pillow
release the GIL).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from spermhead.config import PreprocessConfig
from spermhead.errors import ImageError, raise_for_unusable
from spermhead.preprocess.io import read_image

WORK_MAX = 256  # larger images are segmented on a copy this size (geometry scaled back)
MIN_CONTRAST = 20.0  # grey levels between head and background below which we give up
MIN_AREA_FRACTION = 0.003  # a head smaller than this part of the image is noise
MAX_AREA_FRACTION = 0.8  # ... and larger than this is no head on a background
GROW_LEVEL = 0.35  # pale acrosome: pixels this far (x contrast) below the background join the head
TAIL_LEVEL = 0.2  # midpiece and tail: pixels this far below the background count as "faint"
NECK = 0.45  # the neck starts where head-plus-midpiece is narrower than this x the head's width


@dataclass
class Morphometrics:
    """Head shape in the original image's pixels; `rotation_deg` is counter-clockwise as displayed."""

    area: float
    length: float
    width: float
    elongation: float
    perimeter: float
    rotation_deg: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in asdict(self).items()}


@dataclass
class CanonicalImage:
    image: np.ndarray  # uint8, C x S x S
    morphometrics: Morphometrics | None
    aligned: bool
    status: str  # "aligned", "not aligned (align=False)" or "fallback: <reason>"
    source_shape: tuple[int, int] = (0, 0)  # the original image's height and width


FALLBACK = "fallback"  # the status prefix where segmentation found no head


def head_found(status: str) -> bool:
    """False where segmentation found no head and the whole image was used (a blank frame, noise,
    debris): such an image is classified, but is no head to count in a sample's class shares."""
    return not status.startswith(FALLBACK)


class _NoHead(Exception):
    """Segmentation found nothing usable; the message becomes the fallback reason."""


# ---------------------------------------------------------------- segmentation


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _border(img: np.ndarray) -> np.ndarray:
    return np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])


def _median_u8(values: np.ndarray) -> float:
    """Median of uint8 values from their histogram (np.median sorts: ten times slower here)."""
    cumulative = np.cumsum(np.bincount(values, minlength=256))
    total = int(cumulative[-1])
    lo = int(np.searchsorted(cumulative, (total + 1) // 2))
    hi = int(np.searchsorted(cumulative, total // 2 + 1))
    return (lo + hi) / 2


def _prepare(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Working-size RGB with black padding painted over, its darkest channel, background, scale.

    The darkest channel (per-pixel minimum) shows a purple stain on pink and grey alike best.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    scale = 1.0
    if max(h, w) > WORK_MAX:
        scale = WORK_MAX / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    r, g, b = cv2.split(rgb)  # numpy's min over a length-3 last axis is ~50x slower
    low = cv2.min(cv2.min(r, g), b)
    padding = _padding_mask(rgb, r, g, b) if cv2.countNonZero(low) < low.size else None
    border = _border(rgb)
    if padding is not None:
        keep = _border(padding) == 0
        if keep.any():
            border = border[keep]
        else:
            # a black frame covers the whole edge: the background lies just inside it
            ring = (cv2.dilate(padding, _disk(2)) > 0) & (padding == 0)
            border = rgb[ring] if ring.any() else border
    background = np.array([_median_u8(border[:, i]) for i in range(3)])
    if padding is not None:
        rgb = rgb.copy()
        rgb[padding > 0] = np.round(background).astype(np.uint8)
        low[padding > 0] = np.uint8(round(float(background.min())))
    return rgb, low, background, scale


def _padding_mask(rgb: np.ndarray, r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Pure-black pixels connected to the border (left by an earlier rotation, or a drawn frame),
    grown by their rim. Only the black pixels themselves: a frame's filled outline would be the
    whole image."""
    black = (cv2.max(cv2.max(r, g), b) == 0).view(np.uint8)
    if cv2.countNonZero(black) == 0:
        return None
    _, labels = cv2.connectedComponents(black, connectivity=8)
    touching = np.unique(_border(labels))
    touching = touching[touching > 0]
    if touching.size == 0:
        return None
    mask = np.isin(labels, touching).view(np.uint8)
    # the rotation's interpolation leaves a one-pixel dark rim: treat it as padding too
    return cv2.dilate(mask, _disk(1))


def _paint_padding(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """`rgb` with its black padding (`_padding_mask`) in the background colour; itself where it has none."""
    r, g, b = cv2.split(rgb)
    padding = _padding_mask(rgb, r, g, b)
    if padding is None:
        return rgb
    painted = rgb.copy()
    painted[padding > 0] = np.round(background).astype(np.uint8)
    return painted


def _touches_edge(rect: Sequence[int], w: int, h: int) -> bool:
    x, y, bw, bh = rect
    return x == 0 or y == 0 or x + bw == w or y + bh == h


def _pick_component(contours: Sequence[np.ndarray], shape: tuple[int, int],
                    min_area: float) -> int | None:
    """Index of the largest, most central blob (neighbours cut by the edge count less).

    Works on outer contours: OpenCV's labelling with statistics costs ten times as much here.
    """
    h, w = shape
    best, best_score = None, 0.0
    for i, contour in enumerate(contours):
        if len(contour) < 3:
            continue
        m = cv2.moments(contour)
        area = m["m00"]
        if area < min_area:
            continue
        d = math.hypot((m["m10"] / area - (w - 1) / 2) / w, (m["m01"] / area - (h - 1) / 2) / h)
        score = area * math.exp(-((d / 0.3) ** 2))
        if _touches_edge(cv2.boundingRect(contour), w, h):
            score *= 0.5
        if score > best_score:
            best, best_score = i, score
    return best


# Morphology with a Euclidean disk through distance transforms: several times faster than
# erode/dilate with a large elliptic kernel, and the first transform also gives the head's radius.


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    return (cv2.distanceTransform(1 - mask, cv2.DIST_L2, 3) <= radius).view(np.uint8)


def _open(mask: np.ndarray, radius: float, dist: np.ndarray | None = None) -> np.ndarray:
    if dist is None:
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    return _dilate((dist > radius).view(np.uint8), radius)


def _largest_overlap(mask: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """The component of `mask` sharing most pixels with `reference`, as a 0/1 mask."""
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    if n <= 1:
        return None
    if n == 2:
        return mask
    counts = np.bincount(labels[reference > 0], minlength=n)
    counts[0] = 0
    if counts.max() == 0:
        return None
    return (labels == int(np.argmax(counts))).view(np.uint8)


@dataclass
class _Scene:
    """One image as segmentation left it, in working pixels; masks cover the box `roi` only."""

    rgb: np.ndarray  # RGB with black padding painted over with the background
    blurred: np.ndarray  # smoothed darkest channel: low = dark
    background: np.ndarray  # RGB background colour
    bg_level: float  # background level of `blurred`
    contrast: float  # background level minus the head's mean level
    scale: float  # working pixels per original pixel
    roi: tuple[int, int, int, int]  # x0, y0, x1, y1 of the masks below
    mask: np.ndarray  # 0/1 head, tail and midpiece removed
    structure: np.ndarray  # 0/1 head with whatever dark is attached to it (neck, midpiece)
    others: np.ndarray | None  # 0/1 (full size) other sizeable dark objects: neighbours, debris

    def full(self, mask: np.ndarray, outside: int = 0) -> np.ndarray:
        """A box-sized mask pasted into a full working-size frame."""
        frame = np.full(self.blurred.shape, outside, np.uint8)
        x0, y0, x1, y1 = self.roi
        frame[y0:y1, x0:x1] = mask
        return frame


def _segment(rgb: np.ndarray) -> _Scene:
    rgb, low, background, scale = _prepare(rgb)
    h, w = low.shape
    k = 3 if min(h, w) < 80 else 5
    blurred = cv2.GaussianBlur(low, (k, k), 0)
    bg_level = _median_u8(_border(blurred))
    _, dark = cv2.threshold(blurred, 0, 1, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(dark, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_area = max(6.0, MIN_AREA_FRACTION * h * w)
    best = _pick_component(contours, (h, w), min_area)
    if best is None:
        raise _NoHead("no head found")
    bx, by, bw, bh = cv2.boundingRect(contours[best])
    # work on the candidate's box, padded enough for the growth step below
    pad = min(bw, bh) // 4 + 3
    x0, y0, x1, y1 = max(0, bx - pad), max(0, by - pad), min(w, bx + bw + pad), min(h, by + bh + pad)
    candidate = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # filled: a pale vacuole must not shrink the head's radius below
    cv2.drawContours(candidate, contours, best, 1, thickness=cv2.FILLED, offset=(-x0, -y0))
    box = blurred[y0:y1, x0:x1]
    contrast = bg_level - cv2.mean(box, mask=candidate)[0]
    if contrast < 0:  # what was found is lighter than its surroundings
        raise _NoHead("no head found (no dark object on a lighter background: a bright head on a dark field?)")
    if contrast < MIN_CONTRAST:
        raise _NoHead(f"no head found (contrast {contrast:.0f} grey levels)")
    # open with a disk half the head's inscribed radius: the tail and midpiece, thinner than that, go
    dist = cv2.distanceTransform(candidate, cv2.DIST_L2, 3)
    r_open = max(1.0, round(0.5 * float(dist.max())))
    core = _largest_overlap(_open(candidate, r_open, dist), candidate)
    if core is None:
        raise _NoHead("no head found (only thin structures)")
    # Otsu often leaves out a pale acrosome: grow into faint pixels within half a radius of the
    # core, then open again (the short midpiece stub grown along with it is thin and goes)
    faint = (box < bg_level - max(6.0, GROW_LEVEL * contrast)).view(np.uint8)
    grown = _dilate(core, r_open) & faint | core
    head = _largest_overlap(_open(grown, r_open), core)
    if head is None:
        head = core
    # fill holes (a vacuole) by redrawing the outer contour
    outline, _ = cv2.findContours(head, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros_like(head)
    cv2.drawContours(mask, outline, -1, 1, thickness=cv2.FILLED)
    area = float(cv2.countNonZero(mask))
    if area < min_area or area > MAX_AREA_FRACTION * h * w:
        raise _NoHead(f"no head found (head area {area / (h * w):.1%} of the image)")
    others = None
    big = [c for i, c in enumerate(contours) if i != best and len(c) > 2 and cv2.contourArea(c) > 0.25 * area]
    if big:
        others = np.zeros_like(dark)
        cv2.drawContours(others, big, -1, 1, thickness=cv2.FILLED)
    return _Scene(rgb, blurred, background, bg_level, contrast, scale, (x0, y0, x1, y1),
                  mask, candidate | mask, others)


def segment_head(rgb: np.ndarray) -> np.ndarray | None:
    """Boolean head mask (same size as `rgb`), tail and midpiece removed; None when no head is found."""
    try:
        scene = _segment(rgb)
    except _NoHead:
        return None
    mask = scene.full(scene.mask)
    if scene.scale != 1.0:
        mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool)


# ---------------------------------------------------------------- geometry


@dataclass
class _Head:
    """The head's geometry in working pixels (full frame); theta points from head to tail."""

    centre: tuple[float, float]  # the head's box centre in its own frame
    theta: float  # radians, image coordinates (y down)
    length: float
    width: float
    area: float
    perimeter: float
    cues: tuple[float, float, float]  # tail, stain, shape (for diagnostics)
    mask: np.ndarray  # 0/1 box-sized head mask, neck trimmed (the scene's roi)


@dataclass
class _Extent:
    length: float
    width: float
    centre: tuple[float, float]  # the head's box centre in its own frame (full frame)
    theta: float  # the axis the box is aligned with
    offset: float  # box centre minus centroid along the axis: > 0 when the bulk sits at -axis
    contours: Sequence[np.ndarray]  # outer contour(s) of the mask, box coordinates


def _axis(mask: np.ndarray, x0: int, y0: int) -> tuple[float, float, float]:
    """Centroid (full frame) and major-axis angle (radians, y down) from image moments."""
    m = cv2.moments(mask, binaryImage=True)
    cx, cy = m["m10"] / m["m00"] + x0, m["m01"] / m["m00"] + y0
    return cx, cy, 0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"])


def _extent(mask: np.ndarray, x0: int, y0: int, cx: float, cy: float, theta: float) -> _Extent:
    """The head's box in its own frame, from its outline (the extreme pixels all lie on it)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate(contours)[:, 0, :].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = pts[:, 0] + (x0 - cx), pts[:, 1] + (y0 - cy)
    u = dx * c + dy * s
    v = dy * c - dx * s
    umin, umax, vmin, vmax = float(u.min()), float(u.max()), float(v.min()), float(v.max())
    # centre the crop on the head's box in its own frame, not on its centroid (pulled to the heavy end)
    um, vm = (umin + umax) / 2, (vmin + vmax) / 2
    centre = (cx + um * c - vm * s, cy + um * s + vm * c)
    return _Extent(umax - umin + 1, vmax - vmin + 1, centre, theta, um, contours)


def _half(shape: tuple[int, int], x0: int, y0: int, centre: tuple[float, float], theta: float,
          at: float) -> np.ndarray:
    """0/1 box-sized mask of the pixels at least `at` along the axis from `centre`."""
    c, s = math.cos(theta), math.sin(theta)
    big = 4.0 * (shape[0] + shape[1])
    px, py = centre[0] - x0 + at * c, centre[1] - y0 + at * s
    corners = [(px - big * s, py + big * c), (px + big * s, py - big * c),
               (px + big * s + big * c, py - big * c + big * s), (px - big * s + big * c, py + big * c + big * s)]
    out = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(out, np.round(np.array(corners) * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    return out


def _measure(scene: _Scene) -> _Head:
    x0, y0 = scene.roi[:2]
    mask = scene.mask
    cx, cy, theta = _axis(mask, x0, y0)
    ext = _extent(mask, x0, y0, cx, cy, theta)
    cues = _direction_cues(scene, ext)
    if _combine(*cues) < 0:
        theta += math.pi
    trimmed = _trim_neck(scene, ext, theta)
    if trimmed is not None:
        mask = trimmed
        cx, cy, new_theta = _axis(mask, x0, y0)
        # keep the tail side found above
        theta = new_theta if math.cos(new_theta - theta) >= 0 else new_theta + math.pi
        ext = _extent(mask, x0, y0, cx, cy, theta)
    perimeter = sum(cv2.arcLength(cnt, True) for cnt in ext.contours)
    return _Head(ext.centre, theta, ext.length, ext.width, float(cv2.countNonZero(mask)), perimeter, cues,
                 mask)


def _combine(tail: float, stain: float, shape: float) -> float:
    """One signed score from the three cues (each > 0 when the tail is on the +axis side)."""
    return 2.0 * tail + 0.75 * math.tanh(stain / 0.1) + 0.3 * math.tanh(shape / 0.03)


def _strip(img: np.ndarray, centre: tuple[float, float], theta: float, left: int, right: int,
           band: int, outside: int) -> np.ndarray:
    """`img` resampled in the head's frame: rows -band..band across, columns -left..right along."""
    c, s = math.cos(theta), math.sin(theta)
    cx, cy = centre
    matrix = np.array([[c, s, left - (c * cx + s * cy)], [-s, c, band - (-s * cx + c * cy)]])
    return cv2.warpAffine(img, matrix, (left + right + 1, 2 * band + 1), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=outside)


def _direction_cues(scene: _Scene, ext: _Extent) -> tuple[float, float, float]:
    """Three signed cues, > 0 when the tail lies on the +axis side of `ext`.

    1. tail: how far faint pixels (the midpiece) continue along the axis beyond each end of the
       head; the front ends within a pixel or two (its blurred rim), the neck runs on, and one
       that runs out of the image is taken to go on;
    2. stain: the post-acrosomal (tail-side) half is darker than the pale acrosome;
    3. shape: the head is broader at the front, so its centroid sits towards the front.
    """
    half = ext.length / 2
    reach = max(3, round(0.6 * ext.length))  # how far beyond each end we look
    band = max(1, round(0.3 * ext.width))  # half-height of the strip along the axis
    faint = (scene.blurred < scene.bg_level - max(6.0, TAIL_LEVEL * scene.contrast)).view(np.uint8)
    if scene.others is not None:
        faint = faint & (1 - scene.others)
    side = math.ceil(half) + reach
    strip = _strip(faint, ext.centre, ext.theta, side, side, band, outside=2)
    # per column: 1 faint, 2 outside the image, 0 background
    columns = np.where((strip == 1).any(axis=0), 1, np.where((strip == 2).all(axis=0), 2, 0))
    run_r = _run(columns[math.floor(side + half):], reach)
    run_l = _run(columns[: math.ceil(side - half) + 1][::-1], reach)
    tail = float(np.clip((run_r - run_l) / max(2.0, 0.15 * ext.length), -1.0, 1.0))
    x0, y0, x1, y1 = scene.roi
    box = scene.blurred[y0:y1, x0:x1]
    front = scene.mask & _half(box.shape, x0, y0, ext.centre, ext.theta + math.pi, 0.15 * half)
    back = scene.mask & _half(box.shape, x0, y0, ext.centre, ext.theta, 0.15 * half)
    stain = 0.0
    if cv2.countNonZero(front) and cv2.countNonZero(back):
        stain = (cv2.mean(box, mask=front)[0] - cv2.mean(box, mask=back)[0]) / max(scene.contrast, 1.0)
    # the centroid sits towards the broad front
    shape = ext.offset / max(half, 1.0)
    return tail, stain, shape


def _run(columns: np.ndarray, reach: int) -> int:
    """Length of the leading run of faint columns (1); one that leaves the image (2) goes on: `reach`."""
    stops = np.flatnonzero(columns != 1)
    if stops.size == 0:
        return int(columns.size)
    return reach if columns[stops[0]] == 2 and stops[0] > 0 else int(stops[0])


def _trim_neck(scene: _Scene, ext: _Extent, theta: float) -> np.ndarray | None:
    """Cut the neck off the head mask (box-sized result), or None when there is none to cut.

    In blurred low-resolution crops (SCIAN) the midpiece is nearly as thick as the opening disk,
    and a cone of it stays on the head. Along the axis towards the tail, the neck is where the
    head-plus-midpiece gets narrower than NECK x the head's width and then stays thin for a
    while (or leaves the image); a head's own rounded end narrows only over its last pixels.
    """
    half = ext.length / 2
    reach = max(3, round(0.5 * ext.length))
    band = max(1, math.ceil(0.75 * ext.width))
    # columns from the box centre (0) towards the tail
    strip = _strip(scene.full(scene.structure), ext.centre, theta, 0, math.ceil(half) + reach, band,
                   outside=2)
    widths = (strip == 1).sum(axis=0)
    core_rows = max(1, round(0.25 * ext.width))
    outside = (strip[band - core_rows:band + core_rows + 1] == 2).any(axis=0)
    widest = max(ext.width, float(widths[: math.ceil(half)].max(initial=0)))
    narrow = widths < NECK * widest
    thin = np.flatnonzero(narrow)
    if thin.size == 0 or thin[0] >= half:
        return None
    start = int(thin[0])
    # the thin part: narrow but not empty, inside the image
    stops = np.flatnonzero(~(narrow[start:] & (widths[start:] > 0) & ~outside[start:]))
    run = start + int(stops[0]) if stops.size else widths.size
    leaves = run < widths.size and bool(outside[run])
    if not (leaves or run - start >= max(2.0, 0.1 * ext.length)):
        return None
    # keep the head pixels before the cut
    x0, y0 = scene.roi[:2]
    trimmed = scene.mask & (1 - _half(scene.mask.shape, x0, y0, ext.centre, theta, start))
    return trimmed if cv2.countNonZero(trimmed) >= 0.5 * cv2.countNonZero(scene.mask) else None


# ---------------------------------------------------------------- output


def _to_chw(img: np.ndarray, color: str) -> np.ndarray:
    if color == "gray":
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return np.ascontiguousarray(img[None])
    if color == "rgb":
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    raise ValueError(f"color must be 'gray' or 'rgb', not {color!r}")


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def _centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return _resize(rgb[y0:y0 + side, x0:x0 + side], size)


def _morphometrics(head: _Head, scale: float, rotation_deg: float) -> Morphometrics:
    k = 1.0 / scale
    return Morphometrics(
        area=head.area * k * k, length=head.length * k, width=head.width * k,
        elongation=head.length / max(head.width, 1e-6), perimeter=head.perimeter * k,
        rotation_deg=rotation_deg,
    )


def _warp(img: np.ndarray, centre: tuple[float, float], theta: float, side: float, size: int,
          background: tuple[float, ...]) -> np.ndarray:
    """Rotate about `centre` so theta points right, crop a `side`-pixel square, resize to `size`."""
    # straight to `size` unless shrinking by over 2x, where bilinear sampling would alias: then
    # warp at native resolution and shrink with INTER_AREA
    canvas = size if side <= 2 * size else math.ceil(side)
    k = canvas / side
    c, s = math.cos(theta), math.sin(theta)
    cx, cy = centre
    half = (canvas - 1) / 2
    matrix = np.array([[k * c, k * s, half - k * (c * cx + s * cy)],
                       [-k * s, k * c, half - k * (-s * cx + c * cy)]])
    out = cv2.warpAffine(img, matrix, (canvas, canvas), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=background)
    return _resize(out, size)


def _mask_background(rgb: np.ndarray, scene: _Scene, head: _Head) -> np.ndarray:
    """Paint everything outside the head (grown by a tenth of its width) with the background."""
    keep = _dilate(scene.full(head.mask), max(1.0, 0.1 * head.width))
    if keep.shape != rgb.shape[:2]:
        keep = cv2.resize(keep, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = rgb.copy()
    out[keep == 0] = np.asarray(scene.background, np.uint8)
    return out


def canonicalize(rgb: np.ndarray, cfg: PreprocessConfig) -> CanonicalImage:
    """Turn an HxWx3 uint8 RGB crop (or HxW grey) into the canonical C x S x S image.

    Aligned: major axis horizontal, tail side right, head centred, margin `cfg.margin` x length,
    padded with the background colour. When no head is found: a centre crop, `aligned=False`
    and `status` "fallback: <reason>". With `cfg.align` False: a centre crop, morphometrics kept.
    """
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    try:
        scene = _segment(rgb)
        head = _measure(scene)
    except _NoHead as exc:
        return CanonicalImage(_to_chw(_centre_crop(rgb, cfg.image_size), cfg.color), None, False,
                              f"{FALLBACK}: {exc}", shape)
    if not cfg.align:
        return CanonicalImage(_to_chw(_centre_crop(rgb, cfg.image_size), cfg.color),
                              _morphometrics(head, scene.scale, 0.0), False, "not aligned (align=False)", shape)
    # counter-clockwise as displayed (y points down), in (-180, 180]
    rotation = -((180.0 - math.degrees(head.theta)) % 360.0 - 180.0)
    k = scene.scale
    # a reduced copy found the geometry: warp the full-resolution original, its black rotation
    # padding painted over as the working copy's was
    source = scene.rgb if k == 1.0 else _paint_padding(rgb, scene.background)
    centre = (head.centre[0] / k, head.centre[1] / k) if k != 1.0 else head.centre
    if cfg.scale == "image":
        side = float(min(rgb.shape[:2]))  # fixed magnification: absolute head size survives
    else:
        side = head.length / k * (1 + 2 * cfg.margin)
    if cfg.background == "mask":
        source = _mask_background(source, scene, head)
    if cfg.color == "gray":
        source = cv2.cvtColor(source, cv2.COLOR_RGB2GRAY)
        background: tuple[float, ...] = (float(np.dot(scene.background, (0.299, 0.587, 0.114))),)
    else:
        background = tuple(float(v) for v in scene.background)
    out = _warp(source, centre, head.theta, side, cfg.image_size, background)
    return CanonicalImage(_to_chw(out, cfg.color), _morphometrics(head, k, rotation), True, "aligned", shape)


def load_canonical(path: Path | str, cfg: PreprocessConfig) -> CanonicalImage:
    """Read one file (ImageError naming it when unusable) and canonicalize it."""
    return canonicalize(read_image(path, max_pixels=cfg.max_pixels), cfg)


def canonicalize_paths(paths: Sequence[Path | str], cfg: PreprocessConfig,
                       workers: int = 0) -> tuple[np.ndarray, list[CanonicalImage]]:
    """Read and canonicalize many files: (N x C x S x S uint8 batch, one CanonicalImage per file).

    Each result's `image` is a view into the batch. `workers`: 0 or 1 = in this thread, n > 1 = a
    pool of n threads, -1 = one per CPU. An unreadable file raises ImageError naming it; several
    raise one DataError listing them all, so a lab fixes its folder in one pass.
    """
    channels = 1 if cfg.color == "gray" else 3
    batch = np.empty((len(paths), channels, cfg.image_size, cfg.image_size), np.uint8)
    if workers < 0:
        workers = os.cpu_count() or 1

    def attempt(path: Path | str) -> CanonicalImage | ImageError:
        try:
            return load_canonical(path, cfg)
        except ImageError as exc:
            return exc

    if workers <= 1 or len(paths) < 2:
        results = [attempt(p) for p in paths]
    else:
        # OpenCV's own threads would only fight the pool's for the cores on images this small
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(attempt, paths))
        finally:
            cv2.setNumThreads(previous)
    raise_for_unusable([r for r in results if isinstance(r, ImageError)], len(paths))
    for i, result in enumerate(results):
        assert isinstance(result, CanonicalImage)
        batch[i] = result.image
        result.image = batch[i]
    return batch, results
