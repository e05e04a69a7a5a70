"""Real Ray clusters of several nodes on 127.0.0.1, for tests (see tests/ray_loopback_start.py for why the
worker nodes start through a wrapper).

Each cluster has its own GCS port and token; ``stop()`` kills exactly its own processes (found by that
port in their command lines, and their children), never other Ray instances on the machine, which is
what ``ray stop`` would do.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from .sweep_utils import kill_and_wait

RAY = str(Path(sys.executable).with_name("ray"))
WRAPPER = str(Path(__file__).with_name("ray_loopback_start.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A head (``ray start --head``) and any number of worker nodes, all on 127.0.0.1, token auth on.

    Args:
        **env: extra environment for every node (and for drivers that use ``self.env``).
    """

    def __init__(self, **env: str):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            **env,
        }  # loopback addresses for every process

    def _run(self, cmd: list[str]) -> None:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

    def start_head(
        self, cpus: int, gpus: int = 0, resources: dict | None = None, autoscaling_config: str | None = None
    ) -> None:
        cmd = [
            RAY,
            "start",
            "--head",
            f"--port={self.port}",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        if autoscaling_config:
            cmd.append(f"--autoscaling-config={autoscaling_config}")
        self._run(cmd)

    def add_worker(self, cpus: int, gpus: int = 0, resources: dict | None = None) -> None:
        cmd = [
            sys.executable,
            WRAPPER,
            "start",
            f"--address={self.address}",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
            "--disable-usage-stats",
        ]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        self._run(cmd)

    def processes(self) -> list:
        """This cluster's processes: every one whose command line names its GCS port, and their children."""
        import psutil

        mark = re.compile(rf"(127\.0\.0\.1:|--gcs_server_port=|--port=){self.port}(?!\d)")
        me = os.getpid()
        found = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            args = p.info["cmdline"] or []
            if p.info["pid"] != me and any(mark.search(a) for a in args):
                found[p.pid] = p
                try:
                    found.update({c.pid: c for c in p.children(recursive=True)})
                except psutil.NoSuchProcess:
                    pass
        found.pop(me, None)
        return list(found.values())

    def listening(self) -> set[str]:
        """The addresses this cluster's processes listen on (TCP)."""
        import psutil

        out = set()
        for p in self.processes():
            try:
                out |= {c.laddr.ip for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def nodes(self) -> dict[str, dict]:
        """NodeID -> resources of the alive nodes (asked from a separate driver process)."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
            "print('NODES', json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))"
        )
        r = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr[-3000:]
        # Ray may log to stdout around the print (a loaded machine, a slow shutdown): take the marked line.
        line = next((x for x in r.stdout.splitlines() if x.startswith("NODES ")), None)
        assert line is not None, r.stdout[-3000:] + r.stderr[-3000:]
        return json.loads(line[len("NODES ") :])

    def stop(self) -> None:
        """SIGKILL every process of this cluster (an unclean stop: no ``ray stop``) and wait for them."""
        kill_and_wait(self.processes())
