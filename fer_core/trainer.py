"""The Trainer: one run's state (data, model, optimizer, schedule, EMA) and its epoch loop and checkpoints.

A ``Trainer`` loads the data, builds the model and optimizer, runs one epoch at a time (a training pass,
then validation) and gives and restores the exact state a bit-identical resume needs. ``fer_core.train``
owns the run around it (files, logs, resume, the report callback); ``fer_core.timing`` times its passes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from . import engine
from .augment_torch import BatchAugment
from .checkpoint import load_checkpoint, nonfinite_weights
from .config import TrainConfig, config_to_dict
from .data import SplitData
from .dataset import (
    DeviceBatches,
    EpochSampler,
    FerDataset,
    epoch_steps,
    iter_batches,
    stratified_indices,
    weighted,
)
from .datasets import digest, resolve
from .decode_cache import load_args, load_dataset
from .duplicates import dedupe_dropped
from .ema import ModelEma
from .engine import PROB_KEYS
from .errors import CheckpointError, ConfigError, DataError, DivergedError, FerError
from .metrics import DATASET_METRIC, ROW_VAL_KEYS, dataset_metrics, lower_is_better
from .mixing import BatchMixer
from .model import build_model
from .preprocess import Preprocess
from .runtime import PREFETCH, Runtime, resolve_runtime, worker_init


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up from ~0 to 1, then cosine down to ``min_ratio``.

    Kept by hand rather than timm's CosineLRScheduler: that one warms up from ``warmup_lr_init`` at
    update 0 and counts its cosine differently, so it would change every figure measured with this
    schedule; a stateless LambdaLR also resumes exactly from the optimizer step count alone."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD (Nesterov) from timm's factory, which leaves norms and biases out of weight decay
    (decaying BN scales only hurts).

    Args:
        fused: torch's fused implementation (``Runtime.fused_optimizer``: on CUDA); else torch's default.
    """
    return create_optimizer_v2(
        model_or_params=model,
        opt=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        **({"fused": True} if fused else {}),
    )


# Keys that decide where and how fast a run goes, not what it trains: the only ones a resume may change.
RUN_KEYS = frozenset(
    "data out audit strict cache_dir pretrained weights device precision channels_last compile threads "
    "num_workers progress keep_checkpoints eval_batch_size augment_backend".split()
)


def _check_resume_compatible(state: dict, cfg: TrainConfig, path) -> None:
    old = state["config"]
    for key, value in config_to_dict(cfg).items():
        if key not in RUN_KEYS and key in old and old[key] != value:
            raise CheckpointError(
                f"{path}: cannot resume, '{key}' was {old[key]!r} and is now {value!r} (the restored optimizer "
                "and schedule train with the checkpoint's); resume with the same config or start a new run "
                "in another --out folder"
            )


def _checked_splits(splits, cfg: TrainConfig) -> tuple[SplitData, SplitData]:
    train, val = splits
    shape = (cfg.img_size, cfg.img_size) if cfg.grayscale else (cfg.img_size, cfg.img_size, 3)
    for data in (train, val):
        if data.images.shape[1:] != shape:
            raise DataError(
                f"splits: the {data.split} images are {data.images.shape[1:]} but the config asks for {shape} "
                "(img_size, grayscale); give splits decoded at that size or change the config"
            )
    return train, val


class Trainer:
    """One run's pieces, built from its config: ``fer_core.train.train`` runs it epoch by epoch, and
    ``fer_core.timing`` times its passes.

    Args:
        cfg: the run's config.
        runtime: device settings (default: resolved from ``cfg``).
        splits: the (train, val) data already decoded at the config's size and colour mode (default: loaded
            from ``cfg.data``); the GPU check trains on a packed copy this way.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        runtime: Runtime | None = None,
        splits: tuple[SplitData, SplitData] | None = None,
    ):
        self.cfg = cfg
        self.runtime = runtime or resolve_runtime(
            device=cfg.device,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
            threads=cfg.threads,
            num_workers=cfg.num_workers,
            compile=cfg.compile,
            eval_batch_size=cfg.eval_batch_size,
            augment_backend=cfg.augment_backend,
        )
        seed_everything(cfg.seed)
        common = load_args(cfg)
        self.dataset = None if splits is not None else resolve(cfg)
        if splits is None:
            splits = (
                load_dataset(self.dataset, "train", **common),
                load_dataset(self.dataset, "val", **common),
            )
        self.train_data, self.val_data = _checked_splits(splits, cfg)
        self.class_names = list(self.train_data.classes)
        self.dropped_duplicates = dedupe_dropped(cfg, self.train_data, self.val_data)
        pool = np.setdiff1d(np.arange(len(self.train_data)), self.dropped_duplicates)
        self.train_idx = weighted(
            pool[stratified_indices(self.train_data.labels[pool], cfg.max_train_samples)],
            self.train_data.source,
            [s.weight for s in self.dataset.sources] if self.dataset is not None else [1.0],
            seed=cfg.seed,
        )
        self.val_idx = stratified_indices(self.val_data.labels, cfg.max_val_samples)
        self.model = build_model(
            name=cfg.model,
            num_classes=len(self.class_names),
            pretrained=cfg.pretrained,
            weights=cfg.weights or None,
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path_rate,
            bn_momentum=cfg.bn_momentum,
        )
        self.preprocess = Preprocess.for_config(cfg, self.model)
        self.model.to(self.runtime.device)
        if self.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # The compiled wrapper shares the model's parameters: checkpoints and evaluation use the plain
        # module (eval mode would trigger a second compilation for no gain in a pass this short).
        self.train_model = torch.compile(self.model) if self.runtime.compile else self.model
        self.ema = ModelEma(self.model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.mixer = BatchMixer(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob)
        n = len(self.train_idx)
        if n < cfg.batch_size and not cfg.steps_per_epoch:
            raise FerError(
                f"key 'batch_size' = {cfg.batch_size} exceeds the {n} training images; lower batch_size or add data"
            )
        self.steps_per_epoch = epoch_steps(n, cfg.batch_size, cfg.steps_per_epoch)
        self.sampler = EpochSampler(n, seed=cfg.seed, num_samples=self.steps_per_epoch * cfg.batch_size)
        self.loader = self._train_loader()
        self.optimizer = build_optimizer(model=self.model, cfg=cfg, fused=self.runtime.fused_optimizer)
        total = cfg.epochs * self.steps_per_epoch
        warm = min(total, int(round(cfg.warmup_epochs * self.steps_per_epoch)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_lambda=warmup_cosine(total_steps=total, warmup_steps=warm, min_ratio=cfg.min_lr_ratio),
        )
        self.scaler = torch.amp.GradScaler() if self.runtime.amp_dtype is torch.float16 else None
        counts = np.bincount(self.train_data.labels[self.train_idx], minlength=len(self.class_names))
        weights = engine.class_weights(counts, mode=cfg.class_weighting)
        self.loss_fn = nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(self.runtime.device),
            label_smoothing=cfg.label_smoothing,
        )
        self.epoch, self.best, self.history = 0, None, []
        self.best_val: dict | None = None  # full val metrics (confusion matrix included) of the best epoch

    def _train_loader(self):
        """The training batches of the runtime's augmentation backend: a DataLoader of albumentations-augmented
        images, or the split on the device augmented batch by batch (``augment_torch``)."""
        cfg = self.cfg
        if self.runtime.augment_backend == "torch":
            augment = BatchAugment(cfg.aug_strength, seed=cfg.seed) if cfg.aug_strength > 0 else None
            return DeviceBatches(
                self.train_data, self.train_idx, self.sampler, cfg.batch_size, self.runtime.device, augment
            )
        try:  # albumentations only where it is used: the torch backend trains without it
            from .augment import build_train_transform
        except ImportError:
            raise ConfigError(
                "key 'augment_backend' resolved to albumentations, which is not installed; "
                "pip install albumentations or set augment_backend: torch"
            ) from None
        transform = build_train_transform(strength=cfg.aug_strength, img_size=cfg.img_size, seed=cfg.seed)
        dataset = FerDataset(self.train_data, self.train_idx, transform=transform, seed=cfg.seed)
        w = self.runtime.num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=w,
            drop_last=True,
            pin_memory=self.runtime.pin_memory,
            persistent_workers=w > 0,
            prefetch_factor=PREFETCH if w > 0 else None,
            worker_init_fn=worker_init if w > 0 else None,
        )

    # -- state ---------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "best_metric": self.best,
            "best_metric_name": self.cfg.best_metric,
            "config": config_to_dict(self.cfg),
            "class_names": self.class_names,
            "data": self.data_summary(),
            "preprocess": self.preprocess.to_dict(),
            "augment_backend": self.runtime.augment_backend,  # resolved: "auto" differs by device
            "history": self.history,
            "ema": self.ema.checkpoint_state() if self.ema else None,
        }

    def restore(self, path) -> None:
        state = load_checkpoint(path, map_location=self.runtime.device)
        _check_resume_compatible(state, self.cfg, path)
        if list(state["class_names"]) != self.class_names:
            raise CheckpointError(
                f"{path}: classes {state['class_names']} differ from the data's {self.class_names}; start a new run"
            )
        old_pre = Preprocess.from_dict(state["preprocess"])
        if old_pre != self.preprocess:
            raise CheckpointError(
                f"{path}: cannot resume, the input preprocessing was {old_pre.to_dict()} and is now "
                f"{self.preprocess.to_dict()} (the data changed?); start a new run in another --out folder"
            )
        if state["augment_backend"] != self.runtime.augment_backend:
            raise CheckpointError(
                f"{path}: cannot resume, it was trained with augment_backend {state['augment_backend']} and this "
                f"device resolves {self.runtime.augment_backend} (the two draw different images); set "
                f"augment_backend: {state['augment_backend']} to resume"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # Take this runtime's optimizer implementation, not that of the checkpoint's device.
        for group in self.optimizer.param_groups:
            group["fused"] = self.runtime.fused_optimizer or None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"]:
            self.ema.load_checkpoint_state(state["ema"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.best = state["best_metric"]

    def data_summary(self) -> dict | None:
        """What a checkpoint keeps of its data: per class the folder names it was trained from (so data named
        like a training set maps by itself), the datasets' settings and the digest of their file lists."""
        if self.dataset is None:
            return None
        record = self.dataset.record()
        return {
            "aliases": self.dataset.aliases(),
            "sources": record["sources"],
            "digest": digest(record),
        }

    def evaluate(
        self, data: SplitData | None = None, indices=None, prefix: str = "val_", return_probs: bool = False
    ) -> dict:
        """Metrics of ``indices`` of ``data`` (default: the val subset); with several datasets, each one's
        too, under ``NAME/`` + the key (NAME/val_accuracy), beside the pooled ones."""
        data = data if data is not None else self.val_data
        indices = (
            indices
            if indices is not None
            else (self.val_idx if data is self.val_data else np.arange(len(data)))
        )
        several = self.dataset is not None and len(self.dataset.sources) > 1 and data.source is not None
        out = engine.evaluate(
            model=self.eval_model,
            batches=iter_batches(data, indices, batch_size=self.runtime.eval_batch_size),
            preprocess=self.preprocess,
            runtime=self.runtime,
            class_names=self.class_names,
            prefix=prefix,
            return_probs=return_probs or several,
            tta_flip=self.cfg.tta_flip,
        )
        if several:
            names = [src.name for src in self.dataset.sources]
            out |= dataset_metrics(
                out["labels"], out["probs"].argmax(1), data.source[indices], names, self.class_names, prefix
            )
            if not return_probs:
                for k in PROB_KEYS:
                    out.pop(k, None)
        return out

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and deployed: the EMA when it is on, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if lower_is_better(self.cfg.best_metric) else value > self.best

    def train_pass(
        self, max_steps: int = 0, progress: bool = False, desc: str = "train", batches: Iterable | None = None
    ) -> dict:
        """One pass of the training loader (at most ``max_steps`` steps; ``fer_core.timing`` times it).

        Args:
            batches: (uint8 images, labels) to train on instead of the loader (``timing.time_ready_step``
                feeds one batch already on the device, to time the step alone through this same code).
        """
        return engine.train_one_epoch(
            model=self.train_model,
            loader=self.loader if batches is None else batches,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            loss_fn=self.loss_fn,
            preprocess=self.preprocess,
            runtime=self.runtime,
            scaler=self.scaler,
            grad_clip=self.cfg.grad_clip,
            progress=progress,
            desc=desc,
            mixer=self.mixer,
            ema=self.ema,
            max_steps=max_steps,
        )

    def _check_finite(self, row: dict) -> None:
        """Stop before a diverged epoch is saved. NaN weights still give a finite accuracy (argmax of NaN
        picks class 0), so without this a broken model could be written as best.pt; raising here leaves
        the previous epoch's checkpoints as the last ones written."""
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        for name, module in (
            ("weights", self.model),
            ("averaged weights", self.ema.module if self.ema else None),
        ):
            if module is not None and nonfinite_weights(module.state_dict())[0]:
                bad.insert(0, name)
        if bad:
            raise DivergedError(
                f"{self.cfg.out}: epoch {self.epoch} diverged (non-finite {', '.join(bad)}); it was not saved, "
                "the checkpoints of the epochs before it are kept; lower lr or set grad_clip"
            )

    def run_epoch(self) -> dict:
        """Train and validate the next epoch; returns its metrics row."""
        self.epoch += 1
        # Reseeding per epoch (dropout, drop-path, loader) makes epoch k identical whether resumed or not.
        torch.manual_seed(self.cfg.seed * 1_000 + self.epoch)
        self.sampler.set_epoch(self.epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        tm = self.train_pass(progress=self.cfg.progress, desc=f"epoch {self.epoch}/{self.cfg.epochs}")
        vm = self.evaluate()
        row = {
            "epoch": self.epoch,
            "lr": lr,
            **tm,
            **{k: vm[k] for k in ROW_VAL_KEYS if k in vm},
            **{k: v for k, v in vm.items() if DATASET_METRIC.match(k)},  # each dataset's val figures
            "device": str(self.runtime.device),
        }  # where it trained: a sweep's report names it per trial
        self._check_finite(row)
        row["is_best"] = self._is_better(row[self.cfg.best_metric])
        if row["is_best"]:
            self.best = row[self.cfg.best_metric]
            self.best_val = vm
        self.history.append(row)
        return row
