"""Predictions that travel with their labels, keyed by sample id.

The seed compared a prediction list with a label list in a different order and reported
a 0.68 model as 0.39. Here a true label is only ever looked up by sample id, and every
row carries its id, source, fold, true label and probabilities together, so the two
lists cannot drift apart.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spermhead.data.samples import CSV_FILE, CSV_READ, SampleTable

NO_FOLD = -1
PROB_PREFIX = "p_"
_BASE_COLUMNS = ["id", "source", "fold", "true", "pred"]
_ROW_SUM_TOL = 1e-3  # float32 softmax outputs sum to 1 within ~1e-6; leave room for rounding


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Predictions:
    """One row per sample: id, source, fold (-1 = none), true label, class probabilities.

    `classes` names the probability columns in order. Predicted labels are the argmax of
    the probabilities (any prior correction is already inside them), so they can never
    disagree with the probabilities the curves are drawn from.
    """

    ids: list[str]
    sources: list[str]
    folds: np.ndarray  # int, NO_FOLD where the sample was not held out in a fold
    true: list[str]
    probabilities: np.ndarray  # N x K float64, rows sum to 1
    classes: list[str]
    pred: list[str] = field(init=False)

    def __post_init__(self) -> None:
        ids = [str(i) for i in self.ids]
        sources = [str(s) for s in self.sources]
        true = [str(t) for t in self.true]
        classes = [str(c) for c in self.classes]
        probs = np.array(self.probabilities, dtype=np.float64)
        folds = np.array(self.folds, dtype=np.int64).reshape(-1)
        n = len(ids)

        if len(set(classes)) != len(classes) or not classes:
            raise ValueError(f"classes must be unique and non-empty, got {classes}")
        if len(set(ids)) != n:
            dup = [i for i, c in Counter(ids).items() if c > 1][:3]
            raise ValueError(f"duplicate sample ids in predictions: {dup}")
        for name, seq in (("sources", sources), ("true labels", true), ("folds", folds)):
            if len(seq) != n:
                raise ValueError(f"{name}: {len(seq)} entries for {n} ids")
        if n == 0:
            probs = probs.reshape(0, len(classes))
        if probs.ndim != 2 or probs.shape != (n, len(classes)):
            raise ValueError(
                f"probabilities have shape {probs.shape}, expected ({n}, {len(classes)}) "
                f"for {n} ids and classes {classes}"
            )
        if not np.isfinite(probs).all() or (probs < -1e-9).any():
            raise ValueError("probabilities must be finite and non-negative")
        sums = probs.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > _ROW_SUM_TOL)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"probability rows must sum to 1: {bad.size} do not, e.g. id {ids[i]!r} sums to {sums[i]:.6f}"
            )
        unknown = sorted(set(true) - set(classes))
        if unknown:
            raise ValueError(f"true labels {unknown} are not among the classes {classes}")

        pred = [classes[k] for k in probs.argmax(axis=1)] if n else []
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "true", true)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "probabilities", _readonly(probs))
        object.__setattr__(self, "folds", _readonly(folds))
        object.__setattr__(self, "pred", pred)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_model_output(
        cls,
        ids: Sequence[str],
        probs: np.ndarray,
        table: SampleTable,
        folds: int | Sequence[int] | np.ndarray | None = None,
        classes: Sequence[str] | None = None,
    ) -> Predictions:
        """Wrap a model's probabilities for `ids` (row i belongs to ids[i]).

        True labels and sources come from `table` BY ID, never by position, so the rows
        may be in any order. `classes` (default: the table's) names the columns of `probs`.
        """
        ids = [str(i) for i in ids]
        probs = np.asarray(probs)
        if probs.ndim != 2 or probs.shape[0] != len(ids):
            raise ValueError(f"probabilities have shape {probs.shape} for {len(ids)} ids")
        by_id = {s.id: s for s in table.samples}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(
                f"{len(missing)} ids are not in dataset {table.name!r}, e.g. {missing[:3]}"
            )
        samples = [by_id[i] for i in ids]
        if folds is None:
            fold_arr = np.full(len(ids), NO_FOLD, dtype=np.int64)
        elif np.isscalar(folds):
            fold_arr = np.full(len(ids), int(folds), dtype=np.int64)  # type: ignore[arg-type]
        else:
            fold_arr = np.asarray(folds, dtype=np.int64)
        return cls(
            ids=ids,
            sources=[s.source for s in samples],
            folds=fold_arr,
            true=[s.label for s in samples],
            probabilities=probs,
            classes=list(classes) if classes is not None else list(table.classes),
        )

    # ------------------------------------------------------------------ views

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def true_indices(self) -> np.ndarray:
        index = {c: k for k, c in enumerate(self.classes)}
        return np.array([index[t] for t in self.true], dtype=np.int64)

    @property
    def pred_indices(self) -> np.ndarray:
        if not len(self):
            return np.zeros(0, dtype=np.int64)
        return self.probabilities.argmax(axis=1).astype(np.int64)

    @property
    def fold_numbers(self) -> list[int]:
        """The distinct folds (NO_FOLD excluded), ascending."""
        return sorted({int(f) for f in self.folds if f != NO_FOLD})

    @property
    def source_names(self) -> list[str]:
        return sorted(set(self.sources))

    def subset(self, keep: Sequence[int] | np.ndarray) -> Predictions:
        """Rows by integer positions or a boolean mask (rows keep their own labels)."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return Predictions(
            ids=[self.ids[i] for i in idx],
            sources=[self.sources[i] for i in idx],
            folds=self.folds[idx],
            true=[self.true[i] for i in idx],
            probabilities=self.probabilities[idx].reshape(len(idx), len(self.classes)),
            classes=list(self.classes),
        )

    def for_fold(self, fold: int) -> Predictions:
        return self.subset(self.folds == fold)

    def for_source(self, source: str) -> Predictions:
        return self.subset(np.array([s == source for s in self.sources], dtype=bool))

    def sorted_by_id(self) -> Predictions:
        return self.subset(np.array(sorted(range(len(self)), key=self.ids.__getitem__), dtype=np.int64))

    # ------------------------------------------------------------------ files

    def write_csv(self, path: Path | str) -> Path:
        """Columns id, source, fold, true, pred, p_<class>...; floats as shortest exact repr."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", **CSV_FILE) as fh:
            w = csv.writer(fh)
            w.writerow(_BASE_COLUMNS + [PROB_PREFIX + c for c in self.classes])
            for i in range(len(self)):
                w.writerow(
                    [self.ids[i], self.sources[i], int(self.folds[i]), self.true[i], self.pred[i]]
                    + [repr(float(p)) for p in self.probabilities[i]]
                )
        return path

    @classmethod
    def read_csv(cls, path: Path | str) -> Predictions:
        path = Path(path)
        with open(path, **CSV_READ) as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise ValueError(f"{path.name}: empty predictions file")
        header, body = rows[0], rows[1:]
        prob_cols = header[len(_BASE_COLUMNS) :]
        if header[: len(_BASE_COLUMNS)] != _BASE_COLUMNS or not prob_cols or not all(
            c.startswith(PROB_PREFIX) for c in prob_cols
        ):
            raise ValueError(
                f"{path.name}: expected columns {', '.join(_BASE_COLUMNS)}, p_<class>..., got {header}"
            )
        classes = [c[len(PROB_PREFIX) :] for c in prob_cols]
        for line, r in enumerate(body, start=2):
            if len(r) != len(header):
                raise ValueError(f"{path.name}: line {line} has {len(r)} fields, expected {len(header)}")
        k = len(_BASE_COLUMNS)
        probs = np.array([[float(x) for x in r[k:]] for r in body], dtype=np.float64)
        out = cls(
            ids=[r[0] for r in body],
            sources=[r[1] for r in body],
            folds=np.array([int(r[2]) for r in body], dtype=np.int64),
            true=[r[3] for r in body],
            probabilities=probs.reshape(len(body), len(classes)),
            classes=classes,
        )
        # The pred column is derived; a mismatch means the file was edited or is corrupt.
        stale = [r[0] for r, p in zip(body, out.pred, strict=True) if r[4] != p]
        if stale:
            raise ValueError(
                f"{path.name}: the pred column disagrees with the argmax of the probabilities for "
                f"{len(stale)} rows, e.g. {stale[:3]}"
            )
        return out

    @staticmethod
    def concat(parts: Sequence[Predictions]) -> Predictions:
        return concat(parts)


def concat(parts: Sequence[Predictions]) -> Predictions:
    """Join out-of-fold parts into one set. Refuses duplicate ids (a sample predicted twice
    would be counted twice) and parts whose class columns differ."""
    parts = list(parts)
    if not parts:
        raise ValueError("nothing to concatenate")
    classes = parts[0].classes
    for p in parts[1:]:
        if p.classes != classes:
            raise ValueError(f"cannot concatenate predictions over classes {p.classes} and {classes}")
    ids = [i for p in parts for i in p.ids]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise ValueError(f"{len(dup)} sample ids appear in more than one part, e.g. {dup[:3]}")
    return Predictions(
        ids=ids,
        sources=[s for p in parts for s in p.sources],
        folds=np.concatenate([p.folds for p in parts]),
        true=[t for p in parts for t in p.true],
        probabilities=np.concatenate([p.probabilities for p in parts], axis=0),
        classes=list(classes),
    )


def read_predictions(source: Path | str) -> Predictions:
    """A predictions.csv, or the run (or `evaluate`) folder holding one; an error names the file."""
    from spermhead.errors import DataError

    source = Path(source)
    path = source / "predictions.csv" if source.is_dir() else source
    try:
        return Predictions.read_csv(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read predictions ({exc})") from exc

