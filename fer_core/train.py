"""``train()``, the function every run goes through (the standalone CLI and every sweep trial), and that CLI.

``train`` runs a ``fer_core.trainer.Trainer`` epoch by epoch and owns what a run leaves in its output
folder: the audit, config.yaml, the epoch log, the checkpoints, resuming, and the report callback.

    python -m fer_core.train --data DIR --epochs N --out DIR [--config file.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .audit import audit_dataset, summarize
from .checkpoint import (
    copy_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from .config import (
    TrainConfig,
    config_help,
    config_to_dict,
    load_yaml,
    make_config,
    parse_overrides,
)
from .datasets import data_roots, resolve
from .errors import ConfigError, FerError
from .outputs import RUN_FILES, check_out_folder
from .trainer import Trainer

ReportFn = Callable[[dict, Path], None]


def _summary_line(row: dict, epochs: int, best_name: str, best) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} bal_acc {row['val_balanced_accuracy']:.4f} "
        f"macro_f1 {row['val_macro_f1']:.4f}"
        + (f" tta_acc {row['val_tta_accuracy']:.4f}" if "val_tta_accuracy" in row else "")
        + "".join(
            f" {k[: -len('/val_accuracy')]} acc {v:.4f}"
            for k, v in row.items()
            if k.endswith("/val_accuracy")
        )
        + f"  {row['images_per_s']:.0f} img/s {row['epoch_seconds']:.1f}s"
        f"{'  *best' if row['is_best'] else ''}  ({best_name} best {best:.4f})"
    )


def run_audit(cfg: TrainConfig, prefix: str = "[fer_core]", dataset=None) -> dict:
    """Audit ``cfg.data`` at the size and colour mode training decodes it (sharing its image cache) and print
    the summary, warnings included; returns the findings for an ``audit.json``."""
    findings = audit_dataset(
        dataset or resolve(cfg),
        img_size=cfg.img_size,
        grayscale=cfg.grayscale,
        cache_dir=cfg.cache_dir or None,
        strict=cfg.strict,
    )
    for line in summarize(findings):
        print(f"{prefix} audit: {line}", flush=True)
    return findings


def train(
    config: TrainConfig | Mapping[str, Any],
    report: ReportFn | None = None,
    resume_from: str | Path | None = None,
    replace_run: bool = False,
) -> dict:
    """Train a FER classifier; the same function serves standalone runs and sweep trials.

    Before the first epoch the dataset is audited (``cfg.audit``; ``OUT/audit.json``). After every epoch: the
    epoch row is appended to ``OUT/epochs.jsonl``, ``OUT/checkpoints/last.pt`` (and
    ``best.pt`` when the epoch is the best so far) are written atomically, and then
    ``report(row, OUT/checkpoints)`` is called. An exception raised by ``report`` stops training with
    everything up to that epoch saved. train() alone decides which files exist (``keep_checkpoints``);
    a callback reads them and leaves them alone.

    Args:
        config: a TrainConfig or a mapping of its keys.
        report: optional callback(metrics_row, checkpoint_dir).
        resume_from: a last.pt to continue from (same config); training continues at the next epoch.
        replace_run: delete a previous run's checkpoints and log in OUT once the data and model have loaded,
            so the new run never mixes with the old one's files (the CLI's --overwrite).

    Returns:
        {"best_metric", "best_metric_name", "best_epoch", "epochs", "history", "out", "best_checkpoint",
        "last_checkpoint", "best_val_metrics"}; a checkpoint path is None when that file does not exist
        (``keep_checkpoints`` off, or no epoch run).

    Raises:
        FerError: bad data, config or checkpoint (one-line message).
        DivergedError (a FerError and FloatingPointError): the loss, weights or metrics became non-finite;
            that epoch is not saved.
    """
    cfg = config if isinstance(config, TrainConfig) else make_config(config)
    if not cfg.data:
        raise FerError("key 'data' is empty; pass --data pointing at a folder with train/ and val/")
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    trainer = Trainer(cfg)
    remove_stale_temporaries(ckpt_dir)  # half-written files of a killed run
    if replace_run and not resume_from:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if resume_from:
        trainer.restore(resume_from)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.audit:
        (out / "audit.json").write_text(json.dumps(run_audit(cfg), indent=1))
    if trainer.epoch < cfg.epochs:  # a finished run's config.yaml stays the one it trained with
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    # Rewrite the log from the checkpoint's history: rows written after the last checkpoint (a crash
    # between the two writes) are dropped, so a resumed log has no gap and no repeat.
    log_path = out / "epochs.jsonl"
    log_path.write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
    print(
        f"[fer_core] {len(trainer.train_idx)} train / {len(trainer.val_idx)} val images, {cfg.model} at {cfg.img_size}px on "
        f"{trainer.runtime.describe()}, {trainer.steps_per_epoch} steps/epoch"
        + (
            f", dedupe cross_split left out {len(trainer.dropped_duplicates)} train images"
            if cfg.dedupe == "cross_split"
            else ""
        )
        + (f", resuming after epoch {trainer.epoch}" if trainer.epoch else ""),
        flush=True,
    )
    while trainer.epoch < cfg.epochs:
        row = trainer.run_epoch()
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        save_checkpoint(trainer.state(), ckpt_dir / "last.pt")
        if row["is_best"]:
            if cfg.keep_checkpoints:
                copy_checkpoint(ckpt_dir / "last.pt", ckpt_dir / "best.pt")
            (out / "best_val_metrics.json").write_text(
                json.dumps({"epoch": row["epoch"], **trainer.best_val}, indent=1)
            )
        print(_summary_line(row, cfg.epochs, cfg.best_metric, trainer.best), flush=True)
        if report is not None:
            try:
                report(row, ckpt_dir)
            finally:  # also when the caller stops training from inside report (Tune stopping a trial)
                if not cfg.keep_checkpoints:
                    (ckpt_dir / "last.pt").unlink(missing_ok=True)
    best_rows = [r for r in trainer.history if r.get("is_best")]
    best_val_path = out / "best_val_metrics.json"
    return {
        "best_metric": trainer.best,
        "best_metric_name": cfg.best_metric,
        "best_epoch": best_rows[-1]["epoch"] if best_rows else None,
        "epochs": trainer.epoch,
        "history": trainer.history,
        "out": str(out),
        # Only files that exist now (none with keep_checkpoints off: the report callback took them).
        **{
            f"{k}_checkpoint": str(ckpt_dir / f"{k}.pt") if (ckpt_dir / f"{k}.pt").is_file() else None
            for k in ("best", "last")
        },
        "best_val_metrics": json.loads(best_val_path.read_text()) if best_val_path.exists() else None,
    }


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fer_core.train",
        description="Train an expression classifier on an ImageFolder dataset (train/ and val/ with a folder per class, or the class folders alone; see data, classes, split).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in --config YAML or as key=value; command line wins):\n" + config_help(),
    )
    p.add_argument("--data", help="dataset root with train/ and val/ (same as data=DIR)")
    p.add_argument("--epochs", type=int, help="number of epochs (same as epochs=N)")
    p.add_argument("--out", help="output folder (same as out=DIR)")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if it exists")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out folder that holds one (its checkpoints and log are replaced)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="any config key, e.g. lr=3e-4 aug_strength=0.3"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_intermixed_args(argv)
    try:
        cfg = make_config(load_yaml(args.config), source=args.config) if args.config else TrainConfig()
        items = parse_overrides(args.overrides)
        cli = make_config(items, source="command line", base=cfg)
        for key in ("data", "epochs", "out"):
            flag = getattr(args, key)
            if flag is None:
                continue
            given = make_config({key: flag}, source=f"--{key}")  # the flag's own value, checked
            if key in items and getattr(cli, key) != getattr(given, key):
                raise ConfigError(
                    f"--{key} {flag} and {key}={getattr(cli, key)} on the command line disagree; give one of them"
                )
            cli = dataclasses.replace(cli, **{key: getattr(given, key)})
        cfg = cli
        last = Path(cfg.out) / "checkpoints" / "last.pt"
        check_out_folder(
            cfg.out, args.resume, args.overwrite, inputs=[cfg.weights], datasets=data_roots(cfg.data)
        )
        resume = last if args.resume and last.exists() else None
        log = Path(cfg.out) / "epochs.jsonl"
        if args.resume and resume is None and log.is_file() and log.read_text().strip():
            print(
                f"[fer_core] --resume: {log} logs epochs but {last} was never saved (killed before its first "
                "checkpoint, or keep_checkpoints off); training starts again from epoch 1",
                file=sys.stderr,
                flush=True,
            )
        result = train(cfg, resume_from=resume, replace_run=args.overwrite)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; completed epochs are saved in {cfg.out}/checkpoints (continue with --resume)",
            file=sys.stderr,
        )
        return 130
    print(
        f"done: best {result['best_metric_name']} {result['best_metric']:.4f} at epoch {result['best_epoch']}; "
        f"checkpoints in {result['out']}/checkpoints, log {result['out']}/epochs.jsonl"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
