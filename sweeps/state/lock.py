"""The experiment's lease: one driver at a time holds STORAGE/NAME, a local folder or object storage alike.

STORAGE/NAME/.fer-lease (JSON) names its holder (host, pid, start time) with a random token, and is
rewritten every ``lease_s / 4``. It is stale when its holder is gone (this host, no such process, or its
pid now a later process's) or was not renewed for ``lease_s``, and is then taken over. Not ``.json``: Ray
copies the experiment's .json/.pkl down on resume and uploads them back (an old lease over the live one),
and ``--resume`` refuses unsigned ones.

Taking, taking over and renewing the lease are each exclusive on a local path: a new lease is linked into
place (``os.link`` fails when one exists), and replacing one first claims it by hard-linking it to a name
derived from its bytes, so of two drivers replacing the same lease only one wins. Object storage through
pyarrow has no conditional put: there the driver writes, waits ``SETTLE_S`` and reads back whose lease it
is (the last writer wins), and a driver that lost a closer race finds out at its next renewal.

A driver that finds its lease taken over (at a renewal, or as soon as it runs again after SIGSTOP) prints
one line and ends its process at once: anything else (unwinding through Tune, Ctrl-C's save) would write
into an experiment another driver now holds. Its local Ray and the trial workers end with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import datetime

import pyarrow.fs as pafs

from fer_core.errors import ConfigError, FerError
from sweeps.state.storage import error_cause, one_line, open_storage

LEASE_NAME = ".fer-lease"
LEASE_S = 60.0  # a lease not renewed for this long is stale: its driver was killed (on any host)
LEASE_ENV = "FER_LEASE_S"  # sets LEASE_S, e.g. shorter for tests that stop a driver past its lease
# Object storage: write, wait, read back: of two drivers starting at once the later writer wins.
SETTLE_S = 0.3
LOST_STATUS = 3  # the exit status of a driver whose lease another driver took over
START_MARGIN_S = 10  # a pid whose process started this long after its lease's start is a later process


def lease_time() -> float:
    """The lease time: ``FER_LEASE_S`` when set, else LEASE_S."""
    text = os.environ.get(LEASE_ENV, "")
    try:
        seconds = float(text) if text else LEASE_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < math.inf:
        raise ConfigError(f"{LEASE_ENV}={text!r}: the lease time must be a number of seconds above 0")
    return seconds


class Lease:
    """``with Lease(exp_uri): ...`` holds the experiment ``exp_uri`` for this driver while the block runs,
    or raises a one-line FerError naming the driver that holds it."""

    def __init__(self, exp_uri: str, lease_s: float | None = None):
        self.exp, self.lease_s = exp_uri, lease_s if lease_s is not None else lease_time()
        self.fs, self.root = open_storage(exp_uri, "the experiment")
        self.path, self.local = f"{self.root}/{LEASE_NAME}", isinstance(self.fs, pafs.LocalFileSystem)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        self.mine = dict(host=socket.gethostname(), pid=os.getpid(), started=started, token=uuid.uuid4().hex)
        self._stop, self._thread = threading.Event(), None
        self._keeping = threading.RLock()  # one renewal at a time: the thread's, or SIGCONT's
        self._written = b""  # the lease as this driver last wrote it
        self._on_cont = None  # the SIGCONT handler found, restored on exit
        self._created = False  # a local folder made here: removed on exit if it is still empty

    def __enter__(self) -> Lease:
        try:
            raw = self._read_raw()
            if raw is not None:
                held = _parse(raw)
                if (why := self._stale(held)) is None:
                    raise FerError(self._refusal(held))
                print(
                    f"[sweeps] taking over the lease of a driver that is gone ({_who(held)}; {why})",
                    flush=True,
                )
            elif self.local and not os.path.isdir(self.root):
                self.fs.create_dir(self.root, recursive=True)
                self._created = True
            taken = self._replace(raw)
            if not self.local:
                time.sleep(SETTLE_S)  # object storage keeps the last write: read back whose it was
                taken = self._ours(self._read_raw())
        except OSError as e:
            raise FerError(self._storage_error(e)) from None
        except KeyboardInterrupt:  # between writing and reading back: leave no lease behind
            self.__exit__()
            raise
        if not taken:
            self.__exit__()
            raise FerError(self._refusal(self._read() or {}))
        if threading.current_thread() is threading.main_thread():
            self._on_cont = signal.signal(signal.SIGCONT, self._continued)
        self._thread = threading.Thread(target=self._renew, name="fer-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._on_cont is not None:
            signal.signal(signal.SIGCONT, self._on_cont)
        if self._thread is not None:
            self._thread.join(timeout=30)  # a renewal in flight ends within the storage's request timeouts
        try:
            if self._written and self._ours(self._read_raw()):
                self.fs.delete_file(self.path)
        except OSError as e:
            _warn(
                f"could not remove the lease {self.path} ({one_line(e)}); it expires in {self.lease_s:.0f}s"
            )
        if self._created:
            try:  # only an empty folder (os.rmdir): e.g. a --resume refused for want of an experiment
                os.rmdir(self.root)
            except OSError:
                pass

    def _read_raw(self) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.readall()
        except FileNotFoundError:
            return None

    def _ours(self, raw: bytes | None) -> bool:
        """Whether the lease ``raw`` is this driver's: as it last wrote it, or a write of its own that landed
        although its answer was lost (the storage went down in between), which only this driver's token names."""
        return bool(raw) and (raw == self._written or _parse(raw).get("token") == self.mine["token"])

    def _read(self) -> dict | None:
        raw = self._read_raw()
        return None if raw is None else _parse(raw)

    def _replace(self, old: bytes | None) -> bool:
        """Write this driver's lease in place of ``old`` (None: no lease). Locally only while ``old`` is
        still the lease, and False when it is not; on object storage always (see the module's docstring)."""
        data = json.dumps({**self.mine, "renewed": time.time(), "lease_s": self.lease_s}).encode()
        if not self.local:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            self._written = data
            return True
        tmp = f"{self.path}.{self.mine['token']}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            if old is None:
                os.link(tmp, self.path)  # fails when a lease exists
            else:
                claim = f"{self.path}.{hashlib.sha256(old).hexdigest()[:16]}.claim"
                try:
                    os.link(self.path, claim)  # fails when another driver is replacing the same lease
                except FileExistsError:
                    if time.time() - os.stat(claim).st_ctime <= self.lease_s:
                        return False
                    os.unlink(
                        claim
                    )  # left by a driver killed while replacing (a live one takes microseconds)
                    os.link(self.path, claim)
                try:
                    with open(claim, "rb") as f:
                        if f.read() != old:
                            return False
                    os.replace(tmp, self.path)
                    self._written = data
                finally:
                    os.unlink(claim)
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._written = data
        return True

    def _keep(self) -> None:
        """Renew the lease, or end the process when another driver has taken it over."""
        with self._keeping:
            if self._stop.is_set():
                return
            raw = self._read_raw()
            if not self._ours(raw):
                self._lost(raw)
            if not self._replace(raw) and not self._ours(raw := self._read_raw()):
                self._lost(raw)  # else another driver's claim on it is in flight: renewed next time

    def _lost(self, raw: bytes | None) -> None:
        who = f"another driver took it over ({_who(_parse(raw))})" if raw else "its lease was removed"
        print(
            f"error: {self.exp}: this driver lost the experiment: {who}; it stops here, without writing more",
            file=sys.stderr,
            flush=True,
        )
        # Not an exception: unwinding would save Tune's state and the driver's records into the experiment.
        os._exit(LOST_STATUS)

    def _continued(self, signum, frame) -> None:
        """SIGCONT: check the lease before this (main) thread goes on, as a stop may have outlasted it."""
        try:
            self._keep()
        except OSError:
            pass  # the renewal thread warns

    def _renew(self) -> None:
        """Renew every lease_s/4 until exit; never raises (a failing renewal warns once)."""
        warned = False
        while not self._stop.wait(self.lease_s / 4):
            try:
                self._keep()
                warned = False
            except Exception as e:  # noqa: BLE001 - a lost renewal must not stop the sweep
                if not warned:
                    _warn(
                        f"could not renew the lease on {self.exp} ({one_line(e)}); another driver may take it over"
                    )
                warned = True

    def _stale(self, held: dict) -> str | None:
        """Why the lease ``held`` is stale, or None while its holder may still run."""
        try:
            age, lease_s, pid = time.time() - float(held["renewed"]), float(held["lease_s"]), int(held["pid"])
        except (KeyError, ValueError, TypeError, OverflowError):
            return "its lease is unreadable"
        if not (math.isfinite(age) and 0 < lease_s <= 86400):  # no driver writes these
            return "its lease is unreadable"
        if age > lease_s:
            return f"its lease was last renewed {age:.0f}s ago, more than its {lease_s:.0f}s"
        if held.get("host") == self.mine["host"] and not _alive(pid, held.get("started")):
            return "its process is no longer running on this host"
        return None

    def _refusal(self, held: dict) -> str:
        try:
            age, lease_s = time.time() - float(held["renewed"]), float(held["lease_s"])
        except (KeyError, ValueError, TypeError):  # changed while we looked: held by whoever changed it
            age, lease_s = 0.0, self.lease_s
        if age < -lease_s:
            return (
                f"{self.exp}: held by another driver ({_who(held)}), whose lease is dated {-age:.0f}s ahead of "
                f"this host's clock; if no driver runs on this experiment, remove {self.path}"
            )
        return (
            f"{self.exp}: held by another driver ({_who(held)}, renewed {max(age, 0):.0f}s ago); wait for it to "
            f"finish, or stop it (if it was killed, its lease expires {lease_s:.0f}s after its last renewal)"
        )

    def _storage_error(self, e: OSError) -> str:
        try:
            folder = self.fs.get_file_info(self.path).type == pafs.FileType.Directory
        except OSError:
            folder = False
        if folder:
            return f"{self.path} is a folder, not a lease; nothing of the experiment is kept there: remove it"
        return f"{self.exp}: cannot take the experiment's lease: {error_cause(e)} ({one_line(e)})"


def _parse(raw: bytes) -> dict:
    try:
        held = json.loads(raw)
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}  # unreadable: stale, see Lease._stale


def _alive(pid: int, started=None) -> bool:
    """Whether the driver ``pid`` of this host, whose lease says it ``started`` (ISO time), still runs: not a
    later process given the same pid after the driver was killed (pids wrap around)."""
    if pid <= 0 or _started_after(pid, started):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _started_after(pid: int, started) -> bool:
    """Whether the process ``pid`` started after the ISO time ``started`` (Linux's /proc; False where that is
    unknown): a driver's process starts before it takes its lease."""
    try:
        when = datetime.fromisoformat(started).timestamp()
        with open(f"/proc/{pid}/stat", "rb") as f:  # field 22 (starttime): clock ticks after boot
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, TypeError, ValueError, IndexError, StopIteration):
        return False
    # A margin for whole seconds and a stepped clock: a live holder is never judged gone by a small error.
    return boot + ticks / os.sysconf("SC_CLK_TCK") > when + START_MARGIN_S


def _who(held: dict) -> str:
    return f"host {held.get('host', '?')}, pid {held.get('pid', '?')}, started {held.get('started', '?')}"


def _warn(msg: str) -> None:
    print(f"[sweeps] WARNING: {msg}", file=sys.stderr, flush=True)
