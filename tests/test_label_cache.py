"""The label cache (utils.label_cache): built once, reused, rebuilt on change, rank 0 first."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import DATASET_IMAGES as N, cfg_for
from utils import io as uio
from utils import label_cache
from utils.boxes import label_to_boxes
from utils.config import Hyp
from utils.dataset import CellDataset
from utils.datasplits import resolve_split
from utils.label_cache import DatasetCache, dataset_boxes
from utils.labels import relabel_consecutive

S = 64  # network image size of the tests (pixels)


def test_unknown_modality_is_classified_by_the_cache(ds_copy, tmp_path):
    os.remove(ds_copy / "meta.csv")
    samples = resolve_split(cfg_for(ds_copy, train=["."]), "train")
    assert all(s.modality is None for s in samples)
    DatasetCache(samples, tmp_path / "cache")
    assert all(s.modality in ("bf", "fl", "gs") for s in samples)


def test_cache_is_reused_without_reading_labels(cache, tmp_path, monkeypatch):
    samples, first = cache
    def fail(*a, **k):
        raise AssertionError("label TIFF read although the cache is valid")
    monkeypatch.setattr(uio, "read_label", fail)
    second = DatasetCache(samples, tmp_path / "cache")
    assert second.path == first.path and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    for s in samples:
        np.testing.assert_array_equal(second.label(s), first.label(s))
        np.testing.assert_array_equal(second.boxes(s), label_to_boxes(second.label(s))[1])
        assert second.shape(s) == (72, 96) and second.modality(s) == s.modality


def test_cache_rebuilt_when_a_label_changes(ds_copy, tmp_path):
    samples = resolve_split(cfg_for(ds_copy, train=["."]), "train")
    before_files = sorted(p.name for p in ds_copy.rglob("*"))
    first = DatasetCache(samples, tmp_path / "cache")
    assert sorted(p.name for p in ds_copy.rglob("*")) == before_files  # nothing written by the data
    label = uio.read_label(samples[0].label)
    label[:10, :10] = label.max() + 1
    uio.write_label(samples[0].label, label)
    st = os.stat(samples[0].label)
    os.utime(samples[0].label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = DatasetCache(samples, tmp_path / "cache")
    assert second.path != first.path
    assert (second.label(samples[0])[:10, :10] > 0).all()


def test_bad_pairs_are_reported_and_skipped(ds_copy, tmp_path, caplog):
    uio.write_label(ds_copy / "labels" / "synth_0001_label.tiff", np.ones((10, 10), np.int32))
    (ds_copy / "images" / "synth_0002.tif").write_bytes(b"not a tiff")
    samples = resolve_split(cfg_for(ds_copy, train=["."]), "train")
    with caplog.at_level(logging.WARNING, logger="utils.label_cache"):
        cache = DatasetCache(samples, tmp_path / "cache")
        ds = CellDataset(samples, S, Hyp(), augment=True, cache=cache)
    assert len(ds) == N - 2
    assert "does not match image shape" in caplog.text and "synth_0002.tif: cannot read" in caplog.text
    with pytest.raises(uio.InputError):
        cache.label(samples[1])
    np.random.seed(0)
    for i in range(len(ds)):
        ds[i]


def test_dataset_boxes(cache):
    samples, c = cache
    wh = dataset_boxes(samples, c)
    assert wh.shape == (sum(len(c.boxes(s)) for s in samples), 2) and (wh > 0).all()


def test_cache_images_in_ram(cache, tmp_path):
    samples, _ = cache
    c = DatasetCache(samples, tmp_path / "cache", cache_images=True)
    np.testing.assert_array_equal(c.image(samples[1]), uio.load_image(samples[1].image))
    assert c.image(samples[1]) is c.image(samples[1])
    expected = relabel_consecutive(uio.read_label(samples[1].label))
    np.testing.assert_array_equal(c.label(samples[1]), expected)
    c.label(samples[1])[:] = 0  # callers get copies of the RAM labels
    assert c.label(samples[1]).max() > 0


def _cache_in_rank(rank, world, init_file, samples, cache_dir, out_dir):
    """One rank of a gloo group: open the label cache, noting whether this rank built it."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    build = label_cache.DatasetCache._build

    def noted_build(self):
        (out_dir / f"built_{rank}").touch()
        time.sleep(1.0)  # without the barrier the other rank would start its own build meanwhile
        build(self)

    label_cache.DatasetCache._build = noted_build
    try:
        np.save(out_dir / f"label_{rank}.npy", DatasetCache(samples, cache_dir).label(samples[0]))
    finally:
        dist.destroy_process_group()


def test_rank_zero_builds_the_cache_the_other_ranks_read_it(data_root, tmp_path):
    samples = resolve_split(cfg_for(data_root, train=["."]), "train")
    mp.spawn(_cache_in_rank, args=(2, tmp_path / "init", samples, tmp_path / "cache", tmp_path),
             nprocs=2)
    assert (tmp_path / "built_0").exists() and not (tmp_path / "built_1").exists()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "label_1.npy"), np.load(tmp_path / "label_0.npy"))
