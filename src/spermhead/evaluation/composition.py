"""A sample's class composition from its images' predicted classes, with what is known of the
model's errors taken out.

A lab reports the share of normal forms in a sample (WHO's lower reference limit is 4%), not one
class per head. Counting the predicted classes gets that share wrong in a known direction: a
model that calls 30% of normal heads amorphous under-counts normal forms in every sample.
With C[j, k] the share of true class j predicted as k, measured on a run's held-out predictions,
the sample's predicted counts are a multinomial draw with cell probabilities C^T p, where p are
the true shares. `composition` samples p's posterior by Gibbs sampling over each head's latent
true class (a Perks prior on p, 1/K per class, so a 20-head sample is barely pulled towards even
shares; each row of C drawn from its own Dirichlet posterior, counts + 1/2), so both the sample's
few heads and the few held-out images behind C widen the interval, and a class never predicted
still gets an upper bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

LEVEL = 0.95
DRAWS = 2000  # kept after BURN_IN
BURN_IN = 200
ROW_PRIOR = 0.5  # Jeffreys, on each row of the confusion


def adjusted_draws(predicted_counts: np.ndarray, confusion: np.ndarray, *, draws: int = DRAWS,
                   seed: int = 0) -> np.ndarray:
    """Posterior draws (draws x classes) of the true class shares, given the predicted counts
    and held-out confusion counts (rows true, columns predicted)."""
    rng = np.random.default_rng(seed)
    k = len(predicted_counts)
    counts = predicted_counts.astype(int)
    p = np.full(k, 1.0 / k)
    out = np.empty((draws, k))
    # every step's P(predicted | true), each row from its Dirichlet posterior, drawn at once
    gammas = rng.gamma(np.asarray(confusion, float) + ROW_PRIOR, size=(BURN_IN + draws, k, k))
    confusions = gammas / gammas.sum(axis=2, keepdims=True)
    for step, c in enumerate(confusions):
        true_counts = np.zeros(k)
        for j in range(k):  # the heads predicted as j: which true class each came from
            if counts[j]:
                w = p * c[:, j]
                true_counts += rng.multinomial(counts[j], w / w.sum())
        p = rng.dirichlet(true_counts + 1.0 / k)
        if step >= BURN_IN:
            out[step - BURN_IN] = p
    return out


def composition(predicted: Sequence[str], classes: Sequence[str], confusion: Sequence[Sequence[int]] | None = None,
                *, level: float = LEVEL, draws: int = DRAWS, seed: int = 0) -> list[dict[str, Any]]:
    """Per class: count, share with a Wilson interval, and where `confusion` (held-out counts,
    rows true, columns predicted, in `classes` order) is given, the adjusted share (posterior
    mean) with an equal-tailed interval."""
    n = len(predicted)
    tally = Counter(predicted)
    counts = np.array([tally.get(c, 0) for c in classes], float)
    rows: list[dict[str, Any]] = []
    for c, m in zip(classes, counts, strict=True):
        ci = binomtest(int(m), n).proportion_ci(level, method="wilson") if n else None
        rows.append({"class": c, "count": int(m), "share": float(m / n) if n else None,
                     "share_low": float(ci.low) if ci else None, "share_high": float(ci.high) if ci else None})
    cm = None if confusion is None else np.asarray(confusion, float)
    if n == 0 or cm is None or cm.shape != (len(classes), len(classes)):
        return rows
    post = adjusted_draws(counts, cm, draws=draws, seed=seed)
    low, high = np.quantile(post, [(1 - level) / 2, (1 + level) / 2], axis=0)
    for row, mean, lo, hi in zip(rows, post.mean(axis=0), low, high, strict=True):
        row.update(adjusted=float(mean), adjusted_low=float(lo), adjusted_high=float(hi))
    return rows


MIN_HEADS = 10  # fewer classified heads than this in a folder give no composition worth printing
SUMMARY_COLUMNS = ["sample", "heads", "class", "count", "share", "share_low", "share_high",
                   "adjusted", "adjusted_low", "adjusted_high"]


def sample_compositions(rows: Sequence[dict[str, Any]], classes: Sequence[str],
                        confusion: Sequence[Sequence[int]] | None) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """(sample, heads, composition) per folder of classified images (a folder = one sample),
    in folder order; folders with fewer than MIN_HEADS classified images are left out."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row.get("ok"):
            folder = str(Path(row["path"]).parent) if row.get("path") else "uploads"
            groups.setdefault(folder, []).append(row["class"])
    return [(folder, len(predicted), composition(predicted, classes, confusion))
            for folder, predicted in sorted(groups.items()) if len(predicted) >= MIN_HEADS]


def summary_rows(samples: Sequence[tuple[str, int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One CSV row per sample and class (SUMMARY_COLUMNS)."""
    return [{"sample": name, "heads": heads, **{k: r.get(k, "") for k in SUMMARY_COLUMNS[2:]}}
            for name, heads, comp in samples for r in comp]
