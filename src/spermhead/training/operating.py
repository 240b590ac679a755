"""Operating points: one trained model, two ways to turn probabilities into a class.

Both start from posteriors under the training side's own class mix. A run that balanced its
classes while training (`balance` sampler, loss or offline) learnt a uniform prior instead, so
its CNN's posteriors first get the log training prior back (`learnt_prior_correction`, before
any fusion with second opinions, which learn the natural prior). Then `accuracy` keeps those
posteriors, moved to the dataset's own class prior where extra training images changed the
training mix (`prior_shift`), and `balanced` divides out the training prior (a log-prior
correction) to raise average recall on imbalanced sets such as SCIAN, where 58% of heads are
amorphous. Its strength is 1 by default: the Bayes decision for average recall when the
posteriors are calibrated. Choosing it per fold on the validation part (`"val"`) was the
first rule; on SCIAN-PA's validation parts (tuned on one half, scored on the other) the fixed
strength scored higher, since 136 images per fold make the choice noisy (benchmarks/RESULTS.md)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score

# one implementation, shared with serving
from spermhead.models.inference import apply_class_bias as apply_bias

ALPHAS = np.round(np.arange(0.0, 1.51, 0.1), 2)


def prior_bias(train_labels: np.ndarray, num_classes: int, alpha: float) -> np.ndarray:
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64) + 1.0
    prior = counts / counts.sum()
    return (-alpha * np.log(prior)).astype(np.float32)


def learnt_prior_correction(train_labels: np.ndarray, num_classes: int, balance: str,
                            per_class: int = 0) -> np.ndarray | None:
    """The log-prior added to a CNN's posteriors so that they are those of a model trained on the
    training side's own class mix: None after natural-prior training (`balance` "none"); the log
    training prior after class-balanced training, which learnt a uniform prior. Without it the
    accuracy point of a skewed set answers like the balanced point, and the balanced point
    divides the prior out twice (benchmarks/RESULTS.md, session 11). Offline balancing grows each
    class to `per_class` images but keeps a larger class whole, so the prior it learnt is of
    those counts, not uniform."""
    if balance == "none":
        return None
    correction = -prior_bias(train_labels, num_classes, 1.0)
    if balance == "offline":
        counts = np.bincount(train_labels, minlength=num_classes)
        grown = np.where(counts > 0, np.maximum(counts, per_class), 0)
        correction = correction + prior_bias(np.repeat(np.arange(num_classes), grown), num_classes, 1.0)
    return correction


def prior_shift(own_labels: np.ndarray, train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Log-prior correction from the training side's class mix to the dataset's own, for runs
    whose extra training images changed that mix. Posteriors are then those of a model trained
    on the dataset's own mix (Saerens et al. 2002), which is what the accuracy point wants."""
    return prior_bias(train_labels, num_classes, 1.0) - prior_bias(own_labels, num_classes, 1.0)


def choose_balanced_bias(val_probs: np.ndarray, val_labels: np.ndarray, train_labels: np.ndarray,
                         num_classes: int, strength: float | str = 1.0) -> tuple[np.ndarray, float]:
    """The balanced point's bias: `strength` x the log training prior, or with `strength="val"`
    the strength with the best validation average recall (ties: weakest)."""
    if strength != "val":
        return prior_bias(train_labels, num_classes, float(strength)), float(strength)
    if len(val_labels) == 0:
        return np.zeros(num_classes, dtype=np.float32), 0.0
    best_alpha, best_score = 0.0, -1.0
    for alpha in ALPHAS:
        pred = apply_bias(val_probs, prior_bias(train_labels, num_classes, alpha)).argmax(1)
        score = balanced_accuracy_score(val_labels, pred)
        if score > best_score + 1e-9:
            best_alpha, best_score = float(alpha), score
    return prior_bias(train_labels, num_classes, best_alpha), best_alpha
