"""Kill a budgeted demo sweep at each of five instants (SIGKILL of the driver's process group), resume it with
``--resume --name``, and compare its report with an uninterrupted run's; prints a table.

    python -m tests.kill_resume_check [--instants search,winner,retrain,report,after] [--storage DIR]

The runs are made comparable by fixed seeds, concurrency 1 and a budget (30m) large enough that the caps,
not the time limit, size the sweep: winner, trial statuses, retrain epochs and the plan's sizes must equal
the uninterrupted run's. Trials are known by their parameters (Ray names them at random); on the tiny demo
data trials often tie, and a tie goes by the parameters (``sweeps.report.trials.ranked``), so the winner
must be the same too. The budget's seconds come from each run's own probe, so the budget table is
compared with what that experiment recorded (fer_plan.json / fer_winner.json), not across runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import tempfile
import time
from pathlib import Path

from .conftest import REPO
from .sweep_utils import descendants, kill_all, sweep_cmd

SETTINGS = ["--time-budget", "30m", "num_samples=3", "retrain_epochs=2", "max_concurrent_trials=1", "seed=7"]
PLAN_KEYS = ("num_samples", "max_epochs", "retrain_epochs_planned")


def _ready(instant: str, exp: Path, log: Path) -> bool:
    """Whether the sweep writing ``exp`` (its output in ``log``) has reached ``instant``."""
    if instant == "search":
        return any(f.stat().st_size for f in exp.glob("fer_trainable_*/result.json"))
    if instant == "winner":
        return (exp / "fer_winner.json").exists()
    if instant == "retrain":
        return any(f.stat().st_size for f in exp.glob("retrain/*/result.json"))
    if instant == "report":
        return "[sweeps] report 2/" in log.read_text()
    return (exp / "report" / "report.html").exists()  # "after": the report is whole


def _summary(exp: Path) -> dict:
    metrics = json.loads((exp / "report" / "metrics.json").read_text())
    names = sorted(metrics["params"])  # Ray names trials at random: a trial is known by its parameters
    with open(exp / "report" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    statuses = sorted((*(row[n] for n in names), row["status"]) for row in rows)
    budget = metrics["timing"].get("budget") or {}
    recorded = json.loads((exp / "fer_winner.json").read_text())["members"][0]["params"]
    return {
        "winner": metrics["params"],
        "winner_recorded": metrics["params"] == recorded,
        "retrain_epochs": metrics["retrain_epochs"],
        "statuses": statuses,
        "plan": {k: budget.get(k) for k in PLAN_KEYS},
        "budget": budget,
        "phases": metrics["timing"]["phases"],
    }


def _recorded(exp: Path) -> dict:
    """The budget table the experiment recorded with its winner (as the retrain was resized)."""
    winner = json.loads((exp / "fer_winner.json").read_text())
    from sweeps.plan.budget import TimeBudget

    return TimeBudget.from_record(winner["budget"]).to_dict()


def run(storage: Path, name: str, kill_at: str | None, between=None) -> tuple[dict, dict, int]:
    """Run the sweep (killed at ``kill_at`` and resumed, when given; ``between(exp, resume_cmd)`` is called
    in between): its summary, the phase seconds the killed run had recorded, and the resume's exit status."""
    exp, log = storage / name, storage / f"{name}.log"
    cmd = sweep_cmd(storage, name, *SETTINGS)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        children = []
        try:
            while kill_at and not _ready(kill_at, exp, log) and proc.poll() is None:
                children = descendants(proc.pid) or children
                time.sleep(0.2)
            if not kill_at:
                proc.wait(timeout=1800)
        finally:
            kill_all(proc, children or descendants(proc.pid))
    before = json.loads((exp / "fer_phases.json").read_text()) if (exp / "fer_phases.json").exists() else {}
    rc = proc.returncode
    if kill_at:
        resume = [*cmd[:2], "--storage", str(storage), "--name", name, "--resume"]
        if between:
            between(exp, resume)
        r = subprocess.run(resume, cwd=REPO, capture_output=True, text=True, timeout=1800)
        (storage / f"{name}.resume.log").write_text(r.stdout + r.stderr)
        rc = r.returncode
    return _summary(exp), before, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.kill_resume_check", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--instants", default="search,winner,retrain,report,after")
    p.add_argument("--storage", default=None)
    args = p.parse_args(argv)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="kill-resume-"))
    storage.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ref, _, _ = run(storage, "whole", None)
    print(
        f"uninterrupted: winner {ref['winner']}, retrain {ref['retrain_epochs']} epochs, plan {ref['plan']}, "
        f"statuses {ref['statuses']} ({time.monotonic() - t0:.0f} s; in {storage})",
        flush=True,
    )
    header = (
        "instant",
        "rc",
        "winner = recorded",
        "winner",
        "statuses",
        "retrain epochs",
        "plan",
        "budget = recorded",
        "phases kept",
    )
    rows, ok = [header], True
    for instant in args.instants.split(","):
        got, before, rc = run(storage, f"kill-{instant}", instant)
        kept = all(got["phases"].get(k, 0) >= v - 0.1 for k, v in before.items())
        checks = (
            rc == 0,
            got["winner_recorded"],
            got["winner"] == ref["winner"],
            got["statuses"] == ref["statuses"],
            got["retrain_epochs"] == ref["retrain_epochs"],
            got["plan"] == ref["plan"],
            got["budget"] == _recorded(storage / f"kill-{instant}"),
            kept,
        )
        ok &= all(checks)
        marks = ["same" if c else "DIFFERS" for c in checks[1:-1]]
        rows.append((instant, str(rc), *marks, "yes" if kept else "NO"))
        print(f"  {instant}: {got['phases']} (the killed run had recorded {before})", flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"{'all equal' if ok else 'DIFFERENCES'}; {time.monotonic() - t0:.0f} s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
