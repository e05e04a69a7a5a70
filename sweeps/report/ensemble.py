"""Scores of the retrained winner's ensemble: the members' checkpoints copied beside ``best.pt`` and scored."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fer_core.checkpoint import copy_checkpoint
from fer_core.evaluate import ensemble_metrics, score
from sweeps.report.calibration import calibrate_ensemble


def copy_result_checkpoint(result, dst: Path) -> None:
    """Copy ``last.pt`` of a retrain's last reported checkpoint (a Ray Result) to ``dst``."""
    with tempfile.TemporaryDirectory() as tmp:
        result.checkpoint.to_directory(tmp)
        copy_checkpoint(Path(tmp) / "last.pt", dst)


def ensemble(
    out: Path, members: list[dict], finals: list, winner: dict, classes: list, seed: int, **scoring
) -> dict:
    """metrics.json's ``ensemble`` of the retrained ``members`` (``finals``: their results, with ``error`` and
    ``checkpoint``), copied to ``out/ensemble/`` (member0 is ``out/best.pt`` before its temperature is stored,
    scored as ``winner``: every member as trained, at temperature 1; ``scoring``: ``score``'s other
    arguments); or ``ensemble_skipped`` when under two retrains succeeded."""
    pairs = list(zip(members, finals))
    ok = [(t, r) for t, r in pairs if not r.error]
    if len(ok) < 2:
        failed = f"{len(members) - len(ok)} of {len(members)} member retrains failed"
        return {"ensemble_skipped": f"{failed}; an ensemble needs two"}
    folder = out / "ensemble"
    folder.mkdir(exist_ok=True)
    copy_checkpoint(out / "best.pt", folder / "member0.pt")
    scores = [winner]
    for i, (_, r) in enumerate(ok[1:], start=1):
        copy_result_checkpoint(r, folder / f"member{i}.pt")
        scores.append(score(folder / f"member{i}.pt", **scoring))
    failed = [{"trial_id": t["trial_id"], "error": str(r.error)[:300]} for t, r in pairs if r.error]
    result = {"members": [], "failed_members": failed}
    for i, ((t, _), s) in enumerate(zip(ok, scores)):
        seed_i = int(t["params"].get("seed", seed))  # the member's own seed when it searched one
        entry = {"trial_id": t["trial_id"], "params": t["params"], "checkpoint": f"ensemble/member{i}.pt"}
        result["members"].append({**entry, "seed": seed_i, "val_accuracy": s["val"]["val_accuracy"]})
    for sp in winner:
        result.update(ensemble_metrics([s[sp] for s in scores], sp, classes))
    result["calibration"] = calibrate_ensemble(scores)
    return {"ensemble": result}
