"""The experiment's lease: one driver at a time holds STORAGE/NAME, a local folder or object storage alike.

STORAGE/NAME/.fer-lease (JSON) names its holder (host, pid, start time) with a random token, and is
rewritten every ``lease_s / 4``. It is stale when its holder is gone (this host, no such process) or was
not renewed for ``lease_s``, and is then taken over. Not ``.json``: Ray copies the experiment's .json/.pkl
down on resume and uploads them back (an old lease over the live one), and ``--resume`` refuses unsigned ones.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime

import pyarrow.fs as pafs

from fer_core.errors import FerError
from sweeps.state.storage import error_cause, one_line, open_storage

LEASE_NAME = ".fer-lease"
LEASE_S = 60.0  # a lease not renewed for this long is stale: its driver was killed (on any host)
SETTLE_S = 0.3  # write, wait, read back: of two drivers starting at once the later writer wins


class Lease:
    """``with Lease(exp_uri): ...`` holds the experiment ``exp_uri`` for this driver while the block runs,
    or raises a one-line FerError naming the driver that holds it."""

    def __init__(self, exp_uri: str, lease_s: float = LEASE_S):
        self.exp, self.lease_s = exp_uri, lease_s
        self.fs, self.root = open_storage(exp_uri, "the experiment")
        self.path, self.local = f"{self.root}/{LEASE_NAME}", isinstance(self.fs, pafs.LocalFileSystem)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        self.mine = dict(host=socket.gethostname(), pid=os.getpid(), started=started, token=uuid.uuid4().hex)
        self._stop, self._thread = threading.Event(), None
        self._created = False  # a local folder made here: removed on exit if it is still empty

    def __enter__(self) -> Lease:
        try:
            held = self._read()
            if held is not None:
                if (why := self._stale(held)) is None:
                    raise FerError(self._refusal(held))
                print(
                    f"[sweeps] taking over the lease of a driver that is gone ({_who(held)}; {why})",
                    flush=True,
                )
            elif self.local and not os.path.isdir(self.root):
                self.fs.create_dir(self.root, recursive=True)
                self._created = True
            self._write()
            time.sleep(SETTLE_S)  # object storage keeps the last write: read back whose it was
            back = self._read()
        except OSError as e:
            raise FerError(
                f"{self.exp}: cannot take the experiment's lease: {error_cause(e)} ({one_line(e)})"
            ) from None
        except KeyboardInterrupt:  # between writing and reading back: leave no lease behind
            self.__exit__()
            raise
        if (back or {}).get("token") != self.mine["token"]:
            raise FerError(self._refusal(back or {}))
        self._thread = threading.Thread(target=self._renew, name="fer-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # a renewal in flight ends within the storage's request timeouts
        try:
            held = self._read()
            if held is not None and held.get("token") == self.mine["token"]:
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

    def _read(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                held = json.loads(f.readall())
        except FileNotFoundError:
            return None
        except ValueError:
            held = {}
        return held if isinstance(held, dict) else {}  # unreadable: stale, see _stale

    def _write(self) -> None:
        data = json.dumps({**self.mine, "renewed": time.time(), "lease_s": self.lease_s}).encode()
        target = f"{self.path}.{self.mine['token']}.tmp" if self.local else self.path
        with self.fs.open_output_stream(target) as f:
            f.write(data)
        if self.local:  # a rename: a reader never sees half a lease
            self.fs.move(target, self.path)

    def _stale(self, held: dict) -> str | None:
        """Why the lease ``held`` is stale, or None while its holder may still run."""
        try:
            age, lease_s, pid = time.time() - float(held["renewed"]), float(held["lease_s"]), int(held["pid"])
        except (KeyError, ValueError, TypeError):
            return "its lease is unreadable"
        if age > lease_s:
            return f"its lease was last renewed {age:.0f}s ago, more than its {lease_s:.0f}s"
        if held.get("host") == self.mine["host"] and not _alive(pid):
            return "its process is no longer running on this host"
        return None

    def _refusal(self, held: dict) -> str:
        age = time.time() - float(held.get("renewed", time.time()))
        lease_s = float(held.get("lease_s", LEASE_S))
        return (
            f"{self.exp}: held by another driver ({_who(held)}, renewed {age:.0f}s ago); wait for it to finish, "
            f"or stop it (if it was killed, its lease expires {lease_s:.0f}s after its last renewal)"
        )

    def _renew(self) -> None:
        """Rewrite the lease every lease_s/4 until exit; never raises (a failing renewal warns once)."""
        warned = False
        while not self._stop.wait(self.lease_s / 4):
            try:
                held = self._read()
                if held is not None and held.get("token") != self.mine["token"]:
                    return _warn(
                        f"{self.exp}: another driver took over this experiment's lease ({_who(held)})"
                    )
                self._write()
                warned = False
            except Exception as e:  # noqa: BLE001 - a lost renewal must not stop the sweep
                if not warned:
                    _warn(
                        f"could not renew the lease on {self.exp} ({one_line(e)}); another driver may take it over"
                    )
                warned = True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _who(held: dict) -> str:
    return f"host {held.get('host', '?')}, pid {held.get('pid', '?')}, started {held.get('started', '?')}"


def _warn(msg: str) -> None:
    print(f"[sweeps] WARNING: {msg}", file=sys.stderr, flush=True)
