"""Evaluation protocols. Splits come first: every later step sees only its fold's training side."""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from spermhead.config import ProtocolConfig
from spermhead.data.duplicates import keep_together, near_duplicate_groups, signatures
from spermhead.data.samples import SampleTable
from spermhead.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray  # indices into the sample table
    val: np.ndarray  # carved from the training side: early stopping and checkpoint choice
    test: np.ndarray  # scored once, by the checkpoint chosen on val
    n_extra: int = 0  # the last n_extra rows of `train` are extra training images (data/extra.py)

    @property
    def own_train(self) -> np.ndarray:
        """The training side's rows from the dataset itself."""
        return self.train[: len(self.train) - self.n_extra]


def make_folds(table: SampleTable, protocol: ProtocolConfig, seed: int, val_fraction: float, *,
               train_fraction: float = 1.0) -> list[Fold]:
    """The protocol's folds; with `train_fraction` < 1 each training side then keeps only that
    stratified share of its images (a learning-curve point; validation and test parts unchanged)."""
    folds = _make_folds(table, protocol, seed, val_fraction)
    if train_fraction >= 1.0:
        return folds
    y = np.asarray(table.label_indices)
    return [replace(f, train=_stratified_share(f.train, y, train_fraction, seed + 500 + f.index)) for f in folds]


def _stratified_share(rows: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """`fraction` of `rows`, stratified, with at least one image of each class kept."""
    labels = y[rows]
    keep = []
    for c in np.unique(labels):
        mine = np.random.default_rng(seed + int(c)).permutation(rows[labels == c])
        keep.append(mine[: max(1, round(fraction * len(mine)))])
    return np.sort(np.concatenate(keep))


def _make_folds(table: SampleTable, protocol: ProtocolConfig, seed: int, val_fraction: float) -> list[Fold]:
    y = np.asarray(table.label_indices)
    present = sorted({s.label for s in table.samples})
    if len(present) < 2:
        raise ConfigError(f"{table.name}: only one class has images ({', '.join(present) or 'none'}); "
                          "a classifier needs at least two")
    if protocol.grouped and protocol.kind != "cv":
        # only CV folds are drawn by group; a split that ignored it would claim what it did not test
        raise ConfigError(f"--grouped keeps acquisition groups apart in CV folds only, not in a {protocol.kind} "
                          "split; use --cv K with --grouped, or drop --grouped")
    if protocol.kind == "folders":
        fold = _folder_split(table)  # the dataset author's split, taken as it is, but its twins are named
        _warn_split_twins(table, fold, duplicate_groups(table, protocol.near_duplicates))
        return [fold]
    together = duplicate_groups(table, protocol.near_duplicates)
    if protocol.kind == "random":
        counts = np.bincount(y, minlength=len(table.classes))
        if few := [f"{c} ({n})" for c, n in zip(table.classes, counts, strict=True) if 0 < n < 3]:
            raise ConfigError(f"{table.name}: a stratified train/validation/test split needs at least 3 images of "
                              f"each class, one per part; too few: {', '.join(few)}")
        try:
            return [_random_split(y, protocol.split, seed, together, list(table.classes))]
        except ConfigError as exc:
            raise ConfigError(f"{table.name}: {exc}") from None
        except ValueError as exc:  # scikit-learn's word for a split too small to stratify
            shown = "/".join(f"{100 * f:g}" for f in protocol.split)  # as --split takes it: 60/30/10
            raise ConfigError(f"{table.name}: cannot split {len(y)} images {shown}: {exc}") from None
    if protocol.kind != "cv":
        raise ConfigError(f"unknown protocol {protocol.kind!r}: use cv, folders or random")
    _check_enough(table, protocol.folds)
    idx = np.arange(len(y))
    if protocol.grouped:
        groups = np.asarray([s.group or s.source for s in table.samples])
        if len(set(groups)) < protocol.folds:
            raise ConfigError(f"--grouped needs at least {protocol.folds} acquisition groups, found "
                              f"{len(set(groups))}: only SCIAN's file names record them (patient and plate); "
                              "HuSHeM and class folders hold one group per source")
        splitter = StratifiedGroupKFold(protocol.folds, shuffle=True, random_state=seed)
        splits = splitter.split(idx, y, groups)
    else:
        splits = StratifiedKFold(protocol.folds, shuffle=True, random_state=seed).split(idx, y)
    test_fold = np.empty(len(y), dtype=int)
    for k, (_, test) in enumerate(splits):
        test_fold[test] = k
    # Duplicates are moved after the stratified split rather than made groups of it, so every
    # other image keeps the fold the usual protocol gives it: figures stay comparable.
    if protocol.grouped:
        _check_group_spread(table, test_fold, protocol.folds, groups)
    test_fold = keep_together(test_fold, together)
    _check_spread(y, test_fold, protocol.folds, together)
    folds = []
    for k in range(protocol.folds):
        train_side = np.flatnonzero(test_fold != k)
        if protocol.grouped:
            train, val = _carve_val_by_group(train_side, y, groups, val_fraction, seed + k, together,
                                             list(table.classes))
        else:
            train, val = _carve_val(train_side, y, val_fraction, seed + k, together, list(table.classes))
        folds.append(Fold(k, train, val, np.flatnonzero(test_fold == k)))
    return folds


def duplicate_groups(table: SampleTable, threshold: float) -> list[list[int]]:
    """Rows of `table` that show the same head (data/duplicates.py); none when threshold is 0."""
    if threshold <= 0:
        return []
    return near_duplicate_groups(signatures([s.path for s in table.samples]), threshold)


def _check_spread(y: np.ndarray, test_fold: np.ndarray, k: int, together: list[list[int]]) -> None:
    """Groups so large that a fold has no test images, or a training side lacks a class, mean
    the images are mostly copies: say so rather than train on a broken split."""
    classes = set(y.tolist())
    for fold in range(k):
        if not (test_fold == fold).any() or set(y[test_fold != fold].tolist()) != classes:
            n = sum(len(g) for g in together)
            raise ConfigError(f"{n} images are near-duplicates of others ({len(together)} groups), too many to "
                              f"keep each on one side of {k}-fold CV; check them with `spermhead data "
                              "duplicates`, or pass --near-duplicates 0 (or a value nearer 1)")


def _check_group_spread(table: SampleTable, test_fold: np.ndarray, k: int, groups: np.ndarray) -> None:
    """Under --grouped, a class held by too few groups leaves some fold's training side without it
    (each group is tested whole): say which class and groups, not near-duplicates."""
    y = np.asarray(table.label_indices)
    for fold in range(k):
        if missing := sorted(set(y.tolist()) - set(y[test_fold != fold].tolist())):
            cls = table.classes[missing[0]]
            holders = sorted({str(g) for g in groups[y == missing[0]]})
            fewer = f"at most {len(holders)} folds, " if 2 <= len(holders) < k else ""  # one group: no K will do
            raise ConfigError(f"--grouped: fold {fold} would train on no '{cls}' image: every one is in "
                              f"{'group' if len(holders) == 1 else 'groups'} {', '.join(holders)}, tested whole "
                              f"in that fold; use {fewer}images of '{cls}' from more groups, or drop --grouped")


def _restricted(groups: list[list[int]], rows: np.ndarray) -> list[list[int]]:
    """The groups as positions within `rows`, keeping those with two or more members there."""
    where = {int(r): i for i, r in enumerate(rows)}
    inside = [[where[i] for i in g if i in where] for g in groups]
    return [g for g in inside if len(g) > 1]


def with_extra_training(folds: list[Fold], start: int, stop: int) -> list[Fold]:
    """Rows start..stop-1 of the pooled table (extra training images) join every training side;
    validation and test parts stay the dataset's own."""
    extra = np.arange(start, stop)
    return [replace(f, train=np.concatenate([f.train, extra]), n_extra=f.n_extra + len(extra)) for f in folds]


def _check_enough(table: SampleTable, k: int) -> None:
    counts = Counter(table.labels)
    few = {c: n for c, n in counts.items() if n < k}
    if few:
        listed = ", ".join(f"{c} ({n})" for c, n in sorted(few.items()))
        raise ConfigError(f"{table.name}: too few images for {k}-fold CV in class(es) {listed}; "
                          f"each class needs at least {k}")


def _carve_val(train_side: np.ndarray, y: np.ndarray, fraction: float, seed: int,
               together: list[list[int]] | None = None,
               classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    if fraction <= 0:
        return np.sort(train_side), np.array([], dtype=int)
    labels = y[train_side]
    n_classes = len(set(labels.tolist()))
    # Stratifying needs one validation image per class at least; small sets get exactly that.
    n_val = max(math.ceil(fraction * len(train_side)), n_classes)  # ceil, as scikit-learn does
    stratify = labels if min(Counter(labels).values()) >= 2 and n_val <= len(train_side) - n_classes else None
    if stratify is None:
        n_val = max(1, math.ceil(fraction * len(train_side)))
    train, val = train_test_split(train_side, test_size=n_val, stratify=stratify, random_state=seed)
    train_side = np.sort(train_side)
    twins = _restricted(together, train_side) if together else []
    in_val = keep_together(np.isin(train_side, val), twins)
    if lost := sorted(set(y[train_side].tolist()) - set(y[train_side[~in_val]].tolist())):
        # a small class's every training image went to validation (its twin pulled it there, or the
        # unstratified carve took its one image): they go back with their twins, or the fold would
        # never see the class; validation then lacks it
        back = in_val & np.isin(y[train_side], lost)
        for g in twins:
            if back[g].any():
                back[g] = True
        in_val &= ~back
        log.warning("a validation part would have taken every training image of class(es) %s; they stay in "
                    "training, so validation lacks them", ", ".join(classes[c] if classes else str(c) for c in lost))
    if not in_val.any():  # all it held went back (a class's last images, or picks pulled to their twins)
        in_val = _stand_in(y[train_side], twins, seed)
        if not in_val.any():
            log.warning("no training image can be spared for a validation part (every class has one head in "
                        "training): this fold has none, so it keeps its last epoch")
    return train_side[~in_val], train_side[in_val]


def _stand_in(labels: np.ndarray, twins: list[list[int]], seed: int) -> np.ndarray:
    """A validation part of one head (with its twins) for a fold whose carve left none: from the
    largest class that can spare one without leaving its training side; empty where none can."""
    group_of = {i: g for g in twins for i in g}
    rng = np.random.default_rng(seed)
    for c in np.argsort(-np.bincount(labels), kind="stable"):
        for i in rng.permutation(np.flatnonzero(labels == c)):
            trial = np.zeros(len(labels), dtype=bool)
            trial[group_of.get(int(i), [int(i)])] = True
            if set(labels[~trial].tolist()) == set(labels.tolist()):
                return trial
    return np.zeros(len(labels), dtype=bool)


def _carve_val_by_group(train_side: np.ndarray, y: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
                        together: list[list[int]] | None = None,
                        classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grouped CV's validation part: whole groups of the training side, as its test folds are,
    so checkpoint choice, early stopping and the temperature are not fitted on a patient or plate
    the model also trains on. About `fraction` of the images where the groups allow; of the
    candidate parts, the first that leaves every class in training. A training side of one
    group, or whose groups cannot leave a class in training, is refused. (Twins moved by
    `keep_together` may cross a group's line: one head stays on one side first.)"""
    if fraction <= 0:
        return np.sort(train_side), np.array([], dtype=int)
    mine = groups[train_side]
    n_groups = len(set(mine.tolist()))
    if n_groups < 2:
        raise ConfigError(f"--grouped: a training side holds one acquisition group ({mine[0]}), so no group is "
                          "left for its validation part; use more groups or more folds")
    splitter = StratifiedGroupKFold(min(n_groups, max(2, round(1 / fraction))), shuffle=True, random_state=seed)
    train_side = np.sort(train_side)
    labels, mine = y[train_side], groups[train_side]
    with warnings.catch_warnings():  # a class in few groups: said below if it matters, not as sklearn's
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        candidates = list(splitter.split(train_side, labels, mine))
    usable = []  # (classes in validation, -position, mask): every class still in training
    for i, (_, val_pos) in enumerate(candidates):
        in_val = np.isin(np.arange(len(train_side)), val_pos)
        if together:
            in_val = keep_together(in_val, _restricted(together, train_side))
        if set(labels[~in_val].tolist()) == set(labels.tolist()):
            usable.append((len(set(labels[in_val].tolist())), -i, in_val))
    if usable:
        # the part that holds the most classes: checkpoint choice and the temperature rest on it,
        # and a part of one plate can hold one class alone (ties: the first, as before)
        shown, _, in_val = max(usable, key=lambda u: u[:2])
        if shown < len(set(labels.tolist())):
            log.warning("--grouped: a validation part of whole groups holds %d of the %d classes; its checkpoint "
                        "choice, temperature and balanced point rest on those", shown, len(set(labels.tolist())))
        return train_side[~in_val], train_side[in_val]
    lost = sorted(set(labels.tolist()) - set(labels[~in_val].tolist()))
    named = ", ".join(classes[c] if classes else str(c) for c in lost)
    raise ConfigError(f"--grouped: every way of taking whole groups out of a training side for its validation "
                      f"part leaves {named} with no training image, as its images lie in few groups; use fewer "
                      "folds, or CV without --grouped")


def _random_split(y: np.ndarray, split: tuple[float, float, float], seed: int,
                  together: list[list[int]] | None = None, classes: list[str] | None = None) -> Fold:
    train_f, val_f, test_f = split
    if abs(train_f + val_f + test_f - 1) > 1e-6:
        raise ConfigError(f"split fractions {split} must sum to 1")
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_f, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_f / (train_f + val_f), stratify=y[rest],
                                  random_state=seed)
    part = np.zeros(len(y), dtype=int)
    part[val], part[test] = 1, 2
    part = keep_together(part, together or [])
    # a head photographed twice goes whole to one part, which can take a small class's only
    # training head, or every test image: refused as CV refuses it, not trained without the class
    if lost := sorted(set(y.tolist()) - set(y[part == 0].tolist())):
        c = lost[0]
        mine = np.flatnonzero(y == c)
        heads = len(mine) - sum(len(g) - 1 for g in (together or []) if np.isin(g, mine).all())
        name = classes[c] if classes else str(c)
        raise ConfigError(f"with near-duplicate images kept on one side, this split trains on no '{name}' image: its "
                          f"{len(mine)} images show {heads} distinct heads; add images of it, or pass "
                          "--near-duplicates 0 (or a value nearer 1); `spermhead data duplicates` shows them")
    if not (part == 2).any():
        n = sum(len(g) for g in together or [])
        raise ConfigError(f"{n} images are near-duplicates of others ({len(together or [])} groups), so many that "
                          "this split has no test image; check them with `spermhead data duplicates`, or pass "
                          "--near-duplicates 0 (or a value nearer 1)")
    return Fold(0, np.flatnonzero(part == 0), np.flatnonzero(part == 1), np.flatnonzero(part == 2))


def _folder_split(table: SampleTable) -> Fold:
    if not table.has_fixed_split:
        raise ConfigError(f"{table.name}: --split folders needs train/, val/ and test/ folders")
    by = {k: np.array([i for i, s in enumerate(table.samples) if s.split == k], dtype=int)
          for k in ("train", "val", "test")}  # int even when empty (a table built in code without val rows)
    if lacking := sorted({s.label for s in table.samples} - {table.samples[i].label for i in by["train"]}):
        raise ConfigError(f"{table.name}: its train part has no images of {', '.join(lacking)}, which its val or "
                          "test part holds; a model cannot learn a class it never sees (add some, or use --cv K)")
    return Fold(0, by["train"], by["val"], by["test"])


def split_twins_note(table: SampleTable, fold: Fold, together: list[list[int]]) -> str | None:
    """A fixed split is kept as the lab made it; a head in both its training and its validation or
    test part is pointed out (None where there is none), since its figures then flatter the model."""
    part = np.zeros(len(table), int)
    part[fold.val], part[fold.test] = 1, 2
    across = [g for g in together if len({bool(part[i]) for i in g}) > 1]
    if not across:
        return None
    # paths, not ids: a part's folder may be named otherwise than its id says ("Training/")
    shown = "; ".join(" = ".join(str(table.samples[i].path) for i in g) for g in across[:3])
    return (f"{table.name}: {len(across)} {'head is' if len(across) == 1 else 'heads are'} in the training part "
            f"and also, as a near-duplicate, in the validation or test part ({shown}{'; ...' if len(across) > 3 else ''}); "
            "the split is kept as it is, but its validation and test figures flatter the model")


def _warn_split_twins(table: SampleTable, fold: Fold, together: list[list[int]]) -> None:
    if note := split_twins_note(table, fold, together):
        log.warning("%s", note)


def parse_split(text: str) -> tuple[str, tuple[float, float, float] | None]:
    """`folders` or `60/30/10` (percentages) -> (kind, fractions)."""
    if text == "folders":
        return "folders", None
    try:
        parts = tuple(float(p) for p in text.split("/"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or abs(sum(parts) - 100) > 1e-6:
        raise ConfigError(f"--split {text!r}: use 'folders' or three percentages that add up to 100, like 60/30/10")
    if min(parts) <= 0:  # every part must hold images: a stratified split cannot carve an empty one
        raise ConfigError(f"--split {text!r}: each of train, validation and test needs a share above 0")
    return "random", tuple(p / 100 for p in parts)  # type: ignore[return-value]
