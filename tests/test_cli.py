"""The command-line interface's own behaviour (each command's is tested with its module)."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

from spermhead.cli import app, bench_app, data_app


@pytest.mark.parametrize("typer_app,args", [(app, []), (data_app, ["data"]), (bench_app, ["bench"])])
def test_command_lists_show_each_summary_unbroken(typer_app, args, monkeypatch):
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)  # wide enough for any summary on one line
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    for command in typer_app.registered_commands:
        first = inspect.cleandoc(command.callback.__doc__).split("\n\n")[0]
        # the whole paragraph on one line of the list, not cut where the docstring's lines end
        assert " ".join(first.split()) in result.output, command.callback.__name__


def test_version_names_spermhead_and_what_it_runs_on():
    from spermhead import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"spermhead {__version__} (torch ")


def test_a_negative_thread_count_is_refused_by_name(tmp_path):
    from spermhead.errors import ConfigError
    from spermhead.training.options import build_run_config

    result = CliRunner().invoke(app, ["train", "hushem", "--out", str(tmp_path / "r"), "--threads", "-1"])
    assert result.exit_code == 2 and "--threads" in result.output and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="--threads -1"):
        build_run_config("hushem", str(tmp_path / "r"), threads=-1)
    with pytest.raises(ConfigError, match="train.num_threads: -1: must be at least 0"):  # from a config file
        build_run_config("hushem", str(tmp_path / "r"), settings={"train": {"num_threads": -1}})


def test_compare_names_its_sides_by_the_shortest_path_endings_that_differ(tmp_path):
    from spermhead.cli import distinct_names

    runs = tmp_path / "runs"
    assert distinct_names(runs / "x" / "seed1", runs / "y" / "seed1") == ("x/seed1", "y/seed1")
    # a run's predictions.csv stands for its run; a CSV of another name for itself
    assert distinct_names(runs / "x" / "predictions.csv", runs / "y") == ("x", "y")
    assert distinct_names(runs / "a.csv", runs / "b.csv") == ("a.csv", "b.csv")
    assert distinct_names(runs / "x", runs / "x" / "drop.csv") == ("x", "drop.csv")
    assert distinct_names(runs / "x", runs / "x") == ("A", "B")

