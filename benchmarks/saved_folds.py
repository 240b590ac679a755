"""The fold models of a saved CV run, reloaded with the run's own folds and images, for offline
measurements on bench runs (profile_fusion.py, tta_views.py)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn

from spermhead.config import RunConfig, load_config
from spermhead.data.readers import load_dataset
from spermhead.models.inference import predict_proba
from spermhead.models.shape import ShapeModel
from spermhead.preprocess.profile import profiles as head_profiles
from spermhead.training.augment import tta_flips
from spermhead.training.operating import learnt_prior_correction
from spermhead.training.protocols import Fold, make_folds
from spermhead.training.run import build_member, canonical_images


@dataclass
class SavedFold:
    cfg: RunConfig
    images: np.ndarray  # every canonical image of the dataset, uint8
    labels: np.ndarray
    classes: list[str]
    fold: Fold
    model: nn.Module  # the fold's first member, in eval mode
    _shared: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # per run, across its folds

    def cnn_probs(self, idx: np.ndarray, *, raw: bool = False) -> np.ndarray:
        """The fold CNN's posteriors for images `idx`, scored as training scores them (flip TTA,
        and the training prior given back after class-balanced training, unless `raw`)."""
        prior = None if raw else learnt_prior_correction(self.labels[self.fold.train], len(self.classes),
                                                         self.cfg.train.balance)
        return predict_proba(self.model, self.images[idx], [0.0], [1.0], tta=self.cfg.train.tta,
                             flips=tta_flips(self.cfg.train.augment), class_bias=prior)

    def profiles(self) -> np.ndarray:
        """The shape model's features for every image, computed once per run."""
        if "profiles" not in self._shared:
            self._shared["profiles"] = head_profiles(self.images)
        return self._shared["profiles"]

    def morphometrics(self) -> np.ndarray:
        """N x 5 size and shape figures in the original image's pixels (log area, length and
        width, elongation, roundness); NaN where alignment found no head."""
        return self._shared["morphometrics"]

    def shape_model(self) -> ShapeModel:
        """The shape model fitted on this fold's training side, as `--shape-fusion` fits it."""
        return ShapeModel.fit(self.profiles()[self.fold.train], self.labels[self.fold.train], len(self.classes))


def saved_folds(run: Path, data_dir: str, *, cnn_and_shape_only: bool = True) -> Iterator[SavedFold]:
    """Each fold of a finished CV run, its first member reloaded. `cnn_and_shape_only`: the
    caller scores the run as its recipe does from `cnn_probs` and `shape_model` alone, so a run
    that also fuses the pixel model or holds several members per fold is refused: scored so, its
    figures would not be the run's (session 31). Scripts that score the saved second opinions
    themselves (blend_sources.py) or study the CNN on its own (shape_models.py) pass False."""
    if not (run / "config.yaml").is_file() or not (run / "folds").is_dir():
        raise SystemExit(f"{run}: not a finished CV run (config.yaml and folds/ expected); "
                         "pass a bench or lever folder that holds seedN/ runs, and --seeds they have")
    cfg = load_config(run / "config.yaml")
    if cnn_and_shape_only and (cfg.train.pixel_fusion > 0 or cfg.train.members_per_fold > 1):
        raise SystemExit(f"{run}: fuses the pixel model (pixel_fusion {cfg.train.pixel_fusion}) or keeps "
                         f"{cfg.train.members_per_fold} members per fold, which this script leaves out, so its "
                         "figures would not be the run's; rerun the lever with --set pixel_fusion=0 (and one "
                         "member), or score it as blend_sources.py does")
    if cfg.train.refit_val:
        raise SystemExit(f"{run}: its fold models also trained on their validation parts (refit_val), "
                         "so they cannot be scored on them again; rerun the lever without it")
    table = load_dataset(cfg.dataset, data_dir)
    folds = make_folds(table, cfg.protocol, cfg.seed, cfg.train.val_fraction,
                       train_fraction=cfg.train.train_fraction)  # the run's own folds
    images, canon = canonical_images(table, cfg)
    labels = np.asarray(table.label_indices)
    shared: dict[str, np.ndarray] = {"morphometrics": np.array(
        [[np.log(m.area), np.log(m.length), np.log(m.width), m.elongation, m.perimeter ** 2 / m.area]
         if (m := c.morphometrics) is not None else [np.nan] * 5 for c in canon], dtype=np.float32)}
    for fold in folds:
        fold_dir = run / "folds" / f"fold{fold.index}"
        member = build_member(cfg, len(table.classes), images[fold.train])
        member.load_state_dict(load_file(str(fold_dir / "model0.safetensors")))
        yield SavedFold(cfg, images, labels, list(table.classes), fold, member.eval(), shared)


def print_scores(scores: dict[int, dict[tuple[Any, str], tuple[float, float]]], settings: dict[Any, str],
                 title: str) -> None:
    """One line per part and setting: accuracy (average recall) per seed, then their mean.
    `scores[seed][(setting, part)]`; `settings` maps each setting to its label."""
    width = max(len(label) for label in settings.values())
    print(f"accuracy (average recall), {title}")
    print(f"part  {'':{width}s}  " + "  ".join(f"seed {s:<8d}" for s in scores) + "   mean")
    for part in ("val", "test"):
        for setting, label in settings.items():
            got = [seed_scores[(setting, part)] for seed_scores in scores.values()]
            mean = np.mean(got, axis=0)
            print(f"{part:5s} {label:{width}s}  " + "  ".join(f"{a:.3f} ({r:.3f})" for a, r in got)
                  + f"   {mean[0]:.3f} ({mean[1]:.3f})")


def bench_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every offline measurement takes: a bench folder, its seeds, the data."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path, help="a bench's output folder, e.g. runs/bench/hushem")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--data-dir", default="../shared/datasets")
    return ap


class Tally:
    """Predicted and true labels pooled over folds, per (setting, part)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[Any, str], tuple[list[int], list[int]]] = {}

    def add(self, key: tuple[Any, str], probs: np.ndarray, labels: np.ndarray) -> None:
        pred, true = self.answers.setdefault(key, ([], []))
        pred.extend(probs.argmax(1).tolist())
        true.extend(labels.tolist())

    def scores(self) -> dict[tuple[Any, str], tuple[float, float]]:
        """(setting, part) -> (accuracy, average recall)."""
        return {key: (accuracy_score(t, p), balanced_accuracy_score(t, p)) for key, (p, t) in self.answers.items()}
