"""Temperature scaling: fitted on validation parts, applied last, answers unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from spermhead.models.inference import apply_temperature
from spermhead.training.temperature import BOUNDS, MIN_IMAGES, fit_temperature, pooled_temperature


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_the_fitted_temperature_is_the_one_that_makes_the_probabilities_honest(true_t):
    # the model says softmax(z); the labels follow softmax(z / true_t): its probabilities are too
    # flat (0.5) or too sharp (2.0), and dividing their logs by true_t makes them honest
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(4000, 4))
    truth = softmax(z / true_t)
    labels = np.array([rng.choice(4, p=p) for p in truth])
    assert fit_temperature(softmax(z), labels) == pytest.approx(true_t, rel=0.1)


def test_scaling_keeps_every_answer_and_each_row_a_distribution():
    p = softmax(np.random.default_rng(1).normal(0, 1, size=(500, 5)))
    for t in (0.25, 0.7, 3.0):
        q = apply_temperature(p, t)
        assert (q.argmax(1) == p.argmax(1)).all() and np.allclose(q.sum(1), 1, atol=1e-5)
        assert (q.max(1) > p.max(1)).all() if t < 1 else (q.max(1) < p.max(1)).all()
    assert apply_temperature(p, 1.0) is p


def test_small_or_flawless_validation_parts_cannot_push_it_far():
    p = softmax(np.random.default_rng(2).normal(0, 1, size=(60, 3)))
    right = p.argmax(1)
    assert fit_temperature(p[: MIN_IMAGES - 1], right[: MIN_IMAGES - 1]) == 1.0  # too few to fit
    # every answer right: the likelihood would sharpen without end; the bound stops it
    assert fit_temperature(p, right) == pytest.approx(BOUNDS[0], rel=1e-3)
    assert pooled_temperature([0.5, 2.0]) == pytest.approx(1.0) and pooled_temperature([]) == 1.0


def test_evaluate_moves_to_the_other_operating_point_under_the_temperature():
    from pathlib import Path

    from spermhead.data.samples import Sample, SampleTable
    from spermhead.evaluation.external import Assessment
    from spermhead.evaluation.predictions import Predictions
    from spermhead.models.inference import apply_class_bias

    rng = np.random.default_rng(3)
    classes = ["normal", "tapered", "amorphous"]
    table = SampleTable("t", [Sample(f"s{i}", Path("p"), classes[i % 3], "x") for i in range(50)], classes)
    raw = softmax(rng.normal(0, 1, size=(50, 3)))
    points = {"accuracy": [0.0, 0.0, 0.0], "balanced": [0.8, 0.3, -0.6]}
    for t in (0.4, 2.5):
        served = apply_temperature(apply_class_bias(raw, points["accuracy"]), t)
        assessment = Assessment(Predictions.from_model_output([s.id for s in table.samples], served, table),
                                None, operating_points=points, operating_point="accuracy", temperature=t)
        expected = apply_temperature(apply_class_bias(raw, points["balanced"]), t)
        np.testing.assert_allclose(assessment.at_point("balanced").probabilities, expected, atol=1e-5)


def test_a_calibrated_model_is_left_alone():
    # labels drawn from the model's own probabilities: nothing to fix, so T stays 1
    rng = np.random.default_rng(4)
    p = softmax(rng.normal(0, 2, size=(200, 4)))
    labels = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(p, labels) == 1.0


def test_configs_written_before_calibration_keep_their_probabilities(tmp_path):
    import yaml

    from spermhead.config import RunConfig, load_config, save_config

    save_config(RunConfig(), tmp_path / "new.yaml")
    assert load_config(tmp_path / "new.yaml").train.calibrate is True
    old = yaml.safe_load((tmp_path / "new.yaml").read_text())
    del old["train"]["calibrate"]  # a run directory from an earlier version: --resume goes on as it ran
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "old.yaml").train.calibrate is False
