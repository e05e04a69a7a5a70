"""The storage side of tests/test_object_storage.py: moto's S3 server on 127.0.0.1 behind a TCP proxy
that a test can close (the storage looks down) and reopen on the same port (it is back, data intact)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

BUCKET = "fer-test"


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of the storage server. ``close()`` makes the storage look
    down (new connections refused, open ones reset); ``open()`` brings it back on the same port."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        ls.settimeout(0.2)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def close(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:  # a reset, as a server that went away leaves its clients
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()
            except OSError:
                pass

    def _accept(self, ls: socket.socket) -> None:
        while self._listener is ls:
            try:
                client, _ = ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
        with self._lock:
            self._conns -= {src, dst}


class S3:
    """The moto server, the proxy in front of it, a bucket, and how the sweep is pointed at them."""

    def __init__(self, tmp: Path):
        from moto.server import ThreadedMotoServer

        self.tmp = tmp
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.server_port = self.server.get_host_and_port()[1]
        self.proxy = TcpProxy(self.server_port)
        self.proxy.open()
        self.fs = self._direct_fs()  # the tests' own view, straight to moto: it works while the proxy is down
        self.fs.create_dir(BUCKET)
        self.env = self._env()

    def _direct_fs(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=f"http://127.0.0.1:{self.server_port}",
            allow_bucket_creation=True,
        )

    def _env(self) -> dict:
        env = os.environ.copy()
        for k in list(env):  # nothing of the user's AWS setup or HTTP proxies may send a request elsewhere
            if k.startswith("AWS_") or k.lower() in ("http_proxy", "https_proxy", "all_proxy"):
                env.pop(k)
        aws = self.tmp / "aws-none"
        env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(aws / "config"),
            AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"),
            NO_PROXY="127.0.0.1,localhost",
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.proxy.port}",
        )
        return env

    def stop(self) -> None:
        self.proxy.close()
        self.server.stop()
        if getattr(self.server, "_server", None) is not None:  # stop() leaves the listening socket open
            self.server._server.server_close()

    # ---- reading the bucket ----

    def files(self, prefix: str) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(
            pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
        )
        return sorted(i.path[len(BUCKET) + 1 :] for i in infos if i.type == pafs.FileType.File)

    def read(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{BUCKET}/{key}") as f:
            return f.readall()

    def mirror_state(self, prefix: str) -> Path:
        """Tune's state files and the trials' result.json of BUCKET/prefix, copied to a local folder, so
        that sweep_utils' readers (trial_states, trial_rows) read them as in the local-storage tests."""
        local = self.tmp / "mirror" / prefix
        shutil.rmtree(local, ignore_errors=True)
        for key in self.files(prefix):
            rel = key[len(prefix) + 1 :]
            top_state = "/" not in rel and rel.startswith("experiment_state-") and rel.endswith(".json")
            if top_state or (rel.startswith("fer_trainable_") and rel.endswith("/result.json")):
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                (local / rel).write_bytes(self.read(key))
        return local
