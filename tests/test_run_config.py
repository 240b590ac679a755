"""`train --config`: a saved run's settings, or a hand-written file's, over the recipe."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.config import (
    config_differences,
    environment,
    environment_differences,
    read_config_file,
    save_config,
)
from spermhead.errors import ConfigError
from spermhead.training.options import build_run_config
from spermhead.training.recipes import DATASET_RECIPES


@pytest.mark.parametrize("dataset, options", [
    ("hushem", {}),
    ("scian-pa", {"operating_point": "balanced"}),
    ("hushem", {"init": "scratch"}),  # the recipe's epochs from random weights
    ("hushem", {"recipe": "seed", "model": "seed-alexnet"}),
    ("some/folder", {}),  # a lab's folder: the synthetic start's own epochs and class prior
    ("some/folder", {"init": "scratch", "width": 32, "extra_train": ["scian-ta"], "cv": 3}),
])
def test_a_saved_config_builds_the_same_run_again(tmp_path, dataset, options):
    saved = build_run_config(dataset, str(tmp_path / "first"), **options)
    save_config(saved, tmp_path / "config.yaml")
    settings, env = read_config_file(tmp_path)
    assert env == environment()
    again = build_run_config(dataset, str(tmp_path / "again"), settings=settings)
    assert config_differences(saved, again) == []
    assert again.out == str(tmp_path / "again")


def test_folders_are_saved_as_absolute_paths_so_a_config_works_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("lab/heads", "extra", "data"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "w.safetensors").write_bytes(b"")
    cfg = build_run_config("lab/heads", "runs/a", data_dir="data", extra_train=["extra", "scian-pa"],
                           weights="w.safetensors")
    assert cfg.dataset == str(tmp_path / "lab" / "heads") and cfg.data_dir == str(tmp_path / "data")
    assert cfg.extra_train == (str(tmp_path / "extra"), "scian-pa")  # a dataset name stays a name
    assert cfg.model.weights == str(tmp_path / "w.safetensors")
    (tmp_path / "runs").mkdir()
    save_config(cfg, tmp_path / "runs" / "config.yaml")
    monkeypatch.chdir(tmp_path / "lab")  # elsewhere, the saved config still names the same folders
    settings, _ = read_config_file(tmp_path / "runs")
    assert build_run_config(settings["dataset"], "b", settings=settings).dataset == str(tmp_path / "lab" / "heads")
    assert build_run_config("hushem", "runs/b").dataset == "hushem"
    # a named dataset read from the default data folder records where that was, for `serve --review
    # RUN` and `compare` from elsewhere; a folder of one's own has no data folder to record
    monkeypatch.delenv("SPERMHEAD_DATA", raising=False)
    assert build_run_config("hushem", "runs/b").data_dir == str(tmp_path / "lab" / "data")
    monkeypatch.setenv("SPERMHEAD_DATA", str(tmp_path / "data"))
    assert build_run_config("hushem", "runs/b").data_dir == str(tmp_path / "data")
    assert build_run_config(str(tmp_path / "extra"), "runs/c").data_dir is None


def test_a_hand_written_files_relative_paths_read_from_its_own_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    for folder in ("heads", "extra", "data"):
        (project / folder).mkdir(parents=True)
    (project / "w.safetensors").write_bytes(b"")
    file = project / "lab.yaml"
    file.write_text("dataset: heads\ndata_dir: data\nextra_train: [extra, scian-pa]\n"
                    "model:\n  weights: w.safetensors\n")
    monkeypatch.chdir(tmp_path)  # not the file's folder: the same names there would not exist
    settings, _ = read_config_file(file)
    assert settings["dataset"] == str(project / "heads") and settings["data_dir"] == str(project / "data")
    assert settings["extra_train"] == [str(project / "extra"), "scian-pa"]  # a dataset name stays a name
    assert settings["model"]["weights"] == str(project / "w.safetensors")
    cfg = build_run_config(settings["dataset"], "runs/a", settings=settings)
    assert (cfg.dataset, cfg.model.weights) == (str(project / "heads"), str(project / "w.safetensors"))
    # a run's own config.yaml keeps its paths as the run read them (against its working directory)
    run_file = project / "run.yaml"
    run_file.write_text("data_dir: data\nenvironment:\n  python: 3.11.0\n")
    assert read_config_file(run_file)[0]["data_dir"] == "data"
    # a home folder is written as a shell would take it; absolute paths and names stay as written
    monkeypatch.setenv("HOME", str(tmp_path))
    file.write_text(f"dataset: hushem\ndata_dir: ~/data\nmodel:\n  weights: {project / 'w.safetensors'}\n")
    settings, _ = read_config_file(file)
    assert settings["dataset"] == "hushem" and settings["data_dir"] == str(tmp_path / "data")
    assert settings["model"]["weights"] == str(project / "w.safetensors")


def test_options_given_change_only_themselves(tmp_path):
    save_config(build_run_config("hushem", "first"), tmp_path / "config.yaml")
    settings, _ = read_config_file(tmp_path / "config.yaml")
    again = build_run_config("hushem", "again", settings=settings, seed=3, epochs=7, width=32)
    assert config_differences(build_run_config("hushem", "first"), again) == [
        "model.kwargs: {} -> {'width': 32}", "seed: 0 -> 3", f"train.epochs: {DATASET_RECIPES['hushem']['epochs']} -> 7"]


def test_a_hand_written_file_changes_only_what_it_names(tmp_path):
    file = tmp_path / "short.yaml"
    file.write_text("train:\n  epochs: 7\npreprocess:\n  image_size: 40\n")
    settings, env = read_config_file(file)
    assert env == {}
    # the dataset's recipe fills in the rest, as the same options on the command line would
    assert config_differences(build_run_config("hushem", "x", epochs=7, image_size=40),
                              build_run_config("hushem", "x", settings=settings)) == []
    # the file's epochs stand where the recipe would lengthen a start from random weights
    file.write_text("model:\n  init: scratch\ntrain:\n  epochs: 7\n")
    assert build_run_config("hushem", "x", settings=read_config_file(file)[0]).train.epochs == 7
    assert build_run_config("hushem", "x", init="scratch").train.epochs == 150
    # a folder keeps the synthetic start's class prior, with the file's epochs
    folder = build_run_config("some/folder", "x", settings=settings)
    assert (folder.train.epochs, folder.train.balance) == (7, "none")
    # calibration is on for a file of settings; a saved run written before it existed keeps it off
    assert folder.train.calibrate
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"train": {"epochs": 7}, "environment": {"python": "3.11.0"}}))
    assert read_config_file(old)[0]["train"]["calibrate"] is False


@pytest.mark.parametrize("text, problem", [
    ("train:\n  epoch: 7\n", "train.epoch: not a setting (did you mean train.epochs?)"),
    ("train:\n  epochs: ten\n", "train.epochs: 'ten' is not a whole number"),
    ("train:\n  tta: 1\n", "train.tta: 1 is not true or false"),
    ("train:\n  lr: fast\nmodel:\n  nmae: x\n", "train.lr: 'fast' is not a number; model.nmae: not a setting (did you mean model.name?)"),
    ("train: 7\n", "train: a mapping of settings"),
    ("- epochs\n", "a mapping of settings"),
    ("train: [unclosed\n", "not readable as YAML"),
])
def test_a_bad_file_is_refused_naming_it_and_the_settings(tmp_path, text, problem):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        read_config_file(file)
    assert problem in str(err.value)


def test_a_misspelt_setting_is_offered_its_spelling_and_a_stray_one_is_not(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("train:\n  qqqq: 1\n  balence: none\n")
    with pytest.raises(ConfigError) as err:
        read_config_file(file)
    assert str(err.value).endswith("train.qqqq: not a setting; train.balence: not a setting (did you mean train.balance?)")


def test_cli_refuses_a_bad_config_before_making_the_run_directory(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  epoch: 7\n")
    (tmp_path / "empty").mkdir()
    for config, problem in ((tmp_path / "bad.yaml", "train.epoch: not a setting"),
                            (tmp_path / "nowhere", "nowhere: no such file or folder"),
                            (tmp_path / "empty", "empty: no config.yaml there")):
        result = CliRunner().invoke(app, ["train", "hushem", "--config", str(config), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and problem in result.output, result.output
    assert not (tmp_path / "run").exists()
    # a value the checks refuse is named by its key in the file, not by an option never typed;
    # an option typed beside the file is named as typed
    (tmp_path / "value.yaml").write_text("train:\n  optimizer: adamm\n  epochs: 3\n")
    for typed, problem in (([], "value.yaml: train.optimizer: 'adamm': adamw, adam, sgd"),
                           (["--optimizer", "sgdd"], "--optimizer 'sgdd': adamw, adam, sgd")):
        result = CliRunner().invoke(app, ["train", "hushem", "--config", str(tmp_path / "value.yaml"), *typed,
                                          "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and problem in " ".join(result.output.split()), result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "give the dataset NAME" in result.output


def test_a_recipe_that_contradicts_the_file_is_refused(tmp_path):
    save_config(build_run_config("hushem", "first", recipe="seed"), tmp_path / "config.yaml")
    settings, _ = read_config_file(tmp_path)
    with pytest.raises(ConfigError, match="--recipe default with a config, of recipe seed"):
        build_run_config("hushem", "again", recipe="default", settings=settings)
    assert build_run_config("hushem", "again", recipe="seed", settings=settings).train.recipe == "seed"


def test_other_versions_are_named(tmp_path: Path):
    here = environment()
    saved = {**here, "packages": {**here["packages"], "torch": "1.0.0"}}
    assert environment_differences(saved) == [f"torch 1.0.0 -> {here['packages']['torch']}"]
    assert environment_differences(here) == []
    assert environment_differences({}) == []  # a hand-written file records none


@pytest.mark.parametrize("setting, value, problem", [
    ("train.epochs", 0, "--epochs 0: must be at least 1"),
    ("train.optimizer", "adamax", "--optimizer 'adamax': adamw, adam, sgd"),
    ("train.lr", -0.1, "--lr -0.1: must be above 0"),
    ("train.label_smoothing", 1.0, "--label-smoothing 1.0: must be at least 0 and below 1"),
    ("train.members_per_fold", 0, "--members 0: must be at least 1"),
    # one image a batch stopped a seed net mid-fold (BatchNorm1d), after the run folder was made
    ("train.batch_size", 1, "--batch-size 1: must be at least 2 (images; batch normalisation needs two)"),
    ("train.ema", 1.5, "--ema 1.5: must be at least 0 and below 1"),
    ("protocol.kind", "loo", "protocol kind 'loo'"),
    # build_model takes it for every model: as a model option too it would come twice (a TypeError)
    ("model.kwargs", {"drop_rate": 0.3}, "model.kwargs drop_rate: not a model option; it is set by model.drop_rate"),
])
def test_settings_that_cannot_work_are_refused_before_the_run_folder_is_touched(tmp_path, setting, value, problem):
    from spermhead.config import RunConfig
    from spermhead.training.run import train_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("an earlier run")
    section, key = setting.split(".")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({section: {key: value}}))
    result = CliRunner().invoke(app, ["train", "hushem", "--config", str(tmp_path / "bad.yaml"), "--out", str(run),
                                      "--overwrite"])
    # the file's value is named by its key there; the check itself names the option
    said = (f"bad.yaml: {setting}: {problem.split(' ', 1)[1]}" if problem.startswith("--")
            else f"bad.yaml: {problem}" if setting == "model.kwargs" else problem)
    assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
    # a config built in code meets the same check in train_run
    cfg = RunConfig(dataset="hushem", out=str(run))
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError, match=problem.split(":")[0]):
        train_run(cfg, overwrite=True, progress=False)
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


def test_a_run_saved_with_a_relative_folder_still_resumes(tmp_path, monkeypatch):
    from spermhead.training.run import check_resumable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "heads").mkdir()
    (tmp_path / "run").mkdir()
    asked = build_run_config("heads", "run")
    saved = build_run_config("heads", "run")
    saved.dataset = "heads"  # as runs were saved before folders were kept absolute
    save_config(saved, tmp_path / "run" / "config.yaml")
    check_resumable(tmp_path / "run", asked)  # the same folder: no difference
    with pytest.raises(ConfigError, match="train.epochs"):
        check_resumable(tmp_path / "run", build_run_config("heads", "run", epochs=7))


def test_an_unknown_or_missing_logger_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    import importlib.util

    with pytest.raises(ConfigError, match="--logger 'foo': csv, tensorboard, mlflow"):
        build_run_config("hushem", str(tmp_path / "run"), loggers=("csv", "foo"))
    result = CliRunner().invoke(app, ["train", "hushem", "--logger", "foo", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--logger 'foo'" in result.output and not (tmp_path / "run").exists()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # as where it is not installed
    with pytest.raises(ConfigError, match="--logger mlflow needs `pip install mlflow`"):
        build_run_config("hushem", str(tmp_path / "run"), loggers=("csv", "mlflow"))
