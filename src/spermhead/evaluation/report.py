"""A self-contained report.html: inline CSS, plots embedded as base64 data URIs, no external
URL, so it can be mailed or archived on its own. Every piece of text is escaped."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from spermhead.config import environment as current_environment
from spermhead.config import fusion_text
from spermhead.data.samples import printable
from spermhead.evaluation.composition import largest_sample

PLOT_TITLES = {
    "training_curves": "Training curves",
    "confusion_counts": "Confusion matrix (counts)",
    "confusion_normalized": "Confusion matrix (row-normalised: recall on the diagonal)",
    "roc": "ROC curves, one-vs-rest",
    "pr": "Precision-recall curves, one-vs-rest",
    "reliability": "Reliability: accuracy against the answer's probability",
}
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
 padding:0 1rem;color:#1d232a;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d6dbe0;
 padding-bottom:.2rem}
.sub{color:#5b6570;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #d6dbe0;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#eef2f5}
tr.best td{font-weight:600;background:#f3f9ee}
.figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;border:1px solid #e3e7eb;padding:.4rem;background:#fff;flex:0 1 500px;min-width:300px}
figure.wide{flex-basis:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#5b6570}
pre{background:#f6f8fa;padding:.7rem;overflow:auto;font-size:.85rem;border:1px solid #e3e7eb}
.note{background:#fff8e6;border-left:4px solid #e6a700;padding:.6rem .9rem}
.muted{color:#5b6570;font-size:.9rem}
@media (max-width:600px){body{margin:1rem auto;padding:0 .6rem}figure{min-width:0;flex-basis:100%}}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to fixed decimals, None as 'n/a'; already escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, int):
        return esc(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; header and string cells are escaped, numbers formatted by `fmt`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plain(obj: Any) -> Any:
    """Tuples, Paths and numpy scalars to YAML-safe plain types."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _titles(config: Mapping[str, Any], n_folds: int) -> tuple[str, str, str]:
    dataset = str(config.get("dataset", "unknown dataset"))
    model = config.get("model", "unknown model")
    if isinstance(model, Mapping):
        name = str(model.get("name", "unknown model"))
        extras = [str(v) for k, v in model.items() if k == "l2_conv" and v]
        model = name + (f" (L2 {extras[0]})" if extras else "")
    pre = config.get("preprocess")
    if isinstance(pre, Mapping) and pre.get("color"):
        model = f"{model}, {pre['color']} {pre.get('image_size', '')}".rstrip()
    protocol = config.get("protocol", "unknown protocol")
    if isinstance(protocol, Mapping):
        kind = str(protocol.get("kind", "unknown protocol"))
        # The metrics know how many folds really ran (a protocol such as "auto" decides late).
        if n_folds > 1 or kind == "cv":
            grouped = ", grouped" if protocol.get("grouped") else ""
            cv = f"{n_folds or protocol.get('folds', '?')}-fold cross-validation{grouped}"
            protocol = cv if kind == "cv" else f"{kind}: {cv}"
        else:
            protocol = kind
    return dataset, str(model), str(protocol)


def _fusion(config: Mapping[str, Any]) -> str:
    """Where the scores are not the network's alone, whose they are: the model named above has only
    part of each vote, so its figures are not that architecture's."""
    train = config.get("train")
    fused = fusion_text(train.get("shape_fusion") or 0.0, train.get("pixel_fusion") or 0.0) \
        if isinstance(train, Mapping) else ""
    if not fused:
        return ""
    return (f'<p class="sub">every score below is of the fused answers: <b>{esc(fused)}</b> (second '
            "opinions fused with the network; train with --shape-fusion 0 --pixel-fusion 0 for the network alone)</p>")


def _balanced_interval_text(how: str | None) -> str:
    """How the balanced accuracy interval was found, as metrics.json's `intervals` says; a run
    from before it was recorded bootstrapped the predictions."""
    if how and "beta" in how:
        return "is that of the mean of its classes' recalls, each from its own class's images (their exact beta bounds)"
    if how and "Wilson" in how:
        return "is the mean of its classes' Wilson bounds, since no resample of these predictions moved it"
    return "resamples these predictions"


def _folds(m: Mapping[str, Any]) -> int:
    """How many folds the figures pool: 0 for images assessed as one set, 1 for a single split's
    test part (no spread across folds to show), more under cross-validation."""
    return len(m.get("folds") or [])


def _headline(m: Mapping[str, Any]) -> str:
    k = _folds(m)
    has_ci = bool(m.get("accuracy_ci95"))
    rows = [
        ("accuracy", "Accuracy", m.get("accuracy_ci95")),
        ("balanced_accuracy", "Balanced accuracy (average recall)", m.get("balanced_accuracy_ci95")),
        ("macro_f1", "Macro F1", None),
        ("weighted_precision", "Weighted precision", None),
        ("weighted_recall", "Weighted recall", None),
        ("roc_auc_ovr_macro", "ROC AUC (one-vs-rest, macro)", None),
        ("pr_auc_macro", "PR AUC (average precision, macro)", None),
        ("ece", "Expected calibration error (answer's probability, 10 bins)", None),
        ("brier_score", "Brier score", None),
    ]
    out = []
    for key, label, ci in rows:
        cells = [esc(label), fmt(m.get(key))]
        if k > 1:  # the fold columns only exist for cross-validated runs
            mean, sd = m.get(f"{key}_mean"), m.get(f"{key}_std")
            cells.append("n/a" if mean is None else fmt(mean) + ("" if sd is None else f" &plusmn; {fmt(sd)}"))
        if has_ci:
            cells.append("" if not ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]")
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ["metric", "pooled out-of-fold" if k > 1 else "the test part" if k else "these images"]
    if k > 1:
        head.append(f"mean &plusmn; sd across {k} folds")
    if has_ci:
        head.append("95% CI")
    head_html = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return f"<table><thead>{head_html}</thead><tbody>{''.join(out)}</tbody></table>"


def _points(m: Mapping[str, Any]) -> str:
    """Both operating points on the scored images, and on the validation parts that chose what the
    run chose (checkpoints, temperature): what `compare` and the recipes are judged on."""
    points, val = m.get("operating_points") or {}, m.get("validation") or {}
    if not points and not val:
        return ""
    rows = []
    for point, h in points.items():
        mark = " (this report)" if point == m.get("operating_point") else ""
        rows.append([f"scored images, {point} point{mark}", h.get("accuracy"), h.get("balanced_accuracy")])
    if val.get("n"):
        where = f"validation ({val['n']} predictions, no test image among them)"
        rows.append([f"{where}, accuracy point", val.get("accuracy"), val.get("balanced_accuracy")])
        if bp := val.get("balanced_point"):
            rows.append([f"{where}, balanced point", bp.get("accuracy"), bp.get("balanced_accuracy")])
    return "<h3>Operating points and validation</h3>" + table(["", "accuracy", "average recall"], rows)


def _per_class(m: Mapping[str, Any]) -> str:
    rows = [
        [c, v.get("support"), v.get("precision"), v.get("recall"), v.get("f1"), v.get("roc_auc"),
         v.get("average_precision")]
        for c, v in m.get("per_class", {}).items()
    ]
    return table(["class", "support", "precision", "recall", "F1", "ROC AUC", "AP"], rows)


_SUMMARY_COLS = [("n", "n"), ("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."),
                 ("macro_f1", "macro F1"), ("weighted_precision", "w. precision"),
                 ("weighted_recall", "w. recall"), ("roc_auc_ovr_macro", "ROC AUC"), ("pr_auc_macro", "PR AUC")]


def _summary_table(first: str, entries: Sequence[tuple[Any, Mapping[str, Any]]]) -> str:
    rows = [[name, *[e.get(k) for k, _ in _SUMMARY_COLS]] for name, e in entries]
    return table([first, *[h for _, h in _SUMMARY_COLS]], rows)


def _confusion(m: Mapping[str, Any]) -> str:
    classes = m.get("classes") or list(m.get("per_class", {}))
    cm = m.get("confusion_matrix") or []
    rows = [[c, *r] for c, r in zip(classes, cm, strict=False)]
    return table(["true \\ predicted", *classes], rows)


def _composition(m: Mapping[str, Any]) -> str:
    """Labelled images assessed by `evaluate`, taken as one sample: each class's true share beside
    its counted and adjusted estimates (the check a lab can run on its own images)."""
    rows = m.get("composition")
    if not rows or "true_share" not in rows[0]:
        return ""

    def share(r: Mapping[str, Any], key: str) -> str:
        if r.get(key) is None:
            return "n/a"
        return f"{100 * r[key]:.1f}% ({100 * r[key + '_low']:.1f}-{100 * r[key + '_high']:.1f})"

    body = [[r["class"], f"{100 * r['true_share']:.1f}%", share(r, "share"), share(r, "adjusted")] for r in rows]
    # a bundle from one split, or from before the check, has none to widen them by
    widened = ", widened by the bundle's check below" if m.get("share_check") else ""
    return ("<h2>These images as one sample</h2>"
            "<p>Each class's true share beside the two estimates <code>predict</code> gives a sample: counted "
            f"from the predicted classes, and adjusted for the model's measured errors (95% intervals{widened}).</p>"
            + table(["class", "true share", "counted (95% CI)", "adjusted (95% CI)"], body))


def _share_check(m: Mapping[str, Any]) -> str:
    """The run's check of a sample's class shares (composition.check_intervals), in points."""
    check = m.get("share_check")
    if not check:
        return ""
    classes = m.get("classes") or list(m.get("per_class", {}))

    def pts(v: float) -> str:
        return f"{100 * v:.1f}"

    rows = [[c, pts(check["error"]["counted"][i]), pts(check["error"]["adjusted"][i]),
             f"{100 * check['held']['counted'][i]:.0f}%", f"{100 * check['held']['adjusted'][i]:.0f}%",
             pts(check["extra_sd"]["counted"][i]), pts(check["extra_sd"]["adjusted"][i]), check["closer"][i]]
            for i, c in enumerate(classes)]
    source = "" if m.get("folds") else "From the model's training run, as its bundle keeps it: "
    return ("<h2>A sample's class shares</h2>"
            f"<p>{source}{check['samples']} simulated samples of up to {largest_sample(check)} held-out heads each, of random class "
            "mixes, estimated from their predicted classes with the other folds' confusion. Error: mean distance "
            "from the true share, in points. Held: how often the 95% interval held the true share. Extra sd: "
            "what <code>predict</code> adds to each interval so that it holds in 95% of these samples. "
            "Closer: the estimate with the smaller error, which <code>predict</code> stars.</p>"
            + table(["class", "error, counted", "error, adjusted", "held, counted", "held, adjusted",
                     "extra sd, counted", "extra sd, adjusted", "closer"], rows))


def _baseline_note(m: Mapping[str, Any]) -> str:
    support = {c: v.get("support", 0) for c, v in m.get("per_class", {}).items()}
    n = sum(support.values())
    present = [c for c, s in support.items() if s > 0]
    if not n or not present:
        return ""
    major = max(present, key=lambda c: support[c])
    return (f" On this data, always answering the majority class &ldquo;{esc(major)}&rdquo; would score "
            f"{fmt(support[major] / n)} accuracy and {fmt(1 / len(present))} balanced accuracy.")


def _how_to_read(m: Mapping[str, Any]) -> str:
    return (
        '<div class="note"><p><b>How to read this.</b> On imbalanced data, accuracy and average recall '
        "(balanced accuracy) both matter. Accuracy counts every image equally, so the biggest class "
        "dominates it; balanced accuracy averages the recall of each class, so a rare class counts as much "
        "as a common one. A constant &ldquo;amorphous&rdquo; answer on SCIAN (58% amorphous) scores 58% "
        f"accuracy and only 20% average recall.{_baseline_note(m)}</p>"
        "<p>Weighted recall always equals accuracy. ROC AUC and PR AUC rank the probabilities of each class "
        "against the rest: 0.5 ROC AUC is chance, and the chance level of PR AUC is the class's prevalence. "
        "The calibration error is the gap between the probability given to each answer and how often such "
        "answers are right (0: a 0.8 answer is right 8 times in 10; the reliability plot shows it per bin); "
        "the Brier score (0 best, 2 worst) sums both calibration and sharpness. "
        "The accuracy interval is Wilson's for a proportion; the balanced accuracy one "
        + _balanced_interval_text((m.get("intervals") or {}).get("balanced_accuracy"))
        + ("; the sd across folds shows how much retraining on other data moves the result. Metrics are "
           "computed on out-of-fold predictions" if _folds(m) > 1 else ". Metrics are computed on the "
           "predictions")
        + " keyed by sample id, so every prediction is compared with its own image's label.</p></div>"
    )


def _extra(extra: Mapping[str, Any]) -> str:
    parts = []
    for title, value in extra.items():
        parts.append(f"<h2>{esc(title)}</h2>")
        if isinstance(value, Mapping):
            rows = [[k, v if isinstance(v, int | float | str) or v is None else json.dumps(_plain(v))]
                    for k, v in value.items()]
            parts.append(table(["item", "value"], rows))
        elif isinstance(value, list | tuple) and value and all(isinstance(r, Mapping) for r in value):
            cols = list(dict.fromkeys(k for r in value for k in r))
            parts.append(table(cols, [[r.get(c) for c in cols] for r in value]))
        else:
            parts.append(f"<pre>{esc(value)}</pre>")
    return "".join(parts)


def _figure(name: str, path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        return f'<p class="muted">plot {esc(name)} missing: {esc(path.name)}</p>'
    mime = _MIME.get(path.suffix.lower(), "image/png")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    title = PLOT_TITLES.get(name, name)
    wide = ' class="wide"' if name == "training_curves" else ""
    return (f'<figure{wide}><img src="data:{mime};base64,{data}" alt="{esc(title)}">'
            f"<figcaption>{esc(title)}</figcaption></figure>")


def write_report(
    run_dir: Path | str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    plots: Mapping[str, Path],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write run_dir/report.html and return its path.

    `config` is the run configuration as a dict (RunConfig.to_dict(), optionally with an
    `environment` key; otherwise this interpreter's environment is recorded). `metrics` is
    the output of cv_metrics or compute_metrics; `plots` maps names (see PLOT_TITLES) to
    image files; `extra` maps section titles to text, a dict, or a list of dicts.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    env = config.pop("environment", None) or current_environment()
    dataset, model, protocol = _titles(config, len(metrics.get("folds") or []))
    title = f"{dataset} · {model} · {protocol}"
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    body = [
        f"<h1>spermhead report: {esc(title)}</h1>",
        f'<p class="sub">dataset <b>{esc(dataset)}</b> · model <b>{esc(model)}</b> · protocol '
        f"<b>{esc(protocol)}</b> · {esc(metrics.get('n', '?'))} images · written {esc(when)}</p>",
        _fusion(config),
        "<h2>Headline</h2>",
        _headline(metrics),
        _points(metrics),
        _how_to_read(metrics),
    ]
    notes = metrics.get("notes") or []
    if notes:
        body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    body += ["<h2>Per class</h2>", _per_class(metrics), "<h3>Confusion matrix (counts)</h3>", _confusion(metrics),
             _composition(metrics), _share_check(metrics)]
    if metrics.get("per_source"):
        body += ["<h2>Per source</h2>", _summary_table("source", list(metrics["per_source"].items()))]
    if _folds(metrics) > 1:
        body += ["<h2>Per fold</h2>", _summary_table("fold", [(f.get("fold"), f) for f in metrics["folds"]])]
    if plots:
        body += ["<h2>Plots</h2>", '<div class="figs">', *[_figure(k, p) for k, p in plots.items()], "</div>"]
    if extra:
        body.append(_extra(extra))
    body += [
        "<h2>Configuration</h2>",
        f"<pre>{esc(yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True))}</pre>",
        "<h2>Environment</h2>",
        f"<pre>{esc(yaml.safe_dump(_plain(env), sort_keys=False, allow_unicode=True))}</pre>",
    ]
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    path = run_dir / "report.html"
    path.write_text(printable(doc), encoding="utf-8")  # a non-UTF-8 file name stops nothing
    return path
