"""Epochs by source share (utils.sampling) and the sources of a dataset YAML."""
from collections import Counter

import numpy as np
import pytest
import yaml

from utils.config import ConfigError, DataConfig, Hyp, from_dict, load_data_config
from utils.dataset import CellDataset, build_dataloader
from utils.datasplits import resolve_split
from utils.label_cache import DatasetCache
from utils.sampling import ShareSampler, allocate, source_of
from utils.synthetic import write_dataset

SHARES = {"big": 0.5, "small": 0.3, "tiny": 0.2}
SOURCES = ["big"] * 40 + ["small"] * 7 + ["tiny"] * 2


def test_allocate_is_proportional_and_exact():
    assert allocate(SHARES, 100) == {"big": 50, "small": 30, "tiny": 20}
    counts = allocate({"a": 1, "b": 1, "c": 1}, 10)
    assert sum(counts.values()) == 10 and max(counts.values()) - min(counts.values()) == 1
    with pytest.raises(ValueError):
        allocate({"a": 0.0}, 5)


def test_epoch_has_each_source_share_and_cycles_small_sources():
    s = ShareSampler(SOURCES, SHARES, num_samples=60, seed=1)
    idx = s.epoch_indices()
    got = Counter(SOURCES[i] for i in idx)
    assert got == {"big": 30, "small": 18, "tiny": 12}
    small = [i for i in idx if SOURCES[i] == "small"]
    assert set(small) == set(range(40, 47))        # every small image, before...
    assert max(Counter(small).values()) - min(Counter(small).values()) <= 1  # ...even repeats
    assert len(set(i for i in idx if SOURCES[i] == "big")) == 30   # no repeat within a pass


def test_epochs_are_reproducible_and_differ():
    a, b = ShareSampler(SOURCES, SHARES, 60, seed=3), ShareSampler(SOURCES, SHARES, 60, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_ranks_take_disjoint_slices_of_one_epoch():
    ranks = [ShareSampler(SOURCES, SHARES, 61, seed=0, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(5)
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ranks[0]) == 30
    whole = ranks[0].epoch_indices()
    assert sorted(parts[0] + parts[1]) == sorted(whole.tolist())


def test_an_image_without_a_source_share_is_an_error():
    with pytest.raises(ValueError, match="'other'"):
        ShareSampler(SOURCES + ["other"], SHARES)
    zero = ShareSampler(SOURCES, {**SHARES, "tiny": 0.0}, 50)
    assert all(SOURCES[i] != "tiny" for i in zero.epoch_indices())


def _two_source_root(tmp_path):
    write_dataset(tmp_path / "a", 4, size=(64, 64), seed=0)
    write_dataset(tmp_path / "b", 2, size=(64, 64), seed=1)
    return tmp_path


def test_yaml_sources_are_validated_and_matched(tmp_path):
    root = _two_source_root(tmp_path)
    good = {"path": ".", "train": ["a", "b"],
            "sources": {"A": {"match": "a/*", "share": 0.25}, "B": {"match": "b/images/*", "share": 0.75}},
            "epoch_size": 16}
    (root / "d.yaml").write_text(yaml.safe_dump(good))
    cfg = load_data_config(root / "d.yaml")
    samples = resolve_split(cfg, "train")
    assert Counter(s.source for s in samples) == {"A": 4, "B": 2}
    assert source_of(cfg, root / "elsewhere.png") == ""
    bad = {**good, "sources": {"A": {"match": "a/*", "sharee": 1}}}
    (root / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="sharee"):
        load_data_config(root / "bad.yaml")
    neg = {**good, "sources": {"A": {"match": "a/*", "share": -1}}}
    (root / "neg.yaml").write_text(yaml.safe_dump(neg))
    with pytest.raises((ConfigError, ValueError), match="share"):
        load_data_config(root / "neg.yaml")


def test_loader_draws_by_share(tmp_path):
    root = _two_source_root(tmp_path)
    cfg = from_dict(DataConfig, {"path": str(root), "yaml_dir": str(root), "train": ["a", "b"],
                                 "sources": {"A": {"match": "a/*", "share": 0.25},
                                             "B": {"match": "b/*", "share": 0.75}},
                                 "epoch_size": 16})
    samples = resolve_split(cfg, "train")
    ds = CellDataset(samples, 32, Hyp(), augment=True, cache=DatasetCache(samples, tmp_path / "c"),
                     shares={k: v.share for k, v in cfg.sources.items()}, epoch_size=cfg.epoch_size)
    loader, sampler = build_dataloader(ds, 4, 0, shuffle=True, seed=0)
    assert isinstance(sampler, ShareSampler)
    sampler.set_epoch(0)
    paths = [p for b in loader for p in b["path"]]
    assert len(paths) == 16
    assert sum("/b/" in p for p in paths) == 12
    # mosaic partners come from the same source
    assert set(np.concatenate([ds.groups["A"]])) == {i for i, s in enumerate(ds.samples) if s.source == "A"}
