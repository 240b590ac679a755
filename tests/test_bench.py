import json
from pathlib import Path

from spermhead.training.bench import has_table, readme_row, results_row, summarise, upsert_row
from spermhead.training.recipes import DATASET_RECIPES

RECIPE_EPOCHS = DATASET_RECIPES["hushem"]["epochs"]


def fake_run(seed: int, acc: float) -> dict:
    point = {"accuracy": acc, "balanced_accuracy": acc - 0.1,
             "per_class_recall": {"normal": acc, "amorphous": acc - 0.2}}
    cfg = {"preprocess": {"image_size": 64, "color": "gray"}, "model": {"name": "spermnet"},
           "train": {"epochs": 60, "augment": "aligned", "balance": "sampler"}, "protocol": {"kind": "cv"}}
    return {"seed": seed, "wall_seconds": 60.0, "config": cfg, "macro_f1": acc - 0.05,
            "metrics": {"accuracy": point, "balanced": dict(point, balanced_accuracy=acc)}}


def test_summary_reports_mean_and_sd_over_seeds():
    s = summarise("hushem", [fake_run(1, 0.90), fake_run(2, 0.94)], [1, 2])
    assert abs(s["accuracy"]["accuracy"] - 0.92) < 1e-9
    assert abs(s["accuracy"]["accuracy_sd"] - 0.0282842712) < 1e-6
    assert s["balanced"]["balanced_accuracy"] > s["accuracy"]["balanced_accuracy"]
    assert s["command"] == "spermhead bench accuracy hushem --seeds 1,2"
    assert "92.0 ± 2.8" in results_row(s) and "`spermhead bench accuracy hushem --seeds 1,2`" in readme_row(s)
    # one seed gives no sd, rather than an sd of 0
    one = summarise("hushem", [fake_run(1, 0.90)], [1])
    assert one["accuracy"]["accuracy_sd"] is None and "| 90.0 |" in readme_row(one) and "±" not in readme_row(one)


def test_upsert_replaces_only_its_row(tmp_path):
    md = tmp_path / "R.md"
    md.write_text("intro\n<!-- accuracy:start -->\n| dataset | x |\n|---|---|\n| hushem | old |\n"
                  "| scian-pa | keep |\n<!-- accuracy:end -->\noutro\n")
    upsert_row(md, "accuracy", "hushem", "| hushem | new |")
    text = md.read_text()
    assert "| hushem | new |" in text and "old" not in text
    assert "| scian-pa | keep |" in text and text.startswith("intro") and text.endswith("outro\n")
    # a file without the table (or no file: a bench run outside the repository) is told apart
    assert has_table(md, "accuracy") and not has_table(md, "speed") and not has_table(tmp_path / "none.md", "accuracy")


def test_a_source_model_is_timed_apart_from_the_repeats():
    runs = [fake_run(1, 0.90), fake_run(2, 0.94)]
    runs[0]["init_seconds"] = 240.0  # trained by the first seed, cached for the second
    for r in runs:
        r["config"]["model"]["init"] = "synthetic"
    row = results_row(summarise("hushem", runs, [1, 2]))
    assert "| 1.0 min (+ 4.0 min once: source model) |" in row and "init synthetic" in row


def test_extra_training_images_are_named_in_the_protocol_column():
    runs = [fake_run(1, 0.90), fake_run(2, 0.94)]
    plain = summarise("scian-ta", runs, [1, 2])
    assert "| cv5 x 2 seeds |" in results_row(plain) and "| cv5 x 2 |" in readme_row(plain)
    for r in runs:
        r["config"]["extra_train"] = ["scian-pa"]
    s = summarise("scian-ta", runs, [1, 2])
    assert "| cv5 x 2 seeds, training sides + scian-pa images |" in results_row(s)
    assert "| cv5 x 2, training sides + scian-pa images |" in readme_row(s)


def test_a_row_trained_on_a_gpu_says_so():
    runs = [fake_run(1, 0.90), fake_run(2, 0.94)]
    assert "on GPU" not in results_row(summarise("hushem", runs, [1, 2]))  # the CPU budgets apply
    for r in runs:
        r["device"] = "gpu"
    assert "| 1.0 min on GPU |" in results_row(summarise("hushem", runs, [1, 2]))


def test_a_recipe_with_shape_fusion_says_so():
    runs = [fake_run(1, 0.90), fake_run(2, 0.94)]
    assert "shape fusion" not in results_row(summarise("hushem", runs, [1, 2]))
    for r in runs:
        r["config"]["train"]["shape_fusion"] = 0.4
    assert "balance sampler, shape fusion 0.4 |" in results_row(summarise("hushem", runs, [1, 2]))


def test_bench_says_first_when_it_has_no_table_to_record_in(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spermhead.training.bench as bench
    from spermhead.cli import app

    summary = summarise("hushem", [fake_run(1, 0.90), fake_run(2, 0.94)], [1, 2])
    monkeypatch.setattr(bench, "run_accuracy_bench", lambda *args, **kwargs: summary)  # no training here
    monkeypatch.chdir(tmp_path)  # outside the repository: no RESULTS.md, no README table
    said = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1,2"], terminal_width=200)
    assert said.exit_code == 0, said.output
    assert "note: no results table in benchmarks/RESULTS.md or README.md here" in said.output
    quiet = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1,2", "--no-record"])
    assert quiet.exit_code == 0 and "note:" not in quiet.output and "accuracy 92.0" in quiet.output
    monkeypatch.setattr(bench, "run_accuracy_bench", lambda *args, **kwargs: summarise("hushem", [fake_run(1, 0.9)], [1]))
    one = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1", "--no-record"], terminal_width=200)
    assert one.exit_code == 0 and "accuracy 90.0, average recall 80.0 (one seed: no sd)" in one.output, one.output


def test_a_row_is_recorded_only_for_the_recipe_on_real_images(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spermhead.training.bench as bench
    from spermhead.cli import app

    summary = summarise("hushem", [fake_run(1, 0.90), fake_run(2, 0.94)], [1, 2])
    recorded = []

    def fake_bench(*args, results_md=None, readme=None, **kwargs):  # no training here
        recorded.append((results_md, readme))
        return summary

    monkeypatch.setattr(bench, "run_accuracy_bench", fake_bench)
    runner = CliRunner()
    assert runner.invoke(app, ["data", "synth", str(tmp_path / "synth"), "--n-per-class", "3"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr.yaml").write_text("train:\n  lr: 0.01\n")
    (tmp_path / "same.yaml").write_text(f"train:\n  epochs: {RECIPE_EPOCHS}\n")
    cases = {  # each would put a figure the row's command cannot give into the README
        f"since the options change the recipe (train.epochs: {RECIPE_EPOCHS} -> 1)": ["--epochs", "1", "--data-dir", "synth"],
        "model.name: 'spermnet' -> 'seed-cnn'": ["--model", "seed-cnn", "--data-dir", "synth"],
        "(preprocess.image_size: 48 -> 32)": ["--image-size", "32", "--data-dir", "synth"],
        "(train.lr: 0.003 -> 0.01)": ["--config", "lr.yaml", "--data-dir", "synth"],
        "since the hushem images found here are synthetic heads": ["--data-dir", "synth"],
    }
    for said, options in cases.items():
        recorded.clear()
        result = runner.invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1,2", *options], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert said in result.output and recorded == [(None, None)], (said, result.output)
    for marker in (tmp_path / "synth").rglob("SYNTHETIC.txt"):
        marker.unlink()  # the same images, no longer marked: as real ones would be
    recorded.clear()
    for same in (["--epochs", str(RECIPE_EPOCHS)], ["--config", "same.yaml"]):  # the recipe's own epochs, named
        recorded.clear()
        result = runner.invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1,2", *same, "--data-dir", "synth"],
                               terminal_width=200)
        assert result.exit_code == 0 and "not recorded" not in result.output, result.output
        assert recorded == [(Path("benchmarks/RESULTS.md"), Path("README.md"))]


def test_a_bench_with_other_settings_names_them_in_its_command(tmp_path, monkeypatch):
    """The JSON's command runs the same bench again, options and all; a bad settings file is
    refused before any training."""
    import json
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import spermhead.training.bench as bench
    from spermhead.cli import app
    from spermhead.training.options import build_run_config

    point = {"accuracy": 0.9, "balanced_accuracy": 0.9, "per_class_recall": {"normal": 0.9}}
    trained = []

    def fake_train(cfg, **kwargs):  # no training here; what it was asked to train is kept
        trained.append(cfg)
        return SimpleNamespace(timing={}, metrics={"operating_points": {"accuracy": {**point, "macro_f1": 0.85},
                                                                        "balanced": {**point, "macro_f1": 0.7}}})

    monkeypatch.setattr(bench, "train_run", fake_train)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr.yaml").write_text("train:\n  lr: 0.01\n")
    result = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1", "--model", "seed-cnn",
                                      "--image-size", "32", "--config", "lr.yaml", "--no-record"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert [(c.model.name, c.preprocess.image_size, c.train.lr) for c in trained] == [("seed-cnn", 32, 0.01)]
    assert "hushem, CV seed 1 (1 of 1): accuracy 90.0, average recall 90.0" in result.output  # --progress is the default
    assert "these are the fused answers" in result.output  # the recipe's fusion stays with another model
    summary = json.loads((tmp_path / "runs/bench/hushem/accuracy-hushem.json").read_text())["summary"]
    assert summary["command"] == ("spermhead bench accuracy hushem --seeds 1 --config lr.yaml --model seed-cnn "
                                  "--image-size 32")
    # from random weights, the bench trains as `train hushem --model seed-cnn` would: the recipe's
    # from-scratch epochs, not its fine-tune's
    assert trained[0].train.epochs == build_run_config("hushem", "x", model="seed-cnn").train.epochs != RECIPE_EPOCHS
    (tmp_path / "alone.yaml").write_text("train:\n  shape_fusion: 0\n  pixel_fusion: 0\n")
    trained.clear()  # a settings file changes the recipe's own settings too
    alone = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1", "--model", "seed-cnn",
                                     "--config", "alone.yaml", "--no-record"], terminal_width=200)
    assert alone.exit_code == 0 and "fused" not in alone.output, alone.output
    assert [(c.train.shape_fusion, c.train.pixel_fusion) for c in trained] == [(0, 0)]
    # a run directory's (or a file's) data folder does not move the bench to other images
    (tmp_path / "elsewhere.yaml").write_text("data_dir: /elsewhere\nseed: 7\ntrain:\n  lr: 0.01\n")
    trained.clear()
    moved = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1", "--config", "elsewhere.yaml",
                                     "--no-record"], terminal_width=200)
    assert moved.exit_code == 0 and "not from elsewhere.yaml's data_dir (/elsewhere)" in moved.output, moved.output
    assert len(trained) == 1 and trained[0].data_dir != "/elsewhere" and trained[0].train.lr == 0.01
    assert trained[0].seed == 1 and "elsewhere.yaml's seed is left out" in " ".join(moved.output.split())
    nope = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--model", "nope"], terminal_width=200)
    assert nope.exit_code == 2 and "unknown model 'nope'" in nope.output and "note" not in nope.output, nope.output
    for seeds, said in (("a", "whole numbers"), ("", "whole numbers"), ("-1", "whole numbers"),
                        ("--1", "whole numbers"), ("\u00b2", "whole numbers"), ("1,1", "each seed once")):
        refused = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", seeds], terminal_width=200)
        assert refused.exit_code == 2 and said in refused.output, refused.output
    (tmp_path / "bad.yaml").write_text("train:\n  lr: fast\n")
    trained.clear()
    bad = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--seeds", "1", "--config", "bad.yaml",
                                   "--no-record"], terminal_width=200)
    assert bad.exit_code != 0 and "bad.yaml" in bad.output and trained == [], bad.output


def test_the_bench_itself_records_no_row_for_synthetic_heads(tmp_path, monkeypatch):
    """Called from code (not the CLI), the bench still keeps its tables for the recipe on real images."""
    from types import SimpleNamespace

    import spermhead.training.bench as bench
    from spermhead.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", "hushem", n_per_class=3, seed=0)
    point = {"accuracy": 0.9, "balanced_accuracy": 0.9, "per_class_recall": {"normal": 0.9}}
    # the run's own operating point is the balanced one: the row's macro F1 is still the accuracy point's
    fake = SimpleNamespace(timing={}, metrics={"operating_points": {"accuracy": {**point, "macro_f1": 0.85},
                                                                    "balanced": {**point, "macro_f1": 0.7}},
                                               "macro_f1": 0.7})
    monkeypatch.setattr(bench, "train_run", lambda *args, **kwargs: fake)  # no training here
    table = tmp_path / "R.md"
    table.write_text("<!-- accuracy:start -->\n| dataset | x |\n|---|---|\n| hushem | 94.6 |\n<!-- accuracy:end -->\n")
    before = table.read_text()
    bench.run_accuracy_bench("hushem", tmp_path / "out", seeds=[1], data_dir=str(tmp_path / "data"),
                             results_md=table, readme=table)
    assert table.read_text() == before
    # and its JSON says so, not only the row it did not write
    assert json.loads((tmp_path / "out" / "accuracy-hushem.json").read_text())["summary"]["synthetic"] is True
    (tmp_path / "data" / "HuSHeM" / "SYNTHETIC.txt").unlink()  # the same heads taken for real ones
    bench.run_accuracy_bench("hushem", tmp_path / "out", seeds=[1], data_dir=str(tmp_path / "data"),
                             results_md=table, readme=None, threads=1, epochs=RECIPE_EPOCHS)
    assert "94.6" not in table.read_text() and "| 85.0 |" in table.read_text()
    # the row's command is the recipe's, without options that changed nothing, at its thread count
    assert "`spermhead bench accuracy hushem --seeds 1 --threads 1` |" in table.read_text()


def test_the_record_refusal_looks_at_the_images_the_runs_will_read(tmp_path):
    """A data folder given in settings (from code) is the one checked for synthetic heads."""
    import spermhead.training.bench as bench
    from spermhead.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", "hushem", n_per_class=3, seed=0)
    said = bench.record_refusal("hushem", None, {}, settings={"data_dir": str(tmp_path / "data")})
    assert said is not None and "synthetic heads" in said


def test_a_bench_replaces_runs_of_other_settings_only_when_told(tmp_path, monkeypatch):
    """`bench accuracy hushem --model X` with the default --out once replaced the recipe's own runs."""
    from types import SimpleNamespace

    import pytest
    from typer.testing import CliRunner

    import spermhead.training.bench as bench
    from spermhead.cli import app
    from spermhead.config import save_config
    from spermhead.errors import ConfigError

    point = {"accuracy": 0.9, "balanced_accuracy": 0.9, "per_class_recall": {"normal": 0.9}, "macro_f1": 0.9}
    fake = SimpleNamespace(timing={}, metrics={"operating_points": {"accuracy": point, "balanced": point}})
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(bench, "train_run", lambda cfg, **kw: calls.append((cfg.model.name, kw)) or fake)
    out = tmp_path / "bench"
    recipe = bench.bench_config("hushem", out, 1, None)
    Path(recipe.out).mkdir(parents=True)
    save_config(recipe, Path(recipe.out) / "config.yaml")  # the recipe's run, seed 1
    with pytest.raises(ConfigError, match="seed1: holds a bench run with other settings.*model.name"):
        bench.run_accuracy_bench("hushem", out, seeds=[2, 1], model="seed-cnn")
    assert not calls  # refused before seed 2 trained
    bench.run_accuracy_bench("hushem", out, seeds=[1])  # the same settings: run again in its place
    bench.run_accuracy_bench("hushem", out, seeds=[1], resume=True)
    bench.run_accuracy_bench("hushem", out, seeds=[1], model="seed-cnn", overwrite=True)
    assert [(m, kw["overwrite"], kw["resume"]) for m, kw in calls] == [
        ("spermnet", True, False), ("spermnet", False, True), ("seed-cnn", True, False)]
    both = CliRunner().invoke(app, ["bench", "accuracy", "hushem", "--overwrite", "--resume"])
    assert both.exit_code == 2 and "give one" in both.output


def test_a_resumed_bench_keeps_the_time_its_repeats_took_not_their_read_back(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import spermhead.training.bench as bench

    point = {"accuracy": 0.9, "balanced_accuracy": 0.9, "per_class_recall": {"normal": 0.9}, "macro_f1": 0.9}
    metrics = {"operating_points": {"accuracy": point, "balanced": point}}
    timing: dict = {}
    monkeypatch.setattr(bench, "train_run", lambda cfg, **kw: SimpleNamespace(timing=dict(timing), metrics=metrics))
    now = [0.0]

    def clock() -> float:  # a repeat trained "takes" 100 s, one read back 1 s
        now[0] += 1.0 if timing else 100.0
        return now[0]

    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=clock))
    out = tmp_path / "bench"
    first = bench.run_accuracy_bench("hushem", out, seeds=[1, 2])
    assert first["wall_seconds_per_repeat"] == 100.0
    timing["folds_read_back"] = 5  # every fold read back: seconds, not the repeat's minutes
    again = bench.run_accuracy_bench("hushem", out, seeds=[1, 2], resume=True)
    assert again["wall_seconds_per_repeat"] == 100.0
    # an earlier bench of other settings has no time to lend
    other = bench.run_accuracy_bench("hushem", out, seeds=[1, 2], resume=True, overwrite=True, epochs=3)
    assert other["wall_seconds_per_repeat"] is None
    (out / "accuracy-hushem.json").unlink()  # nothing recorded the repeats' own time: none is given
    unknown = bench.run_accuracy_bench("hushem", out, seeds=[1, 2], resume=True)
    assert unknown["wall_seconds_per_repeat"] is None
    assert "time not measured (read back by --resume)" in bench.results_row(unknown)

