"""The shape model fused with the CNN: profile features and a logistic regression kept as tensors."""

from __future__ import annotations

import numpy as np

from spermhead.config import PreprocessConfig
from spermhead.data.synthetic import render_head
from spermhead.models.shape import ShapeModel, fuse
from spermhead.preprocess.align import canonicalize
from spermhead.preprocess.profile import FEATURES, axis_profile, profiles


def test_profiles_describe_aligned_heads_and_mark_missing_ones():
    rng = np.random.default_rng(0)
    heads = np.stack([canonicalize(render_head(label, "hushem", rng)[0], PreprocessConfig()).image
                      for label in ("normal", "tapered")])
    feats = profiles(heads)
    assert feats.shape == (2, FEATURES) and np.isfinite(feats).all()
    # a tapered head is narrower for its length than a normal one
    assert feats[1, :24].mean() < feats[0, :24].mean()
    assert np.isnan(axis_profile(np.full((1, 64, 64), 200, np.uint8))).all()  # no head: NaNs


def test_shape_model_learns_scores_and_survives_a_round_trip():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 5)) + 3 * np.eye(3, 5)[y]  # class k is high on feature k
    model = ShapeModel.fit(x, y, num_classes=4)  # class 3 never seen in training
    probs = model.predict_proba(x)
    assert (probs.argmax(1) == y).mean() > 0.95 and probs[:, 3].max() < 1e-6
    x_missing = x[:2].copy()
    x_missing[0] = np.nan  # a head that was not found: the prior-like answer, never NaN
    assert np.isfinite(model.predict_proba(x_missing)).all()
    again = ShapeModel.from_tensors(model.tensors("shape0"), "shape0")
    np.testing.assert_allclose(again.predict_proba(x), probs)
    np.testing.assert_allclose(fuse(probs, np.full_like(probs, 0.25), 0.5).sum(1), 1.0, rtol=1e-5)


def test_two_class_shape_model_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 3)) + y[:, None]
    model = ShapeModel.fit(x, y, num_classes=2)
    z = (x - model.mean) / model.scale
    expected = LogisticRegression(C=1.0, max_iter=3000).fit(z, y).predict_proba(z)
    np.testing.assert_allclose(model.predict_proba(x), expected, atol=1e-5)
