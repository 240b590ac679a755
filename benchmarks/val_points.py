"""Both operating points on the validation parts of saved CV runs, for choosing between recipes
on a set where both points count (SCIAN). Runs since session 10 report both in metrics.json
(`validation.balanced_point`); this recomputes them for older runs.

Each fold's model scores its validation part as training does (flip TTA, the training prior
given back after class-balanced training, the shape model fused where the run used it); the
balanced point then divides out the training side's prior at the run's strength
(`prior_strength`), by training's own rule. Test folds are not read.

    .venv/bin/python benchmarks/val_points.py /tmp/levers/scian-pa/base /tmp/levers/scian-pa/epochs20 --seeds 4,5,6
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from saved_folds import Tally, bench_arguments, saved_folds  # benchmarks/, beside this script

from spermhead.models.inference import apply_class_bias
from spermhead.models.shape import fuse
from spermhead.training.operating import choose_balanced_bias


def seed_scores(run: Path, data_dir: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(point, "val") -> (accuracy, average recall) pooled over the run's validation parts."""
    tally = Tally()
    for saved in saved_folds(run, data_dir):
        cfg, fold, y, k = saved.cfg, saved.fold, saved.labels, len(saved.classes)
        probs = saved.cnn_probs(fold.val)
        if cfg.train.shape_fusion > 0:
            shape = saved.shape_model()
            probs = fuse(probs, shape.predict_proba(saved.profiles()[fold.val]), cfg.train.shape_fusion)
        # the run's own rule; a strength chosen on validation ("val") is scored where it was chosen
        bias, _ = choose_balanced_bias(probs, y[fold.val], y[fold.train], k, cfg.train.prior_strength)
        tally.add(("accuracy", "val"), probs, y[fold.val])
        tally.add(("balanced", "val"), apply_class_bias(probs, bias), y[fold.val])
    return tally.scores()


def main() -> None:
    ap = bench_arguments(__doc__)
    ap.add_argument("more_dirs", nargs="*", type=Path, help="further run folders to compare")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print("validation: accuracy (average recall) at each operating point")
    for run_dir in [args.bench_dir, *args.more_dirs]:
        scores = [seed_scores(run_dir / f"seed{s}", args.data_dir) for s in seeds]
        for point in ("accuracy", "balanced"):
            got = np.array([sc[(point, "val")] for sc in scores])
            per_seed = "  ".join(f"{a:.3f} ({r:.3f})" for a, r in got)
            print(f"{run_dir.name:12s} {point:9s} {per_seed}   mean {got[:, 0].mean():.3f} ({got[:, 1].mean():.3f})")


if __name__ == "__main__":
    main()
