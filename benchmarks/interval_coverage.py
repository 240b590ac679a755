"""How often `compare`'s intervals for B - A hold the true difference, in simulated test sets.

Each image's class is drawn from a class mix (SCIAN's by default, 58% one class); per class, the
chance that both models are right, only A, only B; so the true differences in accuracy and in
average recall are known. For each set, `compare_predictions` gives its intervals, and the
average-recall difference is also bounded by a plain bootstrap of the images (the method before
session 32), for reference.

    .venv/bin/python benchmarks/interval_coverage.py [--sizes 50,100,200,1000] [--sets 300]
"""

from __future__ import annotations

import argparse

import numpy as np

from spermhead.evaluation.metrics import resample_indices, resampled_scores
from spermhead.evaluation.paired import compare_predictions
from spermhead.evaluation.predictions import Predictions

MIX = np.array([0.58, 0.2, 0.1, 0.07, 0.05])
BOTH = np.array([0.8, 0.6, 0.5, 0.6, 0.4])
# per class: the chance only A is right, and only B
SCENARIOS = {
    "B +3 points in every class": (np.full(5, 0.035), np.full(5, 0.065)),
    "no difference": (np.full(5, 0.02), np.full(5, 0.02)),
    "differences varying by class": (np.array([0.02, 0.05, 0.1, 0.02, 0.02]),
                                     np.array([0.06, 0.02, 0.02, 0.1, 0.1])),
}
CLASSES = ["a", "b", "c", "d", "e"]


def as_predictions(y: np.ndarray, said: np.ndarray) -> Predictions:
    probs = np.full((len(y), len(CLASSES)), 0.025)
    probs[np.arange(len(y)), said] = 0.9
    return Predictions([str(i) for i in range(len(y))], ["sim"] * len(y), np.full(len(y), -1),
                       [CLASSES[c] for c in y], probs, CLASSES)


def image_bootstrap(y: np.ndarray, right_a: np.ndarray, right_b: np.ndarray, seed: int) -> tuple[float, float]:
    """The average-recall difference's 95% interval from resampling the images."""
    draws = [resampled_scores(y, right_b, 5, idx)[1] - resampled_scores(y, right_a, 5, idx)[1]
             for _, _, idx in resample_indices(len(y), 1000, np.random.default_rng(seed))]
    return tuple(np.percentile(np.concatenate(draws), [2.5, 97.5]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50,100,200,1000")
    ap.add_argument("--sets", type=int, default=300)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| scenario | images | accuracy | average recall | average recall, image bootstrap |")
    print("|---|---|---|---|---|")
    for name, (only_a, only_b) in SCENARIOS.items():
        truth = {"accuracy": float(MIX @ (only_b - only_a)), "balanced_accuracy": float(np.mean(only_b - only_a))}
        for n in map(int, args.sizes.split(",")):
            held = {"accuracy": 0, "balanced_accuracy": 0, "bootstrap": 0}
            for t in range(args.sets):
                y = rng.choice(5, n, p=MIX)
                u = rng.random(n)
                right_a = u < BOTH[y] + only_a[y]
                right_b = (u < BOTH[y]) | ((u >= BOTH[y] + only_a[y]) & (u < BOTH[y] + only_a[y] + only_b[y]))
                wrong = (y + 1 + rng.integers(0, 4, n)) % 5
                c = compare_predictions(as_predictions(y, np.where(right_a, y, wrong)),
                                        as_predictions(y, np.where(right_b, y, wrong)), n_boot=1000, seed=t)
                for key in ("accuracy", "balanced_accuracy"):
                    lo, hi = c[key]["ci"]
                    held[key] += lo <= truth[key] <= hi
                lo, hi = image_bootstrap(y, right_a, right_b, t)
                held["bootstrap"] += lo <= truth["balanced_accuracy"] <= hi
            print(f"| {name} | {n} | " + " | ".join(f"{held[k] / args.sets:.3f}" for k in
                                                      ("accuracy", "balanced_accuracy", "bootstrap")) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
