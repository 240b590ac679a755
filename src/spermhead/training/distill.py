"""Cross-fitted self-distillation: targets that say how sure the data let a model be.

HuSHeM has one label per head and no expert votes, and its consistent errors are borderline
shapes (benchmarks/RESULTS.md, "The cases no seed fixes"). Here teachers trained on part of a
training side answer for the images they did not see; their probabilities, blended with the
labels, become the training targets, as SCIAN's expert votes do (training/targets.py). A teacher
never scores an image it trained on, so the targets carry its doubt rather than its memory."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from spermhead.config import RunConfig
from spermhead.models.inference import predict_proba

TEACHER_FOLDS = 3  # each teacher trains on two thirds of the side: 3 fits for a fold's one
TARGETS_FILE = "distill_targets.npy"
ROWS_FILE = "distill_rows.npy"  # which images the targets are for: --resume reuses them for those alone
_TEACHER_STREAM = 0xD157  # teachers' seeds come from a stream of their own, apart from members'


def teacher_splits(y: np.ndarray, seed: int, groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, answer) positions within `y`: every position is answered by exactly one teacher,
    which did not train on it, nor on a near-duplicate of it (same `groups` value). Stratified as
    far as the classes allow."""
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    splitter = StratifiedGroupKFold(n_splits=TEACHER_FOLDS, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer images than teachers is split as it can be
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(y)), y, groups))


def teacher_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, _TEACHER_STREAM, i]).generate_state(1)[0])


def _kept(values: Path, rows: Path, key: np.ndarray) -> np.ndarray | None:
    """Values saved for exactly the images `key` names; else None."""
    if values.is_file() and rows.is_file() and np.array_equal(np.load(rows), key):
        return np.load(values)
    return None


def _keep(values: np.ndarray, path: Path, rows: Path, key: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(rows, key)
    np.save(path, values)


def distilled_targets(cfg: RunConfig, images: np.ndarray, y: np.ndarray, base: np.ndarray, num_classes: int,
                      fold_dir: Path, *, seed: int, progress: bool, resume: bool, groups: np.ndarray | None = None,
                      key: np.ndarray | None = None, label: str = "") -> np.ndarray:
    """N x K training targets: `cfg.train.distill` x the teachers' out-of-fold probabilities plus
    the rest x `base` (one-hot labels, or expert vote shares). Teachers train as `cfg` says, for
    its epochs, on `base` where it holds vote shares. Kept in `fold_dir` for --resume, and so is
    each teacher's answers as it finishes, with `key` (the images' rows in the table) to say which
    images they are for."""
    from spermhead.training.run import build_member, fit_member, tta_flips

    key = np.arange(len(y)) if key is None else np.asarray(key)
    saved = fold_dir / TARGETS_FILE
    if resume and (targets := _kept(saved, fold_dir / ROWS_FILE, key)) is not None:
        return targets
    # teachers keep their last epoch and watch nothing: choosing on this side's validation part
    # would make the targets depend on it; one CSV log each, not three more runs in an MLflow
    teacher_cfg = replace(cfg, loggers=("csv",), train=replace(
        cfg.train, monitor="last", early_stopping_patience=0, distill=0.0, members_per_fold=1))
    soft = base if cfg.train.soft_labels > 0 else None
    answers = np.zeros_like(base)
    empty = np.zeros((0, *images.shape[1:]), dtype=images.dtype)
    for i, (tr, te) in enumerate(teacher_splits(y, seed, groups)):
        teacher_dir = fold_dir / f"teacher{i}"
        answered, answered_rows = teacher_dir / "answers.npy", teacher_dir / "rows.npy"
        if resume and (kept := _kept(answered, answered_rows, key[te])) is not None:
            answers[te] = kept
            continue
        s = teacher_seed(seed, i)
        L.seed_everything(s, workers=True, verbose=False)
        teacher = build_member(teacher_cfg, num_classes, images[tr])
        teacher, _, _ = fit_member(teacher_cfg, teacher, images[tr], y[tr], empty, np.zeros(0, dtype=int),
                                   num_classes, teacher_dir, seed=s, progress=progress, resume=resume,
                                   soft=None if soft is None else soft[tr],
                                   label=f"{label}, teacher {i + 1} of {TEACHER_FOLDS}" if label else "")
        shutil.rmtree(teacher_dir / "checkpoints", ignore_errors=True)
        # under class-balanced training the student trains on the same balanced prior, so the
        # teachers' answers need no prior correction
        answers[te] = predict_proba(teacher.eval(), images[te], [0.0], [1.0], tta=cfg.train.tta,
                                    flips=tta_flips(cfg.train.augment))
        _keep(answers[te], answered, answered_rows, key[te])
    w = cfg.train.distill
    targets = (w * answers + (1 - w) * base).astype(np.float32)
    _keep(targets, saved, fold_dir / ROWS_FILE, key)
    return targets
