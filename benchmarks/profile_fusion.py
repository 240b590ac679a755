"""Late fusion of the CNN with a head-profile logistic regression, measured on a bench's saved
fold models (the "fusing the morphometrics with CNN features" lever).

For every CV seed and fold of a bench run: the fold's CNN scores its validation and test parts
(as in training: flip TTA, raw posteriors); the shape model `--shape-fusion` uses
(`models/shape.py`: a logistic regression on the head's width and darkness profile) is fitted on
the fold's training side only; the two are fused with weight W on the shape model, by the same
code training uses. Validation decides;
test figures are printed for the record.

Bench runs since session 12 refit each fold on training + validation, and HuSHeM's fuses the pixel
model, which this script cannot score: give it lever runs without them (session 31), e.g.
`levers.py hushem no_refit_val --set pixel_fusion=0 --seeds 1,2,3`, then

    .venv/bin/python benchmarks/profile_fusion.py /tmp/levers/hushem/no_refit_val --seeds 1,2,3
"""

from __future__ import annotations

from pathlib import Path

from saved_folds import Tally, bench_arguments, print_scores, saved_folds  # benchmarks/, beside this script

from spermhead.models.shape import fuse

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)


def seed_scores(run: Path, data_dir: str) -> dict[tuple[float, str], tuple[float, float]]:
    """(weight, "val"|"test") -> (accuracy, average recall) pooled over the run's folds."""
    tally = Tally()
    for saved in saved_folds(run, data_dir):
        fold, y = saved.fold, saved.labels
        model = saved.shape_model()
        for part, idx in (("val", fold.val), ("test", fold.test)):
            # the CNN alone, rescored: a fused run's saved test_probs already hold its fusion
            cnn = saved.cnn_probs(idx)
            shape = model.predict_proba(saved.profiles()[idx])
            for w in WEIGHTS:
                tally.add((w, part), fuse(cnn, shape, w), y[idx])
    return tally.scores()


def main() -> None:
    ap = bench_arguments(__doc__)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: seed_scores(args.bench_dir / f"seed{s}", args.data_dir) for s in seeds}
    print_scores(scores, {w: f"W {w:.1f}" for w in WEIGHTS}, "shape model fused at weight W")

if __name__ == "__main__":
    main()
