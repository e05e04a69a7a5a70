"""Trials placed where they fit, on real Ray clusters of several nodes started on 127.0.0.1 (issue 15).

- two 1-CPU nodes, ``auto``: 1-CPU trials on both nodes, the sweep finishes;
- a request no node can hold (``cpus_per_trial: 8`` on 1-CPU nodes): one line, exit 2, within a minute;
- nodes with logical GPUs (``--num-gpus=1``) beside a CPU-only head: GPU trials only on the GPU nodes,
  with the configured share;
- autoscaling from zero workers (Ray's ``fake_multinode`` provider, which starts real worker nodes on this
  machine): a head with no CPUs, a GPU worker type with ``min_workers: 0``; workers come up and the trials
  ask for and get GPUs;
- a local sweep (no ``--address``) while another Ray cluster runs on the machine (its trials run on a Ray
  of its own, not on that cluster), and after that cluster was killed without ``ray stop`` (it starts its
  own Ray and finishes, report included).

Logical GPUs need no real GPU: Ray places by declared resources, and the trial (torch without CUDA here)
trains on CPU. Every cluster is killed by the test's own process list at the end, also on failure.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .loopback_cluster import LoopbackCluster
from .sweep_utils import LOOPBACK, TINY, trial_rows

pytestmark = pytest.mark.slow  # every test here starts real Ray clusters and sweeps on them

# One short epoch per trial and a 1-epoch retrain: these tests are about where trials run.
QUICK = [
    *TINY,
    "scheduler.max_epochs=1",
    "scheduler.grace_period=1",
    "steps_per_epoch=4",
    "max_failures=0",
]


def sweep(storage: Path, name: str, *extra: str, address: str | None = None) -> list[str]:
    return [
        sys.executable,
        "sweeps/run.py",
        *(["--address", address] if address else []),
        "--storage",
        str(storage),
        "--name",
        name,
        *QUICK,
        *extra,
    ]


def run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_until(cmd: list[str], env: dict, log: Path, line: str, timeout: int = 600) -> str:
    """Run a sweep until it prints ``line`` (the sweep part done), then stop it: what follows (retrain,
    report) is tested elsewhere, and skipping it keeps these tests short."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.time() + timeout
            while time.time() < deadline and proc.poll() is None and line not in log.read_text():
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    out = log.read_text()
    assert line in out, out[-4000:]
    return out


def trial_requests(exp: Path) -> dict[str, dict]:
    """trial_id -> the resources Tune asked Ray for (its placement group's bundle), from the experiment state."""
    state = json.loads(Path(sorted(glob.glob(str(exp / "experiment_state-*.json")))[-1]).read_text())
    out = {}
    for trial_json, _ in state["trial_data"]:
        t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        pgf = pickle.loads(bytes.fromhex(t["placement_group_factory"]))
        out[t["trial_id"]] = pgf.required_resources
    return out


def nodes_used(exp: Path) -> dict[str, set[str]]:
    return {trial: {r["node_id"] for r in rows} for trial, rows in trial_rows(exp).items()}


@pytest.fixture(scope="module")
def two_one_cpu_nodes():
    """``ray start --head --num-cpus=1`` and a second ``--num-cpus=1`` node, as the issue's user did."""
    cluster = LoopbackCluster()
    try:
        cluster.start_head(cpus=1)
        cluster.add_worker(cpus=1)
        yield cluster
    finally:
        cluster.stop()


def test_request_no_node_can_hold_fails_in_one_line(two_one_cpu_nodes, tmp_path):
    t0 = time.perf_counter()
    r = run(
        sweep(tmp_path, "infeasible", "resources.cpus_per_trial=8", address=two_one_cpu_nodes.address),
        two_one_cpu_nodes.env,
        timeout=120,
    )
    seconds = time.perf_counter() - t0
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "cpus_per_trial = 8" in errors[0] and "1 CPU, 0 GPU" in errors[0], errors[0]
    assert seconds < 60
    print(f"infeasible request refused in {seconds:.1f}s: {errors[0]}")


def test_auto_on_two_one_cpu_nodes_runs_one_cpu_trials_on_both(two_one_cpu_nodes, tmp_path):
    cluster = two_one_cpu_nodes
    nodes = cluster.nodes()
    assert len(nodes) == 2
    t0 = time.perf_counter()
    r = run(sweep(tmp_path, "auto2", "num_samples=2", address=cluster.address), cluster.env)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    assert "plan: each trial 1 CPU + 0 GPU" in r.stdout and "up to 2 at once" in r.stdout, r.stdout[:3000]
    exp = tmp_path / "auto2"
    assert {tuple(v.items()) for v in trial_requests(exp).values()} == {(("CPU", 1.0),)}
    used = set().union(*nodes_used(exp).values())
    assert used == set(nodes), "trials did not run on both nodes"
    assert (exp / "report" / "report.md").is_file()
    assert cluster.listening() <= LOOPBACK, cluster.listening()
    print(f"two 1-CPU nodes, auto: {seconds:.0f}s")


def test_gpu_trials_go_to_the_gpu_node_with_the_configured_share(tmp_path):
    cluster = LoopbackCluster()
    try:
        cluster.start_head(cpus=1)  # CPU-only head: it could run a trial, but not a GPU one
        cluster.add_worker(cpus=2, gpus=1)  # a logical GPU: placement needs no real one
        gpu_nodes = {n for n, res in cluster.nodes().items() if res.get("GPU")}
        assert len(gpu_nodes) == 1
        t0 = time.perf_counter()
        out = run_until(
            sweep(tmp_path, "gpu", "num_samples=2", "resources.gpus_per_trial=0.5", address=cluster.address),
            cluster.env,
            tmp_path / "driver.log",
            "retraining it anew",
        )
        seconds = time.perf_counter() - t0
    finally:
        cluster.stop()
    assert "plan: each trial 1 CPU + 0.5 GPU" in out and "up to 2 at once" in out, out[:3000]
    exp = tmp_path / "gpu"
    requests = trial_requests(exp)
    assert len(requests) == 2 and all(r == {"CPU": 1.0, "GPU": 0.5} for r in requests.values()), requests
    used = nodes_used(exp)
    assert len(used) == 2 and set().union(*used.values()) == gpu_nodes, used
    print(f"GPU share 0.5 on the GPU node: {seconds:.0f}s")


FAKE_GPU_TYPE = {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}


def fake_cluster_config(gcs_address: str) -> dict:
    """Ray's fake_multinode provider: the autoscaler on the head starts worker nodes as local processes
    (the provider Ray's own autoscaler tests use); ``gcs_address`` keeps them on our loopback GCS."""
    return {
        "cluster_name": "fer-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        # As in Ray's own fake_multinode example config: no SSH updaters or launch-config checks for
        # nodes that are local processes, and node ids stand in for IPs (all nodes share 127.0.0.1).
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_worker": FAKE_GPU_TYPE,
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def test_autoscaling_from_zero_workers_gets_gpu_trials(tmp_path):
    cluster = LoopbackCluster(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    config = tmp_path / "fake-cluster.json"
    config.write_text(json.dumps(fake_cluster_config(cluster.address)))
    try:
        cluster.start_head(cpus=0, autoscaling_config=str(config))  # the head runs no trial
        assert [res.get("GPU", 0) for res in cluster.nodes().values()] == [0]  # no worker, no GPU yet
        t0 = time.perf_counter()
        out = run_until(
            sweep(
                tmp_path, "scale", "num_samples=2", "--cluster-config", str(config), address=cluster.address
            ),
            cluster.env,
            tmp_path / "driver.log",
            "retraining it anew",
        )
        seconds = time.perf_counter() - t0
        nodes = cluster.nodes()
        listening = cluster.listening()
    finally:
        cluster.stop()
    assert "plan: each trial 1 CPU + 1 GPU" in out and "node type gpu_worker (autoscaled, up to 2)" in out, (
        out[:3000]
    )
    gpu_nodes = {n for n, res in nodes.items() if res.get("GPU")}
    assert 1 <= len(gpu_nodes) <= 2, nodes  # the autoscaler started GPU workers
    exp = tmp_path / "scale"
    requests = trial_requests(exp)
    assert len(requests) == 2 and all(r == {"CPU": 1.0, "GPU": 1.0} for r in requests.values()), requests
    assert set().union(*nodes_used(exp).values()) <= gpu_nodes
    # The GPUs here are logical, so the trials trained on the CPU: each row records both, which is what the
    # report's per-trial device line and its WARNING are made from.
    rows = trial_rows(exp)
    assert rows and all(r[-1]["ray_gpus"] == 1 and r[-1]["device"] == "cpu" for r in rows.values()), rows
    assert listening <= LOOPBACK, listening
    print(f"autoscaled from 0 to {len(gpu_nodes)} GPU workers: {seconds:.0f}s")


def test_local_sweep_starts_its_own_ray_beside_a_live_or_dead_cluster(tmp_path):
    """A bare ``ray.init()`` joins the cluster Ray recorded as current (silently, when the token matches),
    and waits forever for its GCS once it is killed uncleanly; a local sweep must do neither."""
    other = LoopbackCluster()
    record = Path(os.environ["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
    try:
        other.start_head(cpus=1)
        assert record.read_text().strip() == other.address  # what a bare ray.init() would join
        other_nodes = set(other.nodes())
        env = dict(other.env)  # same token: joining the other cluster would succeed silently
        t0 = time.perf_counter()
        beside = run(sweep(tmp_path, "beside", "num_samples=1"), env, timeout=400)
        alive_s = time.perf_counter() - t0
        assert beside.returncode == 0, beside.stdout[-4000:] + beside.stderr[-3000:]
        assert (tmp_path / "beside" / "report" / "report.md").is_file()
        used = set().union(*nodes_used(tmp_path / "beside").values())
        assert used and not used & other_nodes, "the local sweep ran on the other cluster"
    finally:
        other.stop()  # SIGKILL, no `ray stop`: the record still names the dead cluster
    assert record.read_text().strip() == other.address
    t0 = time.perf_counter()
    dead = run(sweep(tmp_path, "after", "num_samples=1"), env, timeout=400)
    dead_s = time.perf_counter() - t0
    assert dead.returncode == 0, dead.stdout[-4000:] + dead.stderr[-3000:]
    assert (tmp_path / "after" / "report" / "report.md").is_file()
    print(f"local sweeps beside a live cluster: {alive_s:.0f}s, after it was killed: {dead_s:.0f}s")
