"""Training targets. SCIAN has three experts per head: their votes make a soft target that says
how sure the experts were, instead of pretending the majority label is certain."""

from __future__ import annotations

import numpy as np

from spermhead.data.samples import SampleTable


def soft_targets(table: SampleTable, indices: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """N x K: `weight` x the experts' vote shares plus (1 - weight) x the one-hot majority label.
    Votes for codes outside the dataset's classes are dropped; samples without experts stay hard."""
    index = {c: i for i, c in enumerate(table.classes)}
    out = np.zeros((len(indices), len(table.classes)), dtype=np.float32)
    for row, i in enumerate(indices):
        s = table.samples[i]
        hard = np.zeros(len(table.classes), dtype=np.float32)
        hard[index[s.label]] = 1.0
        votes = [index[e] for e in s.experts if e in index]
        if not votes:
            out[row] = hard
            continue
        shares = np.bincount(votes, minlength=len(table.classes)).astype(np.float32) / len(votes)
        out[row] = weight * shares + (1 - weight) * hard
    return out
