"""What each trial gets: its CPUs and GPUs, how many run at once on which nodes, its and threads.
Trials are placed from each node's own size, never the cluster's total, including the nodes an autoscaler
can launch; ``place`` is a pure function of the nodes' shapes (no Ray)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import ray

from fer_core.config import load_yaml
from fer_core.errors import ConfigError, FerError
from sweeps.config.settings import SweepSettings

# PyTorch's intra-op threads scale poorly past ~4 on small (48 px) inputs, so CPU-only trials are at most
# this wide by default: more, narrower trials finish a sweep sooner.
CPU_TRIAL_WIDTH = 4
# Where `ray up` leaves the cluster's launcher config on the head (what `ray exec`/`ray submit` run beside).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
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


@dataclass(frozen=True)
class Placement:
    """What every trial asks for, how many run at once, and how many each node (type) holds."""

    cpus: int
    gpus: float
    concurrent: int
    per_node: tuple[tuple[NodeShape, int], ...]  # each node (type) and the trials one such node holds at once
    requested: tuple  # (cpus_per_trial, gpus_per_trial) as configured, for the log
    warnings: tuple[str, ...] = ()
    gpu_fed: bool = False  # auto CPUs were 1 because the trials augment on the GPU (the torch backend)

    @property
    def resources(self) -> dict:  # for tune.with_resources
        return {"cpu": self.cpus, "gpu": self.gpus}

    def lines(self) -> list[str]:
        """The placement in a few lines, for the log before the sweep starts."""
        cpt, gpt = self.requested
        out = [
            f"plan: each trial {self.cpus} CPU + {self.gpus:g} GPU (cpus_per_trial: {cpt}, gpus_per_trial: {gpt}), "
            f"up to {self.concurrent} at once; trials run on "
            + ("GPU" if self.gpus else "CPU")
            + (" (data and augmentation on the GPU: one CPU feeds a trial)" if self.gpu_fed else "")
        ]
        for node, k in self.per_node:
            why = "" if k else (" (too few CPUs)" if node.cpus + _EPS < self.cpus else " (no GPU)")
            where = "each" if node.launchable else "at once"
            out.append(f"  {node.describe()} -> {k} trial{'s' if k != 1 else ''} {where}{why}")
        return out


def _whole(x: float) -> int:  # floor, tolerant of float error (0.3 / 0.1 is 2.999...)
    return int(math.floor(x + _EPS))


def fits(node: NodeShape, cpus: int, gpus: float) -> int:
    """How many trials of ``cpus`` CPUs + ``gpus`` GPUs one node of this shape holds at once."""
    k = _whole(node.cpus / cpus)
    return min(k, _whole(node.gpus / gpus)) if gpus else k


def _sizes(nodes: list[NodeShape]) -> str:
    return "; ".join(n.describe() for n in nodes) or "no nodes"


def place(
    nodes: list[NodeShape],
    *,
    cpus_per_trial: int | str = "auto",
    gpus_per_trial: float | str = "auto",
    max_concurrent: int = 0,
    num_samples: int = 1 << 30,
    augment_backend: str = "auto",
) -> Placement:
    """Trials that each fit on one of ``nodes``, at most ``max_concurrent`` (0: no cap) and ``num_samples``
    at once (auto: a whole GPU each when there are GPUs; CPUs so the smallest usable node takes trials, or
    one CPU for a GPU trial whose data and augmentation live on the GPU: ``augment_backend`` torch, or auto,
    which is torch on CUDA); a one-line FerError naming the request and the nodes when no node can hold one."""
    has_gpu = [n for n in nodes if n.gpus > 0]
    gpt = (1.0 if has_gpu else 0.0) if gpus_per_trial == "auto" else float(gpus_per_trial)
    # A trial needs at least one CPU (its process and data pipeline), and its whole GPU share on one node.
    usable = [n for n in nodes if n.cpus >= 1 and n.gpus + _EPS >= gpt]
    if not usable:
        if not gpt:
            none = f"no node offers CPUs for trials ({_sizes(nodes)})"
            raise FerError(f"{none}; give the cluster a node with CPUs")
        raise FerError(
            f"resources.gpus_per_trial = {gpt:g}: no node can give a trial {gpt:g} GPU ({_sizes(nodes)}); "
            "set gpus_per_trial: 0 or auto, or give the cluster GPU nodes (an autoscaling cluster: pass its "
            "launcher file with --cluster-config)"
        )
    # With the torch backend a GPU trial's CPU only launches GPU work: trials pack by their GPU share.
    gpu_fed = bool(gpt) and cpus_per_trial == "auto" and augment_backend != "albumentations"
    if gpu_fed:
        cpt = 1
    elif cpus_per_trial == "auto":

        def share(n: NodeShape) -> int:  # trials one node of this shape should hold
            if gpt:
                k = _whole(n.gpus / gpt)
                return min(k, max_concurrent) if max_concurrent else k
            if max_concurrent:
                return max(1, min(max_concurrent, _whole(n.cpus)))
            return max(1, _whole(n.cpus) // CPU_TRIAL_WIDTH)

        cpt = max(1, min(_whole(n.cpus) // share(n) for n in usable))
    else:
        cpt = int(cpus_per_trial)
        if not any(n.cpus + _EPS >= cpt for n in usable):
            gpu = f" + {gpt:g} GPU" if gpt else ""
            raise FerError(
                f"resources.cpus_per_trial = {cpt}: no node can give one trial {cpt} CPU{gpu} "
                f"({_sizes(nodes)}); lower it to at most {max(_whole(n.cpus) for n in usable)} or use auto"
            )
    per_node = tuple((n, fits(n, cpt, gpt)) for n in nodes)
    # Trials the cluster holds at once at its largest. A launched worker is both a node that is up and in its
    # type's count: count it against its type, so a retrain placed after the sweep does not double it.
    up = [(n, k) for n, k in per_node if not n.launchable]
    slots = sum(k for _, k in up)
    for t, k in per_node:
        if t.launchable:
            running = sum(1 for n, _ in up if not n.head and (n.cpus, n.gpus) == (t.cpus, t.gpus))
            slots += max(0, t.count - running) * k
    warnings = ()
    if not gpt and has_gpu:
        warnings = (
            f"gpus_per_trial = 0 on a cluster with GPUs ({_sizes(has_gpu)}): every trial trains on "
            "CPU while the GPUs stay idle; set gpus_per_trial: auto (or a fraction) to use them",
        )
    concurrent = max(1, min(slots, max_concurrent or slots, num_samples))
    return Placement(cpt, gpt, concurrent, per_node, (cpus_per_trial, gpus_per_trial), warnings, gpu_fed)


def place_trials(settings: SweepSettings, nodes: list[NodeShape]) -> Placement:
    """``place`` with these settings' resources, concurrency cap, trial count and augmentation backend (the
    retrain runs in the same placement, so albumentations in either plans CPUs for it)."""
    r = settings.resources
    backends = {settings.train.augment_backend, settings.retrain.get("augment_backend", "auto")}
    return place(
        nodes,
        cpus_per_trial=r.cpus_per_trial,
        gpus_per_trial=r.gpus_per_trial,
        max_concurrent=settings.max_concurrent_trials,
        num_samples=settings.num_samples,
        augment_backend="albumentations" if "albumentations" in backends else settings.train.augment_backend,
    )


def nodes_from_ray(ray_nodes: list[dict]) -> list[NodeShape]:
    """The alive nodes of ``ray.nodes()``, as shapes."""
    out = []
    for n in (n for n in ray_nodes if n.get("Alive")):
        res, name = n.get("Resources", {}), f"{n.get('NodeManagerAddress', '?')} {n.get('NodeID', '')[:8]}"
        head = "node:__internal_head__" in res
        out.append(NodeShape(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), head=head))
    return out


def node_types_from_config(cfg: dict, source: str = "cluster config") -> list[NodeShape]:
    """The worker node types an autoscaling cluster can launch (not the head, nor ``max_workers: 0``), from
    its Ray launcher config (``source``, named in a ConfigError)."""
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
                "{CPU: n, GPU: m} so trials can be placed before such a node is up"
            )
        out.append(NodeShape(name, float(res["CPU"]), float(res.get("GPU", 0)), count, launchable=True))
    return out


def load_node_types(path: str | Path) -> list[NodeShape]:
    """``node_types_from_config`` of a launcher file (YAML or JSON)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{p}: no such cluster launcher file (--cluster-config)")
    return node_types_from_config(load_yaml(p), str(p))


def cluster_config_path(address: str | None, cluster_config: str | None) -> str | None:
    """The launcher file to read node types from: --cluster-config, else the head's bootstrap config with
    ``--address auto``, else None (place on the nodes that are up)."""
    if cluster_config:
        return cluster_config
    if address == "auto" and Path(BOOTSTRAP_CONFIG).expanduser().is_file():
        return str(Path(BOOTSTRAP_CONFIG).expanduser())
    return None


def cluster_nodes(cluster_config: str | None) -> list[NodeShape]:
    """The nodes that are up (``ray.nodes()``) plus the worker types the autoscaler can launch."""
    return nodes_from_ray(ray.nodes()) + (load_node_types(cluster_config) if cluster_config else [])


def announce(placement: Placement, address: str | None, cluster_config: str | None) -> None:
    """Log the placement before the sweep starts; warn loudly where trials would train on CPU by accident."""
    for line in placement.lines():
        print(f"[sweeps] {line}", flush=True)
    for w in placement.warnings:  # a cluster known to have (or launch) GPUs, and a CPU-only placement
        print(f"[sweeps] WARNING: {w}", file=sys.stderr, flush=True)
    if address and not placement.gpus and not cluster_config and not placement.warnings:
        # Nothing says whether this cluster could launch GPU workers later: say what was assumed.
        print(
            "[sweeps] note: no GPU on the cluster now and no launcher file read, so trials train on CPU; on an "
            "autoscaling GPU cluster pass its launcher file (--cluster-config) to plan for its GPU workers",
            flush=True,
        )


def assigned_threads() -> dict:
    """``{"threads": n}`` for a TrainConfig in a Ray worker: its own CPUs (``{}`` when Ray assigned none), so
    trials sharing a node do not each take a whole node's threads."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return {"threads": max(1, int(cpus))} if cpus else {}
