"""The `spermhead` command: each command parses its options, calls the modules that do the work
and prints their results (tables, notes, where the files went)."""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.text import Text

from spermhead.errors import SpermheadError

app = typer.Typer(help="Classify human sperm heads into WHO morphology classes.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Read, summarise, preview and synthesise datasets.", no_args_is_help=True)
bench_app = typer.Typer(help="Published-protocol benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
# no markup: paths and names print as they are ("runs/[lr=0.1]" would lose its brackets); styles
# come from Text and style=
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def _print_version(value: bool) -> None:
    if value:
        from importlib import metadata

        from spermhead import __version__

        versions = {name: metadata.version(name) for name in ("torch", "torchvision", "timm", "lightning")}
        console.print(f"spermhead {__version__} (" + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")",
                      highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version (and torch's, timm's, ...) and exit")] = False
          ) -> None:
    """Classify human sperm heads into WHO morphology classes."""

DatasetArg = Annotated[str, typer.Argument(
    help="hushem, scian-pa, scian-ta, scian-pa4, combined, or a folder of class folders")]
# train's and select's: the dataset may come from a --config run directory instead
DatasetOrConfigArg = Annotated[str | None, typer.Argument(
    help="hushem, scian-pa, scian-ta, scian-pa4, combined, or a folder of class folders "
         "(default with --config: the config's)")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder holding HuSHeM/ and "
                    "SCIAN-MorphoSpermGS/ (default: $SPERMHEAD_DATA, else ./data).")]


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show user errors as one red line and exit 2, instead of a traceback; Ctrl-C says what
    becomes of the work (exit 130, the shell's code for it)."""
    resumable = "resume" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpermheadError as exc:
            err_console.print(Text.assemble(("error:", "bold red"), f" {exc}"), highlight=False,
                              soft_wrap=True)  # paths stay whole
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            hint = (": the same command with --resume goes on from the last finished epoch" if resumable
                    else "; files it had finished are kept")
            err_console.print(Text.assemble(("interrupted", "yellow"), hint), highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


@data_app.command("summary")
@friendly
def data_summary(
    name: DatasetArg,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count images per class and per source, and name the files that cannot be used (exit code 1
    if any: `train` would stop on them)."""
    from rich.table import Table

    from spermhead.data.readers import load_dataset
    from spermhead.errors import ImageError, unusable_message
    from spermhead.preprocess.io import read_image

    table = load_dataset(name, data_dir)
    summary = table.summary()
    failed: list[tuple[str, ImageError]] = []
    for sample in table.samples:  # decoded as training decodes them, so nothing passes here and fails there
        try:
            read_image(sample.path)
        except ImageError as exc:
            failed.append((str(sample.path), exc))
    summary["unusable"] = [{"path": path, "error": str(exc)} for path, exc in failed]
    # a folder's files passed over for their suffix (a GIF, a WebP): said, not silently missing
    from spermhead.data.readers import NAMED_DATASETS, skipped_files

    # a named dataset is read under the data dir, not from a folder of that name here
    skipped = skipped_files(Path(name)) if name.lower() not in NAMED_DATASETS and Path(name).is_dir() else []
    summary["skipped"] = [str(p) for p in skipped]
    if skipped and not as_json:
        err_console.print(f"note: {len(skipped)} file(s) passed over for their suffix, e.g. {skipped[0]}",
                          highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(summary))
    else:
        for key in ("classes", "sources"):
            counts = Table(key, "images", title=f"{name}: {summary['total']} images" if key == "classes" else None)
            for label, n in summary[key].items():
                counts.add_row(label, str(n))
            console.print(counts)
    if len([n for n in summary["classes"].values() if n]) < 2:  # what train would refuse, said here first
        err_console.print(f"warning: {name}: only one class has images; train needs at least two", highlight=False,
                          soft_wrap=True)
    if failed:
        from rich.text import Text

        message = unusable_message([exc for _, exc in failed], summary["total"],
                                   " (train would stop on them; evaluate and predict leave them out)")
        # Text, not markup: a file name may hold brackets
        err_console.print(Text.assemble(("warning:", "yellow"), f" {message}"), highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@data_app.command("preview")
@friendly
def data_preview(
    name: DatasetArg,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    data_dir: DataDir = None,
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Random samples per class.")] = 6,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", min=16, help="Canonical image size (default: the dataset's training recipe's)")] = None,
    color: Annotated[str | None, typer.Option("--color", help="gray or rgb (default: the recipe's)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Which samples are drawn.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file")] = False,
) -> None:
    """Write a contact sheet: per class, raw crops beside the canonical images `train` would give
    the model (its recipe's size, colour and scale, unless told otherwise)."""
    from spermhead.data.readers import load_dataset
    from spermhead.preprocess.preview import check_sheet_name, contact_sheet
    from spermhead.training.options import build_run_config

    check_output_file(out, "--out", overwrite=overwrite)  # as every other output: not replaced unasked
    check_sheet_name(out, "--out")
    cfg = build_run_config(name, "unused", image_size=image_size, color=color).preprocess  # checks them too
    path = contact_sheet(load_dataset(name, data_dir), cfg, out, per_class=per_class, seed=seed)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


@data_app.command("duplicates")
@friendly
def data_duplicates(
    name: DatasetArg,
    data_dir: DataDir = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", min=0.0, max=1.0, help="Thumbnail correlation at which two images count as one head")] = 0.98,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Also write the groups side by side to this PNG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --sheet file")] = False,
) -> None:
    """List images that show the same head twice: they stay on one side of every split."""
    from rich.table import Table

    from spermhead.data.duplicates import near_duplicate_groups, signatures
    from spermhead.data.readers import load_dataset

    check_output_file(sheet, "--sheet", overwrite=overwrite)  # before the images are read
    if sheet is not None:
        from spermhead.preprocess.preview import check_sheet_name

        check_sheet_name(sheet, "--sheet")
    table = load_dataset(name, data_dir)
    sigs = signatures([s.path for s in table.samples])
    groups = near_duplicate_groups(sigs, threshold)
    rows = [[{"id": table.samples[i].id, "label": table.samples[i].label,
              "correlation": round(float(sigs[g[0]] @ sigs[i]), 4)} for i in g] for g in groups]
    if as_json:
        print(json.dumps({"dataset": name, "images": len(table), "threshold": threshold, "groups": rows}))
    else:
        out = Table("group", "id", "label", "r", title=f"{name}: {len(groups)} near-duplicate groups "
                    f"in {len(table)} images (r >= {threshold})")
        for k, group in enumerate(rows, 1):
            mixed = len({r["label"] for r in group}) > 1
            for r in group:
                out.add_row(str(k), r["id"], Text(r["label"], style="red" if mixed else ""), f"{r['correlation']:.3f}")
        console.print(out if groups else f"{name}: no near-duplicates in {len(table)} images (r >= {threshold})"
                      if threshold > 0 else f"{name}: --threshold 0 turns the search off; nothing was looked for")
        mixed = sum(len({r["label"] for r in g}) > 1 for g in rows)
        if mixed:
            console.print(f"{mixed} group(s) give one head different labels (red)", highlight=False)
    if sheet is not None:
        from spermhead.preprocess.preview import duplicate_sheet

        console.print(f"wrote {duplicate_sheet(table, groups, sigs, sheet)}", highlight=False, soft_wrap=True)


@data_app.command("synth")
@friendly
def data_synth(
    out: Annotated[Path, typer.Argument(help="Data folder to write HuSHeM/ or SCIAN-MorphoSpermGS/ into")],
    style: Annotated[str, typer.Option("--style", help="hushem (4 classes, RGB) or scian (5, grey)")] = "hushem",
    n_per_class: Annotated[int, typer.Option("--n-per-class", help="Images per class.")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace synthetic heads written before (never a real dataset).")] = False,
) -> None:
    """Write rendered sperm heads in a real dataset's layout (demo and tests, no real images needed)."""
    from spermhead.data.synthetic import write_synthetic

    table = write_synthetic(out, style, n_per_class, seed, overwrite=overwrite)
    name = "hushem" if style == "hushem" else "scian-pa"
    counts = ", ".join(f"{label} {n}" for label, n in table.class_counts().items())
    console.print(f"wrote {len(table)} synthetic images ({counts}) to {table.samples[0].path.parents[1]}",
                  highlight=False, soft_wrap=True)
    console.print(f"use them as the dataset '{name}': spermhead data summary {name} --data-dir {out}",
                  highlight=False, soft_wrap=True)


def say_if_synthetic(model: Path, predictor: Any) -> None:
    """A note that the bundle learnt from `data synth`'s heads, for predict and evaluate (the web
    page says it too)."""
    if (predictor.meta.run or {}).get("synthetic"):
        err_console.print(f"note: {model} was trained on synthetic heads (rendered by spermhead, not "
                          "photographed); its answers on microscope images mean little", highlight=False,
                          soft_wrap=True)


def check_output_file(path: Path | None, option: str, *, overwrite: bool = True, remade: bool = False) -> None:
    """Before any work: a file `option` will write can be written (its folder, or the nearest
    folder above that exists, is writable), without `overwrite` is not there already, and is no
    file of a run, assessment, selection or bundle (unless `remade`: a bundle's own model.onnx).
    Nothing is made here: a command refused later leaves no empty folder behind; the writers
    make the folder when they write."""
    from spermhead.errors import ConfigError

    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{option} {path}: exists; pass --overwrite to replace it")
    if path.exists() and not remade and (owner := _written_folder(path)):
        raise ConfigError(f"{option} {path}: is a file of {owner}, which --overwrite would spoil; give a file "
                          "outside it")
    above = path.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ConfigError(f"{option} {path}: cannot write there ({above} is a file, not a folder)")
    if not os.access(above, os.W_OK):
        raise ConfigError(f"{option} {path}: cannot write there ({above} is not writable)")
    if path.exists() and not os.access(path, os.W_OK):  # --overwrite of a read-only file
        raise ConfigError(f"{option} {path}: cannot write there (the file is read-only)")


# The files spermhead writes in a run, assessment, selection or bundle folder (and anything in
# their plots/ and folds/): another command's output must not replace them
OWN_FILES = frozenset({"config.yaml", "run.json", "metrics.json", "predictions.csv", "report.html", "samples.csv",
                       "start.json", "assessment.json", "selection.csv", "selection.md", "selection.html",
                       "model.json", "model.onnx"})


def _written_folder(path: Path) -> str | None:
    """What spermhead wrote the folder holding `path` (or its parent: a run's plots/) as, where
    `path` is one of its own files: a training run, an assessment, a selection or a model bundle
    (`compare --json RUN/predictions.csv` left the run unreadable). A user's file beside them is not."""
    path = path.resolve()  # a link to a run's file is that file
    if not (path.name in OWN_FILES or path.suffix == ".safetensors" or path.parent.name in ("plots", "folds")):
        return None
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file() and (folder / "run.json").is_file():
            return f"the training run {folder}"
        if (folder / "assessment.json").is_file():
            return f"the assessment {folder}"
        if (folder / "selection.csv").is_file() and path.parent == folder:
            return f"the selection {folder}"
        if (folder / "model.json").is_file() and any(folder.glob("*.safetensors")):
            return f"the model bundle {folder}"
    return None


def open_output(path: Path, option: str) -> TextIO:
    """`path` opened for writing text (a CSV's newline rule), or an error naming `option` and why
    (`check_output_file` cannot foresee every refusal: a root user passes os.access anywhere)."""
    from spermhead.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None


# Options that do not change what `train` computes: with only these, --resume keeps the saved settings.
_RESUME_LOCAL = {"name", "out", "data_dir", "threads", "accelerator", "overwrite", "resume", "progress"}


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters given on the command line (or by environment), not left at their defaults."""
    # by name: typer ships its own copy of click, whose enum is not click's
    sources = {p: ctx.get_parameter_source(p) for p in ctx.params}
    return {p for p, src in sources.items() if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")}


def config_settings(config: Path | None) -> dict[str, Any]:
    """A --config file's settings (`config.read_config_file`), said first where the file was written
    with other versions; {} without one."""
    from spermhead.config import environment_differences, read_config_file

    if config is None:
        return {}
    settings, written_with = read_config_file(config)
    if changed := environment_differences(written_with):
        console.print(Text.assemble(("note:", "yellow"), f" {config} was written with other versions "
                                    f"({'; '.join(changed)}); the same settings may not give the same figures "
                                    "to the last digit"), highlight=False, soft_wrap=True)
    return settings


# The protocol options `train` and `select` share.
CvOption = Annotated[int | None, typer.Option("--cv", help="Stratified K-fold CV (default 5)")]
SplitOption = Annotated[str | None, typer.Option(help="'folders' (train/val/test) or e.g. 60/30/10")]
GroupedOption = Annotated[bool | None, typer.Option("--grouped", help="CV folds by acquisition group")]
NearDuplicatesOption = Annotated[float | None, typer.Option(
    help="Images whose thumbnails correlate this much are one head and stay on one side of every "
         "split (default 0.98; 0 = do not look)")]


@app.command("train")
@friendly
def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Run directory to create")],
    name: DatasetOrConfigArg = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A run directory (its config.yaml) or a YAML file of settings: train with "
                         "those settings over the recipe's; the options given here change them")] = None,
    data_dir: DataDir = None,
    model: Annotated[str | None, typer.Option(help="Model name (see `spermhead models`)")] = None,
    width: Annotated[int | None, typer.Option(
        help="The model's width option (spermnet: first-stage channels, later stages double); other "
             "model options go in a --config file under model: kwargs:")] = None,
    cv: CvOption = None,
    split: SplitOption = None,
    grouped: GroupedOption = None,
    near_duplicates: NearDuplicatesOption = None,
    recipe: Annotated[str | None, typer.Option(
        help="default (a named dataset's own recipe; the general one for a folder), seed (the seed "
             "report's training), or hushem, scian-pa, scian-ta, combined: that benchmark's recipe, "
             "for a folder of similar heads")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    image_size: Annotated[int | None, typer.Option(help="Canonical image size in pixels")] = None,
    color: Annotated[str | None, typer.Option(help="gray or rgb")] = None,
    scale: Annotated[str | None, typer.Option(help="Crop scale: head (size-invariant) or image (keeps size)")] = None,
    background: Annotated[str | None, typer.Option(
        help="keep, or mask: paint everything outside the head with the background")] = None,
    seed: Annotated[int | None, typer.Option(help="One seed fixes the run (default 0)")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw, adam or sgd")] = None,
    schedule: Annotated[str | None, typer.Option(help="onecycle, cosine, plateau or none")] = None,
    balance: Annotated[str | None, typer.Option(help="none, sampler, loss or offline")] = None,
    augment: Annotated[str | None, typer.Option(help="none, light, aligned, directed, seed or strong")] = None,
    soft_labels: Annotated[float | None, typer.Option(help="Weight of expert vote shares in targets (SCIAN)")] = None,
    distill: Annotated[float | None, typer.Option(
        help="Weight of out-of-fold teachers' answers in the targets (three teachers per fit); 0 disables")] = None,
    label_smoothing: Annotated[float | None, typer.Option()] = None,
    focal: Annotated[float | None, typer.Option(
        help="Focal loss gamma (e.g. 2): less weight on images already classified right; 0 = cross-entropy")] = None,
    backbone_lr: Annotated[float | None, typer.Option(
        help="Learning rate of every layer but the final classifier layer, as a share of --lr (e.g. 0.3); "
             "1 = one rate")] = None,
    mixup: Annotated[float | None, typer.Option(help="Mixup Beta(a, a); 0 disables")] = None,
    cutmix: Annotated[float | None, typer.Option(help="CutMix Beta(a, a); 0 disables")] = None,
    swa: Annotated[float | None, typer.Option(
        help="Average the weights over this final fraction of epochs (SWA, e.g. 0.25); 0 disables")] = None,
    ema: Annotated[float | None, typer.Option(help="EMA decay of the weights per step (e.g. 0.99); 0 disables")] = None,
    sam: Annotated[float | None, typer.Option(
        help="Sharpness-aware minimisation radius (e.g. 0.05; two passes per step); 0 disables")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Flip test-time augmentation")] = None,
    pretrained: Annotated[bool | None, typer.Option("--pretrained", help="Hub weights (online only)")] = None,
    weights: Annotated[str | None, typer.Option(
        help="A local weights file to start from (.safetensors or .pth; a bundle's model.safetensors too)")] = None,
    init: Annotated[str | None, typer.Option(
        help="synthetic: start from a model first trained on rendered heads (trained once, cached); "
             "scratch: random weights; auto (default): synthetic for spermnet, scratch otherwise")] = None,
    l2_conv: Annotated[float | None, typer.Option(help="L2 penalty on conv weights")] = None,
    final: Annotated[str | None, typer.Option(help="After CV: ensemble of folds or refit on all data")] = None,
    operating_point: Annotated[str | None, typer.Option(help="accuracy or balanced")] = None,
    prior_strength: Annotated[str | None, typer.Option(
        help="Balanced point: how much of the training prior to divide out (1 = all), or 'val' to "
             "choose it per fold on validation data")] = None,
    logger: Annotated[list[str] | None, typer.Option(help="Extra loggers: tensorboard, mlflow")] = None,
    members: Annotated[int | None, typer.Option(help="Seed-ensemble members per fold")] = None,
    train_fraction: Annotated[float | None, typer.Option(
        help="Train on this stratified share of each training side (a learning-curve point)")] = None,
    refit_val: Annotated[bool | None, typer.Option(
        "--refit-val/--no-refit-val",
        help="After scoring its validation part, each fold trains again on training + validation")] = None,
    monitor: Annotated[str | None, typer.Option(
        help="The checkpoint each fold keeps: last (the recipes'), val_acc or val_loss (the best on its "
             "validation part)")] = None,
    patience: Annotated[int | None, typer.Option(
        help="Stop a fold once its validation loss has not improved for this many epochs, whatever "
             "--monitor keeps (0 = never)")] = None,
    shape_fusion: Annotated[float | None, typer.Option(
        help="Weight (0-1) of a head-profile logistic regression fused with the CNN's probabilities; "
             "0 = the CNN alone")] = None,
    pixel_fusion: Annotated[float | None, typer.Option(
        help="Weight (0-1) of an SVM on the aligned pixels fused with the CNN's probabilities (beside "
             "--shape-fusion; the two weights add up to at most 1); 0 = left out")] = None,
    extra_train: Annotated[list[str] | None, typer.Option(
        help="A dataset or folder whose images join every training side only (never validation or "
             "test); the dataset's own images, and copies of them, are left out of it. Repeatable")] = None,
    calibrate: Annotated[bool | None, typer.Option(
        "--calibrate/--no-calibrate",
        help="Temperature-scale the probabilities on each fold's validation part (default on); "
             "answers do not change")] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="Torch CPU threads")] = None,
    accelerator: Annotated[str | None, typer.Option(
        help="auto (a CUDA GPU when torch sees one, else the CPU), cpu or gpu")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train and assess a model under CV or a fixed split; writes a run directory with a bundle."""
    from spermhead.config import fusion_text, load_config
    from spermhead.errors import ConfigError
    from spermhead.training.options import absolute_path, build_run_config
    from spermhead.training.run import check_run_dir, train_run

    if overwrite and resume:  # before the run's config.yaml is read
        check_run_dir(out, overwrite=overwrite, resume=resume)
    # a resume without --config starts from the run's own settings: options given with it are
    # then what it is asked to change (refused unless they only say where it runs), not the recipe's
    # defaults against everything the run was started with
    from_run = (config is None and resume and (out / "config.yaml").is_file()
                and bool(given_options(ctx) - _RESUME_LOCAL))
    settings_file = out / "config.yaml" if from_run else config
    settings = config_settings(settings_file)
    name = name or settings.get("dataset")
    if name is None and resume and (out / "config.yaml").is_file():
        name = load_config(out / "config.yaml").dataset  # `train --out RUN --resume` alone
    if name is None and resume:
        raise ConfigError(f"{out}: no run to resume there (no config.yaml); give the command that started "
                          "the run, or the run's folder with --out")
    if name is None:
        raise ConfigError("give the dataset NAME (or --config with a run directory)")
    if resume and (out / "config.yaml").is_file() and not given_options(ctx) - _RESUME_LOCAL:
        # --resume alone: the interrupted run's own settings (where it runs may change)
        cfg = load_config(out / "config.yaml")
        cfg.out = str(out)  # the folder resumed, wherever it was started: a copied run went on in the original
        cfg.dataset = absolute_path(name)  # as saved; a different dataset is refused by the settings check
        cfg.data_dir = str(data_dir.absolute()) if data_dir else cfg.data_dir  # saved again: from anywhere
        cfg.train.num_threads = threads if threads is not None else cfg.train.num_threads
        cfg.train.accelerator = accelerator or cfg.train.accelerator
    else:  # a fresh start, or a resume whose options must match the saved ones (checked in train_run)
        cfg = build_run_config(
            name, str(out), recipe=recipe, data_dir=str(data_dir) if data_dir else None, seed=seed, cv=cv,
            split=split, operating_point=operating_point, settings=settings,
            settings_file=str(settings_file) if settings_file is not None else None,
            loggers=("csv", *logger) if logger else None,
            model=model, width=width, grouped=grouped, near_duplicates=near_duplicates, epochs=epochs, image_size=image_size, color=color,
            scale=scale, background=background, batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule, balance=balance,
            augment=augment, soft_labels=soft_labels, distill=distill, label_smoothing=label_smoothing, focal=focal, backbone_lr=backbone_lr, mixup=mixup, cutmix=cutmix, swa=swa, ema=ema, sam=sam, tta=tta, pretrained=pretrained,
            weights=weights, init=init, prior_strength=prior_strength, l2_conv=l2_conv, final_model=final, threads=threads, members=members,
            train_fraction=train_fraction, refit_val=refit_val, monitor=monitor, patience=patience,
            accelerator=accelerator, extra_train=extra_train or None, shape_fusion=shape_fusion,
            pixel_fusion=pixel_fusion, calibrate=calibrate,
        )
    result = train_run(cfg, overwrite=overwrite, resume=resume, progress=progress)
    if resume and (read_back := result.timing.get("folds_read_back", 0)):
        finished = read_back == len(result.timing.get("epochs", []))
        console.print(f"{'every fold had finished: nothing trained; ' if finished else ''}{read_back} finished "
                      "fold(s) read back, the result, report and bundle written again from them", highlight=False)
    print_run_summary(result.out, result.metrics)
    if fused := fusion_text(cfg.train.shape_fusion, cfg.train.pixel_fusion):
        console.print(f"these are the fused answers: {fused} (--shape-fusion 0 --pixel-fusion 0 "
                      f"scores {cfg.model.name} alone)", highlight=False, soft_wrap=True)


@app.command("pretrain")
@friendly
def pretrain_cmd(
    out: Annotated[Path, typer.Option("--out", help="Backbone weights to write (.safetensors)")],
    sources: Annotated[str, typer.Option(help="Comma-separated datasets or folders whose images (not "
                                         "labels) are used, and/or 'synthetic'")] = "scian-pa,synthetic",
    data_dir: DataDir = None,
    model: Annotated[str, typer.Option(help="Model name (see `spermhead models`)")] = "spermnet",
    epochs: Annotated[int, typer.Option()] = 60,
    synthetic: Annotated[int, typer.Option(help="Synthetic heads added for the 'synthetic' source")] = 2000,
    image_size: Annotated[int, typer.Option(help="Canonical image size; match the training run's")] = 64,
    color: Annotated[str, typer.Option(help="gray or rgb; match the training run's")] = "gray",
    batch_size: Annotated[int, typer.Option()] = 256,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads; 0 lets torch decide")] = 0,
    accelerator: Annotated[str, typer.Option(help="auto, cpu or gpu")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing weights file")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Self-supervised (SimCLR) pretraining on unlabelled heads; train with --weights OUT afterwards.

    Leave out the images you will test on, e.g. pretrain on SCIAN for HuSHeM."""
    from spermhead.config import PreprocessConfig
    from spermhead.training.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(sources=tuple(s.strip() for s in sources.split(",") if s.strip()),
                         data_dir=str(data_dir) if data_dir else None, out=str(out), seed=seed, model=model,
                         preprocess=PreprocessConfig(image_size=image_size, color=color), synthetic=synthetic,
                         epochs=epochs, batch_size=batch_size, num_threads=threads,
                         accelerator=accelerator)
    path = pretrain(cfg, progress=progress, overwrite=overwrite)
    console.print(f"backbone weights: {path}  (record: {path.with_suffix('.json')})\n"
                  f"next: spermhead train NAME --weights {path}")


def metrics_table(title: str, metrics: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table("metric", "value", title=title)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_precision", "weighted_recall",
                "roc_auc_ovr_macro", "pr_auc_macro"):
        if metrics.get(key) is not None:
            value = f"{metrics[key]:.4f}"
            if key == "accuracy" and metrics.get("accuracy_std") is not None:
                # the pooled figure (every image once), with the folds' spread; the report's
                # table gives the fold mean beside it
                mean = metrics.get("accuracy_mean")
                value += (f" pooled (fold mean {mean:.4f} +/- {metrics['accuracy_std']:.4f})" if mean is not None
                          else f" +/- {metrics['accuracy_std']:.4f} (folds)")
            table.add_row(key, value)
    return table


def print_run_summary(out: Path, metrics: dict[str, Any]) -> None:
    console.print(metrics_table(f"{out}", metrics))
    if len(points := metrics.get("operating_points") or {}) > 1:  # both, always (SCIAN's papers report recall)
        shown = "; ".join(f"{name} point{' (the bundle answers here)' if name == metrics.get('operating_point') else ''}:"
                          f" accuracy {p['accuracy']:.4f}, average recall {p['balanced_accuracy']:.4f}"
                          for name, p in points.items())
        console.print(shown, highlight=False, soft_wrap=True)
    from spermhead.training.run import SYNTHETIC_NOTE

    if SYNTHETIC_NOTE in (metrics.get("notes") or []):  # as predict, evaluate and select say it
        console.print(f"note: {SYNTHETIC_NOTE}", highlight=False, soft_wrap=True)
    console.print(f"report: {out / 'report.html'}\nbundle: {out / 'model'}\n"
                  f"serve it: spermhead serve --model {out / 'model'}")


@app.command("select")
@friendly
def select(
    models: Annotated[str, typer.Option(help="Comma-separated model names")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs and the selection table")],
    name: DatasetOrConfigArg = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A run directory (its config.yaml) or a YAML file of settings for every model, over "
                         "the recipe's; the options given here change them. Its model name gives way to "
                         "--models and its start (init, weights file, with its epochs) to select's own (--init, "
                         "--pretrained, --weights); its model options (kwargs) go to every model (--model-option "
                         "gives one model its own); its "
                         "fusion weights, where it sets them, replace select's 0")] = None,
    data_dir: DataDir = None,
    cv: CvOption = None,
    split: SplitOption = None,
    grouped: GroupedOption = None,
    near_duplicates: NearDuplicatesOption = None,
    variants: Annotated[bool, typer.Option("--variants", help="Add gray/RGB x L2 variants")] = False,
    recipe: Annotated[str | None, typer.Option(
        help="default (the dataset's recipe, less its synthetic start and fusion), seed (the seed "
             "report's training), or hushem, scian-pa, scian-ta, combined: that benchmark's recipe, "
             "less the same")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs for every model (default: the recipe's "
                                                    "from random weights)")] = None,
    image_size: Annotated[int | None, typer.Option(help="Canonical image size in pixels")] = None,
    color: Annotated[str | None, typer.Option(help="gray or rgb")] = None,
    seed: Annotated[int | None, typer.Option(help="The split's (and training's) seed (default 0, or --config's)")] = None,
    init: Annotated[str | None, typer.Option(
        help="scratch (random weights; the default) or synthetic: every model without a --weights file starts "
             "from a source model of its own, trained on rendered heads and cached (minutes for spermnet, "
             "hours for the seed's large nets on a CPU; one per --variants variant), for the recipe's "
             "epochs from that start (a --weights model trains those too); a seed backbone then trains its "
             "dense head alone, as from hub weights")] = None,
    pretrained: Annotated[bool | None, typer.Option(
        "--pretrained", help="Every model without a --weights file starts from its hub weights (online "
                             "only): timm:<name>, seed-resnet50, seed-efficientnet-b7; others are refused")] = None,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", metavar="MODEL=FILE", help="A local weights file (.safetensors or .pth) for one model of "
        "--models, named as there, e.g. timm:resnet18=resnet18.safetensors; it starts from it. Repeatable")] = None,
    model_option: Annotated[list[str] | None, typer.Option(
        "--model-option", metavar="MODEL:KEY=VALUE", help="An option of one model of --models, over --config's "
        "model options (which go to every model), e.g. seed-resnet50:freeze_backbone=false or "
        "spermnet:width=32. Repeatable")] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="Torch CPU threads (0 lets torch decide)")] = None,
    accelerator: Annotated[str | None, typer.Option(
        help="auto (a CUDA GPU when torch sees one, else the CPU), cpu or gpu")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the runs and the table already in --out")] = False,
    resume: Annotated[bool, typer.Option(
        help="Finish the runs in --out (and any model newly listed), given the same settings and starts; "
             "finished runs are read back")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train several models under one protocol and write the model-selection table. Every model
    starts from random weights unless --init, --pretrained or --weights say otherwise, and is scored alone
    unless a --config fuses its answers; the table's header says which."""
    from rich.table import Table

    from spermhead.errors import ConfigError
    from spermhead.evaluation.selection import (
        BEST_MARK,
        DISPLAY,
        cell_text,
        chosen_on_validation,
        selection_table,
        tie_note,
    )
    from spermhead.training.options import build_run_config
    from spermhead.training.select import parse_model_options, parse_weights, select_models, select_settings

    settings = config_settings(config)
    name = name or settings.get("dataset")
    if name is None:
        raise ConfigError("give the dataset NAME (or --config with a run directory)")
    if init not in (None, "scratch", "synthetic"):  # "auto" would resolve for one model, not the list
        raise ConfigError(f"--init {init!r}: scratch or synthetic")
    if init and pretrained:
        raise ConfigError(f"--init {init} and --pretrained each give every model its start; give one (a "
                          "model's --weights file is its start either way)")
    layered, dropped, fused = select_settings(settings, init or "scratch")
    if dropped:
        console.print(f"note: {config} sets {', '.join(dropped)}: left out, since select starts every model "
                      "from random weights, or as --init, --pretrained and --weights MODEL=FILE say (--epochs "
                      "sets the epochs)", highlight=False, soft_wrap=True)
    if fused:
        console.print(f"note: {config} sets {', '.join(fused)}: every model's answers are fused with those "
                      "second opinions, not scored alone (the table's header says so)",
                      highlight=False, soft_wrap=True)
    base = build_run_config(name, str(out), recipe=recipe, data_dir=str(data_dir) if data_dir else None,
                            seed=seed, cv=cv, split=split, settings=layered,
                            settings_file=str(config) if config is not None else None, grouped=grouped,
                            near_duplicates=near_duplicates, epochs=epochs, image_size=image_size, color=color,
                            init=init, pretrained=pretrained, threads=threads, accelerator=accelerator)
    names = [m.strip() for m in models.split(",") if m.strip()]
    rows, about = select_models(base, names, out, variants=variants, weights=parse_weights(weights or []),
                                model_options=parse_model_options(model_option or []), overwrite=overwrite,
                                resume=resume, progress=progress)
    chosen = selection_table(rows)
    shown = ("accuracy", "balanced_accuracy", "val_balanced_accuracy", "accuracy_vs_best", "mcnemar_p_vs_best")
    table = Table("model", "variant", *(dict(DISPLAY)[k] for k in shown),
                  title="test folds; ★ chosen on validation" if chosen_on_validation(chosen)
                  else "test folds; ★ chosen on them (no validation scores)")
    for r in chosen:
        table.add_row(r["model"] + (f" {BEST_MARK}" if r["best"] else ""), r["variant"],
                      *(cell_text(r, k) for k in shown))
    # the header the md and html tables carry (each model's start, fused or not), lest the rows be
    # read as a comparison they are not
    console.print(about, highlight=False, soft_wrap=True)
    console.print(table)
    if tied := tie_note(chosen):  # as selection.md says it
        console.print(tied, highlight=False, soft_wrap=True)
    console.print(f"selection table: {out / 'selection.md'} (also .csv and .html)")


@app.command("predict")
@friendly
def predict(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns")],
    model: Annotated[Path, typer.Option("--model", help="Bundle folder (model.json + model.safetensors), or the run folder holding it")],
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write one row per file to this CSV")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every result to this JSON file")] = None,
    summary: Annotated[Path | None, typer.Option(
        "--summary", help="Write each sample's class shares (a folder of images = one sample), counted and "
                          "adjusted for the model's measured errors, to this CSV")] = None,
    backend: Annotated[str, typer.Option(help="torch, or onnx (model.onnx beside the bundle, else exported)")] = "torch",
    operating_point: Annotated[str | None, typer.Option(
        help="accuracy (the model's posteriors) or balanced (prior correction for average recall); "
             "default: the bundle's")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call")] = 256,
    show: Annotated[int, typer.Option(min=0, help="Rows shown in the table; --csv/--json get them all")] = 50,
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads; 0 lets torch decide")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing --csv/--json/--summary files")] = False,
) -> None:
    """Classify images. A file that cannot be used becomes an error row; exit code 1 if any did."""
    import csv

    import torch

    from spermhead.errors import ConfigError

    if threads > 0:
        torch.set_num_threads(threads)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Column, Table
    from rich.text import Text

    from spermhead.data.readers import IMAGE_SUFFIXES, skipped_files
    from spermhead.preprocess.acquisition import batch_warning
    from spermhead.serving.bundle import check_bundle_path
    from spermhead.serving.predictor import (
        Predictor,
        csv_columns,
        csv_row,
        empty_inputs,
        expand_inputs,
        searched_folders,
        unique_files,
    )
    from spermhead.serving.prepare import printable

    outputs = [(path, option) for path, option in ((csv_out, "--csv"), (json_out, "--json"), (summary, "--summary"))
               if path is not None]
    for path, option in outputs:
        # not after minutes of classifying; and a run's own predictions.csv is not replaced unasked
        check_output_file(path, option, overwrite=overwrite)
    for i, (path, option) in enumerate(outputs):  # one file for two outputs keeps only the last written
        if same := [o for p, o in outputs[i + 1:] if p.resolve() == path.resolve()]:
            raise ConfigError(f"{option} and {same[0]} name the same file, {path}; give each its own")
    check_bundle_path(model)  # before the images are walked
    named = expand_inputs(paths)
    files = unique_files(named)
    if len(files) < len(named):
        err_console.print(f"note: {len(named) - len(files)} file(s) are the same file as one named before (named "
                          "twice, a folder and its own files, or a link to it) and are classified and counted once",
                          highlight=False, soft_wrap=True)
    inputs = {f.resolve() for f in files if f.exists()}
    for path, option in outputs:  # written before they would be read: an image replaced by a CSV
        if path.resolve() in inputs:
            raise ConfigError(f"{option} {path}: is also one of the files to classify; write it elsewhere")
    suffixes = "/".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
    if skipped := [f for folder in searched_folders(paths) for f in skipped_files(folder)]:
        err_console.print(f"note: {len(skipped)} file(s) in the folders skipped for their suffix (not {suffixes}), "
                          f"e.g. {printable(str(skipped[0]))}; name a file itself to try it", highlight=False, soft_wrap=True)
    if not files:
        raise SpermheadError(f"{' '.join(paths)}: no image files found (folders are searched for {suffixes})")
    if empty := empty_inputs(paths, named):
        err_console.print(f"note: {'; '.join(map(printable, empty))}", highlight=False, soft_wrap=True)
    rows: list[dict[str, Any]] = []
    with Predictor(model, backend=backend, batch_size=batch_size, operating_point=operating_point) as predictor:
        say_if_synthetic(model, predictor)
        columns = csv_columns(predictor.classes)
        ranges, confusion, check = predictor.meta.input_ranges, predictor.meta.confusion, predictor.meta.share_check
        fh = open_output(csv_out, "--csv") if csv_out else None
        try:
            writer = csv.DictWriter(fh, fieldnames=columns) if fh else None
            if writer:
                writer.writeheader()
            progress = Progress(TextColumn("classifying"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=err_console, transient=True)
            with progress:
                task = progress.add_task("predict", total=len(files))
                for row in predictor.predict_files(files):
                    rows.append(row)
                    if writer:
                        writer.writerow(csv_row(row, predictor.classes))  # streamed: rows land as they come
                    progress.advance(task)
        finally:
            if fh:
                fh.close()
    if json_out:
        with open_output(json_out, "--json") as out:
            out.write(json.dumps(rows, indent=1))

    failed = [r for r in rows if not r["ok"]]
    # a narrow terminal folds the file names rather than cutting them to "imgs/image…" alike
    table = Table(Column("file", overflow="fold"), "class", "confidence", "uncertain", "unlike training", "status",
                  title=f"{len(rows) - len(failed)} classified, {len(failed)} failed")
    shown = rows if len(rows) <= show else failed[:show] + [r for r in rows if r["ok"]][: max(0, show - len(failed))]
    for r in shown:
        if r["ok"]:
            table.add_row(r["path"], r["class"], f"{r['confidence']:.3f}", "yes" if r["uncertain"] else "",
                          "yes" if r["unlike_training"] else "", r["alignment"].removeprefix("fallback: "))
        else:
            table.add_row(r["path"], "", "", "", "", Text(r["error"], style="red"))  # Text: no markup from file names
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"({len(rows) - len(shown)} more rows" + (" in the CSV/JSON)" if csv_out or json_out else
                                                                 "; write them all with --csv)"))
    show_compositions(rows, predictor.classes, confusion, summary, check)
    if warning := batch_warning(rows, ranges):
        err_console.print(Text.assemble(("warning:", "yellow"), f" {warning}"), highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def share_text(row: dict[str, Any], key: str, closer: list[str] | None = None, index: int = 0) -> str:
    """'12.5% (8.1-18.0)': a share of a composition row with its interval, starred where `closer`
    (per class: counted or adjusted, from the bundle's share check) names this estimate."""
    star = " ★" if closer and closer[index] == ("counted" if key == "share" else "adjusted") else ""
    return f"{100 * row[key]:.1f}% ({100 * row[key + '_low']:.1f}-{100 * row[key + '_high']:.1f}){star}"


def show_compositions(rows: list[dict[str, Any]], classes: list[str], confusion: list[list[int]] | None,
                      summary: Path | None, check: dict[str, Any] | None = None, shown: int = 10) -> None:
    """Each sample's (folder's) class shares, counted and adjusted, widened and marked as the
    bundle's share check found; all of them to `summary`."""
    import csv

    from rich.table import Table

    from spermhead.evaluation.composition import (
        MIN_HEADS,
        SUMMARY_COLUMNS,
        largest_sample,
        sample_compositions,
        samples_left_out,
        summary_rows,
    )

    samples = sample_compositions(rows, classes, confusion, check["extra_sd"] if check else None)
    closer = check["closer"] if check and confusion else None
    if headless := sum(1 for r in rows if r.get("ok") and not r.get("head_found", True)):
        console.print(f"note: no head found in {headless} image{'s' * (headless != 1)} (alignment 'fallback: no "
                      "head found' in the CSV); each is classified on the whole image but left out of the class "
                      "shares",
                      highlight=False, soft_wrap=True)
    if summary is not None:  # checked writable before predict began
        with open_output(summary, "--summary") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(summary_rows(samples, closer))
        if not samples:  # say why the file holds its header alone
            console.print(f"note: no folder has {MIN_HEADS} classified heads, the fewest a sample's shares are "
                          f"given for; {summary} holds the header only", highlight=False, soft_wrap=True)
    if samples and (few := samples_left_out(rows)):  # not silently: a lab may take the list for complete
        console.print(f"note: {len(few)} folder(s) with fewer than {MIN_HEADS} classified heads have no class "
                      f"shares here, e.g. {few[0][0]} ({few[0][1]} heads)", highlight=False, soft_wrap=True)

    for name, heads, comp in samples[:shown]:
        columns = ["class", "heads", "counted (95% CI)", *(["adjusted for the model's errors"] if confusion else [])]
        table = Table(*columns, title=f"{name}: {heads} heads", title_justify="left")
        for i, r in enumerate(comp):
            table.add_row(r["class"], str(r["count"]), share_text(r, "share", closer, i),
                          *([share_text(r, "adjusted", closer, i)] if confusion else []))
        console.print(table)
    if len(samples) > shown:
        console.print(f"({len(samples) - shown} more samples" + (f" in {summary})" if summary else
                                                                  "; write them all with --summary)"))
    if samples and confusion:
        console.print(f"adjusted: the shares that best explain these predictions, given the model's errors on the "
                      f"{sum(map(sum, confusion))} held-out images of its run (see README)", highlight=False)
    elif samples:
        console.print("this bundle records no held-out confusion, so the shares are as predicted, not adjusted "
                      "for the model's errors", highlight=False)
    if samples and not check:  # a single split's bundle, or one from before the check
        console.print("note: this model's run has no check of its share intervals (a single split holds too few "
                      "held-out heads; older bundles lack it), so they are not widened for its errors' lean and can "
                      "miss the true share far more often than 5% of the time (see README); a cross-validated run "
                      "of the same recipe gives checked ones", highlight=False, soft_wrap=True)
    if samples and check:
        error = {how: 100 * sum(v) / len(v) for how, v in check["error"].items()}
        console.print(f"★ the closer of the two in this model's check: on {check['samples']} samples of up to "
                      f"{largest_sample(check)} of its run's held-out heads, shares were off by {error['counted']:.1f} points "
                      f"counted and {error['adjusted']:.1f} adjusted, on average over the classes; each interval is "
                      f"widened to hold the truth in {100 * check['level']:.0f}% of them", highlight=False)


def print_true_shares(metrics: dict[str, Any]) -> None:
    """evaluate's images as one sample: each class's true share beside predict's estimates."""
    from rich.table import Table

    comp = metrics["composition"]
    adjusted = "adjusted" in comp[0]
    closer = (metrics.get("share_check") or {}).get("closer") if adjusted else None
    table = Table("class", "true share", "counted (95% CI)", *(["adjusted (95% CI)"] if adjusted else []),
                  title="class shares, as predict would estimate them for a sample of these images",
                  title_justify="left")
    for i, r in enumerate(comp):
        table.add_row(r["class"], f"{100 * r['true_share']:.1f}%", share_text(r, "share", closer, i),
                      *([share_text(r, "adjusted", closer, i)] if adjusted else []))
    console.print(table)
    if closer:
        console.print("★ per class, the estimate the bundle's own check found closer to the truth, on samples of "
                      "its run's held-out heads; intervals widened as that check says (see README)", highlight=False)


@app.command("evaluate")
@friendly
def evaluate(
    name: DatasetArg,
    model: Annotated[Path, typer.Option("--model", help="Bundle folder (model.json + model.safetensors), or the run folder holding it")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the report, metrics and predictions")],
    data_dir: DataDir = None,
    operating_point: Annotated[str | None, typer.Option(
        help="accuracy or balanced; default: the bundle's")] = None,
    backend: Annotated[str, typer.Option(help="torch or onnx")] = "torch",
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads; 0 lets torch decide")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace the files of an existing output folder")] = False,
) -> None:
    """Assess a trained bundle on labelled images it did not train on (another dataset or lab).
    Images it did train on are detected and reported apart; exit code 1 if any file failed."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from spermhead.data.readers import NAMED_DATASETS, default_data_dir, load_dataset
    from spermhead.evaluation.external import assess, check_out_dir, write_assessment
    from spermhead.serving.bundle import bundle_folder
    from spermhead.serving.predictor import Predictor

    if threads > 0:
        torch.set_num_threads(threads)
    check_out_dir(out, overwrite)
    table = load_dataset(name, data_dir)
    with Predictor(model, backend=backend, operating_point=operating_point) as predictor:
        say_if_synthetic(model, predictor)
        progress = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err_console, transient=True)
        with progress:
            task = progress.add_task("evaluate", total=len(table))
            result = assess(predictor, table, on_row=lambda: progress.advance(task))
        # absolute paths, so the review page finds the images from any working folder
        named = name.lower() in NAMED_DATASETS
        about = {"dataset": name if named else str(Path(name).resolve()),
                 "data_dir": str(Path(data_dir or default_data_dir()).resolve()) if named else None,
                 "bundle": str(bundle_folder(model).resolve()),
                 "model": {"name": predictor.meta.architecture},
                 "preprocess": predictor.meta.preprocess, "trained_on": predictor.meta.run.get("dataset"),
                 "operating_point": predictor.meta.operating_point, "backend": backend,
                 # the bundle's fusion, so the report says whose answers these are
                 "train": {"shape_fusion": predictor.meta.shape_fusion, "pixel_fusion": predictor.meta.pixel_fusion}}
    metrics = write_assessment(out, result, about)
    console.print(f"{name}: {len(result.predictions)} images scored by {model}", highlight=False)
    console.print(metrics_table("", metrics))
    for point, h in metrics["operating_points"].items():
        mark = " (used above)" if point == metrics["operating_point"] else ""
        console.print(f"{point} point{mark}: accuracy {h['accuracy']:.4f}, average recall "
                      f"{h['balanced_accuracy']:.4f}, macro F1 {h['macro_f1']:.4f}", highlight=False, soft_wrap=True)
    for note in metrics["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    if (unlike := metrics.get("unlike_training")) and unlike["unlike"]:
        acc = {side: "-" if unlike[f"accuracy_{side}"] is None else f"{unlike[f'accuracy_{side}']:.4f}"
               for side in ("unlike", "like")}
        console.print(f"images unlike the training images: {unlike['unlike']} (accuracy {acc['unlike']}); "
                      f"like them: {unlike['like']} (accuracy {acc['like']})", highlight=False, soft_wrap=True)
    if metrics["composition"]:
        print_true_shares(metrics)
    else:
        console.print("no head was found in any image: no class shares to give for them as a sample", highlight=False)
    if metrics.get("unseen"):
        u = metrics["unseen"]
        console.print(f"images the model did not train on ({u['n']}): accuracy {u['accuracy']:.4f}, "
                      f"balanced accuracy {u['balanced_accuracy']:.4f}")
    for bad in result.unusable[:20]:
        name = Path(bad["path"]).name + ": "  # the error names the file already: name it once, by its path
        error = bad["error"][len(name):] if bad["error"].startswith(name) else bad["error"]
        err_console.print(f"{bad['path']}: {error}", style="red", highlight=False, markup=False)
    console.print(f"report: {out / 'report.html'}")
    if result.unusable:
        raise typer.Exit(1)


def distinct_names(a: Path, b: Path) -> tuple[str, str]:
    """The shortest path endings that tell two runs apart (runs/x/seed1 and runs/y/seed1 give
    x/seed1 and y/seed1); a predictions.csv stands for its folder, a CSV of another name for itself
    (two CSVs side by side are told apart by their names, not called A and B)."""
    pa, pb = ([*p.resolve().parent.parts] if p.name == "predictions.csv" else [*p.resolve().parts] for p in (a, b))
    for depth in range(1, max(len(pa), len(pb)) + 1):
        na, nb = "/".join(pa[-depth:]), "/".join(pb[-depth:])
        if na != nb:
            return na, nb
    return "A", "B"  # the same run twice


@app.command("compare")
@friendly
def compare(
    run_a: Annotated[Path, typer.Argument(help="A run or evaluate folder, its predictions.csv, or a folder of "
                                           "repeats (seed1/, seed2/, ...)")],
    run_b: Annotated[Path, typer.Argument(help="The other one, scored on the same images (folds)")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the comparison to this JSON file")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --json file")] = False,
) -> None:
    """Compare two models scored on the same images, image by image: B minus A with an interval
    (accuracy: a paired bootstrap of the images; average recall: drawn class by class), and
    McNemar's exact test; over repeats (CV seeds) also an interval that holds the repeats' spread
    and the images' luck together."""
    from spermhead.errors import DataError
    from spermhead.evaluation.paired import compare_predictions, compare_repeats, repeat_folders, verdict
    from spermhead.evaluation.predictions import read_predictions
    from spermhead.evaluation.provenance import (
        by_image_file,
        paired_seed_mismatches,
        provenance,
        provenance_warnings,
        repeat_mismatches,
    )

    check_output_file(json_out, "--json", overwrite=overwrite)
    names = distinct_names(run_a, run_b)
    if len({(p / "predictions.csv" if p.is_dir() else p).resolve() for p in (run_a, run_b)}) == 1:
        warn_provenance([f"{run_a} and {run_b} are the same run: every difference below is zero by construction"])
    folders = repeat_folders(run_a), repeat_folders(run_b)
    if (folders[0] is None) != (folders[1] is None):
        raise DataError(f"{run_a} and {run_b}: compare one run with one run, or repeats with repeats")
    if folders[0] is None or folders[1] is None:
        pa, pb = provenance(run_a), provenance(run_b)
        warn_provenance(provenance_warnings(pa, pb, names))
        a, b = read_predictions(run_a), read_predictions(run_b)
        if (by_file := by_image_file(a, b, pa, pb)) is not None:
            a, b = by_file
            note_paired_by_file(len(a))
        c = compare_predictions(a, b, names=names)
        show_comparison(c)
        for key in ("accuracy", "balanced_accuracy"):
            console.print(verdict(c, key), highlight=False)
    else:
        common = [r for r in folders[0] if r in folders[1]]
        if not common:
            raise DataError(f"{run_a} and {run_b} have no repeat in common: {', '.join(folders[0])} against "
                            f"{', '.join(folders[1])}")
        first = common[0]
        sides = [{r: provenance(folders[k][r]) for r in common} for k in (0, 1)]
        pa, pb = sides[0][first], sides[1][first]
        # every pair of repeats is checked, and each side's repeats against each other: a folder
        # of repeats is one setting run with other seeds, or the comparison means nothing
        said = [w for r in common for w in provenance_warnings(sides[0][r], sides[1][r], names)]
        said += [w for side, name in zip(sides, names, strict=True) for w in repeat_mismatches(side, name)]
        said += paired_seed_mismatches((sides[0], sides[1]), names)
        warn_provenance(list(dict.fromkeys(said)))
        pairs = {r: (read_predictions(folders[0][r]), read_predictions(folders[1][r])) for r in common}
        moved = {r: by_image_file(a, b, sides[0][r], sides[1][r]) for r, (a, b) in pairs.items()}
        if all(m is not None for m in moved.values()):
            pairs = {r: m for r, m in moved.items() if m is not None}
            note_paired_by_file(len(pairs[first][0]))
        c = compare_repeats(pairs, names=names)
        show_repeats(c, [r for f in folders for r in f if r not in common])
    console.print("Each interval covers which images were scored, not retraining on other data"
                  + (": the interval over the repeats, which adds their spread (t) to the images' bootstrap, covers both."
                     if "repeats" in c
                     else ": for that, compare folders of repeats (CV seeds)."), style="dim")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(c, indent=2) + "\n")


def note_paired_by_file(n: int) -> None:
    console.print(f"note: the two name their images differently (a named dataset and its folder, say); the "
                  f"{n} images are paired by the file each one read", highlight=False, soft_wrap=True)


def warn_provenance(warnings: list[str]) -> None:
    for text in warnings:
        console.print(f"warning: {text}", style="yellow", highlight=False, soft_wrap=True)


def show_comparison(c: dict[str, Any]) -> None:
    from rich.table import Table

    a, b = c["names"]
    table = Table(title=f"{c['n']} images")
    for col in ("", f"A: {a}", f"B: {b}", "B - A", f"{100 * c['level']:.0f}% CI"):
        table.add_column(col)
    for key, how in (("accuracy", "paired bootstrap"), ("balanced_accuracy", "class by class")):
        m = c[key]
        table.add_row(key.replace("_", " "), f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['difference']:+.4f}",
                      f"{m['ci'][0]:+.4f} to {m['ci'][1]:+.4f} ({how})")
    console.print(table)
    i = c["images"]
    console.print(f"images both get right {i['both_right']}, only A {i['only_a']}, only B {i['only_b']}, "
                  f"neither {i['both_wrong']}; McNemar exact p = {c['mcnemar_p']:.3g}", highlight=False)


def show_repeats(c: dict[str, Any], unpaired: list[str]) -> None:
    from rich.table import Table

    from spermhead.evaluation.paired import repeats_verdict

    a, b = c["names"]
    table = Table(title=f"accuracy, A: {a}, B: {b}")
    for col in ("repeat", "images", "A", "B", "B - A", f"{100 * c['level']:.0f}% CI (paired bootstrap)",
                "only A / only B right", "McNemar p"):
        table.add_column(col)
    for r, one in c["repeats"].items():
        m = one["accuracy"]
        table.add_row(r, str(one["n"]), f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['difference']:+.4f}",
                      f"{m['ci'][0]:+.4f} to {m['ci'][1]:+.4f}",
                      f"{one['images']['only_a']} / {one['images']['only_b']}", f"{one['mcnemar_p']:.3g}")
    m = c["accuracy"]
    table.add_row("mean", "", f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['difference']:+.4f}",
                  "" if m["ci"] is None else f"{m['ci'][0]:+.4f} to {m['ci'][1]:+.4f} (repeats and images)", "", "")
    console.print(table)
    for key in ("accuracy", "balanced_accuracy"):
        console.print(repeats_verdict(c, key), highlight=False)
    if unpaired:
        console.print(f"left out, on one side only: {', '.join(unpaired)}", highlight=False)


@app.command("serve")
@friendly
def serve(
    model: Annotated[Path, typer.Option("--model", help="Bundle folder (model.json + model.safetensors), or the run folder holding it")],
    host: Annotated[str, typer.Option(help="Interface to bind; localhost unless you mean to share it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    review: Annotated[str | None, typer.Option(help="Labelled class folder, dataset name, run folder or "
                                               "predictions.csv for the review page")] = None,
    review_data: Annotated[Path | None, typer.Option(
        "--review-data", "--data-dir", help="Data folder holding the images of --review's predictions, or the "
        "named dataset's (default: the run's config.yaml; SPERMHEAD_DATA or ./data)")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Per-file upload limit")] = 20,
    max_request_mb: Annotated[float | None, typer.Option(min=1,
        help="Limit of one request, all its files together (default: the larger of 200 and a full batch "
             "of the classify page, 8 files at --max-upload-mb, plus 10)")] = None,
    backend: Annotated[str, typer.Option(help="torch or onnx")] = "torch",
    operating_point: Annotated[str | None, typer.Option(
        help="accuracy (the model's posteriors) or balanced (prior correction for average recall); "
             "default: the bundle's")] = None,
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads; 0 lets torch decide (1 is best on a "
                                         "machine busy with other work)")] = 0,
    root_path: Annotated[str, typer.Option(
        help="The path a reverse proxy serves this under, e.g. /spermhead, where the proxy strips it: "
             "the API docs' Try it out then calls the API there (the pages, docs too, work under any path)")] = "",
) -> None:
    """Serve the classify and review pages and the REST API (docs at /docs)."""
    import torch
    import uvicorn

    from spermhead.errors import ConfigError

    if root_path and not root_path.startswith("/"):  # said before the model loads
        raise ConfigError(f"--root-path {root_path}: give the path from the host's root, e.g. /{root_path}")
    check_port_free(host, port)  # before the model loads and the review set is scored
    if threads > 0:
        torch.set_num_threads(threads)

    from spermhead.serving.app import create_app

    web = create_app(model, review, max_upload_mb=max_upload_mb, review_data=review_data, backend=backend,
                     operating_point=operating_point, max_request_mb=max_request_mb)
    if host in ("0.0.0.0", "::", ""):
        console.print(f"serving {model} on every network interface, port {port}: open http://THIS-MACHINE:{port}/ "
                      "(its name or address). There is no login and no HTTPS, and /review shows the labelled "
                      "images to anyone who reaches it: share it on a trusted network only (README, "
                      "\"Sharing the server\")", highlight=False, soft_wrap=True)
    else:
        behind = f"; a proxy serves it at {root_path.rstrip('/')}/" if root_path else ""
        console.print(f"serving {model} at http://{host}:{port}/  (review: /review, API docs: /docs{behind})",
                      highlight=False, soft_wrap=True)
    uvicorn.run(web, host=host, port=port, log_level="info", root_path=root_path.rstrip("/"))


def check_port_free(host: str, port: int) -> None:
    """Another server on the port is said up front, not after 'serving ... at' and a traceback."""
    import socket

    from spermhead.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's port is free
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError as exc:
            raise ConfigError(f"{host}:{port}: cannot listen there ({exc.strerror or exc}); another server may hold "
                              "the port: give another --port") from None


@app.command("export")
@friendly
def export(
    model: Annotated[Path, typer.Option("--model", help="Bundle folder, or the run folder holding it")],
    onnx: Annotated[Path | None, typer.Option("--onnx", help="Output file (default: model.onnx in the bundle, "
                                                                "replaced if there)")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --onnx file")] = False,
) -> None:
    """Export the bundle's model to ONNX (dynamic batch) and check it against torch."""
    from spermhead.config import fusion_text
    from spermhead.serving.bundle import checked_bundle_folder
    from spermhead.serving.onnx_export import export_onnx
    from spermhead.serving.predictor import ONNX_NAME

    model = checked_bundle_folder(model)  # a mistyped --model makes no folder for the --onnx file
    # the bundle's own model.onnx is derived from its weights and simply made again; another file is kept
    own = onnx is None or onnx.resolve() == (model / ONNX_NAME).resolve()
    check_output_file(onnx or model / ONNX_NAME, "--onnx", overwrite=overwrite or own, remade=own)
    report = export_onnx(model, onnx or model / ONNX_NAME)
    console.print(report.summary(), highlight=False)
    meta = json.loads((model / "model.json").read_text())
    if fused := fusion_text(meta.get("shape_fusion", 0.0), meta.get("pixel_fusion", 0.0)):
        console.print(f"note: this bundle's answers are {fused}; the ONNX file holds the network alone. "
                      "`spermhead predict --backend onnx` fuses the others in, other runtimes get the "
                      "network's probabilities alone", highlight=False, soft_wrap=True)


@app.command("models")
@friendly
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the registered model architectures with their parameter counts."""
    from dataclasses import asdict

    from rich.table import Table

    from spermhead.models.registry import list_models

    infos = list_models()
    if as_json:
        print(json.dumps([asdict(i) for i in infos]))
        return
    table = Table("name", "params", "description", title="Models (params at 4 classes, gray, 64 px)")
    for info in infos:
        table.add_row(info.name, f"{info.params / 1e6:.2f}M", info.description)
    console.print(table)
    console.print("Any timm model also works as timm:<name>, e.g. timm:resnet18 "
                  "(--pretrained needs network; --weights FILE loads local weights).")


@app.command("cache")
@friendly
def cache(
    clear: Annotated[bool, typer.Option("--clear", help="Remove the sources listed (a run that kept its own "
                                        "copy, source.safetensors, still resumes)")] = False,
    stale: Annotated[bool, typer.Option("--stale", help="Only the sources this version never starts a run "
                                        "from (trained before sources were keyed on the thread count)")] = False,
    older_than: Annotated[float | None, typer.Option(min=0, help="Only the sources trained more than this many "
                                                     "days ago")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the cached synthetic source models ($SPERMHEAD_CACHE), and remove them with --clear."""
    import math
    import time

    from rich.table import Table

    from spermhead.errors import ConfigError
    from spermhead.training.source_cache import cached_sources, remove_source, source_folder

    if older_than is not None and not math.isfinite(older_than):
        raise ConfigError(f"--older-than {older_than}: a number of days")
    sources = [c for c in cached_sources() if (c.stale or not stale)
               and (older_than is None or c.trained < time.time() - older_than * 86400)]
    kept = [c for c in sources if not remove_source(c)] if clear else []
    if as_json:
        print(json.dumps([{**c.describe(), **({"removed": c not in kept} if clear else {})} for c in sources]))
        return
    megabytes = sum(c.bytes for c in sources if c not in kept) / 2**20
    if not sources:
        console.print(f"no cached source models{' of that kind' if stale or older_than is not None else ''} in "
                      f"{source_folder()}", highlight=False, soft_wrap=True)
        return
    if clear:
        console.print(f"removed {len(sources) - len(kept)} source models ({megabytes:.0f} MB) from {source_folder()}"
                      + "".join(f"\nkept {c.path.name}: a run is training it now" for c in kept),
                      highlight=False, soft_wrap=True)
        return
    table = Table("source", "model", "input", "trained on", "MB", "trained", "stale",
                  title=f"{len(sources)} source models, {megabytes:.0f} MB, in {source_folder()}")
    for c in sources:
        d = c.describe()
        table.add_row(d["source"], d["model"], d["input"], d["trained_on"], f"{d['megabytes']:.1f}", d["trained"],
                      "stale" if d["stale"] else "")
    console.print(table)
    if any(c.stale for c in sources):
        console.print("stale: no run of this version starts from it (`spermhead cache --stale --clear` removes "
                      "those)", highlight=False, soft_wrap=True)


@bench_app.command("accuracy")
@friendly
def bench_accuracy(
    name: Annotated[str, typer.Argument(help="hushem, scian-pa, scian-ta or combined")],
    data_dir: DataDir = None,
    seeds: Annotated[str, typer.Option(help="CV seeds, comma-separated")] = "1,2,3",
    out: Annotated[Path, typer.Option(help="Where the runs and JSON go")] = Path("runs/bench"),
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs")] = None,
    model: Annotated[str | None, typer.Option(
        help="Another model under the same protocol and recipe (see `spermhead models`)")] = None,
    image_size: Annotated[int | None, typer.Option(help="Override the recipe's canonical image size")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A run directory (its config.yaml) or a YAML file of settings over the recipe; "
                         "the options given here change them")] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="Torch CPU threads")] = None,
    accelerator: Annotated[str | None, typer.Option(
        help="auto (a CUDA GPU when torch sees one, else the CPU), cpu or gpu")] = None,
    record: Annotated[bool, typer.Option("--record/--no-record",
                      help="Update benchmarks/RESULTS.md and the README table (only for the recipe "
                           "itself on the real images)")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                        help="Training bars, and a line as each CV seed ends")] = True,
    overwrite: Annotated[bool, typer.Option(
        help="Replace runs of other settings in --out (runs of the same settings are replaced anyway)")] = False,
    resume: Annotated[bool, typer.Option(
        help="Go on with an interrupted bench: finished seeds and folds are read back, not trained again")] = False,
) -> None:
    """Run the published protocol for a dataset over several CV seeds and record the result."""
    from spermhead.config import fusion_text
    from spermhead.errors import ConfigError
    from spermhead.training import bench
    from spermhead.training.bench import BENCHES, has_table

    if name not in BENCHES:
        raise ConfigError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
    if overwrite and resume:
        raise ConfigError("--overwrite starts the runs again and --resume goes on with them: give one")
    seed_list = bench.parse_seeds(seeds)
    settings, left_out = bench.bench_settings(config_settings(config))
    if "data_dir" in left_out and data_dir is None:
        console.print(f"note: the images come from --data-dir (default: SPERMHEAD_DATA or ./data), not from "
                      f"{config}'s data_dir ({left_out['data_dir']})", highlight=False, soft_wrap=True)
    if fixed := [k for k in ("dataset", "seed", "protocol") if k in left_out]:
        console.print(f"note: {config}'s {', '.join(fixed)} {'is' if len(fixed) == 1 else 'are'} left out: the "
                      f"bench runs {name} under its published protocol, over --seeds", highlight=False, soft_wrap=True)
    extra = {k: v for k, v in {"epochs": epochs, "model": model, "image_size": image_size, "threads": threads,
                               "accelerator": accelerator}.items() if v is not None}
    data = str(data_dir) if data_dir else None
    cfg = bench.bench_config(name, out / name, seed_list[0], data, settings=settings,
                             settings_file=str(config) if config else None, **extra)  # bad settings refused first
    if model or config:  # so is a model that cannot be built (its name, options or weights file)
        from spermhead.training.run import check_model

        check_model(cfg, 2)  # any class count: the network is built only to be checked
    missing = [str(p) for p in (Path("benchmarks/RESULTS.md"), Path("README.md")) if not has_table(p, "accuracy")]
    # said first, not found out after hours of training
    if record and (refusal := bench.record_refusal(name, data, extra, settings)):
        console.print(f"note: not recorded in the results tables, since {refusal}; the results go to "
                      f"{out / name} only", highlight=False, soft_wrap=True)
        record = False
    if record and missing:
        console.print(f"note: no results table in {' or '.join(missing)} here (run from the spermhead repository "
                      f"to record the row there); the results go to {out / name} only", highlight=False, soft_wrap=True)
    summary = bench.run_accuracy_bench(
        name, out / name, seeds=seed_list, data_dir=data, progress=progress,
        results_md=Path("benchmarks/RESULTS.md") if record else None,
        readme=Path("README.md") if record else None, settings=settings,
        settings_file=str(config) if config else None, overwrite=overwrite, resume=resume, **extra)
    for point in ("accuracy", "balanced"):
        s = summary[point]
        console.print(f"{name} ({point} point): accuracy {bench.percent_sd(s['accuracy'], s['accuracy_sd'])}, "
                      f"average recall {bench.percent_sd(s['balanced_accuracy'], s['balanced_accuracy_sd'])}"
                      + ("" if s["accuracy_sd"] is not None else " (one seed: no sd)"), highlight=False)
    if model and (fused := fusion_text(cfg.train.shape_fusion, cfg.train.pixel_fusion)):
        console.print(f"these are the fused answers: {fused} (a --config with train: shape_fusion: 0 and "
                      f"pixel_fusion: 0 scores {model} alone)", highlight=False, soft_wrap=True)
    console.print(f"details: {out / name / f'accuracy-{name}.json'}")


def _one_line_summaries(*typer_apps: typer.Typer) -> None:
    """The command lists show each command's first docstring paragraph on one line: typer keeps
    the docstring's own line breaks there, which broke the lists mid-sentence."""
    for typer_app in typer_apps:
        for command in typer_app.registered_commands:
            doc = command.help or (command.callback.__doc__ if command.callback else None)
            if command.short_help is None and doc:
                command.short_help = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


_one_line_summaries(app, data_app, bench_app)
