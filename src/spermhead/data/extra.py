"""Extra training images: labelled heads from another source that join every fold's training
side and are never validated or tested on. The case that motivated it: SCIAN's partial-agreement
heads while scoring its total-agreement subset, whose own folds are then the only test data."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from spermhead.data.samples import Sample, SampleTable
from spermhead.errors import ConfigError


def _fingerprint(path: Path) -> str:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{path}"  # canonicalisation names the file and the problem later


def pool_extra_training(table: SampleTable, names: tuple[str, ...] | list[str],
                        data_dir: str | None) -> tuple[SampleTable, dict[str, Any]]:
    """`table` followed by the extra samples (the first len(table) rows are `table` itself).

    An extra image is dropped when its file, or a file with the same bytes, is one of the
    dataset's own: none of its validation or test images can come back as training data, even
    from a copy. So are extras of classes the dataset lacks. Extra ids get an `extra/NAME/`
    prefix, so they never collide with the dataset's."""
    if not names:
        return table, {}
    from spermhead.data.readers import load_dataset

    own_paths = {s.path.resolve() for s in table.samples}
    own_bytes = {_fingerprint(s.path) for s in table.samples}
    classes = set(table.classes)
    extra: list[Sample] = []
    report: dict[str, Any] = {}
    for name in names:
        other = load_dataset(name, data_dir)
        kept, duplicates, other_class = [], 0, 0
        for s in other.samples:
            if s.label not in classes:
                other_class += 1
            elif s.path.resolve() in own_paths or _fingerprint(s.path) in own_bytes:
                duplicates += 1
            else:
                kept.append(replace(s, id=f"extra/{name}/{s.id}", split=""))
                own_paths.add(s.path.resolve())  # two extra sources that share files add them once
        report[name] = {"images": len(other), "kept": len(kept), "dataset_duplicates": duplicates,
                        "other_classes": other_class, "per_class": dict(Counter(s.label for s in kept))}
        extra += kept
    if not extra:
        raise ConfigError(f"--extra-train {', '.join(names)}: no images left once the dataset's own images "
                          f"and classes it lacks ({', '.join(table.classes)} only) are removed")
    return SampleTable(table.name, table.samples + extra, list(table.classes)), report
