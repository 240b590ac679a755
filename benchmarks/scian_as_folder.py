"""Lay a SCIAN set out as plain class folders (links to the dataset's own files), so that a run
reads it as a lab's folder would be read: folder defaults, no expert votes.

    .venv/bin/python benchmarks/scian_as_folder.py /tmp/SCIAN-TA-folder --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spermhead.data.readers import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a new folder for the class folders")
    ap.add_argument("--dataset", default="scian-ta")
    ap.add_argument("--data-dir", default="../shared/datasets")
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; pass a new folder")
    table = load_dataset(args.dataset, args.data_dir)
    for sample in table.samples:
        folder = args.out / sample.label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / (sample.id.replace("/", "__") + sample.path.suffix)).symlink_to(sample.path.resolve())
    print(f"{args.out}: {len(table)} links in {len(table.class_counts())} class folders {table.class_counts()}")


if __name__ == "__main__":
    main()
