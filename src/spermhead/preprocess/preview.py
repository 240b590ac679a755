"""A contact sheet: per class, raw crops beside their canonical (aligned) images, to check by eye
that heads come out horizontal, centred and with the tail to the right."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spermhead.config import PreprocessConfig
from spermhead.data.samples import SampleTable
from spermhead.errors import SpermheadError
from spermhead.preprocess.align import canonicalize
from spermhead.preprocess.io import read_image

TILE = 96  # display size of each raw and canonical image
GAP = 4  # between the two images of a pair
PAIR_GAP = 12  # between pairs
LABEL_W = 120
HEADER_H = 22
ROW_GAP = 8
BACKGROUND = (255, 255, 255)
FAILED = (220, 30, 30)  # frame of a canonical image that fell back to a centre crop


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """Scale to fit a size x size tile, letterboxed with white; small crops grow with sharp pixels."""
    h, w = rgb.shape[:2]
    k = size / max(h, w)
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_NEAREST
    scaled = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=interp)
    tile = np.full((size, size, 3), 255, np.uint8)
    y0, x0 = (size - scaled.shape[0]) // 2, (size - scaled.shape[1]) // 2
    tile[y0:y0 + scaled.shape[0], x0:x0 + scaled.shape[1]] = scaled
    return tile


def check_sheet_name(out: Path, option: str) -> None:
    """Before the images are read: `out` names a format the sheet can be saved in (its suffix)."""
    from spermhead.errors import ConfigError

    Image.init()
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        what = f"no image format is written as {out.suffix}" if out.suffix else "no suffix"
        raise ConfigError(f"{option} {out}: {what}; give a .png file name")


def _save(sheet: Image.Image, out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
    except (OSError, ValueError) as exc:  # ValueError: a suffix PIL has no format for
        raise SpermheadError(f"{out}: cannot write the sheet ({getattr(exc, 'strerror', None) or exc})") from None
    return out


def _canonical_rgb(chw: np.ndarray) -> np.ndarray:
    return np.repeat(chw[0][:, :, None], 3, axis=2) if chw.shape[0] == 1 else chw.transpose(1, 2, 0)


def _pick(table: SampleTable, per_class: int, seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {}
    for label in table.classes:
        idx = [i for i, s in enumerate(table.samples) if s.label == label]
        if len(idx) > per_class:
            idx = sorted(rng.choice(idx, per_class, replace=False).tolist())
        chosen[label] = idx
    return chosen


def contact_sheet(table: SampleTable, cfg: PreprocessConfig, out: Path, per_class: int = 6,
                  seed: int = 0) -> Path:
    """Write a PNG grid: one row per class, `per_class` random samples, each as raw | canonical.

    Canonical images that fell back to a centre crop get a red frame; unreadable files a note.
    """
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    chosen = _pick(table, per_class, seed)
    rows = [label for label in table.classes if chosen[label]]
    cols = max((len(v) for v in chosen.values()), default=0)
    pair_w = 2 * TILE + GAP
    width = LABEL_W + max(1, cols) * (pair_w + PAIR_GAP)
    height = HEADER_H + max(1, len(rows)) * (TILE + ROW_GAP) + ROW_GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(11)
    for c in range(cols):
        x = LABEL_W + c * (pair_w + PAIR_GAP)
        draw.text((x, 4), "raw", fill=(90, 90, 90), font=small)
        draw.text((x + TILE + GAP, 4), f"aligned {cfg.image_size}px {cfg.color}", fill=(90, 90, 90), font=small)
    counts = table.class_counts()
    for r, label in enumerate(rows):
        y = HEADER_H + r * (TILE + ROW_GAP)
        draw.text((6, y + TILE // 2 - 16), label, fill=(0, 0, 0), font=font)
        draw.text((6, y + TILE // 2 + 2), f"{counts.get(label, 0)} images", fill=(90, 90, 90), font=small)
        for c, i in enumerate(chosen[label]):
            x = LABEL_W + c * (pair_w + PAIR_GAP)
            sample = table.samples[i]
            try:
                rgb = read_image(sample.path, max_pixels=cfg.max_pixels)
            except SpermheadError as exc:
                draw.rectangle((x, y, x + pair_w - 1, y + TILE - 1), outline=FAILED)
                draw.text((x + 4, y + 4), "unreadable", fill=FAILED, font=small)
                draw.text((x + 4, y + 20), str(getattr(exc, "problem", exc))[:40], fill=FAILED, font=small)
                continue
            canon = canonicalize(rgb, cfg)
            sheet.paste(Image.fromarray(_fit(rgb, TILE)), (x, y))
            sheet.paste(Image.fromarray(_fit(_canonical_rgb(canon.image), TILE)), (x + TILE + GAP, y))
            if not canon.aligned:
                draw.rectangle((x + TILE + GAP, y, x + pair_w - 1, y + TILE - 1), outline=FAILED, width=2)
    return _save(sheet, Path(out))


def duplicate_sheet(table: SampleTable, groups: list[list[int]], sigs: np.ndarray, out: Path) -> Path:
    """Write a PNG with one row per near-duplicate group: its images side by side, each captioned
    with its id's last part, its label and its correlation with the group's first image."""
    cols = max((len(g) for g in groups), default=1)
    caption, col_w = 30, 2 * TILE  # captions are wider than the image
    title, title_font = f"{table.name}: {len(groups)} near-duplicate groups", _font(13)
    # the title sets the width when there are few groups (none: one empty column)
    width = max(8 + cols * col_w, 16 + round(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=title_font)))
    height = HEADER_H + max(1, len(groups)) * (TILE + caption + ROW_GAP)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    small = _font(10)
    draw.text((8, 4), title, fill=(0, 0, 0), font=title_font)
    for r, group in enumerate(groups):
        y = HEADER_H + r * (TILE + caption + ROW_GAP)
        labels = {table.samples[i].label for i in group}
        for c, i in enumerate(group):
            x = 8 + c * col_w
            sample = table.samples[i]
            sheet.paste(Image.fromarray(_fit(read_image(sample.path), TILE)), (x, y))
            colour = FAILED if len(labels) > 1 else (0, 0, 0)  # one head, two labels
            draw.text((x, y + TILE + 2), sample.id.split("/", 1)[-1][-30:], fill=(90, 90, 90), font=small)
            draw.text((x, y + TILE + 14), f"{sample.label}  r={float(sigs[group[0]] @ sigs[i]):.3f}",
                      fill=colour, font=small)
    return _save(sheet, Path(out))
