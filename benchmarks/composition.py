"""A sample's class shares from predicted classes: counted as predicted, and adjusted for the
model's measured errors (evaluation/composition.py). RESULTS.md, sessions 16 and 17.

    .venv/bin/python benchmarks/composition.py RUN_DIR ... [--samples 100] [--heads 50] [--pool]
        [--replace] [--check-from RUN_DIR] [--together 2]

No training: each run's out-of-fold predictions.csv stands in for a lab's samples. For each test
fold, the confusion counts come from the *other* folds' predictions (as a bundle's come from its
run, never from the sample it is used on). Each simulated sample draws a class mix at random
(flat Dirichlet, so some samples have almost no normal heads and some many), then `--heads`
images of the fold with those true classes (`composition.held_out_samples`: each image at most
once and at most half the fold, unless `--replace`, session 16's simulation, where a fold's few
images of a class recur), and the shares are estimated from their predicted classes alone.
Printed per run: the mean absolute error of each class's share, counted and adjusted, in
percentage points, and how often each 95% interval held the sample's true share (bounds as
shown, to 0.1%). `--check-from RUN` first widens the intervals as a bundle of that run would
(`composition.check_intervals` on its own predictions): give a run of another CV seed to see
whether the widening carries over. `--together 2` draws each sample from two neighbouring folds
(estimated with the other three folds' confusion), for samples larger than half a fold. Also, for comparison (not shipped), the EM re-weighting of the
calibrated probabilities to the sample's class mix (Saerens, Latinne and Decaestecker 2002), from
the other folds' class mix as the training prior.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from spermhead.evaluation.composition import ESTIMATES, SHOWN, check_intervals, composition, held_out_samples
from spermhead.evaluation.predictions import read_predictions


def em_shares(probs: np.ndarray, prior: np.ndarray, steps: int = 500, tol: float = 1e-7) -> np.ndarray:
    """Class shares that make the prior-reweighted posteriors average to themselves (SLD)."""
    shares = prior.copy()
    for _ in range(steps):
        w = probs * (shares / prior)
        new = (w / w.sum(axis=1, keepdims=True)).mean(axis=0)
        if np.abs(new - shares).max() < tol:
            return new
        shares = new
    return shares


def simulate(run: Path, samples: int, heads: int, seed: int, *, replace: bool = False,
             extra_sd: dict | None = None, together: int = 1) -> dict[str, np.ndarray]:
    pred = read_predictions(run)
    classes = list(pred.classes)
    k = len(classes)
    true, guess, folds = pred.true_indices, pred.pred_indices, np.asarray(pred.folds)
    rng = np.random.default_rng(seed)
    err: dict[str, list] = {"counted": [], "adjusted": [], "em": []}
    held: dict[str, list] = {"counted": [], "adjusted": []}
    sizes = []
    per_fold = samples // len(set(folds.tolist())) + 1
    for others, picked, truth in held_out_samples(true, folds, k, heads=heads, per_fold=per_fold, rng=rng,
                                                  replace=replace, together=together):
        sizes.append(len(picked))
        cm = confusion_matrix(true[others], guess[others], labels=range(k))
        prior = np.bincount(true[others], minlength=k) / others.sum()
        rows = composition([classes[i] for i in guess[picked]], classes, cm, extra_sd=extra_sd,
                           seed=int(rng.integers(1 << 31)))
        for how, (est, lo, hi) in ESTIMATES.items():
            err[how].append([abs(r[est] - t) for r, t in zip(rows, truth, strict=True)])
            held[how].append([r[lo] - SHOWN <= t <= r[hi] + SHOWN for r, t in zip(rows, truth, strict=True)])
        err["em"].append(np.abs(em_shares(pred.probabilities[picked], prior) - truth))
    return {"classes": np.array(classes), "sizes": np.array(sizes), **{f"err_{h}": np.array(v) for h, v in err.items()},
            **{f"held_{h}": np.array(v) for h, v in held.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=100,
                        help="simulated samples per run, drawn per fold: SAMPLES // folds + 1 from each "
                             "(100 over 5 folds: 105), as the recorded figures were")
    parser.add_argument("--heads", type=int, default=200, help="heads per sample (WHO assesses 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", action="store_true", help="one table over all the runs given (repeats of a recipe)")
    parser.add_argument("--replace", action="store_true", help="draw a fold's images with replacement (session 16)")
    parser.add_argument("--check-from", type=Path, help="widen the intervals as this run's bundle would")
    parser.add_argument("--together", type=int, default=1,
                        help="draw each sample from this many neighbouring folds (larger samples)")
    args = parser.parse_args()
    extra_sd = None
    if args.check_from:
        p = read_predictions(args.check_from)
        check = check_intervals(p.true_indices, p.pred_indices, p.folds, list(p.classes))
        extra_sd = check["extra_sd"] if check else None
        print(f"widened as {args.check_from}'s bundle would: extra sd {extra_sd}")
    results = [(str(run), simulate(run, args.samples, args.heads, args.seed, replace=args.replace,
                                   extra_sd=extra_sd, together=args.together)) for run in args.runs]
    if args.pool:
        keys = [k for k in results[0][1] if k != "classes"]
        pooled = {"classes": results[0][1]["classes"], **{k: np.concatenate([r[k] for _, r in results]) for k in keys}}
        results = [(" + ".join(name for name, _ in results), pooled)]
    for run, r in results:
        n = len(r["err_counted"])
        print(f"\n{run}: {n} samples of up to {args.heads} heads (largest {r['sizes'].max()})"
              f"{' (with replacement)' if args.replace else ''}")
        print("| class | error, counted (points) | error, adjusted | error, EM (not shipped) | "
              "95% interval held, counted | adjusted |")
        print("|---|---|---|---|---|---|")
        for j, c in enumerate([*r["classes"], "all"]):
            cols = slice(None) if c == "all" else j
            print(f"| {c} | {100 * r['err_counted'][:, cols].mean():.1f} | {100 * r['err_adjusted'][:, cols].mean():.1f} | "
                  f"{100 * r['err_em'][:, cols].mean():.1f} | {100 * r['held_counted'][:, cols].mean():.0f}% | "
                  f"{100 * r['held_adjusted'][:, cols].mean():.0f}% |")


if __name__ == "__main__":
    main()
