"""The detection settings of one AWF branch (data/routing.yaml's ``detection`` entries).

Their own module because both sides use them: :mod:`utils.routing` reads them from the routing
YAML, :mod:`utils.inference` runs with them (``InferenceParams.detection``); neither imports
the other's way round.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BranchSettings:
    """Detection settings of one modality's AWF branch: a ``detection`` entry of
    data/routing.yaml (tuned with ``python -m utils.tune_nms``)."""

    conf_thres: float      # lowest detection score kept, 0..1
    iou_thres: float       # NMS IoU threshold, 0..1
    max_det: int = 3000    # detections kept per image at most (DSB images hold up to ~400 nuclei)
