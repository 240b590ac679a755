"""Calibration of runs' out-of-fold answers before and after temperature scaling (RESULTS.md,
session 15).

    .venv/bin/python benchmarks/calibration.py RUN_DIR ...
        each run's folds' raw test probabilities (fused, before any temperature) against its
        predictions.csv, at the accuracy point, with the temperature each fold fitted on its
        validation part, and the answers the bundle's threshold would flag uncertain; the
        answers must be the same (--bins: the reliability bins too; a run trained before
        calibration shows its own probabilities twice)

    .venv/bin/python benchmarks/calibration.py --emulate 26 RUN_DIR ... [--lower 0.05] [--no-test]
        for runs trained before calibration: each fold's temperature fitted on a random draw of N
        of the other folds' test answers (a stand-in for its validation part, which those runs did
        not keep), 20 draws per run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spermhead.evaluation.metrics import calibration
from spermhead.evaluation.predictions import Predictions, read_predictions
from spermhead.models.inference import apply_temperature
from spermhead.serving.bundle import BundleMeta
from spermhead.training.temperature import BOUNDS, SIGNIFICANCE, fit_temperature

UNCERTAIN = BundleMeta.__dataclass_fields__["uncertainty_threshold"].default  # what predict and the app flag


def with_probs(p: Predictions, probs: np.ndarray) -> Predictions:
    return Predictions(p.ids, p.sources, p.folds, p.true, probs, p.classes)


def scores(p: Predictions) -> np.ndarray:
    c = calibration(p)
    return np.array([c["ece"], c["brier_score"], c["log_loss"]])


def report(run: Path, threshold: float, bins: bool = False) -> tuple[np.ndarray, np.ndarray]:
    after = read_predictions(run)
    folds = sorted(int(d.name[4:]) for d in (run / "folds").glob("fold*"))
    # test_probs.npy rows follow each fold's test order, as predictions.csv's rows do
    before = with_probs(after, np.concatenate([np.load(run / "folds" / f"fold{k}" / "test_probs.npy") for k in folds]))
    temps = [json.loads((run / "folds" / f"fold{k}" / "done.json").read_text()).get("temperature", 1.0) for k in folds]
    b, a = scores(before), scores(after)
    print(f"{run}: same answers {before.pred == after.pred}; T {' '.join(f'{t:.2f}' for t in temps)}; "
          f"ECE {b[0]:.3f} -> {a[0]:.3f}; Brier {b[1]:.3f} -> {a[1]:.3f}; log loss {b[2]:.3f} -> {a[2]:.3f}; "
          f"flagged uncertain {flagged(before, threshold)} -> {flagged(after, threshold)}")
    if bins:
        for when, p in (("before", before), ("after", after)):
            print(f"  reliability {when}: " + "; ".join(
                f"{b['lower']:.1f}-{b['upper']:.1f}: {b['count']} answers, {100 * b['accuracy']:.0f}% right"
                for b in calibration(p)["bins"]))
    return np.append(b, uncertain(before, threshold)), np.append(a, uncertain(after, threshold))


def uncertain(p: Predictions, threshold: float) -> list[int]:
    """[answers under the uncertainty threshold, how many of them are right, answers, wrong
    answers left unflagged]."""
    flag = p.probabilities.max(1) < threshold
    right = p.pred_indices == p.true_indices
    return [int(flag.sum()), int(np.sum(flag & right)), len(p), int(np.sum(~flag & ~right))]


def flag_text(n: float, right: float, total: float, missed: float) -> str:
    return f"{int(n)}/{int(total)} ({100 * right / max(n, 1):.0f}% of them right, {int(missed)} errors unflagged)"


def flagged(p: Predictions, threshold: float) -> str:
    return flag_text(*uncertain(p, threshold))


def emulate(run: Path, n: int, bounds: tuple[float, float], significance: float | None) -> tuple[np.ndarray, np.ndarray]:
    pred = read_predictions(run)
    p, y, folds = pred.probabilities, pred.true_indices, pred.folds
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(20):
        out = np.empty_like(p)
        for k in np.unique(folds):
            stand_in = rng.choice(np.flatnonzero(folds != k), n, replace=False)
            t = fit_temperature(p[stand_in], y[stand_in], bounds=bounds, significance=significance)
            out[folds == k] = apply_temperature(p[folds == k], t)
        draws.append(scores(with_probs(pred, out)))
    b, a = scores(pred), np.mean(draws, axis=0)  # (no flag counts: draws differ)
    print(f"{run} ({n} stand-in images): ECE {b[0]:.3f} -> {a[0]:.3f}; Brier {b[1]:.3f} -> {a[1]:.3f}; "
          f"log loss {b[2]:.3f} -> {a[2]:.3f} (worst draw {np.max([d[2] for d in draws]):.3f})")
    return b, a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--emulate", type=int, help="stand-in validation images per fold (runs without temperatures)")
    ap.add_argument("--lower", type=float, default=BOUNDS[0], help="the temperature's lower bound")
    ap.add_argument("--no-test", action="store_true", help="fit without the likelihood-ratio test")
    ap.add_argument("--uncertain", type=float, default=UNCERTAIN, help="flag answers under this probability")
    ap.add_argument("--bins", action="store_true", help="also print each run's reliability bins")
    args = ap.parse_args()
    bounds, significance = (args.lower, BOUNDS[1]), None if args.no_test else SIGNIFICANCE
    rows = [emulate(r, args.emulate, bounds, significance) if args.emulate else report(r, args.uncertain, args.bins)
            for r in args.runs]
    b, a = np.mean([r[0][:3] for r in rows], axis=0), np.mean([r[1][:3] for r in rows], axis=0)
    text = f"mean: ECE {b[0]:.3f} -> {a[0]:.3f}; Brier {b[1]:.3f} -> {a[1]:.3f}; log loss {b[2]:.3f} -> {a[2]:.3f}"
    if not args.emulate:  # pooled over the runs
        fb, fa = np.sum([r[0][3:] for r in rows], axis=0), np.sum([r[1][3:] for r in rows], axis=0)
        text += f"; flagged uncertain under {args.uncertain} " + " -> ".join(flag_text(*f) for f in (fb, fa))
    print(text)


if __name__ == "__main__":
    main()
