"""How often the "unlike the training images" check fires on images like the training images,
and on another lab's (RESULTS.md, session 16).

    .venv/bin/python benchmarks/input_check.py --data-dir ../shared/datasets [--seeds 1,2,3]

For each dataset's recipe (its own preprocessing: HuSHeM 48 px at head scale, SCIAN 64 px at
image scale), every image of both datasets is described (preprocess/acquisition.py). In-lab:
each CV fold's ranges come from its training side (training + validation, as a bundle's do) and
the check runs on its test fold, so a flag there is a false alarm. Across labs: the ranges come
from every image of one dataset and the check runs on the other's. Each widening of the range
is shown; the shipped one is `acquisition.MARGIN`.
"""

from __future__ import annotations

import argparse

import numpy as np

from spermhead.data.readers import load_dataset
from spermhead.preprocess import acquisition
from spermhead.preprocess.acquisition import describe, fit_ranges, outside
from spermhead.preprocess.align import canonicalize_paths
from spermhead.training.options import build_run_config
from spermhead.training.protocols import make_folds

MARGINS = (1.0, 1.05, 1.1, 1.2, 1.3)


def flagged(descriptions: list[dict[str, float]], ranges: dict[str, list[float]], margin: float) -> np.ndarray:
    """Per image: any descriptor outside its range widened by `margin` (the shipped rule)."""
    return np.array([any(name in d and outside(d[name], lo, hi, margin) for name, (lo, hi) in ranges.items())
                     for d in descriptions], bool)


def by_descriptor(descriptions: list[dict[str, float]], ranges: dict[str, list[float]], margin: float) -> str:
    counts = {name: sum(name in d and outside(d[name], lo, hi, margin) for d in descriptions)
              for name, (lo, hi) in ranges.items()}
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = {"hushem": "scian-pa", "scian-pa": "hushem"}
    tables = {name: load_dataset(name, args.data_dir) for name in sets}
    print(f"shipped margin: {acquisition.MARGIN}")
    for own, other in sets.items():
        cfg = build_run_config(own, "unused", data_dir=args.data_dir, cv=5)
        described = {}
        for name, table in tables.items():
            _, canon = canonicalize_paths([s.path for s in table.samples], cfg.preprocess)
            described[name] = [describe(c) for c in canon]
        print(f"\n{own}'s recipe ({cfg.preprocess.image_size} px, scale {cfg.preprocess.scale}); "
              f"{len(tables[own])} own images, {len(tables[other])} of {other}")
        print("| margin | in-lab flags (test folds, seeds " + args.seeds + ") | " + f"{other}'s images flagged |")
        print("|---|---|---|")
        everything = fit_ranges(described[own])
        for margin in MARGINS:
            false = total = 0
            for seed in seeds:
                cfg.seed = seed
                for fold in make_folds(tables[own], cfg.protocol, seed, cfg.train.val_fraction):
                    train = [described[own][i] for i in np.concatenate([fold.train, fold.val])]
                    test = [described[own][i] for i in fold.test]
                    false += int(flagged(test, fit_ranges(train), margin).sum())
                    total += len(test)
            across = flagged(described[other], everything, margin)
            print(f"| {margin} | {false} of {total} ({100 * false / total:.1f}%) | "
                  f"{int(across.sum())} of {len(across)} ({100 * across.mean():.1f}%) |")
        print(f"across labs at {acquisition.MARGIN}, by descriptor: "
              f"{by_descriptor(described[other], everything, acquisition.MARGIN)}")
        print(f"training ranges: { {k: [round(v, 2) for v in r] for k, r in everything.items()} }")


if __name__ == "__main__":
    main()
