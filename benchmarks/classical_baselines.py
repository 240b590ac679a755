"""Classical baselines on aligned HuSHeM heads, for reference only (nothing is chosen from them).

The HuSHeM bench's own 5-fold CV x 3 seeds (CV seeds 1-3: the same test folds, near-duplicate
heads kept on one side), on the canonical 64 px grey images, each model fitted on a fold's
training and validation parts together (nothing here is tuned): six morphometrics with logistic
regression, aligned pixels (PCA 50) with an RBF SVM, gradient-orientation histograms with an
SVM, and a width/intensity profile along the head's axis with logistic regression.

    .venv/bin/python benchmarks/classical_baselines.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from spermhead.config import PreprocessConfig
from spermhead.data.readers import load_dataset
from spermhead.preprocess.align import load_canonical
from spermhead.preprocess.profile import axis_profile
from spermhead.training.bench import bench_config
from spermhead.training.protocols import make_folds


def gradient_histograms(img: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    gx, gy = cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1)
    mag, ang = np.hypot(gx, gy), np.degrees(np.arctan2(gy, gx)) % 180
    b = np.minimum((ang / 180 * bins).astype(int), bins - 1)
    n = img.shape[0] // cell
    out = np.array([[np.bincount(b[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].ravel(),
                                 mag[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].ravel(), bins)
                     for j in range(n)] for i in range(n)])
    return (out / (np.linalg.norm(out, axis=2, keepdims=True) + 1e-6)).ravel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    args = ap.parse_args()
    table = load_dataset("hushem", args.data_dir)
    seeds = (1, 2, 3)
    folds = {}
    for seed in seeds:  # the bench's folds, from its own config
        cfg = bench_config("hushem", Path("unused"), seed, args.data_dir)
        folds[seed] = make_folds(table, cfg.protocol, seed, cfg.train.val_fraction)
    cfg = PreprocessConfig(image_size=64)
    canon = [load_canonical(s.path, cfg) for s in table.samples]
    images = np.stack([c.image[0].astype(np.float32) / 255 for c in canon])
    y = np.asarray(table.label_indices)
    morph = np.array([[m.area, m.length, m.width, m.elongation, m.perimeter, m.perimeter ** 2 / m.area]
                      for m in (c.morphometrics for c in canon)])
    features = {
        "morphometrics + logistic regression": (morph, LogisticRegression(C=1, max_iter=2000)),
        "aligned pixels, PCA 50 + SVM": (images.reshape(len(images), -1), make_pipeline(PCA(50, random_state=0), SVC(C=10))),
        "gradient histograms + SVM": (np.array([gradient_histograms(x) for x in images]), SVC(C=10)),
        "axis profile + logistic regression": (np.array([axis_profile(np.round(x * 255).astype(np.uint8))
                                                         for x in images]),
                                               LogisticRegression(C=1, max_iter=3000)),
    }
    for name, (x, clf) in features.items():
        model = make_pipeline(StandardScaler(), clf)
        accs = []
        for seed in seeds:
            predicted = np.full(len(y), -1)
            for fold in folds[seed]:
                fit_rows = np.concatenate([fold.train, fold.val])
                predicted[fold.test] = clone(model).fit(x[fit_rows], y[fit_rows]).predict(x[fold.test])
            assert (predicted >= 0).all()  # every image tested once
            accs.append(float((predicted == y).mean()))
        print(f"{name:40s} {np.mean(accs):.3f} ± {np.std(accs, ddof=1):.3f}")


if __name__ == "__main__":
    main()
