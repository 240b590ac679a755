"""Temperature scaling: probabilities that mean what they say.

A fold's answers are only as useful to a lab as their probabilities are honest: a 0.6 that is
right 95 times in 100 (HuSHeM's fused recipe, benchmarks/RESULTS.md, session 15) sends good
answers to review and says nothing about the doubtful ones. One number, fitted on the fold's
validation part, fixes most of it: the final log-probabilities are divided by T, the value that
maximises the validation likelihood, where that is a significant improvement. Dividing by a
positive number keeps every argmax, so no answer, accuracy or recall changes at either operating
point; only the probabilities do."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import chi2

from spermhead.models.inference import apply_temperature

# at most a 4-fold sharpening or flattening: a small validation part with no error would
# otherwise sharpen without limit
BOUNDS = (0.25, 4.0)
MIN_IMAGES = 20  # fewer validation images than this leave T at 1: one number from a handful is noise
SIGNIFICANCE = 0.05


def fit_temperature(probs: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = BOUNDS,
                    significance: float | None = SIGNIFICANCE) -> float:
    """The T in `bounds` that minimises the validation log loss of probs ** (1 / T), renormalised;
    1 where that is no significant improvement on T = 1 (`significance` None: no test)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < MIN_IMAGES:
        return 1.0

    def log_loss(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))

    best = minimize_scalar(log_loss, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-4})
    # a likelihood-ratio test against T = 1: a model the validation part does not show to be
    # miscalibrated is left alone (fitting noise made already-calibrated SCIAN-TA folds worse)
    if significance is not None and 2 * len(labels) * (log_loss(0.0) - best.fun) < chi2.ppf(1 - significance, df=1):
        return 1.0
    return float(np.exp(best.x))


def pooled_temperature(temperatures: list[float]) -> float:
    """One T for a bundle of fold models: the geometric mean of the folds' (T multiplies)."""
    return float(np.exp(np.mean(np.log(temperatures)))) if temperatures else 1.0
