"""Training and assessment, end to end on small synthetic data (no real images needed)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spermhead.config import ProtocolConfig, RunConfig, config_differences, load_config
from spermhead.data.readers import load_dataset
from spermhead.errors import ConfigError, SpermheadError
from spermhead.evaluation.predictions import Predictions
from spermhead.models.inference import apply_class_bias, predict_proba
from spermhead.serving.bundle import load_bundle
from spermhead.training.options import build_run_config
from spermhead.training.protocols import make_folds, parse_split
from spermhead.training.recipes import DATASET_RECIPES
from spermhead.training.run import canonical_images, read_history, train_run

CLASSES = ["normal", "tapered", "pyriform", "amorphous"]


def write_separable(root: Path, n_per_class: int = 20, seed: int = 0, *, heads: bool = False) -> Path:
    """Four classes told apart by grey level alone: perfectly separable. Segmentation finds no
    head in this noise; `heads` draws the same dark head in every image, so it finds one."""
    import cv2

    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n_per_class):
            level = 40 + 55 * k
            img = np.clip(level + rng.normal(0, 6, (24, 24)), 0, 255).astype(np.uint8)
            if heads:
                cv2.ellipse(img, (12, 12), (7, 4), 0, 0, 360, level - 35, -1)
            Image.fromarray(img).save(d / f"{name}_{i:03d}.png")
    return root


def quick_config(dataset: Path, out: Path, cv: int = 4, **options) -> RunConfig:
    # the CPU, so runs are bit-reproducible on any machine (a GPU test below asks for one); one
    # thread, since `make test` runs two test processes at once
    defaults = dict(model="spermnet", image_size=24, align=False, epochs=20, tta=False, threads=1, augment="light",
                    batch_size=16, lr=3e-3, init="scratch", accelerator="cpu")
    if options.get("weights") or options.get("pretrained"):
        defaults.pop("init")  # the file is the start (--init scratch with it is refused)
    return build_run_config(str(dataset), str(out), cv=cv, **{**defaults, **options})


@pytest.fixture(scope="module")
def separable(tmp_path_factory) -> Path:
    return write_separable(tmp_path_factory.mktemp("sep") / "data")


@pytest.fixture(scope="module")
def separable_run(separable, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sep"
    return train_run(quick_config(separable, out), progress=False)


def test_separable_data_scores_near_perfect(separable_run):
    assert separable_run.metrics["accuracy"] >= 0.99
    assert separable_run.metrics["balanced_accuracy"] >= 0.99


def test_out_of_fold_predictions_cover_every_sample_once(separable, separable_run):
    table = load_dataset(str(separable))
    pred = Predictions.read_csv(separable_run.out / "predictions.csv")
    assert sorted(pred.ids) == sorted(s.id for s in table.samples)
    assert len(set(pred.ids)) == len(table)
    assert set(pred.fold_numbers) == {0, 1, 2, 3}


def test_run_directory_holds_everything(separable_run):
    out = separable_run.out
    for name in ("config.yaml", "metrics.json", "predictions.csv", "report.html", "run.json",
                 "samples.csv", "model/model.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 4
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_precision", "weighted_recall",
                "roc_auc_ovr_macro", "pr_auc_macro", "per_class", "accuracy_std", "accuracy_ci95"):
        assert key in metrics, key
    assert "torch" in (out / "config.yaml").read_text()
    assert list((out / "plots").glob("*.png"))


def test_the_bundle_records_the_range_of_its_training_images(separable, separable_run):
    from spermhead.preprocess.acquisition import describe, fit_ranges

    _, canon = canonical_images(load_dataset(str(separable)), load_config(separable_run.out / "config.yaml"))
    ranges = load_bundle(separable_run.out / "model").meta.input_ranges
    assert ranges == fit_ranges([describe(c) for c in canon]) and set(ranges) >= {"background", "contrast"}


def test_the_bundle_records_its_held_out_confusion_at_each_point(separable_run):
    meta = load_bundle(separable_run.out / "model").meta
    metrics = json.loads((separable_run.out / "metrics.json").read_text())
    assert set(meta.confusions) == {"accuracy", "balanced"}
    assert meta.confusion == metrics["confusion_matrix"]  # the point in use, as its metrics counted
    assert sum(map(sum, meta.confusions["balanced"])) == metrics["n"]


def test_the_bundle_records_its_share_check_at_each_point(separable_run):
    from spermhead.evaluation.composition import check_intervals
    from spermhead.evaluation.predictions import read_predictions

    meta = load_bundle(separable_run.out / "model").meta
    metrics = json.loads((separable_run.out / "metrics.json").read_text())
    assert set(meta.share_checks) == {"accuracy", "balanced"} and meta.share_check == metrics["share_check"]
    pred = read_predictions(separable_run.out)  # the point in use: its out-of-fold predictions, checked
    assert meta.share_check == check_intervals(pred.true_indices, pred.pred_indices, pred.folds, pred.classes)
    # separable heads: both estimates are right, so no interval needs widening
    assert max(meta.share_check["error"]["counted"]) < 0.02 and max(meta.share_check["extra_sd"]["adjusted"]) < 0.02
    report = (separable_run.out / "report.html").read_text()
    assert "A sample's class shares" in report
    assert "<h2>Timing</h2>" in report and "<th>item</th>" in report  # no lowercase title, no blank header


def test_bundle_reloads_with_the_same_probabilities(separable, separable_run):
    table = load_dataset(str(separable))
    bundle = load_bundle(separable_run.out / "model")
    assert bundle.meta.kind == "ensemble" and bundle.meta.members == 4
    # without shape fusion the field is left out, so older versions still read the bundle
    assert "shape_fusion" not in json.loads((separable_run.out / "model" / "model.json").read_text())
    cfg = RunConfig.from_dict({"preprocess": bundle.meta.preprocess})
    images, _ = canonical_images(table, cfg)
    got = predict_proba(bundle.model, images, bundle.meta.mean, bundle.meta.std, tta=bundle.meta.tta)
    members = [m for r in separable_run.folds for m in r.members]
    expected = np.mean([predict_proba(m, images, [0.0], [1.0]) for m in members], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_shuffled_labels_score_near_chance(separable, tmp_path):
    table = load_dataset(str(separable))
    rng = np.random.default_rng(1)
    shuffled = tmp_path / "shuffled"
    labels = rng.permutation([s.label for s in table.samples])
    for s, label in zip(table.samples, labels, strict=True):
        (shuffled / label).mkdir(parents=True, exist_ok=True)
        (shuffled / label / s.path.name).write_bytes(s.path.read_bytes())
    result = train_run(quick_config(shuffled, tmp_path / "run"), progress=False)
    assert result.metrics["accuracy"] < 0.5  # chance is 0.25 with 4 balanced classes


def test_same_seed_gives_identical_metrics(separable, tmp_path):
    # a short run is enough: every source of randomness is seeded before the first epoch
    first, again = (train_run(quick_config(separable, tmp_path / name, cv=2, epochs=4), progress=False)
                    for name in ("first", "again"))
    assert (again.out / "metrics.json").read_text() == (first.out / "metrics.json").read_text()
    assert (again.out / "predictions.csv").read_text() == (first.out / "predictions.csv").read_text()
    # and config.yaml holds every setting: `train --config RUN` alone trains the same run again
    from typer.testing import CliRunner

    from spermhead.cli import app

    repeat = CliRunner().invoke(app, ["train", "--config", str(first.out), "--out", str(tmp_path / "repeat"),
                                      "--no-progress"])
    assert repeat.exit_code == 0, repeat.output
    assert (tmp_path / "repeat" / "predictions.csv").read_text() == (first.out / "predictions.csv").read_text()
    assert config_differences(load_config(first.out / "config.yaml"),
                              load_config(tmp_path / "repeat" / "config.yaml")) == []


def test_no_test_sample_reaches_training_or_validation(separable):
    table = load_dataset(str(separable))
    cfg = quick_config(separable, Path("unused"))
    folds = make_folds(table, cfg.protocol, seed=0, val_fraction=0.15)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested) == list(range(len(table)))
    for f in folds:
        assert not set(f.test) & set(f.train) and not set(f.test) & set(f.val)
        assert not set(f.train) & set(f.val)


def test_grouped_cv_keeps_each_group_in_one_part_of_every_fold():
    """--grouped: a patient's (plate's) heads are in one of test, validation and training, so
    the checkpoint is not chosen on a group the model trains on."""
    from spermhead.data.samples import Sample, SampleTable

    rng = np.random.default_rng(0)
    samples = [Sample(f"p{g}/{i}", Path(f"p{g}/{i}.png"), CLASSES[int(rng.integers(4))], "lab", group=f"p{g}")
               for g in range(10) for i in range(30)]
    table = SampleTable("lab", samples, CLASSES)
    groups = np.array([s.group for s in samples])
    folds = make_folds(table, ProtocolConfig(kind="cv", folds=5, grouped=True, near_duplicates=0), seed=0, val_fraction=0.15)
    for f in folds:
        train, val, test = (set(groups[part]) for part in (f.train, f.val, f.test))
        assert val and not train & val and not train & test and not val & test
        assert len(f.train) + len(f.val) + len(f.test) == len(samples)
    # a class in two groups only: the validation part is one that leaves it in training
    confined = [Sample(s.id, s.path, "normal" if s.label == "tapered" and s.group not in ("p0", "p1") else s.label,
                       "lab", group=s.group) for s in samples]
    y = np.array([CLASSES.index(s.label) for s in confined])
    for seed in range(3):
        for f in make_folds(SampleTable("lab", confined, CLASSES), ProtocolConfig(kind="cv", folds=5, grouped=True,
                                                                                  near_duplicates=0),
                            seed=seed, val_fraction=0.15):
            assert set(y[f.train]) == set(y[np.concatenate([f.train, f.val])]), (seed, f.index)
    one_each = SampleTable("lab", samples[:60], CLASSES)  # two groups: a training side holds one
    with pytest.raises(ConfigError, match="one acquisition group"):
        make_folds(one_each, ProtocolConfig(kind="cv", folds=2, grouped=True, near_duplicates=0), seed=0, val_fraction=0.15)


def test_grouped_cv_names_a_class_held_by_too_few_groups_not_near_duplicates():
    """A class in one group leaves the fold that tests that group without it: said as such (it
    was blamed on near-duplicates, with --near-duplicates 0 already given)."""
    from spermhead.data.samples import Sample, SampleTable

    samples = [Sample(f"g{g}/{c}{i}", Path(f"g{g}/{c}{i}.png"), c, "lab", group=f"g{g}")
               for g in range(4) for c in CLASSES[:3] for i in range(5)]
    samples += [Sample(f"g0/{CLASSES[3]}{i}", Path(f"g0/x{i}.png"), CLASSES[3], "lab", group="g0") for i in range(5)]
    with pytest.raises(ConfigError, match=rf"--grouped: fold \d would train on no '{CLASSES[3]}' image: every one is "
                                          rf"in group g0, tested whole in that fold; use images of '{CLASSES[3]}' "
                                          r"from more groups, or drop --grouped"):
        make_folds(SampleTable("lab", samples, CLASSES), ProtocolConfig(kind="cv", folds=3, grouped=True,
                                                                        near_duplicates=0), seed=0, val_fraction=0.15)


def test_grouped_is_refused_for_a_split_and_a_tiny_class_is_named():
    """--grouped draws CV folds only: with --split it would have been recorded but not done. A
    random split of a class with one or two images is refused by name, not by scikit-learn."""
    from spermhead.data.samples import Sample, SampleTable

    samples = [Sample(f"p{i % 4}/{c}{i}", Path(f"{c}{i}.png"), c, "lab", group=f"p{i % 4}")
               for c in CLASSES for i in range(10)]
    table = SampleTable("lab", samples, CLASSES)
    for kind in ("random", "folders"):
        with pytest.raises(ConfigError, match="--grouped keeps acquisition groups apart in CV folds only"):
            make_folds(table, ProtocolConfig(kind=kind, grouped=True, near_duplicates=0), seed=0, val_fraction=0.15)
    (fold,) = make_folds(table, ProtocolConfig(kind="random", near_duplicates=0), seed=0, val_fraction=0.15)
    assert len(fold.train) + len(fold.val) + len(fold.test) == len(samples)
    ungrouped = SampleTable("lab", [Sample(s.id, s.path, s.label, "lab") for s in samples], CLASSES)
    with pytest.raises(ConfigError, match="found 1: only SCIAN's file names record them"):  # not HuSHeM's
        make_folds(ungrouped, ProtocolConfig(kind="cv", grouped=True, near_duplicates=0), seed=0, val_fraction=0.15)
    tiny = SampleTable("lab", samples[:-9], CLASSES)  # one image of the last class
    with pytest.raises(ConfigError, match=rf"at least 3 images of each class.*{CLASSES[-1]} \(1\)"):
        make_folds(tiny, ProtocolConfig(kind="random", near_duplicates=0), seed=0, val_fraction=0.15)
    three_each = SampleTable("lab", [s for s in samples if s.id[-1] in "012"], CLASSES)  # a 10% test part of 1
    with pytest.raises(ConfigError, match="lab: cannot split 12 images 60/30/10: "):
        make_folds(three_each, ProtocolConfig(kind="random", near_duplicates=0), seed=0, val_fraction=0.15)


def test_a_fixed_split_without_validation_images_gives_an_empty_validation_part():
    """A table built in code with train and test images only (the folder reader refuses an empty
    val/): its validation part is empty, and still an index array."""
    from spermhead.data.samples import Sample, SampleTable

    samples = [Sample(f"{split}/{c}/{i}", Path(f"{i}.png"), c, "lab", split=split)
               for split in ("train", "test") for c in CLASSES for i in range(3)]
    (fold,) = make_folds(SampleTable("lab", samples, CLASSES), ProtocolConfig(kind="folders", near_duplicates=0), seed=0,
                         val_fraction=0.15)
    assert (len(fold.train), len(fold.val), len(fold.test)) == (12, 0, 12) and fold.val.dtype.kind == "i"
    assert np.asarray(CLASSES)[fold.val].size == 0  # usable as an index, as the run uses it


def test_a_fixed_split_names_heads_on_both_sides_of_it(tmp_path, caplog):
    import shutil

    root = tmp_path / "ds"
    # folders named as other tools name them: the warning names paths that exist
    for split, seed in (("Training", 0), ("valid", 1), ("Testing", 2)):
        write_separable(root / split, n_per_class=3, seed=seed)
    shutil.copy(root / "Training" / "normal" / "normal_000.png", root / "Testing" / "normal" / "again.png")
    table = load_dataset(str(root))
    with caplog.at_level("WARNING", logger="spermhead"):
        (fold,) = make_folds(table, ProtocolConfig(kind="folders"), seed=0, val_fraction=0.15)
    assert len(fold.test) == 13  # the split is the lab's, kept as it is...
    said = "1 head is in the training part and also"
    assert said in caplog.text  # ...but the twin is named
    assert str(root / "Testing" / "normal" / "again.png") in caplog.text
    assert str(root / "Training" / "normal" / "normal_000.png") in caplog.text
    # and the run says so beside its figures (metrics.json, the report, a selection table)
    result = train_run(quick_config(root, tmp_path / "run", cv=None, split="folders", epochs=1), progress=False)
    assert any(said in n and "flatter the model" in n for n in result.metrics["notes"])
    assert result.metrics["caveats"] == [n for n in result.metrics["notes"] if said in n]


def test_a_learning_curve_point_shrinks_only_the_training_sides(separable):
    table = load_dataset(str(separable))
    cfg = quick_config(separable, Path("unused"))
    y = np.asarray(table.label_indices)
    full = make_folds(table, cfg.protocol, seed=0, val_fraction=0.15)
    half = make_folds(table, cfg.protocol, seed=0, val_fraction=0.15, train_fraction=0.5)
    for f, h in zip(full, half, strict=True):
        np.testing.assert_array_equal(f.val, h.val)
        np.testing.assert_array_equal(f.test, h.test)
        assert set(h.train) < set(f.train)
        for c in np.unique(y[f.train]):  # stratified: each class halved, none lost
            assert abs((y[h.train] == c).sum() - (y[f.train] == c).sum() / 2) <= 1
    with pytest.raises(ConfigError, match="train-fraction"):
        build_run_config(str(separable), "unused", train_fraction=0.0)


def test_refit_val_scores_validation_before_and_test_after_training_on_it(separable, separable_run, tmp_path,
                                                                          monkeypatch):
    import spermhead.training.run as run_module
    from spermhead.training.run import fit_side

    refit = train_run(quick_config(separable, tmp_path / "refit", refit_val=True), progress=False)
    table = load_dataset(str(separable))
    images, _ = canonical_images(table, refit_cfg := load_config(refit.out / "config.yaml"))
    assert refit_cfg.train.refit_val
    for fold, plain, again in zip(make_folds(table, refit_cfg.protocol, 0, 0.15), separable_run.folds, refit.folds,
                                  strict=True):
        info = json.loads((refit.out / "folds" / f"fold{fold.index}" / "done.json").read_text())
        assert info["refit_val"] and info["train"] == len(fold.train) + len(fold.val)
        # the validation part was scored by the model that did not train on it: the plain run's
        assert again.val_pred == plain.val_pred and len(again.val_pred) == len(fold.val) > 0
        # the kept model trained on training + validation: its input statistics say so
        mean = again.members[0][0].mean.flatten().item()
        both = images[np.concatenate([fold.train, fold.val])].astype(np.float64).mean() / 255
        assert mean == pytest.approx(both, abs=1e-4)
        assert mean != pytest.approx(images[fold.train].astype(np.float64).mean() / 255, abs=1e-6)
        assert not np.allclose(again.test_probs, plain.test_probs)  # and it scored the test part
        # the fold's training time counts the refit beside the first fit
        assert info["fold_seconds"] > info["seconds"] > 0 and again.fold_seconds == info["fold_seconds"]
    assert refit.metrics["accuracy"] >= 0.99  # and it still scores the separable set
    timing = json.loads((refit.out / "run.json").read_text())["timing"]
    assert timing["fold_training_seconds"] == pytest.approx(sum(f.fold_seconds for f in refit.folds))
    assert timing["folds_read_back"] == 0
    # Killed inside fold 3's refit: --resume trains only that refit, and gives the same answers.
    fold3 = refit.out / "folds" / "fold3"
    for name in ("done.json", "test_probs.npy", "model0.safetensors"):
        (fold3 / name).unlink()
    fits = []
    monkeypatch.setattr(run_module, "fit_side", lambda *a, **kw: fits.append(a[3:5]) or fit_side(*a, **kw))
    resumed = train_run(refit_cfg, resume=True, progress=False)
    last = make_folds(table, refit_cfg.protocol, 0, 0.15)[3]
    assert [(len(rows), len(val)) for rows, val in fits] == [(len(last.train) + len(last.val), 0)]
    np.testing.assert_array_equal(resumed.folds[3].test_probs, refit.folds[3].test_probs)
    assert resumed.folds[3].val_pred == refit.folds[3].val_pred and resumed.metrics == refit.metrics
    with pytest.raises(ConfigError, match="monitor last"):
        build_run_config(str(separable), "unused", refit_val=True, monitor="val_acc")


def test_train_takes_the_checkpoint_to_keep_and_names_the_recipe_that_refits(separable, tmp_path):
    from typer.testing import CliRunner

    from spermhead.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["train", "hushem", "--data-dir", str(tmp_path), "--monitor", "val_acc",
                                  "--out", str(tmp_path / "no")], terminal_width=200)
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "--refit-val (on in hushem's recipe)" in said and "--no-refit-val" in said, said
    with pytest.raises(ConfigError, match=r"^--refit-val with --monitor val_acc"):  # a recipe without it: not blamed
        build_run_config("scian-ta", "unused", refit_val=True, monitor="val_acc")
    run = tmp_path / "best"
    result = runner.invoke(app, ["train", str(separable), "--monitor", "val_acc", "--patience", "3", "--epochs", "2",
                                 "--cv", "2", "--image-size", "24", "--init", "scratch", "--threads",
                                 "1", "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    saved = load_config(run / "config.yaml").train
    assert (saved.monitor, saved.early_stopping_patience) == ("val_acc", 3)
    # the summary's accuracy is the pooled one, the fold mean beside it; the network's alone here
    said = " ".join(result.output.split())
    assert "pooled (fold mean" in said and "fused answers" not in said
    fused = runner.invoke(app, ["train", str(separable), "--shape-fusion", "0.3", "--epochs", "1", "--cv", "2",
                                "--image-size", "24", "--init", "scratch", "--threads", "1", "--no-progress",
                                "--out", str(tmp_path / "fused")], terminal_width=300)
    assert fused.exit_code == 0, fused.output
    assert "these are the fused answers: the network 0.7 + head-profile model 0.3" in " ".join(fused.output.split())


def test_balancing_and_augmentation_touch_only_training(separable, tmp_path):
    cfg = quick_config(separable, tmp_path / "bal", balance="offline", epochs=2)
    cfg.train.balance_per_class = 30
    result = train_run(cfg, progress=False)
    info = json.loads((result.out / "folds" / "fold0" / "done.json").read_text())
    table = load_dataset(str(separable))
    fold = make_folds(table, cfg.protocol, seed=0, val_fraction=cfg.train.val_fraction)[0]
    assert (info["val"], info["test"]) == (len(fold.val), len(fold.test))  # untouched by balancing
    # Evaluation never augments: the same input always gives the same output.
    member = result.folds[0].members[0]
    x = np.full((2, 1, 24, 24), 128, dtype=np.uint8)
    np.testing.assert_array_equal(predict_proba(member, x, [0.0], [1.0]), predict_proba(member, x, [0.0], [1.0]))


@pytest.mark.parametrize("kind", ["cv", "random"])
def test_a_folder_with_one_class_is_refused_before_training(separable, tmp_path, kind):
    one = tmp_path / "one"
    (one / "normal").mkdir(parents=True)
    for path in sorted((separable / "normal").iterdir())[:10]:
        (one / "normal" / path.name).write_bytes(path.read_bytes())
    split = {"split": "60/30/10", "cv": None} if kind == "random" else {}
    with pytest.raises(ConfigError, match="one: only one class has images \\(normal\\)"):
        train_run(quick_config(one, tmp_path / "run", **split), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_folder_with_bad_images_names_them_all_before_training(separable, tmp_path):
    from spermhead.errors import DataError

    lab = tmp_path / "lab"
    for k, name in enumerate(CLASSES):
        (lab / name).mkdir(parents=True)
        for path in sorted((separable / name).iterdir())[:6]:
            (lab / name / path.name).write_bytes(path.read_bytes())
        if k < 2:
            (lab / name / "scanner-junk.png").write_text("not an image")
    with pytest.raises(DataError, match="2 of 26 images cannot be used") as info:
        train_run(quick_config(lab, tmp_path / "run"), progress=False)
    assert all(str(lab / name / "scanner-junk.png") in str(info.value) for name in CLASSES[:2])
    assert not (tmp_path / "run").exists()
    # a run folder that is taken is refused first, before minutes of reading images
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("an earlier run")
    with pytest.raises(ConfigError, match="taken: run directory exists"):
        train_run(quick_config(lab, tmp_path / "taken"), progress=False)


def test_bad_options_fail_before_training(separable, tmp_path):
    with pytest.raises(ConfigError, match="too few images for 50-fold"):
        train_run(quick_config(separable, tmp_path / "x", cv=50), progress=False)
    assert not (tmp_path / "x").exists()
    # nothing is left in the run folder, so the corrected command is not then refused for it
    with pytest.raises(ConfigError, match="unknown model 'no-such-net'"):
        train_run(quick_config(separable, tmp_path / "y", model="no-such-net"), progress=False)
    assert not (tmp_path / "y").exists()
    with pytest.raises(ConfigError, match="nothere.safetensors: weights file not found"):
        train_run(quick_config(separable, tmp_path / "y", weights=str(tmp_path / "nothere.safetensors")),
                  progress=False)
    assert not (tmp_path / "y").exists()
    (tmp_path / "afile").write_text("precious")
    with pytest.raises(ConfigError, match="afile: is a file, not a folder"):
        train_run(quick_config(separable, tmp_path / "afile"), progress=False)
    assert (tmp_path / "afile").read_text() == "precious"
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="--overwrite"):
        train_run(quick_config(separable, tmp_path / "z"), progress=False)
    assert (tmp_path / "z" / "keep.txt").read_text() == "precious"
    # --overwrite deletes only a run folder, and never one that holds what the run reads
    with pytest.raises(ConfigError, match="not a run folder"):
        train_run(quick_config(separable, tmp_path / "z"), overwrite=True, progress=False)
    assert (tmp_path / "z" / "keep.txt").read_text() == "precious"
    lab = tmp_path / "lab"
    shutil.copytree(separable, lab / "heads")
    (lab / "config.yaml").write_text("an earlier run's settings\n")
    with pytest.raises(ConfigError, match="heads, which this run reads"):
        train_run(quick_config(lab / "heads", lab), overwrite=True, progress=False)
    assert (lab / "heads").is_dir() and (lab / "config.yaml").is_file()
    with pytest.raises(ConfigError, match="which this run reads"):  # the same folder by another way there
        train_run(quick_config(lab / "heads", lab / "heads" / ".." / ".." / lab.name), overwrite=True, progress=False)
    assert (lab / "heads").is_dir()


@pytest.mark.parametrize("text", ["90/10/0", "100/0/0", "80/20"])
def test_a_split_with_an_empty_or_missing_part_is_refused_by_name(text):
    with pytest.raises(ConfigError, match=f"--split '{text}'"):
        parse_split(text)


@pytest.mark.slow
def test_killed_run_resumes_and_completes(separable, tmp_path):
    def train(out: Path) -> list[str]:
        return [sys.executable, "-m", "spermhead", "train", str(separable), "--out", str(out), "--model",
                "spermnet", "--image-size", "24", "--epochs", "20", "--cv", "4", "--no-tta", "--no-progress",
                "--threads", "1", "--init", "scratch"]

    out = tmp_path / "resumable"
    args = train(out)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "folds" / "fold1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), "the run never reached fold 1"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Checkpoint directory" not in done.stdout + done.stderr  # going on in it is the point
    pred = Predictions.read_csv(out / "predictions.csv")
    assert len(pred) == 80 and len(set(pred.ids)) == 80
    # the epochs fold 1 logged before the kill are kept beside those after the resume
    epochs = [h["epoch"] for h in read_history(out / "folds" / "fold1")]
    assert epochs == list(range(20)), epochs
    versions = sorted(p.name for p in (out / "folds" / "fold1" / "logs").glob("version_*"))
    assert versions == ["version_0", "version_1"], versions  # version_0 alone: fold 1 had finished before the kill
    # and it went on from its checkpoint: merged history would hide a fit that started over
    with open(out / "folds" / "fold1" / "logs" / "version_1" / "metrics.csv") as fh:
        assert min(int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch")) >= 1
    # and the resumed fold drew what an uninterrupted run draws: the same answers, to the bit
    whole = subprocess.run(train(tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    resumed, uninterrupted = ((d / "predictions.csv").read_text().splitlines() for d in (out, tmp_path / "whole"))
    assert resumed == uninterrupted  # as lists of rows, so a failure shows the rows that differ
    # --resume with other settings than the run started with is refused, naming them, and the
    # finished run is left as it was; --resume alone goes on with the saved settings
    from typer.testing import CliRunner

    from spermhead.cli import app

    written = {f: (out / f).read_bytes() for f in ("predictions.csv", "metrics.json", "config.yaml")}
    changed = CliRunner().invoke(app, [*args[3:], "--epochs", "30", "--seed", "4", "--resume"])
    assert changed.exit_code == 2 and "train.epochs: 20 -> 30" in changed.output, changed.output
    assert "seed: 0 -> 4" in changed.output and "num_threads" not in changed.output
    assert {f: (out / f).read_bytes() for f in written} == written
    trained = json.loads((out / "run.json").read_text())["timing"]
    alone = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--threads", "1", "--no-progress"])
    assert alone.exit_code == 0, alone.output
    assert "every fold had finished: nothing trained; 4 finished fold(s) read back" in " ".join(alone.output.split())
    assert (out / "predictions.csv").read_bytes() == written["predictions.csv"]
    # reading finished folds back is not training them: their own time is kept beside this command's
    timing = json.loads((out / "run.json").read_text())["timing"]
    assert timing["folds_read_back"] == 4
    assert timing["fold_training_seconds"] == pytest.approx(trained["fold_training_seconds"])
    assert timing["wall_seconds"] < timing["fold_training_seconds"]


def test_a_damaged_checkpoint_is_set_aside_and_the_fit_starts_over(separable, tmp_path, caplog):
    """A last.ckpt that cannot be read (a copy cut short where links fail, a full disk) does not
    stop --resume: the fit starts over, named in a warning, and draws the same model."""
    cfg = quick_config(separable, tmp_path / "run", cv=2, epochs=3)
    train_run(cfg, progress=False)
    finished = (tmp_path / "run" / "predictions.csv").read_bytes()
    fold = tmp_path / "run" / "folds" / "fold0"
    for path in (fold / "done.json", tmp_path / "run" / "run.json", tmp_path / "run" / "predictions.csv"):
        path.unlink()  # as if the run had been stopped in fold 0's training
    (fold / "checkpoints").mkdir()
    (fold / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    with caplog.at_level("WARNING", logger="spermhead.training.run"):
        train_run(cfg, resume=True, progress=False)
    assert "last.ckpt: cannot be read" in caplog.text and "this fit starts over" in caplog.text
    assert (tmp_path / "run" / "predictions.csv").read_bytes() == finished
    # the damaged file is cleared away, so the new fit's last.ckpt is the one a second resume reads
    from spermhead.training.run import resumable_checkpoint

    (fold / "checkpoints").mkdir()
    (fold / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    assert resumable_checkpoint(fold / "checkpoints" / "last.ckpt") is None
    assert not (fold / "checkpoints").exists()


def noise_images() -> tuple[np.ndarray, np.ndarray]:
    """48 random 24 px gray images in 4 classes: enough for a fit's checkpoints to be exercised."""
    return np.random.default_rng(0).integers(0, 256, (48, 1, 24, 24), dtype=np.uint8), np.arange(48) % 4


def test_a_resumed_fit_goes_on_from_its_checkpoint_under_the_same_names(tmp_path):
    """--resume goes on from last.ckpt (the resumed fit logs from the next epoch, not epoch 0), and
    the checkpoints keep their names: no last-v1.ckpt beside the last.ckpt a later resume reads."""
    from spermhead.training.run import build_member, fit_member

    # one epoch first: the checkpoint written after a fit's first epoch is the one Lightning names
    # no last checkpoint in, which is what made it write last-v1.ckpt on a resume
    cfg = quick_config(tmp_path, tmp_path / "run", epochs=1, schedule="none")  # no schedule tied to the epochs
    x, y = noise_images()
    fold_dir = tmp_path / "fold"
    common = dict(seed=0, progress=False, soft=None)
    fit_member(cfg, build_member(cfg, 4, x), x, y, x[:8], y[:8], 4, fold_dir, resume=False, **common)
    cfg.train.epochs = 3  # a longer run asked of the same fit, to see where it goes on from
    fit_member(cfg, build_member(cfg, 4, x), x, y, x[:8], y[:8], 4, fold_dir, resume=True, **common)
    assert sorted(p.name for p in (fold_dir / "checkpoints").iterdir()) == ["last.ckpt", "latest.ckpt"]
    with open(fold_dir / "logs" / "version_1" / "metrics.csv") as fh:
        epochs = {int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch")}
    assert min(epochs) == 1, epochs


def test_resume_refuses_a_synthetic_source_trained_again_since(separable, tmp_path, monkeypatch):
    """Folds started from one synthetic source model are not resumed from another: the cache may
    be trained again (cleared, another machine) between the interruption and the resume."""
    from safetensors.torch import load_file

    from spermhead.models.weights import write_safetensors

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    cfg = quick_config(separable, tmp_path / "run", init="synthetic", init_per_class=4, init_epochs=1, epochs=1, cv=2)
    train_run(cfg, progress=False)
    source = Path(json.loads((tmp_path / "run" / "start.json").read_text())["weights"])
    assert train_run(cfg, resume=True, progress=False).timing["folds_read_back"] == 2  # the same source: read back
    (tmp_path / "run" / "source.safetensors").unlink()  # the run's own copy lost (or a run from before it)
    write_safetensors({k: v + 1 for k, v in load_file(str(source)).items()}, source)  # trained again, say
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text() + "# as the run left it\n")
    with pytest.raises(ConfigError, match="another synthetic source model.*trained again since"):
        train_run(cfg, resume=True, progress=False)
    assert config.read_text().endswith("# as the run left it\n")  # refused before the run folder is touched
    for name in ("run.json", "metrics.json", "predictions.csv"):  # interrupted before it finished
        (tmp_path / "run" / name).unlink()
    with pytest.raises(ConfigError, match="another synthetic source model.*trained again since"):
        train_run(cfg, resume=True, progress=False)


def test_resume_needs_no_cache_while_the_run_keeps_its_source(separable, tmp_path, monkeypatch):
    """A run keeps the synthetic source its folds started from: --resume after the cache was
    trained again, or cleared (another machine), goes on from that copy and trains no source."""
    from safetensors.torch import load_file

    from spermhead.models.weights import file_sha256, write_safetensors
    from spermhead.training import synthetic_init

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    cfg = quick_config(separable, tmp_path / "run", init="synthetic", init_per_class=4, init_epochs=1, epochs=1, cv=2)
    train_run(cfg, progress=False)
    started = json.loads((tmp_path / "run" / "start.json").read_text())
    assert file_sha256(tmp_path / "run" / "source.safetensors") == started["sha256"]
    source = Path(started["weights"])
    retrained = source.with_suffix(".new")  # trained again since, and replaced as a training replaces it
    write_safetensors({k: v + 1 for k, v in load_file(str(source)).items()}, retrained)
    os.replace(retrained, source)
    assert train_run(cfg, resume=True, progress=False).timing["folds_read_back"] == 2
    shutil.rmtree(tmp_path / "cache")

    def no_training(*args, **kwargs):
        raise AssertionError("the source was trained again")

    monkeypatch.setattr(synthetic_init, "train_source", no_training)
    assert train_run(cfg, resume=True, progress=False).timing["folds_read_back"] == 2
    record = json.loads((tmp_path / "run" / "run.json").read_text())["init"]
    assert (record["sha256"], record["weights"]) == (started["sha256"], started["weights"])


def test_a_spoilt_copy_of_the_source_is_replaced_and_a_failed_link_copies(separable, tmp_path, monkeypatch):
    """The run's copy of its source counts only while it is byte for byte the recorded start; a
    file system without links gets a copy."""
    from spermhead.models.weights import file_sha256

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))

    def no_links(*args):
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", no_links)
    cfg = quick_config(separable, tmp_path / "run", init="synthetic", init_per_class=4, init_epochs=1, epochs=1, cv=2)
    train_run(cfg, progress=False)
    kept = tmp_path / "run" / "source.safetensors"
    started = json.loads((tmp_path / "run" / "start.json").read_text())
    assert kept.stat().st_nlink == 1 and file_sha256(kept) == started["sha256"]  # a copy, not a link
    kept.write_bytes(b"spoilt")
    assert train_run(cfg, resume=True, progress=False).timing["folds_read_back"] == 2  # from the cache
    assert file_sha256(kept) == started["sha256"]


def test_a_source_that_cannot_be_kept_is_a_warning_not_a_stopped_run(separable, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", full_disk)
    monkeypatch.setattr(shutil, "copyfile", full_disk)
    cfg = quick_config(separable, tmp_path / "run", init="synthetic", init_per_class=4, init_epochs=1, epochs=1, cv=2)
    with caplog.at_level(logging.WARNING, logger="spermhead.training.run"):
        result = train_run(cfg, progress=False)
    assert (result.out / "model" / "model.safetensors").is_file()
    assert not list(result.out.glob("source.*"))  # nothing half-written left behind
    assert "could not keep a copy of the synthetic source model" in caplog.text and "No space left" in caplog.text


def test_a_fit_kept_at_its_best_epoch_resumes_from_its_last_one(tmp_path):
    """With a monitor, last.ckpt is still the latest epoch, not the last one that improved: a
    resume goes on from where the fit stopped."""
    import torch

    from spermhead.training.run import build_member, fit_member

    # a learning rate too small to learn: from seed 1's first weights only epoch 0 scores its best
    cfg = quick_config(tmp_path, tmp_path / "run", epochs=3, schedule="none", lr=1e-12, monitor="val_acc")
    x, y = noise_images()
    fold_dir = tmp_path / "fold"
    torch.manual_seed(1)
    _, trained, kept = fit_member(cfg, build_member(cfg, 4, x), x, y, x[:8], y[:8], 4, fold_dir, seed=0,
                                  progress=False, resume=False)
    best = torch.load(fold_dir / "checkpoints" / "best.ckpt", weights_only=False)["epoch"]
    assert trained == 3 and kept == best + 1 == 1  # the scenario: the last epoch is not the best
    assert torch.load(fold_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    # stopped after 2 epochs and resumed to 4, a fit keeps the model an uninterrupted 4 keep
    fits = kept_whole_and_resumed(tmp_path / "again", lr=3e-3, first_weights=0)
    (kept_a, a), (kept_b, b) = fits["whole"], fits["resumed"]
    assert kept_a == kept_b and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fit_killed_after_early_stopping_resumes_to_the_same_model(tmp_path, monkeypatch):
    """Killed after the checkpoint of the epoch early stopping stopped at (before the fit ends),
    a fit resumed from it trains no further: the uninterrupted fit's epochs and weights."""
    import contextlib

    import lightning as L
    import torch

    import spermhead.training.run as run

    class Killed(Exception):
        pass

    class KillAtTheEnd(L.Callback):
        def on_train_end(self, trainer, pl_module):
            raise Killed

    built = run.quiet_trainer
    cfg = quick_config(tmp_path, tmp_path / "run", epochs=8, schedule="none", monitor="last", patience=1, lr=1e-12)
    x, y = noise_images()
    fits = {}
    for name, kill in (("whole", False), ("killed", True), ("resumed", False)):
        if kill:
            monkeypatch.setattr(run, "quiet_trainer", lambda **kw: built(**{**kw, "callbacks": [*kw["callbacks"],
                                                                                              KillAtTheEnd()]}))
        torch.manual_seed(1)
        with contextlib.suppress(Killed):
            fits[name] = run.fit_member(cfg, run.build_member(cfg, 4, x), x, y, x[:8], y[:8], 4,
                                        tmp_path / ("whole" if name == "whole" else "fold"), seed=0,
                                        progress=False, resume=name == "resumed")
        monkeypatch.setattr(run, "quiet_trainer", built)
    assert "killed" not in fits and (tmp_path / "fold" / "checkpoints" / "last.ckpt").is_file()
    (whole, epochs, kept), (resumed, epochs_r, kept_r) = fits["whole"], fits["resumed"]
    assert epochs < cfg.train.epochs  # the scenario: early stopping ended the fit
    assert (epochs_r, kept_r) == (epochs, kept)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    # filed under Lightning's own key: checkpoints from before this callback resume with their count
    from lightning.pytorch.callbacks import EarlyStopping

    from spermhead.training.checkpoints import ResumableEarlyStopping

    assert ResumableEarlyStopping(monitor="val_loss", mode="min").state_key == \
        EarlyStopping(monitor="val_loss", mode="min").state_key


def test_checkpoint_records_follow_a_moved_folder(tmp_path, monkeypatch):
    """The paths a checkpoint recorded under its old folder move with it, the best score stays, a
    path outside the old folder is left alone, and the state keeps Lightning's own key, so
    checkpoints written by a plain ModelCheckpoint (older runs) still load their record."""
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from spermhead.training.checkpoints import MovableCheckpoint

    old, new = str(tmp_path / "old" / "checkpoints"), str(tmp_path / "new" / "checkpoints")
    state = {"monitor": "val_score", "best_model_score": torch.tensor(0.9), "dirpath": old,
             "best_model_path": f"{old}/best.ckpt", "kth_best_model_path": f"{old}/best.ckpt",
             "kth_value": torch.tensor(0.9), "last_model_path": f"{old}/..x/last.ckpt",
             "best_k_models": {f"{old}/best.ckpt": torch.tensor(0.9), str(tmp_path / "elsewhere.ckpt"): 0.5}}
    moved = MovableCheckpoint(dirpath=new, filename="best", monitor="val_score", mode="max")
    moved.load_state_dict(state)
    assert moved.best_model_path == moved.kth_best_model_path == f"{new}/best.ckpt"
    assert moved.last_model_path == f"{new}/..x/last.ckpt"  # a folder named "..x" is still inside
    assert moved.best_k_models == {f"{new}/best.ckpt": torch.tensor(0.9), str(tmp_path / "elsewhere.ckpt"): 0.5}
    assert float(moved.best_model_score) == pytest.approx(0.9)
    plain = ModelCheckpoint(dirpath=new, filename="best", monitor="val_score", mode="max")
    assert moved.state_key == plain.state_key
    latest = MovableCheckpoint(dirpath=new, filename="latest", save_last="link")
    assert latest.state_key != moved.state_key  # fit_member's two callbacks keep their states apart

    def other_drive(path: str, start: str) -> str:
        raise ValueError("path is on mount 'D:', start on mount 'C:'")  # as Windows' relpath says

    monkeypatch.setattr("os.path.relpath", other_drive)
    assert moved._rebased("D:/run/best.ckpt", old) == "D:/run/best.ckpt"


def kept_whole_and_resumed(tmp_path: Path, *, lr: float = 1e-12, first_weights: int = 1,
                           first_half: Callable[[], AbstractContextManager] | None = None,
                           between: Callable[[Path], Path] | None = None) -> dict[str, tuple[int, dict]]:
    """The epoch kept, and the model, of a fit of 4 epochs monitored on validation ("whole") and of
    the same fit stopped after 2 epochs and resumed to 4 ("resumed"), both from the first weights
    that `first_weights` seeds. `first_half` (a context manager) wraps the first 2 epochs;
    `between` gets the resumed fit's folder and returns where it resumes. At the default learning
    rate nothing is learnt, and from seed 1's first weights the score peaks in the first two epochs,
    so the best epoch is one from before the interruption."""
    import torch

    from spermhead.training.run import build_member, fit_member

    cfg = quick_config(tmp_path, tmp_path / "run", epochs=4, schedule="none", lr=lr, monitor="val_acc")
    x, y = noise_images()
    fits = {}
    for name, stops in (("whole", [4]), ("resumed", [2, 4])):
        fold = tmp_path / name
        for i, epochs in enumerate(stops):
            cfg.train.epochs = epochs
            torch.manual_seed(first_weights)  # the same first weights (a run seeds each fold so)
            if i and between:
                fold = between(fold)
            with first_half() if first_half and name == "resumed" and i == 0 else nullcontext():
                model, _, kept = fit_member(cfg, build_member(cfg, 4, x), x, y, x[:8], y[:8], 4, fold, seed=0,
                                            progress=False, resume=i > 0)
        fits[name] = (kept, model.state_dict())
    return fits


def test_a_checkpoint_from_before_the_movable_one_resumes_with_its_best_epoch(tmp_path, monkeypatch, recwarn):
    """A fit checkpointed by Lightning's own ModelCheckpoint (a run interrupted before spermhead
    had MovableCheckpoint) resumes with its best-epoch record, in place."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    import spermhead.training.run as run_module

    @contextmanager
    def older_checkpoints() -> Iterator[None]:
        with monkeypatch.context() as m:
            m.setattr(run_module, "MovableCheckpoint", ModelCheckpoint)
            yield

    kept = {name: fit[0] for name, fit in kept_whole_and_resumed(tmp_path, first_half=older_checkpoints).items()}
    assert kept["whole"] <= 2 and kept["resumed"] == kept["whole"], kept  # the best epoch came before the stop
    assert not [w for w in recwarn if "callbacks used to create the checkpoint" in str(w.message)]


def test_the_latest_checkpoint_holds_its_own_epochs_best_score(tmp_path):
    """The best-epoch callback saves before the latest one, so latest.ckpt (what a resume reads)
    already counts its own epoch: saved the other way round, a resume would not know that the
    epoch it goes on from was the best, and the next one to beat the older best would replace it."""
    import torch

    from spermhead.training.run import build_member, fit_member, read_history

    cfg = quick_config(tmp_path, tmp_path / "run", epochs=3, schedule="none", lr=1e-12, monitor="val_acc")
    x, y = noise_images()
    torch.manual_seed(0)  # first weights whose score rises at the last epoch
    fit_member(cfg, build_member(cfg, 4, x), x, y, x[:8], y[:8], 4, tmp_path / "fold", seed=0, progress=False,
               resume=False)
    scores = [e["val_score"] for e in read_history(tmp_path / "fold")]
    assert scores[-1] > max(scores[:-1]), scores  # the scenario: the last epoch is the best
    states = torch.load(tmp_path / "fold" / "checkpoints" / "latest.ckpt", weights_only=False)["callbacks"]
    best = next(v for v in states.values() if v.get("monitor") == "val_score")
    assert float(best["best_model_score"]) == pytest.approx(scores[-1])


def test_a_fit_resumed_in_a_moved_folder_keeps_its_best_epoch(tmp_path, recwarn):
    """A run folder moved (or copied to another machine) before --resume keeps its record of the
    best epoch: Lightning's own checkpoint dropped it, so the first resumed epoch overwrote
    best.ckpt whatever its score."""
    import torch

    def move(fold: Path) -> Path:
        return fold.rename(tmp_path / "moved")

    kept = {name: fit[0] for name, fit in kept_whole_and_resumed(tmp_path, between=move).items()}
    best = torch.load(tmp_path / "moved" / "checkpoints" / "best.ckpt", weights_only=False)["epoch"]
    assert kept["whole"] <= 2 and kept["resumed"] == kept["whole"] == best + 1, (kept, best)
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]


def test_soft_targets_follow_expert_votes():
    from spermhead.data.samples import Sample, SampleTable
    from spermhead.training.targets import soft_targets

    table = SampleTable("t", [
        Sample("a", Path("a"), "normal", "scian", experts=("normal", "normal", "tapered")),
        Sample("b", Path("b"), "tapered", "scian", experts=("tapered", "tapered", "code4")),
        Sample("c", Path("c"), "tapered", "hushem"),
    ], ["normal", "tapered"])
    full = soft_targets(table, np.arange(3), 1.0)
    np.testing.assert_allclose(full, [[2 / 3, 1 / 3], [0, 1], [0, 1]], atol=1e-6)
    half = soft_targets(table, np.arange(3), 0.5)
    np.testing.assert_allclose(half[0], [5 / 6, 1 / 6], atol=1e-6)


def test_the_final_refit_trains_on_the_targets_the_folds_trained_on(monkeypatch, tmp_path):
    """`--final refit` after folds trained on expert votes (SCIAN's soft labels) trains on them too."""
    from spermhead.data.samples import Sample, SampleTable
    from spermhead.training import run

    table = SampleTable("t", [
        Sample("a", Path("a"), "normal", "scian", experts=("normal", "normal", "tapered")),
        Sample("b", Path("b"), "tapered", "scian", experts=("tapered", "tapered", "tapered")),
    ], ["normal", "tapered"])
    seen = {}

    def fake_fit(cfg, member, x, y, *args, soft=None, **kwargs):
        seen["soft"] = soft
        return member, 1, 1

    monkeypatch.setattr(run, "fit_member", fake_fit)
    cfg = RunConfig()
    cfg.model.name, cfg.model.init, cfg.train.soft_labels = "seed-cnn", "scratch", 1.0
    images = np.zeros((2, 1, 32, 32), dtype=np.uint8)
    result = run.FoldResult(0, [], np.zeros((0, 2)), np.zeros(2, dtype=np.float32), [], 0.0, 3)
    run.refit_all(cfg, table, images, [result], tmp_path, progress=False)
    np.testing.assert_allclose(seen["soft"], [[2 / 3, 1 / 3], [0, 1]], atol=1e-6)


def test_the_final_refits_teachers_train_as_the_folds_teachers_did(monkeypatch, tmp_path):
    """With --distill, the final refit's teachers train the run's epochs, not the refit's own
    (the median kept epoch), as the folds' teachers did; the refit trains on their targets."""
    from spermhead.data.samples import Sample, SampleTable
    from spermhead.training import run

    table = SampleTable("t", [Sample(f"s{i}", Path(f"s{i}"), ("normal", "tapered")[i % 2], "hushem")
                              for i in range(12)], ["normal", "tapered"])
    fits = []

    def fake_fit(cfg, member, x, y, *args, soft=None, **kwargs):
        fits.append((args[3].name, cfg.train.epochs, soft))
        return member, 1, 1

    monkeypatch.setattr(run, "fit_member", fake_fit)
    cfg = RunConfig()
    cfg.model.name, cfg.model.init, cfg.train.distill, cfg.train.epochs = "seed-cnn", "scratch", 0.5, 40
    cfg.preprocess.image_size = 32
    images = np.zeros((12, 1, 32, 32), dtype=np.uint8)
    result = run.FoldResult(0, [], np.zeros((0, 2)), np.zeros(2, dtype=np.float32), [], 0.0, 40, kept_epochs=3)
    run.refit_all(cfg, table, images, [result], tmp_path, progress=False)
    assert [(name, epochs) for name, epochs, _ in fits] == [("teacher0", 40), ("teacher1", 40), ("teacher2", 40),
                                                             ("refit", 3)]
    np.testing.assert_array_equal(fits[-1][2], np.load(tmp_path / "refit" / "distill_targets.npy"))


def test_select_writes_the_model_selection_table(separable, tmp_path, caplog):
    from spermhead.training.select import select_models

    base = quick_config(separable, tmp_path, epochs=3)
    rows, about = select_models(base, ["spermnet", "seed-cnn"], tmp_path / "sel", progress=False)
    assert [r["model"] for r in rows] == ["spermnet", "seed-cnn"]
    assert all(r["parameters"] > 0 and r["seconds_per_epoch"] > 0 for r in rows)
    table = (tmp_path / "sel" / "selection.md").read_text()
    assert "spermnet" in table and "seed-cnn" in table
    assert (tmp_path / "sel" / "selection.csv").is_file() and (tmp_path / "sel" / "selection.html").is_file()
    # the runner-up is compared with the winner on the same test images
    with open(tmp_path / "sel" / "selection.csv", newline="") as fh:
        got = {r["best"]: r for r in csv.DictReader(fh)}
    assert got["True"]["accuracy_vs_best"] == "" and 0 <= float(got["False"]["mcnemar_p_vs_best"]) <= 1
    low, diff, high = (float(got["False"][f"accuracy_vs_best{s}"]) for s in ("_ci_low", "", "_ci_high"))
    assert low <= diff <= high
    assert f"{base.dataset}, 4-fold cross-validation, seed 0; 3 epochs" in table  # what every row shares
    # a second selection into the same folder would replace this table: refused, the table kept
    with pytest.raises(ConfigError, match="holds a selection table already"):
        select_models(base, ["seed-cnn"], tmp_path / "sel", progress=False)
    assert (tmp_path / "sel" / "selection.md").read_text() == table
    with caplog.at_level("WARNING", logger="spermhead"):  # --resume with fewer models: said what is left out
        select_models(base, ["seed-cnn"], tmp_path / "sel", resume=True, progress=False)
    assert "the runs spermnet are not in --models and are left out of the table" in caplog.text
    with pytest.raises(ConfigError, match="--models names spermnet, timm:resnet18 more than once"):
        select_models(base, ["spermnet", "timm:resnet18", "seed-cnn", "timm:resnet18", "spermnet"], tmp_path / "dup",
                      progress=False)
    assert not (tmp_path / "dup").exists()


def test_run_json_names_the_weights_the_folds_started_from(separable, separable_run, tmp_path, caplog, monkeypatch):
    import torch

    weights = separable_run.out / "model" / "model.safetensors"  # a bundle's weights seed another run
    fresh = write_separable(tmp_path / "fresh", n_per_class=5, seed=11)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so "auto" means the CPU here too
    run = train_run(quick_config(fresh, tmp_path / "w", weights=str(weights), epochs=1, cv=2, accelerator="auto"),
                    progress=False)
    record = json.loads((run.out / "run.json").read_text())
    assert record["init"] == {"init": "weights", "weights": str(weights.resolve()),
                              "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert record["device"] == "cpu"  # the device the run used, not the option it was given
    assert not any("--weights file" in n for n in run.metrics["notes"])
    # the same start on the images its bundle trained on has seen every test fold: said before
    # training, and wherever the figures are read
    with caplog.at_level("WARNING", logger="spermhead"):
        leaky = train_run(quick_config(separable, tmp_path / "l", weights=str(weights), epochs=1, cv=2),
                          progress=False)
    said = "comes from a bundle that trained on 80 of these 80 images"
    assert said in caplog.text and any(said in n for n in leaky.metrics["notes"])
    assert json.loads((leaky.out / "run.json").read_text())["init"]["saw"] == 80
    # the same weights copied out of their bundle cannot be checked: said, not passed as clean
    copied = tmp_path / "copied" / "model.safetensors"
    copied.parent.mkdir()
    shutil.copy(weights, copied)
    caplog.clear()
    with caplog.at_level("WARNING", logger="spermhead"):
        blind = train_run(quick_config(separable, tmp_path / "b", weights=str(copied), epochs=1, cv=2),
                          progress=False)
    assert "is a bundle's, without the record of the images it was trained on" in caplog.text
    assert str(copied) in caplog.text
    # another network's weights (ImageNet's, say) saw no lab's heads: nothing to say
    from spermhead.models.registry import build_model
    from spermhead.models.weights import write_safetensors

    plain = write_safetensors(build_model("spermnet", 2, 1, 24).state_dict(), tmp_path / "plain.safetensors")
    caplog.clear()
    with caplog.at_level("WARNING", logger="spermhead"):
        other = train_run(quick_config(separable, tmp_path / "p", weights=str(plain), epochs=1, cv=2), progress=False)
    assert "--weights file" not in caplog.text and "saw" not in json.loads((other.out / "run.json").read_text())["init"]
    assert json.loads((blind.out / "run.json").read_text())["init"]["saw"] is None


def test_a_run_on_synthetic_heads_says_so_wherever_its_figures_are_read(separable_run, tmp_path):
    from spermhead.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", "hushem", n_per_class=6, seed=0)
    run = train_run(quick_config(tmp_path / "data" / "HuSHeM", tmp_path / "run", cv=2, epochs=1), progress=False)
    notes = json.loads((run.out / "metrics.json").read_text())["notes"]
    assert any(n.startswith("these images are synthetic") for n in notes)
    assert "these images are synthetic" in (run.out / "report.html").read_text()
    assert json.loads((run.out / "model" / "model.json").read_text())["run"]["synthetic"] is True
    from spermhead.cli import console, print_run_summary  # and train's own summary

    with console.capture() as said:
        print_run_summary(run.out, run.metrics)
    assert "note: these images are synthetic" in " ".join(said.get().split())
    with console.capture() as plain:
        print_run_summary(separable_run.out, separable_run.metrics)
    assert "synthetic" not in plain.get()
    # photographed heads (no SYNTHETIC.txt) carry no such note
    assert not any("synthetic" in n for n in separable_run.metrics.get("notes", []))
    assert "synthetic" not in json.loads((separable_run.out / "model" / "model.json").read_text())["run"]


def test_select_checks_every_model_name_before_training_any(separable, tmp_path):
    from spermhead.training.select import select_models

    base = quick_config(separable, tmp_path, epochs=3)
    with pytest.raises(ConfigError, match="unknown model 'seed-cnnn'"):
        select_models(base, ["spermnet", "seed-cnnn"], tmp_path / "sel", progress=False)
    assert not (tmp_path / "sel").exists()  # spermnet, first in the list, was not trained


def test_select_writes_only_into_a_folder_of_its_own(separable, separable_run, tmp_path):
    from spermhead.training.select import select_models

    base = quick_config(separable, tmp_path, epochs=1, cv=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".DS_Store").write_bytes(b"a file browser's, no user's")
    (mine / "keep.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="mine: holds keep.txt, which is not a selection's"):
        select_models(base, ["spermnet"], mine, progress=False)
    with pytest.raises(ConfigError, match="is a training run's folder, not a selection's"):
        select_models(base, ["spermnet"], separable_run.out, progress=False, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == [".DS_Store", "keep.txt"]
    (mine / "keep.txt").unlink()  # a file browser's litter alone is no one's: the selection goes there
    select_models(base, ["spermnet"], mine, progress=False)
    assert (mine / "selection.csv").is_file()
    assert not (separable_run.out / "spermnet").exists()


def test_resume_names_a_folder_with_no_run(tmp_path):
    from typer.testing import CliRunner

    from spermhead.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "nothere"), "--resume"])
    assert result.exit_code == 2 and "nothere: no run to resume there" in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_overwrite_with_resume_is_refused_not_taken_as_resume(separable, tmp_path):
    """Both went on with the run, the --overwrite unsaid (bench refused them together already)."""
    from typer.testing import CliRunner

    from spermhead.cli import app

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("an earlier run's")
    result = CliRunner().invoke(app, ["train", str(separable), "--out", str(run), "--overwrite", "--resume"])
    assert result.exit_code == 2 and "--overwrite starts the run again and --resume goes on with it: give one" in " ".join(
        result.output.split()), result.output
    assert (run / "config.yaml").read_text() == "an earlier run's"


def test_resume_alone_takes_a_relative_dataset_and_names_a_damaged_config(separable, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spermhead.cli import app
    from spermhead.config import save_config

    monkeypatch.chdir(tmp_path)
    shutil.copytree(separable, "heads")
    cfg = quick_config(Path("heads"), tmp_path / "run", cv=2, epochs=1)  # saved with the folder made absolute
    (tmp_path / "run").mkdir()
    save_config(cfg, tmp_path / "run" / "config.yaml")
    # the command that started it, plus --resume: the relative folder is the saved absolute one
    result = CliRunner().invoke(app, ["train", "heads", "--out", "run", "--resume", "--no-progress"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.json").is_file()
    # the summary gives both operating points, and says which one the bundle answers at
    assert "accuracy point (the bundle answers here): accuracy" in result.output
    assert "; balanced point: accuracy" in result.output
    # a run copied (or moved) resumes where --out says, not in the folder its config.yaml was started in
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    (tmp_path / "copy" / "metrics.json").unlink()
    original = (tmp_path / "run" / "metrics.json").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["train", "--out", "copy", "--resume", "--no-progress"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "copy" / "metrics.json").is_file()
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns == original
    # an option given with --resume alone is what it asks to change, set against the run's own
    # settings (not the recipe's defaults, nor ./data for the images)
    for option, changed in ((["--epochs", "3"], "train.epochs: 1 -> 3"), (["--seed", "5"], "seed: 0 -> 5")):
        result = CliRunner().invoke(app, ["train", "--out", "run", "--resume", *option], terminal_width=400)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"these differ (saved -> asked): {changed}. Give" in said, said
    recipe = CliRunner().invoke(app, ["train", "--out", "run", "--resume", "--recipe", "seed"], terminal_width=400)
    assert "--recipe seed with run/config.yaml, of recipe default" in " ".join(recipe.output.split())
    # --resume alone reads the run's own file leniently: a key this version does not know (a run
    # saved by another spermhead) stops nothing
    saved = (tmp_path / "run" / "config.yaml").read_text()
    (tmp_path / "run" / "config.yaml").write_text(saved.replace("train:\n", "train:\n  old_setting: 1\n", 1))
    result = CliRunner().invoke(app, ["train", "--out", "run", "--resume", "--no-progress"], terminal_width=200)
    assert result.exit_code == 0, result.output
    (tmp_path / "run" / "config.yaml").write_text("train: [")  # cut short
    result = CliRunner().invoke(app, ["train", "--out", "run", "--resume"])
    assert result.exit_code == 2 and "config.yaml: not readable as YAML" in result.output, result.output


def test_select_command_prints_the_winner_chosen_on_validation(separable, tmp_path):
    from typer.testing import CliRunner

    from spermhead.cli import app

    out = tmp_path / "sel"
    result = CliRunner().invoke(app, ["select", str(separable), "--models", "spermnet,seed-cnn", "--cv", "2",
                                      "--epochs", "1", "--image-size", "32", "--out", str(out), "--no-progress",
                                      "--recipe", "hushem", "--threads", "1", "--accelerator", "cpu"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    # the networks are compared on their own: HuSHeM's fused second opinions are left out
    train_cfg = load_config(out / "spermnet" / "config.yaml").train
    assert (train_cfg.recipe, train_cfg.shape_fusion, train_cfg.pixel_fusion) == ("hushem", 0.0, 0.0)
    assert (train_cfg.num_threads, train_cfg.accelerator) == (1, "cpu")
    assert "chosen on validation" in result.output and result.output.count("★") == 4  # title, winner, and the two vs-★ column heads
    with open(out / "selection.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = max(rows, key=lambda r: (float(r["val_balanced_accuracy"]), float(r["val_accuracy"])))
    assert [r["best"] for r in rows].count("True") == 1 and best["best"] == "True"


def test_select_says_in_the_console_when_the_winner_is_level_with_another(separable, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spermhead.training.select as select_module
    from spermhead.cli import app

    level = {"val_accuracy": 0.9, "val_balanced_accuracy": 0.9, "accuracy": 0.8, "balanced_accuracy": 0.8}
    rows = [{"model": "spermnet", **level}, {"model": "seed-cnn", **level}]
    monkeypatch.setattr(select_module, "select_models", lambda *a, **k: (rows, "about these runs"))
    result = CliRunner().invoke(app, ["select", str(separable), "--models", "spermnet,seed-cnn", "--out",
                                      str(tmp_path / "sel")], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "★ is level with seed-cnn on both criteria and was chosen by its place in the list of models alone" in result.output
    rows[1] = {**rows[1], "val_balanced_accuracy": 0.8}  # no tie, nothing said
    again = CliRunner().invoke(app, ["select", str(separable), "--models", "spermnet,seed-cnn", "--out",
                                     str(tmp_path / "sel2")], terminal_width=300)
    assert again.exit_code == 0 and "level with" not in again.output, again.output


# a small timm model; the same name with timm's weight tag is another row of the same network
TINY_TIMM = "timm:test_efficientnet"
TINY_TAGGED = "timm:test_efficientnet.r160_in1k"
SELECT_QUICK = ["--cv", "2", "--epochs", "1", "--image-size", "24", "--no-progress", "--threads", "1",
                "--accelerator", "cpu"]


def select_cli(*args: str):
    from typer.testing import CliRunner

    from spermhead.cli import app

    return CliRunner().invoke(app, ["select", *args], terminal_width=200)


@pytest.fixture(scope="module")
def weights_selection(separable, tmp_path_factory):
    """One network from random weights and from a weights file (as a user without internet gives
    ImageNet weights), under a settings file: `select`'s start options end to end."""
    from spermhead.models.registry import build_model
    from spermhead.models.weights import write_safetensors

    root = tmp_path_factory.mktemp("select-weights")
    weights = write_safetensors(build_model(TINY_TIMM, 1000, 3, 64).state_dict(), root / "tiny.safetensors")
    (root / "settings.yaml").write_text("train:\n  lr: 0.0123\n")
    out = root / "sel"
    result = select_cli(str(separable), "--models", f"{TINY_TIMM},{TINY_TAGGED}", "--config",
                        str(root / "settings.yaml"), "--weights", f"{TINY_TAGGED}={weights}", "--out", str(out),
                        *SELECT_QUICK)
    assert result.exit_code == 0, result.output
    return out, weights, result.output


def test_select_records_what_each_model_started_from(weights_selection):
    out, weights, _ = weights_selection
    scratch, filed = (load_config(out / tag / "config.yaml") for tag in ("timm-test_efficientnet",
                                                                           "timm-test_efficientnet.r160_in1k"))
    assert (scratch.model.weights, scratch.model.pretrained, scratch.model.init) == (None, False, "scratch")
    assert (filed.model.weights, filed.model.pretrained) == (str(weights.absolute()), False)
    assert scratch.train.lr == filed.train.lr == 0.0123  # the settings file reached every model
    assert json.loads((out / "timm-test_efficientnet" / "run.json").read_text())["init"] == {"init": "scratch"}
    record = json.loads((out / "timm-test_efficientnet.r160_in1k" / "run.json").read_text())["init"]
    assert record == {"init": "weights", "weights": str(weights.resolve()),
                      "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}  # another network's: saw no heads
    # the table's header, so that no row is read as another's start
    md = (out / "selection.md").read_text()
    assert (f"{TINY_TIMM} from random weights, {TINY_TAGGED} from the weights file tiny.safetensors; every "
            "model scored alone") in md
    assert "tiny.safetensors" in (out / "selection.html").read_text()
    said = " ".join(weights_selection[2].split())  # select prints it above its table
    assert f"{TINY_TIMM} from random weights, {TINY_TAGGED} from the weights file tiny.safetensors" in said
    with open(out / "selection.csv", newline="") as fh:  # and in the table a program reads
        starts = {r["model"]: r["start"] for r in csv.DictReader(fh)}
    assert starts == {TINY_TIMM: "random weights", TINY_TAGGED: "the weights file tiny.safetensors"}


def test_select_names_the_model_whose_weights_file_does_not_fit(separable, tmp_path):
    from spermhead.models.registry import build_model
    from spermhead.models.weights import write_safetensors

    other = write_safetensors(build_model("spermnet", 4, 1, 24).state_dict(), tmp_path / "spermnet.safetensors")
    result = select_cli(str(separable), "--models", f"spermnet,{TINY_TIMM}", "--weights", f"{TINY_TIMM}={other}",
                        "--out", str(tmp_path / "sel"), *SELECT_QUICK)
    assert result.exit_code == 2 and f"--models {TINY_TIMM}: " in result.output, result.output
    assert not (tmp_path / "sel").exists()


def test_select_resume_refuses_a_changed_start_before_any_run(separable, weights_selection, tmp_path):
    import shutil

    out = tmp_path / "sel"
    shutil.copytree(weights_selection[0], out)
    first = (out / "timm-test_efficientnet" / "run.json").read_bytes()
    # the second model now without its weights file: the first, unchanged, is not even read back
    result = select_cli(str(separable), "--models", f"{TINY_TIMM},{TINY_TAGGED}", "--config",
                        str(weights_selection[1].parent / "settings.yaml"), "--out", str(out), "--resume",
                        *SELECT_QUICK)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "timm-test_efficientnet.r160_in1k: --resume continues the run" in said, said
    assert "model.weights: " in said and "-> None" in said
    assert "Give select the options the table was made with (the same --config, --init, --weights" in said  # not "--resume alone"
    assert (out / "timm-test_efficientnet" / "run.json").read_bytes() == first


@pytest.mark.parametrize("given,said", [
    (["--weights", "seed-alexnet=<w>"],
     "--weights seed-alexnet=<w>: seed-alexnet is not in --models (spermnet, seed-cnn, timm:resnet18)"),
    (["--weights", "spermnet=nope.safetensors"], "--weights spermnet=nope.safetensors: no such file"),
    (["--weights", "spermnet=<w>", "--weights", "spermnet=other.pth"], "--weights names spermnet twice"),
    (["--weights", "spermnet"], "--weights spermnet: give MODEL=FILE"),
    (["--pretrained"], "--pretrained: spermnet, seed-cnn have no pretrained weights"),
    (["--init", "synthetic", "--pretrained"], "--init synthetic and --pretrained each give every model its start; give one"),
    (["--init", "scratch", "--pretrained"], "--init scratch and --pretrained each give every model its start; give one"),
    (["--init", "auto"], "--init 'auto': scratch or synthetic"),
    (["--model-option", "seed-alexnet:dense=[8]"],
     "--model-option seed-alexnet:...: seed-alexnet is not in --models (spermnet, seed-cnn, timm:resnet18)"),
    (["--model-option", "spermnet=3"], "--model-option spermnet=3: give MODEL:KEY=VALUE"),
    (["--model-option", "timm:resnet18=3"], "(for timm:resnet18, give timm:resnet18:KEY=VALUE)"),
    # an option the model does not take, named where it came from
    (["--model-option", "seed-cnn:width=8"], "(options from --model-option seed-cnn:width)"),
])
def test_select_refuses_a_start_it_cannot_give_before_training(separable, tmp_path, given, said):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # never read: every refusal comes first
    given = [g.replace("<w>", str(weights)) for g in given]
    result = select_cli(str(separable), "--models", "spermnet,seed-cnn,timm:resnet18", *given, "--out", str(tmp_path / "sel"),
                        *SELECT_QUICK)
    assert result.exit_code == 2 and said.replace("<w>", str(weights)) in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1  # one line
    assert not (tmp_path / "sel").exists()


def test_select_names_a_config_option_another_model_does_not_take(separable, tmp_path):
    from spermhead.training.select import select_models

    base = quick_config(separable, tmp_path / "unused")
    base.model.kwargs = {"width": 8}  # from a spermnet run's config: every model gets it
    with pytest.raises(ConfigError, match=r"--models seed-cnn: .*width.*\(options from model.kwargs width of the "
                                          r"--config settings, which go to every model\)"):
        select_models(base, ["spermnet", "seed-cnn"], tmp_path / "sel", progress=False)
    assert not (tmp_path / "sel").exists()
    # an option the model does take is not blamed beside the one it does not
    with pytest.raises(ConfigError, match=r"has no option bogus; .*\(options from --model-option spermnet:bogus\)$"):
        select_models(base, ["spermnet"], tmp_path / "sel", model_options={"spermnet": {"bogus": 1}}, progress=False)


def test_select_pretrained_starts_every_timm_model_from_its_hub_weights(separable, tmp_path, monkeypatch):
    import timm.models

    from spermhead.models import weights

    loaded = []  # the hub is out of reach here: its loader only counts the calls
    monkeypatch.setattr(weights, "HUB_HOST", "hub.invalid")
    monkeypatch.setattr(timm.models, "load_pretrained", lambda model, **kw: loaded.append(model.pretrained_cfg))
    out = tmp_path / "sel"
    result = select_cli(str(separable), "--models", TINY_TIMM, "--pretrained", "--out", str(out), *SELECT_QUICK)
    assert result.exit_code == 0, result.output
    assert loaded and all(cfg["architecture"] == "test_efficientnet" for cfg in loaded)
    assert load_config(out / "timm-test_efficientnet" / "config.yaml").model.pretrained
    record = json.loads((out / "timm-test_efficientnet" / "run.json").read_text())["init"]
    assert record == {"init": "pretrained", "model": TINY_TIMM}
    assert "every model from its pretrained (hub) weights and scored alone" in (out / "selection.md").read_text()


def test_select_init_synthetic_starts_each_model_from_a_source_of_its_own(separable, weights_selection, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "small.yaml").write_text("model:\n  init_per_class: 4\n  init_epochs: 1\n")
    weights, out = weights_selection[1], tmp_path / "sel"
    result = select_cli(str(separable), "--models", f"spermnet,{TINY_TIMM},{TINY_TAGGED}", "--init", "synthetic",
                        "--weights", f"{TINY_TAGGED}={weights}", "--config", str(tmp_path / "small.yaml"),
                        "--out", str(out), *SELECT_QUICK)
    assert result.exit_code == 0, result.output
    starts = {tag: json.loads((out / tag / "start.json").read_text())
              for tag in ("spermnet", "timm-test_efficientnet", "timm-test_efficientnet.r160_in1k")}
    sources = [starts[tag]["weights"] for tag in ("spermnet", "timm-test_efficientnet")]
    assert [starts[tag]["init"] for tag in starts] == ["synthetic", "synthetic", "weights"]
    # one source per architecture, each trained for it: a network never starts from another's
    assert len(set(sources)) == 2 and all(Path(s).parent == tmp_path / "cache" / "synthetic-init" for s in sources)
    assert starts["timm-test_efficientnet.r160_in1k"]["weights"] == str(weights.resolve())  # its file wins
    assert load_config(out / "spermnet" / "config.yaml").model.init == "synthetic"
    assert (f"spermnet and {TINY_TIMM} from a source model trained on synthetic heads, {TINY_TAGGED} from the "
            "weights file tiny.safetensors") in (out / "selection.md").read_text()


def test_select_gives_one_model_its_own_options(separable, tmp_path):
    from spermhead.models.registry import build_model, count_parameters

    out = tmp_path / "sel"
    result = select_cli(str(separable), "--models", f"spermnet,{TINY_TIMM},{TINY_TAGGED}", "--model-option",
                        "spermnet:width=8", "--model-option", f"{TINY_TAGGED}:freeze_backbone=true",
                        "--out", str(out), *SELECT_QUICK)
    assert result.exit_code == 0, result.output
    kwargs = {tag: load_config(out / tag / "config.yaml").model.kwargs
              for tag in ("spermnet", "timm-test_efficientnet", "timm-test_efficientnet.r160_in1k")}
    assert kwargs["spermnet"]["width"] == 8 and not kwargs["timm-test_efficientnet"].get("freeze_backbone")
    assert kwargs["timm-test_efficientnet.r160_in1k"]["freeze_backbone"] is True
    assert f"{TINY_TIMM} from random weights, {TINY_TAGGED} from random weights, backbone frozen" in \
        (out / "selection.md").read_text()
    with open(out / "selection.csv", newline="") as fh:  # each row counts the network it trained
        params = {r["model"]: int(r["parameters"]) for r in csv.DictReader(fh)}
    narrow = count_parameters(build_model("spermnet", 4, 1, 24, width=8))
    assert params["spermnet"] == narrow < count_parameters(build_model("spermnet", 4, 1, 24))


def test_select_model_options_go_over_the_config_files(separable, tmp_path, monkeypatch):
    from spermhead.training import select

    class Stop(Exception):
        pass

    trained = []

    def first_run(cfg, **_):  # what the first model would train with, and no training
        trained.append(cfg)
        raise Stop

    monkeypatch.setattr(select, "train_run", first_run)
    base = build_run_config(str(separable), str(tmp_path / "sel"), cv=2, epochs=1, image_size=24)
    base.model.kwargs = {"width": 16, "depths": [1, 1, 1, 1]}  # a config file's, to every model
    with pytest.raises(Stop):
        select.select_models(base, ["spermnet"], tmp_path / "sel", model_options={"spermnet": {"width": 8}},
                             progress=False)
    assert trained[0].model.kwargs == {"width": 8, "depths": [1, 1, 1, 1]}
    assert base.model.kwargs == {"width": 16, "depths": [1, 1, 1, 1]}  # the base is left as it was


def test_select_model_options_read_as_values():
    from spermhead.training.select import parse_model_options

    assert parse_model_options(["timm:resnet18:drop_path_rate=0.1", "spermnet:depths=[1, 1, 1, 1]",
                                "seed-resnet50:freeze_backbone=false", "spermnet:width=32"]) == {
        "timm:resnet18": {"drop_path_rate": 0.1}, "spermnet": {"depths": [1, 1, 1, 1], "width": 32},
        "seed-resnet50": {"freeze_backbone": False}}
    for bad in ("width=32", "spermnet:=3", "spermnet:width", ":width=3", "spermnet:width=", "spermnet:width= "):
        with pytest.raises(ConfigError, match="give MODEL:KEY=VALUE"):
            parse_model_options([bad])
    with pytest.raises(ConfigError, match="spermnet:drop_rate=0.3: drop_rate is not a model option; it is set by "
                                          "model.drop_rate in a config file"):
        parse_model_options(["spermnet:drop_rate=0.3"])
    with pytest.raises(ConfigError, match="names spermnet:width twice"):
        parse_model_options(["spermnet:width=8", "spermnet:width=16"])


@pytest.mark.parametrize("init,file_init,kept", [
    ("synthetic", "synthetic", True),  # a train --init synthetic run's file, under select's same start
    ("synthetic", "scratch", False), ("scratch", "synthetic", False), ("scratch", "scratch", True),
    ("synthetic", "auto", True),
])
def test_select_keeps_a_files_epochs_only_with_its_own_start(init, file_init, kept):
    from spermhead.training.select import select_settings

    layered, dropped, _ = select_settings({"model": {"init": file_init}, "train": {"epochs": 20}}, init)
    assert layered["model"]["init"] == init
    assert (layered["train"].get("epochs") == 20) is kept
    assert dropped == ([] if kept else [f"model.init {file_init}", "train.epochs 20"])


def test_select_says_a_seed_backbone_from_a_synthetic_source_trains_its_head_alone(tmp_path):
    from spermhead.config import ModelConfig
    from spermhead.models.registry import build_model
    from spermhead.models.weights import write_safetensors
    from spermhead.training.select import start_text

    assert start_text(ModelConfig(name="seed-resnet50", init="synthetic")) == \
        "a source model trained on synthetic heads, backbone frozen"
    assert start_text(ModelConfig(name="spermnet", init="synthetic")) == "a source model trained on synthetic heads"
    # null in a file leaves it to the model, which freezes on a file start
    assert start_text(ModelConfig(name="seed-resnet50", init="synthetic", kwargs={"freeze_backbone": None})) == \
        "a source model trained on synthetic heads, backbone frozen"
    assert start_text(ModelConfig(name="seed-resnet50", init="synthetic", kwargs={"freeze_backbone": False})) == \
        "a source model trained on synthetic heads"
    # as the run then builds it: the source is a file start, and the seed's backbones freeze on one
    source = write_safetensors(build_model("seed-resnet50", 4, 1, 32).state_dict(), tmp_path / "source.safetensors")
    assert build_model("seed-resnet50", 4, 1, 32, weights=source).backbone_frozen


def test_select_config_applies_to_every_model_under_the_options(separable, tmp_path, monkeypatch):
    from spermhead.training import select

    asked = {}
    monkeypatch.setattr(select, "select_models", lambda base, names, out, **kw: (asked.update(base=base), ([], ""))[1])
    (tmp_path / "s.yaml").write_text(f"dataset: {separable}\nmodel:\n  init: synthetic\n  weights: w.pth\n"
                                     "train:\n  lr: 0.0123\n  epochs: 5\n  shape_fusion: 0.3\n"
                                     "environment:\n  python: 2.7.0\n")
    result = select_cli("--config", str(tmp_path / "s.yaml"), "--models", "spermnet,seed-cnn", "--epochs", "2",
                        "--out", str(tmp_path / "sel"))
    assert result.exit_code == 0, result.output
    base = asked["base"]
    assert base.dataset == str(separable) and base.train.lr == 0.0123
    assert base.train.epochs == 2  # the option over the file
    # the file's fusion over select's none; its start fits one model, not the list: select's own
    assert (base.train.shape_fusion, base.train.pixel_fusion) == (0.3, 0.0)
    assert (base.model.init, base.model.weights) == ("scratch", None)
    said = " ".join(result.output.split())
    assert "s.yaml was written with other versions (python 2.7.0 ->" in said
    assert "s.yaml sets model.init synthetic, model.weights w.pth, train.epochs 5: left out" in said
    # without --epochs, a start's epochs go with it: from random weights, the recipe's from-scratch epochs
    result = select_cli("--config", str(tmp_path / "s.yaml"), "--models", "spermnet,seed-cnn", "--out",
                        str(tmp_path / "sel"))
    assert result.exit_code == 0 and asked["base"].train.epochs == build_run_config(
        str(separable), "x", init="scratch").train.epochs != 5, result.output
    assert "s.yaml sets train.shape_fusion 0.3: every model's answers are fused" in said


def test_selection_header_says_each_start_and_the_fusion():
    from spermhead.training.select import selection_about

    base = build_run_config("hushem", "unused", cv=2, shape_fusion=0.3, pixel_fusion=0.0)
    about = selection_about(base, synthetic=False, fixed_split=False,
                            starts={"a": "random weights", "b": "the weights file w.safetensors", "c": "random weights"})
    assert "; a and c from random weights, b from the weights file w.safetensors; every model scored as fused " \
           "answers (the network 0.7 + head-profile model 0.3); validation" in about
    assert " px gray" in about and "validation: a part carved from each fold's training side" in about
    # --variants trains other colours than the base's, and with no validation part the test figures choose
    about = selection_about(build_run_config("hushem", "unused", cv=2, image_size=64), synthetic=False,
                            fixed_split=False, variants=True)
    assert "64 px each variant's colour and L2 (its row)" in about and " gray" not in about
    unvalidated = build_run_config("hushem", "unused", cv=2)
    unvalidated.train.val_fraction = 0.0
    assert "validation: none (val_fraction 0): ★ is chosen on the test figures." in selection_about(
        unvalidated, synthetic=False, fixed_split=False)
    # a random or folders split brings its own validation part, whatever val_fraction says
    split = build_run_config("hushem", "unused", split="60/30/10")
    split.train.val_fraction = 0.0
    assert "validation: the split's validation part." in selection_about(split, synthetic=False, fixed_split=False)


def test_select_refuses_an_empty_list_of_models(separable, tmp_path):
    from typer.testing import CliRunner

    from spermhead.cli import app

    for models in ("", ","):
        result = CliRunner().invoke(app, ["select", str(separable), "--models", models, "--out", str(tmp_path / "s")])
        assert result.exit_code == 2 and "--models names no model" in result.output, result.output
    assert not (tmp_path / "s").exists()  # nothing written that would block the next try


def test_a_start_says_when_only_the_dense_head_trains():
    """The seed's backbones are frozen from pretrained weights (a linear probe, more or less), timm's are
    fine-tuned: two protocols that a table of starts must not show as one."""
    from spermhead.config import ModelConfig
    from spermhead.training.select import start_text

    assert start_text(ModelConfig(name="seed-resnet50", weights="/w/r50.safetensors")) == \
        "the weights file r50.safetensors, backbone frozen"
    assert start_text(ModelConfig(name="seed-efficientnet-b7", pretrained=True)) == \
        "its pretrained (hub) weights, backbone frozen"
    assert start_text(ModelConfig(name="seed-resnet50", weights="r50.pth", kwargs={"freeze_backbone": False})) == \
        "the weights file r50.pth"
    assert start_text(ModelConfig(name="timm:resnet18", weights="r18.pth")) == "the weights file r18.pth"
    assert start_text(ModelConfig(name="spermnet", weights="s.safetensors")) == "the weights file s.safetensors"
    # an explicit freeze_backbone wins, whatever the start
    assert start_text(ModelConfig(name="timm:resnet18", weights="r18.pth", kwargs={"freeze_backbone": True})) == \
        "the weights file r18.pth, backbone frozen"
    assert start_text(ModelConfig(name="seed-resnet50", kwargs={"freeze_backbone": True})) == \
        "random weights, backbone frozen"
    assert start_text(ModelConfig(name="seed-resnet50")) == "random weights"


def test_progress_names_each_fit_above_its_bar(separable, tmp_path, capsys):
    train_run(quick_config(separable, tmp_path / "p", cv=2, epochs=2, refit_val=True, monitor="last"), progress=True)
    said = capsys.readouterr().out
    assert "fold 1 of 2: 2 epochs on 34 images, watching 6 validation images" in said, said
    assert "fold 2 of 2, again on training + validation: 2 epochs on 40 images" in said, said
    assert "Epoch" in said and "v_num" not in said  # Lightning's bar, less its logger's version number
    assert "Epoch 2/2" in said and "Epoch 0/" not in said  # counted from 1, as a user counts


def test_seed_ensemble_per_fold(separable, tmp_path):
    result = train_run(quick_config(separable, tmp_path / "ens", cv=2, epochs=2, members=2), progress=False)
    assert [len(r.members) for r in result.folds] == [2, 2]
    bundle = load_bundle(result.out / "model")
    assert bundle.meta.members == 4
    pred = Predictions.read_csv(result.out / "predictions.csv")
    assert len(pred) == 80
    # a resumed run reads each finished fold's time back per member, as it first gave it
    again = train_run(load_config(result.out / "config.yaml"), resume=True, progress=False)
    assert [r.seconds for r in again.folds] == pytest.approx([r.seconds for r in result.folds])
    assert again.timing["seconds_per_epoch"] == pytest.approx(result.timing["seconds_per_epoch"])


def test_the_plateau_schedule_trains_fits_with_no_validation_part(separable, tmp_path):
    """A refit on training + validation, and the final refit, have no validation loss to watch:
    the learning rate then follows the training loss instead of failing the run."""
    result = train_run(quick_config(separable, tmp_path / "plateau", cv=2, epochs=2, schedule="plateau",
                                    refit_val=True, final_model="refit"), progress=False)
    assert load_bundle(result.out / "model").meta.kind == "refit"
    assert all(json.loads((result.out / "folds" / f"fold{k}" / "done.json").read_text())["refit_val"] for k in (0, 1))


def test_resume_refuses_folds_split_otherwise(separable, tmp_path):
    """A fold finished by a version that split it otherwise (or on other images) is not read back
    into a result split this way."""
    result = train_run(quick_config(separable, tmp_path / "r", cv=2, epochs=1), progress=False)
    cfg = load_config(result.out / "config.yaml")
    done = result.out / "folds" / "fold0" / "done.json"
    info = json.loads(done.read_text())
    info["val_labels"] = info["val_labels"][1:]  # as an older carving would have left it
    done.write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="fold0: this fold was split otherwise when it was trained"):
        train_run(cfg, resume=True, progress=False)


def test_resume_names_a_damaged_fold_record_and_leaves_no_partial_one(separable, tmp_path):
    """A fold's records are written whole or not at all; one damaged since (a full disk, a copy
    cut short) is named with the way out, not met with a JSON traceback."""
    result = train_run(quick_config(separable, tmp_path / "r", cv=2, epochs=1), progress=False)
    cfg = load_config(result.out / "config.yaml")
    fold = result.out / "folds" / "fold0"
    assert not list(fold.glob("*.partial"))
    for name in ("done.json", "split.json"):
        (fold / name).write_text('{"bias": [0.1, ')  # cut short
        with pytest.raises(ConfigError, match=rf"fold0[/\\]{name}: --resume cannot read this fold's record .*"
                                              r"delete .*fold0 to train that fold again"):
            train_run(cfg, resume=True, progress=False)
        (fold / "done.json").unlink(missing_ok=True)  # then the fold's split record is the one read


def test_resume_refuses_a_fold_interrupted_on_another_split(separable, tmp_path):
    """A fold stopped mid-fit has no done.json yet: the split it began on is checked all the same,
    before its checkpoint is trained on further."""
    result = train_run(quick_config(separable, tmp_path / "r", cv=2, epochs=1), progress=False)
    cfg = load_config(result.out / "config.yaml")
    fold = result.out / "folds" / "fold1"
    (fold / "done.json").unlink()  # as if stopped mid-fit
    assert json.loads((fold / "split.json").read_text())["split"]
    (fold / "split.json").write_text(json.dumps({"split": "another"}))
    with pytest.raises(ConfigError, match="fold1: this fold began training on another split"):
        train_run(cfg, resume=True, progress=False)


def test_resume_refuses_folds_whose_images_were_renamed(separable, tmp_path):
    """The same counts and labels in every part, other images: the saved test answers would go
    to other images' ids."""
    data = tmp_path / "data"
    shutil.copytree(separable, data)
    result = train_run(quick_config(data, tmp_path / "r", cv=2, epochs=1), progress=False)
    first = sorted((data / CLASSES[0]).iterdir())[0]
    first.rename(first.with_name("zz_" + first.name))  # last of its class now: the split by position is unchanged
    with pytest.raises(ConfigError, match="this fold was split otherwise.*but other ones: renamed"):
        train_run(load_config(result.out / "config.yaml"), resume=True, progress=False)


def test_resume_refuses_folds_whose_images_were_replaced_under_their_names(separable, tmp_path):
    """The same names and labels, other pixels: the saved test answers are the old images'."""
    data = tmp_path / "data"
    shutil.copytree(separable, data)
    result = train_run(quick_config(data, tmp_path / "r", cv=2, epochs=1), progress=False)
    first = sorted((data / CLASSES[0]).iterdir())[0]
    other = sorted((data / CLASSES[1]).iterdir())[0]
    first.write_bytes(other.read_bytes())  # same suffix: the fixture writes one format
    with pytest.raises(ConfigError, match="this fold was split otherwise.*but other ones: renamed, replaced"):
        train_run(load_config(result.out / "config.yaml"), resume=True, progress=False)


def test_final_refit_outside_cv_is_refused_not_ignored(separable, tmp_path):
    """It was ignored under a fixed split while config.yaml said refit."""
    with pytest.raises(ConfigError, match="--final refit .* is for CV; this run's protocol is a random split"):
        train_run(quick_config(separable, tmp_path / "r", cv=None, split="60/20/20", final_model="refit"),
                  progress=False)
    assert not (tmp_path / "r").exists()


def test_choosing_on_validation_with_no_validation_part_is_refused_not_ignored(separable, tmp_path):
    """val_fraction 0 with --monitor val_acc kept each fit's last epoch while config.yaml said val_acc."""
    for options, said in (({"monitor": "val_acc"}, "--monitor val_acc choose"),
                          ({"patience": 5}, "--patience choose"),
                          ({"prior_strength": "val"}, "--prior-strength val choose")):
        with pytest.raises(ConfigError, match=f"{said} on each fold's validation part, and val_fraction 0 carves none"):
            train_run(quick_config(separable, tmp_path / "r", cv=2, val_fraction=0.0, **options), progress=False)
    assert not (tmp_path / "r").exists()


def test_a_diverged_fold_stops_the_run_naming_it_before_it_is_marked_done(separable, tmp_path, monkeypatch):
    """A fit whose answers are NaN was scored as class 0 on validation, marked done, and stopped the
    run at its end with a traceback that --resume met again."""
    from spermhead.training import run as run_module

    monkeypatch.setattr(run_module.FittedSide, "probs", lambda self, cfg, images, idx, shape: np.full((len(idx), 2),
                                                                                                      np.nan))
    with pytest.raises(SpermheadError, match="fold 0: training diverged .* lower --lr"):
        train_run(quick_config(separable, tmp_path / "r", cv=2, epochs=1), progress=False)
    assert not (tmp_path / "r" / "folds" / "fold0" / "done.json").exists()


def test_seed_recipe_reproduces_the_report_settings():
    cfg = build_run_config("hushem", "unused", recipe="seed", model="seed-alexnet")
    t = cfg.train
    assert (t.optimizer, t.lr, t.schedule, t.early_stopping_patience, t.monitor) == ("adam", 1e-3, "plateau", 20, "val_acc")
    assert (t.balance, t.balance_per_class, t.augment) == ("offline", 6400, "seed")
    assert (cfg.preprocess.image_size, cfg.preprocess.color) == (32, "rgb")
    # Explicit options still win over the recipe.
    assert build_run_config("hushem", "unused", recipe="seed", epochs=7).train.epochs == 7
    with pytest.raises(ConfigError, match="unknown recipe"):
        build_run_config("hushem", "unused", recipe="nope")


def test_short_recipe_epochs_follow_the_start():
    # the recipe's short schedule is for the synthetic start; from random weights it is too short
    assert build_run_config("hushem", "unused").train.epochs == 40  # session 21
    assert build_run_config("hushem", "unused", init="scratch").train.epochs == 150
    assert build_run_config("hushem", "unused", model="seed-cnn").train.epochs == 150  # auto -> scratch
    assert build_run_config("hushem", "unused", model="seed-cnn", epochs=7).train.epochs == 7
    assert build_run_config("hushem", "unused", recipe="seed").train.epochs == 100  # the seed's own
    assert build_run_config("scian-ta", "unused").train.epochs == 40
    assert build_run_config("scian-ta", "unused", init="scratch").train.epochs == 100
    assert build_run_config("scian-pa", "unused").train.epochs == 40  # session 10, fresh CV seeds 7-14
    assert build_run_config("scian-pa", "unused", init="scratch").train.epochs == 60
    # a folder from the synthetic start: the natural prior and 40 epochs (session 11); from random
    # weights, the sampler and 150; options given win
    folder = build_run_config("my-folder", "unused").train
    assert (folder.balance, folder.epochs) == ("none", 40)
    for scratch in (dict(init="scratch"), dict(model="seed-cnn")):
        folder = build_run_config("my-folder", "unused", **scratch).train
        assert (folder.balance, folder.epochs) == ("sampler", 150)
    folder = build_run_config("my-folder", "unused", epochs=9, balance="loss").train
    assert (folder.balance, folder.epochs) == ("loss", 9)
    assert build_run_config("my-folder", "unused", epochs=9).train.balance == "none"
    assert build_run_config("my-folder", "unused", recipe="seed").train.epochs == 100
    assert build_run_config("my-folder", "unused", recipe="hushem").train.balance == "sampler"


def test_tiny_training_side_still_gets_a_stratified_validation_part():
    from spermhead.training.protocols import _carve_val

    y = np.repeat(np.arange(4), 5)  # 20 images, 4 classes: 15% would be 3 < 4 classes
    train, val = _carve_val(np.arange(20), y, 0.15, seed=0)
    assert sorted(set(y[val].tolist())) == [0, 1, 2, 3]
    assert not set(train) & set(val) and len(train) + len(val) == 20


def test_a_validation_part_never_takes_a_class_s_every_training_image(caplog):
    from spermhead.training.protocols import _carve_val

    # 20 normal heads and a pair of twin tapered ones: pulled into validation with its twin, or
    # the lone third image drawn there, the class would never be trained on in that fold
    for n_small, twins, fraction in [(2, [[20, 21]], 0.5), (3, [[20, 21, 22]], 0.2), (1, [], 0.2)]:
        y = np.array([0] * 20 + [1] * n_small)
        for seed in range(40):
            train, val = _carve_val(np.arange(len(y)), y, fraction, seed, twins, ["normal", "tapered"])
            assert 1 in y[train], (n_small, twins, seed)
            assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
            for g in twins:  # twins still on one side
                assert set(g) <= set(train.tolist()) or set(g) <= set(val.tolist())
    assert "every training image of class(es) tapered" in caplog.text
    # the moved image was validation's only one: another class's image stands in, so the fold
    # still has a validation part
    y = np.array([0, 0, 0, 1])
    for seed in range(20):
        train, val = _carve_val(np.arange(4), y, 0.2, seed, [], ["normal", "tapered"])
        assert 1 in y[train] and len(val) == 1 and len(train) == 3, seed


def test_a_stand_in_for_validation_never_takes_a_class_s_last_training_head(caplog):
    """Where the carve leaves validation empty, its stand-in comes from a class that can spare a
    head (twins and all); with one head per class in training the fold goes without, and says so."""
    from spermhead.training.protocols import _carve_val

    # one image per class (2-fold CV of 2 images per class): nothing can be spared
    y = np.array([0, 1])
    for seed in range(10):
        train, val = _carve_val(np.arange(2), y, 0.2, seed, [], ["normal", "tapered"])
        assert sorted(y[train].tolist()) == [0, 1] and len(val) == 0, seed
    assert "no training image can be spared" in caplog.text
    # the larger class is one head photographed twice: the stand-in is the other class's spare
    y = np.array([0, 0, 1, 1, 1, 2])
    for seed in range(20):
        train, val = _carve_val(np.arange(6), y, 0.01, seed, [[2, 3, 4]], ["a", "b", "c"])
        assert set(y[train].tolist()) == {0, 1, 2} and len(val) == 1 and val[0] in (0, 1), (seed, val)
    # a pick pulled back to its twin's training side left validation empty: a stand-in fills it
    y = np.array([0] * 6 + [1] * 6)
    emptied = 0
    for seed in range(20):
        train, val = _carve_val(np.arange(12), y, 0.01, seed, [[0, 1, 2, 3, 4, 5, 6]], ["a", "b"])
        assert len(val) > 0 and set(y[train].tolist()) == {0, 1}, seed
        emptied += 0 not in val.tolist()
    assert emptied


def test_a_random_split_refuses_to_train_without_a_class_its_twins_took(tmp_path):
    """3 images of a class, two of them one head: kept together, they can leave the training part
    without the class. Refused by name, as CV refuses it, rather than trained without it."""
    from spermhead.training.protocols import _random_split

    y = np.array([0] * 10 + [1] * 10 + [2] * 3)
    refused = 0
    for seed in range(20):
        try:
            fold = _random_split(y, (0.6, 0.3, 0.1), seed, [[20, 21]], ["normal", "tapered", "pyriform"])
        except ConfigError as exc:
            refused += 1
            assert "trains on no 'pyriform' image: its 3 images show 2 distinct heads" in str(exc)
            continue
        assert set(y[fold.train].tolist()) == {0, 1, 2} and len(fold.test), seed
    assert 0 < refused < 20  # the scenario happens on some seeds, not all


def test_refit_bundle_is_one_model_trained_on_all_data(separable, tmp_path):
    result = train_run(quick_config(separable, tmp_path / "refit", cv=2, epochs=12, final_model="refit",
                                    monitor="val_acc", patience=2), progress=False)
    bundle = load_bundle(result.out / "model")
    assert (bundle.meta.kind, bundle.meta.members) == ("refit", 1)
    assert len(Predictions.read_csv(result.out / "predictions.csv")) == 80  # CV scores stay out-of-fold
    # it trains for as many epochs as the folds' kept checkpoints needed, not as the folds ran on
    done = [json.loads((result.out / "folds" / f"fold{k}" / "done.json").read_text()) for k in (0, 1)]
    assert any(d["kept_epochs"] < d["epochs"] for d in done)
    assert len(read_history(result.out / "refit")) == int(np.median([d["kept_epochs"] for d in done]))


def test_ema_keeps_the_averaged_weights(tmp_path):
    """With EMA the fold keeps the running average: a decay near 1 barely leaves the first step."""
    import torch

    from spermhead.models.registry import build_model
    from spermhead.training.run import fit_member

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 1, 24, 24), dtype=np.uint8)
    y = np.arange(32) % 4

    def drift(ema: float) -> float:
        torch.manual_seed(0)
        net = build_model("spermnet", num_classes=4, in_chans=1, image_size=24, width=8)
        start = {k: v.clone() for k, v in net.state_dict().items() if k.endswith("weight")}
        cfg = quick_config(tmp_path, tmp_path / f"ema{ema}", epochs=8, ema=ema, balance="none")
        out, _, _ = fit_member(cfg, net, x, y, x[:8], y[:8], 4, tmp_path / f"fold{ema}", seed=0, progress=False,
                               resume=False)
        state = out.state_dict()
        return max(float((state[k] - v).abs().max()) for k, v in start.items())

    assert drift(0.9999999) < 0.4 * drift(0.0)


def test_width_option_reaches_the_model(separable, tmp_path):
    assert build_run_config("hushem", "unused", width=32).model.kwargs == {"width": 32}
    result = train_run(quick_config(separable, tmp_path / "w8", cv=2, epochs=1, width=8), progress=False)
    assert load_bundle(result.out / "model").meta.model_kwargs["widths"][0] == 8


def test_background_mask_gets_its_own_source_and_default_sources_keep_their_cache_name():
    from spermhead.training.synthetic_init import source_path, source_settings

    keep = build_run_config("hushem", "unused")
    mask = build_run_config("hushem", "unused", background="mask")
    # the option came after sources were cached: at its default it is not part of their name
    assert "background" not in source_settings(keep)["preprocess"]
    assert source_settings(mask)["preprocess"]["background"] == "mask"
    assert source_path(keep) != source_path(mask)
    with pytest.raises(ConfigError, match="--background"):
        build_run_config("hushem", "unused", background="blur")


def test_the_source_models_name_follows_the_training_settings_it_was_trained_with():
    """Trained with the run's optimiser, learning rate and loss, a source is cached under them: a
    run with other ones does not start from a source it did not ask for. Settings the source does
    not use (fusion, TTA) leave its name alone, as do the recipes, which train at the defaults."""
    from spermhead.training.synthetic_init import source_path, source_settings

    plain = build_run_config("hushem", "unused")
    assert "train" not in source_settings(plain)
    for option in ({"lr": 0.01}, {"optimizer": "sgd"}, {"mixup": 0.2}, {"label_smoothing": 0.0}, {"sam": 0.05},
                   {"batch_size": 16}, {"schedule": "cosine"}, {"l2_conv": 0.01}):
        assert source_path(build_run_config("hushem", "unused", **option)) != source_path(plain), option
    for option in ({"tta": False}, {"shape_fusion": 0.0}, {"refit_val": False}, {"focal": 2.0},
                   {"backbone_lr": 0.3}):
        assert source_path(build_run_config("hushem", "unused", **option)) == source_path(plain), option
    # the thread count changes the source's rounding: a run repeated at its thread count starts
    # from the source it started from, whichever run trained the cache first
    one, two = (build_run_config("hushem", "unused", threads=n, accelerator="cpu") for n in (1, 2))
    assert source_settings(one)["threads"] == 1 and source_path(one) != source_path(two)
    # a model option written two ways is one source: 16 and 16.0; 0 and not given
    cosine = []
    for scale in (16, 16.0, 0, 0.0):
        cosine.append(build_run_config("hushem", "unused"))
        cosine[-1].model.kwargs = {"cosine_scale": scale}
    assert source_path(cosine[0]) == source_path(cosine[1]) != source_path(plain)
    assert source_path(cosine[2]) == source_path(cosine[3]) == source_path(plain)
    # freezing is the run's, when it loads the source: the source itself trains whole either way
    unfrozen = build_run_config("hushem", "unused", model="seed-resnet50")
    unfrozen.model.kwargs = {"freeze_backbone": False}
    assert source_path(unfrozen) == source_path(build_run_config("hushem", "unused", model="seed-resnet50"))


def test_a_source_trained_again_under_its_name_gives_a_fresh_backbone_copy(tmp_path, monkeypatch):
    """Runs whose classes differ from the source's start from a copy without its classifier; that
    copy follows the source's contents, not just its name."""
    import torch
    from safetensors.torch import load_file

    from spermhead.models.weights import write_safetensors
    from spermhead.training.synthetic_init import source_path, synthetic_init_weights

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    cfg = build_run_config("hushem", "unused")
    path = source_path(cfg)
    path.parent.mkdir(parents=True)
    path.with_suffix(".json").write_text(json.dumps({"classes": ["x", "y"], "classifier": ["fc.weight"]}))
    copies = []
    for value in (1.0, 2.0):  # the source, then the same name trained again
        write_safetensors({"conv.weight": torch.full((2, 2), value), "fc.weight": torch.zeros(2, 2)}, path)
        copies.append(synthetic_init_weights(cfg, ["a", "b"]))
        assert set(load_file(str(copies[-1]))) == {"conv.weight"}
        assert float(load_file(str(copies[-1]))["conv.weight"][0, 0]) == value
    assert copies[0] != copies[1] and not copies[0].exists()  # the stale copy is gone
    with pytest.raises(ValueError, match="one metadata entry at most"):  # its bytes would vary by process
        write_safetensors({"w": torch.zeros(1)}, tmp_path / "w.safetensors", metadata={"a": "1", "b": "2"})


def test_a_source_trains_whole_whatever_the_run_freezes(separable, tmp_path, monkeypatch):
    from spermhead.training import run, synthetic_init

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    trained = []

    def fit_member(cfg, member, *args, **kwargs):  # what the source would train, and no training
        trained.append([p.requires_grad for p in member.parameters()])
        return member, None, None

    monkeypatch.setattr(run, "fit_member", fit_member)
    cfg = quick_config(separable, tmp_path / "run", model=TINY_TIMM, init="synthetic", init_per_class=2, init_epochs=1)
    cfg.model.kwargs = {"freeze_backbone": True}  # the run trains its head alone on the source's backbone
    synthetic_init.synthetic_init_weights(cfg, ["a", "b"])
    assert trained and all(trained[0])  # a frozen random backbone would learn nothing


def test_a_focal_run_starts_from_a_source_trained_on_cross_entropy_at_one_rate(separable, tmp_path, monkeypatch):
    from spermhead.training import run, synthetic_init

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    losses = []

    def fit_member(cfg, member, *args, **kwargs):  # the source's settings, and no training
        losses.append((cfg.train.focal, cfg.train.backbone_lr))
        return member, None, None

    monkeypatch.setattr(run, "fit_member", fit_member)
    cfg = quick_config(separable, tmp_path / "run", init="synthetic", init_per_class=2, init_epochs=1, focal=2.0,
                       backbone_lr=0.3)
    synthetic_init.synthetic_init_weights(cfg, ["a", "b"])
    # the source trains from random weights on one rate and cross-entropy; the run's own fits keep theirs
    assert losses == [(0.0, 1.0)] and (cfg.train.focal, cfg.train.backbone_lr) == (2.0, 0.3)


def test_synthetic_init_trains_its_source_once_then_reuses_the_cache(separable, tmp_path, monkeypatch, caplog):
    from safetensors.torch import load_file

    from spermhead.config import load_config
    from spermhead.training.synthetic_init import source_path

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    opts = dict(init="synthetic", init_per_class=4, init_epochs=1, epochs=1, cv=2)
    first = train_run(quick_config(separable, tmp_path / "a", **opts), progress=False)
    # a first run says why it will take minutes longer than the next
    told = [r.getMessage() for r in caplog.records if "synthetic source model" in r.getMessage()]
    assert told == [f"training the synthetic source model for spermnet at these input settings first (4 rendered heads per "
                    f"class, 1 epoch: at the defaults 2.4-20 minutes on 2 cores; once, then cached in "
                    f"{tmp_path / 'cache' / 'synthetic-init'})"]
    caplog.clear()
    init = json.loads((first.out / "run.json").read_text())["init"]
    assert init["init"] == "synthetic" and init["cached"] is False
    source = Path(init["weights"])
    record = json.loads(source.with_suffix(".json").read_text())
    assert record["images"] == 16 and record["settings"]["per_class"] == 4
    # the separable set's classes are the HuSHeM style's, in the same order: the classifier comes too
    assert record["classes"] == CLASSES and source == source_path(load_config(first.out / "config.yaml"))
    weights = load_file(str(source))
    assert set(record["classifier"]) <= set(weights)
    assert "init: synthetic" in (first.out / "config.yaml").read_text().replace("'", "")
    # the report's configuration is config.yaml's (no weights file asked for); the source is named apart
    report = (first.out / "report.html").read_text()
    configuration = report.split("<h2>Configuration</h2>")[1].split("<h2>")[0]
    assert "weights: null" in configuration and "init: synthetic" in configuration
    assert str(source) in report.split("Starting weights")[1].split("<h2>")[0]

    import spermhead.training.run as run_module

    starts = []  # every fold model must be built from the source's weights

    def recording_build_member(cfg, *args, **kwargs):
        starts.append(cfg.model.weights)
        return build_member(cfg, *args, **kwargs)

    build_member = run_module.build_member
    monkeypatch.setattr(run_module, "build_member", recording_build_member)
    second = train_run(quick_config(separable, tmp_path / "b", **opts), progress=False)
    assert json.loads((second.out / "run.json").read_text())["init"]["cached"] is True
    assert not [r for r in caplog.records if "synthetic source model" in r.getMessage()]
    assert starts == [str(source)] * 2  # 2 folds, no source retraining
    monkeypatch.undo()
    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    # a damaged record means an unusable cache: the source is trained again, not trusted
    source.with_suffix(".json").write_text("{not json")
    again = train_run(quick_config(separable, tmp_path / "b2", **opts), progress=False)
    assert json.loads((again.out / "run.json").read_text())["init"]["cached"] is False
    assert json.loads(source.with_suffix(".json").read_text())["classes"] == CLASSES
    # a different class list gets the backbone only
    other = tmp_path / "other"
    for i, name in enumerate(["good", "bad"]):
        (other / name).mkdir(parents=True)
        for j in range(6):
            Image.fromarray(np.full((24, 24), 60 + 120 * i, np.uint8)).save(other / name / f"{j}.png")
    third = train_run(quick_config(other, tmp_path / "c", **opts), progress=False)
    backbone = Path(json.loads((third.out / "run.json").read_text())["init"]["weights"])
    assert re.fullmatch(r"spermnet-[0-9a-f]{16}-backbone-[0-9a-f]{12}\.safetensors", backbone.name)  # the source's contents
    assert not set(record["classifier"]) & set(load_file(str(backbone)))


def test_the_seeds_cnn_starts_from_a_synthetic_source_of_its_own(separable, tmp_path, monkeypatch):
    """--init synthetic trains a source for the model the run uses, here the seed's custom CNN at
    its 32 px, and every fold starts from it: the source's first convolution, not a random one."""
    import torch
    from safetensors.torch import load_file

    import spermhead.training.run as run_module

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    firsts = []

    def recording_fit(cfg, member, *args, **kwargs):
        firsts.append(member[1].features[1].weight.detach().clone())  # before the fold trains it
        return fit_member(cfg, member, *args, **kwargs)

    fit_member = run_module.fit_member
    monkeypatch.setattr(run_module, "fit_member", recording_fit)
    cfg = quick_config(separable, tmp_path / "run", model="seed-cnn", image_size=32, init="synthetic",
                       init_per_class=4, init_epochs=1, epochs=1, cv=2)
    train_run(cfg, progress=False)
    source = Path(json.loads((tmp_path / "run" / "start.json").read_text())["weights"])
    assert source.name.startswith("seed-cnn-")
    conv = next(v for k, v in load_file(str(source)).items() if k.endswith("features.1.weight"))
    # the source's own fit (from random weights), then the 2 folds from what it learnt
    assert len(firsts) == 3 and not torch.equal(firsts[0], conv)
    assert all(torch.equal(f, conv) for f in firsts[1:])


def test_synthetic_init_names_an_unwritable_cache_before_training(separable, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPERMHEAD_CACHE", str(blocker / "cache"))
    with pytest.raises(ConfigError, match=r"a-file/cache/synthetic-init: cannot write .*SPERMHEAD_CACHE"):
        train_run(quick_config(separable, tmp_path / "run", init="synthetic", init_per_class=4, init_epochs=1),
                  progress=False)


def test_synthetic_init_refuses_conflicting_weights(separable, tmp_path):
    with pytest.raises(ConfigError, match="--init synthetic"):
        quick_config(separable, tmp_path / "x", init="synthetic", weights="w.safetensors")
    with pytest.raises(ConfigError, match="auto, scratch or synthetic"):
        quick_config(separable, tmp_path / "y", init="imagenet")
    with pytest.raises(ConfigError, match="--init scratch starts from random weights"):
        quick_config(separable, tmp_path / "z", init="scratch", weights="w.safetensors")


def test_the_synthetic_source_looks_like_its_set_unless_told():
    from spermhead.training.synthetic_init import source_path, source_style

    assert source_style(build_run_config("scian-pa", "unused")) == "scian"
    combined = build_run_config("combined", "unused")
    assert source_style(combined) == "hushem"
    # a folder takes HuSHeM's look whatever its name, and whether given as a relative or an absolute path
    assert source_style(build_run_config("scian-lookalike", "unused")) == "hushem"
    told = build_run_config("combined", "unused", init_style="scian")
    assert source_style(told) == "scian" and source_path(told) != source_path(combined)  # its own cached file
    with pytest.raises(ConfigError, match="init_style 'pink'"):
        build_run_config("combined", "unused", init_style="pink")


def test_init_auto_means_synthetic_for_the_default_model_only():
    assert build_run_config("hushem", "unused").model.init == "synthetic"
    assert build_run_config("hushem", "unused", model="seed-cnn").model.init == "scratch"
    assert build_run_config("hushem", "unused", weights="w.safetensors").model.init == "scratch"
    assert build_run_config("hushem", "unused", recipe="seed").model.init == "scratch"
    assert build_run_config("hushem", "unused", init="scratch").model.init == "scratch"


def test_balanced_point_divides_out_the_training_prior_unless_told_to_choose():
    from spermhead.training.operating import choose_balanced_bias, prior_bias

    rng = np.random.default_rng(0)
    train = np.repeat([0, 1, 2], [60, 30, 10])
    probs = rng.dirichlet(np.ones(3), 40).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    bias, strength = choose_balanced_bias(probs, labels, train, 3)
    assert strength == 1.0 and np.allclose(bias, prior_bias(train, 3, 1.0))
    assert bias[2] > bias[1] > bias[0]  # the rarest class gains most
    _, chosen = choose_balanced_bias(probs, labels, train, 3, "val")
    assert 0.0 <= chosen <= 1.5
    assert build_run_config("hushem", "unused", prior_strength="0.5").train.prior_strength == 0.5
    assert build_run_config("hushem", "unused", prior_strength="val").train.prior_strength == "val"
    with pytest.raises(ConfigError, match="prior-strength"):
        build_run_config("hushem", "unused", prior_strength="lots")
    with pytest.raises(ConfigError, match="prior-strength -1.0: must be at least 0"):
        build_run_config("hushem", "unused", prior_strength="-1")


def test_each_named_dataset_trains_with_its_bench_recipe_by_default():
    from spermhead.training.bench import BENCHES

    scian = build_run_config("scian-pa", "unused")
    assert (scian.train.augment, scian.train.balance, scian.train.soft_labels, scian.preprocess.scale) == \
        ("light", "none", 0.5, "image")
    # a fold trains again on training + validation only where the learning curve still rose on
    # validation (sessions 12-14)
    assert {name: build_run_config(name, "unused").train.refit_val for name in DATASET_RECIPES} \
        == {"hushem": True, "scian-pa": True, "scian-ta": False, "combined": True}
    assert build_run_config("scian-ta", "unused").train.epochs == 40
    hushem = build_run_config("hushem", "unused")  # chosen and confirmed on fresh CV seeds (RESULTS.md)
    assert (hushem.preprocess.image_size, hushem.train.shape_fusion, hushem.train.pixel_fusion) == (48, 0.3, 0.3)
    folder = build_run_config("my-folder", "unused")
    assert (folder.preprocess.image_size, folder.train.shape_fusion, folder.train.pixel_fusion) == (64, 0.0, 0.0)
    # a folder of HuSHeM-like heads can ask for HuSHeM's recipe, and gets all of it
    like = build_run_config("my-folder", "unused", recipe="hushem")
    assert like.train.recipe == "hushem" and like.preprocess == hushem.preprocess
    assert like.train == replace(hushem.train, recipe="hushem")
    assert build_run_config("my-folder", "unused", recipe="HuSHeM", init="scratch").train.epochs == 150
    assert build_run_config("my-folder", "unused", recipe="scian-pa").preprocess.scale == "image"
    with pytest.raises(ConfigError, match="seed, hushem, scian-pa"):
        build_run_config("my-folder", "unused", recipe="hushem2")
    assert build_run_config("scian-pa", "unused", epochs=7, augment="aligned").train.augment == "aligned"
    assert build_run_config("scian-pa", "unused", recipe="seed").train.augment == "seed"
    for name, spec in BENCHES.items():  # the bench measures exactly what `train NAME` runs
        assert build_run_config(name, "unused").train == build_run_config(name, "unused", **spec.options).train


def test_accelerator_is_checked_before_any_run_directory(separable, tmp_path, monkeypatch):
    import torch

    from spermhead.training.devices import resolve_accelerator

    with pytest.raises(ConfigError, match="--accelerator 'tpu'"):
        quick_config(separable, tmp_path / "t", accelerator="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_accelerator("auto") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        train_run(quick_config(separable, tmp_path / "g", accelerator="gpu"), progress=False)
    assert not (tmp_path / "g").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_accelerator("auto") == "gpu"


def test_a_cpu_fit_on_a_machine_with_a_gpu_says_nothing_of_the_gpu(monkeypatch, tmp_path):
    """--accelerator cpu beside a GPU is the user's choice: Lightning's "GPU available but not
    used" is not shown (seen on a machine with an H200)."""
    import warnings

    import lightning as L
    from lightning.pytorch.accelerators import CUDAAccelerator

    from spermhead.training.quiet import quiet_trainer

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    default_root_dir=str(tmp_path))
    for build, shown in ((L.Trainer, True), (quiet_trainer, False)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            build(**settings)
        assert any("GPU available but not used" in str(w.message) for w in seen) == shown, build


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU; CI machines have none")
def test_training_on_a_gpu_matches_the_cpu(separable, separable_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    gpu = train_run(quick_config(separable, tmp_path / "gpu", accelerator="gpu", mixup=0.2, init="synthetic",
                                 init_per_class=8, init_epochs=2), progress=False)
    assert gpu.metrics["accuracy"] >= 0.95
    assert gpu.metrics["accuracy"] >= separable_run.metrics["accuracy"] - 0.05
    assert json.loads((gpu.out / "run.json").read_text())["init"]["init"] == "synthetic"
    # the bundle is written from CPU tensors and predicts on a machine without a GPU
    bundle = load_bundle(gpu.out / "model")
    table = load_dataset(str(separable))
    images, _ = canonical_images(table, quick_config(separable, tmp_path / "x"))
    probs = predict_proba(bundle.model, images, bundle.meta.mean, bundle.meta.std)
    assert next(bundle.model.parameters()).device.type == "cpu" and bundle.meta.classes == list(table.classes)
    assert (probs.argmax(1) == np.asarray(table.label_indices)).mean() >= 0.95


def test_runs_started_together_train_one_synthetic_source(separable, tmp_path, monkeypatch):
    import threading

    import spermhead.training.synthetic_init as synthetic_init

    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    cfg = quick_config(separable, tmp_path / "run", init="synthetic", init_per_class=4, init_epochs=1)
    trained = []
    real_train_source = synthetic_init.train_source

    def slow_train_source(*args, **kwargs):
        trained.append(1)
        time.sleep(0.5)  # long enough for the second run to arrive while this one trains
        return real_train_source(*args, **kwargs)

    monkeypatch.setattr(synthetic_init, "train_source", slow_train_source)
    paths = []
    runs = [threading.Thread(target=lambda: paths.append(synthetic_init.synthetic_init_weights(cfg, CLASSES)))
            for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert len(trained) == 1 and len(paths) == 2 and paths[0] == paths[1] and paths[0].is_file()


def test_extra_training_images_join_training_sides_only(tmp_path, monkeypatch):
    import csv

    import spermhead.training.run as run_module

    superset = write_separable(tmp_path / "lab", n_per_class=30, seed=3)
    own = tmp_path / "own"
    for name in CLASSES:  # the dataset: 20 of each class, the same files as the first 20 above
        (own / name).mkdir(parents=True)
        for i in range(20):
            (own / name / f"{name}_{i:03d}.png").write_bytes((superset / name / f"{name}_{i:03d}.png").read_bytes())
    (superset / "small").mkdir()  # a class the dataset lacks
    (superset / "small" / "s.png").write_bytes((superset / "normal" / "normal_000.png").read_bytes())

    seen = []
    real_run_fold = run_module.run_fold

    def spy(cfg, table, images, fold, *args, **kwargs):
        seen.append((table, fold))
        return real_run_fold(cfg, table, images, fold, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_fold", spy)
    result = train_run(quick_config(own, tmp_path / "run", cv=2, epochs=3, extra_train=[str(superset)]),
                       progress=False)
    extra = json.loads((result.out / "run.json").read_text())["extra_train"][str(superset)]
    # 80 of the 121 are copies of the dataset's own images (same bytes, other paths): left out
    assert extra["kept"] == 40 and extra["dataset_duplicates"] == 80 and extra["other_classes"] == 1
    for table, fold in seen:
        extras = {s.id for s in table.samples[80:]}
        train, held_out = ({table.samples[i].id for i in part} for part in (fold.train, np.r_[fold.val, fold.test]))
        assert extras <= train and not extras & held_out
    assert len(result.predictions.ids) == 80 and not any(i.startswith("extra/") for i in result.predictions.ids)
    with open(result.out / "samples.csv") as fh:
        roles = [r["role"] for r in csv.DictReader(fh)]
    assert roles.count("dataset") == 80 and roles.count("extra-train") == 40
    with pytest.raises(ConfigError, match="no images left"):
        train_run(quick_config(own, tmp_path / "none", extra_train=[str(own)]), progress=False)
    assert not (tmp_path / "none").exists()


def test_accuracy_point_moves_back_to_the_datasets_own_prior():
    from spermhead.training.operating import apply_bias, prior_shift

    own = np.array([0] * 8 + [1] * 2)
    pooled = np.concatenate([own, [1] * 10])  # extras made class 1 the majority in training
    shift = prior_shift(own, pooled, 2)
    assert shift[0] > 0 > shift[1]
    # a model that learnt the pooled prior and has no evidence either way answers with that
    # prior; moved to the dataset's own prior, it answers the dataset's majority class
    learnt = np.array([[9 / 20, 11 / 20]])
    assert apply_bias(learnt, shift).argmax(1).tolist() == [0]
    np.testing.assert_allclose(prior_shift(own, own, 2), 0.0)


def test_balanced_training_gets_its_training_prior_back():
    from spermhead.training.operating import apply_bias, learnt_prior_correction, prior_shift

    own = np.array([0] * 8 + [1] * 2)
    pooled = np.concatenate([own, [1] * 10])
    assert learnt_prior_correction(pooled, 2, "none") is None  # natural-prior posteriors already
    # a model trained with balanced classes and no evidence either way answers 50/50, whatever
    # the counts; corrected, it answers the training side's majority, and moved on to the
    # dataset's own prior, the dataset's majority
    uniform = np.array([[0.5, 0.5]])
    for balance in ("sampler", "loss", "offline"):
        corrected = apply_bias(uniform, learnt_prior_correction(pooled, 2, balance, per_class=6400))
        np.testing.assert_allclose(corrected, [[9 / 22, 13 / 22]], rtol=1e-5)  # counts + 1
        assert apply_bias(corrected, prior_shift(own, pooled, 2)).argmax(1).tolist() == [0]
    # offline balancing to 5 per class keeps both classes (8 and 12) whole: it learnt their own
    # prior, so there is nothing to give back; to 10, the 8 grew and the 12 stayed
    natural = apply_bias(uniform, learnt_prior_correction(pooled, 2, "offline", per_class=5))
    np.testing.assert_allclose(natural, uniform, rtol=1e-6)
    np.testing.assert_allclose(apply_bias(uniform, learnt_prior_correction(pooled, 2, "offline", per_class=0)),
                               uniform, rtol=1e-6)  # none grown: the natural prior, nothing to give back
    with pytest.raises(ConfigError, match="balance_per_class 0: must be at least 1"):
        build_run_config("hushem", "unused", settings={"train": {"balance_per_class": 0}})
    partly = apply_bias(uniform, learnt_prior_correction(pooled, 2, "offline", per_class=10))
    np.testing.assert_allclose(partly, [[9 / 11 / (9 / 11 + 13 / 13), 1 / (9 / 11 + 1)]], rtol=1e-5)


def test_balanced_training_on_a_skewed_set_keeps_two_sound_operating_points(tmp_path):
    from spermhead.serving.predictor import Predictor

    # pure noise, 70% "amorphous": no image tells its class, so the accuracy point can only
    # answer the majority, and the balanced point must not divide the prior out a second time
    rng = np.random.default_rng(0)
    counts = {"normal": 8, "tapered": 8, "amorphous": 40}
    for name, n in counts.items():
        (tmp_path / "skewed" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(tmp_path / "skewed" / name / f"{i}.png")
    cfg = quick_config(tmp_path / "skewed", tmp_path / "run", cv=None, split="50/20/30", epochs=8, balance="sampler")
    result = train_run(cfg, progress=False)
    bundle = load_bundle(result.out / "model")
    table = load_dataset(str(tmp_path / "skewed"))
    assert bundle.meta.cnn_prior is not None  # the training prior the sampler took out
    assert int(np.argmax(bundle.meta.cnn_prior)) == table.classes.index("amorphous")
    points = result.metrics["operating_points"]
    majority = counts["amorphous"] / sum(counts.values())
    assert points["accuracy"]["accuracy"] >= majority - 0.1
    assert points["balanced"]["accuracy"] < points["accuracy"]["accuracy"]
    # served as assessed, at both points: the bundle is the very model that scored the test part
    images, _ = canonical_images(table, cfg)
    index = {s.id: i for i, s in enumerate(table.samples)}
    batch = images[[index[i] for i in result.predictions.ids]]
    served = Predictor(result.out / "model", operating_point="accuracy").probabilities(batch)
    np.testing.assert_allclose(served, result.predictions.probabilities, atol=1e-5)
    (fold,) = result.folds
    served = Predictor(result.out / "model", operating_point="balanced").probabilities(batch)
    np.testing.assert_allclose(served, apply_class_bias(fold.test_probs, fold.bias), atol=1e-5)
    from fastapi.testclient import TestClient

    from spermhead.serving.app import create_app

    with TestClient(create_app(result.out / "model")) as client:
        assert client.get("/api/model").json()["cnn_prior"] == pytest.approx(bundle.meta.cnn_prior)


def test_fusion_without_a_validation_part_trains(separable, tmp_path):
    """val_fraction 0 leaves the second opinions nothing to answer before the test part: that
    empty answer once stopped every fold after its training."""
    result = train_run(quick_config(separable, tmp_path / "r", cv=2, epochs=2, val_fraction=0.0, shape_fusion=0.3,
                                    pixel_fusion=0.3), progress=False)
    assert len(result.predictions) == len(load_dataset(str(separable)))


def test_fusion_is_served_exactly_as_it_was_assessed(separable, tmp_path):
    from spermhead.serving.predictor import Predictor

    cfg = quick_config(separable, tmp_path / "fused", cv=None, split="60/20/20", epochs=5, shape_fusion=0.3,
                       pixel_fusion=0.3)
    result = train_run(cfg, progress=False)
    assert (result.out / "folds" / "fold0" / "shape.safetensors").is_file()
    assert (result.out / "folds" / "fold0" / "pixels.safetensors").is_file()
    bundle = load_bundle(result.out / "model")
    assert bundle.meta.shape_fusion == 0.3 and len(bundle.shapes) == 1
    assert bundle.meta.pixel_fusion == 0.3 and len(bundle.pixels) == 1
    # one split, so the bundle is the very model that scored the test part
    table = load_dataset(str(separable))
    images, _ = canonical_images(table, cfg)
    index = {s.id: i for i, s in enumerate(table.samples)}
    ids = list(result.predictions.ids)
    served = Predictor(result.out / "model").probabilities(images[[index[i] for i in ids]])
    np.testing.assert_allclose(served, result.predictions.probabilities, atol=1e-5)
    # and the fusion did change them: the CNN alone gives other probabilities
    alone = predict_proba(bundle.model, images[[index[i] for i in ids]], [0.0], [1.0])
    assert np.abs(alone - served).max() > 1e-3
    # the app serves the same fused model, and says so
    from fastapi.testclient import TestClient

    from spermhead.serving.app import create_app

    path = table.samples[index[ids[0]]].path
    with TestClient(create_app(result.out / "model")) as client:
        assert {k: client.get("/api/model").json()[k] for k in ("shape_fusion", "pixel_fusion")} == \
            {"shape_fusion": 0.3, "pixel_fusion": 0.3}
        answer = client.post("/api/predict", files=[("files", (path.name, path.read_bytes(), "image/png"))])
    (row,) = answer.json()["results"]
    direct = Predictor(result.out / "model").predict_bytes(path.name, path.read_bytes())
    assert row["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-6)
    assert row["probabilities"] == pytest.approx(dict(zip(table.classes, served[0].tolist(), strict=True)), abs=1e-4)
    with pytest.raises(ConfigError, match="shape-fusion"):
        quick_config(separable, tmp_path / "bad", shape_fusion=1.5)
    with pytest.raises(ConfigError, match="add up to more than 1"):
        quick_config(separable, tmp_path / "bad", shape_fusion=0.6, pixel_fusion=0.5)


def test_cutmix_pastes_a_partner_box_and_reports_the_kept_share():
    import torch

    from spermhead.training.module import cutmix

    torch.manual_seed(0)
    x = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    out, kept = cutmix(x, torch.tensor([1, 0]), alpha=1.0)
    # image 0 (zeros) got a box of ones from its partner, and the share says how much stayed
    assert abs((out[0] == 0).float().mean().item() - kept) < 1e-6 and 0 <= kept <= 1
    assert torch.equal(out[1] == 0, out[0] == 1)  # the same box, the other way round


def test_swa_and_cutmix_train_and_are_checked(separable, tmp_path, caplog):
    result = train_run(quick_config(separable, tmp_path / "swa", cv=2, epochs=6, swa=0.5, cutmix=1.0),
                       progress=False)
    assert result.metrics["accuracy"] > 0.5
    # SWA's extra BatchNorm epoch is not counted: a refit copying the count trains 6, not 7
    assert [f.epochs for f in result.folds] == [6, 6]
    plain = train_run(quick_config(separable, tmp_path / "plain", cv=2, epochs=6, cutmix=1.0), progress=False)
    # the same seed and batches: only the averaged weights differ
    assert np.abs(result.predictions.probabilities - plain.predictions.probabilities).max() > 1e-4
    with pytest.raises(ConfigError, match="not both"):
        quick_config(separable, tmp_path / "x", mixup=0.2, cutmix=1.0)
    with pytest.raises(ConfigError, match="--swa"):
        quick_config(separable, tmp_path / "y", swa=1.0)
    # the experts' votes are SCIAN's: asked for elsewhere, the targets stay hard, and that is said
    with caplog.at_level("WARNING", logger="spermhead"):
        train_run(quick_config(separable, tmp_path / "soft", cv=2, epochs=1, soft_labels=0.5), progress=False)
    assert "--soft-labels 0.5: no image of" in caplog.text and "carries expert votes" in caplog.text
    # the average reaches the model at the last epoch's end: a checkpoint chosen on validation, or
    # a fit stopped early, silently dropped it
    for option, said in ((dict(monitor="val_loss"), "--monitor val_loss keeps one epoch's checkpoint"),
                         (dict(patience=3), "--patience 3 can end the fit before the average is taken")):
        with pytest.raises(ConfigError, match=f"--swa 0.5: {said}"):
            quick_config(separable, tmp_path / "z", swa=0.5, **option)


def test_extras_that_change_the_class_mix_move_the_accuracy_point_back(tmp_path):
    from spermhead.training.operating import apply_bias

    superset = write_separable(tmp_path / "lab", n_per_class=30, seed=4)
    own = tmp_path / "own"  # every normal head, a third of the others: normal is the majority here
    for k, name in enumerate(CLASSES):
        (own / name).mkdir(parents=True)
        for i in range(30 if k == 0 else 10):
            (own / name / f"{name}_{i:03d}.png").write_bytes((superset / name / f"{name}_{i:03d}.png").read_bytes())
    # the extras hold no normal head, so the pooled training mix is flat
    result = train_run(quick_config(own, tmp_path / "run", cv=2, epochs=3, balance="none",
                                    extra_train=[str(superset)]), progress=False)
    by_id = dict(zip(result.predictions.ids, result.predictions.probabilities, strict=True))
    table = load_dataset(str(own))
    for fold in make_folds(table, load_config(result.out / "config.yaml").protocol, 0, 0.15):
        fold_dir = result.out / "folds" / f"fold{fold.index}"
        bias = np.asarray(json.loads((fold_dir / "done.json").read_text())["accuracy_bias"])
        assert bias[0] > bias[1:].max()  # back towards the dataset's own majority
        expected = apply_bias(np.load(fold_dir / "test_probs.npy"), bias)
        got = np.stack([by_id[table.samples[i].id] for i in fold.test])
        np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("near_duplicates", [0.98, 0.0])  # 0: no duplicate search reads the images first
def test_a_corrupt_image_stops_the_run_before_an_earlier_run_is_replaced(separable, separable_run, tmp_path,
                                                                          near_duplicates):
    import shutil

    from spermhead.preprocess.io import ImageError

    data = tmp_path / "data"
    shutil.copytree(separable, data)
    bad = data / "tapered" / "tapered_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "run"
    shutil.copytree(separable_run.out, out)  # an earlier, finished run in the same folder
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ImageError) as info:
        train_run(quick_config(data, out, near_duplicates=near_duplicates), overwrite=True, progress=False)
    assert str(bad) in str(info.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "metrics.json").read_text() == (separable_run.out / "metrics.json").read_text()


def test_sam_steps_from_the_gradient_at_the_worst_nearby_point():
    import torch

    from spermhead.training.module import SAM

    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16)
    w = torch.nn.Parameter(torch.randn(3))
    start = w.detach().clone()

    def loss_at(v: torch.Tensor) -> torch.Tensor:
        return ((x @ v - y) ** 2).mean()

    calls = []

    def closure() -> torch.Tensor:  # what Lightning's closure does: zero_grad, forward, backward
        calls.append(w.detach().clone())
        w.grad = None
        loss = loss_at(w)
        loss.backward()
        return loss

    rho, lr = 0.1, 0.05
    opt = SAM(torch.optim.SGD([w], lr=lr), rho)
    opt.step(closure)
    g = torch.func.grad(loss_at)(start)
    worst = start + rho * g / g.norm()
    assert len(calls) == 2 and torch.allclose(calls[1], worst, atol=1e-6)
    assert torch.allclose(w.detach(), start - lr * torch.func.grad(loss_at)(worst), atol=1e-6)


def test_sam_checkpoints_hold_the_base_optimisers_state():
    import torch

    from spermhead.training.module import SAM

    def fresh() -> tuple[torch.nn.Parameter, SAM]:
        w = torch.nn.Parameter(torch.ones(3))
        return w, SAM(torch.optim.AdamW([w], lr=0.1), 0.05)

    w, opt = fresh()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    saved = opt.state_dict()
    assert torch.equal(saved["state"][0]["exp_avg"], opt.base.state[w]["exp_avg"])
    w2, again = fresh()
    again.load_state_dict(saved)
    assert torch.equal(again.base.state[w2]["exp_avg"], opt.base.state[w]["exp_avg"])
    again.param_groups[0]["lr"] = 0.5  # what a scheduler does, after a resume too
    assert again.base.param_groups[0]["lr"] == 0.5


def test_sam_trains_through_lightning_and_is_checked(separable, tmp_path):
    result = train_run(quick_config(separable, tmp_path / "sam", cv=2, epochs=6, sam=0.05), progress=False)
    plain = train_run(quick_config(separable, tmp_path / "plain", cv=2, epochs=6), progress=False)
    assert result.metrics["accuracy"] > 0.5
    assert np.abs(result.predictions.probabilities - plain.predictions.probabilities).max() > 1e-4
    with pytest.raises(ConfigError, match="--sam"):
        quick_config(separable, tmp_path / "x", sam=-0.1)


def test_validation_parts_are_scored_at_both_operating_points(tmp_path):
    """metrics.json reports the validation parts at the balanced point too, from the bias each
    fold chose, so SCIAN recipes can be compared at both points without the test folds."""
    from safetensors.torch import load_file

    from spermhead.training.operating import apply_bias
    from spermhead.training.run import build_member

    rng = np.random.default_rng(3)  # two overlapping classes, 3:1, so the prior correction matters
    for name, n, level in (("normal", 48, 110), ("amorphous", 16, 140)):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(level + rng.normal(0, 25, (24, 24)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "data" / name / f"{name}_{i:03d}.png")
    cfg = quick_config(tmp_path / "data", tmp_path / "run", cv=2, epochs=4, balance="none", val_fraction=0.4)
    run = train_run(cfg, progress=False)
    table = load_dataset(str(tmp_path / "data"))
    images, _ = canonical_images(table, cfg)
    y, moved = np.asarray(table.label_indices), 0
    for fold in make_folds(table, cfg.protocol, cfg.seed, cfg.train.val_fraction):
        done = json.loads((run.out / "folds" / f"fold{fold.index}" / "done.json").read_text())
        model = build_member(cfg, 2, images[fold.train])
        model.load_state_dict(load_file(str(run.out / "folds" / f"fold{fold.index}" / "model0.safetensors")))
        probs = predict_proba(model.eval(), images[fold.val], [0.0], [1.0], tta=False)
        assert done["val_labels"] == y[fold.val].tolist()
        assert done["val_pred_balanced"] == apply_bias(probs, np.asarray(done["bias"])).argmax(1).tolist()
        moved += sum(a != b for a, b in zip(done["val_pred"], done["val_pred_balanced"], strict=True))
    assert moved > 0  # the bias changed some answers, so the two points are really different
    from sklearn.metrics import balanced_accuracy_score
    labels = [v for f in sorted((run.out / "folds").glob("fold*/done.json")) for v in json.loads(f.read_text())["val_labels"]]
    balanced = [v for f in sorted((run.out / "folds").glob("fold*/done.json"))
                for v in json.loads(f.read_text())["val_pred_balanced"]]
    saved = json.loads((run.out / "metrics.json").read_text())["validation"]
    assert saved["balanced_point"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, balanced))


def test_calibration_changes_probabilities_not_answers_and_is_served_as_assessed(separable, tmp_path):
    from spermhead.evaluation.external import assess
    from spermhead.models.inference import apply_temperature
    from spermhead.serving.predictor import Predictor

    # 24 validation images, enough to fit a temperature, and heavy label smoothing, which makes
    # the answers less sure than they are right: something to calibrate
    runs = {c: train_run(quick_config(separable, tmp_path / str(c), cv=None, split="40/30/30", epochs=20,
                                      label_smoothing=0.4, calibrate=c), progress=False) for c in (True, False)}
    (fold,), (plain,) = runs[True].folds, runs[False].folds
    assert plain.temperature == 1.0 and fold.temperature < 1.0
    assert json.loads((runs[True].out / "folds" / "fold0" / "done.json").read_text())["temperature"] == fold.temperature
    # the same models and answers at both points; only the probabilities moved
    np.testing.assert_array_equal(fold.test_probs, plain.test_probs)
    on, off = runs[True].predictions, runs[False].predictions
    assert on.pred == off.pred and not np.allclose(on.probabilities, off.probabilities)
    for point in ("accuracy", "balanced"):
        assert runs[True].metrics["operating_points"][point]["accuracy"] == \
            runs[False].metrics["operating_points"][point]["accuracy"]
    assert runs[True].metrics["ece"] != runs[False].metrics["ece"]
    # the bundle carries the temperature, and serves what was assessed, at both points
    table = load_dataset(str(separable))
    cfg = load_config(runs[True].out / "config.yaml")
    images, _ = canonical_images(table, cfg)
    index = {s.id: i for i, s in enumerate(table.samples)}
    batch = images[[index[i] for i in on.ids]]
    with Predictor(runs[True].out / "model") as predictor:
        assert predictor.meta.temperature == pytest.approx(fold.temperature)
        np.testing.assert_allclose(predictor.probabilities(batch), on.probabilities, atol=1e-5)
        assessed = assess(predictor, table.subset([index[i] for i in on.ids]))
    balanced = apply_temperature(apply_class_bias(fold.test_probs, fold.bias), fold.temperature)
    with Predictor(runs[True].out / "model", operating_point="balanced") as predictor:
        np.testing.assert_allclose(predictor.probabilities(batch), balanced, atol=1e-5)
    # `evaluate` moves between the points as the predictor does
    moved = assessed.at_point("balanced").sorted_by_id()
    order = np.argsort(on.ids)
    np.testing.assert_allclose(moved.probabilities, balanced[order], atol=1e-5)


def test_ctrl_c_during_a_fit_says_how_to_go_on(separable, tmp_path, monkeypatch):
    """Lightning answers Ctrl-C in a fit with sys.exit(1); the command must still say that
    --resume goes on, exit 130, and leave Ctrl-C working (Lightning's teardown restores it)."""
    import signal

    from typer.testing import CliRunner

    from spermhead.cli import app
    from spermhead.training.module import HeadClassifier

    def pressed(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(HeadClassifier, "training_step", pressed)
    result = CliRunner().invoke(app, ["train", str(separable), "--out", str(tmp_path / "run"), "--init", "scratch",
                                      "--epochs", "1", "--cv", "2", "--image-size", "24", "--threads", "1",
                                      "--accelerator", "cpu", "--no-progress"], terminal_width=200)
    assert result.exit_code == 130, result.output
    assert "interrupted: the same command with --resume goes on" in result.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_bad_weights_record_stops_the_run_before_an_old_one_is_cleared(separable, separable_run, tmp_path):
    import shutil

    from spermhead.errors import SpermheadError

    bundle = tmp_path / "bundle"
    shutil.copytree(separable_run.out / "model", bundle)
    (bundle / "training_images.safetensors").write_bytes(b"not safetensors")
    old = tmp_path / "old"
    shutil.copytree(separable_run.out, old)  # a finished run, to be replaced with --overwrite
    with pytest.raises(SpermheadError, match="unreadable training-image signatures"):
        train_run(quick_config(separable, old, weights=str(bundle / "model.safetensors"), epochs=1, cv=2),
                  overwrite=True, progress=False)
    assert (old / "metrics.json").read_text() == (separable_run.out / "metrics.json").read_text()


def test_an_overwrite_run_that_fails_puts_the_old_run_back(separable, separable_run, tmp_path, monkeypatch, caplog):
    import shutil

    import spermhead.training.run as run_module

    old = tmp_path / "old"
    shutil.copytree(separable_run.out, old)  # a finished run, to be replaced with --overwrite
    before = sorted(p.relative_to(old) for p in old.rglob("*"))
    fit = run_module.run_fold

    def fails(cfg, *args, **kwargs):  # the folder is the new run's by now: its config written
        assert (old / "config.yaml").read_text() != (separable_run.out / "config.yaml").read_text()
        raise RuntimeError("a fold failed")

    monkeypatch.setattr(run_module, "run_fold", fails)
    with pytest.raises(RuntimeError, match="a fold failed"):
        train_run(quick_config(separable, old, epochs=1, cv=2), overwrite=True, progress=False)
    assert sorted(p.relative_to(old) for p in old.rglob("*")) == before
    assert (old / "metrics.json").read_text() == (separable_run.out / "metrics.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["old"]  # nothing left beside it

    # interrupted (Ctrl-C): the new run stays, to be resumed, and the old one waits beside it, named
    calls = []

    def interrupted(cfg, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(cfg, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_fold", interrupted)
    cfg = quick_config(separable, old, epochs=1, cv=2)
    with caplog.at_level("WARNING", logger="spermhead"), pytest.raises(KeyboardInterrupt):
        train_run(cfg, overwrite=True, progress=False)
    kept = tmp_path / "old.replaced"
    assert f"the run it replaces is kept at {kept}" in caplog.text
    assert (kept / "metrics.json").read_text() == (separable_run.out / "metrics.json").read_text()
    monkeypatch.undo()
    resumed = train_run(cfg, resume=True, progress=False)
    assert resumed.timing["folds_read_back"] == 1  # the fold it finished before the interruption

    # a new run that finishes replaces the old one, leaving nothing beside it
    shutil.rmtree(kept)
    train_run(quick_config(separable, old, epochs=1, cv=2, seed=5), overwrite=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_an_overwrite_run_through_a_link_replaces_the_folder_it_names(separable, separable_run, tmp_path):
    import shutil

    target = tmp_path / "target"
    shutil.copytree(separable_run.out, target)
    (tmp_path / "link").symlink_to(target)
    train_run(quick_config(separable, tmp_path / "link", epochs=1, cv=2), overwrite=True, progress=False)
    assert (tmp_path / "link").is_symlink() and (target / "metrics.json").is_file()
    assert (target / "metrics.json").read_text() != (separable_run.out / "metrics.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_an_overwrite_from_inside_the_run_folder_is_refused(separable, separable_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(separable_run.out, run)
    monkeypatch.chdir(run)
    with pytest.raises(ConfigError, match="holds the current folder"):
        train_run(quick_config(separable, Path("."), epochs=1, cv=2), overwrite=True, progress=False)
    assert (run / "metrics.json").read_text() == (separable_run.out / "metrics.json").read_text()


def test_resume_refuses_other_weights_saved_under_the_same_path(separable, tmp_path):
    """A finished run read back by --resume (as `select --resume` does) started from the file's
    contents, not its name: other weights under that path are refused."""
    import torch

    from spermhead.models.registry import build_model
    from spermhead.models.weights import write_safetensors

    torch.manual_seed(0)
    weights = write_safetensors(build_model("spermnet", 2, 1, 24).state_dict(), tmp_path / "start.safetensors")
    cfg = quick_config(separable, tmp_path / "run", cv=2, epochs=1, weights=str(weights))
    train_run(cfg, progress=False)
    assert train_run(cfg, resume=True, progress=False).timing["folds_read_back"] == 2  # the same file: read back
    write_safetensors(build_model("spermnet", 2, 1, 24).state_dict(), weights)  # other weights, same name
    with pytest.raises(ConfigError, match="start.safetensors has other contents"):
        train_run(cfg, resume=True, progress=False)
    # so is a run interrupted before it finished (no run.json yet), by the record of its start
    for name in ("run.json", "metrics.json", "predictions.csv"):
        (tmp_path / "run" / name).unlink()
    with pytest.raises(ConfigError, match="start.safetensors has other contents"):
        train_run(cfg, resume=True, progress=False)


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_shrinks_easy_images():
    import torch
    import torch.nn.functional as F

    from spermhead.training.module import focal_cross_entropy

    torch.manual_seed(0)
    logits, hard = torch.randn(8, 4), torch.randint(0, 4, (8,))
    soft, weight = torch.softmax(torch.randn(8, 4), -1), torch.tensor([1.0, 2.0, 0.5, 3.0])
    for y in (hard, soft):
        for w, s in ((None, 0.0), (weight, 0.1)):
            assert torch.allclose(focal_cross_entropy(logits, y, 0.0, w, s),
                                  F.cross_entropy(logits, y, weight=w, label_smoothing=s), atol=1e-6)
    # one image at p = 0.9 on its class: its -log p is scaled by (1 - 0.9)^2
    easy = torch.log(torch.tensor([[0.9, 0.05, 0.05]]))
    assert torch.allclose(focal_cross_entropy(easy, torch.tensor([0]), 2.0),
                          -(0.1 ** 2) * torch.log(torch.tensor(0.9)), atol=1e-6)
    # a sure answer (p = 1 in float32) keeps a finite gradient for any gamma
    for gamma in (0.5, 2.0):
        sure = torch.tensor([[30.0, 0.0, 0.0]], requires_grad=True)
        focal_cross_entropy(sure, torch.tensor([0]), gamma).backward()
        assert torch.isfinite(sure.grad).all(), gamma


def test_focal_loss_trains_and_is_checked(separable, tmp_path):
    focal = train_run(quick_config(separable, tmp_path / "focal", cv=2, focal=2.0), progress=False)
    assert focal.metrics["accuracy"] >= 0.95
    plain = train_run(quick_config(separable, tmp_path / "plain", cv=2), progress=False)
    # the same seed and batches: only the loss differs
    assert np.abs(focal.predictions.probabilities - plain.predictions.probabilities).max() > 1e-4
    with pytest.raises(ConfigError, match="--focal"):
        quick_config(separable, tmp_path / "x", focal=-1.0)


def test_backbone_lr_gives_every_layer_but_the_classifier_its_share_of_the_rate():
    from spermhead.models.inference import standardized
    from spermhead.models.registry import build_model
    from spermhead.training.module import parameter_groups

    # (model, parameters of its final classifier layer): one Linear's weight and bias, two for a
    # distilled model's two heads; a seed net's hidden dense layers are backbone
    for name, n_head in (("spermnet", 2), ("seed-cnn", 2), ("seed-alexnet", 2), (TINY_TIMM, 2),
                         ("timm:deit_tiny_distilled_patch16_224", 4)):
        model = standardized(build_model(name, num_classes=3, in_chans=1, image_size=32), 1)
        trainable = [p for p in model.parameters() if p.requires_grad]
        (one,) = parameter_groups(model, 0.01)
        assert one["lr"] == 0.01 and one["params"] == trainable, name
        backbone, head = parameter_groups(model, 0.01, 0.3)
        assert backbone["lr"] == pytest.approx(0.003) and head["lr"] == 0.01, name
        # the classifier is the layer that outputs the classes, and nothing is left out or counted twice
        assert len(head["params"]) == n_head and all(p.shape[0] == 3 for p in head["params"]), name
        assert {id(p) for p in backbone["params"] + head["params"]} == {id(p) for p in trainable}, name
        assert len(backbone["params"]) + len(head["params"]) == len(trainable), name


def test_backbone_lr_trains_the_backbone_slower_and_is_checked(separable, tmp_path):
    from spermhead.training.module import HeadClassifier
    from spermhead.training.run import build_network

    cfg = quick_config(separable, tmp_path / "x", backbone_lr=0.25, epochs=4)
    module = HeadClassifier(build_network(cfg, 2), cfg.train, steps_per_epoch=5)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    peaks = [g["max_lr"] for g in sched.optimizer.param_groups]
    assert peaks == pytest.approx([cfg.train.lr * 0.25, cfg.train.lr])  # one-cycle peaks at each group's rate
    slow = train_run(quick_config(separable, tmp_path / "slow", cv=2, backbone_lr=0.25), progress=False)
    assert slow.metrics["accuracy"] >= 0.95
    plain = train_run(quick_config(separable, tmp_path / "plain", cv=2), progress=False)
    assert np.abs(slow.predictions.probabilities - plain.predictions.probabilities).max() > 1e-4
    for bad in (-0.1, 0.0, 1.5):  # 0 would freeze it: --freeze-backbone's job, and SWA refuses a rate of 0
        with pytest.raises(ConfigError, match="--backbone-lr"):
            quick_config(separable, tmp_path / "x", backbone_lr=bad)


def test_swa_keeps_a_slower_backbone_slower(separable, tmp_path, monkeypatch):
    import lightning.pytorch.callbacks as callbacks

    asked = []

    class Recording(callbacks.StochasticWeightAveraging):
        def __init__(self, swa_lrs, **kwargs):
            asked.append(swa_lrs)
            super().__init__(swa_lrs=swa_lrs, **kwargs)

    monkeypatch.setattr(callbacks, "StochasticWeightAveraging", Recording)
    cfg = quick_config(separable, tmp_path / "swa", cv=2, epochs=4, swa=0.5, backbone_lr=0.25)
    train_run(cfg, progress=False)
    assert asked and all(lrs == pytest.approx([cfg.train.lr * 0.025, cfg.train.lr * 0.1]) for lrs in asked)


def test_a_grouped_validation_part_is_the_candidate_with_the_most_classes(monkeypatch, caplog):
    """Whole groups make the validation part; of the ways to take them that leave every class in
    training, the one that shows the most classes wins (one plate can hold one class alone)."""
    from spermhead.training import protocols

    y = np.array([0] * 6 + [0, 0, 1, 1, 2, 2] + [0, 1, 2] * 4)
    groups = np.array([0] * 6 + [1] * 6 + [2] * 12)  # plate 0: class 0 alone; plate 1: all three

    class Candidates:  # the splitter's parts, in this order: plate 0 first, then plate 1
        def __init__(self, *args, **kwargs):
            pass

        def split(self, rows, labels, mine):
            for plate in (0, 1):
                yield np.flatnonzero(mine != plate), np.flatnonzero(mine == plate)

    monkeypatch.setattr(protocols, "StratifiedGroupKFold", Candidates)
    train, val = protocols._carve_val_by_group(np.arange(len(y)), y, groups, 0.25, seed=0)
    assert set(groups[val].tolist()) == {1} and set(y[val].tolist()) == {0, 1, 2}
    assert "holds" not in caplog.text
    # where every way takes a one-class plate, the part is still taken, and that is said
    y = np.array([0] * 4 + [1] * 4 + [0, 1, 2] * 2)
    groups = np.array([0] * 4 + [1] * 4 + [2] * 6)
    with caplog.at_level("WARNING", logger="spermhead"):
        train, val = protocols._carve_val_by_group(np.arange(len(y)), y, groups, 0.25, seed=0)
    assert set(groups[val].tolist()) == {0}  # the first of the two alike
    assert "a validation part of whole groups holds 1 of the 3 classes" in caplog.text


def test_a_validation_part_short_of_a_class_is_summed_up_without_warnings():
    import warnings

    from spermhead.training.run import validation_summary

    class Fold:  # class 2 answered, never labelled: balanced accuracy over the classes present
        val_labels, val_pred, val_pred_balanced = [0, 0, 1], [0, 2, 1], [0, 2, 1]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's "y_pred contains classes not in y_true" among them
        summary = validation_summary([Fold()])
    assert summary["balanced_accuracy"] == pytest.approx(0.75) and summary["n"] == 3
