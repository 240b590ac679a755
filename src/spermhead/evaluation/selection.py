"""The model-selection table (the seed's Table I, done properly): every candidate on the same
protocol, balanced accuracy next to accuracy, the spread across folds, cost per epoch and
size, and the best row chosen by balanced accuracy, then accuracy, on the validation parts
carved from each training side. Choosing on the test folds would flatter the winner."""

from __future__ import annotations

import csv
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spermhead.data.samples import CSV_FILE, printable
from spermhead.evaluation.report import CSS, esc

COLUMNS = [
    "model",
    "variant",
    "start",
    "accuracy",
    "accuracy_sd",
    "balanced_accuracy",
    "balanced_accuracy_sd",
    "weighted_precision",
    "weighted_recall",
    "macro_f1",
    "time_per_epoch_s",
    "parameters",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_n",
    "accuracy_vs_best",
    "accuracy_vs_best_ci_low",
    "accuracy_vs_best_ci_high",
    "mcnemar_p_vs_best",
    "best",
    "tied_with_best",
]
# Header of the human-readable tables (md/html), where the sd joins its mean.
DISPLAY = [
    ("model", "model"),
    ("variant", "variant"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("weighted_precision", "weighted precision"),
    ("weighted_recall", "weighted recall"),
    ("macro_f1", "macro F1"),
    ("time_per_epoch_s", "time per epoch (s)"),
    ("parameters", "parameters"),
    ("val_balanced_accuracy", "val. balanced accuracy"),
    ("accuracy_vs_best", "accuracy vs ★ (95% CI)"),
    ("mcnemar_p_vs_best", "McNemar p vs ★"),
]
_ALIASES = {
    "time_per_epoch_s": ("time_per_epoch_s", "time_per_epoch", "seconds_per_epoch"),
    "parameters": ("parameters", "params", "n_params"),
}
BEST_MARK = "★"


def _first(row: Mapping[str, Any], names: Sequence[str]) -> Any:
    for n in names:
        if row.get(n) is not None:
            return row[n]
    return None


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def _metric(row: Mapping[str, Any], key: str) -> tuple[float | None, float | None]:
    """(value, sd): the mean across folds and its sd when the run was cross-validated,
    otherwise the single held-out value. Flat keys on the row win over the same keys in its
    `metrics`; a fold mean (`KEY_mean`), from either, wins over a single value."""
    m = {**(row.get("metrics") or {}), **{k: v for k, v in row.items() if k != "metrics"}}
    if m.get(f"{key}_mean") is not None:
        return _num(m[f"{key}_mean"]), _num(m.get(f"{key}_std"))
    return _num(m.get(key)), _num(m.get(f"{key}_sd", m.get(f"{key}_std")))


def _validation(row: Mapping[str, Any], key: str) -> float | None:
    """A run's pooled validation score (`metrics["validation"]`) at the operating point its test
    figures are at, or a flat `val_<key>`."""
    if row.get(f"val_{key}") is not None:
        return _num(row[f"val_{key}"])
    metrics = row.get("metrics") or {}
    val = metrics.get("validation") or {}
    if metrics.get("operating_point") == "balanced" and key != "n":
        # the ★ is chosen at the point the table reports; folds from before it was recorded have none
        val = val.get("balanced_point") or {}
    return _num(val.get(key))


def chosen_on_validation(table: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the best row was chosen on validation scores (every row has them)."""
    return bool(table) and all(r["val_balanced_accuracy"] is not None for r in table)


def selection_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Normalise candidate rows into dicts with exactly COLUMNS, input order kept.

    Each input row has `model`, optional `variant` (e.g. "gray", "rgb, L2 0.01"), either a
    `metrics` dict (cv_metrics/compute_metrics output, with the run's `validation` scores) or
    flat metric keys (`val_accuracy`, `val_balanced_accuracy` for validation), and optionally
    `time_per_epoch_s` and `parameters`. `best` is True on exactly one row: the highest
    balanced accuracy, ties broken by accuracy, then by order; on validation scores when every
    row has them, else (no validation parts) on the test figures.
    """
    out: list[dict[str, Any]] = []
    for r in rows:
        acc, acc_sd = _metric(r, "accuracy")
        bal, bal_sd = _metric(r, "balanced_accuracy")
        params = _first(r, _ALIASES["parameters"])
        out.append({
            "model": str(r.get("model", "")),
            "variant": str(r.get("variant", "") or ""),
            "start": str(r.get("start", "") or ""),  # what its training started from (select's header says it too)
            "accuracy": acc,
            "accuracy_sd": acc_sd,
            "balanced_accuracy": bal,
            "balanced_accuracy_sd": bal_sd,
            "weighted_precision": _metric(r, "weighted_precision")[0],
            "weighted_recall": _metric(r, "weighted_recall")[0],
            "macro_f1": _metric(r, "macro_f1")[0],
            "time_per_epoch_s": _num(_first(r, _ALIASES["time_per_epoch_s"])),
            "parameters": None if params is None else int(params),
            "val_accuracy": _validation(r, "accuracy"),
            "val_balanced_accuracy": _validation(r, "balanced_accuracy"),
            "val_n": None if (n := _validation(r, "n")) is None else int(n),
            "accuracy_vs_best": None,
            "accuracy_vs_best_ci_low": None,
            "accuracy_vs_best_ci_high": None,
            "mcnemar_p_vs_best": None,
            "best": False,
            "tied_with_best": False,
        })
    if out:
        prefix = "val_" if chosen_on_validation(out) else ""

        def key(i: int) -> tuple[float, float, int]:
            e = out[i]
            neg = float("-inf")
            bal, acc = e[f"{prefix}balanced_accuracy"], e[f"{prefix}accuracy"]
            return (bal if bal is not None else neg, acc if acc is not None else neg, -i)

        best = max(range(len(out)), key=key)
        out[best]["best"] = True
        for i, e in enumerate(out):  # level with the best on both criteria: chosen by list order alone
            e["tied_with_best"] = i != best and key(i)[:2] == key(best)[:2]
        _versus_best(rows, out, best)
    return out


def _versus_best(rows: Sequence[Mapping[str, Any]], out: list[dict[str, Any]], best: int) -> None:
    """Each row's test accuracy minus the best row's, image by image (`spermhead compare`), where
    every row brings its `predictions`: it says whether the ranking stands above the luck of
    which images were scored."""
    from spermhead.evaluation.paired import compare_predictions

    if not all(r.get("predictions") is not None for r in rows):
        return
    for i, (r, e) in enumerate(zip(rows, out, strict=True)):
        if i == best:
            continue
        c = compare_predictions(rows[best]["predictions"], r["predictions"],
                                names=(out[best]["model"] or "best", e["model"] or "row"))
        e["accuracy_vs_best"] = c["accuracy"]["difference"]
        e["accuracy_vs_best_ci_low"], e["accuracy_vs_best_ci_high"] = c["accuracy"]["ci"]
        e["mcnemar_p_vs_best"] = c["mcnemar_p"]


def cell_text(row: Mapping[str, Any], key: str) -> str:
    """Display text (unescaped) for one cell."""
    v = row[key]
    if key in ("accuracy_vs_best", "mcnemar_p_vs_best") and row["best"]:
        return "—"
    if key == "accuracy_vs_best" and v is not None:
        return f"{v:+.3f} ({row['accuracy_vs_best_ci_low']:+.3f} to {row['accuracy_vs_best_ci_high']:+.3f})"
    if key == "mcnemar_p_vs_best" and v is not None:
        return f"{v:.2g}"
    if key == "val_balanced_accuracy" and v is not None and row.get("val_n") is not None:
        return f"{v:.3f} (n {row['val_n']})"
    if key in ("accuracy", "balanced_accuracy") and v is not None:
        sd = row[f"{key}_sd"]
        return f"{v:.3f}" + ("" if sd is None else f" ± {sd:.3f}")
    if v is None:
        return "n/a"
    if key == "parameters":
        return f"{v / 1e6:.2f} M" if v >= 100_000 else f"{v:,}"
    if key == "time_per_epoch_s":
        return f"{v:.1f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def tie_note(table: Sequence[Mapping[str, Any]]) -> str | None:
    """Where the ★ row is level with others on both criteria, a sentence saying so (no full
    stop); None where it is not."""
    tied = [r["model"] + (f" ({r['variant']})" if r["variant"] else "") for r in table if r["tied_with_best"]]
    if not tied:
        return None
    return (f"{BEST_MARK} is level with {', '.join(tied)} on both criteria and was chosen by its place in the "
            "list of models alone: these scores do not tell them apart")


def write_selection(rows: Sequence[Mapping[str, Any]], out_dir: Path | str, about: str = "") -> dict[str, Path]:
    """selection.csv (raw numbers, sd in its own column), selection.md and selection.html
    (mean ± sd, best row marked ★). `about` says what the rows were trained and scored on (it heads
    the md and html tables). Returns {"csv": path, "md": path, "html": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = selection_table(rows)
    note = ("Where a run was cross-validated, every metric is the mean across folds (accuracy and "
            "balanced accuracy ± sd). Validation n counts the validation predictions pooled over the folds. ")
    if any(r["accuracy_vs_best"] is not None for r in table):
        note += ("Accuracy vs ★ is each row's pooled test accuracy minus the ★ row's on the same images, with "
                 "a paired bootstrap 95% CI and McNemar's exact p on the images only one of the two gets "
                 "right (`spermhead compare`); they cover which images were scored, not retraining. A row "
                 "differs from ★ only where both say so: with few images answered differently the "
                 "interval can leave out zero while p is above 0.05. ")
    points = {(r.get("metrics") or {}).get("operating_point") for r in rows} - {None}
    if len(points) == 1:
        note += f"Every figure, validation and test, is at the {points.pop()} operating point. "
    # what a run said flatters its own figures (a --weights file that saw these images, twins across
    # a fixed split: its metrics' caveats) stays beside them
    warnings = [f"{r.get('model', '')}: {n}" for r in rows for n in (r.get("metrics") or {}).get("caveats") or []]
    if chosen_on_validation(table):
        note += (BEST_MARK + " marks the best validation balanced accuracy (then accuracy), pooled over "
                 "the validation parts (never test images); the test folds took no part "
                 "in the choice, so the chosen row's figures are a fair estimate"
                 + (", but for what the runs say below. " if warnings else ". "))
    else:
        note += (BEST_MARK + " marks the best balanced accuracy (then accuracy) on the test folds: "
                 "some rows have no validation scores (val_fraction 0), so nothing else can choose, and this "
                 "choice flatters the chosen row. ")
    if tied := tie_note(table):
        note += tied + ". "
    if warnings:
        note += "From the runs: " + " ".join(w.rstrip(".") + "." for w in dict.fromkeys(warnings))
    note = note.rstrip()

    csv_path = out_dir / "selection.csv"
    with open(csv_path, "w", **CSV_FILE) as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in table:
            w.writerow(["" if r[c] is None else (repr(r[c]) if isinstance(r[c], float) else r[c])
                        for c in COLUMNS])

    md = ["| " + " | ".join(h for _, h in DISPLAY) + " |", "|" + "---|" * len(DISPLAY)]
    for r in table:
        cells = [_md_escape(cell_text(r, k)) for k, _ in DISPLAY]
        if r["best"]:
            cells = [f"**{c}**" if c else c for c in cells]
            cells[0] = f"{cells[0]} {BEST_MARK}"
        md.append("| " + " | ".join(cells) + " |")
    md_path = out_dir / "selection.md"
    lead = f"{about}\n\n" if about else ""
    md_path.write_text(printable("# Model selection\n\n" + lead + "\n".join(md) + f"\n\n{note}\n"), encoding="utf-8")

    head = "".join(f"<th>{esc(h)}</th>" for _, h in DISPLAY)
    body = []
    for r in table:
        cells = [esc(cell_text(r, k)) for k, _ in DISPLAY]
        if r["best"]:
            cells[0] += f" {BEST_MARK}"
        cls = ' class="best"' if r["best"] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    html_path = out_dir / "selection.html"
    html_path.write_text(printable(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Model selection</title>'
        f"<style>{CSS}</style></head><body><h1>Model selection</h1>"
        + (f"<p>{html.escape(about)}</p>" if about else "") +
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<p class="muted">{html.escape(note)}</p></body></html>\n'),
        encoding="utf-8",
    )
    return {"csv": csv_path, "md": md_path, "html": html_path}
