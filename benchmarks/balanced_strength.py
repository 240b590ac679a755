"""Compare rules for the balanced operating point's strength on validation data only.

Loads the saved fold models of a finished bench (`spermhead bench accuracy NAME --out DIR`),
re-scores each fold's validation part split into random halves, and reports the average recall
on the held-out half for: the strength tuned on the other half (the old `--prior-strength val`),
the tuned strength on a smoothed curve, and fixed strengths. Test folds are never read.

Bench runs since session 12 refit each fold on training + validation, and HuSHeM's fuses the pixel
model, which this script cannot score: give it lever runs without them (session 31), e.g.
`levers.py scian-pa no_refit_val --set pixel_fusion=0 --seeds 1,2,3`, then

    .venv/bin/python benchmarks/balanced_strength.py /tmp/levers/scian-pa/no_refit_val --seeds 1,2,3
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from saved_folds import bench_arguments, saved_folds  # benchmarks/, beside this script
from sklearn.metrics import balanced_accuracy_score

from spermhead.training.operating import ALPHAS, apply_bias, prior_bias


def recall_at(probs: np.ndarray, labels: np.ndarray, train: np.ndarray, k: int, strength: float) -> float:
    predicted = apply_bias(probs, prior_bias(train, k, strength)).argmax(1)
    # a small half can miss a rare class (SCIAN's small): average recall is then over the
    # classes it holds, which is what scikit-learn computes; its warning says so on every call
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        return balanced_accuracy_score(labels, predicted)


def main() -> None:
    ap = bench_arguments(__doc__)
    ap.add_argument("--splits", type=int, default=20, help="random halvings per fold")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {"tuned": [], "tuned, smoothed": [], "fixed 1.0": [], "fixed 0.8": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        for saved in saved_folds(args.bench_dir / f"seed{seed}", args.data_dir):
            fold, y, k = saved.fold, saved.labels, len(saved.classes)
            probs = saved.cnn_probs(fold.val)
            labels, train = y[fold.val], y[fold.train]
            for _ in range(args.splits):
                order = rng.permutation(len(labels))
                halves = order[: len(order) // 2], order[len(order) // 2:]
                for tune, held in (halves, halves[::-1]):
                    curve = np.array([recall_at(probs[tune], labels[tune], train, k, a) for a in ALPHAS])
                    smooth = np.convolve(np.pad(curve, 2, mode="edge"), np.ones(5) / 5, mode="valid")
                    picks = {"tuned": ALPHAS[int(np.argmax(curve))], "tuned, smoothed": ALPHAS[int(np.argmax(smooth))],
                             "fixed 1.0": 1.0, "fixed 0.8": 0.8}
                    for name, strength in picks.items():
                        scores[name].append(recall_at(probs[held], labels[held], train, k, float(strength)))
        print(f"after CV seed {seed}: " + ", ".join(f"{n} {np.mean(v):.4f}" for n, v in scores.items()), flush=True)


if __name__ == "__main__":
    main()
