"""ResNet-18 feature extractor (torchvision's layers, torchvision's parameter names).

The backbone keeps torchvision's module names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``) so an
ImageNet state dict loads without renaming; ``fc`` is dropped.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)

# channels and strides of the features returned by ResNet18Backbone.forward, in order C1..C5
RESNET18_CHANNELS = (64, 64, 128, 256, 512)
RESNET18_STRIDES = (2, 4, 8, 16, 32)


class ResNet18Backbone(nn.Module):
    """torchvision ResNet-18 without the classifier.

    ``forward(x (B, 3, H, W) normalised) -> [C1, C2, C3, C4, C5]`` with strides 2, 4, 8, 16, 32 and
    channels 64, 64, 128, 256, 512. C1 is taken after conv1/bn1/relu (before the max-pool).
    """

    channels = RESNET18_CHANNELS
    strides = RESNET18_STRIDES

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet18  # on use: see utils/setup_check.py
        net = resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c1, c2, c3, c4, c5]


def _unwrap_state_dict(state: dict) -> dict:
    """Accept a raw state dict, a converted ``resnet18.pt`` (``{"backbone": sd, "meta": ...}``), a
    ``{"state_dict": sd}`` / ``{"model": sd}`` wrapper, or a full AWF state dict (``backbone.*`` keys)."""
    for key in ("backbone", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    sd = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in sd):  # a whole AWF model: keep its backbone part
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def load_backbone_weights(backbone: ResNet18Backbone, state: dict) -> tuple[list[str], list[str]]:
    """Load ResNet-18 weights into ``backbone``; returns ``(missing, unexpected)`` key lists.

    ``state``: a torchvision resnet18 state dict (``conv1.weight``, ``layer1.0...``; ``fc.*`` is
    ignored), or the dict saved by ``convertCkpt.py`` (``{"backbone": sd, "meta": {...}}``).
    A tensor of the wrong shape raises ``ValueError`` naming the key.
    """
    sd = {k: v for k, v in _unwrap_state_dict(state).items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    for name, value in sd.items():
        if name in own and own[name].shape != value.shape:
            raise ValueError(f"backbone weight {name}: shape {tuple(value.shape)} != {tuple(own[name].shape)}")
    result = backbone.load_state_dict(sd, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing:
        LOGGER.warning("backbone weights: %d missing key(s), e.g. %s", len(missing), missing[:3])
    if unexpected:
        LOGGER.warning("backbone weights: %d unexpected key(s), e.g. %s", len(unexpected), unexpected[:3])
    return missing, unexpected


def convert_resnet18_state(state: dict) -> dict:
    """A torchvision ResNet-18 state dict -> the backbone's state dict (``fc.*`` dropped, a
    ``module.`` prefix stripped, tensors made contiguous float/long plain tensors)."""
    sd = _unwrap_state_dict(state)
    return {k: v.detach().clone().contiguous() for k, v in sd.items() if not k.startswith("fc.")}
