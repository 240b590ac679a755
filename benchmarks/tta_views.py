"""Test-time augmentation beyond flips, measured on a bench's saved fold models.

Training already averages each image over the flips the model learnt as symmetries. This adds
small rotations and zooms (inside the range the "aligned" preset trains with) and scores every
view set on the validation parts of each fold (which decide) and on the test folds (for the
record). With `--shape-fusion W` the shape model is fitted on each fold's training side and
fused as training does, so HuSHeM's recipe can be measured on its CNN-alone bench runs.

Bench runs since session 12 refit each fold on training + validation, and HuSHeM's fuses the pixel
model, which this script cannot score: give it lever runs without them (session 31), e.g.
`levers.py hushem no_refit_val --set pixel_fusion=0 --seeds 1,2,3`, then

    .venv/bin/python benchmarks/tta_views.py /tmp/levers/hushem/no_refit_val --seeds 1,2,3 --shape-fusion 0.3
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from saved_folds import Tally, bench_arguments, print_scores, saved_folds  # benchmarks/, beside this script

from spermhead.models.inference import flip_views, to_input
from spermhead.models.shape import fuse
from spermhead.training.augment import tta_flips, warp

# name -> (rotation degrees, zoom factors), each combined with every flip view
VIEW_SETS = {
    "flips": ((0.0,), (1.0,)),
    "rot5": ((-5.0, 0.0, 5.0), (1.0,)),
    "rot10": ((-10.0, 0.0, 10.0), (1.0,)),
    "zoom": ((0.0,), (0.92, 1.0, 1.08)),
    "rot5+zoom": ((-5.0, 0.0, 5.0), (0.92, 1.0, 1.08)),
}


def affine(x: torch.Tensor, degrees: float, zoom: float) -> torch.Tensor:
    """Rotate and zoom about the centre with training's own warp (border padding)."""
    if degrees == 0.0 and zoom == 1.0:
        return x
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a) / zoom, -math.sin(a) / zoom, 0.0],
                          [math.sin(a) / zoom, math.cos(a) / zoom, 0.0]], dtype=x.dtype)
    return warp(x, theta.expand(len(x), 2, 3))


@torch.inference_mode()
def view_probs(model: torch.nn.Module, images: np.ndarray, flips: str, degrees: tuple[float, ...],
               zooms: tuple[float, ...]) -> np.ndarray:
    x = to_input(images, [0.0], [1.0])  # the fold model standardises inside
    views = [v for d in degrees for z in zooms for v in flip_views(affine(x, d, z), flips)]
    return torch.stack([model(v).softmax(-1) for v in views]).mean(0).numpy()


def seed_scores(run: Path, data_dir: str, w: float) -> dict[tuple[str, str], tuple[float, float]]:
    """(view set, "val"|"test") -> (accuracy, average recall) pooled over the run's folds."""
    tally = Tally()
    for saved in saved_folds(run, data_dir):
        fold, y, flips = saved.fold, saved.labels, tta_flips(saved.cfg.train.augment)
        shape = saved.shape_model() if w > 0 else None
        for part, idx in (("val", fold.val), ("test", fold.test)):
            for name, (degrees, zooms) in VIEW_SETS.items():
                probs = view_probs(saved.model, saved.images[idx], flips, degrees, zooms)
                if shape is not None:
                    probs = fuse(probs, shape.predict_proba(saved.profiles()[idx]), w)
                tally.add((name, part), probs, y[idx])
    return tally.scores()


def main() -> None:
    ap = bench_arguments(__doc__)
    ap.add_argument("--shape-fusion", type=float, default=0.0, help="fuse the shape model at this weight")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: seed_scores(args.bench_dir / f"seed{s}", args.data_dir, args.shape_fusion) for s in seeds}
    print_scores(scores, {name: name for name in VIEW_SETS}, f"shape fusion {args.shape_fusion}")

if __name__ == "__main__":
    main()
