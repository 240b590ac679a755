"""Other second opinions fused with the CNN, on a bench's saved fold models: the recipe's shape
model with other regularisation, a finer profile or the two sides of the head apart, and
classical models on the aligned pixels.

Every model is fitted on the fold's training side only and fused with the CNN's raw posteriors
(`(1 - W) * cnn + W * other`, as `--shape-fusion` does); "profile + pixels" gives each of the two
weight W. Validation decides; test figures are printed for the record.

    .venv/bin/python benchmarks/shape_models.py /tmp/levers/hushem/epochs20 --seeds 1,2,3
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from classical_baselines import gradient_histograms  # benchmarks/, beside this script
from saved_folds import SavedFold, Tally, bench_arguments, print_scores, saved_folds
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from spermhead.models.shape import ShapeModel, fuse, fuse_all
from spermhead.preprocess.profile import axis_profile, head_mask

Fitter = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (train x, train y, x) -> probs


def _profile(c: float) -> Fitter:
    return lambda x, y, new: ShapeModel.fit(x, y, int(y.max()) + 1, c=c).predict_proba(new)


def _svm(pca: bool) -> Fitter:
    def fit(x: np.ndarray, y: np.ndarray, new: np.ndarray) -> np.ndarray:
        steps = [StandardScaler(), *([PCA(50, random_state=0)] if pca else []),
                 CalibratedClassifierCV(SVC(C=10), ensemble=False)]  # Platt-scaled probabilities
        return make_pipeline(*steps).fit(x, y).predict_proba(new)
    return fit


def _flipped_svm(images: np.ndarray, y: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The pixel SVM trained on each image and its three flips (the CNN's training symmetries),
    answering with the mean over the four flips of each new image."""
    views = lambda x: [x, x[:, ::-1], x[:, :, ::-1], x[:, ::-1, ::-1]]  # noqa: E731
    flat = lambda x: np.ascontiguousarray(x).reshape(len(x), -1)  # noqa: E731
    fit = _svm(pca=True)
    train = np.concatenate([flat(v) for v in views(images)])
    labels = np.concatenate([y] * 4)
    return np.mean([fit(train, labels, flat(v)) for v in views(new)], axis=0)


def half_widths(image: np.ndarray, points: int = 24) -> np.ndarray:
    """The head's two half-widths along its axis, from the centre line to each edge, the larger
    first at every point (alignment leaves the head's up/down side open): the asymmetry an
    irregular head has and the recipe's total width hides. NaNs where no head is found."""
    found = head_mask(image)
    if found is None:
        return np.full(2 * points, np.nan, dtype=np.float32)
    rows = np.arange(found.shape[0])
    centre = (found * rows[:, None]).sum() / found.sum()
    cols = np.flatnonzero(found.any(0))
    above = np.array([centre - rows[found[:, j] > 0].min() for j in cols])
    below = np.array([rows[found[:, j] > 0].max() - centre for j in cols])
    grid, at = np.linspace(0, len(cols) - 1, points), np.arange(len(cols))
    sides = [np.interp(grid, at, np.maximum(above, below)), np.interp(grid, at, np.minimum(above, below))]
    return (np.concatenate(sides) / len(cols)).astype(np.float32)


# name -> (feature set, fitter)
MODELS: dict[str, tuple[str, Fitter]] = {
    "profile C=1 (the recipe)": ("profile", _profile(1.0)),
    "profile C=0.3": ("profile", _profile(0.3)),
    "profile C=0.1": ("profile", _profile(0.1)),
    "profile, 40 points": ("profile40", _profile(1.0)),
    "profile + half-widths": ("profile2", _profile(1.0)),
    "pixels, PCA 50 + SVM": ("pixels", _svm(pca=True)),
    "gradient histograms + SVM": ("hog", _svm(pca=False)),
    "pixels and their flips, PCA 50 + SVM": ("images", _flipped_svm),
}
WEIGHTS = (0.3, 0.4, 0.5)
PAIR_WEIGHTS = (0.2, 0.3, 0.35, 0.4)


def features(saved: SavedFold) -> dict[str, np.ndarray]:
    images = saved.images
    gray = images[:, 0].astype(np.float32) / 255
    return {"profile": saved.profiles(),
            "profile40": np.stack([axis_profile(x, 40) for x in images]),
            "profile2": np.c_[saved.profiles(), np.stack([half_widths(x) for x in images])],
            "pixels": gray.reshape(len(gray), -1),
            "images": gray,
            "hog": np.stack([gradient_histograms(x) for x in gray])}


def seed_scores(run: Path, data_dir: str) -> dict[tuple[tuple[str, float], str], tuple[float, float]]:
    tally = Tally()
    feats = None
    for saved in saved_folds(run, data_dir, cnn_and_shape_only=False):  # the CNN alone, by design
        fold, y = saved.fold, saved.labels
        feats = features(saved) if feats is None else feats
        for part, idx in (("val", fold.val), ("test", fold.test)):
            cnn = saved.cnn_probs(idx)
            tally.add((("CNN alone", 0.0), part), cnn, y[idx])
            other = {name: fit(feats[key][fold.train], y[fold.train], feats[key][idx])
                     for name, (key, fit) in MODELS.items()}
            for name, probs in other.items():
                for w in WEIGHTS:
                    tally.add(((name, w), part), fuse(cnn, probs, w), y[idx])
            profile, pixels = other["profile C=1 (the recipe)"], other["pixels, PCA 50 + SVM"]
            for w in PAIR_WEIGHTS:
                tally.add((("profile + pixels", w), part), fuse_all(cnn, [(profile, w), (pixels, w)]), y[idx])
                both = fuse_all(cnn, [(other["profile + half-widths"], w), (pixels, w)])
                tally.add((("profile and half-widths + pixels", w), part), both, y[idx])
            trio = fuse_all(cnn, [(profile, 0.2), (pixels, 0.2), (other["gradient histograms + SVM"], 0.2)])
            tally.add((("profile + pixels + gradient histograms", 0.2), part), trio, y[idx])
    return tally.scores()


def main() -> None:
    args = bench_arguments(__doc__).parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: seed_scores(args.bench_dir / f"seed{s}", args.data_dir) for s in seeds}
    settings = {("CNN alone", 0.0): "CNN alone"}
    settings |= {(name, w): f"{name}, W {w}" for name in MODELS for w in WEIGHTS}
    settings |= {("profile + pixels", w): f"profile + pixels, W {w} each" for w in PAIR_WEIGHTS}
    settings |= {("profile and half-widths + pixels", w): f"profile and half-widths + pixels, W {w} each"
                 for w in PAIR_WEIGHTS}
    settings[("profile + pixels + gradient histograms", 0.2)] = "profile + pixels + gradient histograms, W 0.2 each"
    print_scores(scores, settings, "CNN fused with another model at weight W")


if __name__ == "__main__":
    main()
