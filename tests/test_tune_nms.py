"""The NMS/confidence sweep picks the settings that score best with the challenge metric."""
import numpy as np
import torch

from utils.boxes import label_to_boxes
from utils.branch_settings import BranchSettings
from utils.synthetic import make_label
from utils.targets import height_map
from utils.tune_nms import best_per_modality, configured_scores, sweep


class _Oracle:
    """Perfect maps and boxes (score 0.9) plus false boxes of score 0.2 in the background."""

    def __init__(self, labels):
        self.labels = labels

    def raw_outputs(self, image):
        label = self.labels[image[0, 0, 0]]
        _, boxes = label_to_boxes(label)
        fake = np.array([[30, 30, 42, 42], [60, 60, 72, 72]], np.float32)
        xyxy = np.concatenate([boxes, fake])
        scores = np.r_[np.full(len(boxes), 0.9), np.full(len(fake), 0.2)].astype(np.float32)
        xywh = np.c_[(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]]
        pred = torch.as_tensor(np.c_[xywh, scores], dtype=torch.float32)
        fg = (label > 0).astype(np.float32)
        fg[30:42, 30:42] = fg[60:72, 60:72] = 0.9  # what the false boxes sit on
        return pred, fg, height_map(label) + (fg > 0.5) * (label == 0) * 1.0


def test_sweep_prefers_the_threshold_that_drops_false_boxes():
    labels = [make_label((96, 96), seed=s, size_range=(12, 24), touching=False) for s in range(3)]
    for lab in labels:
        lab[28:44, 28:44] = lab[58:74, 58:74] = 0  # room for the false boxes, off the border
    items = [(f"im{i}", "fl", np.full((96, 96, 3), i, np.uint8), lab) for i, lab in enumerate(labels)]
    for configured, n_rows in ((BranchSettings(0.1, 0.45), 6), (BranchSettings(0.15, 0.3), 9)):
        frame = sweep(_Oracle(labels), items, confs=[0.1, 0.5], ious=[0.45],
                      settings={"fl": configured})
        assert len(frame) == n_rows  # the grid, plus the configured pair when not on it
        best = best_per_modality(frame)
        assert list(best["modality"]) == ["all", "fl"]
        assert (best["conf_thres"] == 0.5).all() and (best["iou_thres"] == 0.45).all()
        grid = frame[frame.grid]
        assert grid[grid.conf_thres == 0.5]["f1"].mean() > grid[grid.conf_thres == 0.1]["f1"].mean()
        scored = configured_scores(frame)  # what predict.py scores with data/routing.yaml's pair
        assert list(scored["modality"]) == ["fl", "all"]
        assert scored["conf_thres"][0] == configured.conf_thres
        assert scored["f1"][1] == frame[frame.configured]["f1"].mean() < best["f1"].max()


class _ScaledOracle(_Oracle):
    """The oracle's outputs at the size of the image it is given (a resized one)."""

    def raw_outputs(self, image):
        import cv2
        full = self.labels[image[0, 0, 0]]
        small = cv2.resize(full, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        return _Oracle([small] * (image[0, 0, 0] + 1)).raw_outputs(image)


def test_sweep_maps_labels_of_a_resized_image_back_to_its_size():
    """With ``scale`` the network sees the image resized, and its labels are scored at the
    image's own size: near-perfect at 2x (a lost mapping fails on the shape or the F1)."""
    labels = [make_label((96, 96), seed=s, size_range=(14, 24), touching=False) for s in range(2)]
    items = [(f"im{i}", "fl", np.full((96, 96, 3), i, np.uint8), lab) for i, lab in enumerate(labels)]
    frame = sweep(_ScaledOracle(labels), items, confs=[0.5], ious=[0.45],
                  settings={"fl": BranchSettings(0.5, 0.45)}, scale=2.0)
    assert (frame["f1"] > 0.9).all()
