"""Any sperm-head crop -> the canonical aligned image the models see.

    read_image(source, name=None, max_pixels=MAX_PIXELS) -> H x W x 3 uint8 RGB   (io.py)
    canonicalize(rgb, cfg) -> CanonicalImage                                       (align.py)
    load_canonical(path, cfg) -> CanonicalImage
    canonicalize_paths(paths, cfg, workers=0) -> (N x C x S x S uint8, [CanonicalImage])
    segment_head(rgb) -> bool mask | None
    contact_sheet(table, cfg, out, per_class=6, seed=0) -> Path                    (preview.py)

Names are loaded on first use, so `import spermhead.preprocess.io` does not pull in OpenCV.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_image": "io",
    "CanonicalImage": "align",
    "Morphometrics": "align",
    "canonicalize": "align",
    "canonicalize_paths": "align",
    "load_canonical": "align",
    "segment_head": "align",
    "contact_sheet": "preview",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
