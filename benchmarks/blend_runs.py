"""Two CNNs per fold, trained on different inputs, averaged: does a second view of the head add
what a second seed did not? Offline, on the saved fold models of two CV runs with the same
seeds (so the same folds: checked), each CNN with the run's own input settings, then fused with
the shape model at the first run's weight, as the recipe does. Validation decides; test figures
are printed for the record.

    .venv/bin/python benchmarks/blend_runs.py /tmp/levers/hushem/epochs20 /tmp/levers/hushem/rgb --seeds 1,2,3
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from saved_folds import Tally, bench_arguments, print_scores, saved_folds  # benchmarks/, beside this script

from spermhead.models.shape import fuse


def seed_scores(first: Path, second: Path, data_dir: str) -> dict[tuple[str, str], tuple[float, float]]:
    tally = Tally()
    for a, b in zip(saved_folds(first, data_dir), saved_folds(second, data_dir), strict=True):
        if not all(np.array_equal(getattr(a.fold, p), getattr(b.fold, p)) for p in ("train", "val", "test")):
            raise SystemExit(f"{first} and {second} do not share their folds")
        y, w = a.labels, a.cfg.train.shape_fusion
        shape = a.shape_model()
        for part, idx in (("val", a.fold.val), ("test", a.fold.test)):
            pa, pb = a.cnn_probs(idx), b.cnn_probs(idx)
            other = shape.predict_proba(a.profiles()[idx])
            for name, cnn in (("first", pa), ("second", pb), ("both", (pa + pb) / 2)):
                tally.add((name, part), fuse(cnn, other, w), y[idx])
    return tally.scores()


def main() -> None:
    ap = bench_arguments(__doc__)
    ap.add_argument("second_dir", type=Path, help="the other run's folder (same seeds)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: seed_scores(args.bench_dir / f"seed{s}", args.second_dir / f"seed{s}", args.data_dir)
              for s in seeds}
    print_scores(scores, {"first": "first run's CNN", "second": "second run's CNN", "both": "both, averaged"},
                 "each with the first run's shape fusion")


if __name__ == "__main__":
    main()
