"""Training epochs drawn by source share: 30 phase-contrast images are not drowned by 460 nuclei.

A dataset YAML names its sources, each an fnmatch pattern on the image path relative to the
dataset root and a relative share of every epoch::

    sources:
      dsb2018:  {match: "dsb2018/*", share: 0.30}
      ctc_dic:  {match: "ctc/*/ctc_dic_*", share: 0.15}
    epoch_size: 600          # samples per epoch (default: the training split's size)

:func:`source_of` gives each image its source (the first pattern that matches, in YAML order).
:class:`ShareSampler` draws every epoch ``epoch_size`` indices, ``share / sum(shares)`` of them
from each source (largest-remainder rounding), each source cycling through its images in a fresh
random order before any repeats, the whole shuffled. The draw depends on (seed, epoch) only, so
resume is exact and every DDP rank draws the same epoch and takes its own slice of it.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from utils.config import DataConfig

LOGGER = logging.getLogger(__name__)


def source_of(cfg: DataConfig, image: Path) -> str:
    """The name of the first of ``cfg.sources`` whose pattern matches ``image`` (a path under
    ``cfg.root``, matched relative to it with ``/`` separators), else ``""``."""
    try:
        rel = Path(os.path.relpath(Path(image).resolve(), cfg.root)).as_posix()
    except ValueError:  # another drive (Windows)
        rel = Path(image).as_posix()
    for name, spec in cfg.sources.items():
        if fnmatch.fnmatchcase(rel, spec.match):
            return name
    return ""


def allocate(shares: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to ``total``, proportional to ``shares`` (largest remainder; ties in
    the mapping's order)."""
    weight = sum(shares.values())
    if weight <= 0:
        raise ValueError("sources: every share is 0")
    exact = {k: total * v / weight for k, v in shares.items()}
    counts = {k: int(np.floor(x)) for k, x in exact.items()}
    rest = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:rest]:
        counts[k] += 1
    return counts


class ShareSampler(Sampler):
    """Indices of one epoch by source share (see the module docstring).

    ``sources``: the source name of every dataset item; ``shares``: name -> relative share (every
    name in ``sources`` must have one; a share of 0 leaves that source out); ``num_samples``: the
    epoch's length over all ranks (rounded down to a multiple of ``world_size``).
    """

    def __init__(self, sources: list[str], shares: dict[str, float], num_samples: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        unknown = sorted(set(sources) - set(shares))
        if unknown:
            raise ValueError(f"sources: images of {', '.join(repr(u) for u in unknown)} match no "
                             f"source with a share (add a pattern for them)")
        names = np.asarray(sources)
        self.groups = {k: np.flatnonzero(names == k) for k in shares if shares[k] > 0}
        self.groups = {k: g for k, g in self.groups.items() if len(g)}
        if not self.groups:
            raise ValueError("sources: no training image belongs to a source with a share > 0")
        self.shares = {k: shares[k] for k in self.groups}
        n = len(sources) if num_samples is None else int(num_samples)
        self.world_size, self.rank = max(world_size, 1), max(rank, 0)
        self.total = n - n % self.world_size
        if self.total <= 0:
            raise ValueError(f"epoch_size {n} is smaller than the {self.world_size} ranks")
        self.counts = allocate(self.shares, self.total)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """All ranks' indices of this epoch, ``(total,) int64``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for k, idx in self.groups.items():
            reps = -(-self.counts[k] // len(idx))  # whole passes over the source, then cut
            parts.append(np.concatenate([rng.permutation(idx) for _ in range(reps)])[: self.counts[k]])
        return rng.permutation(np.concatenate(parts)).astype(np.int64)

    def __iter__(self):
        return iter(self.epoch_indices()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.total // self.world_size

    def describe(self) -> str:
        return ", ".join(f"{k} {self.counts[k]} ({len(g)} images)" for k, g in self.groups.items())
