"""Near-duplicate images (the same head twice) are found, kept on one side of every split, and
kept out of extra training images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.config import ProtocolConfig
from spermhead.data.duplicates import keep_together, near_duplicate_groups, signature, signatures
from spermhead.data.readers import load_dataset
from spermhead.data.synthetic import render_head
from spermhead.training.protocols import make_folds

CLASSES = ["normal", "tapered", "pyriform", "amorphous"]


def _heads(root: Path, n_per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(render_head(name, "hushem", rng)[0]).save(root / name / f"{name}_{i:03d}.png")
    return root


def _copies(src: Path) -> dict[str, np.ndarray]:
    """The same photograph re-saved as a smaller JPEG, and taken again: a pixel to the side,
    dimmer, with fresh sensor noise."""
    rgb = np.asarray(Image.open(src).convert("RGB"))
    small = Image.fromarray(rgb).resize((rgb.shape[1] * 3 // 4, rgb.shape[0] * 3 // 4), Image.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    moved = np.pad(rgb, ((0, 0), (1, 0), (0, 0)), mode="edge")[:, :-1].astype(float)
    noise = np.random.default_rng(0).normal(0, 4, moved.shape)
    again = np.clip(0.9 * moved + 12 + noise, 0, 255).astype(np.uint8)
    return {"jpeg": np.asarray(Image.open(buf).convert("RGB")), "again": again}


def test_copies_of_a_head_are_found_and_distinct_heads_are_not(tmp_path):
    data = _heads(tmp_path / "d")
    paths = sorted(data.rglob("*.png"))
    sigs = signatures(paths)
    assert near_duplicate_groups(sigs) == []  # 48 different rendered heads
    for copy in _copies(paths[5]).values():
        both = np.vstack([sigs, signature(copy)[None]])
        assert near_duplicate_groups(both) == [[5, len(paths)]]
    assert near_duplicate_groups(sigs, threshold=0) == []  # 0 turns the search off
    flat = np.stack([signature(np.full((24, 24, 3), v, np.uint8)) for v in (60, 60, 180)])
    assert not flat.any() and near_duplicate_groups(flat) == []  # no head, nothing to match


def test_a_large_photo_is_shrunk_before_its_signature_and_still_matches_its_crop(monkeypatch):
    import spermhead.data.duplicates as dup

    rgb = render_head("normal", "hushem", np.random.default_rng(3))[0]
    big = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * 40, rgb.shape[0] * 40), Image.BICUBIC))
    exact = big.astype(np.float32).mean(axis=2)  # what the thumbnail would be without the shrink
    import cv2

    thumb = cv2.resize(exact, (32, 32), interpolation=cv2.INTER_AREA).ravel()
    thumb = (thumb - thumb.mean()) / np.linalg.norm(thumb - thumb.mean())
    assert float(signature(big) @ thumb) > 0.999
    assert float(signature(big) @ signature(rgb)) > 0.98  # the copy at its own size: a near-duplicate
    # and the first resize takes the photo as stored (uint8), not as a float copy of every pixel
    resized = []
    real_resize = dup.cv2.resize
    monkeypatch.setattr(dup.cv2, "resize", lambda img, *a, **k: resized.append((img.dtype, img.shape)) or real_resize(img, *a, **k))
    signature(big)
    assert resized[0] == (np.uint8, big.shape) and resized[1][0] == np.float32 and max(resized[1][1]) <= 256


def test_keep_together_moves_only_the_groups():
    part = np.array([0, 1, 2, 3, 4, 0, 1])
    assert keep_together(part, [[1, 4], [2, 5, 6]]).tolist() == [0, 1, 2, 3, 1, 2, 2]
    assert keep_together(part, []).tolist() == part.tolist()


@pytest.fixture(scope="module")
def with_twins(tmp_path_factory) -> Path:
    """Rendered heads plus a second photograph of six of them, each beside its original."""
    data = _heads(tmp_path_factory.mktemp("twins") / "d", n_per_class=15, seed=1)
    for name in CLASSES[:3]:
        for i in (0, 7):
            src = data / name / f"{name}_{i:03d}.png"
            Image.fromarray(_copies(src)["again"]).save(data / name / f"{name}_{i:03d}_again.png")
    return data


@pytest.mark.parametrize("kind", ["cv", "random"])
def test_splits_keep_each_head_on_one_side(with_twins, kind):
    table = load_dataset(str(with_twins))
    twins = near_duplicate_groups(signatures([s.path for s in table.samples]))
    assert len(twins) == 6 and all(len(g) == 2 for g in twins)
    protocol = ProtocolConfig(kind=kind, folds=5)
    for seed in range(4):
        for fold in make_folds(table, protocol, seed, val_fraction=0.2):
            side = {int(i): part for part, rows in (("train", fold.train), ("val", fold.val), ("test", fold.test))
                    for i in rows}
            assert len(side) == len(table)  # every image on exactly one side
            assert all(side[a] == side[b] for a, b in twins)
    # the usual split (no search) puts some twins on different sides, so the check above has teeth
    usual = [f for s in range(4) for f in make_folds(table, ProtocolConfig(kind=kind, folds=5, near_duplicates=0), s, 0.2)]
    assert any((a in f.test) != (b in f.test) for f in usual for a, b in twins)


def test_folds_without_duplicates_are_the_usual_stratified_ones(tmp_path):
    from sklearn.model_selection import StratifiedKFold

    from tests.test_training import write_separable

    table = load_dataset(str(write_separable(tmp_path / "sep", n_per_class=10)))
    y = np.asarray(table.label_indices)
    usual = [test for _, test in StratifiedKFold(3, shuffle=True, random_state=2).split(y, y)]
    for threshold in (0.98, 0):
        folds = make_folds(table, ProtocolConfig(kind="cv", folds=3, near_duplicates=threshold), 2, 0.2)
        assert [f.test.tolist() for f in folds] == [t.tolist() for t in usual]
    for kind in ("cv", "random"):
        on = make_folds(table, ProtocolConfig(kind=kind, folds=3), 2, 0.2)
        off = make_folds(table, ProtocolConfig(kind=kind, folds=3, near_duplicates=0), 2, 0.2)
        for a, b in zip(on, off, strict=True):
            assert all((getattr(a, p) == getattr(b, p)).all() for p in ("train", "val", "test"))


def test_extra_images_that_copy_the_datasets_own_are_left_out(tmp_path):
    from spermhead.data.extra import pool_extra_training

    own = _heads(tmp_path / "own", n_per_class=6, seed=2)
    extra = _heads(tmp_path / "extra", n_per_class=6, seed=3)  # other heads
    src = own / "tapered" / "tapered_002.png"
    Image.fromarray(_copies(src)["jpeg"]).save(extra / "tapered" / "resaved.jpg")
    table = load_dataset(str(own))
    pooled, report = pool_extra_training(table, [str(extra)], None)
    info = report[str(extra)]
    assert info["near_duplicates"] == 1 and info["kept"] == 24 and len(pooled) == 48
    assert not any(s.id.endswith("resaved") for s in pooled.samples)
    _, report = pool_extra_training(table, [str(extra)], None, near_duplicates=0)
    assert report[str(extra)]["kept"] == 25


def test_data_duplicates_command_lists_groups_and_draws_them(with_twins, tmp_path):
    sheet = tmp_path / "dups.png"
    res = CliRunner().invoke(app, ["data", "duplicates", str(with_twins), "--json", "--sheet", str(sheet)])
    assert res.exit_code == 0, res.output
    found = json.loads(res.output.splitlines()[0])
    assert len(found["groups"]) == 6 and found["images"] == 66
    assert all({r["id"].replace("_again", "") for r in g} == {g[0]["id"]} for g in found["groups"])
    assert Image.open(sheet).size[1] > 6 * 96
    off = CliRunner().invoke(app, ["data", "duplicates", str(with_twins), "--threshold", "0"])
    said = " ".join(off.output.split())  # the console wraps a long folder name
    assert off.exit_code == 0 and "--threshold 0 turns the search off" in said  # not "no near-duplicates"


def test_a_duplicate_sheet_with_no_groups_shows_its_whole_title(tmp_path):
    from PIL import ImageDraw

    from spermhead.preprocess.preview import _font, duplicate_sheet

    table = load_dataset(str(_heads(tmp_path / "a_dataset_with_a_long_folder_name", n_per_class=2, seed=1)))
    sheet = Image.open(duplicate_sheet(table, [], np.zeros((len(table), 4)), tmp_path / "none.png")).convert("L")
    title = f"{table.name}: 0 near-duplicate groups"
    assert ImageDraw.Draw(sheet).textlength(title, font=_font(13)) + 8 < sheet.width
    assert np.asarray(sheet)[:, -6:].min() == 255  # no text runs into the right edge


def test_configs_written_before_the_search_keep_their_folds(tmp_path):
    import yaml

    from spermhead.config import RunConfig, load_config, save_config

    save_config(RunConfig(), tmp_path / "new.yaml")
    assert load_config(tmp_path / "new.yaml").protocol.near_duplicates == 0.98
    old = yaml.safe_load((tmp_path / "new.yaml").read_text())
    del old["protocol"]["near_duplicates"]  # a run directory from an earlier version
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "old.yaml").protocol.near_duplicates == 0.0


def test_a_set_of_copies_is_refused_with_a_way_out(tmp_path):
    from spermhead.errors import ConfigError

    src = _heads(tmp_path / "one", n_per_class=1, seed=4)
    data = tmp_path / "copies"
    for name in CLASSES:  # every class is one head, saved five times
        (data / name).mkdir(parents=True)
        for i in range(5):
            (data / name / f"{i}.png").write_bytes((src / name / f"{name}_000.png").read_bytes())
    table = load_dataset(str(data))
    with pytest.raises(ConfigError, match="near-duplicates 0"):
        make_folds(table, ProtocolConfig(kind="cv", folds=5), 0, 0.2)
    assert len(make_folds(table, ProtocolConfig(kind="cv", folds=5, near_duplicates=0), 0, 0.2)) == 5


def test_blocks_find_the_same_groups_as_one_matrix(monkeypatch):
    import spermhead.data.duplicates as dup

    rng = np.random.default_rng(0)
    sigs = np.stack([signature(rng.normal(size=(32, 32)).astype(np.float32)) for _ in range(50)])
    sigs = np.vstack([sigs, sigs[[3, 40, 7]]])  # rows 50-52 copy rows 3, 40 and 7
    whole = near_duplicate_groups(sigs)
    monkeypatch.setattr(dup, "BLOCK", 7)
    assert near_duplicate_groups(sigs) == whole == [[3, 50], [7, 52], [40, 51]]
    assert np.allclose(dup.nearest(sigs[:20], sigs[30:]), (sigs[:20] @ sigs[30:].T).max(1))


def test_a_sheet_that_cannot_be_written_is_named(with_twins, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    for args in (["data", "duplicates", str(with_twins), "--sheet", str(blocker / "dups.png")],
                 ["data", "preview", str(with_twins), "--out", str(blocker / "grid.png")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "cannot write there" in res.output  # said before any image is read
        assert str(blocker) in res.output.replace("\n", "")
    assert blocker.read_text() == "a file, not a folder"


def test_sheets_already_written_are_kept_unless_overwrite_is_given(with_twins, tmp_path):
    for args in (["data", "duplicates", str(with_twins), "--sheet"], ["data", "preview", str(with_twins), "--out"]):
        kept = tmp_path / f"{args[1]}.png"
        kept.write_bytes(b"an earlier sheet")
        res = CliRunner().invoke(app, [*args, str(kept)])
        assert res.exit_code == 2 and "exists; pass --overwrite to replace it" in " ".join(res.output.split())
        assert kept.read_bytes() == b"an earlier sheet"
        res = CliRunner().invoke(app, [*args, str(kept), "--overwrite"])
        assert res.exit_code == 0, res.output
        assert kept.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
