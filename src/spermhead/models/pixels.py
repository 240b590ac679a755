"""The pixel model: an RBF support-vector machine on the aligned crop's grey levels (standardised,
then 50 principal components), with Platt-scaled probabilities. A second opinion fused late with
the CNN beside the shape model (models/shape.py); on HuSHeM the two together gained on fresh CV
seeds what neither did alone (benchmarks/RESULTS.md, session 9).

scikit-learn fits it on a fold's training side. Its parameters are then stored as plain tensors
and applied here in numpy, so serving needs no scikit-learn and no pickle; a test holds the two
to the same probabilities."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from spermhead.errors import ConfigError

COMPONENTS = 50
SVM_C = 10.0
CALIBRATION_FOLDS = 5


@dataclass
class PixelModel:
    mean: np.ndarray  # F: the scaler's feature means
    scale: np.ndarray  # F
    pca_mean: np.ndarray  # F
    components: np.ndarray  # P x F
    support: np.ndarray  # V x P support vectors, grouped by class
    n_support: np.ndarray  # M support vectors per fitted class (M = classes in the training side)
    dual_coef: np.ndarray  # (M - 1) x V
    intercept: np.ndarray  # M (M - 1) / 2 one-vs-one intercepts (one for two classes)
    gamma: np.ndarray  # 1: the RBF kernel's width
    calib_a: np.ndarray  # M (one for two classes): Platt sigmoid per class, p = 1 / (1 + exp(a f + b))
    calib_b: np.ndarray
    classes: np.ndarray  # M: the fitted classes' indices among the K the model answers
    num_classes: np.ndarray  # 1: K

    @classmethod
    def fit(cls, images: np.ndarray, labels: np.ndarray, num_classes: int) -> PixelModel:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        # Platt scaling is fitted on decision values from an internal stratified CV, which needs two
        # images of a class: a class with one is left to the CNN (the model gives it 0), and the CV
        # has as many folds (up to 5) as the rarest class left has images.
        labels = np.asarray(labels)
        counts = np.bincount(labels, minlength=num_classes)
        keep = counts[labels] >= 2
        if len(np.unique(labels[keep])) < 2:
            raise ConfigError("--pixel-fusion needs two classes with at least two training images each")
        x, labels = pixel_features(images[keep]), labels[keep]
        scaler = StandardScaler().fit(x)
        pca = PCA(min(COMPONENTS, len(x) - 1, x.shape[1]), random_state=0).fit(scaler.transform(x))
        z = pca.transform(scaler.transform(x))
        folds = int(min(CALIBRATION_FOLDS, counts[counts >= 2].min()))
        calibrated = CalibratedClassifierCV(SVC(C=SVM_C), cv=folds, ensemble=False).fit(z, labels)
        inner = calibrated.calibrated_classifiers_[0]
        svc = inner.estimator
        f32 = np.float32
        return cls(
            scaler.mean_.astype(f32), scaler.scale_.astype(f32), pca.mean_.astype(f32), pca.components_.astype(f32),
            svc.support_vectors_.astype(f32), svc.n_support_.astype(np.int64), svc.dual_coef_.astype(f32),
            svc.intercept_.astype(f32), np.array([svc._gamma], dtype=f32),
            np.array([c.a_ for c in inner.calibrators], dtype=f32), np.array([c.b_ for c in inner.calibrators], dtype=f32),
            np.asarray(svc.classes_, dtype=np.int64), np.array([num_classes], dtype=np.int64))

    def decision(self, images: np.ndarray) -> np.ndarray:
        """The SVM's decision values as scikit-learn gives them: N x M one-vs-rest scores (votes
        plus scaled confidences) for three or more classes, N for two."""
        z = ((pixel_features(images) - self.mean) / self.scale - self.pca_mean) @ self.components.T
        sq = (z * z).sum(1)[:, None] + (self.support * self.support).sum(1)[None, :] - 2 * z @ self.support.T
        kernel = np.exp(-float(self.gamma[0]) * np.maximum(sq, 0.0))  # N x V
        m = len(self.classes)
        if m == 2:
            return kernel @ self.dual_coef[0] + self.intercept[0]
        starts = np.concatenate([[0], np.cumsum(self.n_support)])
        votes = np.zeros((len(z), m))
        confidence = np.zeros((len(z), m))
        pair = 0
        for i in range(m):  # libsvm's one-vs-one layout
            for j in range(i + 1, m):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                d = (kernel[:, si] @ self.dual_coef[j - 1, si] + kernel[:, sj] @ self.dual_coef[i, sj]
                     + self.intercept[pair])
                votes[:, i] += d >= 0
                votes[:, j] += d < 0
                confidence[:, i] += d
                confidence[:, j] -= d
                pair += 1
        return votes + confidence / (3 * (np.abs(confidence) + 1))

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """N x K probabilities; a class the training side lacked gets 0."""
        f = self.decision(images)
        platt = lambda v, c: 1.0 / (1.0 + np.exp(self.calib_a[c] * v + self.calib_b[c]))  # noqa: E731
        m = len(self.classes)
        if m == 2:
            fitted = np.stack([1.0 - platt(f, 0), platt(f, 0)], axis=1)
        else:
            fitted = np.stack([platt(f[:, c], c) for c in range(m)], axis=1)
            total = fitted.sum(1, keepdims=True)
            fitted = np.divide(fitted, total, out=np.full_like(fitted, 1.0 / m), where=total != 0)
        out = np.zeros((len(f), int(self.num_classes[0])), dtype=np.float32)
        out[:, self.classes] = fitted
        return out

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{f.name}": torch.from_numpy(np.ascontiguousarray(getattr(self, f.name)))
                for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> PixelModel:
        return cls(*(tensors[f"{prefix}.{f.name}"].numpy() for f in fields(cls)))


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 N x C x S x S canonical images -> N x (C S S) grey levels in [0, 1]."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / 255
