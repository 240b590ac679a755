"""`spermhead bench accuracy NAME`: the published protocol for one dataset, repeated over CV
seeds, written as JSON plus a row in benchmarks/RESULTS.md and in the README's results table.

Recipes here were chosen on validation data carved from training folds (CV seed 0) and are
confirmed on other CV seeds; test folds never steer a choice."""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import get_console

from spermhead.config import RunConfig, config_differences
from spermhead.training.devices import resolve_accelerator
from spermhead.training.options import build_run_config
from spermhead.training.recipes import DATASET_RECIPES
from spermhead.training.run import train_run


@dataclass(frozen=True)
class BenchSpec:
    dataset: str
    protocol: str  # "cv5" or the seed's "60/30/10"
    published: str
    options: dict[str, Any] = field(default_factory=dict)


# Each bench runs its dataset's default recipe (training/recipes.py), so `spermhead train NAME`
# gives what the bench measured; spermnet starts from the synthetic source ("init" auto).
BENCHES = {
    "hushem": BenchSpec("hushem", "cv5", "92.2% Shaker 2017 ... 96.8% Kilic 2025; 98.2% Spencer 2022 (ImageNet)",
                        DATASET_RECIPES["hushem"]),
    "scian-pa": BenchSpec("scian-pa", "cv5", "58-63% average recall; 65.9% accuracy Zhang 2022",
                          DATASET_RECIPES["scian-pa"]),
    "scian-ta": BenchSpec("scian-ta", "cv5", "88% recall Iqbal 2020", DATASET_RECIPES["scian-ta"]),
    "combined": BenchSpec("combined", "60/30/10", "seed report: 0.39 reported, about 0.68 in truth",
                          DATASET_RECIPES["combined"]),
}


def bench_config(name: str, out: Path, seed: int, data_dir: str | None, *,
                 settings: dict[str, Any] | None = None, settings_file: str | None = None,
                 **overrides: Any) -> RunConfig:
    """The bench's recipe under its protocol; a config file's `settings`, then `overrides`, change it."""
    spec = BENCHES[name]
    protocol = {"cv": 5} if spec.protocol == "cv5" else {"split": spec.protocol}
    # the recipe (spec.options) comes from build_run_config, as `train NAME` gets it: under the
    # settings, so a config file changes it, and another model from random weights gets the
    # recipe's longer from-scratch training, as `train --model` does
    return build_run_config(spec.dataset, str(out / f"seed{seed}"), data_dir=data_dir, seed=seed,
                            settings=settings, settings_file=settings_file, **protocol, **overrides)


# What a bench fixes itself (the dataset, its protocol, the seeds) or takes from its own options
# (where the images are): not taken from a --config file, since a run directory of another set
# would otherwise send the bench to that run's images.
BENCH_OWN = ("dataset", "seed", "protocol", "data_dir", "out", "loggers")


def bench_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A --config file's settings as a bench takes them, and those it leaves out (`BENCH_OWN`)."""
    return ({k: v for k, v in settings.items() if k not in BENCH_OWN},
            {k: v for k, v in settings.items() if k in BENCH_OWN and v is not None})


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3`: whole numbers, each once (a repeat would count one repeat twice in the sd)."""
    from spermhead.errors import ConfigError

    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(re.fullmatch(r"[0-9]+", s) for s in parts):  # numpy's seeds are >= 0
        raise ConfigError(f"--seeds {text!r}: give CV seeds as whole numbers, comma-separated, e.g. 1,2,3")
    seeds = [int(s) for s in parts]
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {text}: each seed once (a repeated seed is the same repeat again)")
    return seeds


def record_refusal(name: str, data_dir: str | None, overrides: dict[str, Any],
                   settings: dict[str, Any] | None = None) -> str | None:
    """Why this bench's row must not go into the results tables, or None: a row stands for the
    recipe on the real dataset, and its command column names nothing else."""
    from spermhead.data.readers import load_dataset
    from spermhead.errors import SpermheadError

    # the whole config compared, not option by option: nothing that changes the figures slips by
    recipe = bench_config(name, Path("unused"), 0, data_dir)
    asked = bench_config(name, Path("unused"), 0, data_dir, settings=settings, **overrides)
    if changed := config_differences(recipe, asked):
        return f"the options change the recipe ({'; '.join(changed)})"
    try:  # the images the runs will read, wherever their folder was given
        table = load_dataset(asked.dataset, asked.data_dir)
    except SpermheadError:
        return None  # the run itself says what is missing
    if table.synthetic:
        return f"the {table.name} images found here are synthetic heads (SYNTHETIC.txt)"
    return None


def check_bench_runs(configs: list[RunConfig]) -> None:
    """Refuse, before any training, a bench whose runs would replace runs of other settings: a
    variant (`--model X`) given the default --out once replaced the recipe's own runs."""
    from spermhead.config import load_config
    from spermhead.errors import ConfigError

    for cfg in configs:
        saved = Path(cfg.out) / "config.yaml"
        if saved.is_file() and (changed := config_differences(load_config(saved), cfg)):
            shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
            raise ConfigError(f"{cfg.out}: holds a bench run with other settings ({shown}); give another --out, "
                              "or --overwrite to replace it")


def run_accuracy_bench(name: str, out: Path, *, seeds: list[int], data_dir: str | None = None,
                       progress: bool = False, results_md: Path | None = None, readme: Path | None = None,
                       settings: dict[str, Any] | None = None, settings_file: str | None = None,
                       overwrite: bool = False, resume: bool = False, **overrides: Any) -> dict[str, Any]:
    """Each seed's run in out/seedN. A run of the same settings already there is replaced (or,
    with `resume`, finished or read back); one of other settings only with `overwrite`."""
    if (results_md is not None or readme is not None) and record_refusal(name, data_dir, overrides, settings):
        results_md = readme = None  # (the CLI says why, before training)
    configs = [bench_config(name, out, seed, data_dir, settings=settings, settings_file=settings_file, **overrides)
               for seed in seeds]
    if not overwrite:
        check_bench_runs(configs)
    earlier = _earlier_runs(out / f"accuracy-{name}.json") if resume else {}
    runs = []
    for seed, cfg in zip(seeds, configs, strict=True):
        start = time.perf_counter()
        result = train_run(cfg, overwrite=not resume, resume=resume, progress=progress)
        init_seconds = result.timing.get("init_seconds", 0.0)  # a source model, trained once and cached
        seconds: float | None = time.perf_counter() - start - init_seconds
        if result.timing.get("folds_read_back"):
            # folds read back take seconds, not their training's minutes: the time the repeat took
            # when it ran whole, where an earlier bench of these very settings recorded it; else none
            before = earlier.get(seed)
            same = before is not None and before.get("config") == json.loads(json.dumps(cfg.to_dict())) and \
                before.get("device", "cpu") == resolve_accelerator(cfg.train.accelerator)
            seconds = float(before["wall_seconds"]) if same else None
        runs.append({"seed": seed, "wall_seconds": seconds,
                     "init_seconds": init_seconds, "config": cfg.to_dict(),
                     "device": resolve_accelerator(cfg.train.accelerator),
                     "metrics": {p: result.metrics["operating_points"][p] for p in ("accuracy", "balanced")},
                     "macro_f1": result.metrics["operating_points"]["accuracy"]["macro_f1"]})
        if progress:  # a bench runs for long: each repeat says where it stands when it ends
            point = runs[-1]["metrics"]["accuracy"]
            get_console().print(f"{name}, CV seed {seed} ({len(runs)} of {len(seeds)}): accuracy "
                                f"{100 * point['accuracy']:.1f}, average recall {100 * point['balanced_accuracy']:.1f} "
                                f"(accuracy point), {_minutes(runs[-1]['wall_seconds'])}", highlight=False)
    # a recorded row ran the recipe itself, and its command says so with nothing else (an option
    # that changed nothing, a local settings file) but the thread count, which a byte-for-byte
    # repeat needs (CPU reductions add up in another order at another count)
    recorded = results_md is not None or readme is not None
    threads = overrides.get("threads")
    options = (f" --threads {threads}" if threads else "") if recorded else command_options(overrides, settings_file)
    summary = summarise(name, runs, seeds, options)
    summary["synthetic"] = _synthetic(configs[0])  # the JSON says so too, not only the refused row
    out.mkdir(parents=True, exist_ok=True)
    (out / f"accuracy-{name}.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))
    if results_md is not None:
        upsert_row(results_md, "accuracy", name, results_row(summary))
    if readme is not None:
        upsert_row(readme, "accuracy", name, readme_row(summary))
    return summary


def _synthetic(cfg: RunConfig) -> bool | None:
    """Whether the bench's images were rendered by data synth; None where they cannot be read now."""
    from spermhead.data.readers import load_dataset
    from spermhead.errors import SpermheadError

    try:
        return load_dataset(cfg.dataset, cfg.data_dir).synthetic
    except SpermheadError:
        return None


def _earlier_runs(path: Path) -> dict[int, dict[str, Any]]:
    """Each seed's run record (config, device, time) in an earlier bench's JSON, where it gave a
    time; none where the file is missing or damaged."""
    try:
        runs = json.loads(path.read_text())["runs"]
        return {int(r["seed"]): r for r in runs if isinstance(r.get("wall_seconds"), int | float)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _minutes(seconds: float | None) -> str:
    return "time not measured (read back by --resume)" if seconds is None else f"{seconds / 60:.1f} min"


def command_options(overrides: dict[str, Any], settings_file: str | None = None) -> str:
    """The options a bench ran with, as its command gives them, so the JSON's command runs it again."""
    given = {**({"config": settings_file} if settings_file else {}), **overrides}
    return "".join(f" --{key.replace('_', '-')} {shlex.quote(str(value))}"
                   for key, value in given.items() if value is not None)


def summarise(name: str, runs: list[dict[str, Any]], seeds: list[int], options: str = "") -> dict[str, Any]:
    def stats(point: str, key: str) -> tuple[float, float | None]:
        values = [r["metrics"][point][key] for r in runs]  # one seed has no sd, rather than one of 0
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None

    classes = list(runs[0]["metrics"]["accuracy"]["per_class_recall"])
    out = {"dataset": name, "protocol": BENCHES[name].protocol, "seeds": seeds,
           "published": BENCHES[name].published,
           # none when a repeat read back by --resume has no time of its own to give
           "wall_seconds_per_repeat": (None if any(r["wall_seconds"] is None for r in runs)
                                       else float(np.mean([r["wall_seconds"] for r in runs]))),
           "init_seconds": float(sum(r.get("init_seconds", 0.0) for r in runs)),
           "macro_f1": float(np.mean([r["macro_f1"] for r in runs])),
           "device": runs[0].get("device", "cpu"),
           "command": f"spermhead bench accuracy {name} --seeds {','.join(map(str, seeds))}{options}"}
    for point in ("accuracy", "balanced"):
        acc, acc_sd = stats(point, "accuracy")
        bal, bal_sd = stats(point, "balanced_accuracy")
        recall = {c: float(np.mean([r["metrics"][point]["per_class_recall"][c] for r in runs])) for c in classes}
        out[point] = {"accuracy": acc, "accuracy_sd": acc_sd, "balanced_accuracy": bal,
                      "balanced_accuracy_sd": bal_sd, "per_class_recall": recall}
    out["config"] = {k: runs[0]["config"][k] for k in ("preprocess", "model", "train", "protocol")}
    out["extra_train"] = list(runs[0]["config"].get("extra_train") or [])
    return out


def percent_sd(v: float, sd: float | None) -> str:
    """A mean and its sd over seeds, in percent; one seed has no sd to give."""
    return f"{100 * v:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def _protocol(s: dict[str, Any], seeds_word: str) -> str:
    """The protocol column; extra training images are named there, as they change what the
    row compares with published figures (the test folds stay the dataset's own)."""
    text = f"{s['protocol']} x {len(s['seeds'])}{seeds_word}"
    if s.get("extra_train"):
        text += f", training sides + {', '.join(s['extra_train'])} images"
    return text


def results_row(s: dict[str, Any]) -> str:
    a, b = s["accuracy"], s["balanced"]
    recall = ", ".join(f"{c} {100 * v:.0f}" for c, v in a["per_class_recall"].items())
    cfg = s["config"]
    recipe = (f"{cfg['model']['name']} {cfg['preprocess']['image_size']}px {cfg['preprocess']['color']}, "
              f"{cfg['train']['epochs']} ep, {cfg['train']['augment']} aug, balance {cfg['train']['balance']}")
    if cfg["model"].get("init", "scratch") != "scratch":
        recipe += f", init {cfg['model']['init']}"
    if cfg["train"].get("shape_fusion"):
        recipe += f", shape fusion {cfg['train']['shape_fusion']}"
    if cfg["train"].get("pixel_fusion"):
        recipe += f", pixel fusion {cfg['train']['pixel_fusion']}"
    if cfg["train"].get("refit_val"):
        recipe += ", refit on train + val"
    time_text = _minutes(s["wall_seconds_per_repeat"])
    if s.get("init_seconds"):
        time_text += f" (+ {s['init_seconds'] / 60:.1f} min once: source model)"
    if s.get("device", "cpu") != "cpu":  # the budgets are for the 2-core CPU
        time_text += f" on {s['device'].upper()}"
    return (f"| {s['dataset']} | {_protocol(s, ' seeds')} | {percent_sd(a['accuracy'], a['accuracy_sd'])} "
            f"| {percent_sd(a['balanced_accuracy'], a['balanced_accuracy_sd'])} | {percent_sd(b['accuracy'], b['accuracy_sd'])} "
            f"| {percent_sd(b['balanced_accuracy'], b['balanced_accuracy_sd'])} | {100 * s['macro_f1']:.1f} | {recall} "
            f"| {time_text} | {recipe} | `{s['command']}` |")


def readme_row(s: dict[str, Any]) -> str:
    a, b = s["accuracy"], s["balanced"]
    return (f"| {s['dataset']} | {_protocol(s, '')} | {percent_sd(a['accuracy'], a['accuracy_sd'])} "
            f"| {percent_sd(a['balanced_accuracy'], a['balanced_accuracy_sd'])} "
            f"| {percent_sd(b['accuracy'], b['accuracy_sd'])} | {percent_sd(b['balanced_accuracy'], b['balanced_accuracy_sd'])} "
            f"| {s['published']} | `{s['command']}` |")


def has_table(path: Path, table: str) -> bool:
    """Whether `path` holds the `<!-- table:start -->` marker that `upsert_row` writes under."""
    return path.is_file() and f"<!-- {table}:start -->" in path.read_text()


def upsert_row(path: Path, table: str, key: str, row: str) -> None:
    """Replace (or add) the row for `key` between `<!-- table:start -->` and `<!-- table:end -->`."""
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- {table}:start -->", f"<!-- {table}:end -->"
    if start not in text:
        return
    head, rest = text.split(start, 1)
    body, tail = rest.split(end, 1)
    lines = body.strip("\n").splitlines()
    mine = [i for i, ln in enumerate(lines) if re.match(rf"^\| {re.escape(key)} \|", ln)]
    if mine:  # in place, so the table keeps its order
        lines[mine[0]] = row
        lines = [ln for i, ln in enumerate(lines) if i not in mine[1:]]
    else:
        lines.append(row)
    path.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail)
