"""Late fusion of the CNN with a head-profile logistic regression, measured on a bench's saved
fold models (the "fusing the morphometrics with CNN features" lever).

For every CV seed and fold of a bench run: the fold's CNN scores its validation and test parts
(as in training: flip TTA, raw posteriors); the shape model `--shape-fusion` uses
(`models/shape.py`: a logistic regression on the head's width and darkness profile) is fitted on
the fold's training side only; the two are fused with weight W on the shape model, by the same
code training uses. Validation decides;
test figures are printed for the record.

    .venv/bin/python benchmarks/profile_fusion.py runs/bench/hushem --seeds 1,2,3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from spermhead.config import load_config
from spermhead.data.readers import load_dataset
from spermhead.models.inference import predict_proba
from spermhead.models.shape import ShapeModel, fuse
from spermhead.preprocess.profile import profiles as head_profiles
from spermhead.training.augment import tta_flips
from spermhead.training.protocols import make_folds
from spermhead.training.run import build_member, canonical_images

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)


def seed_scores(run: Path, data_dir: str) -> dict[tuple[float, str], tuple[float, float]]:
    """(weight, "val"|"test") -> (accuracy, average recall) pooled over the run's folds."""
    cfg = load_config(run / "config.yaml")
    table = load_dataset(cfg.dataset, data_dir)
    folds = make_folds(table, cfg.protocol, cfg.seed, cfg.train.val_fraction)  # the run's own folds
    images, _ = canonical_images(table, cfg)
    profiles = head_profiles(images)
    y = np.asarray(table.label_indices)
    answers: dict[tuple[float, str], tuple[list[int], list[int]]] = {}  # (predicted, true)
    for fold in folds:
        member = build_member(cfg, len(table.classes), images[fold.train])
        member.load_state_dict(load_file(str(run / "folds" / f"fold{fold.index}" / "model0.safetensors")))
        cnn = {"val": predict_proba(member.eval(), images[fold.val], [0.0], [1.0], tta=cfg.train.tta,
                                    flips=tta_flips(cfg.train.augment)),
               "test": np.load(run / "folds" / f"fold{fold.index}" / "test_probs.npy")}
        model = ShapeModel.fit(profiles[fold.train], y[fold.train], len(table.classes))
        for part, idx in (("val", fold.val), ("test", fold.test)):
            shape = model.predict_proba(profiles[idx])
            for w in WEIGHTS:
                pred, true = answers.setdefault((w, part), ([], []))
                pred.extend(fuse(cnn[part], shape, w).argmax(1).tolist())
                true.extend(y[idx].tolist())
    return {key: (accuracy_score(t, p), balanced_accuracy_score(t, p)) for key, (p, t) in answers.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--data-dir", default="../shared/datasets")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: seed_scores(args.bench_dir / f"seed{s}", args.data_dir) for s in seeds}
    print("accuracy (average recall)")
    print("part  W     " + "  ".join(f"seed {s:<8d}" for s in seeds) + "   mean")
    for part in ("val", "test"):
        for w in WEIGHTS:
            got = [scores[s][(w, part)] for s in seeds]
            mean = np.mean(got, axis=0)
            print(f"{part:5s} {w:.1f}   " + "  ".join(f"{a:.3f} ({r:.3f})" for a, r in got)
                  + f"   {mean[0]:.3f} ({mean[1]:.3f})")


if __name__ == "__main__":
    main()
