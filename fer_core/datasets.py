"""What the config's data means: the class list, each folder's class, and each file's split and dataset.

``resolve`` turns a TrainConfig's ``data`` (one root, or a list of roots each with its own mapping),
``classes``, ``exclude``, ``split`` and ``group`` into a ``Dataset``: the class names in label order and, per
split, each dataset's ``SplitFiles``. A root with train/ and val/ keeps its own split; a root that holds the
class folders itself is split here (stratified, seeded, a group kept whole in one split). Every problem is
one line (``DataError`` / ``ConfigError``) before a pixel is decoded. ``match_folders`` is the one rule that
puts a folder name onto a class: the mapping given, else the name itself (case, punctuation and the common
expression synonyms aside); ``evaluate --data`` maps a foreign dataset with it.

The seam: files and names only (no pixels, no torch). Decoding a ``Dataset``'s files is
``decode_cache.load_dataset``'s.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import SplitFiles, list_images, visible_folders
from .errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
DATA_KEYS = ("data", "classes", "exclude", "split", "group")  # the TrainConfig keys this module reads
DEFAULT_SPLIT = {"val": 0.15, "test": 0.15, "seed": 0}
_ENTRY_KEYS = ("root", "name", "classes", "exclude", "split", "group", "weight")

# The names expression datasets give one class (FER2013, AffectNet, CK+, RAF-DB, JAFFE, ExpW): a folder
# called any of them matches a class called any other, so `Anger/` evaluates as `angry` with no flag.
_SYNONYMS = (
    ("angry", "anger", "mad"),
    ("disgust", "disgusted", "disgusting"),
    ("fear", "fearful", "afraid", "scared"),
    ("happy", "happiness", "joy", "smile", "smiling"),
    ("neutral", "neutrality"),
    ("sad", "sadness", "unhappy"),
    ("surprise", "surprised"),
    ("contempt", "contemptuous"),
)
_CANONICAL = {name: group[0] for group in _SYNONYMS for name in group}


def name_key(name: str) -> str:
    """The form two names are compared in: lower case, letters and digits only, synonyms made one."""
    plain = re.sub(r"[^0-9a-z]", "", name.casefold())
    return _CANONICAL.get(plain, plain)


@dataclass(frozen=True)
class Source:
    """One dataset root as the config names it, its folders resolved onto the classes."""

    name: str  # short, unique: per-dataset metrics and records use it
    root: Path
    folders: dict  # folder name -> class name, in sorted folder order; excluded folders absent
    excluded: tuple[str, ...]
    split: dict | None  # {val, test, seed} when the product splits the root; None: its own train/ val/
    group: str  # regular expression over file names: one match, one split (flat roots only)
    weight: float  # sampling weight of its images relative to the others' (1: as many as it has)


@dataclass
class Dataset:
    """The resolved data: ``classes`` in label order, ``sources``, and ``files[split][source name]``."""

    classes: tuple[str, ...]
    sources: tuple[Source, ...]
    files: dict  # split -> {source name -> SplitFiles}; "test" only for the sources that have one

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if self.files.get(s))

    def count(self, split: str) -> int:
        return sum(len(f.paths) for f in self.files.get(split, {}).values())

    def aliases(self) -> dict[str, list[str]]:
        """Per class, the folder names it was trained from (a checkpoint keeps them for ``match_folders``)."""
        out: dict[str, set] = {c: set() for c in self.classes}
        for s in self.sources:
            for folder, c in s.folders.items():
                out[c].add(folder)
        return {c: sorted(v) for c, v in out.items()}

    def record(self) -> dict:
        """What an experiment or a run keeps of it: classes, sources and every split's file list."""
        return {
            "classes": list(self.classes),
            "sources": [
                {
                    "name": s.name,
                    "root": str(s.root),
                    "folders": s.folders,
                    "excluded": list(s.excluded),
                    "split": s.split,
                    "group": s.group,
                    "weight": s.weight,
                }
                for s in self.sources
            ],
            "files": {
                split: {
                    name: [[os.path.relpath(p, f.root), int(label)] for p, label in zip(f.paths, f.labels)]
                    for name, f in by_source.items()
                }
                for split, by_source in self.files.items()
            },
        }

    def describe(self) -> list[str]:
        """Lines for the plan: the classes, then per dataset where its images come from and how many."""
        lines = [f"classes ({len(self.classes)}): {', '.join(self.classes)}"]
        for s in self.sources:
            counts = ", ".join(
                f"{split} {len(self.files[split][s.name].paths)}"
                for split in self.splits
                if s.name in self.files[split]
            )
            how = (
                f"split here (val {s.split['val']:g}, test {s.split['test']:g}, seed {s.split['seed']}"
                + (f", group {s.group!r}" if s.group else "")
                + ")"
                if s.split
                else "its own train/ val/" + (" test/" if s.name in self.files.get("test", {}) else "")
            )
            renamed = [f"{f}->{c}" for f, c in s.folders.items() if f != c]
            lines.append(
                f"{s.name}: {s.root} ({how}; {counts}"
                + (f"; weight {s.weight:g}" if len(self.sources) > 1 else "")
                + (f"; folders {', '.join(renamed)}" if renamed else "")
                + (f"; excluded {', '.join(s.excluded)}" if s.excluded else "")
                + ")"
            )
        return lines


# --- the config's keys ----------------------------------------------------------------------------------


def entries(data: Any, key: str = "data") -> list[dict]:
    """A config's ``data`` (or ``eval_data``) as a list of entries {root, name?, classes?, exclude?, split?, group?, weight?}."""
    if isinstance(data, (str, os.PathLike)):
        return [{"root": str(data)}] if str(data) else []
    if isinstance(data, Mapping):  # one entry
        data = [data]
    if not isinstance(data, Sequence) or not data:
        raise ConfigError(
            f"key '{key}' must be a dataset folder or a list of them, got {data!r}; e.g. {key}: [../fer2013, {{root: ../affectnet, classes: {{angry: Anger}}}}]"
        )
    out = []
    for i, item in enumerate(data):
        if isinstance(item, (str, os.PathLike)):
            item = {"root": str(item)}
        if not isinstance(item, Mapping) or not item.get("root"):
            raise ConfigError(f"key '{key}[{i}]' must be a folder or a mapping with 'root', got {item!r}")
        unknown = sorted(set(item) - set(_ENTRY_KEYS))
        if unknown:
            raise ConfigError(
                f"key '{key}[{i}].{unknown[0]}' is not known; an entry takes {', '.join(_ENTRY_KEYS)}"
            )
        out.append(dict(item))
    return out


def data_roots(data: Any) -> list[str]:
    """The dataset folders a config's ``data`` names (nothing checked but its shape)."""
    return [e["root"] for e in entries(data)]


def absolute(data: Any, key: str = "data") -> Any:
    """``data`` (a folder, or a list of folders and entries) with every root made absolute: trials run in
    folders of their own, and a resume compares them. A list comes back as a list of mappings."""
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).expanduser().resolve())
    return [{**e, "root": str(Path(e["root"]).expanduser().resolve())} for e in entries(data, key)]


def _names(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"key '{where}' must be a folder name or a list of them, got {value!r}")
    return [str(v) for v in value]


def parse_classes(value, where: str = "classes", least: int = 2) -> tuple[list[str], dict[str, list[str]]]:
    """``classes`` as (class names in order, {class: folders named for it}); [] and {} when not given.

    A list names classes whose folders are called the same; a mapping maps each class onto one folder or a
    list of them (``negative: [angry, disgust, fear, sad]``). ``least``: the fewest classes it may name (one
    dataset of several may map onto fewer than all)."""
    if value in (None, "", [], {}):
        return [], {}
    if isinstance(value, Mapping):
        names = [str(k) for k in value]
        mapping = {
            str(k): _names(v if v not in (None, []) else str(k), f"{where}.{k}") for k, v in value.items()
        }
    elif isinstance(value, Sequence) and not isinstance(value, str):
        names = _names(value, where)
        mapping = {}
    else:
        raise ConfigError(
            f"key '{where}' must be a list of class names or a mapping of class -> folders, got {value!r}"
        )
    seen: dict[str, str] = {}
    for c in names:
        k = name_key(c)
        if k in seen:
            raise ConfigError(
                f"key '{where}': classes '{seen[k]}' and '{c}' collide (names are compared without case, "
                "punctuation or synonyms); merge them into one class"
            )
        seen[k] = c
    owner: dict[str, str] = {}
    for c, folders in mapping.items():
        for f in folders:
            if f in owner and owner[f] != c:
                raise ConfigError(
                    f"key '{where}': folder '{f}' is mapped to both '{owner[f]}' and '{c}'; map it to one class"
                )
            owner[f] = c
    if len(names) < least:
        raise ConfigError(f"key '{where}' names {len(names)} class; a classifier needs 2 or more")
    return names, mapping


def parse_split(value, where: str = "split") -> dict:
    """``split`` as {val, test, seed}, the defaults filled in, checked."""
    if value in (None, "", {}):
        return dict(DEFAULT_SPLIT)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"key '{where}' must be a mapping such as {{val: 0.15, test: 0.15, seed: 0}}, got {value!r}"
        )
    unknown = sorted(set(value) - set(DEFAULT_SPLIT))
    if unknown:
        raise ConfigError(f"key '{where}.{unknown[0]}' is not known; split takes val, test and seed")
    out = {**DEFAULT_SPLIT, **value}
    for k in ("val", "test"):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ConfigError(f"key '{where}.{k}' must be a fraction in [0, 1), got {v!r}")
    if out["val"] <= 0:
        raise ConfigError(f"key '{where}.val' must be above 0: a run needs a validation split")
    if out["val"] + out["test"] >= 1:
        raise ConfigError(
            f"key '{where}': val {out['val']} + test {out['test']} leave nothing to train on; lower them"
        )
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], int):
        raise ConfigError(f"key '{where}.seed' must be an integer, got {out['seed']!r}")
    return {"val": float(out["val"]), "test": float(out["test"]), "seed": int(out["seed"])}


# --- folders onto classes -------------------------------------------------------------------------------


def match_folders(
    folders: Sequence[str], classes: Sequence[str], mapping: Mapping[str, Sequence[str]] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Each folder's class: the one ``mapping`` names it for, else the class of the same name (``name_key``).

    Returns ({folder: class} in ``folders`` order, the folders that match no class)."""
    named = {f: c for c, fs in (mapping or {}).items() for f in fs}
    by_key = {name_key(c): c for c in classes}
    out, unmatched = {}, []
    for f in folders:
        c = named.get(f) or by_key.get(name_key(f))
        if c is None:
            unmatched.append(f)
        else:
            out[f] = c
    return out, unmatched


def _layout(root: Path, where: str) -> tuple[bool, Path]:
    """(whether ``root`` holds its own splits, the folder holding the class folders)."""
    if not root.is_dir():
        raise DataError(
            f"{root}: dataset folder not found; give {where} a folder holding train/ and val/, or the class folders themselves"
        )
    if (root / "train").is_dir():
        if not (root / "val").is_dir():
            raise DataError(
                f"{root / 'val'}: split folder missing; add val/ beside train/ (each with the class folders), "
                "or give a folder of class folders and let split: make val and test"
            )
        return True, root / "train"
    if (root / "val").is_dir() or (root / "test").is_dir():
        raise DataError(f"{root / 'train'}: split folder missing; a dataset with val/ needs train/ beside it")
    return False, root


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _source(entry: dict, where: str, common: list[str], mapping: dict, exclude, split, group) -> tuple:
    """One ``data`` entry resolved: (its ``Source``, the class names in label order)."""
    root = Path(entry["root"]).expanduser()
    has_splits, base = _layout(root, where)
    folders = visible_folders(base)
    if not folders:
        raise DataError(f"{base}: holds no class folder; put each class's images in a folder named after it")
    several = where != "data"  # one entry of a list: its keys are named data[i].KEY, else the top-level KEY
    key = (lambda k: f"{where}.{k}") if several else (lambda k: k)
    excluded = _names(entry.get("exclude", exclude), key("exclude"))
    for f in excluded:
        if f not in folders:
            raise ConfigError(
                f"{base / f}: exclude names folder '{f}', which is not there (folders: {', '.join(folders)}); fix the name"
            )
    kept = [f for f in folders if f not in excluded]
    own = "classes" in entry or not several  # a mapping written for this root: every folder it names exists
    if "classes" in entry:
        own_names, own_mapping = parse_classes(entry["classes"], f"{where}.classes", least=1 if common else 2)
        foreign = [c for c in own_names if common and c not in common]
        if foreign:
            raise ConfigError(
                f"key '{where}.classes' names class '{foreign[0]}', which is not among the classes "
                f"({', '.join(common)}); map its folders onto one of those, or add it to the top-level classes"
            )
        mapping, names = own_mapping or {c: [c] for c in own_names}, common or own_names
    else:
        names = common
    for c, fs in mapping.items():
        for f in fs:
            if f in excluded:
                raise ConfigError(f"{base / f}: folder '{f}' is both mapped to '{c}' and excluded; drop one")
            if own and f not in folders:
                raise ConfigError(
                    f"{base / f}: classes maps '{c}' onto folder '{f}', which is not there "
                    f"(folders: {', '.join(folders)}); fix the name"
                )
    names = names or sorted(kept)  # no class list given: the folders are the classes
    if len(names) < 2:
        raise DataError(f"{base}: {len(names)} class folder; a classifier needs 2 or more classes")
    folder_class, unmatched = match_folders(kept, names, mapping)
    if unmatched:
        raise DataError(
            f"{base / unmatched[0]}: folder '{unmatched[0]}' matches no class ({', '.join(names)}); map it in "
            f"{key('classes')} or add it to {key('exclude')}"
        )
    name = str(entry.get("name") or root.resolve().name)
    if not _NAME.match(name):
        raise ConfigError(
            f"key '{where}.name': {name!r} must be letters, digits, '_', '.' or '-'; give a name"
        )
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ConfigError(f"key '{where}.weight' must be a number above 0, got {weight!r}")
    if has_splits and (entry.get("split") or entry.get("group")):
        raise ConfigError(
            f"{root}: it has its own train/ and val/, so '{where}.split' / '{where}.group' do not apply; drop them"
        )
    split_spec = None if has_splits else parse_split(entry.get("split", split), f"{where}.split")
    group = "" if has_splits else str(entry.get("group", group) or "")
    return Source(name, root, folder_class, tuple(excluded), split_spec, group, float(weight)), names


def resolve(cfg) -> Dataset:
    """The ``Dataset`` a TrainConfig's ``data``, ``classes``, ``exclude``, ``split`` and ``group`` describe.

    Raises:
        ConfigError, DataError: one line naming the key or folder and the fix.
    """
    given = entries(cfg.data)
    if not given:
        raise ConfigError("key 'data' is empty; give a dataset folder (--data PATH)")
    classes, mapping = parse_classes(cfg.classes)
    exclude = _names(cfg.exclude, "exclude")
    sources: list[Source] = []
    for i, entry in enumerate(given):
        where = "data" if len(given) == 1 else f"data[{i}]"
        src, names = _source(entry, where, classes, mapping, exclude, cfg.split, cfg.group)
        classes = classes or names  # the first dataset's classes are everyone's when none are given
        sources.append(src)
    found = {f for s in sources for f in s.folders} | {f for s in sources for f in s.excluded}
    for c, fs in mapping.items():
        if len(sources) > 1 and not set(fs) & found:
            raise ConfigError(
                f"key 'classes.{c}' names folders {', '.join(fs)}, none of which is in any dataset; fix the names"
            )
    names = [s.name for s in sources]
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise ConfigError(f"key 'data': two datasets are named '{dup[0]}'; give one a name: (data[i].name)")
    used = {c for s in sources for c in s.folders.values()}
    unused = [c for c in classes if c not in used]
    if unused:
        raise DataError(
            f"class '{unused[0]}' gets no folder in any dataset ({', '.join(str(s.root) for s in sources)}); "
            "map a folder onto it in classes, or drop it from classes"
        )
    files: dict[str, dict[str, SplitFiles]] = {s: {} for s in SPLITS}
    label = {c: i for i, c in enumerate(classes)}
    for src in sources:
        parts = _scan_splits(src, label) if src.split is None else _split_flat(src, label)
        for split, f in parts.items():
            files[split][src.name] = f
    dataset = Dataset(tuple(classes), tuple(sources), {s: v for s, v in files.items() if v})
    _check_every_class(dataset)
    return dataset


def resolve_for(
    classes: Sequence[str], aliases: Mapping[str, Sequence[str]], data: Any, mapping=None, trained=()
) -> tuple[Dataset, dict[str, int]]:
    """``data`` labelled with a trained model's ``classes``, to evaluate it: each folder goes to the class
    ``mapping`` (class -> folders, e.g. ``--classes``) or ``aliases`` (the folders each class was trained
    from) name it for, else to the class of its name (``match_folders``); a folder that matches none is
    left out. A root the model was trained on (``trained``: its record's sources) is split as it was then;
    another root without train/ is all "test" (the model saw none of it).

    Returns:
        (the Dataset, {left-out folder: its images}).

    Raises:
        DataError: no folder of ``data`` matches a class of the model.
    """
    mapping = {c: _names(v, f"classes.{c}") for c, v in (mapping or {}).items()}
    foreign = [c for c in mapping if c not in classes]
    if foreign:
        raise ConfigError(
            f"--classes maps onto '{foreign[0]}', which is not a class of the checkpoint ({', '.join(classes)}); "
            "use one of those names"
        )
    merged = {c: [*mapping.get(c, []), *aliases.get(c, [])] for c in classes}
    label = {c: i for i, c in enumerate(classes)}
    recorded = {str(Path(t["root"]).resolve()): t for t in trained}
    sources, left_out, files = [], {}, {s: {} for s in SPLITS}
    for i, entry in enumerate(entries(data)):
        root = Path(entry["root"]).expanduser()
        has_splits, base = _layout(root, "--data")
        folders = visible_folders(base)
        folder_class, unmatched = match_folders(folders, classes, merged)
        if not folder_class:
            raise DataError(
                f"{base}: none of its folders ({', '.join(folders) or 'none'}) is a class of the checkpoint "
                f"({', '.join(classes)}); map them with --classes, e.g. --classes '{{{classes[0]}: [FOLDER]}}'"
            )
        was = recorded.get(str(root.resolve()))
        split = None if has_splits else (was or {}).get("split") or {"val": 0.0, "test": 1.0, "seed": 0}
        name = str(entry.get("name") or (was or {}).get("name") or root.resolve().name)
        src = Source(name, root, folder_class, tuple(unmatched), split, (was or {}).get("group", ""), 1.0)
        for f in unmatched:
            dirs = [root / s for s in SPLITS] if has_splits else [root]
            n = sum(len(list_images(d / f)) for d in dirs if (d / f).is_dir())
            left_out[f"{name}/{f}" if i else f] = n
        if src.split is None:
            parts = _scan_splits(src, label)
        elif was is None:  # a dataset the model never saw: all of it is test
            paths, labels = _scan_folder(root, folder_class, label)
            parts = {"test": SplitFiles(root, "test", tuple(classes), paths, labels)}
        else:
            parts = _split_flat(src, label)
        for split_name, f in parts.items():
            files[split_name][name] = f
        sources.append(src)
    return Dataset(tuple(classes), tuple(sources), {s: v for s, v in files.items() if v}), left_out


def _scan_folder(base: Path, folder_class: dict, label: dict) -> tuple[list, list]:
    """The images of ``base``'s class folders and their labels (a folder absent here adds none)."""
    paths, labels = [], []
    for folder, c in folder_class.items():
        if not (base / folder).is_dir():
            continue
        files = list_images(base / folder)
        paths += files
        labels += [label[c]] * len(files)
    return paths, labels


def _scan_splits(src: Source, label: dict) -> dict[str, SplitFiles]:
    out = {}
    for split in SPLITS:
        base = src.root / split
        if not base.is_dir():
            continue
        found = visible_folders(base)
        strange = [f for f in found if f not in src.folders and f not in src.excluded]
        if strange:
            raise DataError(
                f"{base / strange[0]}: folder '{strange[0]}' is not among train/'s folders ({', '.join(src.folders)}); "
                "rename it, move it out, or add it to exclude"
            )
        paths, labels = _scan_folder(base, src.folders, label)
        out[split] = SplitFiles(src.root, split, tuple(label), paths, labels)
    return out


def _group_keys(paths: list[Path], group: str, where: Path) -> list[str]:
    if not group:
        return [str(p) for p in paths]
    try:
        rule = re.compile(group)
    except re.error as e:
        raise ConfigError(f"key 'group': {group!r} is not a regular expression ({e}); fix it") from None
    keys, missed = [], 0
    for p in paths:
        m = rule.search(p.name)
        if m is None:
            missed += 1
            keys.append(str(p))
        else:
            keys.append("g:" + (m.group(1) if rule.groups else m.group(0)))
    if missed == len(paths):
        raise ConfigError(
            f"{where}: key 'group' = {group!r} matches no file name (e.g. {paths[0].name}); fix the expression"
        )
    if missed:
        warnings.warn(
            f"{where}: key 'group' = {group!r} matches {len(paths) - missed} of {len(paths)} file names; the "
            f"other {missed} are each a group of their own",
            stacklevel=3,
        )
    return keys


def split_indices(labels: np.ndarray, keys: Sequence[str], val: float, test: float, seed: int) -> np.ndarray:
    """A split per file (0 train, 1 val, 2 test): stratified by class, seeded, one group in one split.

    Groups go in a seeded order, each to the split whose share of the group's classes is furthest below
    its target (a greedy stratified group split: exact per class when every file is its own group)."""
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    total = np.bincount(labels, minlength=n_classes).astype(float)
    target = np.stack([total * (1 - val - test), total * val, total * test])
    have = np.zeros_like(target)
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    order = sorted(members)
    rng = np.random.default_rng(seed)
    order = [order[i] for i in rng.permutation(len(order))]
    out = np.zeros(len(labels), dtype=np.int64)
    for k in order:
        idx = members[k]
        counts = np.bincount(labels[idx], minlength=n_classes)
        need = ((target - have) / np.maximum(target, 1.0)) @ counts  # how far below target, weighted by class
        need[target.sum(1) == 0] = -np.inf
        s = int(np.argmax(need))
        out[idx] = s
        have[s] += counts
    return out


def _split_flat(src: Source, label: dict) -> dict[str, SplitFiles]:
    paths, labels = _scan_folder(src.root, src.folders, label)
    if not paths:
        raise DataError(f"{src.root}: no image in its class folders; add images")
    keys = _group_keys(paths, src.group, src.root)
    labels_np = np.asarray(labels, dtype=np.int64)
    which = split_indices(labels_np, keys, src.split["val"], src.split["test"], src.split["seed"])
    out = {}
    for i, split in enumerate(SPLITS):
        if split == "test" and src.split["test"] == 0:
            continue
        idx = np.flatnonzero(which == i)
        out[split] = SplitFiles(
            src.root, split, tuple(label), [paths[j] for j in idx], [labels[j] for j in idx]
        )
    return out


def _check_every_class(d: Dataset) -> None:
    """Every class a dataset maps has an image in each of its splits: else one line naming the class, the
    split and the fix."""
    for split in d.splits:
        for name, f in d.files[split].items():
            src = next(s for s in d.sources if s.name == name)
            wanted = [c for c in d.classes if c in src.folders.values()]
            missing = [c for c in wanted if d.classes.index(c) not in set(f.labels)]
            if not missing:
                continue
            c = missing[0]
            if src.split is not None:
                fix = "lower split.val and split.test" if split == "train" else f"raise split.{split}"
                raise DataError(
                    f"{src.root}: the split leaves class '{c}' no {split} image; add images of '{c}' or {fix}"
                )
            folders = ", ".join(k for k, v in src.folders.items() if v == c)
            raise DataError(
                f"{src.root / split}: class '{c}' has no image there (its folders: {folders}); add images, or "
                "map or exclude its folders"
            )


def digest(record: dict) -> str:
    """A short hash of a record's classes and file lists (what a resume or a later evaluate compares)."""
    h = hashlib.sha256(repr((record["classes"], record["files"])).encode())
    return h.hexdigest()[:16]
