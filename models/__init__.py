"""Networks: the Anchor-based Watershed Framework (AWF) and its ResNet-18 backbone."""
from __future__ import annotations

from pathlib import Path

from models.awf import AWF, AWFConfig, AWFExport
from models.backbone import ResNet18Backbone, load_backbone_weights

__all__ = ["AWF", "AWFConfig", "AWFExport", "ResNet18Backbone", "load_backbone_weights",
           "build_awf", "load_pretrained_backbone"]


def load_pretrained_backbone(model: AWF, path: str | Path) -> tuple[list[str], list[str]]:
    """Load ``resnet18.pt`` (from ``convertCkpt.py``) or a torchvision ``resnet18-*.pth`` into
    ``model.backbone``; returns ``(missing, unexpected)`` keys."""
    from utils.checkpoint import load_checkpoint

    return load_backbone_weights(model.backbone, load_checkpoint(path))


def build_awf(cfg: AWFConfig | dict | None = None, backbone_weights: str | Path | None = None) -> AWF:
    """Build an :class:`AWF` from a config (dataclass, plain dict or None = defaults), optionally
    loading ImageNet backbone weights (``--weights resnet18.pt``)."""
    model = AWF.from_config(cfg) if cfg is not None else AWF()
    if backbone_weights:
        load_pretrained_backbone(model, backbone_weights)
    return model
