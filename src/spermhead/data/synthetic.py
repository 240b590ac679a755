"""Rendered sperm heads in the real datasets' layouts: the demo's data and the tests' data.

Each crop is a stained head (a filled outline whose shape depends on the WHO class), a lighter
acrosome cap at the front, a midpiece and a thin curved tail leaving the back, plus nuisance that
does not depend on the class: magnification, stain colour or grey level, illumination gradient,
blur, noise, debris specks and stray tails. Only `small` changes size on purpose.

Angle convention (`info["angle_deg"]`): the direction from the head's centroid towards its tail
end, along the head's major axis, in degrees counter-clockwise from +x with y pointing *up*,
in (-180, 180]. In array terms the tail end lies along (col, row) = (cos a, -sin a) from the
centroid. The outline is rotated so that its own second-moment major axis is exactly this
direction, so a moment-based aligner should recover it up to pixelisation.

Images are 8-bit: HuSHeM style is 131x131 RGB on pink, any orientation; SCIAN style is a grey
30-35 px square with the head horizontal (tail left or right, a few degrees of jitter) and,
as in the real crops, sometimes black corners left over from rotating the source.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from spermhead.data.readers import HUSHEM_DIR, HUSHEM_FOLDERS, SCIAN_DIR, os_litter, read_hushem, read_scian
from spermhead.data.samples import SampleTable
from spermhead.errors import ConfigError, DataError

STYLES = ("hushem", "scian")
LABELS = ("normal", "tapered", "pyriform", "small", "amorphous")
STYLE_CLASSES = {
    "hushem": ("normal", "tapered", "pyriform", "amorphous"),
    "scian": ("normal", "tapered", "pyriform", "small", "amorphous"),
}
SCIAN_CODES = {"normal": "0", "tapered": "1", "pyriform": "2", "small": "3", "amorphous": "5"}
SCIAN_CLASSES_TXT = "0 Normal\n1 Tapered\n2 Pyriform\n3 Small\n5 Amorphous\n"
SCIAN_GROUPS = ("p1-pl2", "p1-pl3", "p3-pl1", "p4-pl1", "p4-pl2", "p5-pl1")
SCIAN_SPERM_PER_SAMPLE = 8
EXPERT_FLIP = 0.3  # chance that each expert votes another class; at most one does, so the majority is true

_N_OUTLINE = 96
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 px
_ONE = 1 << _SHIFT


def _outline(label: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Unit-scale outline (N x 2, tail end towards +x) and the class's length/width ratio."""
    t = np.linspace(0.0, 2 * np.pi, _N_OUTLINE, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    if label in ("normal", "small"):
        k = rng.uniform(-0.03, 0.10)  # a faint egg shape, blunter at the front
        x, y = c, s * (1 - k * c)
        ratio = rng.uniform(1.3, 1.8)
    elif label == "tapered":
        k = rng.uniform(-0.05, 0.08)
        x, y = c, np.sign(s) * np.abs(s) ** rng.uniform(0.75, 1.0) * (1 - k * c)  # cigar sides
        ratio = rng.uniform(2.1, 2.9)
    elif label == "pyriform":
        k = rng.uniform(0.45, 0.7)  # width falls from front to back: a pear, narrow at the midpiece
        x, y = c, s * (1 - k * (1 + c) / 2) ** 1.4
        ratio = rng.uniform(1.45, 2.0)
    elif label == "amorphous":
        x, y = c, s * (1 - rng.uniform(-0.3, 0.3) * c)
        # A waist in some, lopsided sides in all, and random lobes: no two alike.
        if rng.random() < 0.3:
            y = y * (1 - rng.uniform(0.2, 0.45) * np.exp(-((c - rng.uniform(-0.4, 0.4)) / 0.35) ** 2))
        asym = rng.uniform(0.08, 0.3)
        y = y * np.where(s > 0, 1 + asym, 1 - asym)
        ks = np.arange(2, 7)
        amp = rng.uniform(0.0, 1.0, ks.size) / ks**0.6
        amp *= rng.uniform(0.12, 0.28) / amp.sum()
        r = 1 + (amp[:, None] * np.cos(ks[:, None] * t + rng.uniform(0, 2 * np.pi, ks.size)[:, None])).sum(0)
        x, y = x * r, y * r
        x = x + rng.uniform(-0.25, 0.25) * y**2  # bent
        ratio = rng.uniform(1.25, 1.9)
    else:
        raise ConfigError(f"unknown class {label!r}; expected one of {', '.join(LABELS)}")
    return np.stack([x, y], 1), ratio


def _principal(points: np.ndarray) -> np.ndarray:
    """Centre the outline on its area centroid and turn its major axis onto x (tail side +x)."""
    m = cv2.moments(points.astype(np.float32))
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    phi = 0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"])
    p = points - (cx, cy)
    rot = np.array([[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]])
    p = p @ rot.T
    if p[0, 0] < 0:  # point 0 was built as the tail end: keep it on +x
        p = -p
    return p


def _tail_attachment(p: np.ndarray) -> float:
    """x where the outline crosses the +x axis furthest out: where the midpiece starts."""
    q = np.roll(p, -1, 0)
    cross = (p[:, 1] <= 0) != (q[:, 1] <= 0)
    f = p[cross, 1] / (p[cross, 1] - q[cross, 1])
    xs = p[cross, 0] + f * (q[cross, 0] - p[cross, 0])
    return float(xs.max())


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre row and column coordinates, float32, shared between calls (read-only)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def _draw_lines(shape: tuple[int, int], pts: np.ndarray, thickness: float) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [np.round(pts * _ONE).astype(np.int32)], False, 255,
                  max(1, round(thickness)), cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255


def _curve(rng: np.random.Generator, start: np.ndarray, heading: float, step: float, n: int,
           bend: float) -> np.ndarray:
    """A smooth random walk in heading: tails curve gently and sometimes wave."""
    turn = bend + np.cumsum(rng.normal(0, 0.035, n))
    angles = heading + np.cumsum(turn) * step / 20
    steps = np.stack([np.cos(angles), np.sin(angles)], 1) * step
    return np.vstack([start, start + np.cumsum(steps, 0)])


def _style_params(style: str, rng: np.random.Generator) -> dict:
    if style == "hushem":
        return {
            "side": 131, "ss": 1, "length": 44.0, "midpiece": 0.08,
            "bg": np.array([rng.uniform(238, 255), g := rng.uniform(154, 182), g + rng.uniform(8, 36)]),
            "absorb": np.array([0.6, 1.0, 0.55]) * rng.uniform(0.85, 1.15, 3),
            "density": rng.uniform(1.2, 2.0), "light": rng.uniform(0.3, 0.5),
            "blur": rng.uniform(0.6, 1.3), "noise": rng.uniform(1.5, 5.0),
            "angle": rng.uniform(-180, 180), "jitter": 6.0,
        }
    if style == "scian":
        side = 35 if rng.random() < 0.65 else int(rng.integers(30, 35))
        tail_left = rng.random() < 0.5
        return {
            "side": side, "ss": 4, "length": 20.0, "midpiece": 0.2,
            "bg": np.full(3, rng.uniform(135, 205)), "absorb": np.ones(3),
            "density": rng.uniform(0.6, 1.3), "light": rng.uniform(0.55, 0.85),
            "blur": rng.uniform(0.45, 1.1), "noise": rng.uniform(1.0, 3.5),
            "angle": (180.0 if tail_left else 0.0) + float(np.clip(rng.normal(0, 2.5), -6, 6)),
            "jitter": 1.0,
        }
    raise ConfigError(f"unknown synthetic style {style!r}; expected one of {', '.join(STYLES)}")


def render_head(label: str, style: str, rng: np.random.Generator,
                angle_deg: float | None = None) -> tuple[np.ndarray, dict]:
    """One crop: HxWx3 uint8 RGB (grey styles repeat the channel) and what was drawn.

    info: label, style, angle_deg (see the module docstring), center (col, row of the head's
    centroid), length_px / width_px (head extent along / across the axis), area_px,
    acrosome_fraction (share of the head area under the lighter cap), mask (HxW bool head).
    """
    if label not in LABELS:
        raise ConfigError(f"unknown class {label!r}; expected one of {', '.join(LABELS)}")
    sp = _style_params(style, rng)
    ss, side = sp["ss"], sp["side"]
    size = side * ss  # SCIAN is drawn 4x larger and shrunk, so its few pixels are anti-aliased
    angle = float(sp["angle"] if angle_deg is None else angle_deg)
    angle = 180.0 - (180.0 - angle) % 360.0  # into (-180, 180]

    # Geometry: magnification is class-blind; `small` alone shrinks on top of it.
    shape, ratio = _outline(label, rng)
    length = sp["length"] * rng.uniform(0.85, 1.15)
    if label == "small":
        length *= rng.uniform(0.56, 0.72)
    elif label == "tapered":
        length *= rng.uniform(1.0, 1.15)
    elif label == "amorphous":
        length *= rng.uniform(0.85, 1.2)
    width = length / ratio
    p = _principal(shape)
    p = p / (np.ptp(p[:, 0]), np.ptp(p[:, 1])) * (length, width) * ss
    mirror = 1.0 if rng.random() < 0.5 else -1.0  # lopsided shapes come in both hands

    a = np.deg2rad(angle)
    u = np.array([np.cos(a), -np.sin(a)])  # tail direction in (col, row)
    v = np.array([np.sin(a), np.cos(a)]) * mirror
    centre = np.array([side / 2, side / 2]) * ss + rng.uniform(-1, 1, 2) * sp["jitter"] * ss
    poly = centre + p[:, :1] * u + p[:, 1:] * v

    head = np.zeros((size, size), np.uint8)
    cv2.fillPoly(head, [np.round(poly * _ONE).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
    head_f = head.astype(np.float32) / 255

    # Stain inside the head: a lighter acrosome over a chosen share of the front, a darker back.
    rows, cols = _grid(size)
    dx, dy = cols - float(centre[0]), rows - float(centre[1])
    along = (dx * float(u[0]) + dy * float(u[1])) * (2 / (length * ss))  # -1 front .. +1 back
    across = (dx * float(v[0]) + dy * float(v[1])) * (2 / (width * ss))
    if label in ("normal", "small"):
        frac = rng.uniform(0.4, 0.7)
    elif label == "amorphous":
        frac = 0.0 if rng.random() < 0.3 else rng.uniform(0.15, 0.8)
    else:
        frac = rng.uniform(0.3, 0.65)
    cap = along + rng.uniform(0.0, 0.35) * across**2  # the cap's edge bows towards the back
    inside = head_f > 0.5
    acro = np.zeros_like(head_f)
    if frac > 0 and inside.any():
        edge = float(np.quantile(cap[inside], frac))
        acro = 0.5 - 0.5 * np.tanh((cap - edge) / 0.12)
        frac = float((cap[inside] < edge).mean())
    stain = (1 - (1 - sp["light"]) * acro) * (0.95 + 0.05 * np.clip(along, -1, 1))
    texture = cv2.resize(rng.normal(0, 0.06, (5, 5)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    # A darker rim just inside the outline, as the stained edge of a real head looks.
    rim = np.clip(head_f - cv2.GaussianBlur(head_f, (0, 0), 1.2 * ss), 0, None)
    density = head_f * sp["density"] * (stain + texture) + rim * sp["density"] * rng.uniform(0.3, 0.8)
    if label == "amorphous" and rng.random() < 0.4:  # vacuoles: pale holes in the chromatin
        for _ in range(int(rng.integers(1, 3))):
            spot = np.zeros((size, size), np.uint8)
            at = centre + (rng.uniform(-0.4, 0.4) * length * u + rng.uniform(-0.3, 0.3) * width * v) * ss
            r = rng.uniform(0.08, 0.16) * width * ss
            cv2.circle(spot, tuple(np.round(at * _ONE).astype(int)), int(r * _ONE), 255, -1, cv2.LINE_AA, _SHIFT)
            density *= 1 - 0.6 * spot.astype(np.float32) / 255

    # Bright halo just outside the head, as phase/bright-field rims show.
    halo = np.clip(cv2.GaussianBlur(head_f, (0, 0), 1.5 * ss * length / sp["length"]) - head_f, 0, None)
    density -= rng.uniform(0.3, 1.0) * halo

    # Midpiece and tail leave the back end along the axis, then wander off.
    attach = centre + _tail_attachment(p) * u
    heading = np.arctan2(u[1], u[0])
    mid_len = rng.uniform(0.5, 1.0) * length * ss
    mid = _curve(rng, attach - 0.5 * u * ss, heading, mid_len / 6, 6, rng.uniform(-0.05, 0.05))
    tail = _curve(rng, mid[-1], heading + rng.normal(0, 0.1), 3.0 * ss, int(1.6 * side / 3),
                  rng.uniform(-0.25, 0.25))
    lines = np.maximum(
        _draw_lines(head.shape, mid, np.clip(sp["midpiece"] * width, 1.0, 3.0) * ss) * rng.uniform(0.4, 0.7),
        _draw_lines(head.shape, tail, max(1.0, 0.045 * width) * ss) * rng.uniform(0.2, 0.4),
    )
    # Debris specks and, now and then, a stray tail from another cell: away from the head.
    for _ in range(int(rng.poisson(1.5))):
        at = rng.uniform(0, size, 2)
        if np.linalg.norm(at - centre) < 0.8 * length * ss:
            continue
        spot = np.zeros((size, size), np.uint8)
        r = rng.uniform(0.015, 0.05) * sp["length"] * ss
        cv2.circle(spot, tuple(np.round(at * _ONE).astype(int)), int(r * _ONE), 255, -1, cv2.LINE_AA, _SHIFT)
        lines = np.maximum(lines, spot.astype(np.float32) / 255 * rng.uniform(0.3, 1.0))
    if rng.random() < 0.3:
        edge_pt = np.array([rng.choice([0.0, size]), rng.uniform(0, size)])[rng.permutation(2)]
        towards = np.arctan2(*(centre - edge_pt)[::-1]) + rng.uniform(0.5, 1.0) * rng.choice([-1, 1])
        stray = _curve(rng, edge_pt, towards, 3.0 * ss, int(1.5 * side / 3), rng.uniform(-0.2, 0.2))
        lines = np.maximum(lines, _draw_lines(head.shape, stray, max(1.0, 0.045 * width) * ss) * 0.3)
    density = np.where(head_f > 0.5, density, np.maximum(density, lines * sp["density"]))

    # Beer-Lambert: stain absorbs per channel; background light falls off along a random direction.
    g = rng.uniform(0, 0.1) * np.array([np.cos(gd := rng.uniform(0, 2 * np.pi)), np.sin(gd)])
    light = 1 + ((cols - size / 2) * float(g[0]) + (rows - size / 2) * float(g[1])) / size
    bg, absorb = sp["bg"].astype(np.float32), sp["absorb"].astype(np.float32)
    img = (light[..., None] * bg) * np.exp(-density[..., None] * absorb)
    mask = head_f
    if ss > 1:
        img = cv2.resize(img.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(head_f, (side, side), interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sp["blur"])
    if style == "scian":
        img = img[..., :1]  # one grey plane: noise must be the same in all channels
    img = img + rng.normal(0, sp["noise"], img.shape)
    if style == "scian" and rng.random() < 0.45:
        img = _black_corners(img, rng)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, 2)

    head_mask = mask > 0.5
    info = {
        "label": label, "style": style, "angle_deg": angle,
        "center": (float(centre[0] / ss), float(centre[1] / ss)),
        "length_px": float(length), "width_px": float(width),
        "area_px": float(head_mask.sum()), "acrosome_fraction": float(frac), "mask": head_mask,
    }
    return out, info


def _black_corners(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Black triangles in one or two corners, as left by rotating the real SCIAN crops."""
    side = img.shape[0]
    rows, cols = np.mgrid[0:side, 0:side]
    for corner in rng.choice(4, int(rng.integers(1, 3)), replace=False):
        r = rows if corner < 2 else side - 1 - rows
        c = cols if corner % 2 == 0 else side - 1 - cols
        a, b = rng.uniform(3, 10, 2)
        img = np.where((r / a + c / b < 1)[..., None], 0.0, img)
    return img


def _encode(rgb: np.ndarray, style: str) -> bytes:
    """BMP (24-bit RGB) for HuSHeM, 8-bit grey TIFF for SCIAN, as the real files are."""
    buf = io.BytesIO()
    if style == "hushem":
        Image.fromarray(rgb, "RGB").save(buf, format="BMP")
    else:
        Image.fromarray(np.ascontiguousarray(rgb[..., 0]), "L").save(buf, format="TIFF")
    return buf.getvalue()


def _image_rng(seed: int, style: str, label: str, index: int) -> np.random.Generator:
    # One stream per image: an image does not change when n_per_class does.
    return np.random.default_rng([seed, STYLES.index(style), LABELS.index(label), index])


def _expert_votes(label: str, rng: np.random.Generator) -> list[str]:
    """Three experts; at most one disagrees, so the majority is the true class."""
    true = SCIAN_CODES[label]
    votes = [true] * 3
    flipped = np.flatnonzero(rng.random(3) < EXPERT_FLIP)
    if flipped.size:
        others = [c for c in SCIAN_CODES.values() if c != true]
        # Single experts also use codes 4 and 6, which classes.txt lacks, now and then.
        wrong = str(rng.choice(["4", "6"])) if rng.random() < 0.05 else str(rng.choice(others))
        votes[int(rng.choice(flipped))] = wrong  # only one of them, so two still agree
    return votes


def _written_by_synth(relative: Path, style: str) -> bool:
    """Whether a path in a synthetic dataset folder is one `write_synthetic` writes there."""
    parts = relative.parts
    if parts == ("SYNTHETIC.txt",) or os_litter(parts[-1]):
        return True  # a file browser's own files go with the folder
    if style == "hushem":
        return parts[0] in HUSHEM_FOLDERS and (len(parts) == 1 or (
            len(parts) == 2 and re.fullmatch(r"image_\d{3,}\.BMP", parts[1]) is not None))
    if parts in (("PA-expert-annotations.txt",), ("classes.txt",), ("Partial-Agreement-Images",)):
        return True
    return len(parts) == 2 and parts[0] == "Partial-Agreement-Images" and re.fullmatch(
        r"ch00_p\d+-pl\d+-sample\d+-sperm\d+\.tif", parts[1]) is not None


def _write_hushem(root: Path, n_per_class: int, seed: int) -> None:
    for folder, label in zip(HUSHEM_FOLDERS, STYLE_CLASSES["hushem"], strict=True):
        (root / folder).mkdir(parents=True)
        for i in range(1, n_per_class + 1):
            rgb, _ = render_head(label, "hushem", _image_rng(seed, "hushem", label, i))
            (root / folder / f"image_{i:03d}.BMP").write_bytes(_encode(rgb, "hushem"))


def _write_scian(root: Path, n_per_class: int, seed: int) -> None:
    images = root / "Partial-Agreement-Images"
    images.mkdir(parents=True)
    items = [(label, i) for label in STYLE_CLASSES["scian"] for i in range(1, n_per_class + 1)]
    order = np.random.default_rng([seed, 1000]).permutation(len(items))
    votes_rng = np.random.default_rng([seed, 1001])
    counts = dict.fromkeys(SCIAN_GROUPS, 0)
    lines = []
    for k, j in enumerate(order):
        label, i = items[j]
        group = SCIAN_GROUPS[k % len(SCIAN_GROUPS)]
        sample, sperm = divmod(counts[group], SCIAN_SPERM_PER_SAMPLE)
        counts[group] += 1
        sample, sperm = sample + 1, sperm + 1
        rgb, _ = render_head(label, "scian", _image_rng(seed, "scian", label, i))
        (images / f"ch00_{group}-sample{sample}-sperm{sperm}.tif").write_bytes(_encode(rgb, "scian"))
        votes = _expert_votes(label, votes_rng)
        lines.append(f"{group}-sample{sample:02d}/Sperm_{sperm:02d}\t" + "\t".join([*votes, SCIAN_CODES[label]]))
    (root / "PA-expert-annotations.txt").write_text("\n".join(sorted(lines, key=_scian_key)) + "\n")
    (root / "classes.txt").write_text(SCIAN_CLASSES_TXT)


def _scian_key(line: str) -> tuple:
    ident = line.split("\t", 1)[0]
    group, rest = ident.split("-sample")
    sample, sperm = rest.split("/Sperm_")
    return group, int(sample), int(sperm)


def write_synthetic(out: Path | str, style: str, n_per_class: int, seed: int = 0, *,
                    overwrite: bool = False) -> SampleTable:
    """Write a synthetic HuSHeM or SCIAN dataset under `out`, as the real one is laid out.

    hushem -> out/HuSHeM/0N_<Class>/image_NNN.BMP (4 classes, load as "hushem");
    scian -> out/SCIAN-MorphoSpermGS/ with Partial-Agreement-Images/, PA-expert-annotations.txt
    and classes.txt (5 classes, load as "scian-pa"). The same seed gives the same bytes. The
    dataset is written to a hidden folder beside the target and renamed into place when complete.
    Returns the table the reader sees.
    """
    if style not in STYLES:
        raise ConfigError(f"unknown synthetic style {style!r}; expected one of {', '.join(STYLES)}")
    if n_per_class < 1:
        raise ConfigError(f"--n-per-class {n_per_class}: must be at least 1")
    out = Path(out)
    name = HUSHEM_DIR if style == "hushem" else SCIAN_DIR
    target = out / name

    def refuse_if_taken() -> None:
        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: is a file, not a folder; give a folder to write the dataset into")
        if target.exists() and not target.is_dir():
            raise DataError(f"{target}: is a file, not a dataset folder; move it, or write elsewhere")
        if not (target.is_dir() and any(target.iterdir())):
            return
        if not overwrite:
            raise DataError(f"{target}: already exists and is not empty; pass --overwrite to replace it")
        if not (target / "SYNTHETIC.txt").is_file():  # ./data is also where a lab keeps the real images
            raise DataError(f"{target}: holds a dataset that is not synthetic (no SYNTHETIC.txt), which --overwrite "
                            "would delete; write the synthetic heads to another folder")
        if foreign := [f for f in sorted(target.rglob("*")) if not _written_by_synth(f.relative_to(target), style)]:
            raise DataError(f"{target}: holds {foreign[0].relative_to(target)}"
                            + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                            + ", which data synth did not write and --overwrite would delete; move it, or write "
                            "the synthetic heads to another folder")

    refuse_if_taken()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out))
    try:
        root = tmp / name
        (_write_hushem if style == "hushem" else _write_scian)(root, n_per_class, seed)
        (root / "SYNTHETIC.txt").write_text(
            f"Synthetic {style} data from spermhead.data.synthetic (seed {seed}, "
            f"{n_per_class} per class). Not real microscope images.\n")
        refuse_if_taken()
        if target.exists():
            old = tmp / "replaced"
            os.replace(target, old)  # moved aside first, so the swap leaves no half dataset
        os.replace(root, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_hushem(target) if style == "hushem" else read_scian(target)
