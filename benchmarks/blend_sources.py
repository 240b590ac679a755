"""Two networks per fold that started from two synthetic source models: does the second start
add what a second seed from the same start did not (RESULTS.md, session 28)?

Offline, on the saved fold models of two lever runs with the same CV seeds (so the same folds:
checked), the recipe's (`no_refit_val`) and one from another source (`src1+no_refit_val`). Each
fold scores its validation and test parts as training scores them (`FittedSide.probs`): the
networks' probabilities averaged, then fused with the first run's shape and pixel models at
its weights; the balanced point's bias is chosen on the validation part as the run chooses it.
"first" must repeat the first run's own logged validation figures. Validation decides; test
figures are for the record.

    .venv/bin/python benchmarks/blend_sources.py /tmp/levers/hushem/no_refit_val \\
        /tmp/levers/hushem/src1+no_refit_val --seeds 190,191,192,193,194,195,196,197
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from saved_folds import bench_arguments, saved_folds  # benchmarks/, beside this script
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from spermhead.models.pixels import PixelModel
from spermhead.models.shape import ShapeModel
from spermhead.training.operating import apply_bias, choose_balanced_bias, learnt_prior_correction
from spermhead.training.run import FittedSide

ARMS = ("first", "second", "both")


def seed_scores(first: Path, second: Path, data_dir: str) -> dict[tuple[str, str, str], float]:
    """(arm, part, point) -> accuracy at the accuracy point, average recall at the balanced one."""
    answers: dict[tuple[str, str, str], tuple[list[int], list[int]]] = {}
    for a, b in zip(saved_folds(first, data_dir, cnn_and_shape_only=False),
                    saved_folds(second, data_dir, cnn_and_shape_only=False), strict=True):
        if not all(np.array_equal(getattr(a.fold, p), getattr(b.fold, p)) for p in ("train", "val", "test")):
            raise SystemExit(f"{first} and {second} do not share their folds")
        fold_dir = first / "folds" / f"fold{a.fold.index}"
        shape_file, pixel_file = fold_dir / "shape.safetensors", fold_dir / "pixels.safetensors"
        shape = ShapeModel.from_tensors(load_file(str(shape_file)), "shape") if shape_file.is_file() else None
        pixels = PixelModel.from_tensors(load_file(str(pixel_file)), "pixels") if pixel_file.is_file() else None
        y, k, cfg = a.labels, len(a.classes), a.cfg
        prior = learnt_prior_correction(y[a.fold.train], k, cfg.train.balance, cfg.train.balance_per_class)
        for arm, members in (("first", [a.model]), ("second", [b.model]), ("both", [a.model, b.model])):
            side = FittedSide(members, shape, pixels, prior, 0, 0)
            val = side.probs(cfg, a.images, a.fold.val, a.profiles())
            bias, _ = choose_balanced_bias(val, y[a.fold.val], y[a.fold.train], k, cfg.train.prior_strength)
            test = side.probs(cfg, a.images, a.fold.test, a.profiles())
            for part, probs, idx in (("val", val, a.fold.val), ("test", test, a.fold.test)):
                for point, shift in (("accuracy", None), ("balanced", bias)):
                    pred, true = answers.setdefault((arm, part, point), ([], []))
                    pred.extend(apply_bias(probs, shift).argmax(1).tolist())
                    true.extend(y[idx].tolist())
    return {key: float(accuracy_score(t, p) if key[2] == "accuracy" else balanced_accuracy_score(t, p))
            for key, (p, t) in answers.items()}


def main() -> None:
    ap = bench_arguments(__doc__)
    ap.add_argument("second_dir", type=Path, help="the other source's lever folder (same seeds)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: seed_scores(args.bench_dir / f"seed{s}", args.second_dir / f"seed{s}", args.data_dir) for s in seeds}
    for s in seeds:  # the offline scoring must give the first run's own figures
        logged = json.loads((args.bench_dir / f"seed{s}" / "metrics.json").read_text())["validation"]
        got = (scores[s][("first", "val", "accuracy")], scores[s][("first", "val", "balanced")])
        want = (logged["accuracy"], logged["balanced_point"]["balanced_accuracy"])
        if not np.allclose(got, want, atol=1e-9):
            raise SystemExit(f"seed {s}: offline {got} is not the run's logged {want}")
    print("| arm | val. accuracy per seed | mean (bal.-point avg recall) | test, record only (bal. point) |")
    print("|---|---|---|---|")
    for arm in ARMS:
        per_seed = " ".join(f"{scores[s][(arm, 'val', 'accuracy')]:.3f}".lstrip("0") for s in seeds)

        def mean(part: str, point: str, arm: str = arm) -> str:
            return f"{np.mean([scores[s][(arm, part, point)] for s in seeds]):.3f}".lstrip("0")

        print(f"| {arm} | {per_seed} | {mean('val', 'accuracy')} ({mean('val', 'balanced')}) | "
              f"{mean('test', 'accuracy')} ({mean('test', 'balanced')}) |")


if __name__ == "__main__":
    main()
