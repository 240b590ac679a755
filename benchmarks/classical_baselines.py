"""Classical baselines on aligned HuSHeM heads, for reference only (nothing is chosen from them).

Stratified 5-fold CV x 3 seeds on the canonical 64 px grey images: six morphometrics with
logistic regression, aligned pixels (PCA 50) with an RBF SVM, gradient-orientation histograms
with an SVM, and a width/intensity profile along the head's axis with logistic regression.

    .venv/bin/python benchmarks/classical_baselines.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from spermhead.config import PreprocessConfig
from spermhead.data.readers import load_dataset
from spermhead.preprocess.align import load_canonical


def gradient_histograms(img: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    gx, gy = cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1)
    mag, ang = np.hypot(gx, gy), np.degrees(np.arctan2(gy, gx)) % 180
    b = np.minimum((ang / 180 * bins).astype(int), bins - 1)
    n = img.shape[0] // cell
    out = np.array([[np.bincount(b[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].ravel(),
                                 mag[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].ravel(), bins)
                     for j in range(n)] for i in range(n)])
    return (out / (np.linalg.norm(out, axis=2, keepdims=True) + 1e-6)).ravel()


def axis_profile(img: np.ndarray, points: int = 24) -> np.ndarray:
    """Head width and darkness along the horizontal (aligned) axis, from an Otsu mask."""
    u8 = cv2.GaussianBlur((img * 255).astype(np.uint8), (3, 3), 0)
    _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask)
    centre = np.array(img.shape[::-1]) / 2
    dist = [np.hypot(*(stats[i, :2] + stats[i, 2:4] / 2 - centre)) if i and stats[i, 4] > 30 else 1e9
            for i in range(n)]
    mask = (lab == int(np.argmin(dist))).astype(np.uint8)
    cols = np.flatnonzero(mask.any(0))
    x0, x1 = cols[0], cols[-1] + 1
    length = x1 - x0
    width = mask.sum(0)[x0:x1].astype(float)
    dark = np.array([img[:, j][mask[:, j] > 0].mean() for j in range(x0, x1)])
    grid = np.linspace(0, length - 1, points)
    contour = max(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    area, hull = cv2.contourArea(contour), cv2.contourArea(cv2.convexHull(contour))
    return np.r_[np.interp(grid, np.arange(length), width) / length, np.interp(grid, np.arange(length), dark),
                 area / max(hull, 1), cv2.arcLength(contour, True) ** 2 / max(area, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    args = ap.parse_args()
    table = load_dataset("hushem", args.data_dir)
    cfg = PreprocessConfig(image_size=64)
    canon = [load_canonical(s.path, cfg) for s in table.samples]
    images = np.stack([c.image[0].astype(np.float32) / 255 for c in canon])
    y = np.asarray(table.label_indices)
    morph = np.array([[m.area, m.length, m.width, m.elongation, m.perimeter, m.perimeter ** 2 / m.area]
                      for m in (c.morphometrics for c in canon)])
    features = {
        "morphometrics + logistic regression": (morph, LogisticRegression(C=1, max_iter=2000)),
        "aligned pixels, PCA 50 + SVM": (images.reshape(len(images), -1), make_pipeline(PCA(50), SVC(C=10))),
        "gradient histograms + SVM": (np.array([gradient_histograms(x) for x in images]), SVC(C=10)),
        "axis profile + logistic regression": (np.array([axis_profile(x) for x in images]),
                                               LogisticRegression(C=1, max_iter=3000)),
    }
    for name, (x, clf) in features.items():
        model = make_pipeline(StandardScaler(), clf)
        accs = [float((cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=s)) == y).mean())
                for s in (1, 2, 3)]
        print(f"{name:40s} {np.mean(accs):.3f} ± {np.std(accs, ddof=1):.3f}")


if __name__ == "__main__":
    main()
