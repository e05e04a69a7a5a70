"""Where a command may write: the one rule every output path of every fer_core command is checked against.

An output never replaces the command's own input and never lands inside a dataset (a folder with train/
and val/ holding class folders, or one that holds class folders of images and nothing else); it replaces a checkpoint, a run's files or a file of a sweep's report
folder only when told to (``--overwrite``). ``check_output`` applies the rule to one path,
``check_output_folder`` to a folder a command fills, ``check_out_folder`` to a training run's folder. Commands call them before any work, so a refusal costs nothing and writes nothing;
``docs/guarantees.md`` ("Finished work is never overwritten") states the rule for users.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from .data import IMAGE_EXTENSIONS
from .errors import FerError

# What a finished or interrupted run leaves in its folder: its presence means the folder holds a run.
RUN_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "epochs.jsonl", "best_val_metrics.json")
# Every file ``train()`` writes in a run folder: no other command may replace one without --overwrite.
RUN_RECORDS = (*RUN_FILES, "config.yaml", "audit.json")
# What marks a sweep's finished report folder (``sweeps.report`` writes both): its files are finished work too.
REPORT_MARKS = ("report.md", "best.pt")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
# Entries of a folder looked at to tell a class folder (one holding image files): enough for any such
# folder, few enough that walking up from an output path past large folders stays instant.
_PEEK = 64

PathLike = str | os.PathLike


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a folder the user cannot look into holds nothing this rule could see
        return False


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file or folder (through links, ``..`` and hard links)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return _resolved(a) == _resolved(b)


def _entries(folder: Path) -> list[os.DirEntry]:
    """The visible entries of ``folder`` (none when it cannot be listed)."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError:
        return []


def _entry_is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _holds_images(folder: str | os.PathLike) -> bool:
    """Whether one of the first ``_PEEK`` entries of ``folder`` is an image file: a class folder's are."""
    try:
        with os.scandir(folder) as it:
            for _, entry in zip(range(_PEEK), it):
                if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                    return True
    except OSError:
        pass
    return False


def is_dataset_root(folder: PathLike) -> bool:
    """A folder laid out as a dataset, whatever its class names: train/ and val/ with train/ holding a
    (visible) sub-folder; or, without splits, a folder holding two or more sub-folders, each with image
    files, and nothing else visible (a file beside them, such as a command's predictions.csv, means it is
    not a dataset)."""
    folder = Path(folder)
    if _is_dir(folder / "train") and _is_dir(folder / "val"):
        return any(_entry_is_dir(e) for e in _entries(folder / "train"))
    entries = _entries(folder)
    return (
        len(entries) >= 2
        and all(_entry_is_dir(e) for e in entries)
        and all(_holds_images(e.path) for e in entries)
    )


def dataset_containing(path: PathLike, datasets: Iterable[PathLike | None] = ()) -> Path | None:
    """The dataset ``path`` is, or lies inside: one of ``datasets`` (the command's data, whatever its state)
    or any folder above ``path`` laid out as a dataset; None when there is none."""
    p = _resolved(path)
    for d in datasets:
        if d and (p == _resolved(d) or _resolved(d) in p.parents):
            return Path(d)
    return next((folder for folder in (p, *p.parents) if is_dataset_root(folder)), None)


def is_checkpoint(path: PathLike) -> bool:
    """An existing file that is a checkpoint: a .pt/.pth, or a torch file under another name."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:
        with zipfile.ZipFile(p) as z:  # torch.save writes a zip holding <name>/data.pkl
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def run_files(folder: PathLike) -> list[str]:
    """The ``RUN_FILES`` present in ``folder`` (empty: it holds no run)."""
    return [name for name in RUN_FILES if (Path(folder) / name).is_file()]


def run_of(path: PathLike) -> Path | None:
    """The run folder whose file ``path`` is (one of ``RUN_RECORDS`` in a folder holding a run), or None."""
    p = _resolved(path)
    for name in RUN_RECORDS:
        parts = Path(name).parts
        if len(p.parts) > len(parts) and p.parts[-len(parts) :] == parts:
            folder = Path(*p.parts[: -len(parts)])
            if run_files(folder):
                return folder
    return None


def check_output(
    path: PathLike,
    *,
    what: str = "--out",
    inputs: Iterable[PathLike | None] = (),
    datasets: Iterable[PathLike | None] = (),
    overwrite: bool = False,
) -> Path:
    """Refuse an output path that breaks the rule (see the module docstring); call before any work.

    Args:
        path: the file or folder the command will write.
        what: the flag or key that named it, for the message.
        inputs: files or folders the command reads (None entries are skipped); never written over.
        datasets: the command's data roots; nothing is written inside them (nor inside any other dataset).
        overwrite: --overwrite was given: an existing checkpoint or run's file may be replaced.

    Returns:
        ``path`` as a Path.

    Raises:
        FerError: one line naming the flag, the path and the fix.
    """
    path = Path(path)
    for src in inputs:
        if src and same_path(path, src):
            raise FerError(
                f"{what} {path}: is this command's input; give another {what}, so the input stays as it is"
            )
    root = dataset_containing(path, datasets)
    if root is not None:
        raise FerError(
            f"{what} {path}: is inside the dataset {root}, and a file written there changes the data of every "
            f"later run; give a {what} outside it"
        )
    if overwrite or not path.is_file():
        return path
    if is_checkpoint(path):
        raise FerError(
            f"{what} {path}: is a checkpoint; give another {what}, or pass --overwrite to replace it"
        )
    run = run_of(path)
    if run is not None:
        raise FerError(
            f"{what} {path}: is a file of the run in {run}; give another {what}, or pass --overwrite to replace it"
        )
    if all((path.parent / name).is_file() for name in REPORT_MARKS):
        raise FerError(
            f"{what} {path}: is a file of the sweep report in {path.parent}; give another {what}, or pass "
            "--overwrite to replace it"
        )
    return path


def check_output_folder(
    out: PathLike,
    *,
    holds: str,
    what: str = "--out",
    inputs: Iterable[PathLike | None] = (),
    datasets: Iterable[PathLike | None] = (),
) -> Path:
    """``check_output`` for a folder the command fills: also refused when it is an existing file.

    Args:
        out: the folder.
        holds: what the folder receives, for the message when ``out`` is a file.
        what, inputs, datasets: as for ``check_output``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FerError(f"{out}: {what} is a file; give a folder for {holds}")
    return check_output(out, what=what, inputs=inputs, datasets=datasets)


def check_out_folder(
    out: PathLike,
    resume: bool,
    overwrite: bool,
    *,
    inputs: Iterable[PathLike | None] = (),
    datasets: Iterable[PathLike | None] = (),
) -> Path:
    """The rule for a training run's --out folder: ``check_output_folder``, and no run there that the user
    did not ask to continue or replace (the sweep refuses an existing experiment the same way).

    Args:
        out: the --out folder.
        resume: --resume was given (continue the run there).
        overwrite: --overwrite was given (``train(..., replace_run=True)`` then deletes the old run's files).
        inputs: files the run reads (a weights file); none may be one of the ``RUN_RECORDS`` it writes.
        datasets: the run's data root.

    Raises:
        FerError: --out is a file or inside a dataset, both flags were given, a run's file there is an
            input, or it holds a run and neither flag was given.
    """
    if resume and overwrite:
        raise FerError("--resume and --overwrite contradict each other; pass one of them")
    out = check_output_folder(out, holds="the checkpoints and logs", datasets=datasets)
    inputs = [src for src in inputs if src]
    for name in RUN_RECORDS:
        for src in inputs:
            if same_path(out / name, src):
                raise FerError(
                    f"--out {out}: the run writes {name} there, which is this command's input {src}; "
                    "copy that file elsewhere and pass the copy, or give another --out"
                )
    found = run_files(out)
    if found and not resume and not overwrite:
        raise FerError(
            f"{out}: holds a run already ({', '.join(found)}); pass --resume to continue it, "
            "--overwrite to replace it, or another --out"
        )
    return out
