"""The one training function, used standalone and by every sweep trial, and its CLI.

    python -m fer_core.train --data DIR --epochs N --out DIR [--config file.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import yaml
from torch import nn

from . import engine
from .augment import build_train_transform
from .checkpoint import copy_checkpoint, load_checkpoint, nonfinite_weights, remove_stale_temporaries, save_checkpoint
from .config import (FIELDS, TrainConfig, config_help, config_to_dict, load_yaml, make_config, parse_overrides,
                     resolve_normalize)
from .data import EpochSampler, FerDataset, SplitData, iter_batches, load_split, stratified_indices
from .errors import CheckpointError, DivergedError, FerError
from .ema import ModelEma
from .mixing import BatchMixer
from .model import build_model, normalization
from .preprocess import Preprocess
from .runtime import Runtime, resolve_runtime, worker_init

ReportFn = Callable[[dict, Path], None]
# Keys of an epoch row kept small: Ray stores every reported row, so the confusion matrix goes to a file.
_ROW_VAL_KEYS = ("val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_per_class_recall",
                 "val_tta_accuracy", "val_tta_balanced_accuracy", "val_tta_macro_f1")
# What a finished or interrupted run leaves in its --out folder (refused by the CLI without --resume/--overwrite).
_RUN_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "epochs.jsonl", "best_val_metrics.json")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up from ~0 to 1, then cosine down to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return factor


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD with weight decay off for norms and biases (decaying BN scales only hurts)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def _check_resume_compatible(state: dict, cfg: TrainConfig, path) -> None:
    old = state["config"]
    for key in ("model", "img_size", "grayscale", "normalize", "dedupe", "epochs", "batch_size", "steps_per_epoch", "max_train_samples", "seed"):
        if old.get(key, FIELDS[key].default) != getattr(cfg, key):  # keys added later: their default
            raise CheckpointError(f"{path}: cannot resume, '{key}' was {old.get(key)!r} and is now {getattr(cfg, key)!r}; "
                                  "resume with the same config or start a new run in another --out folder")


class Trainer:
    """Holds one run's pieces; ``train()`` below is the public entry. Split out so tests and the
    benchmark can reach the loader and step without re-implementing them."""

    def __init__(self, cfg: TrainConfig, runtime: Runtime | None = None):
        self.cfg = cfg
        self.runtime = runtime or resolve_runtime(cfg.device, cfg.precision, cfg.channels_last, cfg.threads,
                                                  cfg.num_workers, cfg.compile, cfg.eval_batch_size)
        seed_everything(cfg.seed)
        common = dict(img_size=cfg.img_size, grayscale=cfg.grayscale, strict=cfg.strict, cache_dir=cfg.cache_dir or None)
        self.train_data: SplitData = load_split(cfg.data, "train", **common)
        self.val_data: SplitData = load_split(cfg.data, "val", **common)
        self.class_names = list(self.train_data.classes)
        self.dropped_duplicates = self._cross_split_duplicates(common) if cfg.dedupe == "cross_split" else np.empty(0, np.int64)
        pool = np.setdiff1d(np.arange(len(self.train_data)), self.dropped_duplicates)
        self.train_idx = pool[stratified_indices(self.train_data.labels[pool], cfg.max_train_samples)]
        self.val_idx = stratified_indices(self.val_data.labels, cfg.max_val_samples)
        self.model = build_model(cfg.model, len(self.class_names), cfg.pretrained, cfg.weights or None,
                                 cfg.drop_rate, cfg.drop_path_rate, cfg.bn_momentum)
        mean, std = normalization(self.model)
        self.preprocess = Preprocess(cfg.img_size, cfg.grayscale, mean, std, per_image=resolve_normalize(cfg) == "per_image")
        self.model.to(self.runtime.device)
        if self.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # The compiled wrapper shares the model's parameters: checkpoints and evaluation use the plain
        # module (eval mode would trigger a second compilation for no gain in a pass this short).
        self.train_model = torch.compile(self.model) if self.runtime.compile else self.model
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.mixer = BatchMixer(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob)
        n = len(self.train_idx)
        if n < cfg.batch_size and not cfg.steps_per_epoch:
            raise FerError(f"key 'batch_size' = {cfg.batch_size} exceeds the {n} training images; lower batch_size or add data")
        self.steps_per_epoch = cfg.steps_per_epoch or n // cfg.batch_size
        self.sampler = EpochSampler(n, cfg.seed, self.steps_per_epoch * cfg.batch_size)
        transform = build_train_transform(cfg.aug_strength, cfg.img_size, cfg.seed)
        dataset = FerDataset(self.train_data, self.train_idx, transform, cfg.seed)
        w = self.runtime.num_workers
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=w, drop_last=True,
            pin_memory=self.runtime.pin_memory, persistent_workers=w > 0, prefetch_factor=4 if w > 0 else None,
            worker_init_fn=worker_init if w > 0 else None)
        self.optimizer = build_optimizer(self.model, cfg)
        total = cfg.epochs * self.steps_per_epoch
        warm = min(total, int(round(cfg.warmup_epochs * self.steps_per_epoch)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total, warm, cfg.min_lr_ratio))
        self.scaler = torch.amp.GradScaler() if self.runtime.amp_dtype is torch.float16 else None
        counts = np.bincount(self.train_data.labels[self.train_idx], minlength=len(self.class_names))
        weights = engine.class_weights(counts, cfg.class_weighting)
        self.loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(self.runtime.device),
                                           label_smoothing=cfg.label_smoothing)
        self.epoch, self.best, self.history = 0, None, []
        self.best_val: dict | None = None  # full val metrics (confusion matrix included) of the best epoch

    def _cross_split_duplicates(self, common: dict) -> np.ndarray:
        """dedupe: cross_split: train rows that duplicate a val (or test) image, which would otherwise leak
        the answer to the evaluation. The audit finds them; the data files are left as they are."""
        from .audit import cross_split_duplicates

        others = [self.val_data]
        if (Path(self.cfg.data) / "test").is_dir():
            others.append(load_split(self.cfg.data, "test", **common))
        return np.asarray(cross_split_duplicates(self.train_data, others), dtype=np.int64)

    # -- state ---------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch, "best_metric": self.best, "best_metric_name": self.cfg.best_metric,
            "config": config_to_dict(self.cfg), "class_names": self.class_names,
            "preprocess": self.preprocess.to_dict(), "history": self.history,
            "ema": self.ema.state_dict() if self.ema else None,
        }

    def restore(self, path) -> None:
        state = load_checkpoint(path, map_location=self.runtime.device)
        if float(state["preprocess"].get("blur_sigma", 0.0)) > 0:
            raise CheckpointError(f"{path}: cannot resume, this run was trained with an input blur that fer_core no longer "
                                  "applies; start a new run in another --out folder")
        _check_resume_compatible(state, self.cfg, path)
        if list(state["class_names"]) != self.class_names:
            raise CheckpointError(f"{path}: classes {state['class_names']} differ from the data's {self.class_names}; start a new run")
        old_pre = Preprocess.from_dict(state["preprocess"], source=str(path))
        if old_pre != self.preprocess:
            raise CheckpointError(f"{path}: cannot resume, the input preprocessing was {old_pre.to_dict()} and is now "
                                  f"{self.preprocess.to_dict()} (the data changed?); start a new run in another --out folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.best, self.history = int(state["epoch"]), state["best_metric"], list(state["history"])

    def evaluate(self, data: SplitData | None = None, indices=None, prefix: str = "val_", return_probs: bool = False) -> dict:
        data = data if data is not None else self.val_data
        indices = indices if indices is not None else (self.val_idx if data is self.val_data else np.arange(len(data)))
        return engine.evaluate(self.eval_model, iter_batches(data, indices, self.runtime.eval_batch_size), self.preprocess,
                               self.runtime, self.class_names, prefix=prefix, return_probs=return_probs,
                               tta_flip=self.cfg.tta_flip)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and deployed: the EMA when it is on, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.cfg.best_metric == "val_loss" else value > self.best

    def train_pass(self, max_steps: int = 0, progress: bool = False, desc: str = "train") -> dict:
        """One pass of the training loader (at most ``max_steps`` steps); the benchmark times this too."""
        return engine.train_one_epoch(self.train_model, self.loader, self.optimizer, self.scheduler, self.loss_fn,
                                      self.preprocess, self.runtime, self.scaler, self.cfg.grad_clip, progress, desc,
                                      mixer=self.mixer, ema=self.ema, max_steps=max_steps)

    def _check_finite(self, row: dict) -> None:
        """Stop before a diverged epoch is saved. NaN weights still give a finite accuracy (argmax of NaN
        picks class 0), so without this a broken model could be written as best.pt; raising here leaves
        the previous epoch's checkpoints as the last ones written."""
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        for name, module in (("weights", self.model), ("averaged weights", self.ema.module if self.ema else None)):
            if module is not None and nonfinite_weights(module.state_dict())[0]:
                bad.insert(0, name)
        if bad:
            raise DivergedError(f"{self.cfg.out}: epoch {self.epoch} diverged (non-finite {', '.join(bad)}); it was not saved, "
                                "the checkpoints of the epochs before it are kept; lower lr or set grad_clip")

    def run_epoch(self) -> dict:
        """Train and validate the next epoch; returns its metrics row."""
        self.epoch += 1
        # Reseeding per epoch (dropout, drop-path, loader) makes epoch k identical whether resumed or not.
        torch.manual_seed(self.cfg.seed * 1_000 + self.epoch)
        self.sampler.set_epoch(self.epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        tm = self.train_pass(progress=self.cfg.progress, desc=f"epoch {self.epoch}/{self.cfg.epochs}")
        vm = self.evaluate()
        row = {"epoch": self.epoch, "lr": lr, **tm, **{k: vm[k] for k in _ROW_VAL_KEYS if k in vm},
               "device": str(self.runtime.device)}  # where it trained: a sweep's report names it per trial
        self._check_finite(row)
        row["is_best"] = self._is_better(row[self.cfg.best_metric])
        if row["is_best"]:
            self.best = row[self.cfg.best_metric]
            self.best_val = vm
        self.history.append(row)
        return row


def _summary_line(row: dict, epochs: int, best_name: str, best) -> str:
    return (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} bal_acc {row['val_balanced_accuracy']:.4f} "
            f"macro_f1 {row['val_macro_f1']:.4f}"
            + (f" tta_acc {row['val_tta_accuracy']:.4f}" if "val_tta_accuracy" in row else "")
            + f"  {row['images_per_s']:.0f} img/s {row['epoch_seconds']:.1f}s"
            f"{'  *best' if row['is_best'] else ''}  ({best_name} best {best:.4f})")


def run_audit(cfg: TrainConfig, prefix: str = "[fer_core]") -> dict:
    """Audit ``cfg.data`` at the size and colour mode training decodes it (sharing its image cache) and print
    the summary, warnings included; returns the findings for an ``audit.json``."""
    from .audit import audit_dataset, summarize

    findings = audit_dataset(cfg.data, img_size=cfg.img_size, grayscale=cfg.grayscale,
                             cache_dir=cfg.cache_dir or None, strict=cfg.strict)
    for line in summarize(findings):
        print(f"{prefix} audit: {line}", flush=True)
    return findings


def train(config: TrainConfig | Mapping[str, Any], report: ReportFn | None = None,
          resume_from: str | Path | None = None, replace_run: bool = False) -> dict:
    """Train a FER classifier; the same function serves standalone runs and sweep trials.

    Before the first epoch the dataset is audited (``cfg.audit``; ``OUT/audit.json``). After every epoch: the
    epoch row is appended to ``OUT/epochs.jsonl``, ``OUT/checkpoints/last.pt`` (and
    ``best.pt`` when the epoch is the best so far) are written atomically, and then
    ``report(row, OUT/checkpoints)`` is called. An exception raised by ``report`` stops training with
    everything up to that epoch saved.

    Args:
        config: a TrainConfig or a mapping of its keys.
        report: optional callback(metrics_row, checkpoint_dir).
        resume_from: a last.pt to continue from (same config); training continues at the next epoch.
        replace_run: delete a previous run's checkpoints and log in OUT once the data and model have loaded,
            so the new run never mixes with the old one's files (the CLI's --overwrite).

    Returns:
        {"best_metric", "best_metric_name", "best_epoch", "epochs", "history", "out", "best_checkpoint",
        "last_checkpoint", "best_val_metrics"}.

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
        for name in _RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if resume_from:
        trainer.restore(resume_from)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.audit:
        (out / "audit.json").write_text(json.dumps(run_audit(cfg), indent=1))
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    # Rewrite the log from the checkpoint's history: rows written after the last checkpoint (a crash
    # between the two writes) are dropped, so a resumed log has no gap and no repeat.
    log_path = out / "epochs.jsonl"
    log_path.write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
    print(f"[fer_core] {len(trainer.train_idx)} train / {len(trainer.val_idx)} val images, {cfg.model} at {cfg.img_size}px on "
          f"{trainer.runtime.describe()}, {trainer.steps_per_epoch} steps/epoch"
          + (f", dedupe cross_split left out {len(trainer.dropped_duplicates)} train images" if cfg.dedupe == "cross_split" else "")
          + (f", resuming after epoch {trainer.epoch}" if trainer.epoch else ""), flush=True)
    while trainer.epoch < cfg.epochs:
        row = trainer.run_epoch()
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        save_checkpoint(trainer.state(), ckpt_dir / "last.pt")
        if row["is_best"]:
            copy_checkpoint(ckpt_dir / "last.pt", ckpt_dir / "best.pt")
            (out / "best_val_metrics.json").write_text(json.dumps({"epoch": row["epoch"], **trainer.best_val}, indent=1))
        print(_summary_line(row, cfg.epochs, cfg.best_metric, trainer.best), flush=True)
        if report is not None:
            report(row, ckpt_dir)
    best_rows = [r for r in trainer.history if r.get("is_best")]
    best_val_path = out / "best_val_metrics.json"
    return {
        "best_metric": trainer.best, "best_metric_name": cfg.best_metric,
        "best_epoch": best_rows[-1]["epoch"] if best_rows else None, "epochs": trainer.epoch,
        "history": trainer.history, "out": str(out),
        "best_checkpoint": str(ckpt_dir / "best.pt"), "last_checkpoint": str(ckpt_dir / "last.pt"),
        "best_val_metrics": json.loads(best_val_path.read_text()) if best_val_path.exists() else None,
    }


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fer_core.train",
        description="Train an expression classifier on an ImageFolder dataset (train/ and val/ with the seven class folders).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in --config YAML or as key=value; command line wins):\n" + config_help(),
    )
    p.add_argument("--data", help="dataset root with train/ and val/ (same as data=DIR)")
    p.add_argument("--epochs", type=int, help="number of epochs (same as epochs=N)")
    p.add_argument("--out", help="output folder (same as out=DIR)")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out folder that holds one (its checkpoints and log are replaced)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, e.g. lr=3e-4 aug_strength=0.3")
    return p


def check_out_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start over a run the user did not ask to replace (the sweep refuses the same way).

    Args:
        out: the --out folder.
        resume: --resume was given (continue the run there).
        overwrite: --overwrite was given (``train(..., replace_run=True)`` then deletes the old run's files).

    Raises:
        FerError: --out is a file, both flags were given, or it holds a run and neither was given.
    """
    if resume and overwrite:
        raise FerError("--resume and --overwrite contradict each other; pass one of them")
    if out.exists() and not out.is_dir():
        raise FerError(f"{out}: --out is a file; give a folder for the checkpoints and logs")
    found = [name for name in _RUN_FILES if (out / name).is_file()]
    if not found or resume:
        return
    if not overwrite:
        raise FerError(f"{out}: holds a run already ({', '.join(found)}); pass --resume to continue it, "
                       "--overwrite to replace it, or another --out")


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_intermixed_args(argv)
    try:
        cfg = make_config(load_yaml(args.config), source=args.config) if args.config else TrainConfig()
        cli = parse_overrides(args.overrides)
        for key in ("data", "epochs", "out"):
            if getattr(args, key) is not None:
                cli[key] = getattr(args, key)
        cfg = make_config(cli, source="command line", base=cfg)
        last = Path(cfg.out) / "checkpoints" / "last.pt"
        check_out_folder(Path(cfg.out), args.resume, args.overwrite)
        resume = last if args.resume and last.exists() else None
        result = train(cfg, resume_from=resume, replace_run=args.overwrite)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; completed epochs are saved in {cfg.out}/checkpoints (continue with --resume)", file=sys.stderr)
        return 130
    print(f"done: best {result['best_metric_name']} {result['best_metric']:.4f} at epoch {result['best_epoch']}; "
          f"checkpoints in {result['out']}/checkpoints, log {result['out']}/epochs.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
