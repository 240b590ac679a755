"""How an image was taken, in five numbers, and whether a model has seen images like it.

A model's accuracy holds only for images like those it learnt from: a HuSHeM bundle scores 44%
on SCIAN's heads, which are blurred, about 25 pixels long and fill their crops
(benchmarks/RESULTS.md, session 9). Each image gets the descriptors below as it is prepared. A
bundle stores their range over its training images, and a prediction on an image outside that
range says which descriptor and by how much, so a lab learns that the published figures do not
carry over to its microscope before it relies on them.

Torch-free, like `serving/prepare.py`, whose worker processes call `describe`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from spermhead.preprocess.align import CanonicalImage

# name -> what it measures; each is a positive scale, so ranges widen by a ratio
DESCRIPTORS = {
    "head_length_px": "head length in the original image's pixels (magnification and resolution)",
    "head_fraction": "head length over the image's shorter side (how the crop frames the head)",
    "background": "grey level of the background (95th percentile of the model's input)",
    "contrast": "grey levels from the head to the background (5th to 95th percentile)",
    "edge_sharpness": "the steepest edges over the contrast (focus and blur)",
}
# how each reads in a warning: (before the value, after it)
_SAYS = {
    "head_length_px": ("head", " px long"), "head_fraction": ("head fills", " of the image side"),
    "background": ("background grey", ""), "contrast": ("contrast", " grey levels"),
    "edge_sharpness": ("edge sharpness", ""),
}
# ... and in a batch's summary
_NAMES = {"head_length_px": "head length (px)", "head_fraction": "head length / image side",
          "background": "background grey", "contrast": "contrast", "edge_sharpness": "edge sharpness"}
MARGIN = 1.1  # an image is unlike the training images beyond their range widened 10% each way
MIN_IMAGES = 20  # fewer training images than this give no range worth checking against


def describe(canon: CanonicalImage) -> dict[str, float]:
    """The descriptors of one prepared image (the head's two only where a head was found).

    About 0.1 ms, a seventh of the alignment's time (benchmarks/bench_preprocess.py): quantiles
    come from a histogram and one partition, since np.percentile alone would cost more than all
    the rest."""
    gray = canon.image[0] if canon.image.shape[0] == 1 else canon.image.mean(axis=0).astype(np.uint8)
    cumulative = np.bincount(gray.ravel(), minlength=256).cumsum()
    low, high = np.searchsorted(cumulative, [0.05 * cumulative[-1], 0.95 * cumulative[-1]])
    contrast = float(high - low)
    edges = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)).ravel()
    steepest = float(np.partition(edges, int(0.99 * (edges.size - 1)))[int(0.99 * (edges.size - 1))])
    out = {"background": float(high), "contrast": contrast, "edge_sharpness": steepest / max(contrast, 1.0)}
    side = min(canon.source_shape) if canon.source_shape else 0
    if canon.morphometrics is not None and side > 0:
        out["head_length_px"] = float(canon.morphometrics.length)
        out["head_fraction"] = float(canon.morphometrics.length) / side
    return {k: round(v, 4) for k, v in out.items()}


def fit_ranges(descriptions: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """Each descriptor's [min, max] over the training images (where enough of them have it)."""
    ranges = {}
    for name in DESCRIPTORS:
        values = [d[name] for d in descriptions if name in d and math.isfinite(d[name])]
        if len(values) >= MIN_IMAGES:
            ranges[name] = [float(min(values)), float(max(values))]
    return ranges


def outside(value: float, low: float, high: float, margin: float = MARGIN) -> bool:
    """Beyond the training range [low, high] widened by `margin` (a ratio) each way."""
    return value < low / margin or value > high * margin


def _fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def unlike_training(description: Mapping[str, float] | None,
                    ranges: Mapping[str, Sequence[float]]) -> list[str]:
    """One reason per descriptor outside the training range, e.g. 'head 25 px long (training 31-88)'."""
    reasons = []
    for name, (low, high) in ranges.items():
        value = (description or {}).get(name)
        if value is not None and outside(value, low, high):
            before, after = _SAYS.get(name, (name, ""))
            reasons.append(f"{before} {_fmt(value)}{after} (training {_fmt(low)}-{_fmt(high)})")
    return reasons


def batch_warning(rows: Sequence[Mapping[str, Any]], ranges: Mapping[str, Sequence[float]]) -> str | None:
    """A summary of the images unlike the training images, for the end of a batch; None if none are."""
    scored = [r for r in rows if r.get("ok")]
    flagged = [r for r in scored if r.get("unlike_training")]
    if not flagged:
        return None
    parts = []
    for name, (low, high) in ranges.items():
        values = [r["acquisition"][name] for r in scored if name in (r.get("acquisition") or {})]
        n = sum(outside(v, low, high) for v in values)
        if n:
            parts.append(f"{_NAMES.get(name, name)}: {n} outside, median {_fmt(float(np.median(values)))} "
                         f"(training {_fmt(low)}-{_fmt(high)})")
    return (f"{len(flagged)} of {len(scored)} images are unlike the images this model was trained on "
            f"(more than {round(100 * (MARGIN - 1))}% beyond the training range). "
            + "; ".join(parts) + ". Its accuracy was measured on images like its own; on others it can "
            "be far lower (a HuSHeM model scored 44% accuracy on SCIAN's heads), and so can its class "
            "shares. Check it on labelled images of yours (spermhead evaluate), or train on them.")
