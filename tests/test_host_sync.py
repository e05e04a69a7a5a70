"""The training step reads nothing back to the host and builds no tensor from Python values, except at the
stated interval (``engine.HOST_READ_EVERY``: the finite-loss check and the progress bar).

On a GPU each such read waits for the queued work and each host-built tensor is a copy to the device; on
the CPU they are counted the same way, with a ``TorchDispatchMode`` that sees every aten call of a real
Trainer's steps (model, loss, backward, clipping, optimizer, schedule, EMA, mixing).
"""

from __future__ import annotations

import dataclasses
import itertools
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fer_core import engine
from fer_core.checkpoint import save_checkpoint
from fer_core.config import make_config
from fer_core.runtime import resolve_runtime
from fer_core.trainer import Trainer

from .conftest import tiny_config

aten = torch.ops.aten
READS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal}
HOST_BUILT = {aten.lift_fresh, aten.lift_fresh_copy, aten.scalar_tensor}
_SKIP = (str(Path(__file__)), "/torch/utils/_python_dispatch.py", "/torch/_")  # torch/_*: its wrappers


def _origin() -> str:
    """The innermost Python line that made the call, past this mode's own frames and torch's wrappers."""
    for frame in reversed(traceback.extract_stack()):
        if not any(part in frame.filename for part in _SKIP):
            parts = Path(frame.filename).parts
            return "/".join(parts[-2:]) + f":{frame.lineno}"
    return "?"


class HostCalls(TorchDispatchMode):
    """Counts scalar reads and host-built tensors per training step (``step``: set by ``_stepped``)."""

    def __init__(self):
        super().__init__()
        self.step: int | None = None
        self.events: list[tuple[int, str, str]] = []  # (step, "read" or "host tensor", origin)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = (
            "read"
            if func.overloadpacket in READS
            else "host tensor"
            if func.overloadpacket in HOST_BUILT
            else ""
        )
        if kind and self.step is not None:
            self.events.append((self.step, kind, _origin()))
        return func(*args, **(kwargs or {}))

    def at(self, step: int) -> Counter:
        return Counter((kind, origin) for s, kind, origin in self.events if s == step)


def _stepped(batches, mode: HostCalls, steps: int):
    """Yield ``steps`` batches (cycling), telling ``mode`` which step the calls that follow belong to."""
    for i, batch in enumerate(itertools.islice(itertools.cycle(batches), steps)):
        mode.step = i
        yield batch
    mode.step = None  # the pass's end-of-epoch reads are not a step's


def _run(demo_root, tmp_path, steps: int, fused: bool, progress: bool = False, **kw) -> HostCalls:
    cfg = make_config(
        tiny_config(
            demo_root,
            tmp_path / "o",
            ema_decay=0.99,
            grad_clip=1.0,
            class_weighting="balanced",
            label_smoothing=0.1,
            **kw,
        )
    )
    runtime = resolve_runtime(device="cpu", threads=cfg.threads, eval_batch_size=cfg.eval_batch_size)
    # fused=True is the optimizer a CUDA runtime picks (Runtime.fused_optimizer); torch has it on CPU too.
    trainer = Trainer(cfg, runtime=dataclasses.replace(runtime, fused_optimizer=fused))
    trainer.sampler.set_epoch(1)
    batches = list(trainer.loader)  # real augmented batches, loaded before counting: the step is counted
    mode = HostCalls()
    with mode:
        trainer.train_pass(batches=_stepped(batches, mode, steps), progress=progress)
    return mode


def test_cuda_path_step_reads_nothing_outside_the_interval(demo_root, tmp_path):
    steps = engine.HOST_READ_EVERY + 2
    mode = _run(demo_root, tmp_path, steps, fused=True, progress=True)
    # Step 0 builds the optimizer's state; after it every step is clean but the interval's.
    for step in range(1, steps):
        calls = mode.at(step)
        if step + 1 == engine.HOST_READ_EVERY:
            # One read for the finite-loss check, two for the progress bar's loss and accuracy.
            assert sum(calls.values()) == 3, calls
            assert {origin.split(":")[0] for _, origin in calls} == {"fer_core/engine.py"}, calls
        else:
            assert not calls, f"step {step}: {calls}"


def test_mixing_reads_only_its_host_drawn_numbers(demo_root, tmp_path):
    mode = _run(demo_root, tmp_path, 4, fused=True, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=1.0)
    for step in range(1, 4):
        calls = mode.at(step)
        assert calls and all(
            kind == "read" and origin.startswith("fer_core/mixing.py") for kind, origin in calls
        ), f"step {step}: {calls}"


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_cpu_default_step_adds_nothing_to_the_optimizers_host_step_count(demo_root, tmp_path, optimizer):
    """On the CPU default (torch's foreach optimizer, kept so CPU figures stay as they were) Adam keeps its
    step count on the host by torch's design; nothing else in the step reads or builds a tensor."""
    mode = _run(demo_root, tmp_path, 4, fused=False, optimizer=optimizer)
    for step in range(1, 4):
        other = {o: n for o, n in mode.at(step).items() if not o[1].startswith("optim/")}
        assert not other, f"step {step}: {other}"


def test_ema_update_is_two_batched_calls(demo_root, tmp_path):
    """The EMA blends the parameters and copies the buffers (BatchNorm statistics) in one call each, not one
    small copy per buffer (each a kernel launch on a GPU)."""
    trainer = Trainer(make_config(tiny_config(demo_root, tmp_path / "o", ema_decay=0.99)))
    assert len(list(trainer.model.buffers())) > 50  # EfficientNet-B0's BatchNorm statistics
    calls = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        trainer.ema.update(trainer.model)
    assert calls == {"_foreach_lerp_": 1, "_foreach_copy_": 1}, calls


def test_resume_uses_this_runtimes_optimizer_implementation(demo_root, tmp_path):
    """A checkpoint written with the fused optimizer (a GPU run) resumes on the CPU with the CPU's choice."""
    cfg = make_config(tiny_config(demo_root, tmp_path / "o"))
    runtime = resolve_runtime(device="cpu", threads=cfg.threads, eval_batch_size=cfg.eval_batch_size)
    fused = Trainer(cfg, runtime=dataclasses.replace(runtime, fused_optimizer=True))
    fused.train_pass(max_steps=1)
    save_checkpoint(fused.state(), tmp_path / "last.pt")
    plain = Trainer(cfg, runtime=runtime)
    plain.restore(tmp_path / "last.pt")
    assert [g["fused"] for g in plain.optimizer.param_groups] == [None] * len(plain.optimizer.param_groups)
    plain.train_pass(max_steps=1)  # and it trains on
