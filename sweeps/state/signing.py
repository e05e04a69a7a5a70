"""Signed manifests of experiment state: ``--resume`` runs no code that this sweep did not write.

Every file Ray unpickles on resume is listed with its SHA-256 in an HMAC-keyed manifest (see
docs/architecture.md); ``verify_experiment`` checks them all before Ray reads any.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.fs
from ray import tune
from ray._common.utils import get_default_ray_temp_dir
from ray.train.constants import _get_ray_train_session_dir

from fer_core.errors import FerError
from sweeps.state.storage import one_line, open_storage, write_local, write_state

MANIFEST_PREFIX = "fer_manifest-"
DRIVER = f"{MANIFEST_PREFIX}driver.json"  # the driver's manifest: it holds the experiment's id
KEY_ENV = "FER_SWEEP_KEY_FILE"
DEFAULT_KEY = "~/.config/fer-sweep/experiment.key"
HISTORY = 200  # hashes kept per file: state is re-saved every ~10 s, and storage may lag by an upload or two
NESTED = ("retrain",)  # experiments inside the sweep's folder, verified on their own
# The folder holding the last signed version of each state file Ray writes (see restore_signed_state).
SIGNED_COPIES = "fer_signed"


def key_file() -> Path:
    return Path(os.environ.get(KEY_ENV) or DEFAULT_KEY).expanduser()


def load_key(create: bool) -> bytes:
    """The user's signing key; created (0600, in a 0700 folder) on first use when ``create``. A FerError
    when it is missing (and not to be created), unreadable, or readable by others."""
    path = key_file()
    if not path.exists():
        if not create:
            raise FerError(
                f"{path}: no experiment key on this machine, so nothing here was signed by it; copy the key "
                f"that started the sweep here (mode 600, or set ${KEY_ENV}; on a cluster the launcher file does)"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:  # O_EXCL: two drivers starting at once must not each write a different key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        except FileExistsError:
            pass
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FerError(
            f"{path}: the experiment key is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise FerError(
            f"{path}: not a readable experiment key ({e}); delete it to make a new one "
            "(experiments signed with the old key then need re-signing)"
        ) from None
    if len(key) < 16:
        raise FerError(f"{path}: the experiment key is too short; delete it to make a new one")
    return key


def _mac(key: bytes, experiment: str | None, files: dict) -> str:
    """The manifest's HMAC: its files bound to the experiment id (None: a manifest of version 1, unbound)."""
    doc = files if experiment is None else {"experiment": experiment, "files": files}
    return hmac.new(key, json.dumps(doc, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def covered(rel: str) -> bool:
    """Files Ray deserialises on resume: the experiment's top-level .json/.pkl (it downloads and reads
    those) and any .pkl in a trial folder (``error.pkl``, ``params.pkl``)."""
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(MANIFEST_PREFIX) or rel.startswith(f"{SIGNED_COPIES}/"):
        return False
    return name.endswith(".pkl") or ("/" not in rel and name.endswith(".json"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _merge(into: dict, path: str, digest: str) -> None:
    seen = into.setdefault(path, [])
    if digest in seen:
        seen.remove(digest)
    seen.append(digest)
    del seen[:-HISTORY]


def _manifest_bytes(key: bytes, experiment: str | None, files: dict) -> bytes:
    doc = {"version": 2, "experiment": experiment, "files": files, "mac": _mac(key, experiment, files)}
    return json.dumps(doc, sort_keys=True).encode()


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.readall()


def _listing(fs, root: str) -> list[str]:
    """The files in the experiment ``root`` (a nested experiment's left out). A local folder is walked
    without following links (pyarrow's recursive listing follows them: ``loop -> .`` never ends); a link
    that a covered name points through is refused, since Ray would read what it leads to."""
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        rels = []
        for top, dirs, files in os.walk(root):  # followlinks=False
            for n in dirs + files:
                rel = os.path.relpath(os.path.join(top, n), root)
                if os.path.islink(os.path.join(root, rel)):
                    if covered(rel) or n in dirs:
                        raise FerError(
                            f"{root}/{rel}: a symbolic link in the experiment state; the sweep writes none, "
                            "so --resume will not follow it: remove it"
                        )
                elif n in files:
                    rels.append(rel)
    else:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
        rels = [os.path.relpath(i.path, root) for i in infos if i.type == pyarrow.fs.FileType.File]
    return [r for r in rels if r.split("/", 1)[0] not in NESTED or "/" not in r]


def read_manifests(fs, root: str, key: bytes, rels: list[str]) -> tuple[dict, str | None]:
    """path -> accepted hashes, from every manifest at the top of ``root``, and the experiment id they are
    bound to; a forged manifest, or one signed for another experiment (copied in), is refused."""
    accepted: dict = {}
    ids: dict = {}  # experiment id -> a manifest bound to it
    for rel in rels:
        if "/" in rel or not rel.startswith(MANIFEST_PREFIX):
            continue
        try:
            doc = json.loads(_read(fs, f"{root}/{rel}"))
            files, mac, experiment = doc["files"], doc["mac"], doc.get("experiment")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FerError(
                f"{root}/{rel}: not a manifest this sweep wrote; the experiment folder was modified, "
                "so --resume will not load it"
            ) from None
        if not hmac.compare_digest(_mac(key, experiment, files), str(mac)):
            raise FerError(
                f"{root}/{rel}: manifest signature does not match this machine's key; the experiment "
                "folder was modified, or signed elsewhere, so --resume will not load it"
            )
        if experiment is not None:  # version 1 manifests (None) were bound to nothing
            ids.setdefault(experiment, rel)
        if len(ids) > 1:
            raise FerError(
                f"{root}/{rel}: signed for another experiment than {ids[next(iter(ids))]} (copied in from "
                "another experiment), so --resume will not load it; remove what was copied in"
            )
        for path, digests in files.items():
            for d in digests:
                _merge(accepted, path, d)
    return accepted, next(iter(ids), None)


def sign_files(uri: str, rels: list[str]) -> None:
    """Add the current contents of ``rels`` (paths inside the experiment ``uri``) to the driver's manifest."""
    fs, root = open_storage(uri)
    _sign(fs, root, {rel: _sha(_read(fs, f"{root}/{rel}")) for rel in rels})


def write_signed(uri: str, rel: str, data: bytes) -> None:
    """Write ``data`` to ``rel`` in the experiment ``uri``, its hash signed into the driver's manifest BEFORE
    the file is replaced (both writes atomic): a kill at any instant leaves the old file or the new one,
    each of them signed."""
    fs, root = open_storage(uri)
    fs.create_dir(root)
    _sign(fs, root, {rel: _sha(data)})
    write_state(fs, f"{root}/{rel}", data, root)


# The driver's manifest is read, merged and rewritten by its main thread and its phase clock's thread.
_DRIVER_MANIFEST = threading.Lock()


def _sign(fs, root: str, digests: dict) -> str:
    """Add ``digests`` to the driver's manifest; returns the experiment id it is bound to."""
    key = load_key(create=True)
    target = f"{root}/{DRIVER}"
    with _DRIVER_MANIFEST:
        exists = fs.get_file_info(target).type != pyarrow.fs.FileType.NotFound
        files, experiment = read_manifests(fs, root, key, [DRIVER]) if exists else ({}, None)
        for rel, digest in digests.items():
            _merge(files, rel, digest)
        experiment = experiment or uuid.uuid4().hex  # a new experiment's id, made once
        write_state(fs, target, _manifest_bytes(key, experiment, files), root)
    return experiment


def experiment_id(uri: str) -> str:
    """The id every manifest of the experiment ``uri`` is bound to, kept in its driver manifest (created,
    signing nothing yet, when the experiment has none; a version-1 one is bound now)."""
    fs, root = open_storage(uri)
    fs.create_dir(root)
    return _sign(fs, root, {})


def verify_experiment(uri: str) -> None:
    """Check every file Ray would deserialise on resume against the signed manifests; before Ray starts.
    A one-line FerError when a file is unsigned or changed, a manifest forged, or none exists."""
    fs, root = open_storage(uri)
    rels = _listing(fs, root)
    if not any(r.startswith(MANIFEST_PREFIX) for r in rels):
        raise FerError(
            f"{uri}: experiment state is not signed (it was not written by this sweep), so --resume will not load it; if you trust every file in it: "
            f"python -m sweeps.manifest sign {uri}"
        )
    accepted = read_manifests(fs, root, load_key(create=False), rels)[0]
    for rel in sorted(rels):
        if covered(rel) and _sha(_read(fs, f"{root}/{rel}")) not in accepted.get(rel, ()):
            raise FerError(
                f"{uri}/{rel}: {'changed after' if rel in accepted else 'not written by'} the sweep "
                f"(its hash is not in the signed manifest), so --resume will not load it; if you "
                f"trust every file in the folder: python -m sweeps.manifest sign {uri}"
            )


def restore_signed_state(uri: str) -> list[str]:
    """Before a resume of the experiment ``uri``: put back the signed version of each state file that Ray
    left unsigned there, and remove the unsigned ``.pkl`` files left empty (nothing in them can run).
    Returns the files restored or removed; any other unsigned file is left for ``verify_experiment`` to
    refuse. Nothing unsigned is ever accepted.

    Two ways leave Ray's state unsigned in storage: a driver killed after Tune's upload landed a save but
    not the staged manifest, when the manifest's own write to storage had failed (an outage that ended
    between the two); and a full local disk, which truncates what Tune's upload copies. The signed versions come from the driver's
    staging folders Ray left in its temporary folder (local storage: the newest save, with the manifest that
    signs it), then from the copies ``SignStateCallback`` keeps in ``fer_signed/``."""
    fs, root = open_storage(uri)
    rels = _listing(fs, root)
    if not any(r.startswith(MANIFEST_PREFIX) for r in rels):
        return []
    key = load_key(create=False)
    accepted, experiment = read_manifests(fs, root, key, rels)
    bad = {r for r in rels if covered(r) and _sha(_read(fs, f"{root}/{r}")) not in accepted.get(r, ())}
    done = []
    if bad and isinstance(fs, pyarrow.fs.LocalFileSystem):
        done += _restore_from_staging(fs, root, key, experiment, bad)
    kept = set(_listing(fs, f"{root}/{SIGNED_COPIES}"))
    for rel in sorted(bad & kept):
        data = _read(fs, f"{root}/{SIGNED_COPIES}/{rel}")
        if _sha(data) in accepted.get(rel, ()):
            write_state(fs, f"{root}/{rel}", data, root)
            bad.discard(rel)
            done.append(rel)
    for rel in sorted(r for r in bad if r.endswith(".pkl") and not _read(fs, f"{root}/{r}")):
        fs.delete_file(f"{root}/{rel}")
        done.append(rel)
    if done:
        print(f"[sweeps] {uri}: put back the signed state a killed driver or a full disk left unsigned: "
              f"{', '.join(done)}", flush=True)  # fmt: skip
    return done


def _restore_from_staging(fs, root: str, key: bytes, experiment: str | None, bad: set) -> list[str]:
    """Put back the files of ``bad`` whose signed version is in a driver staging folder of this experiment
    (newest first), each with the manifest that signs it; they leave ``bad``."""
    done = []
    pattern = (
        f"{get_default_ray_temp_dir()}/session_*/artifacts/*/{glob.escape(Path(root).name)}/driver_artifacts"
    )
    for staging in sorted(glob.glob(pattern), key=os.path.getmtime, reverse=True):  # the newest first
        found = _listing(fs, staging)
        try:
            signed, bound = read_manifests(fs, staging, key, found)
        except FerError:
            continue
        if bound != experiment:  # another experiment of the same name
            continue
        for rel in sorted(bad & set(found)):
            data = _read(fs, f"{staging}/{rel}")
            if _sha(data) in signed.get(rel, ()):
                for m in (m for m in found if "/" not in m and m.startswith(MANIFEST_PREFIX)):
                    # its signature travels with it, under a name no session of the storage uses
                    write_local(Path(root, f"{MANIFEST_PREFIX}restored-{m[len(MANIFEST_PREFIX) :]}"),
                                _read(fs, f"{staging}/{m}"), Path(root))  # fmt: skip
                write_local(Path(root, rel), data, Path(root))
                bad.discard(rel)
                done.append(rel)
    return done


def sign_experiment(uri: str) -> int:
    """Sign every covered file as it is now (the user vouches for the folder). Returns how many."""
    fs, root = open_storage(uri)
    rels = [r for r in _listing(fs, root) if covered(r)]
    sign_files(uri, rels)
    return len(rels)


class SignStateCallback(tune.Callback):
    """Signs the experiment state Tune writes to its driver staging folder, right after each save
    (``get_state`` is the first moment all of a save is on disk; see docs/architecture.md)."""

    def __init__(self, name: str, experiment: str | None):  # RunConfig.name, the id of ``experiment_id``
        self._name, self._experiment = name, experiment
        self._staging = None
        self._remote = None  # (filesystem, experiment path) of the storage
        self._session = None
        self._files: dict = {}
        self._seen: dict = {}  # path -> (mtime, size) when last hashed

    def __getstate__(self):  # tuner.pkl holds the RunConfig, callbacks included: keep paths and hashes out
        return {"name": self._name, "experiment": self._experiment}

    def __setstate__(self, state):
        self.__init__(state["name"], state.get("experiment"))

    def _find_staging(self, trials) -> None:
        # Tune tells a callback its staging folder and storage only through a trial's storage context (a save
        # before the first trial finds the folder in get_state, and signs it there).
        if self._remote is None and trials:
            storage = trials[0].storage
            self._staging = storage.experiment_driver_staging_path
            self._remote = (storage.storage_filesystem, storage.experiment_fs_path)

    def on_step_begin(self, iteration, trials, **info):
        self._find_staging(trials)

    def on_step_end(self, iteration, trials, **info):
        # Tune uploads a save in the background and may write the next save while that upload still runs,
        # which could then carry the new state up before its manifest. Waiting here, after the step's save
        # (the last step's too, before Tune's final save), keeps each upload apart from the next save.
        if trials:
            try:
                trials[0].storage.syncer.wait()
            except Exception as e:  # noqa: BLE001 - the storage is down; Tune uploads again after its next save
                print(f"[sweeps] WARNING: could not upload the experiment state ({one_line(e)}); trying again "
                      "at the next save", file=sys.stderr, flush=True)  # fmt: skip

    def on_trial_start(self, iteration, trials, trial, **info):
        self._find_staging(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        # Tune has just written the trial's error.pkl: sign it now, not at the next save.
        self._find_staging(trials)
        self.get_state()

    def get_state(self):
        if self._staging is None:
            # A resumed experiment whose trials are all done saves before any callback hears of a trial: the
            # staging folder is then the one of this experiment's name holding the state file just written.
            pattern = f"{_get_ray_train_session_dir()}/*/{glob.escape(self._name)}/driver_artifacts/experiment_state-*.json"
            found = glob.glob(pattern)
            if found:
                self._staging = os.path.dirname(max(found, key=os.path.getmtime))
        if self._staging and os.path.isdir(self._staging):
            try:
                self._sign_staging()
            except Exception as e:  # noqa: BLE001 - a failed signature must not stop the sweep; resume says so
                msg = f"could not sign the experiment state ({e}); --resume puts back the last state signed"
                print(f"[sweeps] WARNING: {msg}", file=sys.stderr, flush=True)
        return None

    def _sign_staging(self) -> None:
        key = load_key(create=True)
        self._session = self._session or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        root = Path(self._staging)
        changed = {}  # rel -> the content just signed
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and covered(rel) and not path.name.startswith((".", "tmp-")):
                stamp = (path.stat().st_mtime_ns, path.stat().st_size)
                if self._seen.get(rel) != stamp:  # a file unchanged since the last save is not read again
                    self._seen[rel] = stamp
                    changed[rel] = path.read_bytes()
                    _merge(self._files, rel, _sha(changed[rel]))
        manifest = _manifest_bytes(key, self._experiment, self._files)
        # In the staging folder: Tune uploads it with the state it signs, and restore_signed_state finds it
        # there after a full disk cut that upload short (its temporary name is hidden from the uploader,
        # which never sees half a manifest).
        write_local(root / f"{MANIFEST_PREFIX}{self._session}-staged.json", manifest, root)
        if self._remote is not None:
            # Straight to storage too, before Tune uploads the state just hashed, under a name of its own (an
            # upload of the staged one never overwrites it); then a copy of each file just signed, which
            # --resume puts back should Tune's upload land and neither manifest.
            fs, path = self._remote
            write_state(fs, f"{path}/{MANIFEST_PREFIX}{self._session}.json", manifest, path)
            for rel, data in changed.items():
                write_state(fs, f"{path}/{SIGNED_COPIES}/{rel}", data, path)
