"""Scores of the retrained models on val (and test when the data has it), plain and with flip TTA: the
winner's checkpoint and, with several members, their ensemble (the average of their probabilities)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fer_core.evaluate import ensemble_metrics, evaluate_checkpoint
from fer_core.runtime import Runtime


def copy_checkpoint(result, dst: Path) -> None:
    """Copy a retrain's last reported checkpoint (``last.pt`` in Ray's checkpoint folder) to ``dst``."""
    with tempfile.TemporaryDirectory() as tmp:
        result.checkpoint.to_directory(tmp)
        shutil.copy2(Path(tmp) / "last.pt", dst)


def splits(data: str) -> list[str]:
    """The splits the report scores: val, and test when ``data`` has one."""
    return ["val"] + (["test"] if (Path(data) / "test").is_dir() else [])


def score(ckpt: Path, data: str, cache_dir: str | None, runtime: Runtime) -> dict[str, dict]:
    """A checkpoint's metrics per split, plain and with flip TTA, with the probability arrays."""
    kwargs = dict(runtime=runtime, cache_dir=cache_dir, return_probs=True, tta_flip=True)
    return {sp: evaluate_checkpoint(ckpt, data, sp, **kwargs) for sp in splits(data)}


def ensemble(
    out: Path, members: list[dict], finals: list, winner: dict, classes: list, seed: int, **scoring
) -> dict:
    """metrics.json's ``ensemble`` of the retrained ``members`` (``top_trials``; ``finals`` their Ray Results):
    their final checkpoints in ``out/ensemble/`` (``member0.pt`` a copy of the winner's ``out/best.pt``, scored
    as ``winner``), each one's seed (``seed`` unless its parameters set one) and val accuracy, and the metrics
    of their averaged probabilities; or ``ensemble_skipped`` when fewer than two retrains succeeded.
    ``scoring``: ``data``, ``cache_dir`` and ``runtime`` as for ``score``."""
    pairs = list(zip(members, finals))
    ok = [(t, r) for t, r in pairs if not r.error]
    if len(ok) < 2:
        failed = f"{len(members) - len(ok)} of {len(members)} member retrains failed"
        return {"ensemble_skipped": f"{failed}; an ensemble needs two"}
    folder = out / "ensemble"
    folder.mkdir(exist_ok=True)
    shutil.copy2(out / "best.pt", folder / "member0.pt")
    scores = [winner]
    for i, (_, r) in enumerate(ok[1:], start=1):
        copy_checkpoint(r, folder / f"member{i}.pt")
        scores.append(score(folder / f"member{i}.pt", **scoring))
    failed = [{"trial_id": t["trial_id"], "error": str(r.error)[:300]} for t, r in pairs if r.error]
    result = {"members": [], "failed_members": failed}
    for i, ((t, _), s) in enumerate(zip(ok, scores)):
        seed_i = int(t["params"].get("seed", seed))
        entry = {"trial_id": t["trial_id"], "params": t["params"], "checkpoint": f"ensemble/member{i}.pt"}
        result["members"].append({**entry, "seed": seed_i, "val_accuracy": s["val"]["val_accuracy"]})
    for sp in winner:
        result.update(ensemble_metrics([s[sp] for s in scores], sp, classes))
    return {"ensemble": result}
