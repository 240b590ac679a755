import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.data import synthetic
from spermhead.data.readers import load_dataset
from spermhead.data.synthetic import LABELS, render_head, write_synthetic
from spermhead.errors import ConfigError, DataError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _shape(info: dict) -> dict[str, float]:
    """Measures of the rendered head mask, in the head's own frame (from the angle it reports)."""
    mask = info["mask"].astype(np.uint8)
    m = cv2.moments(mask, binaryImage=True)
    lam = np.linalg.eigvalsh(np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]]))
    ys, xs = np.nonzero(mask)
    a = np.deg2rad(info["angle_deg"])
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    along = (xs - cx) * np.cos(a) - (ys - cy) * np.sin(a)  # + towards the tail
    across = (xs - cx) * np.sin(a) + (ys - cy) * np.cos(a)
    lo, hi = along.min(), along.max()
    third = (hi - lo) / 3

    def breadth(sel: np.ndarray) -> float:
        return float(np.ptp(across[sel])) if sel.any() else 0.0

    # the ellipse with the same second moments: an oval head fills it, a lobed one does not
    ellipse = np.zeros_like(mask)
    axes = (4 * np.sqrt(lam[1] / m["m00"]), 4 * np.sqrt(lam[0] / m["m00"]))
    cv2.ellipse(ellipse, ((cx, cy), axes, -info["angle_deg"]), 1, -1)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    return {
        "elongation": float(np.sqrt(lam[1] / lam[0])),
        "area": float(m["m00"]),
        "taper": breadth(along > hi - third) / breadth(along < lo + third),  # back width / front width
        "solidity": cv2.contourArea(outline) / max(cv2.contourArea(cv2.convexHull(outline)), 1.0),
        "misfit": 1 - float((ellipse & mask).sum() / (ellipse | mask).sum()),
        "orientation": float(np.rad2deg(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))),
    }


@pytest.fixture(scope="module")
def hushem_measures() -> dict[str, list[dict]]:
    rng = np.random.default_rng(7)
    out = {}
    for label in LABELS:
        out[label] = []
        for _ in range(40):
            _, info = render_head(label, "hushem", rng)
            out[label].append({**_shape(info), **{k: info[k] for k in ("angle_deg", "acrosome_fraction")}})
    return out


def _median(measures: list[dict], key: str) -> float:
    return float(np.median([m[key] for m in measures]))


@pytest.mark.parametrize("style", ["hushem", "scian"])
@pytest.mark.parametrize("label", LABELS)
def test_render_returns_an_rgb_crop_and_its_geometry(style, label):
    img, info = render_head(label, style, np.random.default_rng(0))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] == img.shape[1]
    if style == "hushem":
        assert img.shape[:2] == (131, 131)
        bg = np.median(img[[0, -1]].reshape(-1, 3), axis=0)
        assert bg[0] > bg[1] and bg[2] > bg[1]  # pink: red and blue over green
    else:
        assert 30 <= img.shape[0] <= 35
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    assert info["label"] == label and info["style"] == style
    assert -180 < info["angle_deg"] <= 180
    assert info["mask"].shape == img.shape[:2] and info["mask"].any()
    # the head is darker than the background it sits on
    grey = img.mean(axis=2)
    assert grey[info["mask"]].mean() < np.median(grey) - 20


def test_render_is_a_function_of_the_generator_state():
    a, _ = render_head("pyriform", "hushem", np.random.default_rng(3))
    b, _ = render_head("pyriform", "hushem", np.random.default_rng(3))
    c, _ = render_head("pyriform", "hushem", np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_unknown_class_or_style_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown class"):
        render_head("round", "hushem", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="unknown synthetic style"):
        render_head("normal", "sepia", np.random.default_rng(0))


def test_classes_differ_as_who_describes_them(hushem_measures):
    med = {label: {k: _median(v, k) for k in ("elongation", "area", "taper", "solidity", "misfit")}
           for label, v in hushem_measures.items()}
    normal, tapered, pyriform = med["normal"], med["tapered"], med["pyriform"]
    assert 1.3 <= normal["elongation"] <= 1.8
    assert tapered["elongation"] > 2.0 > normal["elongation"]
    assert min(m["elongation"] for m in hushem_measures["tapered"]) > max(
        1.9, np.percentile([m["elongation"] for m in hushem_measures["normal"]], 90))
    assert pyriform["taper"] < 0.8 * normal["taper"]  # narrows towards the midpiece
    amorphous_misfit = [m["misfit"] for m in hushem_measures["amorphous"]]
    normal_misfit = [m["misfit"] for m in hushem_measures["normal"]]
    assert np.median(amorphous_misfit) > 2 * np.median(normal_misfit)  # far from any oval
    assert np.percentile(amorphous_misfit, 25) > np.percentile(normal_misfit, 95)
    assert med["amorphous"]["solidity"] < normal["solidity"] - 0.015  # lobes and dents
    assert med["small"]["area"] < 0.6 * normal["area"]
    assert max(m["area"] for m in hushem_measures["small"]) < np.median([m["area"] for m in hushem_measures["normal"]])
    assert 1.3 <= med["small"]["elongation"] <= 1.8  # small is a normal shape, only smaller
    fractions = [m["acrosome_fraction"] for m in hushem_measures["normal"]]
    assert min(fractions) >= 0.38 and max(fractions) <= 0.72


def test_the_reported_angle_is_the_mask_major_axis(hushem_measures):
    errors = [abs((m["orientation"] + m["angle_deg"] + 90) % 180 - 90)  # mask is y-down, angle y-up
              for ms in hushem_measures.values() for m in ms]
    assert np.percentile(errors, 95) < 4


@pytest.mark.parametrize("angle", [0.0, 60.0, 135.0, -100.0, 180.0])
def test_the_tail_leaves_in_the_reported_direction(angle):
    """Just beyond the back end (tail side) is darker than just beyond the front."""
    darker = 0
    rng = np.random.default_rng(int(angle) + 1000)
    for _ in range(10):
        img, info = render_head("normal", "hushem", rng, angle_deg=angle)
        grey = img.mean(axis=2)
        cx, cy = info["center"]
        a = np.deg2rad(info["angle_deg"])
        d = info["length_px"] / 2 + 6
        back = grey[round(cy - d * np.sin(a)), round(cx + d * np.cos(a))]
        front = grey[round(cy + d * np.sin(a)), round(cx - d * np.cos(a))]
        darker += back < front - 10
    assert darker >= 9


def test_scian_heads_lie_roughly_horizontal():
    rng = np.random.default_rng(1)
    angles = [render_head(label, "scian", rng)[1]["angle_deg"] for label in LABELS for _ in range(20)]
    off = [min(abs(a), 180 - abs(a)) for a in angles]
    assert max(off) <= 6
    tails_left = sum(abs(a) > 90 for a in angles)
    assert 20 < tails_left < 80  # both ways round


@pytest.mark.parametrize("style", ["hushem", "scian"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, style):
    a = _files(write_synthetic(tmp_path / "a", style, 3, seed=5).samples[0].path.parents[2])
    b = _files(write_synthetic(tmp_path / "b", style, 3, seed=5).samples[0].path.parents[2])
    c = _files(write_synthetic(tmp_path / "c", style, 3, seed=6).samples[0].path.parents[2])
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.lower().endswith((".bmp", ".tif"))]
    assert all(a[k] != c[k] for k in images)


def test_hushem_layout_loads_with_the_real_reader(tmp_path):
    table = write_synthetic(tmp_path, "hushem", 4, seed=0)
    loaded = load_dataset("hushem", data_dir=tmp_path)
    assert [s.id for s in loaded.samples] == [s.id for s in table.samples]
    assert loaded.class_counts() == {"normal": 4, "tapered": 4, "pyriform": 4, "amorphous": 4}
    assert (tmp_path / "HuSHeM" / "03_Pyriform" / "image_004.BMP").is_file()
    with Image.open(tmp_path / "HuSHeM" / "01_Normal" / "image_001.BMP") as im:
        assert (im.format, im.mode, im.size) == ("BMP", "RGB", (131, 131))


def test_scian_layout_loads_with_the_real_reader(tmp_path):
    write_synthetic(tmp_path, "scian", 12, seed=0)
    root = tmp_path / "SCIAN-MorphoSpermGS"
    table = load_dataset("scian-pa", data_dir=tmp_path)
    assert table.class_counts() == dict.fromkeys(["normal", "tapered", "pyriform", "small", "amorphous"], 12)
    assert (root / "classes.txt").read_text() == "0 Normal\n1 Tapered\n2 Pyriform\n3 Small\n5 Amorphous\n"
    lines = (root / "PA-expert-annotations.txt").read_text().splitlines()
    assert len(lines) == 60 and lines[0].startswith("p1-pl2-sample01/Sperm_01\t")
    assert all(len(line.split("\t")) == 5 for line in lines)
    assert (root / "Partial-Agreement-Images" / "ch00_p1-pl2-sample1-sperm1.tif").is_file()
    assert len({s.group for s in table.samples}) >= 3
    for s in table.samples:
        with Image.open(s.path) as im:
            assert im.format == "TIFF" and im.mode == "L" and 30 <= im.size[0] == im.size[1] <= 35
        assert len(s.experts) == 3 and sum(e == s.label for e in s.experts) >= 2
    assert any(len(set(s.experts)) > 1 for s in table.samples)  # experts do disagree
    assert 0 < len(load_dataset("scian-ta", data_dir=tmp_path)) < len(table)
    assert len(load_dataset("scian-pa4", data_dir=tmp_path)) == 48


def test_refuses_to_overwrite_unless_asked(tmp_path):
    write_synthetic(tmp_path, "hushem", 2, seed=0)
    with pytest.raises(DataError, match="HuSHeM: already exists"):
        write_synthetic(tmp_path, "hushem", 3, seed=1)
    assert len(load_dataset("hushem", data_dir=tmp_path)) == 8  # untouched
    write_synthetic(tmp_path, "hushem", 3, seed=1, overwrite=True)
    assert len(load_dataset("hushem", data_dir=tmp_path)) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HuSHeM"]  # no temporary folders left
    (tmp_path / "empty" / "HuSHeM").mkdir(parents=True)
    assert len(write_synthetic(tmp_path / "empty", "hushem", 1, seed=0)) == 4  # an empty folder is fine
    # --overwrite replaces synthetic heads only: ./data is also where a lab keeps the real images
    real = tmp_path / "lab" / "HuSHeM" / "01_Normal"
    real.mkdir(parents=True)
    (real / "image_001.BMP").write_bytes(b"a real head")
    with pytest.raises(DataError, match="not synthetic"):
        write_synthetic(tmp_path / "lab", "hushem", 1, seed=0, overwrite=True)
    assert (real / "image_001.BMP").read_bytes() == b"a real head"
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DataError, match="notes.csv: is a file, not a folder"):
        write_synthetic(tmp_path / "notes.csv", "hushem", 1, seed=0)


@pytest.mark.parametrize("style, mine", [("hushem", "01_Normal/notes.txt"), ("scian", "labels-by-me.xlsx")])
def test_overwrite_keeps_files_data_synth_did_not_write(tmp_path, style: str, mine: str):
    target = tmp_path / ("HuSHeM" if style == "hushem" else "SCIAN-MorphoSpermGS")
    write_synthetic(tmp_path, style, 2, seed=0)
    (target / ".DS_Store").write_bytes(b"a file browser's")  # goes with the folder
    write_synthetic(tmp_path, style, 3, seed=1, overwrite=True)  # its own files alone: replaced
    (target / mine).write_text("a user's own notes")
    with pytest.raises(DataError, match=f"holds {re.escape(str(Path(mine)))}, which data synth did not write"):
        write_synthetic(tmp_path, style, 2, seed=2, overwrite=True)
    assert (target / mine).read_text() == "a user's own notes"


def test_a_failed_write_leaves_no_dataset_behind(tmp_path, monkeypatch):
    calls = []

    def failing(label, style, rng, angle_deg=None):
        calls.append(label)
        if len(calls) > 5:
            raise RuntimeError("disk full")
        return render_head(label, style, rng, angle_deg)

    monkeypatch.setattr(synthetic, "render_head", failing)
    with pytest.raises(RuntimeError):
        write_synthetic(tmp_path, "scian", 4, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        write_synthetic(tmp_path, "hushem", 0, seed=0)
    with pytest.raises(ConfigError):
        write_synthetic(tmp_path, "scian-pa", 2, seed=0)


def test_cli_synth_then_summary(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synth", str(tmp_path), "--style", "scian", "--n-per-class", "2",
                                 "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 10 synthetic images" in result.output
    assert f"spermhead data summary scian-pa --data-dir {tmp_path}" in result.output
    result = runner.invoke(app, ["data", "summary", "scian-pa", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["classes"] == dict.fromkeys(
        ["normal", "tapered", "pyriform", "small", "amorphous"], 2)
    again = runner.invoke(app, ["data", "synth", str(tmp_path), "--style", "scian", "--n-per-class", "2"])
    assert again.exit_code == 2 and "already exists and is not empty; pass --overwrite" in " ".join(again.output.split())
    none = runner.invoke(app, ["data", "synth", str(tmp_path / "none"), "--n-per-class", "0"])
    assert none.exit_code == 2 and "--n-per-class 0: must be at least 1" in none.output, none.output
    assert runner.invoke(app, ["data", "synth", str(tmp_path), "--style", "scian", "--n-per-class", "2",
                               "--overwrite"]).exit_code == 0
    bad = runner.invoke(app, ["data", "synth", str(tmp_path), "--style", "sepia"])
    assert bad.exit_code == 2 and "unknown synthetic style" in bad.output
