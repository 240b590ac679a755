"""How far a prior correction can trade accuracy for average recall on a bench's out-of-fold
predictions: the upper bound for "one operating point with both >= X".

For strengths s in [0, 1], each image's log-posteriors get `- s * log(prior)` (s = 0 is the
accuracy point) and the script prints accuracy and average recall per seed, and the s where the
smaller of the two peaks. That s is chosen *on the test folds*, so the figure is a ceiling for
this family of operating points, not a result: a point chosen on validation data can only do
worse. The prior is the whole dataset's (stratified folds keep it), and the posteriors are those
predictions.csv holds, after the bundle's temperature: s = 1 is therefore not quite the bench's
balanced point, which divides each fold's training prior out before the temperature (on
SCIAN-PA seed 1, s = 1 gives .575 / .691 where the balanced point gives .527 / .700; session 31).
The family is the same, so the ceiling stands; the s axis is this script's own.

    .venv/bin/python benchmarks/operating_frontier.py runs/bench/scian-pa --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from hard_cases import predictions_file  # benchmarks/, beside this script
from sklearn.metrics import accuracy_score, balanced_accuracy_score

STRENGTHS = np.round(np.linspace(0.0, 1.0, 21), 2)


def frontier(predictions: Path) -> list[tuple[float, float, float]]:
    """(strength, accuracy, average recall) over STRENGTHS, from one run's predictions.csv."""
    with open(predictions) as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c.startswith("p_")]
    classes = [c[2:] for c in columns]
    probs = np.array([[float(r[c]) for c in columns] for r in rows])
    y = np.array([classes.index(r["true"]) for r in rows])
    log_prior = np.log(np.bincount(y, minlength=len(classes)) / len(y))
    out = []
    for s in STRENGTHS:
        pred = (np.log(np.clip(probs, 1e-12, None)) - s * log_prior).argmax(1)
        out.append((float(s), accuracy_score(y, pred), balanced_accuracy_score(y, pred)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args()
    curves = {s: frontier(predictions_file(args.bench_dir, s))
              for s in (int(v) for v in args.seeds.split(","))}
    print("strength  " + "  ".join(f"seed {s:<11d}" for s in curves) + "  (accuracy / average recall)")
    for i, s in enumerate(STRENGTHS):
        print(f"{s:8.2f}  " + "  ".join(f"{c[i][1]:.3f} / {c[i][2]:.3f}" for c in curves.values()))
    for seed, curve in curves.items():
        s, acc, rec = max(curve, key=lambda t: min(t[1], t[2]))
        print(f"seed {seed}: best min(accuracy, average recall) = {min(acc, rec):.3f} at strength {s:.2f} "
              f"({acc:.3f} / {rec:.3f}; chosen on test, a ceiling)")


if __name__ == "__main__":
    main()
