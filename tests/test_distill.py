"""Cross-fitted self-distillation (training/distill.py): teachers answer only for images they did
not train on, their answers blend into the targets, and a run trains with them end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

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


@pytest.fixture
def fake_teachers(monkeypatch):
    """Teachers that record which images (by the pixel value each holds, its index) they trained
    on and were asked about, and answer class 0 with probability index / 12."""
    seen: dict[str, list[set[int]]] = {"trained": [], "asked": []}

    class Teacher:
        def eval(self):
            return self

    def fake_fit(cfg, member, x, y, *args, **kwargs):
        seen["trained"].append({int(v) for v in x[:, 0, 0, 0]})
        return member, 1, 1

    def fake_proba(model, images, *args, **kwargs):
        seen["asked"].append({int(v) for v in images[:, 0, 0, 0]})
        p0 = images[:, 0, 0, 0].astype(np.float32) / 12
        return np.stack([p0, 1 - p0], 1)

    monkeypatch.setattr(run, "fit_member", fake_fit)
    monkeypatch.setattr(run, "build_member", lambda *a, **k: Teacher())
    monkeypatch.setattr(distill, "predict_proba", fake_proba)
    return seen


def test_targets_blend_labels_with_answers_from_teachers_that_never_saw_the_image(fake_teachers, tmp_path):
    cfg = RunConfig()
    cfg.train.distill = 0.25
    y = np.arange(12) % 2
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1) * np.ones((1, 1, 4, 4), dtype=np.uint8)
    base = np.eye(2, dtype=np.float32)[y]
    targets = distill.distilled_targets(cfg, images, y, base, 2, tmp_path, seed=3, progress=False, resume=False)
    trained, asked = fake_teachers["trained"], fake_teachers["asked"]
    assert len(trained) == len(asked) == distill.TEACHER_FOLDS
    assert all(not t & a for t, a in zip(trained, asked, strict=True))
    assert sorted(i for a in asked for i in a) == list(range(12))  # each image answered once
    answers = np.stack([np.arange(12) / 12, 1 - np.arange(12) / 12], 1)
    np.testing.assert_allclose(targets, 0.75 * base + 0.25 * answers, atol=1e-6)
    # --resume reads the kept targets instead of training the teachers again
    again = distill.distilled_targets(cfg, images, y, base, 2, tmp_path, seed=3, progress=False, resume=True)
    assert len(trained) == distill.TEACHER_FOLDS
    np.testing.assert_array_equal(again, targets)


def test_a_run_trains_on_distilled_targets(tmp_path):
    data = write_separable(tmp_path / "data")
    result = run.train_run(quick_config(data, tmp_path / "run", distill=0.5), progress=False)
    assert result.metrics["accuracy"] >= 0.95  # separable data stays separable
    for k in range(4):
        fold = result.out / "folds" / f"fold{k}"
        train = json.loads((fold / "done.json").read_text())["train"]
        targets = np.load(fold / distill.TARGETS_FILE)
        assert targets.shape == (train, 4) and targets.max() < 1.0  # none left as a pure label
        assert not any(fold.glob("teacher*/checkpoints"))


def test_soft_targets_with_offline_balancing_are_refused_before_training(tmp_path):
    data = write_separable(tmp_path / "data")
    for option in ("distill", "soft_labels"):
        with pytest.raises(ConfigError, match=f"--{option.replace('_', '-')} .*offline"):
            quick_config(data, tmp_path / "run", **{option: 0.5, "balance": "offline"})
