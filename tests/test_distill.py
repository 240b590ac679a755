"""Cross-fitted self-distillation (training/distill.py): teachers answer only for images they did
not train on, their answers blend into the targets, and a run trains with them end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from spermhead.config import RunConfig
from spermhead.errors import ConfigError
from spermhead.training import distill, run
from tests.test_training import quick_config, write_separable


def test_every_image_is_answered_by_one_teacher_that_did_not_train_on_it():
    y = np.repeat(np.arange(4), [9, 7, 12, 2])  # the last class too small to stratify
    answered = np.zeros(len(y), dtype=int)
    for tr, te in distill.teacher_splits(y, seed=0):
        assert not set(tr) & set(te) and len(tr) + len(te) == len(y)
        answered[te] += 1
    assert (answered == 1).all()
    for _, te in distill.teacher_splits(np.repeat(np.arange(3), 6), seed=0):  # stratified: 2 of each class
        assert np.bincount(np.repeat(np.arange(3), 6)[te]).tolist() == [2, 2, 2]


def test_near_duplicates_stay_on_one_side_of_every_teacher():
    y = np.arange(30) % 3
    groups = np.arange(30)
    groups[[4, 11, 17]] = 4  # one head three times
    groups[[20, 29]] = 20
    for tr, te in distill.teacher_splits(y, seed=1, groups=groups):
        assert not set(groups[tr]) & set(groups[te])


def test_teacher_seeds_are_apart_from_member_seeds():
    seeds = {distill.teacher_seed(s * 1000 + f, i) for s in range(3) for f in range(12) for i in range(3)}
    members = {s * 1000 + f + 100 * j for s in range(3) for f in range(12) for j in range(5)}
    assert len(seeds) == 3 * 12 * 3 and not seeds & members


@pytest.fixture
def fake_teachers(monkeypatch):
    """Teachers that record which images (by the pixel value each holds, its index) they trained
    on and were asked about, and answer class 0 with probability index / 12."""
    seen: dict[str, list[set[int]]] = {"trained": [], "asked": []}

    class Teacher:
        def eval(self):
            return self

    def fake_fit(cfg, member, x, y, *args, soft=None, **kwargs):
        if len(seen["trained"]) == seen.get("stop_after", -1):
            raise KeyboardInterrupt  # the run stopped while this teacher trained
        seen["trained"].append({int(v) for v in x[:, 0, 0, 0]})
        seen.setdefault("soft", []).append(soft)
        return member, 1, 1

    def fake_proba(model, images, *args, **kwargs):
        seen["asked"].append({int(v) for v in images[:, 0, 0, 0]})
        p0 = images[:, 0, 0, 0].astype(np.float32) / 12
        return np.stack([p0, 1 - p0], 1)

    monkeypatch.setattr(run, "fit_member", fake_fit)
    monkeypatch.setattr(run, "build_member", lambda *a, **k: Teacher())
    monkeypatch.setattr(distill, "predict_proba", fake_proba)
    return seen


def twelve_heads(distill_weight: float, soft_labels: float = 0.0) -> tuple[RunConfig, np.ndarray, np.ndarray]:
    """A config and 12 tiny images in 2 classes, each image's pixels its own index."""
    cfg = RunConfig()
    cfg.train.distill, cfg.train.soft_labels = distill_weight, soft_labels
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1) * np.ones((1, 1, 4, 4), dtype=np.uint8)
    return cfg, np.arange(12) % 2, images


def test_targets_blend_labels_with_answers_from_teachers_that_never_saw_the_image(fake_teachers, tmp_path):
    cfg, y, images = twelve_heads(0.25)
    base = np.eye(2, dtype=np.float32)[y]
    targets = distill.distilled_targets(cfg, images, y, base, 2, tmp_path, seed=3, progress=False, resume=False)
    trained, asked = fake_teachers["trained"], fake_teachers["asked"]
    assert len(trained) == len(asked) == distill.TEACHER_FOLDS
    assert all(not t & a for t, a in zip(trained, asked, strict=True))
    assert sorted(i for a in asked for i in a) == list(range(12))  # each image answered once
    answers = np.stack([np.arange(12) / 12, 1 - np.arange(12) / 12], 1)
    np.testing.assert_allclose(targets, 0.75 * base + 0.25 * answers, atol=1e-6)
    # --resume reads the kept targets instead of training the teachers again, for the same images
    again = distill.distilled_targets(cfg, images, y, base, 2, tmp_path, seed=3, progress=False, resume=True)
    assert len(trained) == distill.TEACHER_FOLDS
    np.testing.assert_array_equal(again, targets)
    distill.distilled_targets(cfg, images, y, base, 2, tmp_path, seed=3, progress=False, resume=True,
                              key=np.arange(12) + 100)  # as many images, other ones: trained again
    assert len(trained) == 2 * distill.TEACHER_FOLDS


def test_an_interrupted_fold_keeps_its_finished_teachers(fake_teachers, tmp_path):
    cfg, y, images = twelve_heads(0.5)
    base = np.eye(2, dtype=np.float32)[y]
    fake_teachers["stop_after"] = 1
    with pytest.raises(KeyboardInterrupt):
        distill.distilled_targets(cfg, images, y, base, 2, tmp_path, seed=3, progress=False, resume=False)
    fake_teachers["stop_after"] = -1
    resumed = distill.distilled_targets(cfg, images, y, base, 2, tmp_path, seed=3, progress=False, resume=True)
    assert len(fake_teachers["trained"]) == distill.TEACHER_FOLDS  # the first teacher was not trained again
    whole = distill.distilled_targets(cfg, images, y, base, 2, tmp_path / "whole", seed=3, progress=False,
                                      resume=False)
    np.testing.assert_array_equal(resumed, whole)  # its answers went back to the images it answered


def test_teachers_train_on_the_experts_votes_where_the_run_does(fake_teachers, tmp_path):
    cfg, y, images = twelve_heads(0.5, soft_labels=0.5)
    votes = np.tile(np.array([[0.75, 0.25]], dtype=np.float32), (12, 1))
    distill.distilled_targets(cfg, images, y, votes, 2, tmp_path, seed=3, progress=False, resume=False)
    for soft, seen in zip(fake_teachers["soft"], fake_teachers["trained"], strict=True):
        assert soft is not None and soft.shape == (len(seen), 2) and np.allclose(soft, [0.75, 0.25])
    cfg.train.soft_labels = 0.0  # one-hot labels: the teachers train on the labels as the recipe does
    distill.distilled_targets(cfg, images, y, np.eye(2, dtype=np.float32)[y], 2, tmp_path / "hard", seed=3,
                              progress=False, resume=False)
    assert all(soft is None for soft in fake_teachers["soft"][distill.TEACHER_FOLDS:])


def test_a_run_trains_its_students_on_the_kept_targets(tmp_path, monkeypatch):
    """Each fold's student, and its refit on training + validation, trains on the targets kept for
    it; separable data stays separable."""
    data = write_separable(tmp_path / "data")
    students = {}
    real_fit = run.fit_member

    def spy(cfg, member, x, y, *args, soft=None, **kwargs):
        fold_dir = args[3]  # x_val, y_val, classes, then the fit's folder
        if not fold_dir.name.startswith("teacher"):
            students[fold_dir] = soft
        return real_fit(cfg, member, x, y, *args, soft=soft, **kwargs)

    monkeypatch.setattr(run, "fit_member", spy)
    result = run.train_run(quick_config(data, tmp_path / "run", distill=0.5, refit_val=True), progress=False)
    assert result.metrics["accuracy"] >= 0.95
    for k in range(4):
        fold = result.out / "folds" / f"fold{k}"
        done, first = (json.loads((fold / name).read_text()) for name in ("done.json", "first.json"))
        train = done["train"]  # training + validation
        # the teachers' time is the fold's, not the first fit's per-epoch figure
        assert first["target_seconds"] > 0 and done["fold_seconds"] >= done["seconds"] + first["target_seconds"]
        for where in (fold, fold / "refit"):
            targets = np.load(where / distill.TARGETS_FILE)
            np.testing.assert_array_equal(students[where], targets)
            assert targets.max() < 1.0  # none left as a pure label
        assert len(np.load(fold / "refit" / distill.TARGETS_FILE)) == train
        assert not any(fold.glob("**/teacher*/checkpoints"))


@pytest.fixture
def teacher_groups(monkeypatch) -> list[np.ndarray]:
    """The near-duplicate groups each teacher split was given, as a run calls it."""
    calls: list[np.ndarray] = []
    real_splits = distill.teacher_splits

    def spy(y, seed, groups=None):
        calls.append(groups)
        return real_splits(y, seed, groups)

    monkeypatch.setattr(distill, "teacher_splits", spy)
    return calls


def test_a_run_hands_its_near_duplicates_to_the_teachers(tmp_path, teacher_groups):
    data = write_separable(tmp_path / "data")
    shutil.copy(data / "normal" / "normal_000.png", data / "normal" / "normal_twin.png")
    # with the refit, some fit trains on both twins, wherever the validation part took them
    run.train_run(quick_config(data, tmp_path / "run", cv=2, epochs=1, distill=0.5, refit_val=True), progress=False)
    assert teacher_groups and all(g is not None for g in teacher_groups)
    assert any(len(set(g.tolist())) < len(g) for g in teacher_groups)  # the twins share a group where both train


def test_twins_among_extra_training_images_reach_the_teachers(tmp_path, teacher_groups):
    data, extra = write_separable(tmp_path / "data"), write_separable(tmp_path / "extra", seed=7)
    # a re-saved copy (one grey level off): a twin, not the same bytes, which pooling adds once
    twin = np.array(Image.open(extra / "tapered" / "tapered_000.png"))
    twin[0, 0] = twin[0, 0] + 1 if twin[0, 0].max() < 255 else twin[0, 0] - 1
    Image.fromarray(twin).save(extra / "tapered" / "tapered_twin.png")
    cfg = quick_config(data, tmp_path / "run", cv=2, epochs=1, distill=0.5, extra_train=[str(extra)])
    run.train_run(cfg, progress=False)
    # the extras join every training side, so every teacher split holds the one pair
    assert teacher_groups and all(len(set(g.tolist())) == len(g) - 1 for g in teacher_groups)


def test_soft_targets_with_offline_balancing_are_refused_before_training(tmp_path):
    data = write_separable(tmp_path / "data")
    for option in ("distill", "soft_labels"):
        with pytest.raises(ConfigError, match=f"--{option.replace('_', '-')} .*offline"):
            quick_config(data, tmp_path / "run", **{option: 0.5, "balance": "offline"})


def test_the_teachers_time_counts_in_the_fold_not_per_epoch(tmp_path, monkeypatch):
    """A distillation's teachers train before the fold's members: their time goes into the
    fold's total, and not into the members' per-epoch figure (fake clock: teachers take 1000 s)."""
    import time

    clock = {"offset": 0.0}

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return time.perf_counter() + clock["offset"]

    def slow_teachers(cfg, images, y, base, k, fold_dir, **kwargs):
        clock["offset"] += 1000.0
        return base

    monkeypatch.setattr(run, "time", FakeTime)
    monkeypatch.setattr(distill, "distilled_targets", slow_teachers)
    data = write_separable(tmp_path / "data", n_per_class=6)
    run.train_run(quick_config(data, tmp_path / "run", cv=2, epochs=1, distill=0.5), progress=False)
    folds = sorted((tmp_path / "run" / "folds").glob("fold*"))
    assert len(folds) == 2
    for fold in folds:
        done = json.loads((fold / "done.json").read_text())
        assert done["seconds"] < 1000 <= done["fold_seconds"]
