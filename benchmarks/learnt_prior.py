"""Runs trained with class-balanced sampling (or loss or offline balancing), scored at both
operating points before and after session 11's correction, from their saved fold models.

Before, the CNN's uniform-prior posteriors were taken as the natural prior's: the accuracy point
answered them as they were, and the balanced point divided the training prior out of them. Now
the log training prior goes back first (`training/operating.py: learnt_prior_correction`), and
then the two points work as for natural-prior training. Validation parts and test folds both
printed; the test folds are for the record.

    .venv/bin/python benchmarks/learnt_prior.py /tmp/lev10g/tmp/SCIAN-TA-folder/set --seeds 1,2,3,4,5,6,7,8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from saved_folds import Tally, bench_arguments, print_scores, saved_folds  # benchmarks/, beside this script

from spermhead.models.inference import apply_class_bias
from spermhead.training.operating import prior_bias

SETTINGS = {("before", "accuracy"): "before, accuracy point", ("before", "balanced"): "before, balanced point",
            ("after", "accuracy"): "after, accuracy point", ("after", "balanced"): "after, balanced point"}


def seed_scores(run: Path, data_dir: str) -> dict:
    tally = Tally()
    for saved in saved_folds(run, data_dir):
        cfg, fold, y, k = saved.cfg, saved.fold, saved.labels, len(saved.classes)
        fused = cfg.train.shape_fusion or cfg.train.pixel_fusion
        if cfg.train.balance == "none" or isinstance(cfg.train.prior_strength, str) or fused or fold.n_extra:
            raise SystemExit(f"{run}: this comparison is for class-balanced runs of the CNN alone, at a "
                             "fixed balanced strength, on their own images")
        for part, idx in (("val", fold.val), ("test", fold.test)):
            raw, corrected = saved.cnn_probs(idx, raw=True), saved.cnn_probs(idx)
            divide_out = prior_bias(y[fold.train], k, float(cfg.train.prior_strength))
            for when, probs in (("before", raw), ("after", corrected)):
                tally.add(((when, "accuracy"), part), probs, y[idx])
                tally.add(((when, "balanced"), part), apply_class_bias(probs, divide_out), y[idx])
    return tally.scores()


def main() -> None:
    args = bench_arguments(__doc__).parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: seed_scores(args.bench_dir / f"seed{s}", args.data_dir) for s in seeds}
    print_scores(scores, SETTINGS, f"{args.bench_dir}, seeds {args.seeds}")
    mean = {key: np.mean([sc[key] for sc in scores.values()], axis=0) for key in scores[seeds[0]]}
    for part in ("val", "test"):
        before, after = mean[(("before", "accuracy"), part)], mean[(("after", "accuracy"), part)]
        print(f"{part}: accuracy point {before[0]:.3f} -> {after[0]:.3f}")


if __name__ == "__main__":
    main()
