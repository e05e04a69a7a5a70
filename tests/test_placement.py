"""Per-node trial placement (sweeps/plan/resources.py), as a pure function of node sizes: no Ray needed."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fer_core.errors import FerError
from sweeps.config.settings import load_settings
from sweeps.plan.resources import NodeShape as N
from sweeps.plan.resources import (
    load_node_types,
    node_types_from_config,
    nodes_from_ray,
    place,
    place_trials,
)

from .conftest import REPO


def test_two_one_cpu_nodes_get_one_cpu_trials_on_each():
    """The issue's case: auto on two 1-CPU nodes asked for the cluster total (2 CPUs) that no node has."""
    placed = place([N("head", 1, head=True), N("worker", 1)])
    assert placed.resources == {"cpu": 1, "gpu": 0.0}
    assert placed.concurrent == 2
    assert [k for _, k in placed.per_node] == [1, 1]


def test_auto_cpus_fit_the_smallest_usable_node_and_bigger_nodes_take_more():
    placed = place([N("small", 2), N("big", 16)])
    assert placed.cpus == 2  # the 2-CPU node takes one trial; 4-wide trials would leave it idle
    assert [k for _, k in placed.per_node] == [1, 8] and placed.concurrent == 9
    assert place([N("a", 16), N("b", 16)]).resources == {"cpu": 4, "gpu": 0.0}  # at most 4 wide


def test_gpu_trials_go_to_gpu_nodes_only_with_their_cpus_split_per_gpu_share():
    """With albumentations (CPU workers augment), each GPU node's CPUs are split between its trials."""
    nodes = [N("head", 8, head=True), N("gpu1", 4, 1), N("gpu2", 16, 2)]
    placed = place(nodes, augment_backend="albumentations")  # auto: one GPU per trial
    assert placed.resources == {"cpu": 4, "gpu": 1.0}
    assert [k for _, k in placed.per_node] == [0, 1, 2]
    half = place(nodes, gpus_per_trial=0.5, augment_backend="albumentations")
    assert half.resources == {"cpu": 2, "gpu": 0.5} and [k for _, k in half.per_node] == [0, 2, 4]
    assert "(no GPU)" in half.lines()[1] and "one CPU feeds" not in half.lines()[0]


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gpu_trials_augmenting_on_the_gpu_need_one_cpu_and_pack_by_gpu_share(backend):
    """auto (torch on CUDA) or torch: the data and its augmentation live on the GPU, so one CPU feeds a
    trial; trials per node follow the GPU share, no longer the CPU count."""
    nodes = [N("head", 8, head=True), N("gpu1", 4, 1), N("gpu2", 16, 2)]
    placed = place(nodes, augment_backend=backend)
    assert placed.resources == {"cpu": 1, "gpu": 1.0} and [k for _, k in placed.per_node] == [0, 1, 2]
    assert "(data and augmentation on the GPU: one CPU feeds a trial)" in placed.lines()[0]
    quarter = place(nodes, gpus_per_trial=0.25, augment_backend=backend)
    assert quarter.resources == {"cpu": 1, "gpu": 0.25} and [k for _, k in quarter.per_node] == [0, 4, 8]
    eighth = place([N("g5", 4, 1)], gpus_per_trial=0.125, augment_backend=backend)
    assert [k for _, k in eighth.per_node] == [4]  # still one CPU each: a 4-CPU node holds 4
    assert place(nodes, cpus_per_trial=2, augment_backend=backend).cpus == 2  # an explicit count is kept
    cpu_only = place([N("a", 16)], augment_backend=backend)
    assert cpu_only.resources == {"cpu": 4, "gpu": 0.0} and not cpu_only.gpu_fed  # CPU planning unchanged


def test_autoscaled_gpu_type_is_planned_before_any_gpu_is_up():
    """cluster.yaml's shape: a head with no CPUs for trials and GPU workers from 0: GPU trials, not CPU ones."""
    nodes = [N("head", 0, head=True), N("gpu_worker", 4, 1, count=4, launchable=True)]
    placed = place(nodes)
    assert placed.resources == {"cpu": 1, "gpu": 1.0} and placed.concurrent == 4
    assert "node type gpu_worker (autoscaled, up to 4)" in "\n".join(placed.lines())
    # Once two workers are up, they are not counted twice.
    up = nodes + [N("w1", 4, 1), N("w2", 4, 1)]
    assert place(up).concurrent == 4


def test_the_settings_resources_cap_and_trial_count_decide_the_placement():
    s = load_settings(REPO / "sweeps" / "configs" / "default.yaml", {"num_samples": 8})
    one = [N("local", 2)]
    assert (place_trials(s, one).resources, place_trials(s, one).concurrent) == ({"cpu": 2, "gpu": 0.0}, 1)
    assert place_trials(s, [N("local", 16)]).resources == {"cpu": 4, "gpu": 0.0}
    gpus = place_trials(s, [N("local", 16, 2)])  # augment_backend auto: torch on the GPU, one CPU each
    assert (gpus.resources, gpus.concurrent) == ({"cpu": 1, "gpu": 1.0}, 2)
    shared = dataclasses.replace(s, resources=dataclasses.replace(s.resources, gpus_per_trial=0.25))
    quarter = place_trials(shared, [N("local", 16, 2)])  # four trials share each GPU
    assert (quarter.resources, quarter.concurrent) == ({"cpu": 1, "gpu": 0.25}, 8)
    alb = dataclasses.replace(shared, train=dataclasses.replace(s.train, augment_backend="albumentations"))
    assert place_trials(alb, [N("local", 16, 2)]).resources == {"cpu": 2, "gpu": 0.25}
    retrain_alb = dataclasses.replace(shared, retrain={"augment_backend": "albumentations"})
    assert place_trials(retrain_alb, [N("local", 16, 2)]).cpus == 2  # the retrain shares the placement
    few = dataclasses.replace(shared, num_samples=3, max_concurrent_trials=0)
    assert place_trials(few, [N("local", 16, 2)]).concurrent == 3  # no more at once than trials
    capped = dataclasses.replace(s, max_concurrent_trials=2)
    assert place_trials(capped, [N("local", 16)]).resources == {"cpu": 8, "gpu": 0.0}


def test_concurrency_caps():
    nodes = [N("a", 16)]
    assert place(nodes, num_samples=2).concurrent == 2
    capped = place(nodes, max_concurrent=2)  # two trials at once share the node's CPUs
    assert capped.resources == {"cpu": 8, "gpu": 0.0} and capped.concurrent == 2


@pytest.mark.parametrize(
    "kwargs, nodes, expected",
    [
        (
            dict(cpus_per_trial=8),
            [N("a", 1), N("b", 1)],
            "resources.cpus_per_trial = 8: no node can give one trial 8 CPU",
        ),
        (dict(gpus_per_trial=1), [N("a", 4)], "resources.gpus_per_trial = 1: no node can give a trial 1 GPU"),
        (
            dict(gpus_per_trial=2),
            [N("a", 4, 1), N("t", 8, 1, count=3, launchable=True)],
            "no node can give a trial 2 GPU",
        ),
        (
            dict(cpus_per_trial=4, gpus_per_trial=1),
            [N("cpu", 8), N("gpu", 2, 1)],
            "no node can give one trial 4 CPU + 1 GPU",
        ),
        (dict(), [N("head", 0, head=True)], "no node offers CPUs for trials"),
    ],
)
def test_requests_no_node_can_hold_fail_in_one_line_naming_both_sides(kwargs, nodes, expected):
    with pytest.raises(FerError) as e:
        place(nodes, **kwargs)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg
    assert nodes[0].describe() in msg  # what the nodes have


def test_cpu_only_plan_on_a_gpu_cluster_is_warned_about():
    placed = place(
        [N("head", 4, head=True), N("gpu_worker", 4, 1, count=2, launchable=True)], gpus_per_trial=0
    )
    assert placed.gpus == 0 and any("trains on CPU while the GPUs stay idle" in w for w in placed.warnings)
    assert not place([N("a", 4)]).warnings


def test_nodes_from_ray_keeps_alive_nodes_and_marks_the_head():
    nodes = nodes_from_ray(
        [
            {
                "Alive": True,
                "NodeID": "aa" * 28,
                "NodeManagerAddress": "127.0.0.1",
                "Resources": {"CPU": 1.0, "node:__internal_head__": 1.0},
            },
            {
                "Alive": True,
                "NodeID": "bb" * 28,
                "NodeManagerAddress": "127.0.0.1",
                "Resources": {"CPU": 2.0, "GPU": 1.0},
            },
            {
                "Alive": False,
                "NodeID": "cc" * 28,
                "NodeManagerAddress": "127.0.0.1",
                "Resources": {"CPU": 64.0},
            },
        ]
    )
    assert [(n.cpus, n.gpus, n.head) for n in nodes] == [(1.0, 0.0, True), (2.0, 1.0, False)]


def test_shipped_cluster_yaml_plans_gpu_trials_on_its_workers():
    """The product's launcher file declares its worker type's size, so `auto` plans GPU trials from zero workers."""
    types = load_node_types(REPO / "cluster.yaml")
    assert [(t.name, t.gpus, t.count) for t in types] == [("gpu_worker", 1.0, 4)]
    head = N("head", 0, head=True)  # cluster.yaml's head: CPU 0
    placed = place([head, *types], cpus_per_trial="auto", gpus_per_trial="auto")
    assert placed.gpus == 1.0 and placed.cpus == 1 and placed.concurrent == 4  # torch backend: 1 CPU feeds
    alb = place([head, *types], augment_backend="albumentations")
    assert alb.cpus == types[0].cpus and alb.concurrent == 4
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"] == 0


def test_node_types_need_declared_cpus():
    cfg = {
        "head_node_type": "h",
        "available_node_types": {"h": {"resources": {}}, "w": {"resources": {"GPU": 1}, "max_workers": 2}},
    }
    with pytest.raises(FerError, match="node type 'w' does not declare its CPUs"):
        node_types_from_config(cfg)
    cfg["available_node_types"]["w"]["resources"]["CPU"] = 8
    cfg["max_workers"] = 1  # the cluster-wide cap wins over the type's
    assert node_types_from_config(cfg) == [N("w", 8.0, 1.0, count=1, launchable=True)]


def test_onprem_launcher_file_adds_no_launchable_nodes():
    """provider: local starts every listed machine with the cluster: the nodes that are up are all there is."""
    assert load_node_types(REPO / "cluster-onprem.yaml") == []
    with pytest.raises(FerError, match="no 'available_node_types'"):
        node_types_from_config({"provider": {"type": "aws"}}, "x.yaml")
