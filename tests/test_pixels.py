"""The pixel model: stored as tensors and applied in numpy, it must give scikit-learn's own
probabilities (the model the benchmarks measured), for two classes and for more."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from spermhead.models.pixels import COMPONENTS, SVM_C, PixelModel, pixel_features


def noisy_classes(k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    patterns = rng.normal(0, 1, (k, 1, 16, 16))
    images = np.clip(128 + 40 * patterns[y] + rng.normal(0, 30, (n, 1, 16, 16)), 0, 255).astype(np.uint8)
    return images, y


@pytest.mark.parametrize("k", [2, 3, 4])
def test_pixel_model_matches_scikit_learn(k: int) -> None:
    images, y = noisy_classes(k, 60 * k, seed=k)
    train, test = slice(0, 40 * k), slice(40 * k, None)
    model = PixelModel.fit(images[train], y[train], k + 1)  # one class the training side lacks
    reference = make_pipeline(StandardScaler(), PCA(COMPONENTS, random_state=0),
                              CalibratedClassifierCV(SVC(C=SVM_C), ensemble=False))
    reference.fit(pixel_features(images[train]), y[train])
    ours = model.predict_proba(images[test])
    np.testing.assert_allclose(ours[:, :k], reference.predict_proba(pixel_features(images[test])), atol=1e-5)
    assert np.all(ours[:, k] == 0) and np.allclose(ours.sum(1), 1, atol=1e-5)
    # and the tensors it is stored as give it back (to rounding: their memory layout may differ)
    again = PixelModel.from_tensors(model.tensors("pixels0"), "pixels0")
    np.testing.assert_allclose(again.predict_proba(images[test]), ours, atol=1e-7)


def test_a_bundle_that_claims_pixel_fusion_without_its_models_is_refused(tmp_path) -> None:
    import json

    from spermhead.errors import SpermheadError
    from spermhead.serving.bundle import load_bundle
    from spermhead.serving.predictor import untrained_bundle

    path = untrained_bundle(tmp_path / "b", "spermnet", classes=("a", "b"), image_size=32, width=8)
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**meta, "pixel_fusion": 0.3}))
    with pytest.raises(SpermheadError, match="fuses a PixelModel but the file holds none"):
        load_bundle(path)


def test_rare_classes_leave_the_pixel_model_to_the_cnn(recwarn) -> None:
    from spermhead.errors import ConfigError

    images, _ = noisy_classes(3, 60)
    y = np.zeros(60, dtype=int)
    y[1:4] = 1  # three images of class 1: the calibration CV gets three folds
    y[0] = 2  # one image of class 2: too few to calibrate on
    model = PixelModel.fit(images, y, 3)
    probs = model.predict_proba(images)
    assert np.all(probs[:, 2] == 0) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert not [w for w in recwarn if "least populated" in str(w.message)]  # the CV fits the rarest class
    y2 = np.zeros_like(y)
    y2[0] = 1
    with pytest.raises(ConfigError, match="two classes with at least two"):
        PixelModel.fit(images, y2, 2)


def test_a_bundle_whose_pixel_models_lost_a_tensor_is_refused_by_name(tmp_path) -> None:
    import json

    from safetensors.torch import load_file

    from spermhead.errors import SpermheadError
    from spermhead.models.weights import write_safetensors
    from spermhead.serving.bundle import load_bundle
    from spermhead.serving.predictor import untrained_bundle

    path = untrained_bundle(tmp_path / "b", "spermnet", classes=("a", "b"), image_size=32, width=8)
    images, y = noisy_classes(2, 60)
    stored = PixelModel.fit(images, y, 2).tensors("pixels0")
    state = {**load_file(str(path / "model.safetensors")), **stored}
    del state[sorted(stored)[0]]  # one of the pixel model's tensors gone
    write_safetensors(state, path / "model.safetensors")
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**meta, "pixel_fusion": 0.3}))
    with pytest.raises(SpermheadError, match=r"model\.safetensors: the bundle's PixelModels are damaged"):
        load_bundle(path)
