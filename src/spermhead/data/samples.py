"""The sample table: one row per image, the unit every later stage keys on."""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from spermhead.errors import DataError

# Canonical order of the WHO head classes; datasets list theirs in this order.
WHO_CLASSES = ("normal", "tapered", "pyriform", "small", "amorphous")

# How the CSV files that hold sample ids are opened. A file name that is not UTF-8 (an old
# Windows share's Latin-1) reaches its id as lone surrogates, which strict UTF-8 cannot write:
# surrogateescape writes the name's own bytes and reads them back as the same id.
CSV_FILE = {"newline": "", "encoding": "utf-8", "errors": "surrogateescape"}
# read leniently: Excel's "CSV UTF-8" puts a byte-order mark before the header
CSV_READ = {**CSV_FILE, "encoding": "utf-8-sig"}


def printable(text: str) -> str:
    """A file name (or text holding one) as rows and reports record it: bytes that are not UTF-8
    (a name from an old Windows share, held by Python as surrogates) written as escapes, so every
    table, CSV, JSON and HTML page can hold it."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Sample:
    id: str  # unique within a dataset, stable across runs (predictions key on it)
    path: Path
    label: str
    source: str  # "hushem", "scian", or a folder's name
    group: str = ""  # acquisition group (SCIAN prefix such as "p1-pl2"); "" when unknown
    experts: tuple[str, ...] = ()  # per-expert labels where the dataset has them
    split: str = ""  # "train" / "val" / "test" for datasets that fix their split


@dataclass
class SampleTable:
    name: str
    samples: list[Sample]
    classes: list[str] = field(default_factory=list)
    synthetic: bool = False  # rendered by `spermhead data synth` (its SYNTHETIC.txt), not photographed

    def __post_init__(self) -> None:
        ids = [s.id for s in self.samples]
        if len(set(ids)) != len(ids):
            dup = [i for i, n in Counter(ids).items() if n > 1][:3]
            raise DataError(f"dataset {self.name!r}: duplicate sample ids {dup}: each image needs its own id, "
                            "as predictions and labels are paired by it")
        if not self.classes:
            self.classes = order_classes({s.label for s in self.samples})

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    @property
    def label_indices(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[s.label] for s in self.samples]

    @property
    def has_fixed_split(self) -> bool:
        return bool(self.samples) and all(s.split for s in self.samples)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {c: counts.get(c, 0) for c in self.classes}

    def source_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.source for s in self.samples).items()))

    def subset(self, keep: list[int] | None = None, *, name: str | None = None) -> SampleTable:
        chosen = self.samples if keep is None else [self.samples[i] for i in keep]
        return SampleTable(name or self.name, list(chosen), list(self.classes), self.synthetic)

    def summary(self) -> dict:
        return {
            "total": len(self),
            "classes": self.class_counts(),
            "sources": self.source_counts(),
        }

    def write_csv(self, path: Path) -> None:
        with open(path, "w", **CSV_FILE) as fh:
            w = csv.writer(fh)
            w.writerow(["id", "path", "label", "source", "group", "experts", "split"])
            for s in self.samples:
                w.writerow([s.id, s.path, s.label, s.source, s.group, "|".join(s.experts), s.split])


def order_classes(names: set[str] | list[str]) -> list[str]:
    """WHO classes first in their canonical order, then any others alphabetically."""
    names = set(names)
    known = [c for c in WHO_CLASSES if c in names]
    return known + sorted(names - set(WHO_CLASSES))
