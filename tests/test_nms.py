"""Box conversions, single-class NMS and the global merge of tile detections."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import utils.nms as nms_mod
from utils.nms import merge_detections, non_max_suppression, xywh2xyxy


def test_box_conversion_of_tensors_and_arrays():
    xywh = torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.5, 0.5, 1.0, 1.0]])
    xyxy = xywh2xyxy(xywh)
    assert torch.equal(xyxy, torch.tensor([[8.0, 17.0, 12.0, 23.0], [0.0, 0.0, 1.0, 1.0]]))
    np.testing.assert_array_equal(xywh2xyxy(xywh.numpy()), xyxy.numpy())
    assert torch.equal(xywh, torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.5, 0.5, 1.0, 1.0]]))  # untouched
    assert torch.equal(xywh2xyxy(torch.tensor([[3, 3, 3, 3]])), torch.tensor([[1.5, 1.5, 4.5, 4.5]]))


def pred_from(rows):
    return torch.tensor(rows, dtype=torch.float32)[None]


def test_nms_suppresses_overlaps_filters_and_sorts():
    pred = pred_from([[50, 50, 20, 20, 0.6],   # duplicate of the next, lower score
                      [51, 50, 20, 20, 0.9],
                      [100, 100, 10, 10, 0.8],  # alone
                      [10, 10, 8, 8, 0.1]])     # under conf_thres
    out = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert len(out) == 1
    det = out[0]
    assert det.shape == (2, 5)
    assert torch.allclose(det[0], torch.tensor([41.0, 40.0, 61.0, 60.0, 0.9]))
    assert torch.allclose(det[1], torch.tensor([95.0, 95.0, 105.0, 105.0, 0.8]))
    assert non_max_suppression(pred, max_det=1)[0].shape == (1, 5)


def test_nms_batch_and_empty():
    pred = torch.zeros((3, 7, 5))
    pred[1, 0] = torch.tensor([5.0, 5.0, 4.0, 4.0, 0.9])
    out = non_max_suppression(pred)
    assert [o.shape[0] for o in out] == [0, 1, 0] and all(o.shape[1] == 5 for o in out)
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros((1, 3, 4)))


def test_candidate_cap_keeps_highest_scores(monkeypatch):
    monkeypatch.setattr(nms_mod, "MAX_NMS_CANDIDATES", 3)
    xs = torch.arange(10, dtype=torch.float32) * 50  # ten disjoint boxes
    pred = torch.stack([xs, xs, torch.full_like(xs, 10), torch.full_like(xs, 10),
                        torch.linspace(0.3, 0.9, 10)], dim=1)[None]
    det = non_max_suppression(pred)[0]
    assert det.shape[0] == 3 and torch.allclose(det[:, 4], torch.tensor([0.9, 0.8333, 0.7667]), atol=1e-3)


def test_merge_detections_removes_tile_duplicates():
    cell = torch.tensor([[600.0, 100.0, 630.0, 130.0, 0.9]])
    left_tile = torch.cat([cell, torch.tensor([[10.0, 10.0, 30.0, 30.0, 0.7]])])
    right_tile = torch.cat([cell + torch.tensor([1.0, 0.0, 1.0, 0.0, -0.1]),
                            torch.tensor([[900.0, 10.0, 930.0, 30.0, 0.6]])])
    merged = merge_detections([left_tile, right_tile, torch.zeros((0, 5))], iou_thres=0.45)
    assert merged.shape == (3, 5)
    assert torch.allclose(merged[:, 4], torch.tensor([0.9, 0.7, 0.6]))
    assert merge_detections([]).shape == (0, 5)
