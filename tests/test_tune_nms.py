"""The NMS/confidence sweep picks the settings that score best with the challenge metric."""
import numpy as np
import torch

from utils.boxes import label_to_boxes
from utils.nms import xyxy2xywh
from utils.synthetic import make_label
from utils.targets import height_map
from utils.tune_nms import best_per_modality, sweep


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
        pred = torch.cat([torch.as_tensor(xyxy2xywh(xyxy)), torch.as_tensor(scores)[:, None]], 1)
        fg = (label > 0).astype(np.float32)
        fg[30:42, 30:42] = fg[60:72, 60:72] = 0.9  # what the false boxes sit on
        return pred, fg, height_map(label) + (fg > 0.5) * (label == 0) * 1.0


def test_sweep_prefers_the_threshold_that_drops_false_boxes():
    labels = [make_label((96, 96), seed=s, size_range=(12, 24), touching=False) for s in range(3)]
    for lab in labels:
        lab[28:44, 28:44] = lab[58:74, 58:74] = 0  # room for the false boxes, off the border
    items = [(f"im{i}", "fl", np.full((96, 96, 3), i, np.uint8), lab) for i, lab in enumerate(labels)]
    frame = sweep(_Oracle(labels), items, confs=[0.1, 0.5], ious=[0.45])
    assert len(frame) == 6
    best = best_per_modality(frame)
    assert list(best["modality"]) == ["all", "fl"]
    assert (best["conf_thres"] == 0.5).all()
    assert frame[frame.conf_thres == 0.5]["f1"].mean() > frame[frame.conf_thres == 0.1]["f1"].mean()
