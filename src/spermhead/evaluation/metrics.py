"""Metrics from a `Predictions` set (scikit-learn underneath). Every value is a plain
Python float/int/list/dict or None, so the result goes straight into metrics.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from spermhead.evaluation.predictions import Predictions

# Summarised across folds as <key>_mean / <key>_std.
FOLD_SUMMARY_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "roc_auc_ovr_macro",
    "pr_auc_macro",
    "ece",
    "brier_score",
)
N_BOOT = 2000
CALIBRATION_BINS = 10
BOOT_SEED = 0


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def calibration(pred: Predictions, n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """How far the probabilities can be taken at their word.

    - ece: expected calibration error of the top answer: the images binned by the probability
      of the class answered (equal-width bins), the gap between that confidence and the
      accuracy in each bin, weighted by the bin's share of the images. 0 is perfect.
    - brier_score: the multi-class Brier score, the mean over images of the squared distance
      between the probability vector and the one-hot label (0 best, 2 worst).
    - log_loss: the mean negative log-probability of the true class.
    - bins: per non-empty bin, its range, count, mean confidence and accuracy (the reliability
      diagram's points).
    """
    pred = pred.sorted_by_id()  # sums in one order: the same predictions, the same figures to the bit
    probs = pred.probabilities
    y = pred.true_indices
    confidence = probs.max(axis=1)
    correct = pred.pred_indices == y
    # bin i holds confidences in (i/n, (i+1)/n]; the top answer's probability is at least 1/K > 0
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += inside.mean() * abs(acc - conf)
            bins.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": int(inside.sum()),
                         "confidence": conf, "accuracy": acc})
    onehot = np.eye(len(pred.classes))[y]
    true_p = np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0)
    return {"ece": float(ece), "brier_score": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
            "log_loss": float(-np.mean(np.log(true_p))), "bins": bins}


def compute_metrics(pred: Predictions) -> dict[str, Any]:
    """Headline, per-class and per-source metrics of one prediction set.

    - balanced_accuracy is the average recall over classes present in the true labels
      (recall is undefined for an absent class), as scikit-learn's balanced_accuracy_score.
    - macro_f1 averages over classes present in the true or predicted labels (scikit-learn's
      default label set), with zero_division=0.
    - ROC AUC and average precision are one-vs-rest per class and need positives and
      negatives: classes absent from the true labels are left out of the macro average and
      named in `notes`.
    """
    n = len(pred)
    if n == 0:
        raise ValueError("no predictions to assess")
    classes = pred.classes
    k = len(classes)
    y = pred.true_indices
    yhat = pred.pred_indices
    probs = pred.probabilities
    labels = list(range(k))
    notes: list[str] = []

    prec, rec, f1, support = precision_recall_fscore_support(
        y, yhat, labels=labels, zero_division=0
    )
    present = support > 0
    seen = present | np.isin(labels, yhat)
    cm = confusion_matrix(y, yhat, labels=labels)

    absent = [classes[c] for c in labels if not present[c]]
    if absent:
        notes.append(
            f"classes absent from the true labels: {', '.join(absent)}; their recall and AUC are "
            "undefined and left out of balanced accuracy and the AUC averages"
        )
    if guessed := [classes[c] for c in labels if seen[c] and not present[c]]:
        notes.append(
            f"predicted but absent from the true labels: {', '.join(guessed)}; each counts in macro F1 "
            "with an F1 of 0, as every such answer is wrong (scikit-learn's convention)"
        )

    roc: list[float | None] = []
    ap: list[float | None] = []
    for c in labels:
        pos = y == c
        if 0 < pos.sum() < n:
            roc.append(float(roc_auc_score(pos, probs[:, c])))
            ap.append(float(average_precision_score(pos, probs[:, c])))
        else:
            roc.append(None)
            ap.append(None)
    if present.sum() == 1:
        notes.append("only one class in the true labels: ROC and PR AUC are undefined")

    per_class = {
        classes[c]: {
            # a class neither in the labels nor answered has no precision or F1 (macro F1 leaves it out)
            "precision": float(prec[c]) if seen[c] else None,
            "recall": float(rec[c]) if present[c] else None,
            "f1": float(f1[c]) if seen[c] else None,
            "support": int(support[c]),
            "roc_auc": roc[c],
            "average_precision": ap[c],
        }
        for c in labels
    }
    weights = support / support.sum()
    calibrated = calibration(pred)
    out: dict[str, Any] = {
        "n": int(n),
        "classes": list(classes),
        "accuracy": float(np.mean(y == yhat)),
        "balanced_accuracy": float(np.mean(rec[present])),
        "macro_f1": float(np.mean(f1[seen])),
        "weighted_precision": float(np.sum(prec * weights)),
        "weighted_recall": float(np.sum(rec * weights)),
        "roc_auc_ovr_macro": _mean([r for r in roc if r is not None]),
        "pr_auc_macro": _mean([a for a in ap if a is not None]),
        **{key: value for key, value in calibrated.items() if key != "bins"},
        "calibration_bins": calibrated["bins"],
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "notes": notes,
    }
    sources = pred.source_names
    if len(sources) > 1:
        out["per_source"] = {s: compute_metrics(pred.for_source(s)) for s in sources}
    return out


def resample_indices(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, idx) chunks of `n_boot` bootstrap resamples of n items, idx rows being the
    resamples start..stop; chunked so large sets stay within memory."""
    chunk = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        yield start, stop, rng.integers(0, n, size=(stop - start, n))


def resampled_scores(y: np.ndarray, correct: np.ndarray, k: int,
                     idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and balanced accuracy (over the classes present) of each resample: row b of
    `idx` lists the images of resample b."""
    onehot = np.stack([y == c for c in range(k)])  # K x N
    support = onehot[:, idx].sum(axis=2)  # K x B
    hits = (onehot & correct)[:, idx].sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
    return correct[idx].mean(axis=1), np.nanmean(recall, axis=0)


def cv_metrics(pred: Predictions, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict[str, Any]:
    """Pooled out-of-fold metrics, one entry per fold, mean/sd across folds, 95% intervals.

    Works for a single held-out set too (all folds -1): `folds` is then empty and the
    *_mean/*_std keys are None. sd is the sample sd (ddof=1) across folds, None for one fold.
    """
    out = compute_metrics(pred)
    fold_numbers = pred.fold_numbers
    out["folds"] = [{"fold": f, **compute_metrics(pred.for_fold(f))} for f in fold_numbers]
    unfolded = int(np.sum(pred.folds < 0))
    if fold_numbers and unfolded:
        out["notes"].append(f"{unfolded} samples have no fold: they count in the pooled metrics only")
    for key in FOLD_SUMMARY_KEYS:
        values = [f[key] for f in out["folds"] if f[key] is not None]
        out[f"{key}_mean"] = _mean(values)
        out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    out["accuracy_ci95"], out["balanced_accuracy_ci95"], out["intervals"] = score_intervals(pred, n_draws=n_boot,
                                                                                          seed=seed)
    out["interval_draws"] = {"draws": int(n_boot), "seed": int(seed), "level": 0.95}
    return out


def score_intervals(pred: Predictions, *, n_draws: int = N_BOOT, seed: int = BOOT_SEED,
                    level: float = 0.95) -> tuple[list[float], list[float], dict[str, str]]:
    """Intervals (95% by default, `level`) of accuracy and balanced accuracy, and how each was found.

    Accuracy is a binomial proportion: Wilson's score interval, which keeps its width where every
    image is right (20 of 20: 0.84-1), unlike a bootstrap of the images, which cannot move there
    (1-1). Balanced accuracy is the mean of the classes' recalls, each a proportion of its own
    class's images: its lower bound is the 2.5% point of the mean of draws from each class's
    Beta(right, wrong + 1), its upper the 97.5% point of Beta(right + 1, wrong) draws (the beta
    distributions behind Clopper and Pearson's exact bounds; seeded, so metrics.json repeats).
    It errs wide: it covered the truth in 98-99% of simulated sets, small classes included. A
    bootstrap of the images, used before, could lose a small class from a resample, which moved
    the average (3 wrong of 3 beside 97 right gave 0.5-1; 78-87% coverage with classes of 4-6
    images), and Jeffreys' posteriors pulled a small, mostly right class below the truth (66%)."""
    from spermhead.evaluation.composition import wilson

    y, right = pred.true_indices, pred.true_indices == pred.pred_indices
    lo, hi = wilson(np.array(right.sum()), len(right), level)
    present = [c for c in range(len(pred.classes)) if np.any(y == c)]
    hits = np.array([right[y == c].sum() for c in present], dtype=float)
    wrong = np.array([np.sum(y == c) for c in present], dtype=float) - hits
    rng = np.random.default_rng(seed)
    size = (n_draws, len(present))
    # a class all wrong has 0 as its lower bound, one all right 1 as its upper (Beta(0, .) is no distribution)
    lows = np.where(hits > 0, rng.beta(np.maximum(hits, 1.0), wrong + 1, size=size), 0.0).mean(axis=1)
    highs = np.where(wrong > 0, rng.beta(hits + 1, np.maximum(wrong, 1.0), size=size), 1.0).mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    point = float(np.mean(hits / (hits + wrong))) if len(present) else 0.0
    balanced = [float(min(np.percentile(lows, tail), point)), float(max(np.percentile(highs, 100.0 - tail), point))]
    how = {"accuracy": "Wilson score", "balanced_accuracy": "mean of the classes' exact beta bounds"}
    return [float(lo), float(min(hi, 1.0))], balanced, how


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The figures an operating point is summed up by (the fold spread where there is one)."""
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "accuracy_mean", "accuracy_std",
            "balanced_accuracy_mean", "balanced_accuracy_std")
    out = {k: m[k] for k in keys if k in m}
    out["per_class_recall"] = {c: v["recall"] for c, v in m.get("per_class", {}).items()}
    return out


def write_metrics_json(metrics: dict[str, Any], path: Path | str) -> Path:
    """metrics.json; allow_nan=False so an undefined value can never slip in as NaN."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return path
