"""ONNX export: dynamic batch, probabilities within 1e-4 of torch, and the onnx backend of
the predictor agreeing with the torch one on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.data.synthetic import render_head
from spermhead.errors import SpermheadError
from spermhead.serving import onnx_export
from spermhead.serving.onnx_export import PARITY_TOLERANCE, bundle_fingerprint, export_onnx, onnx_fingerprint
from spermhead.serving.predictor import ONNX_NAME, Predictor, untrained_bundle

CLASSES = ("normal", "tapered", "pyriform", "small", "amorphous")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two members: the exported graph must hold the whole ensemble average.
    return untrained_bundle(tmp_path_factory.mktemp("bundle"), "spermnet", classes=CLASSES,
                            image_size=32, members=2, tta=True, width=8)


def test_export_parity_and_dynamic_batch(bundle: Path, tmp_path: Path) -> None:
    report = export_onnx(bundle, tmp_path / "m.onnx")
    assert report.max_abs_diff <= PARITY_TOLERANCE
    assert report.exporter in ("torchscript", "dynamo")
    assert set(report.batch_sizes) >= {1, 7}  # more than one batch size ran
    assert onnx_fingerprint(tmp_path / "m.onnx") == bundle_fingerprint(bundle)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert float(props["spermhead.parity_max_abs_diff"]) == pytest.approx(report.max_abs_diff, rel=1e-2, abs=1e-12)

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    shape = session.get_inputs()[0].shape
    assert not isinstance(shape[0], int)  # symbolic batch dimension
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((5, 1, 32, 32), np.float32)})[0]
    assert out.shape == (5, len(CLASSES))


def test_parity_failure_is_loud(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "parity", lambda *a, **k: (0.5, (1,)))
    with pytest.raises(SpermheadError, match="differ from torch"):
        export_onnx(bundle, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    # a failed export again keeps the file it would have replaced, and leaves nothing beside it
    (tmp_path / "m.onnx").write_bytes(b"the good export of last week")
    with pytest.raises(SpermheadError, match="differ from torch"):
        export_onnx(bundle, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"the good export of last week"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_where_it_cannot_write_is_an_error_naming_the_file(bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle on a read-only shared drive, a full disk: one line naming the file, no traceback
    (os.access cannot foresee either: a root user passes it, a full disk is writable)."""
    import onnx

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    result = CliRunner().invoke(app, ["export", "--model", str(bundle)])
    assert result.exit_code == 2, result.output
    assert f"{bundle / ONNX_NAME}: cannot write the ONNX file there (No space left on device)" in " ".join(
        result.output.split()) and "Traceback" not in result.output


def test_export_cli_then_onnx_backend_matches_torch(bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "--model", str(bundle), "--onnx", str(bundle / ONNX_NAME)])
    assert result.exit_code == 0, result.output
    assert "max |p_onnx - p_torch|" in result.output
    again = CliRunner().invoke(app, ["export", "--model", str(bundle)])  # the bundle's own file, made again
    assert again.exit_code == 0 and (bundle / ONNX_NAME).is_file(), again.output

    paths = []
    for i in range(5):
        rgb, _ = render_head(CLASSES[i], "scian", np.random.default_rng(i))
        paths.append(tmp_path / f"h{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    with Predictor(bundle) as pt, Predictor(bundle, backend="onnx") as po:
        assert po.onnx_path == bundle / ONNX_NAME  # found beside the bundle, not re-exported
        import torch  # --threads sets torch's count; onnxruntime took every core

        assert po.model.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
        a = np.array([[r["probabilities"][c] for c in CLASSES] for r in pt.predict_files(paths)])
        b = np.array([[r["probabilities"][c] for c in CLASSES] for r in po.predict_files(paths)])
    assert np.abs(a - b).max() <= PARITY_TOLERANCE


def test_export_to_a_folder_is_refused_by_name(bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "--model", str(bundle), "--onnx", str(tmp_path)])
    assert result.exit_code == 2 and f"--onnx {tmp_path}: is a folder; give a file name" in result.output, result.output
    assert not list(tmp_path.iterdir())
    # another file already there is kept unless --overwrite; the bundle's own model.onnx is remade
    kept = tmp_path / "precious.onnx"
    kept.write_text("keep me")
    refused = CliRunner().invoke(app, ["export", "--model", str(bundle), "--onnx", str(kept)])
    assert refused.exit_code == 2 and "exists; pass --overwrite" in " ".join(refused.output.split())
    assert kept.read_text() == "keep me"
    replaced = CliRunner().invoke(app, ["export", "--model", str(bundle), "--onnx", str(kept), "--overwrite"])
    assert replaced.exit_code == 0 and onnx_fingerprint(kept) == bundle_fingerprint(bundle), replaced.output


def test_export_of_a_mistyped_model_makes_nothing(bundle: Path, tmp_path: Path) -> None:
    # a missing folder, and a bundle's model.json named instead of its folder: said as predict
    # says them, and no folder is made for the --onnx file on the way
    for given, words in [(tmp_path / "typo", "no such folder"), (tmp_path / "typo2" / "model.json", "no such folder"),
                         (bundle / "model.json", f"a file; give its folder, {bundle}")]:
        result = CliRunner().invoke(app, ["export", "--model", str(given)])
        assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
    assert not list(tmp_path.iterdir()) and not (bundle / "model.json" / ONNX_NAME).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["export", "--model", str(empty)])
    assert result.exit_code == 2 and "model.json: missing" in result.output and not list(empty.iterdir())


def test_stale_onnx_is_not_used(bundle: Path, tmp_path: Path, caplog) -> None:
    other = untrained_bundle(tmp_path / "other", "spermnet", classes=CLASSES, image_size=32, width=8, seed=1)
    export_onnx(bundle, other / ONNX_NAME, check=False)  # exported from different weights
    with caplog.at_level("WARNING", logger="spermhead"), Predictor(other, backend="onnx") as po:
        assert po.onnx_path != other / ONNX_NAME  # exported afresh to a temporary file
        assert onnx_fingerprint(po.onnx_path) == bundle_fingerprint(other)
    # said as what it may be: an edit of model.json alone also makes the file stale
    assert "exported from another state of this bundle (its weights or model.json" in caplog.text
    caplog.clear()
    # with none beside the bundle, the temporary export is said, with how to keep one
    (other / ONNX_NAME).unlink()
    with caplog.at_level("WARNING", logger="spermhead"), Predictor(other, backend="onnx") as po:
        assert po.onnx_path.parent != other
    assert f"no {ONNX_NAME} in {other}: exporting a temporary one" in caplog.text
    # a damaged file is called damaged, not another model's export
    (other / ONNX_NAME).write_bytes(b"\x08garbage" * 50)
    caplog.clear()
    with caplog.at_level("WARNING", logger="spermhead"), Predictor(other, backend="onnx") as po:
        assert po.onnx_path.parent != other
    assert "cannot be read as an ONNX model" in caplog.text and "other weights" not in caplog.text
