"""Predictor: the same probabilities as `predict_proba` on the same canonical crops, error
rows instead of exceptions, and the `predict` command over a folder with a corrupt file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.config import PreprocessConfig
from spermhead.data.synthetic import render_head
from spermhead.models.inference import predict_proba
from spermhead.preprocess.align import canonicalize
from spermhead.preprocess.io import read_image
from spermhead.serving.bundle import load_bundle
from spermhead.serving.predictor import Predictor, expand_inputs, searched_folders, untrained_bundle

CLASSES = ("normal", "tapered", "pyriform", "amorphous")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = untrained_bundle(tmp_path_factory.mktemp("bundle"), "spermnet", classes=CLASSES,
                            image_size=32, tta=True, width=8)
    # A non-trivial prior correction, so the test shows it is applied exactly once.
    meta = json.loads((path / "model.json").read_text())
    meta["class_bias"] = [0.3, -0.2, 0.1, 0.0]
    (path / "model.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six good images (BMP/PNG, one in a subfolder) and one corrupt file."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for i in range(6):
        rgb, _ = render_head(CLASSES[i % 4], "hushem", np.random.default_rng(i))
        target = root / ("sub" if i == 5 else "") / f"head{i}.{'bmp' if i % 2 else 'png'}"
        Image.fromarray(rgb).save(target)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "notes.txt").write_text("not an image suffix: not picked up from a folder")
    return root


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    with Predictor(bundle, batch_size=4) as p:
        yield p


def test_same_probabilities_as_the_shared_path(predictor: Predictor, bundle: Path, folder: Path) -> None:
    paths = sorted(folder.glob("*.png")) + sorted(folder.glob("*.bmp"))
    paths = [p for p in paths if p.name != "broken.png"]
    rows = list(predictor.predict_files(paths))
    b = load_bundle(bundle)
    cfg = PreprocessConfig(**b.meta.preprocess)
    canon = np.stack([canonicalize(read_image(p), cfg).image for p in paths])
    expected = predict_proba(b.model, canon, b.meta.mean, b.meta.std, tta=True, class_bias=b.meta.class_bias)
    got = np.array([[r["probabilities"][c] for c in CLASSES] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [r["class"] for r in rows] == [CLASSES[k] for k in expected.argmax(1)]


def test_rows_in_order_with_error_rows(predictor: Predictor, folder: Path) -> None:
    paths = expand_inputs([folder])
    assert len(paths) == 7 and not any(p.suffix == ".txt" for p in paths)
    rows = list(predictor.predict_files(paths, batch_size=3))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    bad = [r for r in rows if not r["ok"]]
    assert len(bad) == 1 and bad[0]["status"] == 400 and bad[0]["error"].startswith("broken.png:")
    for r in rows:
        if r["ok"]:
            assert r["class"] in CLASSES and 0 < r["confidence"] <= 1
            assert r["uncertain"] == (r["confidence"] < predictor.meta.uncertainty_threshold)
            assert isinstance(r["aligned"], bool) and r["alignment"]


def test_worker_processes_give_the_same_rows(bundle: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large batches are aligned in worker processes: same rows, same order, error rows kept."""
    import spermhead.serving.predictor as predictor_module

    paths = expand_inputs([folder]) * 3  # 21 files, three of them corrupt
    with Predictor(bundle, batch_size=5, processes=1) as p:
        expected = list(p.predict_files(paths))
    monkeypatch.setattr(predictor_module, "PROCESS_MIN", 4)
    with Predictor(bundle, batch_size=5, processes=2) as p:
        got = list(p.predict_files(paths))
        assert p._preparer is not None  # the process path really ran
    assert [r["path"] for r in got] == [str(x) for x in paths]
    assert sum(not r["ok"] for r in got) == 3
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys() and a.get("error") == b.get("error")
        if a["ok"]:
            np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()),
                                       atol=1e-6)
            assert a["morphometrics"] == b["morphometrics"]


def test_missing_file_is_an_error_row(predictor: Predictor, tmp_path: Path) -> None:
    (row,) = predictor.predict_files([tmp_path / "nothing.png"])
    assert not row["ok"] and "nothing.png" in row["error"]


def test_predict_bytes(predictor: Predictor, folder: Path) -> None:
    data = (folder / "head0.png").read_bytes()
    row = predictor.predict_bytes("x.png", data)
    assert row["ok"] and row["name"] == "x.png"
    (from_file,) = predictor.predict_files([folder / "head0.png"])
    assert row["probabilities"] == from_file["probabilities"]
    assert predictor.predict_bytes("e.png", b"")["status"] == 400


def test_expand_inputs_globs_and_missing(folder: Path) -> None:
    assert [p.name for p in expand_inputs([str(folder / "*.bmp")])] == ["head1.bmp", "head3.bmp"]
    assert len(expand_inputs([str(folder / "**" / "*.png")])) == 4  # glob ** reaches sub/
    assert expand_inputs([str(folder / "none*.png")]) == [folder / "none*.png"]  # kept: becomes an error row
    # a folder a glob matches is read as a folder named is (Windows shells leave globs to the program)
    assert expand_inputs([str(folder / "s*")]) == [folder / "sub" / "head5.bmp"]
    # and its files skipped for their suffix are said, as a named folder's are (predict's note)
    assert searched_folders([str(folder / "s*"), folder, str(folder / "*.bmp")]) == [folder / "sub", folder]
    # a file matched is taken as named, as a shell would (notes.txt becomes an error row)
    assert set(expand_inputs([str(folder / "*")])) == {*expand_inputs([folder]), folder / "notes.txt"}


def test_predict_cli_folder_with_corrupt_file(bundle: Path, folder: Path, tmp_path: Path) -> None:
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder),
                                      "--csv", str(out_csv), "--json", str(out_json), "--batch-size", "2"])
    assert result.exit_code == 1, result.output
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7
    good, bad = [r for r in rows if not r["error"]], [r for r in rows if r["error"]]
    assert len(good) == 6 and all(r["class"] in CLASSES for r in good)
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.png") and "truncated or corrupt" in bad[0]["error"]
    assert {f"p_{c}" for c in CLASSES} <= set(rows[0])
    assert len(json.loads(out_json.read_text())) == 7
    assert "broken.png" in result.output
    said = " ".join(result.output.split())
    assert "1 file(s) in the folders skipped for their suffix" in said and "notes.txt" in said


def test_predict_cli_writes_a_file_name_that_is_not_utf8_and_refuses_one_file_for_two_outputs(
        bundle: Path, folder: Path, tmp_path: Path) -> None:
    import os
    import shutil

    (tmp_path / "in").mkdir()
    odd = tmp_path / "in" / os.fsdecode(b"m\xe9.png")  # a Latin-1 name from an old share
    shutil.copy(folder / "head0.png", odd)
    shutil.copy(folder / "head0.png", tmp_path / "in" / "z.png")
    out_csv = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(tmp_path / "in"), "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    with open(out_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["path"]).name for r in rows] == ["m\\xe9.png", "z.png"] and all(r["class"] for r in rows)
    same = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "head0.png"),
                                    "--csv", str(tmp_path / "o.csv"), "--json", str(tmp_path / "o.csv")])
    assert same.exit_code == 2 and "--csv and --json name the same file" in " ".join(same.output.split())
    assert not (tmp_path / "o.csv").exists()


def test_a_damaged_weights_file_is_a_one_line_error_naming_it(bundle: Path, folder: Path, tmp_path: Path) -> None:
    import shutil

    for name, content in (("cut", (bundle / "model.safetensors").read_bytes()[:5000]), ("empty", b"")):
        damaged = shutil.copytree(bundle, tmp_path / name)
        (damaged / "model.safetensors").write_bytes(content)
        result = CliRunner().invoke(app, ["predict", "--model", str(damaged), str(folder / "head0.png")])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{damaged / 'model.safetensors'}: not a readable safetensors file" in said
        assert "Traceback" not in result.output
    # readable, but not the model model.json describes: the first tensor it lacks is named
    from safetensors.torch import load_file, save_file

    state = load_file(str(bundle / "model.safetensors"))
    lacking = shutil.copytree(bundle, tmp_path / "lacking")
    save_file({k: v for k, v in state.items() if k != "member0.1.fc.weight"}, str(lacking / "model.safetensors"))
    result = CliRunner().invoke(app, ["predict", "--model", str(lacking), str(folder / "head0.png")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "does not hold the spermnet model model.json describes (member 0: Missing" in said
    assert "fc.weight" in said


def test_predict_cli_all_good_exits_0(bundle: Path, folder: Path) -> None:
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "*.bmp")])
    assert result.exit_code == 0, result.output


def test_predict_says_which_inputs_gave_no_file(bundle: Path, folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty slide"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "*.bmp"), str(empty),
                                      str(folder / "*.tiff")], terminal_width=400)
    flat = " ".join(result.output.split())
    assert f"{empty} holds no image file" in flat and f"{folder / '*.tiff'} matches no file" in flat, result.output
    assert f"{folder} holds" not in flat
    plain = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "*.bmp")])
    assert "note:" not in plain.output


def test_outputs_in_new_folders_are_made_only_when_written(bundle: Path, folder: Path, tmp_path: Path) -> None:
    # a command refused after its outputs were checked leaves no empty folder behind
    refused = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "no model"), str(folder),
                                       "--csv", str(tmp_path / "new" / "x.csv")])
    assert refused.exit_code == 2 and not (tmp_path / "new").exists(), refused.output
    done = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "*.bmp"),
                                    "--csv", str(tmp_path / "new" / "deeper" / "x.csv")])
    assert done.exit_code == 0 and (tmp_path / "new" / "deeper" / "x.csv").is_file(), done.output


def test_predict_cli_bad_bundle_is_a_one_line_error(tmp_path: Path, folder: Path, bundle: Path) -> None:
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path), str(folder)])
    assert result.exit_code == 2 and "model.json" in result.output
    # a bundle's file, or no folder at all, is said to be, not "model.json missing" under it
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle / "model.safetensors"), str(folder)])
    assert result.exit_code == 2 and f"give its folder, {bundle}" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "nosuch"), str(folder)])
    assert result.exit_code == 2 and "nosuch: no such folder" in result.output


def test_predict_cli_says_a_model_trained_on_synthetic_heads(bundle: Path, folder: Path, tmp_path: Path) -> None:
    import shutil

    synthetic = tmp_path / "synthetic"
    shutil.copytree(bundle, synthetic)
    meta = json.loads((synthetic / "model.json").read_text())
    meta["run"] = {"dataset": "hushem", "synthetic": True}
    (synthetic / "model.json").write_text(json.dumps(meta))
    said = CliRunner().invoke(app, ["predict", "--model", str(synthetic), str(folder / "*.bmp")], terminal_width=200)
    assert "was trained on synthetic heads" in said.output
    plain = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "*.bmp")], terminal_width=200)
    assert "synthetic heads" not in plain.output


@pytest.mark.parametrize("damage, words", [
    (lambda m: m.update(confusions={"accuracy": [[1, 2], [3, 4]]}), "confusions.accuracy: not a 4 x 4"),
    (lambda m: m["share_checks"]["accuracy"].pop("closer"), "share_checks.accuracy.closer"),
    (lambda m: m["share_checks"]["accuracy"]["extra_sd"].update(adjusted=[0.1]), "share_checks.accuracy.extra_sd"),
    # the numbers every answer goes through: NaN there made every probability NaN
    (lambda m: m.update(temperature=float("nan")), "temperature nan: needs a finite number above 0"),
    (lambda m: m.update(temperature=0), "temperature 0: needs a finite number above 0"),
    (lambda m: m.update(class_bias=[0.0, float("inf"), 0.0, 0.0]), "class_bias: needs one finite number per class (4)"),
    (lambda m: m.update(operating_points={"balanced": [0.0]}), "operating_points.balanced: needs one finite number"),
    (lambda m: m.update(uncertainty_threshold="high"), "uncertainty_threshold 'high': needs a number from 0 to 1"),
    # ... and what the network and the images are built from
    (lambda m: m.update(members=0), "members 0: needs a whole number from 1"),
    (lambda m: m.update(format="1"), "format '1': needs a whole number"),
    (lambda m: m["preprocess"].update(colour="gray"), "preprocess: not the preprocessing settings"),
    (lambda m: m["preprocess"].update(color="purple"), "preprocess.color 'purple': needs one of gray, rgb"),
    (lambda m: m["preprocess"].update(image_size=m["image_size"] + 16), "do not match preprocess"),
    (lambda m: m.update(input_ranges={"head_length_px": [1]}), "input_ranges.head_length_px: needs [lowest, highest]"),
    # ... and records of the wrong kind, which the checks themselves once stumbled on
    (lambda m: m.update(operating_points=None), "operating_points: needs a record"),
    (lambda m: m.update(input_ranges=[]), "input_ranges: needs a record"),
    (lambda m: m.update(model_kwargs=None), "model_kwargs: needs a record"),
    (lambda m: m.update(tta_flips=5), "tta_flips the flips to average over"),
    (lambda m: m["preprocess"].update(margin="wide"), "margin a number from 0"),
])
def test_a_damaged_record_is_a_one_line_error_naming_the_file(bundle: Path, folder: Path, tmp_path: Path,
                                                                     damage, words: str) -> None:
    import shutil

    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    meta = json.loads((copy / "model.json").read_text())
    four = [0.0] * 4
    meta["confusions"] = {"accuracy": [[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]}
    meta["share_checks"] = {"accuracy": {"heads": [50, 200], "samples": 400, "level": 0.95,
                                         "error": {"counted": four, "adjusted": four},
                                         "held": {"counted": four, "adjusted": four},
                                         "extra_sd": {"counted": four, "adjusted": four},
                                         "closer": ["counted"] * 4}}
    (copy / "model.json").write_text(json.dumps(meta))
    images = str(folder / "*.bmp")
    assert CliRunner().invoke(app, ["predict", "--model", str(copy), images]).exit_code == 0  # intact: fine
    damage(meta)
    (copy / "model.json").write_text(json.dumps(meta))
    result = CliRunner().invoke(app, ["predict", "--model", str(copy), images])
    flat = "".join(result.output.split())  # long paths wrap at the test console's width
    assert result.exit_code == 2 and str(copy / "model.json") in flat, result.output
    assert words.replace(" ", "") in flat and "Traceback" not in result.output, result.output


def test_operating_point_switches_the_prior_correction(bundle: Path, folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["operating_points"] = {"accuracy": [0.0] * 4, "balanced": [2.0, 0.0, 0.0, 0.0]}
    (copy / "model.json").write_text(json.dumps(meta))
    image = next(folder.glob("*.bmp"))
    with Predictor(copy, operating_point="accuracy") as plain, \
            Predictor(copy, operating_point="balanced") as balanced:
        p0 = next(iter(plain.predict_files([image])))["probabilities"]["normal"]
        p1 = next(iter(balanced.predict_files([image])))["probabilities"]["normal"]
    assert p1 > p0  # the balanced point's +2 log-prior on "normal" raises its probability
    with pytest.raises(Exception, match="--operating-point 'nope'"):
        Predictor(copy, operating_point="nope")


def test_a_dead_worker_loses_no_rows(bundle: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a worker process dies, its files are prepared in this process instead."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from spermhead.serving.prepare import ProcessPreparer

    class DeadPool:
        def submit(self, *args: object) -> Future:
            f: Future = Future()
            f.set_exception(BrokenProcessPool("a worker was killed"))
            return f

    paths = expand_inputs([folder])
    preparer = ProcessPreparer(2, PreprocessConfig(image_size=32), 10**8)
    monkeypatch.setattr(preparer, "_executor", lambda: DeadPool())
    items = list(preparer.map(paths, chunk=3))
    assert [getattr(it, "path", None) or it["path"] for it in items] == [str(p) for p in paths]
    assert sum(isinstance(it, dict) for it in items) == 1  # only the corrupt file


def test_predict_table_keeps_whole_file_names_on_a_narrow_terminal(bundle: Path, folder: Path) -> None:
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "*.bmp")], terminal_width=80)
    assert result.exit_code == 0, result.output
    # the file column's pieces, line by line, give back every path whole (folded, not cut)
    column = "".join(line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│"))
    assert "…" not in result.output and str(folder / "head1.bmp") in column and str(folder / "head3.bmp") in column


def test_a_run_folder_stands_for_its_bundle(bundle: Path, folder: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(bundle, tmp_path / "run" / "model")  # as `train --out run` leaves it
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "run"), str(folder / "*.bmp")])
    assert result.exit_code == 0 and "2 classified" in result.output, result.output
    with Predictor(tmp_path / "run") as predictor:
        assert predictor.bundle_dir == tmp_path / "run" / "model"


def test_a_killed_worker_pool_is_replaced(folder: Path) -> None:
    """A real pool whose worker was killed refuses new work (BrokenProcessPool from submit): the
    next call starts a fresh pool and loses no rows."""
    import os
    import signal
    import time

    from spermhead.serving.prepare import ProcessPreparer

    paths = expand_inputs([folder])
    with_paths = lambda items: [getattr(it, "path", None) or it["path"] for it in items]  # noqa: E731
    preparer = ProcessPreparer(1, PreprocessConfig(image_size=32), 10**8)
    try:
        assert with_paths(preparer.map(paths, chunk=2)) == [str(p) for p in paths]
        pool = preparer._pool
        assert pool is not None
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not pool._broken and time.monotonic() < deadline:  # the pool notices the death
            time.sleep(0.05)
        items = list(preparer.map(paths, chunk=2))
        assert with_paths(items) == [str(p) for p in paths]
        assert sum(isinstance(it, dict) for it in items) == 1  # only the corrupt file
        assert preparer._pool is not pool  # the broken pool was dropped
    finally:
        preparer.close()


def test_a_pool_broken_mid_batch_is_replaced_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunks already sent to a broken pool fail one after another: each is redone here, and
    only that pool is dropped, not the fresh one that took the chunks after them."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import spermhead.serving.prepare as prepare

    pools: list[object] = []

    class FakePool:
        def __init__(self, broken: bool) -> None:
            self.broken, self.down, self.sent = broken, False, []
            pools.append(self)

        def submit(self, fn: object, names: list[str], *args: object) -> Future:
            f: Future = Future()
            if self.broken:
                f.set_exception(BrokenProcessPool("a worker was killed"))
            else:
                f.set_result([f"pool:{n}" for n in names])
            self.sent.append(names)
            return f

        def shutdown(self, wait: bool = False, cancel_futures: bool = False) -> None:
            self.down = True

    preparer = prepare.ProcessPreparer(3, PreprocessConfig(image_size=32), 10**8)

    def executor() -> FakePool:
        if preparer._pool is None:
            preparer._pool = FakePool(broken=not pools)  # the first pool is broken, later ones work
        return preparer._pool

    monkeypatch.setattr(preparer, "_executor", executor)
    monkeypatch.setattr(prepare, "prepare_chunk", lambda names, *a: [f"here:{n}" for n in names])
    items = list(preparer.map([f"f{i}" for i in range(40)], chunk=2))
    assert [i.split(":")[1] for i in items] == [f"f{i}" for i in range(40)]  # every file, in order
    assert len(pools) == 2 and pools[0].down and not pools[1].down
    assert sum(i.startswith("pool:") for i in items) == 2 * len(pools[1].sent) > 0


def test_predict_classifies_a_file_named_twice_once(bundle: Path, folder: Path, tmp_path: Path) -> None:
    import shutil

    images = shutil.copytree(folder, tmp_path / "imgs", ignore=shutil.ignore_patterns("broken.png", "notes.txt"))
    n = len(expand_inputs([images]))
    out_csv = tmp_path / "out.csv"
    # the folder, one of its files again, and the same file by another spelling
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(images), str(images / "head0.png"),
                                      f"{images}/./head0.png", "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and len({Path(r["path"]).resolve() for r in rows}) == n
    assert "2 file(s) are the same file as one named before" in " ".join(result.output.split())


def test_predict_refuses_to_write_over_an_image_it_reads(bundle: Path, folder: Path, tmp_path: Path) -> None:
    import shutil

    image = shutil.copy(folder / "head0.png", tmp_path / "head0.png")
    before = Path(image).read_bytes()
    for option in ("--csv", "--json", "--summary"):
        result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(tmp_path / "*.png"), option,
                                          str(image), "--overwrite"])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{option} {image}: is also one of the files to classify" in said, said
        assert Path(image).read_bytes() == before


def test_predict_refuses_a_read_only_output_before_classifying(bundle: Path, folder: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--overwrite of a read-only --json or --summary file failed only after every image was
    classified, and the results were lost with it; it is refused first, naming the file."""
    import os

    import spermhead.cli as cli

    real_access = os.access
    for option in ("--csv", "--json", "--summary"):
        kept = tmp_path / f"kept{option.strip('-')}.out"
        kept.write_text("earlier results\n")
        monkeypatch.setattr(cli.os, "access", lambda p, mode, kept=kept: (  # a user without write permission
            False if Path(p) == kept and mode == os.W_OK else real_access(p, mode)))
        result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder), option, str(kept),
                                          "--overwrite"])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{option} {kept}: cannot write there (the file is read-only)" in said, said
        assert "classified" not in said and kept.read_text() == "earlier results\n"


def test_an_output_never_replaces_the_files_of_a_run_an_assessment_or_a_bundle(bundle: Path, folder: Path,
                                                                               tmp_path: Path) -> None:
    """`compare --json RUN/predictions.csv --overwrite` (or predict's --csv) wrote over a run's own
    predictions and left it unreadable; such files are refused even with --overwrite. A new file
    beside them, or the bundle's own model.onnx made again by export, is fine."""
    marks = {"run": ("config.yaml", "run.json"), "assessment": ("assessment.json",),
             "bundle": ("model.json", "model.safetensors")}
    for kind, files in marks.items():
        where = tmp_path / kind
        (where / "plots").mkdir(parents=True)
        for name in files:
            (where / name).write_text("kept\n")
        for target in (where / "predictions.csv", where / "plots" / "roc.png"):
            target.write_text("kept\n")
            result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "head0.png"),
                                              "--csv", str(target), "--overwrite"])
            said = " ".join(result.output.split())
            assert result.exit_code == 2 and f"--csv {target}: is a file of the" in said, said
            assert target.read_text() == "kept\n"
    run = tmp_path / "run"
    compared = CliRunner().invoke(app, ["compare", str(run), str(run), "--json", str(run / "predictions.csv"),
                                        "--overwrite"])
    said = " ".join(compared.output.split())
    assert compared.exit_code == 2 and "is a file of the training run" in said, said
    fresh = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "head0.png"), "--csv",
                                     str(run / "lab.csv")])
    assert fresh.exit_code == 0 and (run / "lab.csv").is_file(), fresh.output
    again = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "head0.png"), "--csv",
                                     str(run / "lab.csv"), "--overwrite"])  # the user's own file, replaced
    assert again.exit_code == 0, again.output
    link = tmp_path / "link.csv"
    link.symlink_to(run / "predictions.csv")  # a run's file reached through a link is still the run's
    linked = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "head0.png"), "--csv",
                                      str(link), "--overwrite"])
    assert linked.exit_code == 2 and "is a file of the training run" in " ".join(linked.output.split())


def test_predict_names_an_output_it_cannot_open_and_refuses_bad_batch_settings(
        bundle: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_open = builtins.open

    def refusing_open(file, mode="r", *args, **kwargs):  # what root meets where os.access says yes
        if str(file).endswith("out.csv") and "w" in mode:
            raise PermissionError(13, "Permission denied")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "head0.png"),
                                      "--csv", str(tmp_path / "out.csv")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"--csv {tmp_path / 'out.csv'}: cannot write there (Permission denied)" in said
    monkeypatch.undo()
    for option, value in (("--batch-size", "0"), ("--threads", "-1"), ("--show", "-1")):
        bad = CliRunner().invoke(app, ["predict", "--model", str(bundle), str(folder / "head0.png"), option, value])
        said = " ".join(bad.output.split())
        assert bad.exit_code == 2 and f"Invalid value for '{option}'" in said, said
