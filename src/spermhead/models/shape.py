"""The shape model: a logistic regression on the head's profile (preprocess/profile.py), fused
late with the CNN, `(1 - w) * cnn + w * shape` on the probabilities. It is fitted on a fold's
training side only and stored in the bundle as plain tensors, so serving needs no scikit-learn
and no pickle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ShapeModel:
    mean: np.ndarray  # F: training-side feature means (also what missing features become)
    scale: np.ndarray  # F
    coef: np.ndarray  # K x F, on standardised features
    intercept: np.ndarray  # K

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int, c: float = 1.0) -> ShapeModel:
        from sklearn.linear_model import LogisticRegression

        mean = np.nanmean(features, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        scale = np.nanstd(features, axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 1e-8), scale, 1.0)
        z = _standardise(features, mean, scale)
        clf = LogisticRegression(C=c, max_iter=3000).fit(z, labels)
        coef = np.zeros((num_classes, z.shape[1]))
        intercept = np.full(num_classes, -30.0)  # a class the training side lacks is never answered
        if len(clf.classes_) == 2:  # scikit-learn keeps one row for two classes: split it
            rows = np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
            biases = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
        else:
            rows, biases = clf.coef_, clf.intercept_
        coef[clf.classes_] = rows
        intercept[clf.classes_] = biases
        return cls(mean.astype(np.float32), scale.astype(np.float32), coef.astype(np.float32),
                   intercept.astype(np.float32))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = _standardise(features, self.mean, self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(1, keepdims=True)).astype(np.float32)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": torch.from_numpy(np.ascontiguousarray(getattr(self, k)))
                for k in ("mean", "scale", "coef", "intercept")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> ShapeModel:
        return cls(*(tensors[f"{prefix}.{k}"].numpy() for k in ("mean", "scale", "coef", "intercept")))


def _standardise(features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    x = np.where(np.isfinite(features), features, mean)  # a head not found: the training mean
    return (x - mean) / scale


def fuse(cnn: np.ndarray, shape: np.ndarray, weight: float) -> np.ndarray:
    return fuse_all(cnn, [(shape, weight)])


def fuse_all(cnn: np.ndarray, others: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """`(1 - sum w) * cnn + sum w * other`: late fusion with any number of second opinions."""
    out = (1 - sum(w for _, w in others)) * cnn
    for probs, w in others:
        out = out + w * probs
    return out.astype(np.float32)
