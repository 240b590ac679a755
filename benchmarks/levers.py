"""Measure one training lever at a time under the dataset's bench protocol (5-fold CV, or the
seed's 60/30/10 split for `combined`), one CV seed.

Each lever starts from the dataset's bench recipe. Recipes are compared on the *validation* parts carved from each training fold (`val_*`);
the test-fold figures are printed for the record but never used to choose. Results are
appended as JSON lines to benchmarks/levers-<dataset>.jsonl.

    .venv/bin/python benchmarks/levers.py hushem base epochs150 ...  [--data-dir ../shared/datasets]
    # every lever on CV seeds 0-3, 8 runs at a time (a many-core machine or a GPU)
    .venv/bin/python benchmarks/levers.py hushem base width32 --seeds 0,1,2,3 --jobs 8 --set threads=1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spermhead.training.bench import BENCHES
from spermhead.training.devices import resolve_accelerator
from spermhead.training.options import build_run_config
from spermhead.training.run import train_run

LEVERS: dict[str, dict] = {
    "base": {},
    # HuSHeM's recipe before session 9 (64 px, the profile model alone at 0.4)
    "recipe8": {"image_size": 64, "shape_fusion": 0.4, "pixel_fusion": 0.0},
    "set": {},  # only the --set options (e.g. --set weights=FILE), named by them in the table
    "noalign": {"align": False},
    "epochs150": {"epochs": 150},
    "epochs300": {"epochs": 300},
    "ls0": {"label_smoothing": 0.0},
    "light": {"augment": "light"},
    "strong": {"augment": "strong"},
    "rgb": {"color": "rgb"},
    "px32": {"image_size": 32},
    "px48": {"image_size": 48},
    "px96": {"image_size": 96},
    "mixup": {"mixup": 0.2},
    "last": {"monitor": "last"},
    "bs16": {"batch_size": 16},
    "lr1e-3": {"lr": 1e-3},
    "cosine": {"schedule": "cosine"},
    "scale_image": {"scale": "image"},
    "margin15": {"margin": 0.15},
    "margin5": {"margin": 0.5},
    "mask": {"background": "mask"},
    "sam05": {"sam": 0.05},
    "balance_none": {"balance": "none"},
    "balance_sampler": {"balance": "sampler"},  # a folder's default until session 11
    "balance_loss": {"balance": "loss"},
    "seed_cnn": {"model": "seed-cnn", "image_size": 32},
    "resnet18": {"model": "timm:resnet18"},
    "members3": {"members": 3},
    "members2": {"members": 2},
    "ema": {"ema": 0.99},
    # learning-curve points: each training side cut by the ratio that training on its validation
    # part too would add (CV: 85% + 15% val; combined: 60% + 30%), session 12
    "lc85": {"train_fraction": 0.85},
    "lc67": {"train_fraction": 2 / 3},
    "refit_val": {"refit_val": True},  # each fold trains again on training + validation
    "no_refit_val": {"refit_val": False},  # HuSHeM's recipe before session 12
    "val0": {"val_fraction": 0.0},  # no validation part: the fold trains on its whole training side
    "width32": {"model_kwargs": {"width": 32}},
    "width16": {"model_kwargs": {"width": 16}},
    "deeper": {"model_kwargs": {"depths": [1, 2, 2, 1]}},
    "ema999": {"ema": 0.999},
    "soft": {"soft_labels": 0.5},
    "soft0": {"soft_labels": 0.0},
    "scale_head": {"scale": "head"},
    "epochs10": {"epochs": 10},
    "epochs20": {"epochs": 20},
    "epochs30": {"epochs": 30},
    "epochs40": {"epochs": 40},
    "epochs60": {"epochs": 60},
    "epochs75": {"epochs": 75},
    "epochs100": {"epochs": 100},
    "aligned": {"augment": "aligned"},
    "directed": {"augment": "directed"},
    "synth": {"init": "synthetic"},  # start from a model trained on rendered heads (cached source)
    "synth500": {"init": "synthetic", "init_per_class": 500, "init_epochs": 30},
    "synth2000": {"init": "synthetic", "init_per_class": 2000, "init_epochs": 40},
    "scian_source": {"init_style": "scian"},  # SCIAN-looking rendered heads for the synthetic start
    "noaug": {"augment": "none"},
    "px128": {"image_size": 128},
    "width48": {"model_kwargs": {"width": 48}},
    "members5": {"members": 5},
    "synthbig": {"init": "synthetic", "init_per_class": 2000, "init_epochs": 100},
    "resnet18_synth": {"model": "timm:resnet18", "init": "synthetic"},
    "epochs200": {"epochs": 200},
    # late fusion with the head-profile logistic regression (models/shape.py)
    "shape03": {"shape_fusion": 0.3},
    "shape04": {"shape_fusion": 0.4},
    "shape05": {"shape_fusion": 0.5},
    "fusion33": {"shape_fusion": 0.3, "pixel_fusion": 0.3},  # HuSHeM's second opinions, on another set
    "cutmix": {"cutmix": 1.0},
    "swa25": {"swa": 0.25},
    # SCIAN-TA: the partial-agreement heads outside TA join every training side (data/extra.py)
    "pa_extra": {"extra_train": ["scian-pa"], "epochs": 40},
    "pa_extra60": {"extra_train": ["scian-pa"], "epochs": 60},
    # HuSHeM: SCIAN's 4 shared classes as extra training images (fewer epochs: 8x the images)
    "scian_extra": {"extra_train": ["scian-pa4"], "epochs": 30},
    "wd05": {"weight_decay": 0.05},
    "sgd": {"optimizer": "sgd", "lr": 0.05},
    "drop3": {"drop_rate": 0.3},
    "soft1": {"soft_labels": 1.0},
    # the seed's custom CNN (two convs and a 3-layer dense head) at its 32 px, which scored above
    # spermnet on the test folds of session 24's architecture table (not on validation; p 0.12):
    # from random weights for the from-scratch epochs, and from its own synthetic source for the recipe's
    "seedcnn32": {"model": "seed-cnn", "image_size": 32, "init": "scratch", "epochs": 100},
    "seedcnn32_synth": {"model": "seed-cnn", "image_size": 32, "init": "synthetic"},
    # two small modern timm CNNs (the "small modern CNNs"), each from a synthetic source
    # of its own, at the recipe's 48 px so that the fused models read what they read now
    "convnext_atto": {"model": "timm:convnext_atto", "init": "synthetic"},
    "mnv4_small": {"model": "timm:mobilenetv4_conv_small", "init": "synthetic"},
    # cross-fitted self-distillation: half of each target from teachers that did not see the image
    "distill5": {"distill": 0.5},
    # focal loss (Lin et al. 2017): the loss of images already right shrinks by (1 - p)^gamma
    "focal2": {"focal": 2.0},
    # discriminative fine-tuning: every layer but the classifier at 0.3 x the learning rate
    "blr03": {"backbone_lr": 0.3},
    # another synthetic source model (other rendered heads, another training seed): a second
    # network per fold that differs in where it started (benchmarks/blend_sources.py)
    "src1": {"init_seed": 1},
    "ls02": {"label_smoothing": 0.2},
    "bs64": {"batch_size": 64},
    "cos16": {"model_kwargs": {"cosine_scale": 16.0}},  # a cosine classifier (source and fine-tune)
}


def means(dataset: str, seeds: list[int], log: Path | None = None) -> str:
    """Per lever, its validation accuracy on each of `seeds` and the means over them (the last
    logged row of each lever x seed): what a rule fixed before the runs is read from."""
    log = log or Path(__file__).with_name(f"levers-{Path(dataset).name}.jsonl")
    last: dict[tuple[str, int], dict] = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if r.get("cv_seed") in seeds:
            last[(r["lever"], r["cv_seed"])] = r
    rows = ["| lever | val accuracy per seed | mean (bal. point avg recall) | test, record only (bal. point) |",
            "|---|---|---|---|"]
    for lever in dict.fromkeys(k[0] for k in last):
        got = [last[(lever, s)] for s in seeds if (lever, s) in last]
        if len(got) < len(seeds):
            rows.append(f"| {lever} | {len(got)} of {len(seeds)} seeds logged | | |")
            continue
        val = " ".join(f"{r['val_accuracy']:.3f}" for r in got)
        avg = {name: sum(pick(r) for r in got) / len(got) for name, pick in (
            ("val", lambda r: r["val_accuracy"]), ("val_bal", lambda r: r["val_balanced_point"]["balanced_accuracy"]),
            ("test", lambda r: r["test_accuracy"]), ("test_bal", lambda r: r["test_balanced_point"]["balanced_accuracy"]))}
        rows.append(f"| {lever} | {val} | {avg['val']:.3f} ({avg['val_bal']:.3f}) "
                    f"| {avg['test']:.3f} ({avg['test_bal']:.3f}) |")
    return "\n".join(rows)


def table(dataset: str, log: Path | None = None) -> str:
    """The recorded levers as a markdown table (for benchmarks/RESULTS.md)."""
    log = log or Path(__file__).with_name(f"levers-{Path(dataset).name}.jsonl")
    if not log.is_file():
        raise SystemExit(f"{log}: no levers recorded for {dataset} (give --log where they went)")
    rows = ["| lever | options | CV seed | val acc | val avg recall | test acc (record only) | test avg recall | min |",
            "|---|---|---|---|---|---|---|---|"]
    for line in log.read_text().splitlines():
        r = json.loads(line)
        shown = {k: v for k, v in r.get("changes", r["options"]).items()
                 if k not in ("threads", "accelerator")}  # speed only
        opts = ", ".join(f"{k}={v}" for k, v in shown.items()) or "bench recipe"
        where = " (GPU)" if r.get("device", "cpu") != "cpu" else ""
        where += " (twins together)" if r.get("near_duplicates", 0) else ""  # folds since session 5
        rows.append(f"| {r['lever']}{where} | {opts} | {r.get('cv_seed', 0)} | {r['val_accuracy']:.3f} | {r['val_balanced']:.3f} "
                    f"| {r['test_accuracy']:.3f} ± {r['test_accuracy_sd']:.3f} | {r['test_balanced']:.3f} "
                    f"| {r['minutes']:.1f} |")
    return "\n".join(rows)


def run_parallel(args: argparse.Namespace, seeds: list[int], log: Path) -> None:
    """Each lever x seed in its own process (its own CUDA context), `--jobs` at a time; each
    appends its row to the log when it finishes, so a stopped sweep keeps what it measured."""
    extra = [a for s in args.set for a in ("--set", s)]

    def one(job: tuple[str, int]) -> None:
        name, seed = job
        cmd = [sys.executable, __file__, args.dataset, name, "--seed", str(seed), "--data-dir", args.data_dir,
               "--out", args.out, "--log", str(log), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:] if done.returncode else done.stdout.strip()
        print(f"[seed {seed}] {tail}", flush=True)

    jobs = [(name, seed) for name in args.levers for seed in seeds]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(one, jobs))


def _value(text: str) -> object:
    """A --set value: JSON where it is (numbers, lists, true/false), else the text itself
    ("timm:resnet18" starts with a t too)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("levers", nargs="*", help="names from LEVERS, joined with + to combine")
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", help="comma-separated CV seeds, each lever x seed its own process")
    ap.add_argument("--jobs", type=int, default=1, help="processes at a time with --seeds")
    ap.add_argument("--log", help="JSON lines log (default benchmarks/levers-DATASET.jsonl)")
    ap.add_argument("--out", default="/tmp/levers")
    ap.add_argument("--set", action="append", default=[], help="extra key=value for every run")
    ap.add_argument("--table", action="store_true", help="print the recorded levers and exit")
    ap.add_argument("--means", action="store_true", help="with --seeds: each lever's means over them, and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.dataset, Path(args.log) if args.log else None))
        return
    if args.means:
        if not args.seeds:
            ap.error("--means needs --seeds, the CV seeds to average over")
        print(means(args.dataset, [int(v) for v in args.seeds.split(",")], Path(args.log) if args.log else None))
        return
    common = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    log = Path(args.log) if args.log else Path(__file__).with_name(f"levers-{Path(args.dataset).name}.jsonl")
    if args.seeds:
        run_parallel(args, [int(v) for v in args.seeds.split(",")], log)
        return
    # levers start from the dataset's bench recipe (`spermhead bench accuracy NAME`)
    recipe = BENCHES[args.dataset].options if args.dataset in BENCHES else {}
    for name in args.levers:
        options = {**recipe, **common}
        for part in name.split("+"):
            options.update(LEVERS[part])
        run_options = {k: v for k, v in options.items() if k != "model_kwargs"}
        spec = BENCHES.get(args.dataset)
        protocol = {"split": spec.protocol} if spec and spec.protocol != "cv5" else {"cv": 5}
        # a dataset given as a folder is named by its last part: "../x/HuSHeM" must not climb out of --out
        cfg = build_run_config(args.dataset, f"{args.out}/{Path(args.dataset).name}/{name}/seed{args.seed}",
                               data_dir=args.data_dir,
                               seed=args.seed, **protocol, **run_options)
        cfg.model.kwargs = dict(options.get("model_kwargs", {}))  # spermnet's structure (width, depths)
        start = time.perf_counter()
        m = train_run(cfg, overwrite=True, progress=False).metrics
        changes = {k: v for k, v in options.items() if recipe.get(k, object()) != v}
        row = {"lever": name, "options": options, "changes": changes, "cv_seed": args.seed,
               "val_accuracy": m["validation"].get("accuracy", float("nan")),
               "val_balanced": m["validation"].get("balanced_accuracy", float("nan")),
               "val_balanced_point": m["validation"].get("balanced_point"),  # both figures there
               "test_accuracy": m["accuracy"], "test_accuracy_sd": m.get("accuracy_std") or 0.0,
               "test_balanced": m["balanced_accuracy"],
               "test_balanced_point": m["operating_points"]["balanced"],
               "minutes": (time.perf_counter() - start) / 60,
               "device": resolve_accelerator(cfg.train.accelerator),
               "near_duplicates": cfg.protocol.near_duplicates}
        row["test_balanced_point"] = {k: row["test_balanced_point"][k] for k in ("accuracy", "balanced_accuracy")}
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name:28s} val acc {row['val_accuracy']:.3f} bal {row['val_balanced']:.3f} | test acc "
              f"{row['test_accuracy']:.3f}±{row['test_accuracy_sd']:.3f} bal {row['test_balanced']:.3f} | "
              f"{row['minutes']:.1f} min", flush=True)


if __name__ == "__main__":
    main()
