"""Where an experiment lives (a local folder or a URI, ``s3://bucket/prefix``) and the one writer of its files.

A URI is opened as Ray opens it (same server, same credentials: see docs/architecture.md). Every state and
report file is written by ``write_state``/``write_local``: atomic, and never through a link out of the folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.fs as pafs

from fer_core.atomic import write_atomic
from fer_core.decode_cache import cache_folder, load_dataset
from fer_core.errors import FerError

# Bound the driver's own requests: give up within ~20 s, not pyarrow's ~100 s per retried S3 request
# (or the 15 minutes GCS retries for).
# request_timeout is curl's "no byte for this long", not a cap on a whole upload.
CONNECT_TIMEOUT_S = 5
REQUEST_TIMEOUT_S = 10
MAX_ATTEMPTS = 2


def open_storage(uri: str, what: str = "--storage"):
    """The pyarrow filesystem and path of ``uri``, as Ray resolves them, with bounded timeouts for S3; a
    one-line FerError for a URI with query parameters or one pyarrow cannot open."""
    if "?" in uri:
        # The experiment name is appended to the URI (STORAGE/NAME), which would land inside the query.
        raise FerError(
            f"{what} {uri}: query parameters ('?...') are not supported here; give an S3-compatible "
            "server's address in AWS_ENDPOINT_URL instead (e.g. AWS_ENDPOINT_URL=http://HOST:9000)"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, ImportError) as e:
        raise FerError(
            f"{what} {uri}: not a storage pyarrow can open ({one_line(e)}); pass a folder or an "
            "s3://bucket/prefix or gs://bucket/prefix URI"
        ) from None
    if isinstance(fs, pafs.S3FileSystem):
        # Rebuilt from its own pickled options (endpoint, region, credentials as from_uri resolved them),
        # with the timeouts and retries that from_uri cannot take.
        _, (options,) = fs.__reduce__()
        options.update(connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S)
        options["region"] = options["region"] or fs.region  # the region the client resolved, when not given
        retry = pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS)
        fs = pafs.S3FileSystem(**options, retry_strategy=retry)
    elif isinstance(fs, pafs.GcsFileSystem):  # its default retries each request for 15 minutes
        _, (options,) = fs.__reduce__()
        options["retry_time_limit"] = timedelta(seconds=CONNECT_TIMEOUT_S + REQUEST_TIMEOUT_S)
        fs = pafs.GcsFileSystem(**options)
    return fs, path.rstrip("/")


def check_uri_writable(uri: str, what: str = "--storage") -> None:
    """Write and delete a small probe object under ``uri``: bucket, server and credentials all work; else
    a one-line FerError with the likely cause and its fix."""
    fs, path = open_storage(uri, what)
    probe = f"{path}/.fer-write-probe-{uuid.uuid4().hex}"
    try:
        if isinstance(fs, pafs.LocalFileSystem):  # file://: a folder to create, as Ray will
            fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"probe")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:  # GCS: an unreadable credentials file is an ArrowException
        raise FerError(f"{what} {uri}: cannot write there: {error_cause(e)} ({one_line(e)})") from None


def check_writable(folder: str, what: str) -> None:
    """Create ``folder`` and write a probe file in it (a URI: write and delete a probe object); a one-line
    FerError when it cannot be created or written (for a URI: no bucket, no server, no credentials)."""
    if "://" in folder:  # Ray would only find out at the first checkpoint, with a traceback per trial
        check_uri_writable(folder, what)
        return
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise FerError(
            f"{path}: {what} is not a writable folder ({e.strerror or e}); pass a writable folder"
        ) from None


def check_cache(settings, dataset) -> None:
    """The decoded-image cache must be writable, or (read-only) already hold the splits the trials read;
    else load_dataset's one-line DataError names the folder and the fix."""
    t = settings.train
    cache = t.cache_dir or None
    try:
        check_writable(str(cache_folder(cache)), "the image cache (cache_dir or $FER_CACHE_DIR)")
    except FerError:
        for split in ("train", "val"):  # a finished cache loads at once; a missing one says why in one line
            load_dataset(dataset, split, t.img_size, t.grayscale, cache_dir=cache)


def storage_uri(storage: str) -> str:
    """Ray wants an absolute local path or a URI."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def experiment_uri(settings) -> str:
    """STORAGE/NAME: the experiment folder (a path or a URI) the search, the retrain and the report share."""
    return f"{storage_uri(settings.storage)}/{settings.name}"


def report_folder(settings) -> Path:
    """Where the driver writes the report: STORAGE/NAME/report for a local storage; for a URI, a local
    copy under ./fer-sweep-reports/ that mirrors the URI, uploaded by ``upload_report``."""
    exp = experiment_uri(settings)
    return (_local_copy(exp) if "://" in exp else Path(exp)) / "report"


def _local_copy(exp: str) -> Path:
    """./fer-sweep-reports/SCHEME/BUCKET/.../NAME: the driver's local folder of a URI experiment (links kept)."""
    scheme, _, rest = exp.partition("://")
    return Path("fer-sweep-reports", scheme, *[p for p in rest.split("/") if p]).absolute()


_NEVER_THROUGH = (
    "the sweep never writes through a link that leads out of its experiment folder: remove the link"
)


def _refuse_link_out(link: Path, real_root: Path, root: Path) -> None:
    """The containment rule, in one place: a FerError when ``link`` leads out of the folder ``root``."""
    target = os.path.realpath(link)  # a loop stays as it is (Path.resolve raises)
    if not Path(target).is_relative_to(real_root):
        raise FerError(
            f"{link}: a symbolic link to {target}, outside the experiment folder {root}; " + _NEVER_THROUGH
        )


def check_contained(exp: str) -> None:
    """Before anything is written: a one-line FerError naming the first symbolic link in the experiment
    folder ``exp`` (a path or file:// URI; for any URI, the local copy of its report) whose target lies outside
    it, or that folder itself being a link; the sweep would write the report and checkpoints through it.
    Object storage has no links. Each later write checks its own path again (``write_local``)."""
    folders = [_local_copy(exp)] if "://" in exp else [Path(exp)]
    if exp.startswith("file://"):
        folders.append(Path(open_storage(exp)[1]))
    for root in folders:
        _refuse_linked_root(root)
        real = root.resolve()
        for top, dirs, files in os.walk(root):  # followlinks=False: a linked folder is listed, never entered
            for link in (Path(top, n) for n in dirs + files if os.path.islink(os.path.join(top, n))):
                _refuse_link_out(link, real, root)


def _refuse_linked_root(root: Path) -> None:
    if root.is_symlink():
        raise FerError(
            f"{root}: the experiment folder is a symbolic link to {os.path.realpath(root)}; {_NEVER_THROUGH}"
        )


def write_local(path: Path, data: bytes, root: Path | None = None) -> None:
    """The one writer of a local state or report file: atomic (``write_atomic``), and never through a
    symbolic link that leads out of ``root`` (default: the file's folder), checked at this write: a link at
    ``path`` or on the way to it from ``root``. A one-line FerError when refused or when the disk is full
    (the old file is left as it was)."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    _refuse_linked_root(root)
    real = root.resolve()
    node = path
    while node != root and node != node.parent:  # the file and each folder between it and root
        if node.is_symlink():
            _refuse_link_out(node, real, root)
        node = node.parent
    try:
        write_atomic(path, lambda f: f.write(data), mode=0o644)
    except OSError as e:
        raise FerError(
            f"{path}: could not be written ({e.strerror or e}); free space there, then run the same command "
            "again (the file was left as it was)"
        ) from None


def write_state(fs, path: str, data: bytes, root: str) -> None:
    """Write the file ``path`` of the experiment folder ``root`` on the storage ``fs``: locally through
    ``write_local``; on object storage a single put, which is atomic there."""
    if isinstance(fs, pafs.LocalFileSystem):
        write_local(Path(path), data, Path(root))
        return
    try:
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise FerError(f"{path}: could not be written: {error_cause(e)} ({one_line(e)})") from None


FULL_BELOW = 2**20  # bytes free under which a local storage that failed a write is taken to be full


def refuse_full_storage(exp: str) -> None:
    """A one-line FerError when the local experiment folder ``exp`` is on a full disk (Ray's writes into it
    fail in many ways: truncated files, an EOFError reading them back)."""
    if "://" in exp:
        return
    free = shutil.disk_usage(Path(exp) if Path(exp).exists() else Path(exp).parent).free
    if free < FULL_BELOW:
        raise FerError(
            f"{exp}: the storage is full ({free / 2**20:.2f} MiB free), so the sweep stopped; the trials "
            "finished so far are kept: free space there, then run the same command with --resume"
        )


def upload_report(storage: str, name: str, report_dir: Path) -> str | None:
    """Copy the driver's report folder to STORAGE/NAME/report when the storage is a URI; returns that URI
    (None for a local storage, where the report was written in place). A FerError when the upload fails."""
    if "://" not in storage:
        return None
    fs, path = open_storage(storage)
    dest = f"{storage.rstrip('/')}/{name}/report"
    local, target = str(Path(report_dir).resolve()), f"{path}/{name}/report"
    try:
        pafs.copy_files(local, target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except OSError as e:
        raise FerError(
            f"{dest}: the report could not be copied there: {error_cause(e)} ({one_line(e)}); it is complete "
            f"in {report_dir} on this machine"
        ) from None
    print(f"[sweeps] report copied to {dest}", flush=True)
    return dest


_DENIED = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch",
           "EXPIRED_TOKEN", "INVALID_CLIENT_TOKEN", "credentials", "Forbidden", "HTTP status 403")  # fmt: skip


def error_cause(e: Exception) -> str:
    """The likely cause of a pyarrow storage error, and what to do about it."""
    text = str(e)
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return "the bucket does not exist; create it or fix --storage"
    if "OAuth2 access token" in text:
        return (
            "no Google Cloud credentials, or the server cannot be reached; set GOOGLE_APPLICATION_CREDENTIALS "
            "(or run gcloud auth application-default login) and check the network"
        )
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not resolve" in text:
        return "the storage server cannot be reached; check the network, and AWS_ENDPOINT_URL for an S3-compatible server"
    if any(k in text for k in _DENIED):
        return (
            "no credentials allowed to write there; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
            "or an instance role) to ones that may write to this bucket"
        )
    return "check the URI, the server and the credentials"


def one_line(e: Exception, limit: int = 240) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy address of the SQLite file at ``path`` (optuna.db, mlflow.db): percent-encoded, because
    SQLAlchemy decodes the address (a folder named ``a%2Fb`` would otherwise be read as ``a/b``)."""
    return f"sqlite:///{quote(str(Path(path).resolve()))}"
