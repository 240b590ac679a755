"""A size-aware second opinion for SCIAN, on a bench's saved fold models: a logistic regression on
the head's morphometrics in the original image's pixels (log area, length and width, elongation,
roundness), alone or beside the scale-free profile, fused with the CNN at weight W. SCIAN's
"small" class is defined by size, which the profile (normalised by head length) cannot see.

Each model is fitted on the fold's training side only; both operating points are scored (the
balanced one divides out the training prior, as the SCIAN recipes do). Validation decides; test
figures are printed for the record.

    .venv/bin/python benchmarks/size_opinion.py /tmp/levers/scian-ta/epochs40 --seeds 4,5,6
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from saved_folds import Tally, bench_arguments, saved_folds  # benchmarks/, beside this script

from spermhead.models.inference import apply_class_bias
from spermhead.models.shape import ShapeModel, fuse
from spermhead.training.operating import prior_bias

WEIGHTS = (0.2, 0.3)


def seed_scores(run: Path, data_dir: str) -> dict[tuple[str, float, str, str], tuple[float, float]]:
    """(model, W, point, part) -> (accuracy, average recall), pooled over the run's folds."""
    tally = Tally()
    feats: dict[str, np.ndarray] = {}
    for saved in saved_folds(run, data_dir):
        fold, y, k = saved.fold, saved.labels, len(saved.classes)
        if not feats:
            size = saved.morphometrics()
            feats = {"size": size, "profile": saved.profiles(), "profile + size": np.hstack([saved.profiles(), size])}
        bias = prior_bias(y[fold.train], k, 1.0)
        models = {name: ShapeModel.fit(f[fold.train], y[fold.train], k) for name, f in feats.items()}
        for part, idx in (("val", fold.val), ("test", fold.test)):
            cnn = saved.cnn_probs(idx)
            options = {("CNN alone", 0.0): cnn}
            options |= {(name, w): fuse(cnn, m.predict_proba(feats[name][idx]), w)
                        for name, m in models.items() for w in WEIGHTS}
            for (name, w), probs in options.items():
                tally.add((name, w, "accuracy", part), probs, y[idx])
                tally.add((name, w, "balanced", part), apply_class_bias(probs, bias), y[idx])
    return tally.scores()


def main() -> None:
    args = bench_arguments(__doc__).parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = [seed_scores(args.bench_dir / f"seed{s}", args.data_dir) for s in seeds]
    print("accuracy (average recall) per seed, then the mean")
    for part in ("val", "test"):
        for key in sorted({k[:3] for k in scores[0]}, key=str):
            got = np.array([sc[(*key, part)] for sc in scores])
            label = f"{key[0]}, W {key[1]}, {key[2]} point"
            print(f"{part:5s} {label:38s} " + "  ".join(f"{a:.3f} ({r:.3f})" for a, r in got)
                  + f"   {got[:, 0].mean():.3f} ({got[:, 1].mean():.3f})")


if __name__ == "__main__":
    main()
