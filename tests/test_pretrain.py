"""Self-supervised pretraining: the loss is right, and its weights seed a training run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.models.registry import build_model
from spermhead.training.pretrain import nt_xent


def test_nt_xent_rewards_matching_views() -> None:
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    matched = nt_xent(z, z + 0.01 * torch.randn(16, 8), 0.2)
    shuffled = nt_xent(z, z[torch.randperm(16)], 0.2)
    assert matched < shuffled
    assert matched > 0  # the other 2N - 2 views still take some probability


@pytest.mark.parametrize("accelerator", [
    "cpu", pytest.param("gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_pretrain_command_writes_loadable_backbone(tmp_path, accelerator) -> None:
    out = tmp_path / "ssl.safetensors"
    result = CliRunner().invoke(app, ["pretrain", "--out", str(out), "--sources", "synthetic", "--synthetic", "96",
                                      "--epochs", "2", "--batch-size", "32", "--image-size", "32",
                                      "--threads", "1", "--accelerator", accelerator, "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["images"] == {"synthetic": 96} and record["final_loss"] > 0
    assert not out.with_suffix(".images.safetensors").exists()  # synthetic heads only: no real image seen
    model = build_model("spermnet", 4, 1, 32, weights=out)
    assert sorted(model.weights_report.missing) == ["fc.bias", "fc.weight"]  # all but the classifier
    # the weights are not replaced without --overwrite
    written = out.read_bytes()
    again = CliRunner().invoke(app, ["pretrain", "--out", str(out), "--sources", "synthetic", "--epochs", "1"])
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output, again.output
    assert out.read_bytes() == written


def test_pretrain_prints_no_lightning_chatter(tmp_path) -> None:
    # a process of its own: Lightning's handler writes to the stream it found at import
    args = [sys.executable, "-m", "spermhead", "pretrain", "--out", str(tmp_path / "w.safetensors"), "--sources",
            "synthetic", "--synthetic", "16", "--epochs", "1", "--batch-size", "8", "--image-size", "32",
            "--threads", "1", "--accelerator", "cpu", "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "backbone weights:" in said and "GPU available" not in said and "Tip" not in said, said


def test_pretrain_refuses_bad_settings_before_reading_images(tmp_path) -> None:
    ok = str(tmp_path / "w.safetensors")
    cases = {
        "safetensors": ["--out", str(tmp_path / "w.pt"), "--sources", "synthetic"],
        "at least one source": ["--out", ok, "--sources", ","],
        "gray or rgb": ["--out", ok, "--sources", "synthetic", "--color", "blue"],
        "--accelerator 'tpu'": ["--out", ok, "--sources", "synthetic", "--accelerator", "tpu"],
        "--epochs 0: must be at least 1": ["--out", ok, "--sources", "synthetic", "--epochs", "0"],
        "--batch-size 1: must be at least 2": ["--out", ok, "--sources", "synthetic", "--batch-size", "1"],
        "--synthetic 1: the synthetic source needs": ["--out", ok, "--sources", "synthetic", "--synthetic", "1"],
    }
    for message, args in cases.items():
        result = CliRunner().invoke(app, ["pretrain", *args])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not list(tmp_path.iterdir())  # nothing written
    (tmp_path / "weights").mkdir()
    folder = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "weights"), "--sources", "synthetic"])
    assert folder.exit_code == 2 and "weights: is a folder; give a file name" in folder.output, folder.output
    assert not list((tmp_path / "weights").iterdir())


def test_fits_on_many_core_machines_ask_for_no_loader_workers(tmp_path, monkeypatch, recwarn) -> None:
    import lightning.fabric.utilities.data as fabric_data

    from spermhead.config import PreprocessConfig
    from spermhead.training.pretrain import PretrainConfig, pretrain

    monkeypatch.setattr(fabric_data, "_num_cpus_available", lambda: 16)  # a lab workstation, not CI's 2 cores
    assert fabric_data.suggested_max_num_workers(1) == 15  # so Lightning's worker check would speak
    cfg = PretrainConfig(sources=("synthetic",), synthetic=16, epochs=1, batch_size=8,
                         out=str(tmp_path / "w.safetensors"), preprocess=PreprocessConfig(image_size=32),
                         accelerator="cpu")
    assert pretrain(cfg, progress=False).is_file()
    assert not [w for w in recwarn if "many workers" in str(w.message)]


def test_a_backbone_pretrained_on_the_test_images_is_said_to_have_seen_them(tmp_path, caplog) -> None:
    """Pretraining takes no labels, but it has seen the images: fine-tuned from it, a CV run's
    test folds are not unseen, and the run says so as for a bundle's weights."""
    from test_training import quick_config, write_separable

    from spermhead.serving.bundle import pretrained_images_file
    from spermhead.training.run import train_run

    data = write_separable(tmp_path / "lab", n_per_class=6)
    out = tmp_path / "ssl.safetensors"
    result = CliRunner().invoke(app, ["pretrain", "--out", str(out), "--sources", str(data), "--epochs", "1",
                                      "--batch-size", "8", "--image-size", "24", "--threads", "1",
                                      "--accelerator", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert pretrained_images_file(out).is_file()
    with caplog.at_level("WARNING", logger="spermhead"):
        leaky = train_run(quick_config(data, tmp_path / "leaky", weights=str(out), epochs=1, cv=2), progress=False)
    said = "was pretrained (without labels) on 24 of these 24 images"
    assert said in caplog.text and any(said in n for n in leaky.metrics["notes"])
    assert any(said in n for n in leaky.metrics["caveats"])  # what a selection table carries beside the row
    assert json.loads((leaky.out / "run.json").read_text())["init"]["saw"] == 24
    fresh = write_separable(tmp_path / "other", n_per_class=6, seed=9)  # other images: nothing to say
    caplog.clear()
    with caplog.at_level("WARNING", logger="spermhead"):
        clean = train_run(quick_config(fresh, tmp_path / "clean", weights=str(out), epochs=1, cv=2), progress=False)
    assert not any("--weights file" in n for n in clean.metrics["notes"])
    assert "pretrained on other input" not in caplog.text  # 24 px gray there and here
    with caplog.at_level("WARNING", logger="spermhead"):  # a run at another size than the backbone learnt
        train_run(quick_config(fresh, tmp_path / "bigger", weights=str(out), epochs=1, cv=2, image_size=32),
                  progress=False)
    assert "pretrained on other input than this run's (image_size 24 there, 32 here)" in caplog.text


def test_a_model_pretrain_cannot_take_is_named_with_the_ones_it_can() -> None:
    from spermhead.errors import ConfigError
    from spermhead.training.pretrain import headless

    with pytest.raises(ConfigError, match="SeedCNN has no classifier layer to set aside.*spermnet and timm: models"):
        headless(build_model("seed-cnn", num_classes=10, in_chans=1, image_size=32))
    assert headless(build_model("spermnet", num_classes=10, in_chans=1, image_size=32))(torch.zeros(2, 1, 32, 32)).ndim == 2
