"""Would near-duplicate detection that also tries each thumbnail turned by 90, 180 and 270 degrees
and mirrored (the 8 symmetries of a square) find more copies, or mistake distinct heads for one?
For each dataset: the groups found as the thumbnails lie and with the turns, and the most alike
pair that only a turn or mirror brings together (benchmarks/RESULTS.md, session 28).

    .venv/bin/python benchmarks/turned_duplicates.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from spermhead.data.duplicates import DEFAULT_THRESHOLD, THUMBNAIL, near_duplicate_groups, signatures
from spermhead.data.readers import load_dataset


def turned(sigs: np.ndarray) -> list[np.ndarray]:
    """The 8 turns and mirrors of each signature (a square thumbnail, flattened)."""
    square = sigs.reshape(len(sigs), THUMBNAIL, THUMBNAIL)
    out = []
    for mirrored in (square, square[:, :, ::-1]):
        out += [np.ascontiguousarray(np.rot90(mirrored, k, axes=(1, 2))).reshape(len(sigs), -1) for k in range(4)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/datasets")
    args = ap.parse_args()
    print("| dataset | images | groups as they lie | groups with turns | most alike pair only a turn brings together |")
    print("|---|---|---|---|---|")
    for name in ("hushem", "scian-pa", "scian-ta"):
        table = load_dataset(name, args.data_dir)
        sigs = signatures([s.path for s in table.samples])
        plain = sigs @ sigs.T
        best = np.max([sigs @ t.T for t in turned(sigs)], axis=0)
        for m in (plain, best):
            np.fill_diagonal(m, -1.0)
        _, component = connected_components(csr_matrix(best >= DEFAULT_THRESHOLD), directed=False)
        with_turns = int(np.sum(np.bincount(component) > 1))
        only_turned = np.where(best > plain + 1e-6, best, -1.0)
        i, j = np.unravel_index(np.argmax(only_turned), only_turned.shape)
        a, b = table.samples[i], table.samples[j]
        print(f"| {name} | {len(table)} | {len(near_duplicate_groups(sigs))} | {with_turns} | {only_turned[i, j]:.4f} "
              f"(as they lie {plain[i, j]:.4f}): {a.id} ({a.label}), {b.id} ({b.label}) |")


if __name__ == "__main__":
    main()
