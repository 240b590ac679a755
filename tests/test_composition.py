"""A sample's class shares: counted with Wilson intervals, and adjusted for the model's measured
errors with a posterior that covers the truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.data.synthetic import render_head
from spermhead.evaluation.composition import MIN_HEADS, composition, sample_compositions
from spermhead.serving.predictor import untrained_bundle

CLASSES = ["normal", "tapered", "pyriform", "amorphous"]
# a model that calls 40% of normal heads amorphous, and is right on the rest, measured on 400 images
BIASED = np.array([[60, 0, 0, 40], [0, 95, 5, 0], [0, 5, 95, 0], [0, 0, 5, 95]])


def predicted_from(truth: np.ndarray, confusion: np.ndarray, rng: np.random.Generator) -> list[str]:
    rates = confusion / confusion.sum(axis=1, keepdims=True)
    out: list[str] = []
    for j, n in enumerate(truth):
        out += [CLASSES[k] for k in rng.choice(len(CLASSES), n, p=rates[j])]
    return out


def test_counted_shares_and_their_wilson_intervals():
    rows = composition(["normal"] * 3 + ["amorphous"] * 17, CLASSES)
    assert [r["count"] for r in rows] == [3, 0, 0, 17] and rows[0]["share"] == pytest.approx(0.15)
    assert rows[0]["share_low"] == pytest.approx(0.0524, abs=1e-3) and rows[0]["share_high"] == pytest.approx(0.3604, abs=1e-3)
    assert rows[1]["share_low"] == 0 and rows[1]["share_high"] > 0.1  # none seen is not "none there"
    assert "adjusted" not in rows[0]  # no confusion given: nothing to adjust with


def test_adjusting_undoes_a_known_bias():
    rng = np.random.default_rng(0)
    truth = np.array([60, 40, 40, 60])  # 30% normal
    rows = composition(predicted_from(truth, BIASED, rng), CLASSES, BIASED.tolist())
    normal = rows[0]
    assert normal["share"] < 0.22  # counted: 40% of the normal heads went to amorphous
    assert abs(normal["adjusted"] - 0.30) < 0.05 and normal["adjusted_low"] < 0.30 < normal["adjusted_high"]
    assert sum(r["adjusted"] for r in rows) == pytest.approx(1.0)


def test_the_adjusted_interval_covers_the_truth_about_as_often_as_it_says():
    rng = np.random.default_rng(1)
    rates = BIASED / BIASED.sum(axis=1, keepdims=True)
    held = []
    for i in range(60):
        truth = rng.multinomial(200, rng.dirichlet(np.ones(4)))
        # the sample's heads are misread at the model's true rates, which a run measured on only 25
        # images per class: the interval must carry that measurement's error too
        measured = np.stack([rng.multinomial(25, row) for row in rates])
        rows = composition(predicted_from(truth, BIASED, rng), CLASSES, measured.tolist(), draws=400, seed=i)
        held += [r["adjusted_low"] <= t / 200 <= r["adjusted_high"] for r, t in zip(rows, truth, strict=True)]
    assert np.mean(held) > 0.88, np.mean(held)


def test_a_perfect_model_adjusts_nothing():
    rows = composition(["normal"] * 50 + ["tapered"] * 150, CLASSES, (np.eye(4, dtype=int) * 100).tolist())
    for r in rows:
        assert r["adjusted"] == pytest.approx(r["share"], abs=0.01)


def test_samples_are_folders_and_small_ones_are_left_out():
    rows = [{"ok": True, "path": f"/lab/p1/{i}.png", "class": "normal"} for i in range(MIN_HEADS)]
    rows += [{"ok": True, "path": f"/lab/p2/{i}.png", "class": "tapered"} for i in range(MIN_HEADS - 1)]
    rows += [{"ok": False, "path": "/lab/p1/bad.png", "error": "x"}]
    samples = sample_compositions(rows, CLASSES, None)
    assert [(name, n) for name, n, _ in samples] == [("/lab/p1", MIN_HEADS)]


def test_predict_writes_each_samples_composition(tmp_path: Path):
    bundle = untrained_bundle(tmp_path / "bundle", classes=CLASSES, image_size=32, width=8)
    meta = json.loads((bundle / "model.json").read_text())
    meta["confusions"] = {"accuracy": BIASED.tolist()}
    (bundle / "model.json").write_text(json.dumps(meta))
    for sample in ("patient1", "patient2"):
        (tmp_path / "images" / sample).mkdir(parents=True)
        for i in range(MIN_HEADS):
            rgb, _ = render_head(CLASSES[i % 4], "hushem", np.random.default_rng(i))
            Image.fromarray(rgb).save(tmp_path / "images" / sample / f"h{i}.png")
    out = tmp_path / "summary.csv"
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(tmp_path / "images"), "--summary", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(Path(r["sample"]).name, r["class"]) for r in rows] == [
        (p, c) for p in ("patient1", "patient2") for c in CLASSES]
    assert all(int(r["heads"]) == MIN_HEADS and r["adjusted"] != "" for r in rows)
    assert sum(int(r["count"]) for r in rows) == 2 * MIN_HEADS
    text = " ".join(result.output.split())
    flat = "".join(text.split())  # table titles wrap at the test console's width
    assert "patient1:10heads" in flat and "patient2:10heads" in flat and "adjustedforthemodel'serrors" in flat
    assert "errors on the 400 held-out images" in text


def test_evaluate_puts_the_estimated_shares_beside_the_true_ones():
    from spermhead.evaluation.external import Assessment
    from spermhead.evaluation.predictions import NO_FOLD, Predictions

    rng = np.random.default_rng(3)
    truth = np.array([60, 40, 40, 60])
    predicted = predicted_from(truth, BIASED, rng)
    true = [c for c, n in zip(CLASSES, truth, strict=True) for _ in range(n)]
    probs = np.full((200, 4), 0.1)
    probs[np.arange(200), [CLASSES.index(c) for c in predicted]] = 0.7
    pred = Predictions([f"s{i}" for i in range(200)], ["x"] * 200, [NO_FOLD] * 200, true, probs, CLASSES)
    comp = Assessment(pred, None, operating_points={"accuracy": [0.0] * 4}, confusion=BIASED.tolist()).metrics()["composition"]
    assert [r["true_share"] for r in comp] == pytest.approx([0.3, 0.2, 0.2, 0.3])
    assert comp[0]["share"] == pytest.approx(predicted.count("normal") / 200)
    assert abs(comp[0]["adjusted"] - 0.3) < abs(comp[0]["share"] - 0.3)  # the adjustment moves towards the truth


def test_predict_refuses_an_output_it_cannot_write_before_classifying(tmp_path: Path):
    bundle = untrained_bundle(tmp_path / "bundle", classes=CLASSES, image_size=32, width=8)
    image = tmp_path / "h.png"
    Image.fromarray(render_head("normal", "hushem", np.random.default_rng(0))[0]).save(image)
    (tmp_path / "taken").mkdir()
    for option in ("--summary", "--csv", "--json"):
        result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(image), option, str(tmp_path / "taken")])
        assert result.exit_code == 2 and f"{option} " in result.output and "is a folder" in result.output, result.output
        assert "classified" not in result.output  # refused before any image was scored
