"""Evaluation package: synthetic numbers only, fast."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, roc_auc_score

from spermhead.data.samples import Sample, SampleTable
from spermhead.evaluation.metrics import calibration, compute_metrics, cv_metrics, write_metrics_json
from spermhead.evaluation.plots import write_plots
from spermhead.evaluation.predictions import Predictions, concat
from spermhead.evaluation.report import write_report
from spermhead.evaluation.selection import COLUMNS, selection_table, write_selection

CLASSES = ["normal", "tapered", "pyriform", "small", "amorphous"]
SCIAN_COUNTS = {"normal": 100, "tapered": 228, "pyriform": 76, "small": 72, "amorphous": 656}


def make_table(counts: dict[str, int], *, sources: tuple[str, ...] = ("scian",), seed: int = 0) -> SampleTable:
    """Samples in label-shuffled order, ids unrelated to position."""
    rng = np.random.default_rng(seed)
    labels = [c for c, n in counts.items() for _ in range(n)]
    rng.shuffle(labels)
    samples = [
        Sample(id=f"img-{rng.integers(1e9):09d}-{i}", path=Path(f"{i}.png"), label=lab,
               source=sources[i % len(sources)])
        for i, lab in enumerate(labels)
    ]
    return SampleTable("synthetic", samples, list(counts))


def model_probs(table: SampleTable, *, strength: float = 1.5, seed: int = 1) -> dict[str, np.ndarray]:
    """A decent fake model: probabilities per sample id, leaning to the true class."""
    rng = np.random.default_rng(seed)
    k = len(table.classes)
    out = {}
    for s, y in zip(table.samples, table.label_indices, strict=True):
        logits = rng.normal(size=k)
        logits[y] += strength
        p = np.exp(logits)
        out[s.id] = p / p.sum()
    return out


def folds_for(table: SampleTable, k: int = 5) -> dict[str, int]:
    return {s.id: i % k for i, s in enumerate(table.samples)}


def oof_predictions(table: SampleTable, probs: dict[str, np.ndarray], folds: dict[str, int],
                    order: list[str]) -> Predictions:
    return Predictions.from_model_output(
        order, np.stack([probs[i] for i in order]), table, folds=[folds[i] for i in order]
    )


@pytest.fixture(scope="module")
def scian() -> SampleTable:
    return make_table(SCIAN_COUNTS, sources=("scian", "hushem"))


@pytest.fixture(scope="module")
def oof(scian: SampleTable) -> Predictions:
    ids = [s.id for s in scian.samples]
    return oof_predictions(scian, model_probs(scian), folds_for(scian), ids)


# ---------------------------------------------------------------- the seed's bug, made impossible


def test_row_order_does_not_change_any_metric(scian: SampleTable) -> None:
    probs, folds = model_probs(scian), folds_for(scian)
    ids = [s.id for s in scian.samples]
    shuffled = list(np.random.default_rng(7).permutation(ids))
    a = cv_metrics(oof_predictions(scian, probs, folds, ids))
    b = cv_metrics(oof_predictions(scian, probs, folds, shuffled))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # The seed's comparison (shuffled predictions against labels in table order) scores far lower.
    y_table = np.array(scian.label_indices)
    y_pred_shuffled = np.stack([probs[i] for i in shuffled]).argmax(1)
    assert np.mean(y_table == y_pred_shuffled) < a["accuracy"] - 0.15


def test_from_model_output_looks_labels_up_by_id(scian: SampleTable) -> None:
    s = scian.samples[3]
    p = np.zeros((1, len(CLASSES)))
    p[0, CLASSES.index(s.label)] = 1.0
    pred = Predictions.from_model_output([s.id], p, scian, folds=2)
    assert pred.true == [s.label] and pred.pred == [s.label] and pred.sources == [s.source]
    assert pred.folds.tolist() == [2]
    with pytest.raises(ValueError, match="not in dataset"):
        Predictions.from_model_output(["nope"], p, scian)


def test_construction_validates() -> None:
    ok = {"ids": ["a", "b"], "sources": ["s", "s"], "folds": [0, 1], "true": ["x", "y"],
          "probabilities": [[0.7, 0.3], [0.2, 0.8]], "classes": ["x", "y"]}
    assert Predictions(**ok).pred == ["x", "y"]
    for change, msg in [
        ({"ids": ["a", "a"]}, "duplicate"),
        ({"probabilities": [[0.7, 0.3, 0.0], [0.2, 0.8, 0.0]]}, "shape"),
        ({"probabilities": [[0.7, 0.7], [0.2, 0.8]]}, "sum to 1"),
        ({"true": ["x", "z"]}, "not among the classes"),
        ({"folds": [0]}, "folds"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Predictions(**{**ok, **change})


# ---------------------------------------------------------------- metrics


def test_metrics_agree_with_sklearn(oof: Predictions) -> None:
    m = compute_metrics(oof)
    y, yhat = oof.true_indices, oof.pred_indices
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, yhat))
    assert m["macro_f1"] == pytest.approx(f1_score(y, yhat, average="macro"))
    assert m["weighted_precision"] == pytest.approx(precision_score(y, yhat, average="weighted"))
    assert m["weighted_recall"] == pytest.approx(m["accuracy"])
    assert m["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(y, oof.probabilities, multi_class="ovr"))
    assert m["n"] == len(oof) and m["classes"] == CLASSES
    assert sum(map(sum, m["confusion_matrix"])) == len(oof)
    assert [m["per_class"][c]["support"] for c in CLASSES] == list(SCIAN_COUNTS.values())
    assert set(m["per_source"]) == {"hushem", "scian"}
    assert m["per_source"]["scian"]["n"] + m["per_source"]["hushem"]["n"] == len(oof)


def test_perfect_predictions() -> None:
    table = make_table({"normal": 20, "tapered": 15, "amorphous": 40})
    onehot = np.eye(3)[table.label_indices] * 0.9 + 0.1 / 3
    m = compute_metrics(Predictions.from_model_output([s.id for s in table.samples], onehot, table))
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr_macro", "pr_auc_macro"):
        assert m[key] == pytest.approx(1.0), key
    assert "per_source" not in m


def test_random_predictions_are_at_chance() -> None:
    k, n = 4, 4000
    table = make_table({c: n // k for c in CLASSES[:k]}, seed=3)
    probs = np.random.default_rng(4).dirichlet(np.ones(k), size=n)
    m = compute_metrics(Predictions.from_model_output([s.id for s in table.samples], probs, table))
    assert m["accuracy"] == pytest.approx(1 / k, abs=0.04)
    assert m["balanced_accuracy"] == pytest.approx(1 / k, abs=0.04)
    assert m["roc_auc_ovr_macro"] == pytest.approx(0.5, abs=0.04)
    assert m["pr_auc_macro"] == pytest.approx(1 / k, abs=0.04)


def test_constant_majority_on_scian_imbalance(scian: SampleTable) -> None:
    probs = np.tile([0.05, 0.05, 0.05, 0.05, 0.8], (len(scian), 1))
    m = compute_metrics(Predictions.from_model_output([s.id for s in scian.samples], probs, scian))
    assert m["accuracy"] == pytest.approx(656 / 1132) and round(m["accuracy"], 2) == 0.58
    assert m["balanced_accuracy"] == pytest.approx(0.2)
    assert m["roc_auc_ovr_macro"] == pytest.approx(0.5)


def test_absent_class_is_left_out_of_auc_and_noted() -> None:
    table = make_table({"normal": 30, "tapered": 30, "pyriform": 30}, seed=5)
    k = 4  # the model also knows "amorphous", which this data lacks
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(table), k))
    logits[np.arange(len(table)), table.label_indices] += 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = Predictions.from_model_output([s.id for s in table.samples], probs, table,
                                         classes=["normal", "tapered", "pyriform", "amorphous"])
    m = compute_metrics(pred)
    assert m["per_class"]["amorphous"]["roc_auc"] is None
    assert m["per_class"]["amorphous"]["recall"] is None
    aucs = [m["per_class"][c]["roc_auc"] for c in ("normal", "tapered", "pyriform")]
    assert m["roc_auc_ovr_macro"] == pytest.approx(np.mean(aucs))
    assert any("amorphous" in note for note in m["notes"])
    json.dumps(m, allow_nan=False)
    # answered "amorphous" at times, it counts in macro F1 with an F1 of 0, and the notes say so
    answered = pred.pred_indices == 3
    assert answered.any()
    from sklearn.metrics import f1_score

    assert m["macro_f1"] == pytest.approx(f1_score(pred.true_indices, pred.pred_indices, average="macro"))
    assert any(n.startswith("predicted but absent from the true labels: amorphous") for n in m["notes"])


def test_cv_metrics_folds_ci_and_determinism(oof: Predictions, tmp_path: Path) -> None:
    a, b = cv_metrics(oof), cv_metrics(oof)
    assert a == b
    assert [f["fold"] for f in a["folds"]] == [0, 1, 2, 3, 4]
    assert sum(f["n"] for f in a["folds"]) == len(oof)
    lo, hi = a["accuracy_ci95"]
    assert lo < a["accuracy"] < hi
    lo, hi = a["balanced_accuracy_ci95"]
    assert lo < a["balanced_accuracy"] < hi
    accs = [f["accuracy"] for f in a["folds"]]
    assert a["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert a["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    for key in ("balanced_accuracy_mean", "balanced_accuracy_std", "macro_f1_mean", "macro_f1_std"):
        assert isinstance(a[key], float)
    path = write_metrics_json(a, tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == a


def test_cv_metrics_without_folds(scian: SampleTable) -> None:
    pred = Predictions.from_model_output([s.id for s in scian.samples][:200],
                                         np.stack(list(model_probs(scian).values()))[:200], scian)
    m = cv_metrics(pred, n_boot=1000)
    assert m["folds"] == [] and m["accuracy_mean"] is None and m["accuracy_std"] is None
    assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]


# ---------------------------------------------------------------- assembly and files


def test_concat_assembles_folds_and_refuses_duplicates(oof: Predictions) -> None:
    parts = [oof.for_fold(f) for f in oof.fold_numbers]
    joined = concat(parts[::-1])
    assert sorted(joined.ids) == sorted(oof.ids)
    assert compute_metrics(joined) == compute_metrics(oof)
    with pytest.raises(ValueError, match="more than one part"):
        concat([parts[0], parts[1], parts[0]])


def test_csv_roundtrip(oof: Predictions, tmp_path: Path) -> None:
    odd = Predictions(ids=['a,b "c"', "d\ne"], sources=["s", "t"], folds=[-1, 3], true=["x", "y"],
                      probabilities=[[1 / 3, 2 / 3], [0.1, 0.9]], classes=["x", "y"])
    for pred in (oof, odd):
        path = pred.write_csv(tmp_path / "predictions.csv")
        back = Predictions.read_csv(path)
        assert back.ids == pred.ids and back.sources == pred.sources and back.true == pred.true
        assert back.pred == pred.pred and back.classes == pred.classes
        assert back.folds.tolist() == pred.folds.tolist()
        np.testing.assert_allclose(back.probabilities, pred.probabilities, rtol=0, atol=1e-6)
    with open(tmp_path / "predictions.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["id", "source", "fold", "true", "pred", "p_x", "p_y"]
    # as Excel saves "CSV UTF-8": a byte-order mark before the header
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "predictions.csv").read_bytes())
    assert Predictions.read_csv(excel).ids == odd.ids


# ---------------------------------------------------------------- plots and report


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    classes = ["normal", "<b>x</b>", "amorphous"]
    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label=classes[i % 3], source="a")
                              for i in range(60)], classes)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=60)
    pred = Predictions.from_model_output([s.id for s in table.samples], probs, table,
                                         folds=[i % 2 for i in range(60)])
    history = [{"fold": f, "epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1),
                "train_acc": 0.5 + e / 10, "val_acc": 0.4 + e / 10} for f in range(2) for e in range(4)]
    plots = write_plots(pred, history, tmp_path / "plots")
    assert set(plots) == {"training_curves", "confusion_counts", "confusion_normalized", "roc", "pr", "reliability"}
    assert all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in plots.values())
    config = {"dataset": "<script>alert(1)</script>", "model": {"name": "spermnet"},
              "protocol": {"kind": "cv", "folds": 2}}
    path = write_report(tmp_path, config, cv_metrics(pred, n_boot=1000), plots, {"note": "a < b"})
    text = path.read_text()
    assert path.name == "report.html"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == len(plots)
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "a &lt; b" in text
    assert "average recall" in text and "Expected calibration error" in text
    assert "fused answers" not in text  # the network alone


def test_report_says_whose_answers_a_fused_run_scores_and_both_points(tmp_path: Path) -> None:
    """A fused run's figures are not its architecture's alone: the report says so under its
    name, and gives both operating points and the validation parts beside the headline."""
    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label="ab"[i % 2], source="a") for i in range(40)],
                        ["a", "b"])
    probs = np.random.default_rng(1).dirichlet(np.ones(2), size=40)
    pred = Predictions.from_model_output([s.id for s in table.samples], probs, table, folds=[i % 2 for i in range(40)])
    metrics = dict(cv_metrics(pred, n_boot=200))
    metrics["operating_point"] = "balanced"
    metrics["operating_points"] = {"accuracy": {"accuracy": 0.61, "balanced_accuracy": 0.62},
                                   "balanced": {"accuracy": 0.63, "balanced_accuracy": 0.64}}
    metrics["validation"] = {"n": 17, "accuracy": 0.71, "balanced_accuracy": 0.72,
                             "balanced_point": {"accuracy": 0.73, "balanced_accuracy": 0.74}}
    config = {"dataset": "hushem", "model": {"name": "timm:resnet18"}, "protocol": {"kind": "cv", "folds": 2},
              "train": {"shape_fusion": 0.3, "pixel_fusion": 0.3}}
    text = write_report(tmp_path, config, metrics, {}).read_text()
    assert "fused answers: <b>the network 0.4 + head-profile model 0.3 + pixel model 0.3</b>" in text
    points = text[text.index("Operating points and validation"):]
    for figure in ("0.610", "0.640", "0.710", "0.740"):
        assert figure in points
    assert "balanced point (this report)" in points and "validation (17 predictions" in points


# ---------------------------------------------------------------- calibration


def test_calibration_scores_honest_overconfident_and_underconfident_probabilities() -> None:
    # 2000 images, two classes; each answer's probability is p, and it is right with chance
    # `truth`: calibrated when the two agree
    rng = np.random.default_rng(0)
    table = SampleTable("t", [Sample(id=f"s{i:04d}", path=Path("p"), label=("a", "b")[i % 2], source="x")
                              for i in range(2000)], ["a", "b"])
    y = np.array(table.label_indices)
    p = rng.uniform(0.5, 1.0, size=2000)

    def answered(truth: np.ndarray) -> Predictions:
        right = rng.random(2000) < truth
        answer = np.where(right, y, 1 - y)
        probs = np.zeros((2000, 2))
        probs[np.arange(2000), answer] = p
        probs[np.arange(2000), 1 - answer] = 1 - p
        return Predictions.from_model_output([s.id for s in table.samples], probs, table)

    honest, overconfident, underconfident = answered(p), answered(p - 0.2), answered(np.minimum(p + 0.3, 1.0))
    assert calibration(honest)["ece"] < 0.03
    assert calibration(overconfident)["ece"] == pytest.approx(0.2, abs=0.03)
    under = calibration(underconfident)
    assert under["ece"] > 0.15 and all(b["accuracy"] >= b["confidence"] for b in under["bins"][2:])
    assert sum(b["count"] for b in under["bins"]) == 2000 and len(under["bins"]) == 5  # p in (0.5, 1]
    # Brier and log loss against their definitions
    q = honest.probabilities
    onehot = np.eye(2)[y]
    assert calibration(honest)["brier_score"] == pytest.approx(np.mean(np.sum((q - onehot) ** 2, 1)))
    assert calibration(honest)["log_loss"] == pytest.approx(-np.mean(np.log(q[np.arange(2000), y])))
    metrics = compute_metrics(honest)
    assert metrics["ece"] == calibration(honest)["ece"] and metrics["calibration_bins"] == calibration(honest)["bins"]


# ---------------------------------------------------------------- model selection


def test_selection_files(oof: Predictions, tmp_path: Path) -> None:
    rows = [
        {"model": "model 1", "variant": "gray", "metrics": cv_metrics(oof, n_boot=1000),
         "time_per_epoch_s": 2.5, "parameters": 123456},
        {"model": "alexnet", "variant": "rgb, L2", "accuracy": 0.55, "balanced_accuracy": 0.9},
        {"model": "effnet", "variant": "rgb", "accuracy": 0.58, "balanced_accuracy": 0.2},
    ]
    table = selection_table(rows)
    assert [r["best"] for r in table] == [False, True, False]
    assert table[0]["accuracy_sd"] is not None
    paths = write_selection(rows, tmp_path)
    assert {p.name for p in paths.values()} == {"selection.md", "selection.csv", "selection.html"}
    with open(paths["csv"], newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == COLUMNS and [r["best"] for r in got] == ["False", "True", "False"]
    md = paths["md"].read_text()
    for header in ("model", "variant", "accuracy", "balanced accuracy", "weighted precision",
                   "weighted recall", "macro F1", "time per epoch (s)", "parameters"):
        assert f"| {header} |" in md
    assert "±" in md and "★" in md
    assert 'class="best"' in paths["html"].read_text()


def test_selection_chooses_on_validation_not_on_the_test_folds(tmp_path: Path) -> None:
    rows = [  # the test-fold leader is not the validation leader: validation decides
        {"model": "lucky on test", "accuracy": 0.90, "balanced_accuracy": 0.90,
         "metrics": {"validation": {"n": 40, "accuracy": 0.70, "balanced_accuracy": 0.70}}},
        {"model": "steady", "accuracy": 0.85, "balanced_accuracy": 0.85,
         "metrics": {"validation": {"n": 40, "accuracy": 0.80, "balanced_accuracy": 0.80}}},
    ]
    table = selection_table(rows)
    assert [r["best"] for r in table] == [False, True]
    assert table[1]["val_balanced_accuracy"] == 0.80
    md = write_selection(rows, tmp_path)["md"].read_text()
    assert "| val. balanced accuracy |" in md and "test folds took no part" in md
    # a row without validation scores: the test figures choose, and the note says what that costs
    table = selection_table([rows[0], {"model": "no val", "accuracy": 0.5, "balanced_accuracy": 0.5}])
    assert [r["best"] for r in table] == [True, False]
    md = write_selection([rows[0], {"model": "no val", "accuracy": 0.5, "balanced_accuracy": 0.5}],
                         tmp_path / "b")["md"].read_text()
    assert "flatters the chosen row" in md


def test_selection_at_the_balanced_point_chooses_on_its_balanced_validation_scores(tmp_path: Path) -> None:
    """Runs scored at the balanced point report their test figures there; their validation
    column and the ★ must be at the same point, and a run's own warning stays with the table."""
    def row(model: str, at_accuracy: float, at_balanced: float, notes: list[str]) -> dict:
        return {"model": model, "accuracy": 0.5, "balanced_accuracy": 0.5,
                "metrics": {"operating_point": "balanced", "notes": notes, "caveats": notes,
                            "validation": {"n": 40, "accuracy": 0.8, "balanced_accuracy": at_accuracy,
                                           "balanced_point": {"accuracy": 0.6, "balanced_accuracy": at_balanced}}}}

    rows = [row("better at the accuracy point", 0.60, 0.20, []),
            row("better at the balanced point", 0.30, 0.80,
                ["the --weights file (w.safetensors) saw 40 of these 40 images (or near-duplicates of them), so "
                 "its test folds are not unseen: these figures flatter the model"])]
    table = selection_table(rows)
    assert [r["best"] for r in table] == [False, True]
    assert [r["val_balanced_accuracy"] for r in table] == [0.20, 0.80] and table[0]["val_n"] == 40
    note = " ".join(write_selection(rows, tmp_path)["md"].read_text().split())
    assert "Every figure, validation and test, is at the balanced operating point." in note
    assert "a fair estimate, but for what the runs say below." in note
    assert "From the runs: better at the balanced point: the --weights file (w.safetensors) saw 40" in note
    # a run whose folds lack the balanced point's validation scores has none to be chosen on there
    old = row("old folds", 0.9, 0.9, [])
    del old["metrics"]["validation"]["balanced_point"]
    table = selection_table([old, rows[1]])
    assert table[0]["val_balanced_accuracy"] is None and table[0]["val_n"] == 40


def test_selection_names_its_setting_the_validation_n_and_a_tie_with_the_winner(tmp_path: Path) -> None:
    level = {"accuracy": 0.9, "balanced_accuracy": 0.9}
    rows = [{"model": name, **level, "metrics": {"validation": {"n": 12, "accuracy": 0.5, "balanced_accuracy": 0.5}}}
            for name in ("first", "second")]
    rows.append({"model": "worse", **level,
                 "metrics": {"validation": {"n": 12, "accuracy": 0.4, "balanced_accuracy": 0.4}}})
    table = selection_table(rows)
    assert [r["best"] for r in table] == [True, False, False]
    assert [r["tied_with_best"] for r in table] == [False, True, False] and table[0]["val_n"] == 12
    paths = write_selection(rows, tmp_path, about="hushem, 2-fold cross-validation, seed 0")
    md = paths["md"].read_text()
    assert md.startswith("# Model selection\n\nhushem, 2-fold cross-validation, seed 0\n")
    assert "0.500 (n 12)" in md and "level with second on both criteria" in " ".join(md.split())
    assert "hushem, 2-fold cross-validation, seed 0" in paths["html"].read_text()
    # no tie, no such note
    assert "level with" not in write_selection(rows[::2], tmp_path / "b")["md"].read_text()



def test_a_class_neither_labelled_nor_answered_has_no_precision_or_f1(tmp_path: Path) -> None:
    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label="ab"[i % 2], source="a") for i in range(20)],
                        ["a", "b", "c"])
    probs = np.zeros((20, 3))
    probs[np.arange(20), [i % 2 for i in range(20)]] = 1.0  # every answer right, no "c" anywhere
    m = compute_metrics(Predictions.from_model_output([s.id for s in table.samples], probs, table))
    assert m["macro_f1"] == 1.0 and m["per_class"]["a"]["f1"] == 1.0
    assert m["per_class"]["c"]["precision"] is None and m["per_class"]["c"]["f1"] is None
    text = write_report(tmp_path, {"dataset": "t"}, m, {}).read_text()
    row = text[text.index("<td>c</td>"):].split("</tr>")[0]
    assert "0.000" not in row and "n/a" in row  # not a zero beside a macro F1 of 1


def test_a_report_naming_a_file_that_is_not_utf8_is_written_whole(tmp_path: Path) -> None:
    import os

    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label="ab"[i % 2], source="a") for i in range(20)],
                        ["a", "b"])
    probs = np.random.default_rng(1).dirichlet(np.ones(2), size=20)
    m = compute_metrics(Predictions.from_model_output([s.id for s in table.samples], probs, table))
    latin1 = os.fsdecode(b"/data/caf\xe9")  # how Python names a Latin-1 folder on a UTF-8 system
    text = write_report(tmp_path, {"dataset": latin1}, m, {}, {"note": latin1}).read_text(encoding="utf-8")
    assert "/data/caf\\xe9" in text and text.rstrip().endswith("</html>")  # as predict's CSV rows write it


def test_a_single_splits_report_shows_no_fold_spread(tmp_path: Path) -> None:
    """A random or folders split scores one test part (fold 0): no sd across one fold, no
    per-fold table, and no word of out-of-fold predictions."""
    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label="ab"[i % 2], source="a") for i in range(40)],
                        ["a", "b"])
    probs = np.random.default_rng(2).dirichlet(np.ones(2), size=40)
    pred = Predictions.from_model_output([s.id for s in table.samples], probs, table, folds=[0] * 40)
    config = {"dataset": "t", "protocol": {"kind": "random"}}
    text = write_report(tmp_path, config, cv_metrics(pred, n_boot=100), {}).read_text()
    assert "<th>the test part</th>" in text
    for absent in ("out-of-fold", "sd across", "Per fold"):
        assert absent not in text, absent
    folded = Predictions.from_model_output([s.id for s in table.samples], probs, table, folds=[i % 2 for i in range(40)])
    text = write_report(tmp_path / "cv", config, cv_metrics(folded, n_boot=100), {}).read_text()
    assert all(word in text for word in ("pooled out-of-fold", "sd across 2 folds", "Per fold"))


def test_intervals_keep_their_width_where_every_image_is_right(tmp_path: Path) -> None:
    """A bootstrap of 20 right answers gives 1-1; Wilson's interval for 20 of 20 is 0.84-1, and
    balanced accuracy's, from its classes' exact beta bounds, keeps a width too."""
    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label="ab"[i % 2], source="a") for i in range(20)],
                        ["a", "b"])
    probs = np.zeros((20, 2))
    probs[np.arange(20), [i % 2 for i in range(20)]] = 1.0
    m = cv_metrics(Predictions.from_model_output([s.id for s in table.samples], probs, table), n_boot=2000)
    assert m["accuracy"] == 1.0 and m["accuracy_ci95"] == pytest.approx([0.839, 1.0], abs=1e-3)
    lo, hi = m["balanced_accuracy_ci95"]
    assert hi == 1.0 and 0.70 < lo < 0.85  # 10 of 10 per class: Clopper-Pearson's own bound is 0.69
    assert m["intervals"]["balanced_accuracy"] == "mean of the classes' exact beta bounds"
    text = write_report(tmp_path, {"dataset": "t"}, m, {}).read_text()
    assert "exact beta bounds" in text and "resamples these predictions" not in text
    # a run from before `intervals` was recorded bootstrapped its predictions, and its report says so
    old = {k: v for k, v in m.items() if k != "intervals"}
    assert "resamples these predictions" in write_report(tmp_path / "old", {"dataset": "t"}, old, {}).read_text()
    # 19 of 20: Wilson's upper bound is below 1, where a bootstrap's would not be
    probs[0] = probs[0][::-1]
    m = cv_metrics(Predictions.from_model_output([s.id for s in table.samples], probs, table), n_boot=2000)
    assert m["accuracy_ci95"] == pytest.approx([0.764, 0.991], abs=1e-3)


def test_average_recall_interval_keeps_a_small_class_it_could_lose(tmp_path: Path) -> None:
    """97 right images of one class and 3 wrong of another: average recall 0.5. A bootstrap of the
    images lost the small class in some resamples, and gave 0.5-1; each class's own posterior keeps
    it, and the interval reaches only as high as 3 wrong answers of 3 allow."""
    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label="a" if i < 97 else "b", source="a")
                              for i in range(100)], ["a", "b"])
    probs = np.zeros((100, 2))
    probs[:, 0] = 1.0
    m = cv_metrics(Predictions.from_model_output([s.id for s in table.samples], probs, table))
    lo, hi = m["balanced_accuracy_ci95"]
    assert m["balanced_accuracy"] == 0.5 and lo <= 0.5 and 0.6 < hi < 0.9  # the bootstrap gave 1


@pytest.mark.parametrize("sizes, recalls", [([30, 6, 4], [0.9, 0.8, 0.95]), ([20, 3, 2, 2], [0.95, 0.99, 0.99, 0.99])])
def test_average_recall_interval_covers_the_truth_for_small_classes(sizes, recalls) -> None:
    """Classes of a few images: the bootstrap's 95% interval covered the true average recall 78%
    of the time in the first setting; Jeffreys' posteriors, tried next, 66% in the second (small,
    mostly right classes pulled below the truth). The exact beta bounds cover both."""
    from spermhead.evaluation.metrics import score_intervals

    rng = np.random.default_rng(0)
    sizes, recalls = np.array(sizes), np.array(recalls)
    k = len(sizes)
    classes = [f"c{c}" for c in range(k)]
    labels = np.repeat(np.arange(k), sizes)
    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label=classes[c], source="a")
                              for i, c in enumerate(labels)], classes)
    truth, covered = recalls.mean(), 0
    for _ in range(200):
        right = rng.random(sizes.sum()) < np.repeat(recalls, sizes)
        probs = np.full((sizes.sum(), k), 0.0)
        probs[np.arange(sizes.sum()), np.where(right, labels, (labels + 1) % k)] = 1.0
        _, (lo, hi), _ = score_intervals(Predictions.from_model_output([s.id for s in table.samples], probs, table),
                                         n_draws=1000)
        covered += lo <= truth <= hi
    assert covered / 200 >= 0.93


def test_plots_of_one_class_draw_without_warnings(tmp_path: Path) -> None:
    import warnings

    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label="a", source="x") for i in range(10)],
                        ["a", "b"])
    probs = np.random.default_rng(3).dirichlet(np.ones(2), size=10)
    pred = Predictions.from_model_output([s.id for s in table.samples], probs, table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found" among them
        plots = write_plots(pred, [], tmp_path / "plots")
    assert plots["pr"].is_file() and plots["roc"].is_file()


def test_score_intervals_are_at_the_level_asked_for() -> None:
    from scipy.stats import binomtest

    from spermhead.evaluation.metrics import score_intervals

    table = SampleTable("t", [Sample(id=f"s{i}", path=Path("p"), label=("a", "b")[i % 2], source="x")
                              for i in range(50)], ["a", "b"])
    right = np.arange(50) < 40  # 40 of 50 right
    labels = np.arange(50) % 2
    probs = np.eye(2)[np.where(right, labels, 1 - labels)]
    pred = Predictions.from_model_output([s.id for s in table.samples], probs, table)
    for level in (0.5, 0.95):
        (lo, hi), (blo, bhi), _ = score_intervals(pred, level=level)
        wilson = binomtest(40, 50).proportion_ci(level, method="wilson")
        assert (lo, hi) == pytest.approx((wilson.low, wilson.high))
    (lo50, hi50), (blo50, bhi50), _ = score_intervals(pred, level=0.5)
    assert hi50 - lo50 < hi - lo and bhi50 - blo50 < bhi - blo
