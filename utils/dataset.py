"""The training dataset of the NeurIPS 2022 layout, its collate function and data loader.

- :class:`CellDataset`: training samples (augmented at native scale, ``utils.augment``) as dicts
  of tensors, read through a :class:`utils.label_cache.DatasetCache`;
- :func:`collate_fn`; :func:`build_dataloader` (DDP-aware, reproducible).

The samples come from ``utils.datasplits.resolve_split``.
"""
from __future__ import annotations

import logging
import os
import random

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from utils import io as uio
from utils.augment import Tile, augment_tiles, eval_transform
from utils.boxes import label_to_boxes
from utils.config import Hyp
from utils.datasplits import Sample
from utils.inference import median_diameter, resize_image, resize_label
from utils.label_cache import DatasetCache
from utils.sampling import ShareSampler
from utils.sizing import to_diameter
from utils.targets import height_map

LOGGER = logging.getLogger(__name__)

# A sample that fails to load during training is replaced by another one, at most this many times.
MAX_LOAD_RETRIES = 10


def default_targets(label: np.ndarray) -> dict[str, np.ndarray]:
    """Watershed-branch targets of a label map ``(S, S)``: 'fg' ``float32 {0, 1}`` and 'height'
    ``float32`` (utils.targets.height_map)."""
    return {"fg": (label > 0).astype(np.float32), "height": height_map(label)}


_ITEM_KEYS = ("img", "label", "boxes", "ignore", "weight", "modality", "path")


class CellDataset(Dataset):
    """``S x S`` training samples (S = ``img_size``) as dicts:

    'img' ``uint8 (3, S, S)`` RGB; 'label' ``int32 (S, S)`` ids 1..n after augmentation;
    'boxes' ``float32 (n, 4)`` xyxy pixels = label_to_boxes(label); 'ignore' ``bool (S, S)``
    (True = not in the loss: labels/NAME_ignore.png, or all of an unlabeled image); 'weight'
    float (the sample's confidence); 'modality'; 'path'; plus each key of ``target_fn(label)``
    as a tensor. ``augment=False``: top-left crop / padding at native scale, deterministic.
    An index may be ``(index, seed)`` (see :func:`build_dataloader`): the augmentation then
    depends on the seed only; a bare index draws its seed from ``np.random``.
    ``target_diameter`` > 0 (px): every labelled image (and its label and ignore mask) is first
    resized so that its median cell diameter measures that (:func:`utils.sizing.to_diameter`),
    as a model trained at one cell size needs (Omnipose: ``OmniposeConfig.diameter``).
    """

    def __init__(self, samples: list[Sample], img_size: int, hyp: Hyp | None = None,
                 augment: bool = False, cache: DatasetCache | None = None, target_fn=default_targets,
                 shares: dict[str, float] | None = None, epoch_size: int | None = None,
                 target_diameter: float = 0.0):
        if cache is None:
            raise TypeError("CellDataset needs a DatasetCache (cache=...)")
        self.cache, self.img_size, self.augment = cache, int(img_size), augment
        self.target_diameter, self._factors = float(target_diameter), {}
        self.hyp, self.target_fn = hyp or Hyp(), target_fn
        self.samples = [s for s in samples if cache.valid(s)]
        if len(self.samples) < len(samples):
            LOGGER.warning("%d of %d samples skipped (unusable files or not cached)",
                           len(samples) - len(self.samples), len(samples))
        if not self.samples:
            raise ValueError("CellDataset: no usable samples")
        self.modalities = [cache.modality(s) for s in self.samples]
        # training draws (build_dataloader): by source share when given, else uniformly
        self.shares, self.epoch_size = shares or None, epoch_size
        # mosaic partners: the same source when sources are named, else the same modality
        self.partner_keys = [s.source or m for s, m in zip(self.samples, self.modalities)]
        keys = np.array(self.partner_keys)
        self.groups = {k: np.flatnonzero(keys == k) for k in set(self.partner_keys)}

    def __len__(self) -> int:
        return len(self.samples)

    def _tile(self, i: int) -> Tile:
        s = self.samples[i]
        img, label, ignore = self.cache.image(s), None, None
        if s.label is not None:
            label, ignore = self.cache.label(s), self.cache.ignore(s)
        if label is None:  # unlabeled: nothing to learn from, everything ignored
            label, ignore = np.zeros(img.shape[:2], np.int32), np.ones(img.shape[:2], bool)
        elif self.target_diameter > 0:
            img, label, ignore = self._to_target_diameter(i, img, label, ignore)
        return Tile(img, label, ignore, self.modalities[i])

    def _to_target_diameter(self, i: int, img: np.ndarray, label: np.ndarray,
                            ignore: np.ndarray | None):
        """Sample ``i``'s arrays resized so that its cells measure ``target_diameter`` (the
        factor measured once per sample and process; image bilinear, label and mask nearest)."""
        if i not in self._factors:
            self._factors[i] = to_diameter(median_diameter(label), self.target_diameter)
        f = self._factors[i]
        if f == 1.0:
            return img, label, ignore
        img = resize_image(img, f)
        h, w = img.shape[:2]
        label = resize_label(label, h, w)
        if ignore is not None:
            ignore = resize_label(ignore, h, w)
        return img, label, ignore

    def _transform(self, i: int, rng: np.random.Generator) -> Tile:
        tile = self._tile(i)
        if not self.augment:
            return eval_transform(tile, self.img_size)
        tiles = [tile]
        if rng.random() < self.hyp.mosaic:  # partners of the same source/modality: a plausible slide
            tiles += [self._tile(int(j)) for j in rng.choice(self.groups[self.partner_keys[i]], 3)]
        return augment_tiles(tiles, self.img_size, self.hyp, rng)

    def __getitem__(self, item) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, None)
        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64)) if seed is None else int(seed)
        rng = np.random.default_rng(seed)
        for _ in range(MAX_LOAD_RETRIES):
            try:
                return self._item(self._transform(index, rng), index)
            except uio.InputError as exc:  # a file changed or vanished since the cache was built
                LOGGER.warning("skipping a sample: %s", exc)
                index = int(rng.integers(len(self)))
        raise RuntimeError(f"{MAX_LOAD_RETRIES} samples in a row could not be loaded")

    def _item(self, tile: Tile, index: int) -> dict:
        s = self.samples[index]
        label = tile.label
        ignore = tile.ignore if tile.ignore is not None else np.zeros(label.shape, bool)
        item = {"img": torch.from_numpy(np.ascontiguousarray(tile.img.transpose(2, 0, 1))),
                "label": torch.from_numpy(label),
                "boxes": torch.from_numpy(label_to_boxes(label)[1]),
                "ignore": torch.from_numpy(np.ascontiguousarray(ignore)),
                "weight": float(s.confidence), "modality": tile.modality, "path": str(s.image)}
        for key, value in self.target_fn(label).items():
            if key in _ITEM_KEYS:
                raise KeyError(f"target_fn returned the reserved key {key!r}")
            item[key] = torch.as_tensor(value)
        return item


def collate_fn(batch: list[dict]) -> dict:
    """Items of :class:`CellDataset` -> a batch: tensors stacked to ``(B, ...)``; 'weight'
    ``float32 (B,)``; 'targets' ``float32 (M, 5)`` [batch index, x1, y1, x2, y2] pixels (in place
    of 'boxes'); other values (modality, path) as lists."""
    out = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key == "boxes":
            rows = [torch.cat([torch.full((len(v), 1), float(i)), v.float()], 1)
                    for i, v in enumerate(values)]
            out["targets"] = torch.cat(rows) if rows else torch.zeros((0, 5))
        elif torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = list(values)
    return out


# ----------------------------------------------------------------------------- loader
class SeededSampler(Sampler):
    """Wraps a sampler to yield ``(index, seed)``: each item's augmentation seed is drawn from
    ``generator`` in the main process, so augmentation depends on the generator's seed only --
    not on the number of workers, nor on persistent workers' state (exact resume)."""

    def __init__(self, sampler: Sampler, generator: torch.Generator):
        self.sampler, self.generator = sampler, generator

    def __iter__(self):
        indices = list(self.sampler)
        seeds = torch.randint(0, 2**62, (len(indices),), generator=self.generator).tolist()
        return iter(zip(indices, seeds))

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and random from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)  # workers are the parallelism; OpenCV threads would oversubscribe cores


def max_workers(workers: int, world_size: int = 1) -> int:
    """``workers`` capped at ``cpu_count // world_size`` (at least 0)."""
    return max(0, min(workers, (os.cpu_count() or 1) // max(world_size, 1)))


def build_dataloader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool, rank: int = -1,
                     world_size: int = 1, seed: int = 0, collate_fn=collate_fn):
    """``(DataLoader, DistributedSampler or None)`` for ``dataset``.

    world_size > 1: a DistributedSampler (seeded with ``seed``, drop_last when shuffling, i.e.
    training) -- call its ``set_epoch(epoch)`` every epoch. Shuffle order and per-item
    augmentation seeds come from ``loader.sampler.generator`` (seeded ``seed + rank``; reseed it
    per epoch for exact resume). It is not the DataLoader's own generator: the DataLoader draws
    worker base seeds from that one once per iterator, i.e. once per run with persistent workers
    but once per epoch without, which would shift the sample seeds of a resumed run.
    A dataset with ``shares`` (CellDataset from a YAML with ``sources``) is drawn by
    :class:`utils.sampling.ShareSampler` when shuffling (returned in the sampler slot: call its
    ``set_epoch`` too). pin_memory when CUDA is available; persistent workers when workers > 0. ``workers`` is capped
    at this rank's share of the CPU cores (YOLOv5's rule): more workers than cores only cost RAM.
    """
    workers = max_workers(workers, world_size)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    dist_sampler = None
    shares = getattr(dataset, "shares", None)
    if shuffle and shares:  # by source share: the same draw on every rank, each its own slice
        base = dist_sampler = ShareSampler([s.source for s in dataset.samples], shares,
                                           dataset.epoch_size, seed, rank, world_size)
        LOGGER.info("epoch of %d samples by source: %s", base.total, base.describe())
    elif world_size > 1:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        base = dist_sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                 shuffle=shuffle, seed=seed, drop_last=shuffle)
    else:
        base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=SeededSampler(base, generator),
                        num_workers=workers, collate_fn=collate_fn, worker_init_fn=seed_worker,
                        pin_memory=torch.cuda.is_available(),
                        persistent_workers=workers > 0)
    return loader, dist_sampler
