"""Serving a decoded split to training and evaluation: subsets, the seeded sampler, the Dataset, batches.

``FerDataset`` serves (augmented) uint8 images to a DataLoader, seeded per sample through ``EpochSampler``'s
(epoch, index) keys; ``DeviceBatches`` serves whole batches from a split kept on the device (the torch
augmentation backend); ``iter_batches`` is the worker-free path evaluation uses. Normalisation happens later,
batched on the device (``preprocess.Preprocess``), because moving uint8 is 4x cheaper than float and the
arithmetic is nearly free there. The only module of the data path that needs torch: it consumes the
``SplitData`` that ``decode_cache.load_dataset`` (or ``load_split``) returns and never touches files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .data import SplitData


def stratified_indices(labels: np.ndarray, max_samples: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified subset of at most ``max_samples`` (each class keeps its share, >= 1).

    Args:
        labels: int labels of the full split.
        max_samples: subset size; 0 or >= len(labels) keeps everything.
        seed: the subset is part of the data definition, so it has its own seed (not the training seed).
    """
    n = len(labels)
    if max_samples <= 0 or max_samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    out = []
    for c, count in enumerate(counts):
        if count == 0:
            continue
        take = max(1, int(round(max_samples * count / n)))
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(take, count), replace=False))
    return np.sort(np.concatenate(out))


def weighted(indices: np.ndarray, source: np.ndarray | None, weights, seed: int = 0) -> np.ndarray:
    """``indices`` with each dataset's images repeated by its sampling weight: weight 2 serves each image of
    that dataset twice an epoch, 0.5 a seeded half of them (each dataset in ``weights``, by ``source``)."""
    if source is None or all(w == 1.0 for w in weights):
        return indices
    rng = np.random.default_rng(seed)
    out = []
    for i, w in enumerate(weights):
        own = indices[source[indices] == i]
        whole, part = int(w), w - int(w)
        out += [own] * whole + [np.sort(rng.choice(own, size=int(round(part * len(own))), replace=False))]
    return np.sort(np.concatenate(out))


def epoch_steps(train_images: int, batch_size: int, steps_per_epoch: int = 0) -> int:
    """Training steps of one epoch over ``train_images``: ``steps_per_epoch`` when set, else every whole batch
    (the last partial one is dropped). The Trainer's rule; the sweep's time plan sizes epochs with it."""
    return steps_per_epoch or train_images // batch_size


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` pairs in a seeded per-epoch shuffle.

    Carrying the epoch inside each key lets the dataset seed every sample's augmentation from
    (seed, epoch, index): the same run gives the same images whether it was resumed or not, and
    whichever worker process draws the sample.
    """

    def __init__(self, n: int, seed: int, num_samples: int | None = None):
        self.n, self.seed, self.epoch = n, seed, 0
        self.num_samples = num_samples or n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def order(self) -> torch.Tensor:
        """The epoch's indices in order (int64, on the CPU): what ``__iter__`` pairs with the epoch."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        reps = -(-self.num_samples // self.n)  # ceil: a capped epoch may need more than one pass
        return torch.cat([torch.randperm(self.n, generator=g) for _ in range(reps)])[: self.num_samples]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, int(i)) for i in self.order()])


class FerDataset(torch.utils.data.Dataset):
    """Serves (uint8 image tensor, label) from a decoded split, augmented when a transform is given.

    Args:
        data: the decoded split.
        indices: which rows to use (a subset), default all.
        transform: an albumentations Compose (or None for evaluation).
        seed: base seed of the per-sample augmentation randomness.
    """

    def __init__(self, data: SplitData, indices: np.ndarray | None = None, transform=None, seed: int = 0):
        self.images, self.labels = data.images, data.labels
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        row = int(self.indices[i])
        img = np.asarray(self.images[row])
        if self.transform is not None:
            # Reseeding per sample costs a few microseconds and buys exact reproducibility (see EpochSampler).
            self.transform.set_random_seed((self.seed * 1_000_003 + epoch * 65_537 + row) % (2**32))
            img = self.transform(image=img)["image"]
        # A copy (2 KB at 48 px): a row of the read-only memory-mapped cache must not reach torch as is.
        return torch.from_numpy(np.array(img, dtype=np.uint8, order="C")), int(self.labels[row])


class DeviceBatches:
    """Training batches gathered from a split held on the device: the loader of the torch backend.

    The used rows are copied to ``device`` once (66 MB for FER2013 at 48 px); each epoch takes the
    sampler's order (one small copy per epoch), and each batch is a gather there, augmented as a whole by
    ``augment(images, epoch, positions)`` (positions in the epoch's order). No worker processes, nothing
    per image on the host; ``len()`` and the (uint8 images, labels) batches are a DataLoader's.

    Args:
        data: the decoded split.
        indices: the rows used (the sampler draws positions in this array).
        sampler: the ``EpochSampler`` whose epoch and order each pass follows.
        batch_size: images per batch (a last partial batch is dropped).
        device: where the images live and the batches are made.
        augment: a ``augment_torch.BatchAugment`` (or None: no augmentation).
    """

    def __init__(
        self,
        data: SplitData,
        indices: np.ndarray,
        sampler: EpochSampler,
        batch_size: int,
        device: torch.device,
        augment: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None,
    ):
        rows = np.asarray(indices)
        self.images = torch.from_numpy(np.ascontiguousarray(data.images[rows])).to(device)
        self.labels = torch.from_numpy(np.asarray(data.labels[rows], dtype=np.int64)).to(device)
        self.sampler, self.batch_size, self.device, self.augment = sampler, batch_size, device, augment

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, b = self.sampler.epoch, self.batch_size
        order = self.sampler.order().to(self.device, non_blocking=True)
        positions = torch.arange(len(order), device=self.device)
        for k in range(len(self)):
            idx = order[k * b : (k + 1) * b]
            images = self.images[idx]
            if self.augment is not None:
                images = self.augment(images, epoch, positions[k * b : (k + 1) * b])
            yield images, self.labels[idx]


def iter_batches(
    data: SplitData, indices: np.ndarray, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Plain sequential (uint8 images, labels) batches for evaluation: no workers, no per-sample calls."""
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        yield torch.from_numpy(np.ascontiguousarray(data.images[idx])), torch.from_numpy(data.labels[idx])
