"""How many images in each dataset show a head that another image shows too, how far the
threshold sits from distinct heads and from re-saved copies, and how often the usual stratified
5-fold protocol splits such a pair between training and test. It also looks for copies that were
rotated or flipped, which the detector (plain thumbnails) would miss.

    .venv/bin/python benchmarks/near_duplicates.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse
import io

import cv2
import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedKFold

from spermhead.data.duplicates import DEFAULT_THRESHOLD, near_duplicate_groups, signature, signatures
from spermhead.data.readers import load_dataset
from spermhead.preprocess.io import read_image


def resaved(path, scale: float = 0.75, quality: int = 80) -> np.ndarray:
    rgb = read_image(path)
    im = Image.fromarray(rgb).resize((max(8, round(rgb.shape[1] * scale)), max(8, round(rgb.shape[0] * scale))),
                                     Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return read_image(buf.getvalue(), "copy.jpg")


def turned_matches(paths, threshold: float) -> tuple[float, int]:
    """The highest correlation between two different images when one is rotated by a multiple of
    90 degrees or flipped (7 orientations), and how many pairs reach `threshold` only that way."""
    squares = [cv2.resize(read_image(p), (64, 64), interpolation=cv2.INTER_AREA) for p in paths]  # rot90 exact
    plain = np.stack([signature(x) for x in squares])
    best = np.full((len(paths), len(paths)), -1.0, dtype=np.float32)
    for k in range(4):
        for flip in (False, True):
            if k or flip:
                turned = (np.rot90(x, k)[:, ::-1] if flip else np.rot90(x, k) for x in squares)
                best = np.maximum(best, plain @ np.stack([signature(np.ascontiguousarray(x)) for x in turned]).T)
    same = plain @ plain.T
    upper = np.triu_indices(len(paths), 1)
    return float(best[upper].max()), int(((best[upper] >= threshold) & (same[upper] < threshold)).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--seeds", default="1,2,3", help="CV seeds for the split count")
    args = ap.parse_args()
    sigs = {}
    print(f"| dataset | images | groups (r >= {args.threshold:.2f}) | images in them | one head, two labels "
          "| pairs 0.97-0.98 | closest pair under the threshold | re-saved copy, lowest r "
          "| twin pairs split by plain 5-fold CV (per seed) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("hushem", "scian-pa", "scian-ta"):
        table = load_dataset(name, args.data_dir)
        s = sigs[name] = signatures([x.path for x in table.samples])
        groups = near_duplicate_groups(s, args.threshold)
        corr = s @ s.T
        np.fill_diagonal(corr, -1)
        inside = {i for g in groups for i in g}
        upper = corr[np.triu_indices(len(s), 1)]
        outside = corr[np.ix_([i for i in range(len(s)) if i not in inside], [i for i in range(len(s)) if i not in inside])]
        mixed = sum(len({table.samples[i].label for i in g}) > 1 for g in groups)
        copies = [float(s[i] @ signature(resaved(table.samples[i].path))) for i in range(0, len(s), max(1, len(s) // 100))]
        y = np.asarray(table.label_indices)
        split = []
        for seed in (int(v) for v in args.seeds.split(",")):
            fold = np.empty(len(y), int)
            for k, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=seed).split(y, y)):
                fold[test] = k
            split.append(sum(len({fold[i] for i in g}) > 1 for g in groups))
        print(f"| {name} | {len(s)} | {len(groups)} | {len(inside)} | {mixed} | {int(((upper >= 0.97) & (upper < 0.98)).sum())} "
              f"| {outside.max():.4f} | {min(copies):.4f} (of {len(copies)}) | {' / '.join(map(str, split))} |")
    for name in ("hushem", "scian-pa"):  # scian-ta is a subset of scian-pa
        top, found = turned_matches([x.path for x in load_dataset(name, args.data_dir).samples], args.threshold)
        print(f"\n{name}: rotated or flipped copies: best r {top:.4f} between two images in any of 7 "
              f"orientations; {found} pair(s) reach {args.threshold:.2f} only when turned")
    cross = (sigs["hushem"] @ sigs["scian-pa"].T).max()
    print(f"\nHighest correlation between a HuSHeM and a SCIAN image: {cross:.4f}")


if __name__ == "__main__":
    main()
