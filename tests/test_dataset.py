"""Split resolution, label cache, dataset items, collate and loaders (utils.dataset)."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

import utils.dataset as udata
from utils import io as uio
from utils.boxes import label_to_boxes
from utils.config import DataConfig, Hyp
from utils.dataset import (CellDataset, DatasetCache, build_dataloader, collate_fn, max_workers,
                           dataset_boxes, resolve_split)
from utils.labels import relabel_consecutive
from utils.synthetic import write_dataset

S = 64  # network image size of the tests (pixels)
N = 6   # synthetic images per dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A small read-only-by-convention synthetic dataset (fl, bf, gs cycling)."""
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", N, size=(72, 96), seed=0)


def cfg_for(root, yaml_dir=None, **kw) -> DataConfig:
    return DataConfig(path=str(root), yaml_dir=str(yaml_dir or root), **kw)


@pytest.fixture
def ds_copy(data_root, tmp_path):
    """A writable copy of the dataset (tests that add or change files)."""
    return shutil.copytree(data_root, tmp_path / "ds")


@pytest.fixture
def cache(data_root, tmp_path):
    samples = resolve_split(cfg_for(data_root, train=["."]), "train")
    return samples, DatasetCache(samples, tmp_path / "cache")


def test_resolve_folder_pairs_and_meta_modality(data_root):
    samples = resolve_split(cfg_for(data_root, train=["."]), "train")
    assert len(samples) == N
    assert [s.modality for s in samples[:3]] == ["fl", "bf", "gs"]
    for s in samples:
        assert s.label == data_root / "labels" / f"{s.image.stem}_label.tiff"


def test_resolve_reports_unpaired_and_orphans(ds_copy, caplog):
    shutil.copy(ds_copy / "images" / "synth_0000.png", ds_copy / "images" / "extra.png")
    shutil.copy(ds_copy / "labels" / "synth_0001_label.tiff", ds_copy / "labels" / "ghost_label.tiff")
    with caplog.at_level(logging.WARNING, logger="utils.dataset"):
        samples = resolve_split(cfg_for(ds_copy, train=["."]), "train")
    assert len(samples) == N
    text = caplog.text
    assert "images without labels/NAME_label.tiff (skipped): 1 (extra.png)" in text
    assert "labels without an image" in text and "ghost_label.tiff" in text


def test_resolve_txt_split_files(data_root, tmp_path, caplog):
    lines = ["images/synth_0001.png", "# comment", "", "images/synth_0004.png", "images/nope.png"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = cfg_for(data_root, yaml_dir=tmp_path, train=["train.txt"])
    with caplog.at_level(logging.WARNING, logger="utils.dataset"):
        samples = resolve_split(cfg, "train")
    assert [s.image.name for s in samples] == ["synth_0001.png", "synth_0004.png"]
    assert all(s.label.is_file() and s.modality == "bf" for s in samples)
    assert "nope.png" in caplog.text


def test_empty_split_is_an_error_naming_it(data_root):
    with pytest.raises(uio.InputError, match="'val'"):
        resolve_split(cfg_for(data_root, train=["."]), "val")


def test_modality_filter_with_and_without_meta(ds_copy, monkeypatch, tmp_path):
    bf = resolve_split(cfg_for(ds_copy, train=["."], modality="bf"), "train")
    assert {s.modality for s in bf} == {"bf"} and len(bf) == 2
    os.remove(ds_copy / "meta.csv")
    calls = []
    def fake(raw):  # synthetic gs images are the uint16 TIFFs
        calls.append(1)
        return "gs" if raw.dtype == np.uint16 else "fl"
    monkeypatch.setattr(udata, "_classify_raw", fake)
    udata._MODALITY_MEMO.clear()
    gs = resolve_split(cfg_for(ds_copy, train=["."], modality="gs"), "train", cache_dir=tmp_path / "c")
    assert [s.image.suffix for s in gs] == [".tif", ".tif"] and len(calls) == N
    udata._MODALITY_MEMO.clear()  # a new process: the persisted modalities.json answers
    resolve_split(cfg_for(ds_copy, train=["."], modality="gs"), "train", cache_dir=tmp_path / "c")
    assert len(calls) == N


def test_unknown_modality_is_classified_by_the_cache(ds_copy, tmp_path):
    os.remove(ds_copy / "meta.csv")
    samples = resolve_split(cfg_for(ds_copy, train=["."]), "train")
    assert all(s.modality is None for s in samples)
    DatasetCache(samples, tmp_path / "cache")
    assert all(s.modality in ("bf", "fl", "gs") for s in samples)


def test_pseudo_confidence_and_unlabeled(ds_copy, tmp_path):
    (ds_copy / "confidence.csv").write_text("name,confidence\nsynth_0000,0.25\nsynth_0001.png,0.5\n")
    pseudo = resolve_split(cfg_for(ds_copy, pseudo=["."]), "pseudo")
    assert [s.confidence for s in pseudo[:3]] == [0.25, 0.5, 1.0]
    unlabeled = resolve_split(cfg_for(ds_copy, unlabeled=["."]), "unlabeled")
    assert all(s.label is None for s in unlabeled)
    cache = DatasetCache(pseudo + unlabeled, tmp_path / "cache")
    ds = CellDataset(pseudo[:1], S, cache=cache)
    assert ds[0]["weight"] == 0.25
    item = CellDataset(unlabeled[:1], 80, cache=cache)[0]  # 72 x 96 image, padded below
    assert item["label"].max() == 0 and item["ignore"][:72].all() and not item["ignore"][72:].any()


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
    with caplog.at_level(logging.WARNING, logger="utils.dataset"):
        cache = DatasetCache(samples, tmp_path / "cache")
        ds = CellDataset(samples, S, Hyp(), augment=True, cache=cache)
    assert len(ds) == N - 2
    assert "does not match image shape" in caplog.text and "synth_0002.tif: cannot read" in caplog.text
    with pytest.raises(uio.InputError):
        cache.label(samples[1])
    np.random.seed(0)
    for i in range(len(ds)):
        ds[i]


def test_items_invariants_over_many_seeds(cache):
    samples, c = cache
    ds = CellDataset(samples, S, Hyp(degrees=15.0, shear=2.0), augment=True, cache=c)
    for seed in range(24):
        item = ds[(seed % N, seed)]
        label = item["label"].numpy()
        assert item["img"].shape == (3, S, S) and item["img"].dtype == torch.uint8
        assert label.dtype == np.int32 and item["ignore"].dtype == torch.bool
        np.testing.assert_array_equal(item["boxes"].numpy(), label_to_boxes(label)[1])
        assert (np.bincount(label.ravel())[1:] > 0).all()  # ids 1..n
        np.testing.assert_array_equal(item["fg"].numpy(), (label > 0).astype(np.float32))
        assert item["height"].shape == (S, S) and item["modality"] == samples[seed % N].modality


def test_determinism(cache):
    samples, c = cache
    ds = CellDataset(samples, S, Hyp(), augment=True, cache=c)
    a, b = ds[(2, 99)], ds[(2, 99)]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["label"], b["label"])
    np.random.seed(3)
    c1 = ds[1]
    np.random.seed(3)
    assert torch.equal(c1["img"], ds[1]["img"])


def test_eval_mode_and_ignore_mask(ds_copy, tmp_path):
    mask = np.zeros((72, 96), np.uint8)
    mask[:20, :30] = 255
    uio.write_image(ds_copy / "labels" / "synth_0000_ignore.png", mask)
    samples = resolve_split(cfg_for(ds_copy, train=["."]), "train")
    ds = CellDataset(samples, 80, augment=False, cache=DatasetCache(samples, tmp_path / "cache"))
    item = ds[0]
    np.testing.assert_array_equal(item["ignore"].numpy()[:72, :80], mask[:, :80] > 0)
    assert not item["ignore"][72:].any()  # letterbox padding is background, not ignored
    label = item["label"].numpy()
    np.testing.assert_array_equal(label[:72] > 0, uio.read_label(samples[0].label)[:, :80] > 0)
    assert (label[72:] == 0).all() and not ds[1]["ignore"].any()


def test_collate_shapes(cache):
    samples, c = cache
    ds = CellDataset(samples, S, Hyp(), augment=True, cache=c)
    items = [ds[(i, i)] for i in range(3)]
    batch = collate_fn(items)
    assert batch["img"].shape == (3, 3, S, S) and batch["label"].shape == (3, S, S)
    assert batch["ignore"].shape == (3, S, S) and batch["height"].shape == (3, S, S)
    assert batch["weight"].shape == (3,) and batch["weight"].dtype == torch.float32
    n = [len(it["boxes"]) for it in items]
    assert batch["targets"].shape == (sum(n), 5)
    np.testing.assert_array_equal(batch["targets"][:, 0].numpy(), np.repeat(np.arange(3), n))
    assert batch["modality"] == [it["modality"] for it in items] and len(batch["path"]) == 3


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


def test_distributed_sampler_disjoint(cache):
    samples, c = cache
    ds = CellDataset(samples * 3, S, Hyp(), augment=True, cache=c)  # 18 items
    seen = []
    for rank in range(2):
        loader, sampler = build_dataloader(ds, 2, 0, shuffle=True, rank=rank, world_size=2, seed=1)
        sampler.set_epoch(0)
        seen.append(set(sampler))
        assert len(list(loader)) == -(-len(sampler) // 2)  # ceil: the last batch is kept
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 9


def test_loader_reproducible_across_workers(cache):
    samples, c = cache
    ds = CellDataset(samples, S, Hyp(), augment=True, cache=c)
    runs = []
    for workers in (0, 2, 0):
        loader, sampler = build_dataloader(ds, 3, workers, shuffle=True, seed=5)
        assert sampler is None
        runs.append([(b["path"], b["img"].clone(), b["targets"].clone()) for b in loader])
    for other in runs[1:]:
        for (p0, i0, t0), (p1, i1, t1) in zip(runs[0], other):
            assert p0 == p1 and torch.equal(i0, i1) and torch.equal(t0, t1)


def test_workers_capped_at_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert max_workers(8) == 4 and max_workers(8, world_size=2) == 2 and max_workers(1) == 1
    assert max_workers(8, world_size=8) == 0
