"""Readers for the datasets as their authors distribute them, and for plain class folders."""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from spermhead.data.samples import WHO_CLASSES, Sample, SampleTable, printable
from spermhead.errors import DataError

IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}
HUSHEM_DIR = "HuSHeM"
SCIAN_DIR = "SCIAN-MorphoSpermGS"
HUSHEM_FOLDERS = ("01_Normal", "02_Tapered", "03_Pyriform", "04_Amorphous")
log = logging.getLogger(__name__)

_SCIAN_ID = re.compile(r"^(?P<group>p\d+-pl\d+)-sample(?P<sample>\d+)/Sperm_(?P<sperm>\d+)$")
_SCIAN_FILE = re.compile(
    r"^ch\d+_(?P<group>p\d+-pl\d+)-sample(?P<sample>\d+)-sperm(?P<sperm>\d+)\.tiff?$", re.I
)


def default_data_dir() -> Path:
    return Path(os.environ.get("SPERMHEAD_DATA", "data"))


def normalise_class_name(folder: str) -> str:
    """`01_Normal` -> `normal`; names that are not WHO classes are kept as they are, in Unicode's
    composed form (macOS writes "é" as e + accent: one class, not two that print alike), with
    bytes that are not UTF-8 (an old Windows share's "Cabe\xe7a") written as escapes: a class
    name goes into plots, JSON answers and bundles, which cannot hold them raw."""
    folder = unicodedata.normalize("NFC", printable(folder))
    stripped = _bare_name(folder)
    return stripped if stripped in WHO_CLASSES else folder


def _bare_name(folder: str) -> str:
    """`01_Normal` -> `normal`: the folder's name without a leading number, in lower case."""
    return re.sub(r"^\d+[\s_.\-]*", "", folder).strip().lower()


# Folders that systems, not labs, make beside images: macOS's zip leaves __MACOSX/, a Synology
# NAS puts @eaDir/ (thumbnails of every image) in each folder, and its recycle bin is #recycle/
SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "#recycle"})


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in SYSTEM_FOLDERS


def _visible_files(folder: Path, nested: bool) -> list[Path]:
    """Files, sorted; hidden ones (".DS_Store", macOS's "._x.png" copies, anything in a hidden
    or system folder) are left out."""
    found = _walk(folder) if nested else folder.iterdir()
    # a broken link is kept, so reading it names it ("no such file") rather than it vanishing;
    # sorted by parts, as POSIX compares paths, so Windows' case-blind order gives the same folds
    return sorted((p for p in found if (p.is_file() or (p.is_symlink() and not p.exists()))
                   and not any(_hidden(part) for part in p.relative_to(folder).parts)),
                  key=lambda p: p.parts)


def _walk(folder: Path) -> list[Path]:
    """Every path under `folder`, following linked subfolders (a lab links in a session kept
    elsewhere; rglob passes those over silently) but entering each real folder once, so a link
    back up does not loop.

    The real tree is walked first and the links after it, in sorted order, so a file in the real
    tree keeps its real path as its id wherever links to its folder sit: adding a link never
    renames it. (A file reached only through links takes the first link's path, which a new link
    sorting before it can change.) Hidden folders are left out before walking, or a hidden link
    would take its target's files with it."""
    seen: set[str] = set()
    found: list[Path] = []
    links: list[Path] = []
    pending = [folder]
    while pending:
        for top, dirs, files in os.walk(pending.pop(0)):  # does not enter links: they queue below
            real = os.path.realpath(top)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            links += [Path(top, d) for d in dirs if os.path.islink(Path(top, d))]
            found += [Path(top, name) for name in dirs + files]
        if not pending:
            pending, links = sorted(links, key=lambda p: p.parts), []
    return found


def list_images(folder: Path, *, nested: bool = False) -> list[Path]:
    """Image files by suffix, sorted; hidden ones are not images. `nested`: in subfolders too (a
    lab's class folder kept by session or date)."""
    return [p for p in _visible_files(folder, nested) if p.suffix.lower() in IMAGE_SUFFIXES]


def skipped_files(folder: Path) -> list[Path]:
    """The visible files under `folder` (recursively) that `list_images` passes over for their
    suffix: a GIF, a WebP, a file with no suffix. Said, not silently dropped. `data synth`'s own
    SYNTHETIC.txt is no image a user missed."""
    return [p for p in _visible_files(folder, True) if p.suffix.lower() not in IMAGE_SUFFIXES
            and p.name != "SYNTHETIC.txt"]


def _warn_outside(root: Path, read: list[Path], where: str) -> None:
    """Image files under `root` that the reader did not take (one beside the class folders, in a
    folder of another name, in a class folder's subfolder): said, not silently left out."""
    taken = {os.path.realpath(p) for p in read}
    if outside := [p for p in list_images(root, nested=True) if os.path.realpath(p) not in taken]:
        log.warning("%s: %d image file(s) outside %s are not part of the dataset, e.g. %s", root, len(outside),
                    where, outside[0])


def _require_dir(path: Path, what: str) -> Path:
    if path.is_file():
        raise DataError(f"{path}: is a file, not a folder ({what})")
    if not path.is_dir():
        raise DataError(f"{path}: missing folder ({what})")
    return path


def read_hushem(root: Path) -> SampleTable:
    root = _require_dir(root, "HuSHeM, with 01_Normal ... 04_Amorphous")
    samples = []
    for folder in HUSHEM_FOLDERS:
        class_dir = _require_dir(root / folder, "HuSHeM class folder")
        images = list_images(class_dir)
        if not images:
            raise DataError(f"{class_dir}: empty class folder, no images")
        label = normalise_class_name(folder)
        stems: dict[str, Path] = {}
        for p in images:
            if p.stem in stems:  # image_001.png beside image_001.bmp: one id for two heads
                raise DataError(f"{p} and {stems[p.stem]}: same name with another suffix, so one sample id; "
                                "keep one")
            stems[p.stem] = p
            samples.append(Sample(f"hushem/{folder}/{p.stem}", p, label, "hushem"))
    _warn_outside(root, [s.path for s in samples], "the top level of its four class folders")
    return SampleTable("hushem", samples, synthetic=_rendered(root))


def read_scian_codes(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path}: missing file (SCIAN class codes)")
    codes = {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):  # a BOM is not a code
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{n}: expected '<code> <class name>', got {line!r}")
        if parts[0] in codes:  # the later line would silently relabel the earlier class
            raise DataError(f"{path}:{n}: code {parts[0]} is given twice ({codes[parts[0]]} and "
                            f"{parts[1].strip()}); keep one")
        name = normalise_class_name(parts[1].strip().lower())
        # SCIAN's classes are the WHO five: another name would be a class of its own (kept apart
        # from HuSHeM's in `combined`), and one name twice would merge two classes
        if name not in WHO_CLASSES:
            like = next((c for c in WHO_CLASSES if _one_edit_apart(name, c)), None)
            raise DataError(f"{path}:{n}: {parts[1].strip()!r} is not a WHO class name"
                            + (f" (is it '{like}' misspelt?)" if like else f" ({', '.join(WHO_CLASSES)})"))
        if name in codes.values():
            raise DataError(f"{path}:{n}: {name} is given to two codes; keep one")
        codes[parts[0]] = name
    return codes


def read_scian(root: Path, *, agreement: str = "partial", drop: tuple[str, ...] = ()) -> SampleTable:
    """SCIAN-MorphoSpermGS: majority labels (partial) or unanimous ones (total)."""
    root = _require_dir(root, "SCIAN-MorphoSpermGS")
    image_dir = _require_dir(root / "Partial-Agreement-Images", "SCIAN images")
    annotations = root / "PA-expert-annotations.txt"
    if not annotations.is_file():
        raise DataError(f"{annotations}: missing file (SCIAN expert annotations)")
    codes = read_scian_codes(root / "classes.txt")

    files: dict[tuple[str, int, int], Path] = {}
    for p in list_images(image_dir):
        m = _SCIAN_FILE.match(p.name)
        if not m:
            raise DataError(f"{p}: file name does not follow ch00_<group>-sampleN-spermN.tif")
        key = (m["group"], int(m["sample"]), int(m["sperm"]))
        if key in files:  # e.g. sample1 and sample01: one would silently stand for the other
            raise DataError(f"{p} and {files[key]} name the same head ({key[0]}, sample {key[1]}, sperm {key[2]}); "
                            "keep one")
        files[key] = p

    samples, used = [], set()
    for n, line in enumerate(annotations.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{annotations}:{n}"
        if len(fields) != 5:
            raise DataError(f"{where}: expected an id and 4 codes, got {line!r}")
        ident, *votes = fields
        m = _SCIAN_ID.match(ident)
        if not m:
            raise DataError(f"{where}: id {ident!r} is not like p1-pl2-sample01/Sperm_01")
        key = (m["group"], int(m["sample"]), int(m["sperm"]))
        if key not in files:
            raise DataError(f"{where}: id {ident} has no image file in {image_dir}")
        if key in used:  # e.g. sample01 and sample1: one head, two rows that may disagree
            raise DataError(f"{where}: id {ident} names the same head as an earlier line ({files[key].name}); "
                            "keep one")
        used.add(key)
        # Single experts use codes 4 and 6 that classes.txt lacks; only the majority must be known.
        experts = tuple(codes.get(v, f"code{v}") for v in votes[:3])
        if votes[3] not in codes:
            raise DataError(f"{where}: majority label code {votes[3]} is not in classes.txt")
        # the file's majority column is checked against the three votes it sums up
        if max(votes[:3].count(v) for v in votes[:3]) < 2 or votes[:3].count(votes[3]) < 2:
            raise DataError(f"{where}: majority code {votes[3]} is not the code at least two of the votes "
                            f"{' '.join(votes[:3])} agree on")
        label = codes[votes[3]]
        if agreement == "total" and len(set(votes[:3])) != 1:
            continue
        if label in drop:
            continue
        samples.append(Sample(f"scian/{ident}", files[key], label, "scian", m["group"], experts))
    _warn_outside(root, list(files.values()), f"the top level of {image_dir.name}/")
    orphans = sorted(str(files[k].name) for k in set(files) - used)
    if orphans:
        raise DataError(f"{image_dir}: {len(orphans)} image(s) without annotation, e.g. {orphans[0]}")
    name = {"partial": "scian-pa", "total": "scian-ta"}[agreement]
    return SampleTable(name + ("4" if drop else ""), samples, synthetic=_rendered(root))


def _rendered(root: Path) -> bool:
    """Whether `spermhead data synth` wrote this dataset (it leaves SYNTHETIC.txt at its root)."""
    return (root / "SYNTHETIC.txt").is_file()


def read_class_folders(root: Path) -> SampleTable:
    """A folder of class subfolders, or of train/val/test each holding class subfolders."""
    root = _require_dir(root, "dataset")
    if (root / "PA-expert-annotations.txt").is_file():  # its labels are in that file, not in folders
        raise DataError(f"{root}: is SCIAN-MorphoSpermGS, whose labels are in PA-expert-annotations.txt; name it "
                        f"scian-pa (or scian-ta, scian-pa4) with --data-dir {root.parent}")
    found = split_folders(root)
    if found:
        if len(found) != 3:
            missing = sorted({"train", "val", "test"} - set(found))
            raise DataError(f"{root}: has {'/'.join(d.name for d in found.values())} but lacks {'/'.join(missing)}")
        samples = []
        for split in ("train", "val", "test"):
            samples += _class_folder_samples(found[split], root.name, split)
        check_split_classes(root, samples, {split: folder.name for split, folder in found.items()})
    else:
        samples = _class_folder_samples(root, root.name, "")
    _warn_outside(root, [s.path for s in samples], "its train, val and test class folders" if found else
                  "its class folders")
    return SampleTable(root.name, samples, synthetic=_rendered(root))


# What file browsers leave in a folder of their own accord: it goes with the folder
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def os_litter(name: str) -> bool:
    """A file browser's own file (macOS's "._x" copies too), not a user's."""
    return name in OS_LITTER or name.startswith("._")


SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def split_folders(root: Path) -> dict[str, Path]:
    """The dataset's train/val/test folders, named in any case ("Train/"), with "training/",
    "valid/", "validation/" and "testing/" as other tools write them (read as class folders,
    "Training/" and "Testing/" would silently become two classes)."""
    found: dict[str, Path] = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and (split := SPLIT_NAMES.get(d.name.lower())) is not None:
            if split in found:
                raise DataError(f"{root}: {found[split].name}/ and {d.name}/ are both its {split} part; keep one")
            found[split] = d
    return found


def check_split_classes(root: Path, samples: list[Sample], names: dict[str, str] | None = None) -> None:
    """A class a part lacks is said: one the training part lacks cannot be learnt from this split
    (`train` refuses it there, while `evaluate` and `data` still read every part), and one that
    val/ or test/ lacks leaves its recall there unmeasured. `names`: each part's folder as named
    ("Training"), for the messages."""
    names = {"train": "train", "val": "val", "test": "test", **(names or {})}
    by_split = {split: {s.label for s in samples if s.split == split} for split in ("train", "val", "test")}
    every = set().union(*by_split.values())
    if lacking := sorted(every - by_split["train"]):
        log.warning("%s: %s/ has no images of %s, which %s/ or %s/ hold: a model cannot learn them from this split",
                    root, names["train"], ", ".join(lacking), names["val"], names["test"])
    for split in ("val", "test"):
        if lacking := sorted(every - by_split[split]):
            log.warning("%s: %s/ has no images of %s: %s", root, names[split], ", ".join(lacking),
                        "its recall is not measured there" if split == "test" else
                        "checkpoint choice and the balanced point rest on the other classes")


def _class_folder_samples(folder: Path, source: str, split: str) -> list[Sample]:
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not _hidden(d.name))
    if not class_dirs:
        raise DataError(f"{folder}: no class subfolders")
    samples = []
    for d in class_dirs:
        inner = [c.name for c in sorted(d.iterdir()) if c.is_dir() and not _hidden(c.name)
                 and list_images(c, nested=True)]
        if not list_images(d) and any(_class_like(c) for c in inner):
            # one level too high, e.g. the folder that `data synth` wrote HuSHeM/ into
            raise DataError(f"{d}: holds folders of images ({', '.join(inner[:4])}), not images; if "
                            f"those are the classes, pass {d} itself as the dataset")
        images = list_images(d, nested=True)
        if not images:
            raise DataError(f"{d}: empty class folder, no images")
        label = normalise_class_name(d.name)
        _warn_if_misspelt(d, label)
        # "Normal/Tapered/": its heads are read as the outer class, which may not be what was meant
        if others := [c for c in inner if normalise_class_name(c) != label and (
                normalise_class_name(c) in {*WHO_CLASSES, *(normalise_class_name(o.name) for o in class_dirs)})]:
            log.warning("%s: holds a folder named as another class (%s); its images are read as %s", d,
                        ", ".join(others), label)
        # the part's role, not its folder's name ("Training/"): ids are what finished folds are checked by
        prefix = f"{split}/" if split else ""
        samples += [Sample(f"{prefix}{d.name}/{p.relative_to(d).as_posix()}", p, label, source, split=split)
                    for p in images]
    return samples


def _class_like(name: str) -> bool:
    return normalise_class_name(name) in WHO_CLASSES or name.lower() in SPLIT_NAMES


def _warn_if_misspelt(folder: Path, label: str) -> None:
    """A folder named one typo off a WHO class ("Normall", "Piriform") would train as a class of
    its own; said once per folder. "Abnormal" is a word of its own, two letters off."""
    if label in WHO_CLASSES or folder in _WARNED_NAMES:
        return
    for name in WHO_CLASSES:
        if _one_edit_apart(_bare_name(label), name):
            _WARNED_NAMES.add(folder)
            log.warning("%s: '%s' is not a WHO class name but looks like '%s' misspelt; it is read as a class "
                        "of its own (rename the folder if it is meant to be %s)", folder, label, name, name)
            return


_WARNED_NAMES: set[Path] = set()


def _one_edit_apart(a: str, b: str) -> bool:
    """One letter inserted, dropped, changed, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def _read_combined(base: Path) -> SampleTable:
    """The seed report's set: HuSHeM with SCIAN-PA's four shared classes ("small" dropped)."""
    hushem, scian = read_hushem(base / HUSHEM_DIR), read_scian(base / SCIAN_DIR, drop=("small",))
    return SampleTable("combined", hushem.samples + scian.samples, synthetic=hushem.synthetic or scian.synthetic)


# Each named dataset's reader, given the folder holding HuSHeM/ and SCIAN-MorphoSpermGS/. A new
# public set is one entry here.
NAMED_READERS: dict[str, Callable[[Path], SampleTable]] = {
    "hushem": lambda base: read_hushem(base / HUSHEM_DIR),
    "scian-pa": lambda base: read_scian(base / SCIAN_DIR),
    "scian-ta": lambda base: read_scian(base / SCIAN_DIR, agreement="total"),
    "scian-pa4": lambda base: read_scian(base / SCIAN_DIR, drop=("small",)),
    "combined": _read_combined,
}
NAMED_DATASETS = tuple(NAMED_READERS)


def load_dataset(name: str, data_dir: Path | str | None = None) -> SampleTable:
    """A named dataset under `data_dir`, or a path to class folders."""
    key = name.lower()
    if key in NAMED_DATASETS:
        base = Path(data_dir) if data_dir is not None else default_data_dir()
        if not base.is_dir():
            # `train HuSHeM` beside a folder of that name reads the named dataset: say how to get the folder
            here = f"; ./{name} here is read as class folders when given as ./{name}" if Path(name).is_dir() else ""
            raise DataError(
                f"{base}: no such folder (the data folder: pass --data-dir or set SPERMHEAD_DATA to the folder "
                f"holding {HUSHEM_DIR}/ and {SCIAN_DIR}/; ./data by default){here}"
            )
        return NAMED_READERS[key](base)
    path = Path(name)
    if not path.exists():
        raise DataError(f"{name}: not a dataset name ({', '.join(NAMED_DATASETS)}) nor a folder")
    return read_class_folders(path)
