"""Images a bench gets wrong in every repeat: the cases no seed fixes, worth an expert's look.

    .venv/bin/python benchmarks/hard_cases.py runs/bench/hushem [--seeds 1,2,3] [--min 2]

Reads each seed's out-of-fold `predictions.csv` (accuracy point) and prints, per image, how many
repeats got it wrong and what they answered, with a summary of what that means for accuracy."""

from __future__ import annotations

import argparse
import csv
from collections import Counter, defaultdict
from pathlib import Path


def predictions_file(bench_dir: Path, seed: int) -> Path:
    """A bench seed's out-of-fold predictions.csv, or a clear exit naming what is missing."""
    path = bench_dir / f"seed{seed}" / "predictions.csv"
    if not path.is_file():
        raise SystemExit(f"{path.parent}: no predictions.csv (is this a bench folder with that seed?)")
    return path


def wrong_counts(bench_dir: Path, seeds: list[int]) -> tuple[dict[str, list[str]], dict[str, str], int]:
    """Per image tested in every repeat, the wrong answers; the truths; how many such images.
    Under CV every image is; under a split protocol (the combined bench's 60/30/10), each repeat
    tests other images, and only those tested in all of them are counted."""
    answers: dict[str, list[str]] = defaultdict(list)
    truth: dict[str, str] = {}
    tested: Counter[str] = Counter()
    for seed in seeds:
        with open(predictions_file(bench_dir, seed)) as fh:
            for row in csv.DictReader(fh):
                truth[row["id"]] = row["true"]
                tested[row["id"]] += 1
                if row["pred"] != row["true"]:
                    answers[row["id"]].append(row["pred"])
    every = {i for i, n in tested.items() if n == len(seeds)}
    if len(every) < len(truth):
        print(f"note: the repeats tested different images (a split, not CV); of {len(truth)} images tested, "
              f"the {len(every)} tested in every repeat are counted")
    return ({i: a for i, a in answers.items() if i in every}, {i: t for i, t in truth.items() if i in every},
            len(every))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_dir", type=Path, help="a bench's output folder, e.g. runs/bench/hushem")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--min", type=int, default=0, help="list images wrong in at least this many repeats "
                    "(default: all of them)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    answers, truth, n = wrong_counts(args.bench_dir, seeds)
    spread = Counter(len(v) for v in answers.values())
    print(f"{n} images, {len(seeds)} repeats; wrong in k repeats: "
          + ", ".join(f"k={k}: {spread[k]}" for k in range(1, len(seeds) + 1)))
    always = spread[len(seeds)]
    if n:
        print(f"wrong in every repeat: {always} ({100 * always / n:.1f}%), so accuracy stays <= "
              f"{100 * (1 - always / n):.1f}% unless a recipe fixes some of them")
    least = args.min or len(seeds)
    for ident, preds in sorted(answers.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(preds) >= least:
            print(f"{len(preds)}  {ident}  true {truth[ident]}  answered {', '.join(sorted(set(preds)))}")


if __name__ == "__main__":
    main()
