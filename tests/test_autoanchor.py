"""Autoanchor: reproducible k-means + evolution, cluster recovery, BPR, check_anchors, CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import AWF, AWFConfig
from utils.autoanchor import anchor_bpr, anchor_fitness, check_anchors, kmean_anchors

CENTRES = np.array([[10.0, 12.0], [40.0, 35.0], [150.0, 160.0]])


def clustered_wh(n_per: int = 200, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c * rng.uniform(0.9, 1.1, (n_per, 2)) for c in CENTRES])


def test_reproducible():
    wh = clustered_wh()
    a = kmean_anchors(wh, n=3, gen=100, seed=0)
    b = kmean_anchors(wh, n=3, gen=100, seed=0)
    assert a.dtype == np.float32 and a.shape == (3, 2)
    assert np.array_equal(a, b)


def test_recovers_three_clusters():
    wh = clustered_wh()
    k = kmean_anchors(wh, n=3, thr=4.0, gen=100, seed=0)
    assert np.all(np.diff(k.prod(1)) > 0)                      # sorted by area
    np.testing.assert_allclose(k, CENTRES, rtol=0.15)
    bpr, aat = anchor_bpr(wh, k, 4.0)
    assert bpr == 1.0 and aat >= 1.0


def test_evolution_does_not_lower_fitness():
    wh = clustered_wh()
    k0 = kmean_anchors(wh, n=3, gen=0, seed=0)
    k1 = kmean_anchors(wh, n=3, gen=200, seed=0)
    assert anchor_fitness(wh, k1) >= anchor_fitness(wh, k0)


def test_bpr_values():
    wh = np.array([[10.0, 10.0], [100.0, 100.0], [30.0, 30.0]])
    bpr, aat = anchor_bpr(wh, [[10.0, 10.0]], thr=4.0)       # 30/10 = 3 < 4 matches, 100/10 does not
    assert bpr == pytest.approx(2 / 3) and aat == pytest.approx(2 / 3)
    bpr, aat = anchor_bpr(wh, [[10.0, 10.0], [40.0, 40.0]], thr=4.0)
    assert bpr == 1.0 and aat == pytest.approx(4 / 3)       # 100/40 = 2.5; 10/40 = 1/4 is not > 1/4
    assert anchor_bpr(np.zeros((0, 2)), [[10.0, 10.0]])[0] == 1.0


def test_check_anchors_replaces_only_when_needed():
    model = AWF(AWFConfig(neck_channels=16, decoder_channels=[8, 8]))
    before = model.anchors.clone()
    good = np.array([[22.0, 22.0], [46.0, 46.0], [199.0, 190.0]]).repeat(20, 0)
    assert not check_anchors(model, good, thr=4.0, gen=10)
    tiny = clustered_wh() / 4                                    # 2.5 .. 40 px: the 199 anchor is useless
    tiny = np.concatenate([tiny, [[3.0, 3.0]] * 100])
    assert not check_anchors(model, tiny, thr=4.0, noautoanchor=True, gen=10)
    assert torch.equal(model.anchors, before)
    assert check_anchors(model, tiny, thr=4.0, gen=50)
    assert not torch.equal(model.anchors, before)
    assert anchor_bpr(tiny, model.anchors.numpy().reshape(-1, 2))[0] > anchor_bpr(tiny, before.view(-1, 2))[0]


def test_cli(tmp_path, monkeypatch, capsys):
    datasplits = pytest.importorskip("utils.datasplits")
    label_cache = pytest.importorskip("utils.label_cache")
    from utils import autoanchor

    (tmp_path / "d.yaml").write_text(f"path: {tmp_path}\ntrain: [train]\n")
    monkeypatch.setattr(datasplits, "resolve_split", lambda cfg, split: ["a", "b"])
    monkeypatch.setattr(label_cache, "DatasetCache", lambda samples, cache_dir, **kw: None)
    monkeypatch.setattr(label_cache, "dataset_boxes", lambda samples, cache: clustered_wh())
    k = autoanchor.main(["--data", str(tmp_path / "d.yaml"), "--img", "640", "-n", "3", "--gen", "20"])
    out = capsys.readouterr().out
    assert k.shape == (3, 2) and "BPR 1.0000" in out and "600 boxes from 2 images" in out
