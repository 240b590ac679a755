import json
from contextlib import chdir
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.data.readers import load_dataset, normalise_class_name, read_scian
from spermhead.errors import DataError

EXPECTED = {
    "hushem": (216, {"normal": 54, "tapered": 53, "pyriform": 57, "amorphous": 52}),
    "scian-pa": (1132, {"normal": 100, "tapered": 228, "pyriform": 76, "small": 72, "amorphous": 656}),
    "scian-ta": (384, {"normal": 35, "tapered": 69, "pyriform": 7, "small": 11, "amorphous": 262}),
    "scian-pa4": (1060, {"normal": 100, "tapered": 228, "pyriform": 76, "amorphous": 656}),
    "combined": (1276, {"normal": 154, "tapered": 281, "pyriform": 133, "amorphous": 708}),
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", list(EXPECTED))
def test_summary_counts_on_real_data(real_data, name):
    result = CliRunner().invoke(app, ["data", "summary", name, "--data-dir", str(real_data), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    total, classes = EXPECTED[name]
    assert summary["total"] == total
    assert summary["classes"] == classes


@pytest.mark.real_data
def test_combined_keeps_sources_and_scian_groups(real_data):
    table = load_dataset("combined", real_data)
    assert table.source_counts() == {"hushem": 216, "scian": 1060}
    groups = {s.group for s in table.samples if s.source == "scian"}
    assert len(groups) == 6
    assert all(len(s.experts) == 3 for s in table.samples if s.source == "scian")


def test_class_names_normalise():
    assert normalise_class_name("01_Normal") == "normal"
    assert normalise_class_name("04_Amorphous") == "amorphous"
    assert normalise_class_name("Weird") == "Weird"
    # macOS writes "é" decomposed: the same class as the composed one, not a second that prints alike
    assert normalise_class_name("Amorfe\u0301") == normalise_class_name("Amorf\u00e9") == "Amorf\u00e9"


def _scian(tmp_path, lines, files, classes="0 Normal\n1 Tapered\n2 Pyriform\n3 Small\n5 Amorphous\n"):
    root = tmp_path / "SCIAN-MorphoSpermGS"
    (root / "Partial-Agreement-Images").mkdir(parents=True)
    (root / "classes.txt").write_text(classes)
    (root / "PA-expert-annotations.txt").write_text("".join(lines))
    for f in files:
        (root / "Partial-Agreement-Images" / f).write_bytes(b"x")
    return root


def test_scian_id_without_file_fails_loudly(tmp_path):
    root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_02\t0\t0\t0\t0\n"], ["ch00_p1-pl2-sample1-sperm1.tif"])
    with pytest.raises(DataError, match="Sperm_02 has no image file"):
        read_scian(root)


def test_scian_file_without_id_fails_loudly(tmp_path):
    files = ["ch00_p1-pl2-sample1-sperm1.tif", "ch00_p1-pl2-sample1-sperm7.tif"]
    root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_01\t0\t0\t0\t0\n"], files)
    with pytest.raises(DataError, match="without annotation, e.g. ch00_p1-pl2-sample1-sperm7.tif"):
        read_scian(root)


def test_scian_folder_given_as_a_path_names_the_dataset_to_use(tmp_path):
    root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_01\t0\t0\t0\t0\n"], ["ch00_p1-pl2-sample1-sperm1.tif"])
    # read as class folders it would be one class, "Partial-Agreement-Images"
    with pytest.raises(DataError, match=f"name it scian-pa .* with --data-dir {tmp_path}$"):
        load_dataset(str(root))


def test_scian_two_files_for_one_head_and_a_majority_the_votes_do_not_give_are_refused(tmp_path):
    files = ["ch00_p1-pl2-sample1-sperm1.tif", "ch00_p1-pl2-sample01-sperm01.TIFF"]
    root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_01\t0\t0\t0\t0\n"], files)
    with pytest.raises(DataError, match=r"name the same head \(p1-pl2, sample 1, sperm 1\)"):
        read_scian(root)
    for votes in ("0\t1\t2\t5", "0\t0\t0\t5"):  # a three-way tie; a majority column that is not the votes'
        (tmp_path / "SCIAN-MorphoSpermGS").rename(tmp_path / f"old{votes[:5].replace(chr(9), '')}")
        root = _scian(tmp_path, [f"p1-pl2-sample01/Sperm_01\t{votes}\n"], files[:1])
        with pytest.raises(DataError, match=r"PA-expert-annotations.txt:1: majority code 5 is not the code at least two"):
            read_scian(root)


def test_scian_one_head_annotated_twice_and_a_class_code_given_twice_are_refused(tmp_path):
    files = ["ch00_p1-pl2-sample1-sperm1.tif"]
    # sample01/Sperm_01 and sample1/Sperm_1 name one file: two rows, two labels, one head
    root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_01\t0\t0\t0\t0\n", "p1-pl2-sample1/Sperm_1\t5\t5\t5\t5\n"], files)
    with pytest.raises(DataError, match=r"annotations.txt:2: id p1-pl2-sample1/Sperm_1 names the same head as an "
                                        r"earlier line \(ch00_p1-pl2-sample1-sperm1.tif\)"):
        read_scian(root)
    (tmp_path / "SCIAN-MorphoSpermGS").rename(tmp_path / "old")
    # a second "1" would silently read every tapered head as normal
    root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_01\t1\t1\t1\t1\n"], files, classes="0 Normal\n1 Tapered\n1 Normal\n")
    with pytest.raises(DataError, match=r"classes.txt:3: code 1 is given twice \(tapered and Normal\)"):
        read_scian(root)
    # an edited name would be a class of its own ("piriform" beside HuSHeM's pyriform), and one
    # name for two codes would merge their classes
    for n, (classes, said) in enumerate([("0 Normal\n2 Piriform\n", r"classes.txt:2: 'Piriform' is not a WHO "
                                                                        r"class name \(is it 'pyriform' misspelt\?\)"),
                                         ("0 Normal\n1 Vacuole\n", r"classes.txt:2: 'Vacuole' is not a WHO class"),
                                         ("0 Normal\n5 normal\n", r"classes.txt:2: normal is given to two codes")]):
        (tmp_path / "SCIAN-MorphoSpermGS").rename(tmp_path / f"edited{n}")
        root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_01\t0\t0\t0\t0\n"], files, classes=classes)
        with pytest.raises(DataError, match=said):
            read_scian(root)


def test_scian_files_saved_with_a_byte_order_mark_are_read(tmp_path):
    root = _scian(tmp_path, ["\ufeffp1-pl2-sample01/Sperm_01\t1\t1\t1\t1\n"], ["ch00_p1-pl2-sample1-sperm1.tif"],
                  classes="\ufeff0 Normal\n1 Tapered\n")
    table = read_scian(root)
    assert [(s.id, s.label) for s in table.samples] == [("scian/p1-pl2-sample01/Sperm_01", "tapered")]


def test_scian_unknown_majority_code(tmp_path):
    root = _scian(tmp_path, ["p1-pl2-sample01/Sperm_01\t9\t9\t9\t9\n"], ["ch00_p1-pl2-sample1-sperm1.tif"])
    with pytest.raises(DataError, match=r"PA-expert-annotations.txt:1: majority label code 9"):
        read_scian(root)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such folder \(the data folder"):
        load_dataset("hushem", tmp_path / "nowhere")
    (tmp_path / "HuSHeM").mkdir()  # a folder named like a dataset, in the working folder
    with chdir(tmp_path), pytest.raises(DataError, match=r"; ./HuSHeM here is read as class folders when given as ./HuSHeM$"):
        load_dataset("HuSHeM", tmp_path / "nowhere")
    (tmp_path / "ds" / "normal").mkdir(parents=True)
    with pytest.raises(DataError, match="normal: empty class folder"):
        load_dataset(str(tmp_path / "ds"))
    # one level too high (data synth writes OUT/HuSHeM/<classes>): the error says where to point
    for cls in ("01_Normal", "02_Tapered"):
        (tmp_path / "out" / "HuSHeM" / cls).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "out" / "HuSHeM" / cls / "a.png")
    with pytest.raises(DataError, match=r"HuSHeM: holds folders of images \(01_Normal, 02_Tapered\).*pass .*HuSHeM itself"):
        load_dataset(str(tmp_path / "out"))


def test_a_labs_class_folders_kept_by_session_are_read_whole_and_hidden_files_left_out(tmp_path, caplog):
    for cls, files in {"Normal": ["a.png", "session 2/b.PNG", "session 2/day 3/c.tif", "._a.png", ".DS_Store",
                                  ".thumbs/d.png"],
                       "Normall": ["e.png"], "Amorphous": ["f.jpg"], "other": ["g.png"], "Abnormal": ["h.png"]}.items():
        for name in files:
            (tmp_path / "lab" / cls / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "lab" / cls / name).write_bytes(b"x")
    with caplog.at_level("WARNING", logger="spermhead"):
        table = load_dataset(str(tmp_path / "lab"))
        load_dataset(str(tmp_path / "lab"))  # a bench or compare reads it again: said once
    assert sorted(s.id for s in table.samples) == ["Abnormal/h.png", "Amorphous/f.jpg", "Normal/a.png",
                                                   "Normal/session 2/b.PNG", "Normal/session 2/day 3/c.tif",
                                                   "Normall/e.png", "other/g.png"]
    # one typo off a WHO class is trained as a class of its own, so it is pointed out, once;
    # "other" is no near miss, and "Abnormal" is a word of its own
    said = [r.getMessage() for r in caplog.records]
    assert sum("'Normall' is not a WHO class name but looks like 'normal' misspelt" in m for m in said) == 1
    assert len(said) == 1 and table.classes == ["normal", "amorphous", "Abnormal", "Normall", "other"]


def test_a_session_linked_into_a_class_folder_is_read_and_a_link_back_up_does_not_loop(tmp_path):
    (tmp_path / "elsewhere" / "day 2").mkdir(parents=True)
    (tmp_path / "elsewhere" / "day 2" / "b.png").write_bytes(b"x")
    for cls in ("Normal", "Tapered"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        (tmp_path / "lab" / cls / "a.png").write_bytes(b"x")
    (tmp_path / "lab" / "Normal" / "day 2").symlink_to(tmp_path / "elsewhere" / "day 2")
    (tmp_path / "lab" / "Tapered" / "up").symlink_to(tmp_path / "lab" / "Tapered")
    # a hidden link to a visible folder does not take that folder's files with it
    (tmp_path / "lab" / "Normal" / ".prev").symlink_to(tmp_path / "lab" / "Normal" / "day 2")
    table = load_dataset(str(tmp_path / "lab"))
    assert sorted(s.id for s in table.samples) == ["Normal/a.png", "Normal/day 2/b.png", "Tapered/a.png"]


def test_a_link_added_elsewhere_does_not_rename_a_file_already_read(tmp_path):
    for name in ("Normal/a_session/a.png", "Normal/b_session/x.png", "Tapered/t.png"):
        (tmp_path / "lab" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lab" / name).write_bytes(b"x")
    before = sorted(s.id for s in load_dataset(str(tmp_path / "lab")).samples)
    # walked depth-first, the link inside an earlier folder would reach b_session before itself
    (tmp_path / "lab" / "Normal" / "a_session" / "see_also").symlink_to(tmp_path / "lab" / "Normal" / "b_session")
    assert sorted(s.id for s in load_dataset(str(tmp_path / "lab")).samples) == before
    assert "Normal/b_session/x.png" in before


def test_a_broken_link_is_named_when_read_not_dropped(tmp_path):
    from spermhead.errors import ImageError
    from spermhead.preprocess.io import read_image

    for cls in ("Normal", "Tapered"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "lab" / cls / "a.png")
    (tmp_path / "lab" / "Normal" / "z.png").symlink_to(tmp_path / "nowhere.png")
    table = load_dataset(str(tmp_path / "lab"))
    broken = [s for s in table.samples if s.path.name == "z.png"]
    assert len(broken) == 1
    with pytest.raises(ImageError, match="z.png"):
        read_image(broken[0].path)
    result = CliRunner().invoke(app, ["data", "summary", str(tmp_path / "lab")], terminal_width=300)
    assert result.exit_code == 1 and "z.png" in result.output
    # the near-duplicate search, which train runs first, names it too: no FileNotFoundError traceback
    result = CliRunner().invoke(app, ["data", "duplicates", str(tmp_path / "lab")], terminal_width=300)
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0
    assert "z.png" in result.output and "no such file" in result.output


def test_two_hushem_files_with_one_name_are_refused_naming_both(tmp_path):
    for folder in ("01_Normal", "02_Tapered", "03_Pyriform", "04_Amorphous"):
        (tmp_path / "HuSHeM" / folder).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "HuSHeM" / folder / "image_001.bmp")
    Image.new("L", (8, 8)).save(tmp_path / "HuSHeM" / "02_Tapered" / "image_001.png")
    with pytest.raises(DataError, match=r"image_001.png and .*image_001.bmp: same name with another suffix"):
        load_dataset("hushem", tmp_path)


def test_training_and_testing_folders_are_a_split_not_two_classes(tmp_path):
    for split in ("Training", "Validation", "Testing"):
        for cls in ("good", "bad"):
            (tmp_path / "ds" / split / cls).mkdir(parents=True)
            (tmp_path / "ds" / split / cls / "1.png").write_bytes(b"x")
    table = load_dataset(str(tmp_path / "ds"))
    assert sorted(table.classes) == ["bad", "good"]
    assert {s.split for s in table.samples} == {"train", "val", "test"}
    # ids name each part by its role, as runs of earlier versions named them (a finished fold is
    # checked by them on --resume)
    assert {s.id.split("/")[0] for s in table.samples} == {"train", "val", "test"}
    (tmp_path / "ds" / "Testing" / "only-here").mkdir()
    (tmp_path / "ds" / "Testing" / "only-here" / "1.png").write_bytes(b"x")
    # read (evaluate and data summary take every part) and said; training on this split is refused
    from spermhead.config import ProtocolConfig
    from spermhead.errors import ConfigError
    from spermhead.training.protocols import make_folds

    table = load_dataset(str(tmp_path / "ds"))
    assert "only-here" in table.classes
    with pytest.raises(ConfigError, match="ds: its train part has no images of only-here, which its val or test"):
        make_folds(table, ProtocolConfig(kind="folders"), 0, 0.15)


def test_a_dataset_name_summarises_the_named_dataset_not_a_folder_of_that_name_here(tmp_path, monkeypatch):
    for folder in ("01_Normal", "02_Tapered", "03_Pyriform", "04_Amorphous"):
        (tmp_path / "data" / "HuSHeM" / folder).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / "HuSHeM" / folder / "a.bmp")
    (tmp_path / "hushem" / "normal").mkdir(parents=True)  # a folder of that name beside it
    (tmp_path / "hushem" / "normal" / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "summary", "hushem", "--data-dir", "data", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout.splitlines()[0])["skipped"] == []


def test_fixed_split_folders(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("01_Normal", "Tapered"):
            d = tmp_path / "ds" / split / cls
            d.mkdir(parents=True)
            (d / "a.png").write_bytes(b"x")
    table = load_dataset(str(tmp_path / "ds"))
    assert table.has_fixed_split
    assert table.classes == ["normal", "tapered"]
    assert {s.split for s in table.samples} == {"train", "val", "test"}


def test_split_folders_in_other_spellings_and_classes_missing_from_a_split(tmp_path, caplog):
    def make(root, layout):
        for split, classes in layout.items():
            for cls in classes:
                (root / split / cls).mkdir(parents=True)
                Image.new("L", (8, 8)).save(root / split / cls / "a.png")
        (root / "__MACOSX").mkdir()  # a macOS zip's leftover: no class, and no part
        return root

    # "Train/", "valid/" (as other tools write them): the lab's split, not three classes
    both = ("ClassA", "ClassB")
    table = load_dataset(str(make(tmp_path / "caps", {"Train": both, "valid": both, "TEST": both})))
    assert table.has_fixed_split and table.classes == ["ClassA", "ClassB"]
    assert sorted({s.split for s in table.samples}) == ["test", "train", "val"]
    # a class the training part lacks cannot be learnt from the split, one that test/ lacks is not
    # measured: both said
    with caplog.at_level("WARNING", logger="spermhead"):
        load_dataset(str(make(tmp_path / "untaught", {"train": ["ClassA"], "val": both, "test": both})))
    assert "train/ has no images of ClassB, which val/ or test/ hold: a model cannot learn them" in caplog.text
    with caplog.at_level("WARNING", logger="spermhead"):
        load_dataset(str(make(tmp_path / "untested", {"train": both, "val": both, "test": ["ClassA"]})))
    assert "test/ has no images of ClassB: its recall is not measured there" in caplog.text
    plain = make(tmp_path / "plain", {".": both})  # class folders at the top, __MACOSX beside them
    assert load_dataset(str(plain)).classes == ["ClassA", "ClassB"]


@pytest.mark.real_data
def test_partial_agreement_heads_as_extras_leave_every_total_agreement_head_out(real_data):
    from spermhead.data.extra import pool_extra_training

    ta = load_dataset("scian-ta", real_data)
    pooled, report = pool_extra_training(ta, ["scian-pa"], str(real_data))
    info = report["scian-pa"]
    assert info["dataset_duplicates"] == 384 and info["kept"] == 1132 - 384 - info["near_duplicates"]
    own = {s.path.resolve() for s in ta.samples}
    extras = pooled.samples[len(ta):]
    # the PA-only heads left out are those that show a TA head again (data/duplicates.py)
    from spermhead.data.duplicates import near_duplicate_groups, signatures

    pa = load_dataset("scian-pa", real_data)
    in_ta = [s.path.resolve() in own for s in pa.samples]
    twins = {i for g in near_duplicate_groups(signatures([s.path for s in pa.samples]))
             if any(in_ta[j] for j in g) for i in g if not in_ta[i]}
    assert info["near_duplicates"] == len(twins) > 0
    assert not {pa.samples[i].path.resolve() for i in twins} & {s.path.resolve() for s in extras}
    assert not own & {s.path.resolve() for s in extras}
    assert all(s.id.startswith("extra/scian-pa/") for s in extras)


def test_summary_names_the_files_training_would_stop_on(tmp_path):
    for cls in ("normal", "amorphous"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        Image.new("L", (16, 16), 90).save(tmp_path / "lab" / cls / "ok.png")
    (tmp_path / "lab" / "normal" / "empty.png").write_bytes(b"")
    (tmp_path / "lab" / "amorphous" / "[notes].png").write_text("not an image")  # brackets: no markup
    result = CliRunner().invoke(app, ["data", "summary", str(tmp_path / "lab")], terminal_width=300)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "lab:4images" in "".join(said.split())  # the title wraps
    assert "2 of 4 images cannot be used (train would stop on them; evaluate and predict leave them out)" in said
    assert "empty.png" in said and "[notes].png" in said
    listed = CliRunner().invoke(app, ["data", "summary", str(tmp_path / "lab"), "--json"])
    assert sorted(Path(u["path"]).name for u in json.loads(listed.stdout)["unusable"]) == ["[notes].png", "empty.png"]


def test_summary_names_files_passed_over_for_their_suffix(tmp_path):
    for cls in ("normal", "tapered"):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "ds" / cls / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "ds" / "normal" / "b.gif")
    (tmp_path / "ds" / "SYNTHETIC.txt").write_text("rendered")  # data synth's own marker is no missed image
    result = CliRunner().invoke(app, ["data", "summary", str(tmp_path / "ds")], terminal_width=300)
    assert result.exit_code == 0 and "1 file(s) passed over for their suffix, e.g." in result.output
    assert "b.gif" in result.output
    as_json = CliRunner().invoke(app, ["data", "summary", str(tmp_path / "ds"), "--json"])
    assert json.loads(as_json.stdout.splitlines()[0])["skipped"][0].endswith("b.gif")


def test_summary_warns_of_a_folder_with_one_class(tmp_path):
    (tmp_path / "lab" / "normal").mkdir(parents=True)
    Image.new("L", (16, 16), 90).save(tmp_path / "lab" / "normal" / "ok.png")
    result = CliRunner().invoke(app, ["data", "summary", str(tmp_path / "lab")], terminal_width=300)
    assert "only one class has images; train needs at least two" in result.output


def test_ctrl_c_says_what_becomes_of_the_work(monkeypatch):
    import spermhead.data.readers as readers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(readers, "load_dataset", interrupted)
    summary = CliRunner().invoke(app, ["data", "summary", "hushem"])
    assert summary.exit_code == 130 and "interrupted; files it had finished are kept" in summary.output
    # Ctrl-C during a fit (Lightning's own exit) is test_training.py's


def test_data_preview_shows_the_images_the_recipe_trains_on(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spermhead.preprocess.preview as preview
    from spermhead.cli import app
    from spermhead.data.synthetic import write_synthetic
    from spermhead.training.recipes import DATASET_RECIPES

    write_synthetic(tmp_path / "data", "hushem", n_per_class=2, seed=0)
    seen = []
    monkeypatch.setattr(preview, "contact_sheet", lambda table, cfg, out, **kw: seen.append(cfg) or out)
    runner = CliRunner()
    for extra in ([], ["--image-size", "32", "--color", "rgb"]):
        result = runner.invoke(app, ["data", "preview", "hushem", "--data-dir", str(tmp_path / "data"), "--out",
                                     str(tmp_path / "grid.png"), *extra])
        assert result.exit_code == 0, result.output
    assert (seen[0].image_size, seen[0].color) == (DATASET_RECIPES["hushem"]["image_size"], "gray")  # HuSHeM's 48
    assert (seen[1].image_size, seen[1].color) == (32, "rgb")
    # a name no image format is saved as is refused before any image is read, not after the sheet
    for name, said in (("grid.xyz", "no image format is written as .xyz"), ("grid", "no suffix")):
        for command in (["preview", "hushem", "--out"], ["duplicates", "hushem", "--sheet"]):
            result = runner.invoke(app, ["data", *command, str(tmp_path / name), "--data-dir", str(tmp_path / "data")])
            text = " ".join(result.output.split())
            assert result.exit_code == 2 and f"{tmp_path / name}: {said}" in text, text
    assert len(seen) == 2


def test_a_table_with_one_id_twice_is_a_data_error_naming_it():
    from spermhead.data.samples import Sample, SampleTable
    from spermhead.errors import DataError

    rows = [Sample("a/1.png", Path("1.png"), "normal", "lab"), Sample("a/1.png", Path("2.png"), "tapered", "lab")]
    with pytest.raises(DataError, match=r"dataset 'lab': duplicate sample ids \['a/1.png'\]"):
        SampleTable("lab", rows)


def test_a_file_given_as_the_dataset_is_named_as_a_file(tmp_path):
    from spermhead.data.readers import load_dataset
    from spermhead.errors import DataError

    image = tmp_path / "image_001.BMP"
    image.write_bytes(b"BM")
    with pytest.raises(DataError, match="image_001.BMP: is a file, not a folder"):
        load_dataset(str(image))


def test_extra_sources_that_share_images_add_each_once(tmp_path):
    """Two extra sources holding the same bytes under other paths (or one holding a copy twice)
    weighted that image twice in training; each is now added once and counted as a repeat."""
    from spermhead.data.extra import pool_extra_training

    def write(root, files):
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)

    write(tmp_path / "own", {"normal/a.png": b"a", "tapered/b.png": b"b"})
    write(tmp_path / "one", {"normal/c.png": b"c", "tapered/d.png": b"d", "tapered/d copy.png": b"d"})
    write(tmp_path / "two", {"normal/c.png": b"c", "normal/e.png": b"e", "tapered/a.png": b"a"})
    table = load_dataset(str(tmp_path / "own"))
    pooled, report = pool_extra_training(table, [str(tmp_path / "one"), str(tmp_path / "two")], None, 0.0)
    assert sorted(s.path.read_bytes() for s in pooled.samples[2:]) == [b"c", b"d", b"e"]
    one, two = report[str(tmp_path / "one")], report[str(tmp_path / "two")]
    assert (one["kept"], one["extra_repeats"], one["dataset_duplicates"]) == (2, 1, 0)
    assert (two["kept"], two["extra_repeats"], two["dataset_duplicates"]) == (1, 1, 1)


def _images(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(folder / name)


def test_images_the_reader_does_not_take_are_said_and_system_folders_are_none(tmp_path, caplog):
    """A file beside the class folders, one in a folder beside train/val/test, or an extra folder
    in HuSHeM was left out with no word; a NAS's @eaDir thumbnails were read as heads."""
    lab = tmp_path / "lab"
    _images(lab, "normal/a.png", "normal/b.png", "tapered/c.png", "stray.png",
            "normal/@eaDir/a.png/SYNOFILE_THUMB_M.jpg", "tapered/#recycle/old.png")
    with caplog.at_level("WARNING", logger="spermhead"):
        table = load_dataset(str(lab))
    assert sorted(s.id for s in table.samples) == ["normal/a.png", "normal/b.png", "tapered/c.png"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"{lab}: 1 image file(s) outside its class folders are not part of the dataset, e.g. {lab / 'stray.png'}" \
        in said
    caplog.clear()
    split = tmp_path / "split"
    _images(split, *(f"{part}/{c}/{part}{c}.png" for part in ("train", "val", "test") for c in ("normal", "tapered")),
            "train/loose.png", "pyriform/x.png")
    with caplog.at_level("WARNING", logger="spermhead"):
        assert len(load_dataset(str(split))) == 6
    assert "2 image file(s) outside its train, val and test class folders" in caplog.text
    caplog.clear()
    data = tmp_path / "data"
    _images(data / "HuSHeM", *(f"{f}/image_001.bmp" for f in ("01_Normal", "02_Tapered", "03_Pyriform",
                                                               "04_Amorphous")), "01_Normal/session2/image_009.bmp")
    with caplog.at_level("WARNING", logger="spermhead"):
        assert len(load_dataset("hushem", data)) == 4
    assert "1 image file(s) outside the top level of its four class folders" in caplog.text


def test_a_folder_named_as_another_class_inside_a_class_folder_is_said(tmp_path, caplog):
    lab = tmp_path / "lab"
    _images(lab, "Normal/a.png", "Normal/Tapered/b.png", "Normal/session 2/c.png", "Tapered/d.png")
    with caplog.at_level("WARNING", logger="spermhead"):
        table = load_dataset(str(lab))
    assert [s.label for s in table.samples].count("normal") == 3  # read as the outer class, as before
    assert "holds a folder named as another class (Tapered); its images are read as normal" in caplog.text
    assert "session 2" not in caplog.text
