"""A sample's class shares: counted with Wilson intervals, and adjusted for the model's measured
errors with a posterior that covers the truth."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.data.synthetic import render_head
from spermhead.evaluation.composition import (
    MIN_HEADS,
    check_intervals,
    composition,
    held_out_samples,
    sample_compositions,
    widen,
    wilson,
)
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


def test_wilson_intervals_are_scipys():
    from scipy.stats import binomtest

    counts = np.arange(0, 31)
    low, high = wilson(counts, 30)
    ci = [binomtest(int(m), 30).proportion_ci(0.95, method="wilson") for m in counts]
    assert low == pytest.approx([c.low for c in ci], abs=1e-12) and high == pytest.approx([c.high for c in ci], abs=1e-12)


def test_widening_adds_the_extra_error_in_quadrature_and_stays_within_zero_and_one():
    assert widen(0.3, 0.2, 0.45, 0.0) == pytest.approx((0.2, 0.45))
    low, high = widen(0.3, 0.2, 0.45, 0.05)
    assert 0.3 - low == pytest.approx(np.hypot(0.1, 1.96 * 0.05), abs=1e-3)
    assert high - 0.3 == pytest.approx(np.hypot(0.15, 1.96 * 0.05), abs=1e-3)
    assert widen(0.02, 0.0, 0.1, 0.2) == pytest.approx((0.0, 0.02 + np.hypot(0.08, 1.96 * 0.2)), abs=1e-3)


def out_of_fold_run(rng: np.random.Generator, *, folds: int = 5, per_class: int = 30,
                    wobble: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CV run's (true, predicted, fold) where every fold's model misreads normal heads as
    amorphous at its own rate, around BIASED's 40%: the other folds' confusion is not quite this
    fold's."""
    true, predicted, fold_of = [], [], []
    rates = BIASED / BIASED.sum(axis=1, keepdims=True)
    for f in range(folds):
        mine = rates.copy()
        slip = float(np.clip(0.4 + rng.normal(0, wobble), 0.05, 0.9))
        mine[0] = [1 - slip, 0, 0, slip]
        for j in range(len(CLASSES)):
            true += [j] * per_class
            predicted += list(rng.choice(len(CLASSES), per_class, p=mine[j]))
            fold_of += [f] * per_class
    return np.array(true), np.array(predicted), np.array(fold_of)


def held_out_coverage(run: tuple[np.ndarray, np.ndarray, np.ndarray], extra_sd, rng: np.random.Generator,
                      how: str) -> float:
    from sklearn.metrics import confusion_matrix

    true, predicted, folds = run
    est, lo, hi = {"counted": ("share", "share_low", "share_high"), "adjusted": ("adjusted", "adjusted_low", "adjusted_high")}[how]
    held = []
    for others, picked, truth in held_out_samples(true, folds, 4, heads=50, per_fold=30, rng=rng):
        cm = confusion_matrix(true[others], predicted[others], labels=range(4))
        rows = composition([CLASSES[i] for i in predicted[picked]], CLASSES,
                           cm.tolist() if how == "adjusted" else None, extra_sd=extra_sd,
                           draws=300, seed=int(rng.integers(1000)))
        held.append([r[lo] - 5e-4 <= t <= r[hi] + 5e-4 for r, t in zip(rows, truth, strict=True)])
    return np.mean(held, axis=0)  # per class


def test_the_share_check_widens_what_a_models_bias_would_otherwise_leave_too_narrow():
    rng = np.random.default_rng(5)
    check = check_intervals(*out_of_fold_run(rng), CLASSES)
    assert check is not None and check["samples"] >= 400 and check["closer"][0] == check["closer"][3] == "adjusted"
    assert check["heads"] == [50, 120]  # one fold's heads, and up to two folds' (half of 240)
    # counting keeps the bias: normal and amorphous need a wide margin, the others little
    sd = check["extra_sd"]["counted"]
    assert min(sd[0], sd[3]) > 0.05 and max(sd[1], sd[2]) < 0.03
    assert check["error"]["counted"][0] > 1.5 * check["error"]["adjusted"][0]
    # on another run of the same kind the widened intervals hold; the bare counted ones do not
    other = out_of_fold_run(np.random.default_rng(6))
    bare = held_out_coverage(other, None, np.random.default_rng(7), "counted")
    widened = held_out_coverage(other, check["extra_sd"], np.random.default_rng(7), "counted")
    assert bare[[0, 3]].max() < 0.8 and widened.min() > 0.88, (bare, widened)
    assert held_out_coverage(other, check["extra_sd"], np.random.default_rng(7), "adjusted").min() > 0.88


def test_the_share_check_widens_as_much_as_the_size_that_needs_most(monkeypatch: pytest.MonkeyPatch):
    import spermhead.evaluation.composition as comp

    run = out_of_fold_run(np.random.default_rng(5))
    both = check_intervals(*run, CLASSES)
    alone = []
    for size in comp.CHECK_SIZES:
        monkeypatch.setattr(comp, "CHECK_SIZES", (size,))
        alone.append(check_intervals(*run, CLASSES))
    assert both["heads"] == [a["heads"][0] for a in alone] and both["samples"] == sum(a["samples"] for a in alone)
    for how in ("counted", "adjusted"):
        assert both["extra_sd"][how] == np.max([a["extra_sd"][how] for a in alone], axis=0).tolist()
    # the two sizes do need different margins here, so taking either alone would narrow some interval
    assert alone[0]["extra_sd"]["counted"] != alone[1]["extra_sd"]["counted"]


def test_a_perfect_models_check_widens_nothing_and_one_split_has_nothing_to_check_with():
    true = np.repeat(np.arange(4), 50)
    folds = np.tile(np.arange(5), 40)
    check = check_intervals(true, true, folds, CLASSES)
    assert check is not None and max(check["error"]["counted"]) == 0
    assert max(check["extra_sd"]["counted"]) == 0 and max(check["extra_sd"]["adjusted"]) == 0
    # a class absent from a sample is held by an interval shown as starting at 0.0%
    assert min(check["held"]["adjusted"]) == 1 and min(check["held"]["counted"]) == 1
    assert check_intervals(true, true, np.zeros(200, int), CLASSES) is None


def test_held_out_samples_draw_each_head_once_from_one_fold():
    true = np.repeat(np.arange(4), 10)
    folds = np.tile(np.arange(2), 20)
    for others, picked, truth in held_out_samples(true, folds, 4, heads=50, per_fold=5, rng=np.random.default_rng(0)):
        assert len(set(picked.tolist())) == len(picked) <= 10  # at most half the fold's 20
        assert len(set(folds[picked].tolist())) == 1 and not others[picked].any()
        assert truth == pytest.approx(np.bincount(true[picked], minlength=4) / len(picked))


def test_predict_writes_each_samples_composition(tmp_path: Path):
    bundle = untrained_bundle(tmp_path / "bundle", classes=CLASSES, image_size=32, width=8)
    meta = json.loads((bundle / "model.json").read_text())
    meta["confusions"] = {"accuracy": BIASED.tolist()}
    check = check_intervals(*out_of_fold_run(np.random.default_rng(5)), CLASSES)
    meta["share_checks"] = {"accuracy": check}
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
    assert [r["closer_in_check"] for r in rows] == check["closer"] * 2
    assert sum(int(r["count"]) for r in rows) == 2 * MIN_HEADS
    # the counted intervals carry the check's margin on top of Wilson's
    assert check["extra_sd"]["counted"][0] > 0.05
    for r in rows:
        plain = composition([r["class"]] * int(r["count"]) + ["x"] * (MIN_HEADS - int(r["count"])), [r["class"], "x"])[0]
        sd = check["extra_sd"]["counted"][CLASSES.index(r["class"])]
        expected = widen(plain["share"], plain["share_low"], plain["share_high"], sd)
        assert (float(r["share_low"]), float(r["share_high"])) == pytest.approx(expected)
    text = " ".join(result.output.split())
    flat = "".join(text.split())  # table titles wrap at the test console's width
    assert "patient1:10heads" in flat and "patient2:10heads" in flat and "adjustedforthemodel'serrors" in flat
    assert "errors on the 400 held-out images" in text
    assert f"★ the closer of the two in this model's check: on {check['samples']} samples of up to 120" in text
    # each class's row stars the estimate its check found closer, in both samples
    lines = [line for line in result.output.splitlines() if line.strip().startswith(("│ normal", "│ amorphous"))]
    assert len(lines) == 4 and all(line.count("★") == 1 for line in lines)
    assert all(line.index("★") > line.index(")", line.index(")") + 1) for line in lines if "normal" in line)
    assert "holds the header only" not in text and "no head found" not in text and "have no class shares" not in text
    assert "no check of its share intervals" not in text
    # a bundle with no check (a single split's): its intervals are not widened, and predict says so
    del meta["share_checks"]
    (bundle / "model.json").write_text(json.dumps(meta))
    bare = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(tmp_path / "images")], terminal_width=300)
    said = " ".join(bare.output.split())
    assert "no check of its share intervals" in said and "★" not in said
    meta["share_checks"] = {"accuracy": check}
    (bundle / "model.json").write_text(json.dumps(meta))
    # a third folder too small to be a sample is named, not silently missing from the list
    (tmp_path / "images" / "patient3").mkdir()
    for i in range(3):
        shutil.copy(tmp_path / "images" / "patient1" / f"h{i}.png", tmp_path / "images" / "patient3")
    third = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(tmp_path / "images")], terminal_width=300)
    assert f"1 folder(s) with fewer than {MIN_HEADS} classified heads have no class shares here, e.g. " \
        f"{tmp_path / 'images' / 'patient3'} (3 heads)" in " ".join(third.output.split())
    shutil.rmtree(tmp_path / "images" / "patient3")
    # a blank frame in a sample is classified, but is no head to count in its shares
    Image.new("RGB", (120, 120), (200, 200, 200)).save(tmp_path / "images" / "patient1" / "blank.png")
    blank = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(tmp_path / "images"), "--summary", str(out),
                                     "--overwrite"], terminal_width=200)
    assert blank.exit_code == 0, blank.output
    with open(out, newline="") as fh:
        assert {int(r["heads"]) for r in csv.DictReader(fh)} == {MIN_HEADS}
    said = " ".join(blank.output.split())
    assert "no head found in 1 image (alignment 'fallback: no head found' in the CSV); each is classified on the " \
        "whole image but left out of the class shares" in said
    assert "21 classified" in said
    # a folder too small to be a sample: the file holds the header alone, and predict says why
    few = CliRunner().invoke(app, ["predict", "--model", str(bundle), *map(str, (tmp_path / "images" / "patient1").glob("h[0-3].png")),
                                   "--summary", str(out), "--overwrite"])
    assert few.exit_code == 0 and len(out.read_text().splitlines()) == 1
    assert f"no folder has {MIN_HEADS} classified heads" in " ".join(few.output.split()), few.output


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
    # with the bundle's share check, its intervals are widened as predict widens them
    check = {"extra_sd": {"counted": [0.1] * 4, "adjusted": [0.0] * 4}, "closer": ["adjusted"] * 4}
    checked = Assessment(pred, None, operating_points={"accuracy": [0.0] * 4}, confusion=BIASED.tolist(),
                         share_check=check).metrics()
    assert checked["share_check"] == check
    assert (checked["composition"][0]["share_low"], checked["composition"][0]["share_high"]) == pytest.approx(
        widen(comp[0]["share"], comp[0]["share_low"], comp[0]["share_high"], 0.1))
    # images with no head found are scored but, as predict does, left out of the sample's shares
    found = [i >= 20 for i in range(200)]  # the first 20 are normal heads
    headless = Assessment(pred, None, operating_points={"accuracy": [0.0] * 4}, confusion=BIASED.tolist(),
                          head_found=found).metrics()
    assert [r["true_share"] for r in headless["composition"]] == pytest.approx([40 / 180, 40 / 180, 40 / 180, 60 / 180])
    assert sum(r["count"] for r in headless["composition"]) == 180 and headless["n"] == 200
    assert any(n.startswith("20 images with no head found are scored") for n in headless["notes"])


def test_predict_refuses_an_output_it_cannot_write_before_classifying(tmp_path: Path):
    bundle = untrained_bundle(tmp_path / "bundle", classes=CLASSES, image_size=32, width=8)
    image = tmp_path / "h.png"
    Image.fromarray(render_head("normal", "hushem", np.random.default_rng(0))[0]).save(image)
    (tmp_path / "taken").mkdir()
    for option in ("--summary", "--csv", "--json"):
        result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(image), option, str(tmp_path / "taken")])
        assert result.exit_code == 2 and f"{option} " in result.output and "is a folder" in result.output, result.output
        assert "classified" not in result.output  # refused before any image was scored
    # a file already there (a run's own predictions.csv, say) is kept unless --overwrite is given
    for option in ("--summary", "--csv", "--json"):
        kept = tmp_path / f"kept{option[2:]}.csv"
        kept.write_text("precious\n")
        result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(image), option, str(kept)])
        assert result.exit_code == 2 and "exists; pass --overwrite" in result.output, result.output
        assert kept.read_text() == "precious\n"
        replaced = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(image), option, str(kept),
                                            "--overwrite"])
        assert replaced.exit_code == 0 and kept.read_text() != "precious\n", replaced.output


def test_what_the_held_out_images_leave_unknown_stays_in_the_interval_however_many_heads():
    """Eight held-out images barely fix the misreading rates, so a sample's true share is barely
    fixed either, however many heads it has. Drawing a new confusion at every Gibbs step let the
    shares follow none of them: 2000 heads gave 0.48-0.83, where the rates the eight images allow
    put it anywhere from about 0.1 to 1."""
    from spermhead.evaluation.composition import adjusted_draws

    post = adjusted_draws(np.array([1200, 800]), np.array([[3, 1], [1, 3]]), seed=0)
    low, high = np.quantile(post[:, 0], [0.025, 0.975])
    assert high - low > 0.7 and low < 0.3
    # a well-measured confusion gives a narrow interval around the share it implies
    post = adjusted_draws(np.array([1200, 800]), np.array([[900, 100], [100, 900]]), seed=0)
    low, high = np.quantile(post[:, 0], [0.025, 0.975])
    assert low < 0.625 < high and high - low < 0.1
