"""The head's shape profile on a canonical (aligned) image: its width and darkness along the
head axis, plus convexity and roundness. These are the inputs of the shape model that can be
fused with the CNN (models/shape.py); on HuSHeM a logistic regression on them alone scores
~0.86 (benchmarks/classical_baselines.py)."""

from __future__ import annotations

import cv2
import numpy as np

POINTS = 24  # samples along the axis, for each of width and darkness
FEATURES = 2 * POINTS + 2


def _gray(image: np.ndarray) -> np.ndarray:
    gray = image.astype(np.float32)
    return gray.mean(0) if gray.ndim == 3 else gray


def head_mask(image: np.ndarray) -> np.ndarray | None:
    """0/1 uint8 mask of the head in a canonical C x S x S or S x S image; None when none is found."""
    gray = _gray(image)
    u8 = cv2.GaussianBlur(gray.astype(np.uint8), (3, 3), 0)
    _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    centre = np.array(gray.shape[::-1]) / 2
    # the head is the sizeable dark blob nearest the centre (alignment put it there)
    dist = [np.hypot(*(stats[i, :2] + stats[i, 2:4] / 2 - centre)) if i and stats[i, 4] > 30 else np.inf
            for i in range(n)]
    if not dist or not np.isfinite(min(dist)):
        return None
    return (labels == int(np.argmin(dist))).astype(np.uint8)


def axis_profile(image: np.ndarray, points: int = POINTS) -> np.ndarray:
    """Features of one aligned head: `image` is a canonical uint8 C x S x S or S x S image.
    A head that cannot be found gives NaNs (the shape model then answers with its prior)."""
    gray, mask = _gray(image), head_mask(image)
    if mask is None:
        return np.full(2 * points + 2, np.nan, dtype=np.float32)
    cols = np.flatnonzero(mask.any(0))
    x0, x1 = cols[0], cols[-1] + 1
    length = x1 - x0
    width = mask.sum(0)[x0:x1].astype(np.float64)
    dark = np.array([gray[:, j][mask[:, j] > 0].mean() / 255 for j in range(x0, x1)])
    grid = np.linspace(0, length - 1, points)
    contour = max(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    area, hull = cv2.contourArea(contour), cv2.contourArea(cv2.convexHull(contour))
    out = np.r_[np.interp(grid, np.arange(length), width) / length, np.interp(grid, np.arange(length), dark),
                area / max(hull, 1.0), cv2.arcLength(contour, True) ** 2 / max(area, 1.0)]
    return out.astype(np.float32)


def profiles(images: np.ndarray) -> np.ndarray:
    """N x C x S x S canonical uint8 images -> N x FEATURES."""
    if len(images) == 0:
        return np.zeros((0, FEATURES), dtype=np.float32)
    return np.stack([axis_profile(x) for x in images])
