"""`spermhead evaluate`: a trained bundle scored on labelled images, with the images it trained
on told apart from new ones (synthetic grey-level classes; no real data needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_training import CLASSES, quick_config, write_separable
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.evaluation.predictions import Predictions
from spermhead.serving.bundle import TRAINING_IMAGES
from spermhead.training.run import train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the training folder, the bundle)."""
    data = write_separable(tmp_path_factory.mktemp("train") / "data", heads=True)
    out = tmp_path_factory.mktemp("runs") / "run"
    train_run(quick_config(data, out, cv=2), progress=False)
    return data, out / "model"


def evaluate(bundle: Path, dataset: Path, out: Path, *extra: str):
    return runner.invoke(app, ["evaluate", str(dataset), "--model", str(bundle), "--out", str(out), *extra])


def test_new_images_score_near_perfect_and_unseen(trained, tmp_path: Path) -> None:
    _, bundle = trained
    fresh = write_separable(tmp_path / "fresh", n_per_class=10, seed=7, heads=True)  # other noise: other images
    result = evaluate(bundle, fresh, tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["accuracy"] >= 0.95
    assert metrics["training_overlap"]["seen"] == 0
    # the bundle's share check travels into the assessment, and its stars are explained
    from spermhead.serving.bundle import load_bundle

    check = load_bundle(bundle).meta.share_check
    assert check is not None and metrics["share_check"] == check
    assert "★ per class, the estimate the bundle's own check found closer" in " ".join(result.output.split())
    pred = Predictions.read_csv(tmp_path / "out" / "predictions.csv")
    expected = {f"{c}/{c}_{i:03d}.png" for c in CLASSES for i in range(10)}
    assert set(pred.ids) == expected and all(t == i.split("/")[0] for t, i in zip(pred.true, pred.ids, strict=True))
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "plots" / "roc.png").is_file()
    # the report speaks of these images, not of folds the assessment does not have, and shows
    # their true class shares beside the two estimates
    report = (tmp_path / "out" / "report.html").read_text()
    assert "<th>these images</th>" in report and "out-of-fold" not in report and "sd across folds" not in report
    assert "These images as one sample" in report and "<td>25.0%</td>" in report  # 10 of 40 per class
    assert "From the model's training run" in report
    assert "widened by the bundle's check below" in report
    # a bundle without the check (one split, or an older bundle): its intervals are not said to be widened
    from spermhead.evaluation.report import write_report

    metrics["share_check"] = None
    bare = write_report(tmp_path / "bare", {"dataset": "x"}, metrics, {}).read_text()
    assert "These images as one sample" in bare and "widened" not in bare


def test_training_images_are_reported_apart(trained, tmp_path: Path) -> None:
    data, bundle = trained
    mixed = write_separable(tmp_path / "mixed", n_per_class=5, seed=9)
    copied = sorted((data / "normal").iterdir())[:3]
    for p in copied:
        shutil.copy(p, mixed / "normal" / f"copy_{p.name}")
    result = evaluate(bundle, mixed, tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["training_overlap"] == {"seen": 3, "unseen": 20, "threshold": 0.98}
    assert metrics["unseen"]["n"] == 20
    assert any("trained on" in n for n in metrics["notes"])
    record = json.loads((tmp_path / "out" / "assessment.json").read_text())
    assert sorted(record["seen_in_training"]) == sorted(f"normal/copy_{p.name}" for p in copied)

    whole = evaluate(bundle, data, tmp_path / "in_sample")
    assert whole.exit_code == 0, whole.output
    in_sample = json.loads((tmp_path / "in_sample" / "metrics.json").read_text())
    assert in_sample["training_overlap"]["unseen"] == 0 and in_sample.get("unseen") is None


def test_shuffled_labels_score_near_chance(trained, tmp_path: Path) -> None:
    _, bundle = trained
    rng = np.random.default_rng(3)
    root = tmp_path / "shuffled"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
    for i in range(200):  # each image's grey level says one class, its folder a random one
        level = 40 + 55 * int(rng.integers(4))
        img = np.clip(level + rng.normal(0, 6, (24, 24)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / CLASSES[int(rng.integers(4))] / f"x{i:03d}.png")
    result = evaluate(bundle, root, tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.12 <= metrics["accuracy"] <= 0.38  # chance is 0.25; 200 images give sd 0.03


def test_unknown_class_and_bad_file_are_left_out_and_named(trained, tmp_path: Path) -> None:
    _, bundle = trained
    root = write_separable(tmp_path / "lab", n_per_class=5, seed=11, heads=True)
    (root / "small").mkdir()
    for i in range(4):
        Image.fromarray(np.full((24, 24), 128, np.uint8)).save(root / "small" / f"s{i}.png")
    (root / "tapered" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    Image.new("L", (64, 64), 200).save(root / "normal" / "blank.png")  # no head in it: scored, not counted in shares
    result = evaluate(bundle, root, tmp_path / "out")
    assert result.exit_code == 1  # like predict: a file that failed makes the exit code 1
    said = result.output.replace("\n", "")  # long paths wrap
    assert said.count("broken.png") == 1 and f"{root / 'tapered' / 'broken.png'}: " in said  # named once, by its path
    record = json.loads((tmp_path / "out" / "assessment.json").read_text())
    assert record["scored"] == 21 and record["unknown_classes"] == {"small": 4}
    assert [u["id"] for u in record["unusable"]] == ["tapered/broken.png"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 21 and any("small (4)" in n for n in metrics["notes"])
    assert sum(r["count"] for r in metrics["composition"]) == 20 and metrics["composition"][0]["true_share"] == 0.25
    assert any(n.startswith("1 image with no head found") for n in metrics["notes"])


def test_images_with_no_head_give_no_class_shares(trained, tmp_path: Path) -> None:
    _, bundle = trained
    result = evaluate(bundle, write_separable(tmp_path / "noise", n_per_class=3, seed=5), tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["composition"] == []
    assert any(n.startswith("12 images with no head found") for n in metrics["notes"])
    assert "no head was found in any image: no class shares" in " ".join(result.output.split())
    assert "These images as one sample" not in (tmp_path / "out" / "report.html").read_text()


def test_a_folder_of_only_unusable_images_is_an_error_naming_one_once(trained, tmp_path: Path) -> None:
    _, bundle = trained
    (tmp_path / "lab" / "normal").mkdir(parents=True)
    for i in range(2):
        (tmp_path / "lab" / "normal" / f"bad{i}.png").write_bytes(b"not an image")
    result = evaluate(bundle, tmp_path / "lab", tmp_path / "out")
    said = result.output.replace("\n", "")
    assert result.exit_code == 2 and "none of its 2 images could be used (first: bad0.png: " in said, said
    assert said.count("bad0.png") == 1


def test_no_shared_class_is_an_error(trained, tmp_path: Path) -> None:
    _, bundle = trained
    for c in ("a", "b"):
        (tmp_path / "other" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "other" / c / "x.png")
    result = evaluate(bundle, tmp_path / "other", tmp_path / "out")
    assert result.exit_code == 2 and "none of its classes" in result.output


def test_a_class_named_but_for_case_as_the_models_is_pointed_out(tmp_path: Path) -> None:
    """Class names other than the WHO ones are matched as written: a folder "BAD" beside the
    model's "bad" is left out, and the note or error says why, not only that it was."""
    from types import SimpleNamespace

    from spermhead.data.samples import Sample, SampleTable
    from spermhead.errors import ConfigError
    from spermhead.evaluation.external import assess, case_twin

    assert case_twin("BAD", ["bad", "good"]) == "; 'BAD' is the model's 'bad' but for case: rename the folder to match"
    assert case_twin("bad", ["bad", "good"]) == case_twin("ugly", ["bad", "good"]) == ""
    table = SampleTable("lab", [Sample("BAD/1.png", tmp_path / "1.png", "BAD", "lab"),
                                Sample("Good/2.png", tmp_path / "2.png", "Good", "lab")])
    with pytest.raises(ConfigError) as caught:
        assess(SimpleNamespace(classes=["bad", "good"]), table)
    assert "'BAD' is the model's 'bad' but for case" in str(caught.value)
    assert "'Good' is the model's 'good' but for case" in str(caught.value)


def test_existing_output_is_kept(trained, tmp_path: Path) -> None:
    data, bundle = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = evaluate(bundle, data, out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    # --overwrite replaces an earlier assessment only: not a folder of one's own, not a training run
    result = evaluate(bundle, data, out, "--overwrite")
    assert result.exit_code == 2 and "no assessment.json" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    run = bundle.parent
    before = (run / "predictions.csv").read_bytes()
    result = evaluate(bundle, data, run, "--overwrite")
    assert result.exit_code == 2 and "is a training run" in result.output
    assert (run / "predictions.csv").read_bytes() == before
    again = tmp_path / "again"
    assert evaluate(bundle, data, again).exit_code == 0
    assert evaluate(bundle, data, again, "--overwrite").exit_code == 0  # an earlier assessment is replaced


def test_bundle_without_training_record(trained, tmp_path: Path) -> None:
    data, bundle = trained
    old = tmp_path / "old_bundle"
    shutil.copytree(bundle, old)
    (old / TRAINING_IMAGES).unlink()
    result = evaluate(old, data, tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["training_overlap"] is None
    assert any("does not record its training images" in n for n in metrics["notes"])


def test_a_bundle_trained_on_synthetic_heads_is_said_to_be(trained, tmp_path: Path) -> None:
    data, bundle = trained
    rendered = tmp_path / "rendered_bundle"
    shutil.copytree(bundle, rendered)
    meta = json.loads((rendered / "model.json").read_text())
    meta["run"] = {**(meta.get("run") or {}), "synthetic": True}  # as a bundle trained after data synth
    (rendered / "model.json").write_text(json.dumps(meta))
    result = evaluate(rendered, data, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "was trained on synthetic heads" in " ".join(result.output.split())
    plain = evaluate(bundle, data, tmp_path / "out2")
    assert "synthetic heads" not in " ".join(plain.output.split())


def test_review_page_opens_an_assessment(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from spermhead.serving.app import create_app

    _, bundle = trained
    write_separable(tmp_path / "fresh", n_per_class=3, seed=5)
    monkeypatch.chdir(tmp_path)
    assert evaluate(bundle, Path("fresh"), tmp_path / "out").exit_code == 0  # a relative folder
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the server starts in another folder
    with TestClient(create_app(bundle, review_source=tmp_path / "out")) as client:
        data = client.get("/api/review").json()
        assert data["kind"] == "predictions" and data["count"] == 12 and not data["note"]
        assert client.get("/api/review/image/0").status_code == 200  # the images found from assessment.json


def test_both_operating_points_are_reported(trained, tmp_path: Path) -> None:
    """Each run reports the headline at every operating point of the bundle; the point it did not
    use matches a run that uses it."""
    _, bundle = trained
    skewed = tmp_path / "skewed"
    shutil.copytree(bundle, skewed)
    meta = json.loads((skewed / "model.json").read_text())
    meta["operating_points"]["balanced"] = [2.0, 0.0, 0.0, -2.0]  # a strong prior correction
    (skewed / "model.json").write_text(json.dumps(meta))
    fresh = write_separable(tmp_path / "fresh", n_per_class=10, seed=8)
    first = evaluate(skewed, fresh, tmp_path / "acc")
    second = evaluate(skewed, fresh, tmp_path / "bal", "--operating-point", "balanced")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    acc = json.loads((tmp_path / "acc" / "metrics.json").read_text())
    bal = json.loads((tmp_path / "bal" / "metrics.json").read_text())
    assert (acc["operating_point"], bal["operating_point"]) == ("accuracy", "balanced")
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert acc["operating_points"]["balanced"][key] == pytest.approx(bal[key], abs=1e-9)
        assert bal["operating_points"]["accuracy"][key] == pytest.approx(acc[key], abs=1e-9)
    assert acc["operating_points"]["balanced"]["accuracy"] < acc["accuracy"]  # the correction moved answers


def test_a_damaged_assessment_record_does_not_stop_the_review(trained, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from spermhead.serving.app import create_app

    _, bundle = trained
    fresh = write_separable(tmp_path / "fresh", n_per_class=2, seed=6)
    assert evaluate(bundle, fresh, tmp_path / "out").exit_code == 0
    (tmp_path / "out" / "assessment.json").write_text("{ not json")
    with TestClient(create_app(bundle, review_source=tmp_path / "out")) as client:
        data = client.get("/api/review").json()
        assert data["count"] == 8 and "assessment.json does not name a dataset" in data["note"]


def test_review_marks_the_images_the_model_trained_on(trained, tmp_path: Path) -> None:
    """Both ways into the review page (an evaluate folder, a class folder predicted now) flag the
    training images, and the overall figure is given apart for the others."""
    from fastapi.testclient import TestClient

    from spermhead.serving.app import create_app

    data, bundle = trained
    mix = write_separable(tmp_path / "mix", n_per_class=2, seed=9)  # new images ...
    for c in CLASSES:  # ... and one training image per class
        shutil.copy(data / c / f"{c}_000.png", mix / c / "trained.png")
    trained_ids = {f"{c}/trained.png" for c in CLASSES}
    assert evaluate(bundle, mix, tmp_path / "out").exit_code == 0
    for source in (tmp_path / "out", mix):
        with TestClient(create_app(bundle, review_source=source)) as client:
            review = client.get("/api/review").json()
        assert {it["id"] for it in review["items"] if it["seen"]} == trained_ids, source
        assert all(it["seen"] is False for it in review["items"] if it["id"] not in trained_ids)
        assert review["seen"] == 4 and review["unseen"] == 8 and "4 of 12 images are ones the model that gave these answers trained on" in review["note"]
        assert "not by the model this server loaded" not in review["note"]  # the same bundle either way
        unseen = [it["correct"] for it in review["items"] if not it["seen"]]
        assert review["accuracy_unseen"] == pytest.approx(sum(unseen) / len(unseen))
    # another model served beside the assessment: the answers shown are said to be the assessed model's
    other = shutil.copytree(bundle, tmp_path / "other")
    with TestClient(create_app(other, review_source=tmp_path / "out")) as client:
        note = client.get("/api/review").json()["note"]
    assert f"by the model at {Path(bundle).resolve()}, not by the model this server loaded" in note


def test_review_scores_the_images_evaluate_scores(trained, tmp_path: Path) -> None:
    """A class the model does not have is shown on the review page but, as in evaluate, not scored."""
    from fastapi.testclient import TestClient

    from spermhead.serving.app import create_app

    _, bundle = trained
    lab = write_separable(tmp_path / "lab", n_per_class=3, seed=12)
    (lab / "small").mkdir()
    shutil.copy(lab / CLASSES[0] / f"{CLASSES[0]}_000.png", lab / "small" / "s.png")
    assert evaluate(bundle, lab, tmp_path / "out").exit_code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    with TestClient(create_app(bundle, review_source=lab)) as client:
        review = client.get("/api/review").json()
    assert review["count"] == 13 and metrics["n"] == 12
    assert review["accuracy"] == pytest.approx(metrics["accuracy"])
    small = next(it for it in review["items"] if it["true"] == "small")
    assert small["pred"] in CLASSES and small["correct"] is None
    assert "shown but not scored: small" in review["note"]


def test_evaluate_takes_the_run_folder_and_records_its_bundle(trained, tmp_path: Path) -> None:
    _, bundle = trained
    fresh = write_separable(tmp_path / "fresh", n_per_class=2, seed=13)
    assert evaluate(bundle.parent, fresh, tmp_path / "out").exit_code == 0  # the run folder, as train --out left it
    record = json.loads((tmp_path / "out" / "assessment.json").read_text())
    assert record["bundle"] == str(bundle.resolve())
    # the bundle's fusion travels with it, for the report to say whose answers it scored (none here)
    assert record["train"] == {"shape_fusion": 0.0, "pixel_fusion": 0.0}
    assert "fused answers" not in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # the tiny run's validation parts
def test_a_file_name_that_is_not_utf8_is_evaluated_and_read_back(trained, tmp_path: Path) -> None:
    """A Latin-1 name from an old Windows share (its id holds lone surrogates) once stopped
    `evaluate` inside predictions.csv, with nothing after it written."""
    import os

    _, bundle = trained
    fresh = write_separable(tmp_path / "fresh", n_per_class=3, seed=7, heads=True)
    latin1 = os.fsdecode(b"t\xeate.png")  # "tête" in Latin-1
    (fresh / "normal" / "normal_000.png").rename(fresh / "normal" / latin1)
    result = evaluate(bundle, fresh, tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["n"] == 12 and (out / "report.html").is_file()
    pred = Predictions.read_csv(out / "predictions.csv")
    assert f"normal/{latin1}" in pred.ids  # the same id back, so it still keys its image
    # and a run trained on such a folder writes its tables and bundle
    run = train_run(quick_config(fresh, tmp_path / "run", cv=2, epochs=2), progress=False)
    assert f"normal/{latin1}" in Predictions.read_csv(run.out / "predictions.csv").ids
    assert (run.out / "model" / "model.safetensors").is_file()


def test_a_class_folder_named_in_latin1_trains_and_answers_over_http(trained, tmp_path: Path) -> None:
    """A class folder's name that is not UTF-8 ("Cabeça" from an old Windows share) crashed
    `train` at its plots, and a bundle holding it answered 500 to every request: the class is
    named with the bytes escaped, everywhere."""
    import os

    from fastapi.testclient import TestClient

    from spermhead.serving.app import create_app

    fresh = write_separable(tmp_path / "fresh", n_per_class=3, seed=7, heads=True)
    (fresh / "tapered").rename(fresh / os.fsdecode(b"Cabe\xe7a"))
    run = train_run(quick_config(fresh, tmp_path / "run", cv=2, epochs=2), progress=False)
    assert (run.out / "report.html").is_file() and (run.out / "plots" / "confusion_counts.png").is_file()
    assert "Cabe\\xe7a" in json.loads((run.out / "model" / "model.json").read_text())["classes"]
    image = next((fresh / "normal").iterdir())
    answer = TestClient(create_app(run.out / "model")).post(
        "/api/predict", files={"files": (image.name, image.read_bytes(), "image/png")})
    assert answer.status_code == 200 and "Cabe\\xe7a" in answer.json()["results"][0]["probabilities"]


def test_a_class_mix_far_from_the_runs_is_said(trained, tmp_path: Path) -> None:
    _, bundle = trained
    even = write_separable(tmp_path / "even", n_per_class=6, seed=7, heads=True)
    assert "class mix" not in " ".join(evaluate(bundle, even, tmp_path / "e1").output.split())
    skewed = write_separable(tmp_path / "skewed", n_per_class=12, seed=7, heads=True)
    for name in CLASSES[1:]:  # the first class 12 of 21 images: 57%, against a quarter in the run
        for path in sorted((skewed / name).iterdir())[3:]:
            path.unlink()
    result = evaluate(bundle, skewed, tmp_path / "e2")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and f"these images' class mix ({CLASSES[0]} 57%" in said
    assert "compare the two by average recall" in said
    notes = json.loads((tmp_path / "e2" / "metrics.json").read_text())["notes"]
    assert any("class mix" in n for n in notes)
