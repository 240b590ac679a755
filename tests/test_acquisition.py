"""Acquisition descriptors and the "unlike the training images" check, from the numbers to
`predict`, the API rows and `evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.config import PreprocessConfig
from spermhead.data.synthetic import render_head
from spermhead.evaluation.external import Assessment
from spermhead.evaluation.predictions import NO_FOLD, Predictions
from spermhead.preprocess.acquisition import MIN_IMAGES, batch_warning, describe, fit_ranges, unlike_training
from spermhead.preprocess.align import canonicalize
from spermhead.serving.predictor import Predictor, untrained_bundle

CLASSES = ("normal", "tapered", "pyriform", "amorphous")
CFG = PreprocessConfig(image_size=32)


def heads(style: str, n: int, first_seed: int = 0) -> list[np.ndarray]:
    return [render_head(CLASSES[i % 4], style, np.random.default_rng(first_seed + i))[0] for i in range(n)]


def test_descriptors_follow_how_the_image_was_taken():
    rgb = heads("hushem", 1)[0]
    base = describe(canonicalize(rgb, CFG))
    assert base["head_fraction"] == pytest.approx(base["head_length_px"] / min(rgb.shape[:2]), rel=1e-3)
    # lower magnification: the head is half as many pixels long, framed the same
    half = describe(canonicalize(cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), CFG))
    assert half["head_length_px"] == pytest.approx(base["head_length_px"] / 2, rel=0.1)
    assert half["head_fraction"] == pytest.approx(base["head_fraction"], rel=0.1)
    # out of focus: softer edges; a brighter lamp: a brighter background
    blurred = describe(canonicalize(cv2.GaussianBlur(rgb, (0, 0), 3), CFG))
    assert blurred["edge_sharpness"] < 0.7 * base["edge_sharpness"]
    brighter = describe(canonicalize(np.clip(rgb.astype(int) + 40, 0, 255).astype(np.uint8), CFG))
    assert brighter["background"] > base["background"] + 20
    # no head found: the head's two are left out, the rest still describe the image
    flat = describe(canonicalize(np.full((64, 64, 3), 200, np.uint8), CFG))
    assert set(flat) == {"background", "contrast", "edge_sharpness"}


def test_ranges_and_the_reasons_given():
    training = [{"head_length_px": 30.0 + i, "background": 190.0} for i in range(MIN_IMAGES)]
    training += [{"contrast": 100.0}]  # one image is too few to range over
    ranges = fit_ranges(training)
    assert ranges == {"head_length_px": [30.0, 30.0 + MIN_IMAGES - 1], "background": [190.0, 190.0]}
    assert unlike_training({"head_length_px": 28.0, "background": 205.0, "contrast": 5.0}, ranges) == []
    reasons = unlike_training({"head_length_px": 25.0, "background": 150.0}, ranges)
    assert reasons == ["head 25 px long (training 30-49)", "background grey 150 (training 190-190)"]
    assert unlike_training(None, ranges) == [] and unlike_training({"background": 1.0}, {}) == []


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bundle whose input ranges come from 40 rendered HuSHeM-style heads, as
    train_run fits them on its training images."""
    path = untrained_bundle(tmp_path_factory.mktemp("bundle"), classes=CLASSES, image_size=32, width=8)
    meta = json.loads((path / "model.json").read_text())
    meta["input_ranges"] = fit_ranges([describe(canonicalize(rgb, CFG)) for rgb in heads("hushem", 40)])
    (path / "model.json").write_text(json.dumps(meta))
    return path


def test_predict_names_the_images_unlike_the_training_images(bundle: Path, tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, rgb in enumerate(heads("hushem", 6, first_seed=100)):  # new heads from the same microscope
        Image.fromarray(rgb).save(folder / f"like{i}.png")
    for i, rgb in enumerate(heads("scian", 4, first_seed=100)):  # another lab's
        Image.fromarray(rgb).save(folder / f"other{i}.png")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder), "--csv", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).stem: r for r in csv.DictReader(fh)}
    assert all(rows[f"like{i}"]["unlike_training"] == "" for i in range(6))
    assert all("px long (training" in rows[f"other{i}"]["unlike_training"] for i in range(4))
    text = " ".join(result.output.split())
    assert "4 of 10 images are unlike the images this model was trained on (more than 10% beyond" in text
    assert "head length (px): 4 outside, median" in text


def test_rows_carry_the_reasons_and_old_bundles_check_nothing(bundle: Path, tmp_path: Path):
    other = tmp_path / "other.png"
    Image.fromarray(heads("scian", 1)[0]).save(other)
    with Predictor(bundle) as predictor:
        row = next(predictor.predict_files([other]))
    assert row["unlike_training"] and set(row["acquisition"]) >= {"head_length_px", "background"}
    old = untrained_bundle(tmp_path / "old", classes=CLASSES, image_size=32, width=8)
    with Predictor(old) as predictor:
        row = next(predictor.predict_files([other]))
    assert row["unlike_training"] == [] and batch_warning([row], predictor.meta.input_ranges) is None


def test_evaluate_scores_the_unlike_images_apart():
    rng = np.random.default_rng(0)
    true = list(rng.choice(CLASSES, 40))
    probs = np.full((40, 4), 0.1)
    for i, label in enumerate(true):  # right on the first 30, wrong on the last 10
        probs[i, (CLASSES.index(label) + (i >= 30)) % 4] = 0.7
    pred = Predictions([f"s{i}" for i in range(40)], ["x"] * 40, [NO_FOLD] * 40, true, probs, list(CLASSES))
    unlike = [i >= 28 for i in range(40)]
    split = Assessment(pred, None, unlike=unlike, operating_points={"accuracy": [0.0] * 4}).metrics()
    assert split["unlike_training"] == {"unlike": 12, "like": 28, "accuracy_unlike": pytest.approx(2 / 12),
                                        "accuracy_like": 1.0}
    assert any("12 of 40 images are unlike" in n for n in split["notes"])
    assert Assessment(pred, None, operating_points={"accuracy": [0.0] * 4}).metrics()["unlike_training"] is None
