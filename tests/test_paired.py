"""Two models compared image by image (`spermhead compare`, the selection table's "vs ★")."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_evaluation import SCIAN_COUNTS, make_table
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.data.samples import SampleTable
from spermhead.errors import DataError
from spermhead.evaluation.paired import compare_predictions
from spermhead.evaluation.predictions import Predictions
from spermhead.evaluation.selection import selection_table, write_selection


@pytest.fixture(scope="module")
def table() -> SampleTable:
    return make_table(SCIAN_COUNTS)


def answers(table: SampleTable, right: np.ndarray, order: np.ndarray | None = None) -> Predictions:
    """Predictions that get exactly the images in `right` (a mask in table order) right, the
    others wrong (the next class), in row order `order`."""
    y = np.asarray(table.label_indices)
    k = len(table.classes)
    guess = np.where(right, y, (y + 1) % k)
    probs = np.full((len(y), k), 0.1 / (k - 1))
    probs[np.arange(len(y)), guess] = 0.9
    order = np.arange(len(y)) if order is None else order
    ids = [table.samples[i].id for i in order]
    return Predictions.from_model_output(ids, probs[order], table, folds=0)


def exact_mcnemar(only_a: int, only_b: int) -> float:
    n = only_a + only_b
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n)


def test_a_better_model_is_told_apart_image_by_image_whatever_the_row_order(table):
    n = len(table)
    rng = np.random.default_rng(0)
    right_a = rng.random(n) < 0.7
    right_b = right_a.copy()
    wrong_a = np.flatnonzero(~right_a)
    right_b[wrong_a[:60]] = True  # B gets 60 of A's misses right...
    right_b[np.flatnonzero(right_a)[:10]] = False  # ...and misses 10 A got
    shuffled = rng.permutation(n)
    c = compare_predictions(answers(table, right_a), answers(table, right_b, order=shuffled))
    assert c["n"] == n and c["images"]["only_a"] == 10 and c["images"]["only_b"] == 60
    assert c["images"]["both_right"] + c["images"]["both_wrong"] == n - 70
    assert c["accuracy"]["difference"] == pytest.approx(50 / n)
    assert c["accuracy"]["a"] == pytest.approx(right_a.mean()) and c["accuracy"]["b"] == pytest.approx(right_b.mean())
    lo, hi = c["accuracy"]["ci"]
    assert 0 < lo < 50 / n < hi
    assert c["mcnemar_p"] == pytest.approx(exact_mcnemar(10, 60)) and c["mcnemar_p"] < 1e-6
    # the same answers in table order give the same comparison: pairing is by sample id
    again = compare_predictions(answers(table, right_a), answers(table, right_b))
    assert json.dumps(again, sort_keys=True) == json.dumps(c, sort_keys=True)


def test_equally_good_models_with_other_errors_show_no_difference(table):
    rng = np.random.default_rng(1)
    right_a, right_b = np.zeros(len(table), dtype=bool), np.zeros(len(table), dtype=bool)
    right_a[rng.permutation(len(table))[:800]] = True  # the same count right, not the same images
    right_b[rng.permutation(len(table))[:800]] = True
    c = compare_predictions(answers(table, right_a), answers(table, right_b))
    lo, hi = c["accuracy"]["ci"]
    assert c["accuracy"]["difference"] == 0 and lo < 0 < hi and c["mcnemar_p"] == 1.0
    assert c["images"]["only_a"] == c["images"]["only_b"] > 100
    same = compare_predictions(answers(table, right_a), answers(table, right_a))
    assert same["accuracy"]["ci"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0


def test_intervals_and_test_hold_their_level_when_the_models_are_equally_good():
    # 300 pairs of models that are each right with probability 0.75 on 200 images: the 95%
    # interval leaves out zero, and McNemar's p falls under 0.05, about 5% of the time
    small = make_table({"normal": 100, "amorphous": 100})
    rng = np.random.default_rng(4)
    shut_out, rejected = 0, 0
    for trial in range(300):
        a, b = (answers(small, rng.random(200) < 0.75) for _ in range(2))
        c = compare_predictions(a, b, n_boot=500, seed=trial)
        shut_out += not c["accuracy"]["ci"][0] <= 0 <= c["accuracy"]["ci"][1]
        rejected += c["mcnemar_p"] < 0.05
    assert 0.01 <= shut_out / 300 <= 0.10 and rejected / 300 <= 0.08


def test_runs_on_other_images_or_truths_are_refused(table):
    right = np.ones(len(table), dtype=bool)
    a = answers(table, right)
    fewer = a.subset(np.arange(len(a) - 3))
    with pytest.raises(DataError, match=r"scored different images: 3 only in A \(e\.g\. img-\S+, img-\S+, img-\S+\), "
                                        r"0 only in B$"):  # no empty example list
        compare_predictions(a, fewer)
    true = list(a.true)
    j = next(j for j, t in enumerate(true) if t != true[0])
    true[0], true[j] = true[j], true[0]  # two images swap their labels
    with pytest.raises(DataError, match="give 2 images different true labels"):
        compare_predictions(a, Predictions(a.ids, a.sources, a.folds, true, a.probabilities, a.classes))
    turned = Predictions(a.ids, a.sources, a.folds, a.true, a.probabilities[:, ::-1], a.classes[::-1])
    with pytest.raises(DataError, match="have the same classes in another order"):
        compare_predictions(a, turned)


def test_compare_command_reads_two_runs(table, tmp_path):
    rng = np.random.default_rng(2)
    right_a = rng.random(len(table)) < 0.6
    right_b = right_a | (rng.random(len(table)) < 0.5)
    for name, right in (("x", right_a), ("y", right_b)):
        answers(table, right).write_csv(tmp_path / name / "seed1" / "predictions.csv")
    out = tmp_path / "new" / "c.json"  # its folder is made
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "x" / "seed1"),
                                      str(tmp_path / "y" / "seed1" / "predictions.csv"), "--json", str(out)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "y/seed1 is better: the interval leaves out zero" in said and "only A 0," in said
    saved = json.loads(out.read_text())
    assert saved["names"] == ["x/seed1", "y/seed1"] and saved["images"]["only_a"] == 0
    # an existing --json is kept unless --overwrite; comparing a run with itself is said
    again = CliRunner().invoke(app, ["compare", str(tmp_path / "x" / "seed1"), str(tmp_path / "y" / "seed1"),
                                     "--json", str(out)])
    assert again.exit_code == 2 and "exists; pass --overwrite" in " ".join(again.output.split())
    assert json.loads(out.read_text()) == saved
    itself = CliRunner().invoke(app, ["compare", str(tmp_path / "x" / "seed1"),
                                      str(tmp_path / "x" / "seed1" / "predictions.csv")], terminal_width=200)
    assert itself.exit_code == 0 and "are the same run" in " ".join(itself.output.split())
    (tmp_path / "x" / "seed1" / "other.csv").write_text((tmp_path / "y" / "seed1" / "predictions.csv").read_text())
    two_files = CliRunner().invoke(app, ["compare", str(tmp_path / "x" / "seed1" / "predictions.csv"),
                                         str(tmp_path / "x" / "seed1" / "other.csv")])
    assert two_files.exit_code == 0 and "same run" not in two_files.output  # two files in one folder
    broken = tmp_path / "broken.csv"
    broken.write_text("id,true\n")
    bad = CliRunner().invoke(app, ["compare", str(tmp_path / "x" / "seed1"), str(broken)])
    assert bad.exit_code == 2 and "broken.csv: cannot read predictions" in " ".join(bad.output.split())


def test_selection_table_compares_each_row_with_the_winner_on_the_same_images(table, tmp_path):
    rng = np.random.default_rng(3)
    right = rng.random(len(table)) < 0.7
    worse = right & (rng.random(len(table)) < 0.8)
    rows = [{"model": "winner", "accuracy": right.mean(), "balanced_accuracy": 0.8,
             "predictions": answers(table, right), "val_accuracy": 0.8, "val_balanced_accuracy": 0.8},
            {"model": "runner-up", "accuracy": worse.mean(), "balanced_accuracy": 0.7,
             "predictions": answers(table, worse), "val_accuracy": 0.7, "val_balanced_accuracy": 0.7}]
    first, second = selection_table(rows)
    assert first["best"] and first["accuracy_vs_best"] is None
    assert second["accuracy_vs_best"] == pytest.approx(worse.mean() - right.mean())
    assert second["accuracy_vs_best_ci_high"] < 0 and second["mcnemar_p_vs_best"] < 1e-6
    paths = write_selection(rows, tmp_path)
    md = paths["md"].read_text()
    assert "| accuracy vs ★ (95% CI) |" in md and "McNemar" in md
    with open(paths["csv"], newline="") as fh:
        got = list(csv.DictReader(fh))
    assert float(got[1]["accuracy_vs_best"]) == pytest.approx(second["accuracy_vs_best"])
    # rows without their predictions (a table built from figures alone) leave the columns empty
    plain = selection_table([{k: v for k, v in r.items() if k != "predictions"} for r in rows])
    assert all(r["accuracy_vs_best"] is None for r in plain)
    assert Path(paths["html"]).read_text().count("—") >= 2


def test_compare_pairs_repeats_by_name_and_adds_an_interval_over_them(table, tmp_path):
    rng = np.random.default_rng(5)
    gains = {}
    for seed in (1, 2, 10):  # natural order: seed10 after seed2
        right_a = rng.random(len(table)) < 0.7
        right_b = right_a | (rng.random(len(table)) < 0.1 * seed / 10 + 0.05)
        answers(table, right_a).write_csv(tmp_path / "a" / f"seed{seed}" / "predictions.csv")
        answers(table, right_b).write_csv(tmp_path / "b" / f"seed{seed}" / "predictions.csv")
        gains[f"seed{seed}"] = right_b.mean() - right_a.mean()
    answers(table, right_a).write_csv(tmp_path / "b" / "seed7" / "predictions.csv")  # no partner in a/
    out = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    c = json.loads(out.read_text())
    assert list(c["repeats"]) == ["seed1", "seed2", "seed10"] and c["n_repeats"] == 3
    d = np.array(list(gains.values()))
    assert [r["accuracy"]["difference"] for r in c["repeats"].values()] == pytest.approx(list(d))
    m = c["accuracy"]
    assert m["difference"] == pytest.approx(d.mean()) and m["b_ahead"] == 3 and m["a_ahead"] == 0
    assert m["sd"] == pytest.approx(d.std(ddof=1)) and m["ci"][0] < d.mean() < m["ci"][1]
    # at least as wide as a t interval over the three repeats: B's gain moved from 1.8 to 4.5
    # points with retraining, and three repeats cannot pin its mean down more closely than that
    from scipy.stats import t

    assert (m["ci"][1] - m["ci"][0]) / 2 >= t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    said = " ".join(result.output.split())
    assert "over 3 repeats" in said and "left out, on one side only: seed7" in said
    # one run against a folder of repeats means nothing
    mixed = CliRunner().invoke(app, ["compare", str(tmp_path / "a" / "seed1"), str(tmp_path / "b")])
    assert mixed.exit_code == 2 and "repeats with repeats" in " ".join(mixed.output.split())
    # a `select` folder's runs are different models, not repeats of one
    write_selection([{"model": "m", "accuracy": 0.5, "balanced_accuracy": 0.5}], tmp_path / "b")
    chosen = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert chosen.exit_code == 2 and "is a `spermhead select` folder" in " ".join(chosen.output.split())
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(app, ["compare", str(tmp_path / "empty"), str(tmp_path / "b")])
    assert empty.exit_code == 2 and "empty: no predictions.csv in it nor in its subfolders" in \
        " ".join(empty.output.split())


def test_compare_warns_when_the_same_ids_stand_for_other_images_or_points(tmp_path, monkeypatch):
    """Ids name an image by dataset and file name, not by its pixels: synthetic heads laid out
    like HuSHeM, or another copy of the files, pair silently by id, so compare says so."""
    import shutil

    from spermhead.config import save_config
    from spermhead.data.readers import load_dataset
    from spermhead.training.options import build_run_config

    runner = CliRunner()
    assert runner.invoke(app, ["data", "synth", str(tmp_path / "synth"), "--n-per-class", "3"]).exit_code == 0
    shutil.copytree(tmp_path / "synth", tmp_path / "real")
    (tmp_path / "real" / "HuSHeM" / "SYNTHETIC.txt").unlink()  # read as photographs would be
    shutil.copytree(tmp_path / "real", tmp_path / "copy")
    table = load_dataset("hushem", tmp_path / "real")

    def run(name: str, data: str, point: str, record: str = "config") -> Path:
        folder = tmp_path / "runs" / name
        answers(table, np.ones(len(table), bool)).write_csv(folder / "predictions.csv")
        (folder / "metrics.json").write_text(json.dumps({"operating_point": point}))
        if record == "config":  # a training run
            save_config(build_run_config("hushem", str(folder), data_dir=str(tmp_path / data)), folder / "config.yaml")
        else:  # an evaluate folder
            (folder / "assessment.json").write_text(json.dumps({"dataset": "hushem", "data_dir": str(tmp_path / data)}))
        return folder

    def said(a: Path, b: Path) -> str:
        result = runner.invoke(app, ["compare", str(a), str(b)], terminal_width=300)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    real = run("real", "real", "accuracy")
    assert "warning" not in said(real, run("again", "real", "accuracy", record="assessment"))
    out = said(real, run("synth", "synth", "accuracy", record="assessment"))
    assert "warning: synth scored synthetic heads (data synth) and real real images under the same ids" in out
    out = said(real, run("copy", "copy", "accuracy"))
    assert f"warning: real read its images from {(tmp_path / 'real' / 'HuSHeM').resolve()} and copy from" in out
    out = said(real, run("balanced", "real", "balanced"))
    assert "warning: real is scored at the accuracy point and balanced at the balanced point" in out
    assert "warning" not in said(tmp_path / "runs" / "real" / "predictions.csv", tmp_path / "runs" / "again")
    # a named dataset trained without --data-dir before runs recorded the default folder was read
    # from $SPERMHEAD_DATA or ./data where it ran, which this machine cannot know: nothing is guessed
    blind = run("blind", "copy", "accuracy")
    old_style = build_run_config("hushem", str(blind))
    old_style.data_dir = None
    save_config(old_style, blind / "config.yaml")
    monkeypatch.setenv("SPERMHEAD_DATA", str(tmp_path / "copy"))  # this machine's default, not the run's
    assert "warning" not in said(real, blind)
    # two architectures through HuSHeM's fused answers: the fusion dilutes their difference
    other = run("other", "real", "accuracy")
    save_config(build_run_config("hushem", str(other), data_dir=str(tmp_path / "real"), model="seed-cnn"),
                other / "config.yaml")
    out = said(real, other)
    assert "are not the two networks' alone" in out and "between spermnet and seed-cnn" in out
    assert "--shape-fusion 0 --pixel-fusion 0" in out
    # an assessment of images its model trained on is no test: said, whichever side it is
    seen = run("seen", "real", "accuracy", record="assessment")
    (seen / "metrics.json").write_text(json.dumps({"operating_point": "accuracy",
                                                   "training_overlap": {"seen": 12, "unseen": 0, "threshold": 0.98}}))
    for pair in ((real, seen), (seen, real)):
        out = said(*pair)
        assert "warning: seen was scored on 12 of 12 images its model trained on" in out and "flatter it" in out
    for side, source in (("ra", "real"), ("rb", "synth")):  # folders of repeats are checked too
        shutil.copytree(tmp_path / "runs" / source, tmp_path / side / "seed1")
    assert "warning: rb scored synthetic heads" in said(tmp_path / "ra", tmp_path / "rb")
    # every repeat is checked, not only the first: a second repeat of synthetic heads is said too
    for side, source in (("ra", "real"), ("rb", "real")):
        shutil.copytree(tmp_path / "runs" / source, tmp_path / f"{side}2" / "seed1")
    shutil.copytree(tmp_path / "runs" / "real", tmp_path / "ra2" / "seed2")
    shutil.copytree(tmp_path / "runs" / "synth", tmp_path / "rb2" / "seed2")
    assert "warning: rb2 scored synthetic heads" in said(tmp_path / "ra2", tmp_path / "rb2")
    # and each side's repeats against each other: another architecture in one seed folder
    shutil.copytree(tmp_path / "runs" / "real", tmp_path / "rc" / "seed1")
    shutil.copytree(tmp_path / "runs" / "other", tmp_path / "rc" / "seed2")
    out = said(tmp_path / "ra2", tmp_path / "rc")
    assert "warning: rc's repeats are not one setting: seed2 differs from seed1 in its model" in out
    # a repeat with no config.yaml (copied predictions) is not a fused run's opposite: nothing to say
    from spermhead.evaluation.provenance import Provenance, repeat_mismatches

    fused = Provenance(None, None, "accuracy", None, "spermnet", "the network 0.7 + head-profile model 0.3")
    unknown = Provenance(None, None, "accuracy", None, None, "")
    assert repeat_mismatches({"seed1": fused, "seed2": unknown}, "rb") == []


def test_repeats_of_one_seed_and_pairs_of_other_seeds_are_said():
    """A folder of repeats is one setting run with other seeds, each paired with the other side's
    repeat of the same seed: copies of one seed, or seedN folders of other seeds, are named."""
    from spermhead.evaluation.provenance import Provenance, paired_seed_mismatches, repeat_mismatches

    def run(seed: int | None) -> Provenance:
        return Provenance(None, None, "accuracy", None, "spermnet", "", None, seed)

    copies = {"seed1": run(1), "seed2": run(1), "seed3": run(1)}
    said = repeat_mismatches(copies, "A")
    assert said == ["A's repeats seed1 and seed2 were both run with seed 1: one repeat counted twice, so the "
                    "spread between seeds looks smaller than it is",
                    "A's repeats seed1 and seed3 were both run with seed 1: one repeat counted twice, so the "
                    "spread between seeds looks smaller than it is"]
    assert repeat_mismatches({"seed1": run(1), "seed2": run(2), "seed3": run(None)}, "A") == []
    sides = ({"seed1": run(1), "seed2": run(2)}, {"seed1": run(1), "seed2": run(7)})
    assert paired_seed_mismatches(sides, ("A", "B")) == [
        "A's seed2 was run with seed 2 and B's with seed 7: repeats are paired by folder name, and these split "
        "the images otherwise"]


def test_an_assessment_says_which_model_and_fusion_it_scored_with(tmp_path):
    """`compare` of two evaluate folders warns of fused answers as it does for two runs."""
    import json

    from spermhead.evaluation.provenance import provenance, provenance_warnings

    for name, model, shape in (("a", "seed-cnn", 0.0), ("b", "spermnet", 0.4)):
        (tmp_path / f"bundle_{name}").mkdir()
        (tmp_path / f"bundle_{name}" / "model.json").write_text(json.dumps({"run": {"seed": 3}}))
        (tmp_path / name).mkdir()
        (tmp_path / name / "assessment.json").write_text(json.dumps({
            "dataset": str(tmp_path / "nowhere"), "bundle": str(tmp_path / f"bundle_{name}"),
            "model": {"name": model}, "train": {"shape_fusion": shape, "pixel_fusion": 0.0}}))
    pa, pb = provenance(tmp_path / "a"), provenance(tmp_path / "b")
    assert (pa.model, pa.fusion, pa.seed) == ("seed-cnn", "", 3)
    assert (pb.model, pb.fusion) == ("spermnet", "the network 0.6 + head-profile model 0.4")
    said = provenance_warnings(pa, pb, ("a", "b"))
    assert any("the answers compared are not the two networks' alone" in w for w in said)
    # an evaluate scores every image whatever its model's seed: repeats of bundles of other seeds
    # are paired on the same images
    from dataclasses import replace

    from spermhead.evaluation.provenance import paired_seed_mismatches

    assert pa.assessed and paired_seed_mismatches(({"seed1": pa}, {"seed1": replace(pb, seed=11)}), ("a", "b")) == []


def test_repeats_that_differ_on_the_same_few_images_show_no_difference(table):
    """Every CV seed scores the same images: B fixing the same 4 of A's misses (and missing one A
    got) in every repeat is one small difference seen five times, not five pieces of evidence. A
    t interval over the repeats (sd 0) would call B better."""
    from spermhead.evaluation.paired import compare_repeats, repeats_verdict

    rng = np.random.default_rng(9)
    right_a = rng.random(len(table)) < 0.8
    right_b = right_a.copy()
    right_b[np.flatnonzero(~right_a)[:4]] = True
    right_b[np.flatnonzero(right_a)[:1]] = False
    c = compare_repeats({f"seed{r}": (answers(table, right_a), answers(table, right_b)) for r in range(5)})
    m = c["accuracy"]
    assert m["sd"] == 0 and m["b_ahead"] == 5 and m["difference"] == pytest.approx(3 / len(table))
    single = c["repeats"]["seed0"]["accuracy"]["ci"]
    assert m["ci"][0] < 0 < m["ci"][1] and m["ci"] == pytest.approx(single, abs=0.002)  # one repeat's width
    assert "no difference these repeats and images can show" in repeats_verdict(c)
    # the same gain on different images in each repeat is more evidence: B is better
    scattered = {}
    for r in range(5):
        b = right_a.copy()
        b[rng.choice(np.flatnonzero(~right_a), 4, replace=False)] = True
        b[rng.choice(np.flatnonzero(right_a), 1, replace=False)] = False
        scattered[f"seed{r}"] = (answers(table, right_a), answers(table, b))
    spread = compare_repeats(scattered)
    assert all(one["accuracy"]["ci"][0] < 0 for one in spread["repeats"].values())  # none alone shows it
    assert spread["accuracy"]["ci"][0] > 0 and "B is better" in repeats_verdict(spread)


def test_a_named_dataset_and_its_folder_are_paired_by_image_file(tmp_path):
    """`train hushem` names an image "hushem/01_Normal/image_001", the same folder trained as class
    folders "01_Normal/image_001.BMP": compare pairs them by the file each read."""
    import shutil

    from spermhead.data.readers import load_dataset
    from spermhead.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", "hushem", n_per_class=3, seed=0)
    (tmp_path / "data" / "HuSHeM" / "SYNTHETIC.txt").unlink()  # taken for real images: no warning to read
    named, folder = load_dataset("hushem", tmp_path / "data"), load_dataset(str(tmp_path / "data" / "HuSHeM"))
    assert not set(s.id for s in named.samples) & set(s.id for s in folder.samples)
    rng = np.random.default_rng(0)
    right = {s.path.resolve(): bool(rng.random() < 0.5) for s in named.samples}
    for side, table, record in (("a", named, {"dataset": "hushem", "data_dir": str(tmp_path / "data")}),
                                ("b", folder, {"dataset": str(tmp_path / "data" / "HuSHeM"), "data_dir": None})):
        (tmp_path / side).mkdir()
        (tmp_path / side / "assessment.json").write_text(json.dumps(record))
        answers(table, np.array([right[s.path.resolve()] or side == "b" for s in table.samples])).write_csv(
            tmp_path / side / "predictions.csv")
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json",
                                      str(tmp_path / "c.json")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "the 12 images are paired by the file each one read" in result.output
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["n"] == 12 and c["images"]["only_a"] == 0 and c["images"]["only_b"] == 12 - sum(right.values())
    for side in ("a", "b"):  # as folders of repeats too
        shutil.copytree(tmp_path / side, tmp_path / f"r{side}" / "seed1")
    repeats = CliRunner().invoke(app, ["compare", str(tmp_path / "ra"), str(tmp_path / "rb")], terminal_width=200)
    assert repeats.exit_code == 0 and "paired by the file each one read" in repeats.output, repeats.output
    # a folder holding other files is not paired with it
    shutil.copytree(tmp_path / "data" / "HuSHeM", tmp_path / "copy")
    (tmp_path / "b" / "assessment.json").write_text(json.dumps({"dataset": str(tmp_path / "copy"), "data_dir": None}))
    apart = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")], terminal_width=200)
    assert apart.exit_code == 2 and "scored different images" in apart.output


def test_a_few_images_all_one_way_are_not_called_a_difference_that_mcnemar_does_not_back():
    from spermhead.evaluation.paired import verdict

    small = make_table({"normal": 50, "amorphous": 50})
    right_a = np.ones(100, dtype=bool)
    right_b = right_a.copy()
    right_b[:4] = False  # only A gets 4 images right: the bootstrap interval leaves out zero, p = 0.125
    c = compare_predictions(answers(small, right_a), answers(small, right_b))
    assert c["accuracy"]["ci"][1] < 0 and c["mcnemar_p"] == pytest.approx(0.125)
    said = verdict(c)
    assert "B is worse" not in said and "not shown" in said and "only 4 images" in said and "0.12" in said
    right_b[:10] = False  # 10 all one way: p = 0.002, and both agree
    c = compare_predictions(answers(small, right_a), answers(small, right_b))
    assert c["mcnemar_p"] < 0.01 and "B is worse: the interval leaves out zero" in verdict(c)


def test_average_recall_is_judged_by_its_interval_not_by_mcnemar():
    """As many images right (McNemar's p = 1), but B gets the small class right and A none of it:
    a real gain in average recall, which the accuracy test cannot see."""
    from spermhead.evaluation.paired import verdict

    skewed = make_table({"normal": 20, "amorphous": 180})
    y = np.asarray(skewed.label_indices)
    right_a = y == skewed.classes.index("amorphous")
    right_b = ~right_a.copy()
    right_b[np.flatnonzero(right_a)[:160]] = True  # B: every normal and 160 of 180 amorphous
    c = compare_predictions(answers(skewed, right_a), answers(skewed, right_b))
    assert c["mcnemar_p"] == 1.0 and c["balanced_accuracy"]["ci"][0] > 0.3
    # every image wrong against every one right: the interval holds the +1 it saw
    none, every = np.zeros(len(y), dtype=bool), np.ones(len(y), dtype=bool)
    extreme = compare_predictions(answers(skewed, none), answers(skewed, every))
    assert extreme["balanced_accuracy"]["difference"] == 1.0 == extreme["balanced_accuracy"]["ci"][1]
    assert "no difference" in verdict(c, "accuracy")
    assert "B is better: the interval leaves out zero" in verdict(c, "balanced_accuracy")


def test_the_average_recall_difference_interval_covers_on_small_imbalanced_sets():
    """50 images in SCIAN's class mix, B ahead by 3 points of recall in every class: the
    interval for B - A in average recall holds the truth in about 95% of sets or more. A
    bootstrap of the images held it in 85%: small classes seldom hold an image the two answer
    differently, so they added no spread."""
    classes = ["a", "b", "c", "d", "e"]
    prior = np.array([0.58, 0.2, 0.1, 0.07, 0.05])
    both, only_a, only_b = np.array([0.8, 0.6, 0.5, 0.6, 0.4]), 0.035, 0.065
    rng = np.random.default_rng(3)

    def as_predictions(y: np.ndarray, said: np.ndarray) -> Predictions:
        probs = np.full((len(y), 5), 0.025)
        probs[np.arange(len(y)), said] = 0.9
        return Predictions([str(i) for i in range(len(y))], ["s"] * len(y), np.full(len(y), -1),
                           [classes[c] for c in y], probs, classes)

    held, trials = 0, 200
    for t in range(trials):
        y = rng.choice(5, 50, p=prior)
        u = rng.random(50)
        right_a = u < both[y] + only_a
        right_b = (u < both[y]) | ((u >= both[y] + only_a) & (u < both[y] + only_a + only_b))
        wrong = (y + 1 + rng.integers(0, 4, 50)) % 5
        c = compare_predictions(as_predictions(y, np.where(right_a, y, wrong)),
                                as_predictions(y, np.where(right_b, y, wrong)), n_boot=500, seed=t)
        lo, hi = c["balanced_accuracy"]["ci"]
        held += lo <= only_b - only_a <= hi
    assert held / trials >= 0.93, held / trials


def test_runs_with_no_images_are_refused(table):
    a = answers(table, np.ones(len(table), dtype=bool))
    empty = a.subset(np.arange(0))
    with pytest.raises(DataError, match="hold no images to compare"):
        compare_predictions(empty, empty)


def test_compare_prints_run_names_with_brackets_whole(table, tmp_path):
    rng = np.random.default_rng(2)
    right = rng.random(len(table)) < 0.6
    for name in ("[lr=0.1]", "[lr=0.2]"):
        answers(table, right).write_csv(tmp_path / name / "predictions.csv")
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "[lr=0.1]"), str(tmp_path / "[lr=0.2]")],
                                terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "[lr=0.1]" in result.output and "[lr=0.2]" in result.output
    (tmp_path / "[empty]").mkdir()
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "[lr=0.1]"), str(tmp_path / "[empty]")],
                                 terminal_width=250)
    assert missing.exit_code == 2 and "[empty]: no predictions.csv" in missing.output  # errors name it whole too


def test_the_interval_over_repeats_covers_a_difference_that_retraining_moves():
    """Two equally good models, each repeat's difference moved by retraining (sd 8 points) on 216
    images: drawing two repeats with replacement took their spread at half its size, and its 95%
    interval covered zero 50 times in 60 here (0.75 in a statistics review's); the repeats' spread
    added to the images' covers it."""
    from spermhead.evaluation.paired import compare_repeats

    small = make_table({"normal": 54, "tapered": 54, "pyriform": 54, "amorphous": 54})
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(60):
        pairs = {}
        for r in range(2):
            shift = rng.normal(0, 0.08)  # retraining moves B against A, either way
            pairs[f"seed{r}"] = (answers(small, rng.random(216) < 0.85),
                                 answers(small, rng.random(216) < 0.85 + shift))
        lo, hi = compare_repeats(pairs, n_boot=200)["accuracy"]["ci"]
        covered += lo <= 0 <= hi
    assert covered / 60 >= 0.9


def test_the_interval_over_two_repeats_stays_within_what_a_difference_can_be(table):
    """Two repeats that disagree wholly: t on one degree of freedom reached -1270 to +1270 points."""
    from spermhead.evaluation.paired import compare_repeats

    every, none = np.ones(len(table), bool), np.zeros(len(table), bool)
    c = compare_repeats({"seed1": (answers(table, none), answers(table, every)),
                         "seed2": (answers(table, every), answers(table, none))}, n_boot=100)
    assert c["accuracy"]["ci"] == [-1.0, 1.0]
