"""Extra training images: labelled heads from another source that join every fold's training
side and are never validated or tested on. The case that motivated it: SCIAN's partial-agreement
heads while scoring its total-agreement subset, whose own folds are then the only test data."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from spermhead.data.duplicates import DEFAULT_THRESHOLD, nearest, signatures
from spermhead.data.samples import Sample, SampleTable
from spermhead.errors import ConfigError


def _fingerprint(path: Path) -> str:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{path}"  # canonicalisation names the file and the problem later


def pool_extra_training(table: SampleTable, names: tuple[str, ...] | list[str], data_dir: str | None,
                        near_duplicates: float = DEFAULT_THRESHOLD) -> tuple[SampleTable, dict[str, Any]]:
    """`table` followed by the extra samples (the first len(table) rows are `table` itself).

    An extra image is dropped when its file, or a file with the same bytes, is one of the
    dataset's own, and when it looks like one of them (a re-saved or rescaled copy, or the same
    head photographed again: `near_duplicates`, data/duplicates.py; 0 skips that check). None
    of the dataset's validation or test images can come back as training data. So are extras of
    classes the dataset lacks. Extra ids get an `extra/NAME/` prefix, so they never collide with
    the dataset's."""
    if not names:
        return table, {}
    from spermhead.data.readers import load_dataset

    own_paths = {s.path.resolve() for s in table.samples}
    own_bytes = {_fingerprint(s.path) for s in table.samples}
    extra_paths: set[Path] = set()
    extra_bytes: set[str] = set()
    own_sigs = signatures([s.path for s in table.samples]) if near_duplicates > 0 else None
    classes = set(table.classes)
    extra: list[Sample] = []
    report: dict[str, Any] = {}
    for name in names:
        other = load_dataset(name, data_dir)
        kept, duplicates, repeated, other_class = [], 0, 0, 0
        for s in other.samples:
            if s.label not in classes:
                other_class += 1
            elif s.path.resolve() in own_paths or (fingerprint := _fingerprint(s.path)) in own_bytes:
                duplicates += 1
            elif s.path.resolve() in extra_paths or fingerprint in extra_bytes:
                repeated += 1  # an extra already taken (two sources that share files, or copies): once
            else:
                kept.append(replace(s, id=f"extra/{name}/{s.id}", split=""))
                extra_paths.add(s.path.resolve())
                extra_bytes.add(fingerprint)
        alike = 0
        if own_sigs is not None and kept:
            close = nearest(signatures([s.path for s in kept]), own_sigs) >= near_duplicates
            alike = int(close.sum())
            kept = [s for s, c in zip(kept, close, strict=True) if not c]
        report[name] = {"images": len(other), "kept": len(kept), "dataset_duplicates": duplicates,
                        "extra_repeats": repeated, "near_duplicates": alike, "other_classes": other_class,
                        "per_class": dict(Counter(s.label for s in kept))}
        extra += kept
    if not extra:
        raise ConfigError(f"--extra-train {', '.join(names)}: no images left once the dataset's own images "
                          f"and classes it lacks ({', '.join(table.classes)} only) are removed")
    return SampleTable(table.name, table.samples + extra, list(table.classes), table.synthetic), report
