"""A real two-node Ray cluster on 127.0.0.1: the sweep joins it with --address, trials run on both nodes,
and losing the worker node mid-trial costs nothing that was completed.

Both nodes run on this machine: a head (`ray start --head`) and a worker (`ray start --address`) with
its own custom resource, each offered one CPU, with token authentication on. All of Ray uses the loopback
interface: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the setting Ray uses on single-machine platforms) for
head, worker and driver, the worker started through tests/ray_loopback_start.py (see there why). The
cluster's own processes are killed at the end, also when the test fails (tests/loopback_cluster.py; never
`ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO
from .loopback_cluster import LoopbackCluster
from .sweep_utils import LOOPBACK, TINY, trial_rows, trial_states

WORKER_RESOURCE = "fer_test_worker"


def _raylet_of_worker(cluster: LoopbackCluster):
    """The worker node's raylet (its command line carries the custom resource)."""
    for p in cluster.processes():
        if p.name() == "raylet" and WORKER_RESOURCE in " ".join(p.cmdline()):
            return p
    return None


@pytest.fixture
def two_node_cluster():
    """Start head + worker on 127.0.0.1 with token auth; yield the cluster; always kill exactly its processes."""
    # Ray notices a lost node within a few seconds instead of the default half minute.
    cluster = LoopbackCluster(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    try:
        cluster.start_head(cpus=1)
        cluster.add_worker(cpus=1, resources={WORKER_RESOURCE: 1})
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow  # a real two-node Ray cluster and a sweep on it
def test_sweep_on_two_nodes_survives_losing_the_worker(two_node_cluster, tmp_path):
    address, env = two_node_cluster.address, two_node_cluster.env
    nodes = two_node_cluster.nodes()
    assert len(nodes) == 2
    worker_id = next(n for n, res in nodes.items() if WORKER_RESOURCE in res)
    # Every Ray process of both nodes listens on loopback only.
    assert two_node_cluster.listening() <= LOOPBACK, two_node_cluster.listening()

    storage, name = tmp_path / "results", "cluster"
    exp = storage / name
    cmd = [
        sys.executable,
        "sweeps/run.py",
        "--address",
        address,
        "--storage",
        str(storage),
        "--name",
        name,
        *TINY,
        "num_samples=4",
        "resources.cpus_per_trial=1",
        "max_concurrent_trials=2",
        "max_failures=2",
        "scheduler.max_epochs=4",
        "scheduler.grace_period=4",
        "steps_per_epoch=12",
    ]
    t0 = time.perf_counter()
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # Wait for a trial on the worker node to finish an epoch but not the last, then lose that node.
        victim = None
        deadline = time.time() + 600
        while victim is None and time.time() < deadline:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            for trial, rows in trial_rows(exp).items():
                if rows[-1].get("node_id") == worker_id and 1 <= rows[-1]["epoch"] < 4:
                    victim = trial
            time.sleep(0.2)
        assert victim, "no trial ran on the worker node"
        raylet = _raylet_of_worker(two_node_cluster)
        for p in [*raylet.children(recursive=True), raylet]:  # the node's raylet and its trial workers
            p.kill()
        rc = driver.wait(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    seconds = time.perf_counter() - t0
    out = (tmp_path / "driver.log").read_text()
    assert rc == 0, out[-4000:]

    states = trial_states(exp)
    rows = trial_rows(exp)
    assert len(states) == 4 and set(states.values()) == {"TERMINATED"}, states
    used = {r.get("node_id") for trial_rows_ in rows.values() for r in trial_rows_}
    assert worker_id in used and len(used - {worker_id}) >= 1, "trials did not run on both nodes"
    # The lost trial was retried from its last checkpoint on the head: epochs continue, none repeats.
    epochs = [r["epoch"] for r in rows[victim]]
    assert epochs == [1, 2, 3, 4], epochs
    assert rows[victim][-1]["node_id"] != worker_id
    assert "restored from its checkpoint" in out
    assert (exp / "report" / "report.md").is_file()
    print(f"two-node sweep with a lost worker: {seconds:.0f}s")


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_yaml_is_valid_for_ray(name):
    """Both launcher configs validate against Ray's own schema and install the project as the README does."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = yaml.safe_load((REPO / name).read_text())
    jsonschema.validate(cfg, schema)
    for key in (
        "cluster_name",
        "provider",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "file_mounts",
    ):
        assert key in cfg, key
    assert any("pip install -e ." in c for c in cfg["setup_commands"]), "setup must install this project"
    readme = (REPO / "README.md").read_text()
    assert "pip install -e . && python sweeps/run.py" in readme  # the main job installs what nodes install
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):  # each starts Ray, with token auth
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), (key, cfg[key])
    if cfg["provider"]["type"] == "local":
        assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    else:
        types = cfg["available_node_types"]
        assert cfg["head_node_type"] in types
        assert any(t.get("max_workers", 0) > 0 for n, t in types.items() if n != cfg["head_node_type"])
