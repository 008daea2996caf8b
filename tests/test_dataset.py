"""Dataset items, collate and loaders (utils.dataset)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.conftest import DATASET_IMAGES as N, centroid_offsets, cfg_for, disc_grid
from utils.boxes import label_to_boxes
from utils.config import Hyp
from utils.dataset import CellDataset, build_dataloader, collate_fn, max_workers
from utils.datasplits import resolve_split
from utils.label_cache import DatasetCache
from utils import io as uio

S = 64  # network image size of the tests (pixels)


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


def test_target_diameter_resizes_each_sample_to_one_cell_size_labels_aligned(tmp_path):
    """Large cells are shrunk and small ones enlarged until they measure the target diameter;
    the label follows the image (pixel centres aligned as cv2.resize's: sampling at i * scale, as
    cv2's INTER_NEAREST does, shifts a 4x shrunk label by 0.4 px)."""
    import cv2
    import tifffile
    from utils.inference import median_diameter

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, diameter, spacing in (("big", 120, 150), ("small", 12, 20)):
        label = disc_grid((480, 480) if name == "big" else (240, 240), diameter, spacing)
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.where(label > 0, 255, 0).astype(np.uint8))
        tifffile.imwrite(root / "labels" / f"{name}_label.tiff", label)
    samples = resolve_split(cfg_for(root, train=["."]), "train")
    ds = CellDataset(samples, 256, cache=DatasetCache(samples, tmp_path / "cache"),
                     target_diameter=30.0)
    for i in range(len(samples)):
        item = ds[i]
        label, img = item["label"].numpy(), item["img"][0].numpy().astype(float)
        assert abs(median_diameter(label) - 30.0) < 2.0, samples[i].image.name
        fg = (label > 0).astype(float)
        for grid in np.mgrid[:256, :256]:  # centre of the cells = centre of the image's brightness
            assert abs((grid * fg).sum() / fg.sum() - (grid * img).sum() / img.sum()) < 0.2
    plain = CellDataset(samples, 256, cache=DatasetCache(samples, tmp_path / "cache2"))
    assert median_diameter(plain[0]["label"].numpy()) > 90  # 0: the native scale (crop cuts some)


@pytest.mark.parametrize("factor", [0.4237, 1.93])
def test_resize_label_sits_on_the_image_cv2_resizes(factor):
    """A label resized to an image's new shape stays on its objects up to the far edge: the
    ratio per axis from the shapes, as cv2 takes it (one ``1 / factor`` for both axes drifts
    0.7 px across 1,000 px at 0.4237; cv2's INTER_NEAREST sits half a pixel off everywhere)."""
    import cv2
    from utils.inference import resize_image, resize_label

    label = disc_grid((700, 1000), 40, 60)
    image = resize_image(np.where(label > 0, 255, 0).astype(np.uint8)[..., None].repeat(3, 2), factor)
    h, w = image.shape[:2]
    offsets = centroid_offsets(resize_label(label, h, w), image[..., 0])
    assert offsets.mean() < 0.1 and offsets.max() < 0.25  # sampling the discs: up to 0.18
    nearest = cv2.resize(label.astype(np.uint16), (w, h), interpolation=cv2.INTER_NEAREST)
    assert centroid_offsets(nearest, image[..., 0]).mean() > 0.5  # the measure sees an offset
    assert resize_label(label, 700, 1000) is label
