"""Two models scored on the same images, compared image by image.

Two runs' figures each come with a confidence interval, but those intervals overlap even when
one model is reliably better: most images are easy for both, and the difference lives in the
few they answer differently. Pairing the answers by sample id measures that difference
directly: a bootstrap over the images of B's score minus A's, and McNemar's exact test on the
images exactly one of them gets right. Both say how far the difference stands above the
luck of which images were there; neither says how much retraining would move it. Over repeats
(CV seeds, say) `compare_repeats` adds that: its interval adds the repeats' spread (a t
interval's variance) to the images' (a bootstrap of the images, all repeats kept), so it covers
both. (A t interval over the repeats' differences alone would not: every repeat scores the same
images, and two models that differ on the same few images in every repeat would get an interval
of zero width. A bootstrap that drew the repeats too, used before, took the spread of two or
three repeats at (R - 1)/R of its size and covered the truth 75-86% of the time where
retraining moved the difference by several points: a statistics review's simulation.)"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm, t

from spermhead.errors import DataError
from spermhead.evaluation.metrics import BOOT_SEED, N_BOOT, resample_indices, resampled_scores
from spermhead.evaluation.predictions import Predictions


def paired(a: Predictions, b: Predictions, *, names: tuple[str, str] = ("A", "B")) -> tuple[Predictions, Predictions]:
    """`a` and `b` in one id order; an error unless they scored the same images with the same
    labels and classes (a comparison over different images would mean nothing)."""
    if list(a.classes) != list(b.classes):
        how = "the same classes in another order" if sorted(a.classes) == sorted(b.classes) else "different classes"
        raise DataError(f"{names[0]} and {names[1]} have {how}: {a.classes} and {b.classes}")
    only_a, only_b = sorted(set(a.ids) - set(b.ids)), sorted(set(b.ids) - set(a.ids))
    if only_a or only_b:
        def some(ids: list[str], name: str) -> str:
            return f"{len(ids)} only in {name}" + (f" (e.g. {', '.join(ids[:3])})" if ids else "")

        raise DataError(f"{names[0]} and {names[1]} scored different images: {some(only_a, names[0])}, "
                        f"{some(only_b, names[1])}")
    if not len(a):
        raise DataError(f"{names[0]} and {names[1]} hold no images to compare")
    a, b = a.sorted_by_id(), b.sorted_by_id()
    relabelled = [i for i, ta, tb in zip(a.ids, a.true, b.true, strict=True) if ta != tb]
    if relabelled:
        raise DataError(f"{names[0]} and {names[1]} give {len(relabelled)} images different true labels "
                        f"(e.g. {relabelled[:3]}): they were not scored against the same truth")
    return a, b


def compare_predictions(a: Predictions, b: Predictions, *, names: tuple[str, str] = ("A", "B"),
                        n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = 0.95) -> dict[str, Any]:
    """B against A on the same images: each one's accuracy and balanced accuracy, B minus A with
    an interval, and McNemar's exact test. `names` label A and B in the result and in errors.

    The accuracy difference's interval is a paired percentile bootstrap of the images (McNemar's
    test backs its verdict). The balanced-accuracy difference's is drawn class by class: each
    class's shares of images only A gets right, only B gets right, and the rest, from
    Dirichlet(counts + 1/2), averaged over the classes as balanced accuracy is. A bootstrap of the
    images held the truth in 84-94% of simulated 50-200-image sets with SCIAN's class mix (this:
    97-100%; benchmarks/interval_coverage.py): a small class seldom holds an image the two answer
    differently, so it added no spread, and a resample could lose it."""
    a, b = paired(a, b, names=names)
    n, k = len(a), len(a.classes)
    y = a.true_indices
    right_a, right_b = a.pred_indices == y, b.pred_indices == y
    rng = np.random.default_rng(seed)
    every = np.arange(n)[None, :]
    point = {side: resampled_scores(y, right, k, every) for side, right in (("a", right_a), ("b", right_b))}
    accuracy = []
    for _, _, idx in resample_indices(n, n_boot, rng):  # the same images for both
        accuracy.append(resampled_scores(y, right_b, k, idx)[0] - resampled_scores(y, right_a, k, idx)[0])
    diffs = {"accuracy": np.concatenate(accuracy),
             "balanced_accuracy": balanced_difference_draws(y, right_a, right_b, k, n_boot, rng)}
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, Any] = {"names": list(names), "n": int(n), "level": level,
                           "bootstrap": {"resamples": int(n_boot), "seed": int(seed),
                                         "balanced_accuracy": "per-class Dirichlet draws"}}
    for m, key in enumerate(("accuracy", "balanced_accuracy")):
        va, vb = float(point["a"][m][0]), float(point["b"][m][0])
        lo, hi = np.percentile(diffs[key], [tail, 100.0 - tail])
        # the draws lean toward zero (the 1/2 added to each count): the interval still holds the
        # difference seen (all wrong against all right: +1, not +0.997 at most)
        out[key] = {"a": va, "b": vb, "difference": vb - va,
                    "ci": [float(min(lo, vb - va)), float(max(hi, vb - va))]}
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    out["images"] = {"both_right": int(np.sum(right_a & right_b)), "only_a": only_a, "only_b": only_b,
                     "both_wrong": int(np.sum(~right_a & ~right_b))}
    # exact: the discordant images are few, where the chi-square form is off
    out["mcnemar_p"] = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return out


def balanced_difference_draws(y: np.ndarray, right_a: np.ndarray, right_b: np.ndarray, k: int, n_draws: int,
                              rng: np.random.Generator) -> np.ndarray:
    """`n_draws` draws of B minus A in balanced accuracy: per class present, (only A right, only B
    right, the rest) from Dirichlet(counts + 1/2), only-B minus only-A averaged over the classes."""
    present = [c for c in range(k) if np.any(y == c)]
    draws = np.zeros(n_draws)
    for c in present:
        mine = y == c
        only_a, only_b = np.sum(mine & right_a & ~right_b), np.sum(mine & right_b & ~right_a)
        shares = rng.dirichlet(np.array([only_a, only_b, mine.sum() - only_a - only_b], dtype=float) + 0.5,
                               size=n_draws)
        draws += shares[:, 1] - shares[:, 0]
    return draws / max(len(present), 1)


def compare_repeats(pairs: Mapping[str, tuple[Predictions, Predictions]], *, names: tuple[str, str] = ("A", "B"),
                    n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = 0.95) -> dict[str, Any]:
    """`compare_predictions` on each repeat (A's and B's runs on the same folds), then B minus A
    over the repeats: the mean difference, its sd over the repeats, how often each was ahead,
    and (two repeats or more) an interval holding both the repeats' spread and the images' luck:
    mean -+ sqrt(t^2 s^2 / R + z^2 V), with s the repeats' sd (t on R - 1 degrees of freedom) and
    V the variance of the mean difference over `images_bootstrap`'s draws. Conservative: the
    repeats' spread already holds part of the images' luck, which V adds again."""
    repeats = {r: compare_predictions(a, b, names=(f"{names[0]}/{r}", f"{names[1]}/{r}"), n_boot=n_boot,
                                      seed=seed, level=level) for r, (a, b) in pairs.items()}
    out: dict[str, Any] = {"names": list(names), "level": level, "n_repeats": len(repeats), "repeats": repeats,
                           "bootstrap": {"resamples": int(n_boot), "seed": int(seed),
                                         "over": "images, all repeats kept; the repeats' spread added (t)"}}
    n = len(repeats)
    boot = images_bootstrap([paired(a, b) for a, b in pairs.values()], n_boot=n_boot, seed=seed) if n > 1 else None
    for key in ("accuracy", "balanced_accuracy"):
        d = np.array([c[key]["difference"] for c in repeats.values()])
        summary: dict[str, Any] = {"a": float(np.mean([c[key]["a"] for c in repeats.values()])),
                                   "b": float(np.mean([c[key]["b"] for c in repeats.values()])),
                                   "difference": float(d.mean()), "sd": None, "ci": None,
                                   "b_ahead": int(np.sum(d > 0)), "a_ahead": int(np.sum(d < 0))}
        if boot is not None:
            sd = float(d.std(ddof=1))
            q = 1 - (1 - level) / 2
            half = float(np.sqrt((t.ppf(q, n - 1) * sd) ** 2 / n + norm.ppf(q) ** 2 * np.var(boot[key], ddof=1)))
            # a difference of accuracies lies in [-1, 1]; two repeats that disagree widely reach past it
            summary.update(sd=sd, ci=[max(-1.0, float(d.mean()) - half), min(1.0, float(d.mean()) + half)])
        out[key] = summary
    return out


def images_bootstrap(pairs: list[tuple[Predictions, Predictions]], *, n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED) -> dict[str, np.ndarray]:
    """B minus A, averaged over every repeat, in each of `n_boot` resamples of the images: where
    every repeat scored the same images (CV seeds on one dataset), one draw of images serves them
    all, as a new set of images would meet every retrained model. Each pair is in one id order
    (`paired`)."""
    rng = np.random.default_rng(seed)
    shared = all(list(a.ids) == list(pairs[0][0].ids) for a, _ in pairs)
    sides = [(a.true_indices, a.pred_indices == a.true_indices, b.pred_indices == a.true_indices, len(a.classes))
             for a, b in pairs]
    out: dict[str, list[np.ndarray]] = {"accuracy": [], "balanced_accuracy": []}
    n0 = len(pairs[0][0])
    for start, stop, idx in resample_indices(n0, n_boot, rng):
        per_repeat = []  # (accuracy, balanced accuracy) differences, each (resamples,)
        for y, right_a, right_b, k in sides:
            draw = idx if shared else rng.integers(0, len(y), size=(stop - start, len(y)))
            (acc_a, bal_a), (acc_b, bal_b) = (resampled_scores(y, right, k, draw) for right in (right_a, right_b))
            per_repeat.append((acc_b - acc_a, bal_b - bal_a))
        for m, key in enumerate(("accuracy", "balanced_accuracy")):
            out[key].append(np.mean([diff[m] for diff in per_repeat], axis=0))
    return {key: np.concatenate(v) for key, v in out.items()}


def verdict(c: dict[str, Any], key: str = "accuracy") -> str:
    """One line: the difference, its interval, and what the interval says."""
    b = c["names"][1]
    d, (lo, hi) = c[key]["difference"], c[key]["ci"]
    p, differ = c["mcnemar_p"], c["images"]["only_a"] + c["images"]["only_b"]
    # McNemar's test counts the images each gets right: it speaks to accuracy, not to average
    # recall, which two models can split far apart with as many images right
    backed = key != "accuracy" or p < 1 - c["level"]
    if (lo > 0 or hi < 0) and backed:
        said = f"{b} is {'better' if lo > 0 else 'worse'}: the interval leaves out zero"
    elif lo > 0 or hi < 0:
        # a bootstrap over a few discordant images, all one way, rarely crosses zero: the exact
        # test on those images has the last word
        said = (f"not shown: the interval leaves out zero, but only {differ} images are answered "
                f"differently and McNemar's exact p is {p:.2g}")
    else:
        said = f"no difference these {c['n']} images can show"
    return (f"{key.replace('_', ' ')}, B - A: {100 * d:+.1f} points "
            f"({100 * c['level']:.0f}% CI {100 * lo:+.1f} to {100 * hi:+.1f}); {said}")


def repeats_verdict(c: dict[str, Any], key: str = "accuracy") -> str:
    """One line for a comparison over repeats."""
    m, n, b = c[key], c["n_repeats"], c["names"][1]
    text = f"{key.replace('_', ' ')}, B - A over {n} repeats: {100 * m['difference']:+.1f} points"
    if m["ci"] is not None:
        lo, hi = m["ci"]
        said = (f"{b} is {'better' if lo > 0 else 'worse'}" if lo > 0 or hi < 0
                else "no difference these repeats and images can show")
        text += (f" ({100 * c['level']:.0f}% CI {100 * lo:+.1f} to {100 * hi:+.1f}, the repeats' spread and the "
                 f"images' together); {said}")
    return text + f"; B ahead on {m['b_ahead']}, A on {m['a_ahead']}"


def repeat_folders(path: Path) -> dict[str, Path] | None:
    """A folder of repeats (seed1/, seed2/, ... each holding a predictions.csv, as `bench` and
    the lever runs write them), by name in natural order; None for one run or a CSV file."""
    if not path.is_dir() or (path / "predictions.csv").is_file():
        return None
    if (path / "selection.csv").is_file():  # its subfolders are different models, not repeats of one
        raise DataError(f"{path}: is a `spermhead select` folder, whose runs are different models, not repeats "
                        f"of one; compare two of its runs (spermhead compare {path}/MODEL_A {path}/MODEL_B)")
    found = {p.name: p for p in path.iterdir() if (p / "predictions.csv").is_file()}
    if not found:
        raise DataError(f"{path}: no predictions.csv in it nor in its subfolders")
    return {n: found[n] for n in sorted(found, key=lambda n: [int(t) if t.isdigit() else t
                                                              for t in re.split(r"(\d+)", n)])}
