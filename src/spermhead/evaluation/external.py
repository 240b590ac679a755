"""Assess a trained bundle on labelled images: another lab's folder, or another dataset.

The images go through the same Predictor as `predict` and the app, and the results through the
same Predictions, metrics, plots and report as `train`, so its figures read like a run's.
Two things can make such figures misleading, and both are reported rather than hidden:
- images of a class the model does not have (SCIAN's "small" for a HuSHeM model) cannot be
  scored: they are left out and counted;
- images the bundle's models trained on score far better than new ones. New bundles keep the
  thumbnail signatures of their training images (serving/bundle.py), so every scored image is
  marked seen or unseen, and the unseen ones get metrics of their own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spermhead.data.duplicates import DEFAULT_THRESHOLD
from spermhead.data.samples import SampleTable
from spermhead.errors import ConfigError, DataError
from spermhead.evaluation.composition import composition
from spermhead.evaluation.metrics import compute_metrics, cv_metrics, headline
from spermhead.evaluation.predictions import NO_FOLD, Predictions
from spermhead.models.inference import apply_class_bias
from spermhead.serving.bundle import seen_by_bundle
from spermhead.serving.predictor import Predictor

MIX_SHIFT = 0.15  # a class's share this far from the run's makes another class mix (evaluate says so)


@dataclass(frozen=True)
class Assessment:
    predictions: Predictions  # the scored images, keyed by sample id
    seen: list[bool] | None  # per scored image: a near-duplicate of a training image; None = unknown
    unusable: list[dict[str, str]] = field(default_factory=list)  # id, path, error
    unknown_classes: dict[str, int] = field(default_factory=dict)  # label -> images left out
    # the bundle's operating points (name -> log-prior correction) and the one `predictions` used
    operating_points: dict[str, list[float]] = field(default_factory=dict)
    operating_point: str = "accuracy"
    temperature: float = 1.0  # the bundle's: its probabilities' logs were divided by it last
    # per scored image: its acquisition lies outside the bundle's training range (None: the
    # bundle records none)
    unlike: list[bool] | None = None
    # the bundle's held-out confusion counts at `operating_point` (None: not recorded)
    confusion: list[list[int]] | None = None
    # the bundle's share check at `operating_point` (composition.check_intervals; None: not recorded)
    share_check: dict[str, Any] | None = None
    # per scored image: a head was found in it (None: all were). A sample's shares leave out the
    # others, as `predict` does, so the check here is of the figure a lab gets.
    head_found: list[bool] | None = None

    def at_point(self, name: str) -> Predictions:
        """The predictions at another of the bundle's operating points: the same probabilities
        with that point's log-prior correction in place of the one applied (divided by the
        temperature, as the one applied was)."""
        shift = np.subtract(self.operating_points[name], self.operating_points[self.operating_point])
        shift = shift / self.temperature
        p = self.predictions
        return Predictions(p.ids, p.sources, p.folds, p.true, apply_class_bias(p.probabilities, shift), p.classes)

    def metrics(self) -> dict[str, Any]:
        """cv_metrics of every scored image, with the headline at each operating point (as the
        benches report both), what was left out, and the unseen images' own metrics where some
        were seen in training."""
        out = cv_metrics(self.predictions)
        out["operating_point"] = self.operating_point
        out["operating_points"] = {name: headline(compute_metrics(self.at_point(name)))
                                   for name in self.operating_points}
        notes = out["notes"]
        if self.unknown_classes:
            left = ", ".join(f"{c} ({n}{case_twin(c, self.predictions.classes)})"
                             for c, n in self.unknown_classes.items())
            notes.append(f"left out, classes the model does not have: {left}")
        if self.unusable:
            notes.append(f"left out, images that could not be used: {len(self.unusable)}")
        if self.seen is None:
            notes.append("this bundle does not record its training images, so images it trained on "
                         "cannot be told apart: if any are here, these figures flatter it")
            out["training_overlap"] = None
        else:
            n_seen = int(sum(self.seen))
            out["training_overlap"] = {"seen": n_seen, "unseen": len(self.seen) - n_seen,
                                       "threshold": DEFAULT_THRESHOLD}
            if n_seen:
                unseen = np.flatnonzero(~np.asarray(self.seen))
                if unseen.size:
                    notes.append(f"{n_seen} of {len(self.seen)} images are ones the model trained on (or "
                                 "near-duplicates of them), so their predictions are not a test: the "
                                 f"{unseen.size} others are scored apart (`unseen`)")
                else:
                    notes.append(f"all {n_seen} images are ones the model trained on (or near-duplicates "
                                 "of them): these figures say nothing about new images")
                out["unseen"] = compute_metrics(self.predictions.subset(unseen)) if unseen.size else None
        out["unlike_training"] = None if self.unlike is None else self._split_by_likeness()
        out["composition"] = self._composition()
        if self.head_found is not None and not all(self.head_found):
            n = self.head_found.count(False)
            notes.append(f"{n} image{'s' * (n != 1)} with no head found {'are' if n != 1 else 'is'} scored, but left "
                         "out of these images' class shares, as predict leaves them out of a sample's")
        out["share_check"] = self.share_check
        if self.unlike is not None and any(self.unlike):
            notes.append(f"{sum(self.unlike)} of {len(self.unlike)} images are unlike the images the model "
                         "was trained on (size, framing, grey levels or focus; `unlike_training`): figures on "
                         "them say how it does on another microscope's images, not on its own")
        if (mix := self._class_mix_note()) is not None:
            notes.append(mix)
        return out

    def _class_mix_note(self) -> str | None:
        """Accuracy depends on the class mix: said where these images' mix is far from the one the
        run scored the model on (its held-out confusion's rows), where average recall is the fairer
        comparison."""
        if self.confusion is None:
            return None
        classes = list(self.predictions.classes)
        trained = np.asarray(self.confusion, float).sum(axis=1)
        here = np.array([np.sum(np.asarray(self.predictions.true) == c) for c in classes], float)
        if trained.sum() == 0 or here.sum() == 0 or len(trained) != len(here):
            return None
        trained, here = trained / trained.sum(), here / here.sum()
        if np.abs(here - trained).max() < MIX_SHIFT:
            return None

        def mix(shares: np.ndarray) -> str:
            return ", ".join(f"{c} {100 * v:.0f}%" for c, v in zip(classes, shares, strict=True))

        return (f"these images' class mix ({mix(here)}) is far from the one the model was scored on in its run "
                f"({mix(trained)}): accuracy moves with the mix, so compare the two by average recall")

    def _composition(self) -> list[dict[str, Any]]:
        """The scored images' class shares as a sample's would be estimated (counted, and adjusted
        with the bundle's confusion), beside the true shares: what a lab's figure is worth."""
        pred = self.predictions
        if self.head_found is not None and not all(self.head_found):
            pred = pred.subset(np.flatnonzero(self.head_found))
            if not len(pred):
                return []
        rows = composition([pred.classes[i] for i in pred.pred_indices], pred.classes, self.confusion,
                           extra_sd=self.share_check["extra_sd"] if self.share_check else None)
        truth = np.bincount(pred.true_indices, minlength=len(pred.classes)) / len(pred)
        return [{**row, "true_share": float(t)} for row, t in zip(rows, truth, strict=True)]

    def _split_by_likeness(self) -> dict[str, Any]:
        """How many images lie outside the training range, and the accuracy on each side."""
        assert self.unlike is not None
        flags = np.asarray(self.unlike, bool)
        out: dict[str, Any] = {"unlike": int(flags.sum()), "like": int((~flags).sum())}
        for side, chosen in (("unlike", flags), ("like", ~flags)):
            idx = np.flatnonzero(chosen)
            part = self.predictions.subset(idx)
            out[f"accuracy_{side}"] = float(np.mean(part.true_indices == part.pred_indices)) if idx.size else None
        return out


def case_twin(name: str, classes: Sequence[str]) -> str:
    """A hint where `name` differs from one of the model's classes only in case ("BAD" beside
    "bad"): class names other than the WHO ones are matched as written. Empty otherwise."""
    twin = next((c for c in classes if c != name and c.casefold() == name.casefold()), None)
    return f"; '{name}' is the model's '{twin}' but for case: rename the folder to match" if twin else ""


def assess(predictor: Predictor, table: SampleTable,
           on_row: Callable[[], None] | None = None) -> Assessment:
    """Score every image of `table` whose class the model has; `on_row` is called per image (a
    progress bar). Unusable images are listed, not fatal, unless none is left to score."""
    known = [s for s in table.samples if s.label in predictor.classes]
    unknown = Counter(s.label for s in table.samples if s.label not in predictor.classes)
    if not known:
        twins = "".join(hint for c in table.classes if (hint := case_twin(c, predictor.classes)))
        raise ConfigError(f"{table.name}: none of its classes ({', '.join(table.classes)}) is one the "
                          f"model has ({', '.join(predictor.classes)}){twins}")
    scored, probs, unusable, unlike, found = [], [], [], [], []
    for sample, row in zip(known, predictor.predict_files([s.path for s in known]), strict=True):
        if row["ok"]:
            scored.append(sample)
            probs.append([row["probabilities"][c] for c in predictor.classes])
            unlike.append(bool(row["unlike_training"]))
            found.append(bool(row["head_found"]))
        else:
            unusable.append({"id": sample.id, "path": str(sample.path), "error": row["error"]})
        if on_row is not None:
            on_row()
    if not scored:
        raise DataError(f"{table.name}: none of its {len(known)} images could be used "
                        f"(first: {unusable[0]['error']})")  # the error names its file
    predictions = Predictions(
        ids=[s.id for s in scored], sources=[s.source for s in scored], folds=[NO_FOLD] * len(scored),
        true=[s.label for s in scored], probabilities=np.asarray(probs), classes=predictor.classes)
    seen = seen_by_bundle(predictor.bundle_dir, [s.path for s in scored])
    points = predictor.meta.operating_points or {predictor.meta.operating_point: list(predictor.meta.class_bias or
                                                                                     [0.0] * len(predictor.classes))}
    return Assessment(predictions, seen, unusable, dict(unknown), points, predictor.meta.operating_point,
                      predictor.meta.temperature, unlike if predictor.meta.input_ranges else None,
                      predictor.meta.confusion, predictor.meta.share_check, found)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Before any work: an existing, non-empty folder is kept unless the user asked to replace it,
    and only an earlier assessment's folder is replaced (its files are written over): a training
    run's would lose its own predictions and report, any other folder would get ours mixed in."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise ConfigError(f"{out}: folder exists and is not empty; pass --overwrite to replace its files")
    if (out / "config.yaml").is_file():
        raise ConfigError(f"{out}: is a training run, whose predictions and report --overwrite would replace; "
                          "give --out another folder")
    if not (out / "assessment.json").is_file():
        raise ConfigError(f"{out}: not an earlier evaluate's folder (no assessment.json); give --out a new or "
                          "empty folder")


def write_assessment(out: Path, assessment: Assessment, about: dict[str, Any]) -> dict[str, Any]:
    """predictions.csv, metrics.json, plots/, report.html and assessment.json (what was scored,
    by which bundle, what was left out and why, which images were seen in training); returns
    the metrics. `about` describes the assessment (dataset, bundle, operating point, ...)."""
    from spermhead.config import environment
    from spermhead.evaluation.metrics import write_metrics_json
    from spermhead.evaluation.plots import write_plots
    from spermhead.evaluation.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    metrics = assessment.metrics()
    pred = assessment.predictions
    pred.write_csv(out / "predictions.csv")
    write_metrics_json(metrics, out / "metrics.json")
    record = {**about, "scored": len(pred), "unusable": assessment.unusable,
              "unknown_classes": assessment.unknown_classes,
              "seen_in_training": None if assessment.seen is None else
              [i for i, s in zip(pred.ids, assessment.seen, strict=True) if s],
              "unlike_training": None if assessment.unlike is None else
              [i for i, u in zip(pred.ids, assessment.unlike, strict=True) if u],
              "environment": environment()}
    (out / "assessment.json").write_text(json.dumps(record, indent=2))
    extra: dict[str, Any] = {}
    if (unlike := metrics.get("unlike_training")) and unlike["unlike"]:
        extra["Images unlike the training images"] = unlike
    if metrics.get("unseen"):
        extra["Images the model did not train on"] = {
            k: metrics["unseen"][k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
    if assessment.unusable:
        extra["Images that could not be used"] = assessment.unusable
    write_report(out, {**about, "protocol": "assessment of a trained model"}, metrics,
                 write_plots(pred, None, out / "plots"), extra)
    return metrics
