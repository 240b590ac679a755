"""Where a run's (or an `evaluate` folder's) predictions came from: the image files it read,
whether they were synthetic heads, and the operating point it scored at.

`compare` pairs two runs by sample id, and ids name an image by its dataset and file name
("hushem/01_Normal/image_001"), not by its pixels: the same ids can stand for HuSHeM's photographs in
one run and for `data synth` heads laid out like them in the other, and the same answers read at
two operating points differ for reasons that have nothing to do with the models. These are said
beside the comparison, not hidden in it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spermhead.config import RunConfig, fusion_text
from spermhead.data.readers import NAMED_DATASETS
from spermhead.errors import SpermheadError
from spermhead.evaluation.predictions import Predictions


@dataclass(frozen=True)
class Provenance:
    images: Path | None  # the folder holding every image the run read, where they can still be found
    synthetic: bool | None  # rendered by `spermhead data synth`; None = unknown
    operating_point: str | None
    files: dict[str, str] | None = None  # sample id -> the image file it named (resolved); None = unknown
    model: str | None = None  # the architecture (a run's config.yaml); None = unknown
    fusion: str = ""  # its answers fused with second opinions (config.fusion_text); "" = the network alone
    seen: tuple[int, int] | None = None  # an assessment's images its model trained on, of how many; None = unknown
    seed: int | None = None  # the run's seed (an assessment's: its bundle's run's); None = unknown
    assessed: bool = False  # an `evaluate` folder: every image scored, no split of its own


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_dataset(folder: Path) -> tuple[str, str | None] | None:
    """The dataset and data folder a run (config.yaml) or an assessment (assessment.json) records
    having read; None where neither records one."""
    record = _json(folder / "assessment.json")
    if isinstance(record.get("dataset"), str):
        return record["dataset"], record.get("data_dir")
    cfg = _run_config(folder)
    return None if cfg is None else (cfg.dataset, cfg.data_dir)


def _run_config(folder: Path) -> RunConfig | None:
    """A run folder's config.yaml, where it holds a readable one."""
    if not (folder / "config.yaml").is_file():
        return None
    from spermhead.config import load_config

    try:
        return load_config(folder / "config.yaml")
    except (SpermheadError, OSError, ValueError, TypeError):
        return None


def _dataset(folder: Path) -> tuple[str, str | None] | None:
    """What `recorded_dataset` says, where it says where the images are."""
    named = recorded_dataset(folder)
    if named is not None and named[1] is None and named[0].lower() in NAMED_DATASETS:
        return None  # read from $SPERMHEAD_DATA or ./data where it ran: not known here
    return named


def provenance(source: Path | str) -> Provenance:
    """What can still be found out about a predictions.csv (or the folder holding one)."""
    from spermhead.data.readers import load_dataset

    source = Path(source)
    folder = source if source.is_dir() else source.parent
    metrics = _json(folder / "metrics.json")
    point = metrics.get("operating_point")
    overlap = metrics.get("training_overlap")  # evaluate's: a training run's test folds are held out
    seen = (int(overlap["seen"]), int(overlap["seen"]) + int(overlap["unseen"])) \
        if isinstance(overlap, dict) and isinstance(overlap.get("seen"), int) and overlap["seen"] else None
    images, synthetic, files = None, None, None
    if (named := _dataset(folder)) is not None:
        try:
            table = load_dataset(*named)
        except SpermheadError:  # moved, or on another machine: nothing to say
            pass
        else:
            files = {s.id: str(Path(s.path).resolve()) for s in table.samples}
            images = Path(os.path.commonpath(list(files.values())))
            synthetic = table.synthetic
    model, fusion, seed = _model(folder)
    return Provenance(images, synthetic, point if isinstance(point, str) else None, files, model, fusion, seen, seed,
                      assessed=(folder / "assessment.json").is_file())


def _model(folder: Path) -> tuple[str | None, str, int | None]:
    """The architecture a run trained, the fusion its answers came from and its seed: a run's
    config.yaml, or an assessment's record of the bundle it scored with."""
    if (cfg := _run_config(folder)) is not None:
        return cfg.model.name, fusion_text(cfg.train.shape_fusion, cfg.train.pixel_fusion), cfg.seed
    record = _json(folder / "assessment.json")
    model, train = record.get("model"), record.get("train")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return None, "", None
    weights = [train.get(k) if isinstance(train, dict) else 0 for k in ("shape_fusion", "pixel_fusion")]
    fusion = fusion_text(*(float(w) if isinstance(w, int | float) else 0.0 for w in weights))
    run = _json(Path(record["bundle"]) / "model.json").get("run") if isinstance(record.get("bundle"), str) else None
    seed = run.get("seed") if isinstance(run, dict) else None
    return model["name"], fusion, seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def by_image_file(a: Predictions, b: Predictions, pa: Provenance, pb: Provenance) -> tuple[Predictions, Predictions] | None:
    """`a` and `b` keyed by the image file each id named, where they name their images differently
    (a named dataset's ids, "hushem/01_Normal/image_001", against the same folder read as class
    folders, "01_Normal/image_001.BMP") but read the same files; None where the ids already agree
    or the files cannot be matched one to one. The new ids are the files' paths below their
    common folder."""
    if set(a.ids) == set(b.ids) or pa.files is None or pb.files is None:
        return None
    if not set(a.ids) <= pa.files.keys() or not set(b.ids) <= pb.files.keys():
        return None
    fa, fb = [pa.files[i] for i in a.ids], [pb.files[i] for i in b.ids]
    if len(set(fa)) != len(fa) or set(fa) != set(fb):
        return None
    root = os.path.commonpath(fa) if len(fa) > 1 else os.path.dirname(fa[0])

    def keyed(p: Predictions, files: list[str]) -> Predictions:
        ids = [Path(os.path.relpath(f, root)).as_posix() for f in files]
        return Predictions(ids, p.sources, p.folds, p.true, p.probabilities, p.classes)

    return keyed(a, fa), keyed(b, fb)


def provenance_warnings(a: Provenance, b: Provenance, names: tuple[str, str]) -> list[str]:
    """What makes a pairing of the two by sample id suspect, in words; empty when nothing does."""
    out = []
    if a.synthetic is not None and b.synthetic is not None and a.synthetic != b.synthetic:
        fake, real = (names[0], names[1]) if a.synthetic else (names[1], names[0])
        out.append(f"{fake} scored synthetic heads (data synth) and {real} real images under the same ids: "
                   "this compares different images")
    elif a.images is not None and b.images is not None and a.images != b.images:
        out.append(f"{names[0]} read its images from {a.images} and {names[1]} from {b.images}: unless one is a "
                   "copy of the other, this compares different images")
    if a.model and b.model and a.model != b.model and (a.fusion or b.fusion):
        fused = [f"{n}'s are {p.fusion}" for n, p in zip(names, (a, b), strict=True) if p.fusion]
        out.append(f"the answers compared are not the two networks' alone ({'; '.join(fused)}), so the fused "
                   f"models dilute the difference between {a.model} and {b.model}; train both with "
                   "--shape-fusion 0 --pixel-fusion 0 to compare the networks")
    for name, p in zip(names, (a, b), strict=True):
        if p.seen is not None:
            out.append(f"{name} was scored on {p.seen[0]} of {p.seen[1]} images its model trained on (or "
                       "near-duplicates of them): there its answers are no test, and they flatter it")
    if a.operating_point and b.operating_point and a.operating_point != b.operating_point:
        out.append(f"{names[0]} is scored at the {a.operating_point} point and {names[1]} at the "
                   f"{b.operating_point} point: part of any difference is the operating point, not the model")
    return out


def repeat_mismatches(repeats: dict[str, Provenance], name: str) -> list[str]:
    """Where one side's repeats (seedN/ folders) are not one setting run with other seeds: another
    architecture, fusion, operating point or set of images than its first repeat's."""
    if not repeats:
        return []
    first_name, first = next(iter(repeats.items()))
    out = []
    for r, p in list(repeats.items())[1:]:
        known = first.model is not None and p.model is not None  # fusion "" is also "no config.yaml"
        differ = [what for what, a, b in (("model", first.model, p.model),
                                          ("fused answers", first.fusion if known else None, p.fusion),
                                          ("operating point", first.operating_point, p.operating_point),
                                          ("images", first.images, p.images))
                  if a is not None and b is not None and a != b]
        if differ:
            out.append(f"{name}'s repeats are not one setting: {r} differs from {first_name} in its "
                       f"{', '.join(differ)}; their mean mixes them")
    by_seed: dict[int, str] = {}
    for r, p in repeats.items():
        if p.seed is not None and (twin := by_seed.setdefault(p.seed, r)) != r:
            out.append(f"{name}'s repeats {twin} and {r} were both run with seed {p.seed}: one repeat counted "
                       "twice, so the spread between seeds looks smaller than it is")
    return out


def paired_seed_mismatches(sides: tuple[dict[str, Provenance], dict[str, Provenance]],
                           names: tuple[str, str]) -> list[str]:
    """Repeats paired by folder name (seedN against seedN) that were run with other seeds: their
    CV folds differ, so the pairing is not the same images split the same way. (An `evaluate`
    scores every image whatever its model's seed: nothing to say there.)"""
    out = []
    for r in sides[0]:
        if r not in sides[1] or sides[0][r].assessed or sides[1][r].assessed:
            continue
        a, b = sides[0][r].seed, sides[1][r].seed
        if a is not None and b is not None and a != b:
            out.append(f"{names[0]}'s {r} was run with seed {a} and {names[1]}'s with seed {b}: repeats are paired "
                       "by folder name, and these split the images otherwise")
    return out
