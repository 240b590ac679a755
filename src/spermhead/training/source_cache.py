"""The synthetic source models cached under $SPERMHEAD_CACHE (`training/synthetic_init.py`):
listed, and removed on request. Nothing there goes by itself, and sources trained under settings
this version never asks for again (before sources were keyed on the thread count) only take room."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spermhead.training.synthetic_init import cache_root, reachable_settings, training_lock


@dataclass(frozen=True)
class CachedSource:
    path: Path  # the source's weights
    files: tuple[Path, ...]  # the weights, their record, lock and classifier-less copies
    settings: dict[str, Any] | None  # from the record; None where it is missing or damaged
    bytes: int
    trained: float  # the weights' modification time (seconds since the epoch)

    @property
    def stale(self) -> bool:
        """Trained under settings this version never asks for (or with no readable record): no
        run will start from it again, though runs that took it keep their own copy."""
        return self.settings is None or not reachable_settings(self.settings)

    def describe(self) -> dict[str, Any]:
        s = self.settings or {}
        pre = s.get("preprocess") or {}
        on = ("GPU" if s.get("device") == "gpu" else
              f"{s['threads']} thread{'s' * (s['threads'] != 1)}" if isinstance(s.get("threads"), int) else "?")
        inputs = f"{pre.get('image_size', '?')} px {pre.get('color', '?')}, {s.get('style', '?')} heads"
        return {"source": self.path.stem, "model": s.get("model", "?"), "input": inputs, "trained_on": on,
                "megabytes": round(self.bytes / 2**20, 1),
                "trained": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.trained)), "stale": self.stale,
                "path": str(self.path)}


def source_folder() -> Path:
    return cache_root() / "synthetic-init"


def cached_sources(folder: Path | None = None) -> list[CachedSource]:
    """Every cached source in `folder` (default: the cache's), oldest first."""
    folder = folder or source_folder()
    if not folder.is_dir():
        return []
    found = []
    for weights in folder.glob("*.safetensors"):
        if "-backbone-" in weights.name:
            continue  # a copy without the classifier: it goes with its source
        files = [weights, *(weights.with_suffix(s) for s in (".json", ".lock")),
                 *folder.glob(f"{weights.stem}-backbone-*.safetensors")]
        files = [f for f in files if f.is_file()]
        try:
            settings = json.loads(weights.with_suffix(".json").read_text())["settings"]
            settings = settings if isinstance(settings, dict) else None
        except (OSError, ValueError, KeyError, TypeError):
            settings = None
        found.append(CachedSource(weights, tuple(files), settings, sum(f.stat().st_size for f in files),
                                  weights.stat().st_mtime))
    return sorted(found, key=lambda c: (c.trained, c.path.name))


def remove_source(source: CachedSource) -> bool:
    """Delete a source's files; False (nothing deleted) while a run is training it."""
    with training_lock(source.path, wait=False) as free:
        if not free:
            return False
        # the lock goes too: a run that opens it now trains anew beside any other, as where no
        # lock can be taken (the last rename wins)
        for f in (*source.files, source.path.with_suffix(".lock")):
            f.unlink(missing_ok=True)
    return True
