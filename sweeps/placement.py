"""Per-node trial planning: how many CPUs and GPUs one trial asks for, and how many run at once.

Ray places each trial (one placement-group bundle) on one node, so a trial must fit on a single node:
the plan is made from the nodes' own sizes, never from the cluster's total (two 1-CPU nodes can run two
1-CPU trials, never one 2-CPU trial). On an autoscaling cluster the nodes that matter include those the
autoscaler *can* launch (its node types, read from the launcher file), so a sweep started before any GPU
worker is up still plans GPU trials and the autoscaler brings the GPU workers up for them.

Everything here is a pure function of a list of ``NodeShape`` (no Ray), so it is unit-tested directly;
``sweeps/run.py`` builds the list from ``ray.nodes()`` and the launcher file.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fer_core.config import load_yaml
from fer_core.errors import ConfigError, FerError

# PyTorch's intra-op threads scale poorly past ~4 on small (48 px) inputs, so CPU-only trials are at most
# this wide by default: more, narrower trials finish a sweep sooner.
CPU_TRIAL_WIDTH = 4
_EPS = 1e-9


@dataclass(frozen=True)
class NodeShape:
    """One node that is up, or one node type the autoscaler can launch ``count`` of."""

    name: str
    cpus: float
    gpus: float = 0.0
    count: int = 1  # nodes of this shape: 1 for a node that is up, max_workers for a launchable type
    launchable: bool = False  # a node type the autoscaler starts on demand (not up yet)
    head: bool = False

    def describe(self) -> str:
        size = f"{self.cpus:g} CPU, {self.gpus:g} GPU"
        if self.launchable:
            return f"node type {self.name} (autoscaled, up to {self.count}): {size} each"
        return f"node {self.name}{' (head)' if self.head else ''}: {size}"


@dataclass
class Plan:
    """What every trial asks for, how many run at once, and where they can go."""

    cpus: int
    gpus: float
    concurrent: int
    per_node: list[tuple[NodeShape, int]]  # each node (type) and the trials one such node holds at once
    requested: tuple  # (cpus_per_trial, gpus_per_trial) as configured, for the log
    warnings: list[str] = field(default_factory=list)

    @property
    def resources(self) -> dict:
        """The per-trial resources for ``tune.with_resources``."""
        return {"cpu": self.cpus, "gpu": self.gpus}

    def lines(self) -> list[str]:
        """The plan in a few lines, for the driver's log before the sweep starts."""
        cpt, gpt = self.requested
        out = [
            f"plan: each trial {self.cpus} CPU + {self.gpus:g} GPU (cpus_per_trial: {cpt}, gpus_per_trial: {gpt}), "
            f"up to {self.concurrent} at once; trials run on " + ("GPU" if self.gpus else "CPU")
        ]
        for node, k in self.per_node:
            why = "" if k else (" (too few CPUs)" if node.cpus + _EPS < self.cpus else " (no GPU)")
            out.append(
                f"  {node.describe()} -> {k} trial{'s' if k != 1 else ''} {'each' if node.launchable else 'at once'}{why}"
            )
        return out


def _whole(x: float) -> int:
    return int(math.floor(x + _EPS))


def fits(node: NodeShape, cpus: int, gpus: float) -> int:
    """How many trials of ``cpus`` CPUs + ``gpus`` GPUs one node of this shape holds at once."""
    k = _whole(node.cpus / cpus)
    return min(k, _whole(node.gpus / gpus)) if gpus else k


def _sizes(nodes: list[NodeShape]) -> str:
    return "; ".join(n.describe() for n in nodes) or "no nodes"


def plan_trials(
    nodes: list[NodeShape],
    cpus_per_trial="auto",
    gpus_per_trial="auto",
    max_concurrent: int = 0,
    num_samples: int = 1 << 30,
) -> Plan:
    """Plan trials that each fit on one node.

    auto GPUs: one whole GPU per trial when any node (up or launchable) has a GPU, else CPU-only.
    auto CPUs: the CPUs of the smallest node a trial can use, divided by the trials that node holds (one per
    GPU share with GPUs; CPU-only, trials of up to ``CPU_TRIAL_WIDTH`` CPUs, or ``max_concurrent`` trials
    when that is set), so every such node can take trials and bigger nodes take more of them.

    Args:
        nodes: the nodes that are up and the node types the autoscaler can launch.
        cpus_per_trial: "auto" or a whole number of CPUs.
        gpus_per_trial: "auto", a fraction in (0, 1] or a whole number of GPUs.
        max_concurrent: cap on trials at once (0: as many as fit).
        num_samples: trials in the sweep (no point running more at once).

    Raises:
        FerError: no node (up or launchable) can ever hold one trial: one line naming what was asked for
            and what the nodes have.
    """
    has_gpu = [n for n in nodes if n.gpus > 0]
    gpt = (1.0 if has_gpu else 0.0) if gpus_per_trial == "auto" else float(gpus_per_trial)
    # A trial needs at least one CPU (its process and data pipeline), and its whole GPU share on one node.
    usable = [n for n in nodes if n.cpus >= 1 and n.gpus + _EPS >= gpt]
    if not usable:
        if not gpt:
            raise FerError(
                f"no node offers CPUs for trials ({_sizes(nodes)}); give the cluster a node with CPUs"
            )
        raise FerError(
            f"resources.gpus_per_trial = {gpt:g}: no node can give a trial {gpt:g} GPU ({_sizes(nodes)}); "
            "set gpus_per_trial: 0 or auto, or give the cluster GPU nodes (an autoscaling cluster: pass its "
            "launcher file with --cluster-config)"
        )
    if cpus_per_trial == "auto":

        def share(n: NodeShape) -> int:  # trials one node of this shape should hold
            if gpt:
                k = _whole(n.gpus / gpt)
                return min(k, max_concurrent) if max_concurrent else k
            return (
                max(1, min(max_concurrent, _whole(n.cpus)))
                if max_concurrent
                else max(1, _whole(n.cpus) // CPU_TRIAL_WIDTH)
            )

        cpt = max(1, min(_whole(n.cpus) // share(n) for n in usable))
    else:
        cpt = int(cpus_per_trial)
        if not any(n.cpus + _EPS >= cpt for n in usable):
            gpu = f" + {gpt:g} GPU" if gpt else ""
            raise FerError(
                f"resources.cpus_per_trial = {cpt}: no node can give one trial {cpt} CPU{gpu} "
                f"({_sizes(nodes)}); lower it to at most {max(_whole(n.cpus) for n in usable)} or use auto"
            )
    per_node = [(n, fits(n, cpt, gpt)) for n in nodes]
    slots = _slots(per_node)
    concurrent = max(1, min(slots, max_concurrent or slots, num_samples))
    plan = Plan(cpt, gpt, concurrent, per_node, (cpus_per_trial, gpus_per_trial))
    if not gpt and has_gpu:
        plan.warnings.append(
            f"gpus_per_trial = 0 on a cluster with GPUs ({_sizes(has_gpu)}): every trial trains on "
            "CPU while the GPUs stay idle; set gpus_per_trial: auto (or a fraction) to use them"
        )
    return plan


def _slots(per_node: list[tuple[NodeShape, int]]) -> int:
    """Trials the cluster can hold at once at its largest.

    A launched worker shows up both as a node that is up and inside its type's ``count``: count the up
    workers of a type's shape against that type, so a retrain planned after the sweep does not double them.
    """
    up = [(n, k) for n, k in per_node if not n.launchable]
    total = sum(k for _, k in up)
    for t, k in per_node:
        if t.launchable:
            running = sum(1 for n, _ in up if not n.head and (n.cpus, n.gpus) == (t.cpus, t.gpus))
            total += max(0, t.count - running) * k
    return total


def nodes_from_ray(ray_nodes: list[dict]) -> list[NodeShape]:
    """Alive nodes from ``ray.nodes()``, as shapes.

    Args:
        ray_nodes: ``ray.nodes()`` (each with ``Alive``, ``NodeID``, ``NodeManagerAddress``, ``Resources``).
    """
    out = []
    for n in ray_nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        out.append(
            NodeShape(
                name=f"{n.get('NodeManagerAddress', '?')} {n.get('NodeID', '')[:8]}",
                cpus=float(res.get("CPU", 0)),
                gpus=float(res.get("GPU", 0)),
                head="node:__internal_head__" in res,
            )
        )
    return out


def node_types_from_config(cfg: dict, source: str = "cluster config") -> list[NodeShape]:
    """The worker node types an autoscaling cluster can launch, from its Ray launcher config.

    The head is left out (it is up, so ``ray.nodes()`` has it); so are types with ``max_workers: 0``, and
    every machine of ``provider: local`` (they all start with the cluster).

    Args:
        cfg: a Ray cluster launcher config (``cluster.yaml``, or ``~/ray_bootstrap_config.yaml`` on the head).
        source: the file's name, for errors.

    Raises:
        ConfigError: the file has no node types, or a worker type does not declare its CPU count.
    """
    if isinstance(cfg, dict) and (cfg.get("provider") or {}).get("type") == "local":
        return []  # provider local starts every listed machine with the cluster: the nodes that are up are all
    types = cfg.get("available_node_types") if isinstance(cfg, dict) else None
    if not isinstance(types, dict) or not types:
        raise ConfigError(
            f"{source}: no 'available_node_types'; pass a Ray cluster launcher file (like cluster.yaml)"
        )
    head, cap = cfg.get("head_node_type"), int(cfg.get("max_workers", 1 << 30))
    out = []
    for name, t in types.items():
        count = min(int(t.get("max_workers", cap)), cap)
        if name == head or count <= 0:
            continue
        res = t.get("resources") or {}
        if "CPU" not in res:
            raise ConfigError(
                f"{source}: node type '{name}' does not declare its CPUs; set resources: "
                "{CPU: n, GPU: m} so trials can be planned before such a node is up"
            )
        out.append(
            NodeShape(
                name=name, cpus=float(res["CPU"]), gpus=float(res.get("GPU", 0)), count=count, launchable=True
            )
        )
    return out


def load_node_types(path: str | Path) -> list[NodeShape]:
    """``node_types_from_config`` of a launcher file (YAML or JSON)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{p}: no such cluster launcher file (--cluster-config)")
    return node_types_from_config(load_yaml(p), str(p))


# ---- the sweep's side: its settings and the Ray cluster it runs on ----

# Where `ray up` leaves the cluster's launcher config on the head (what `ray exec`/`ray submit` run beside).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def cluster_config_path(address: str | None, cluster_config: str | None) -> str | None:
    """The launcher file to read node types from: --cluster-config, else the head's bootstrap config when
    the sweep runs on the head (``--address auto``), else none (plan from the nodes that are up)."""
    if cluster_config:
        return cluster_config
    if address == "auto" and Path(BOOTSTRAP_CONFIG).expanduser().is_file():
        return str(Path(BOOTSTRAP_CONFIG).expanduser())
    return None


def cluster_nodes(cluster_config: str | None) -> list:
    """The nodes that are up (``ray.nodes()``) plus the worker types the autoscaler can launch."""
    import ray

    return nodes_from_ray(ray.nodes()) + (load_node_types(cluster_config) if cluster_config else [])


def plan_resources(settings, cluster) -> tuple[dict, int]:
    """Per-trial resources and how many trials run at once (see ``sweeps.placement.plan_trials``).

    Args:
        settings: the sweep settings.
        cluster: a list of ``NodeShape`` (the nodes, and node types that can be launched), or one node's
            resource dict (``{"CPU": 16, "GPU": 2}``).
    """
    plan = make_plan(settings, cluster)
    return plan.resources, plan.concurrent


def make_plan(settings, cluster):
    """``plan_trials`` for these settings; ``cluster`` as in ``plan_resources``."""
    if isinstance(cluster, dict):
        cluster = [NodeShape("local", float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0)))]
    r = settings.resources
    return plan_trials(
        cluster, r.cpus_per_trial, r.gpus_per_trial, settings.max_concurrent_trials, settings.num_samples
    )


def announce_plan(plan, address: str | None, cluster_config: str | None) -> None:
    """Log the per-node plan before the sweep starts; warn loudly where trials would train on CPU by accident."""
    for line in plan.lines():
        print(f"[sweeps] {line}", flush=True)
    for w in plan.warnings:  # a cluster known to have (or launch) GPUs, and a CPU-only plan
        print(f"[sweeps] WARNING: {w}", file=sys.stderr, flush=True)
    if address and not plan.gpus and not cluster_config and not plan.warnings:
        # Nothing says whether this cluster could launch GPU workers later: say what the plan assumed.
        print(
            "[sweeps] note: no GPU on the cluster now and no launcher file read, so trials train on CPU; on an "
            "autoscaling GPU cluster pass its launcher file (--cluster-config) to plan for its GPU workers",
            flush=True,
        )
