"""Networks: the Anchor-based Watershed Framework (AWF) and its ResNet-18 backbone."""
from __future__ import annotations

from models.awf import AWF, AWFConfig, AWFExport
from models.backbone import ResNet18Backbone, load_backbone_weights

__all__ = ["AWF", "AWFConfig", "AWFExport", "ResNet18Backbone", "load_backbone_weights"]

