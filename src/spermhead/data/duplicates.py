"""Near-duplicate images: the same head photographed twice.

Both datasets hold some. HuSHeM has three pairs of consecutive images of one head, slightly moved;
SCIAN has heads that appear again in the next microscope field, sometimes with a different label
(benchmarks/RESULTS.md, "Near-duplicate images"). If one copy is tested while the other is
trained on, the test sees a training image. Splits keep each group on one side
(`training/protocols.py`), and extra training images may not be copies of the dataset's own.

Two images count as one head when the correlation of their 32 x 32 grey thumbnails (mean and
scale removed) reaches a threshold. The thumbnail keeps the tail and background specks that
tell one photograph from another. At 0.98 every pair found in both datasets was the same head
when checked by eye, and SCIAN's closest distinct heads scored just under it
(`benchmarks/near_duplicates.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from spermhead.errors import ImageError, raise_for_unusable

DEFAULT_THRESHOLD = 0.98
THUMBNAIL = 32
BLOCK = 2048  # rows of the correlation matrix computed at a time

_cache: dict[tuple[str, int, int], np.ndarray] = {}  # (path, mtime, size) -> signature


def signature(rgb: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """A unit-length, zero-mean grey thumbnail: a dot product of two is their correlation."""
    h, w = rgb.shape[:2]
    if max(h, w) > 8 * size:
        # a large photo is shrunk as it is stored first: as float32, a 30-megapixel one would be a
        # 460 MB copy (the datasets' crops, 35-131 px, never reach this)
        f = 8 * size / max(h, w)
        rgb = cv2.resize(rgb, (max(size, round(w * f)), max(size, round(h * f))), interpolation=cv2.INTER_AREA)
    grey = rgb.astype(np.float32).mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    thumb = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    if norm < 1e-2 * size:  # a flat image (grey-level sd under 0.01) shows no head: it matches nothing
        return np.zeros_like(thumb)
    return thumb / norm


def signatures(paths: Sequence[Path]) -> np.ndarray:
    """Signatures of image files, read once per process (a file that changes is read again)."""
    from spermhead.preprocess.io import read_image

    out = np.empty((len(paths), THUMBNAIL * THUMBNAIL), dtype=np.float32)
    failed: list[ImageError] = []
    for i, path in enumerate(paths):
        try:
            try:
                st = os.stat(path)
            except OSError:  # gone, or a broken link: read_image names the file and says so
                read_image(path)
                raise
            key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
            if key not in _cache:
                _cache[key] = signature(read_image(path))
        except ImageError as exc:
            failed.append(exc)
            continue
        out[i] = _cache[key]
    raise_for_unusable(failed, len(paths))
    return out


def near_duplicate_groups(sigs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[list[int]]:
    """Groups (of two or more row indices, ascending) joined by correlations >= threshold; a chain
    a~b~c is one group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sigs)
    if n < 2 or threshold <= 0:
        return []
    rows, cols = [], []
    for start in range(0, n, BLOCK):  # blocks of rows: memory stays O(BLOCK x n) for large folders
        r, c = np.nonzero(sigs[start:start + BLOCK] @ sigs.T >= threshold)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    _, component = connected_components(coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)), directed=False)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(component.tolist()):
        groups.setdefault(c, []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def nearest(sigs: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each row of `sigs`, its highest correlation with any row of `others`."""
    if len(sigs) == 0 or len(others) == 0:
        return np.full(len(sigs), -1.0, dtype=np.float32)
    return np.concatenate([(sigs[i:i + BLOCK] @ others.T).max(axis=1) for i in range(0, len(sigs), BLOCK)])


def keep_together(part: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Move every group to the part (fold, or train/val/test) of its first image. Every other
    image keeps its part, so a split with no duplicates is exactly what it was."""
    part = np.asarray(part).copy()
    for g in groups:
        part[g] = part[g[0]]
    return part
