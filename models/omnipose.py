"""Omnipose network (after Cutler et al., Nature Methods 2022) on this project's ResNet-18.

An encoder-decoder predicting, at full resolution, the four Omnipose maps: flow (dy, dx), the
smooth distance (pixels inside cells, about -5 on background) and a boundary logit. The layers
share the AWF's names and shapes (backbone, neck, decoder), so ``--weights`` accepts an AWF
checkpoint: everything but the final 1x1 output layer starts from it. Mask reconstruction from
these maps is ``utils.flows.reconstruct_masks``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.awf import IMAGENET_MEAN, IMAGENET_STD, MAX_STRIDE, PAN, WatershedDecoder
from models.backbone import ResNet18Backbone
from utils.config import from_dict, to_dict
from utils.flows import TARGET_CHANNELS  # the output channels, in order: the training targets' layout


@dataclass
class OmniposeConfig:
    """Architecture saved in every checkpoint (widths as the AWF's, so AWF weights transfer)."""

    neck_channels: int = 128
    decoder_channels: list[int] = field(default_factory=lambda: [64, 32])
    backbone: str = "resnet18"
    # Cell diameter (px, utils.inference.median_diameter) every training image was resized to
    # (the dataset's ``target_diameter``); prediction resizes images so that their cells measure
    # it (utils.sizing.trained_size_rule). 0: trained and run at the images' own scale.
    diameter: float = 0.0

    def __post_init__(self):
        if not self.diameter >= 0:
            raise ValueError(f"diameter must be >= 0 (0 = native scale), got {self.diameter}")
        if self.backbone != "resnet18":
            raise ValueError(f"backbone must be resnet18, got {self.backbone}")
        if len(self.decoder_channels) != 2:
            raise ValueError("decoder_channels is [stride-4 width, stride-2 width]")


class Omnipose(nn.Module):
    """``x (B, 3, H, W)`` in [0, 1], H and W multiples of 32 -> dict of
    ``flow (B, 2, H, W)`` (dy, dx), ``dist (B, 1, H, W)`` pixels, ``boundary (B, 1, H, W)`` logits."""

    kind = "omnipose"

    def __init__(self, cfg: OmniposeConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or OmniposeConfig()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = ResNet18Backbone()
        c1, c2, c3, c4, c5 = 64, 64, 128, 256, 512
        self.neck = PAN((c3, c4, c5), cfg.neck_channels, top_stride=8)
        self.decoder = WatershedDecoder(cfg.neck_channels, c2, c1, tuple(cfg.decoder_channels),
                                        out_ch=len(TARGET_CHANNELS))

    def forward(self, x: torch.Tensor) -> dict:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % MAX_STRIDE or x.shape[3] % MAX_STRIDE:
            raise ValueError(f"Omnipose input must be (B, 3, H, W) with H, W multiples of "
                             f"{MAX_STRIDE}, got {tuple(x.shape)}")
        c1, c2, c3, c4, c5 = self.backbone((x - self.mean) / self.std)
        out = self.decoder(self.neck([c3, c4, c5])[8], c2, c1)
        return {"flow": out[:, :2], "dist": out[:, 2:3], "boundary": out[:, 3:4]}

    @property
    def diameter(self) -> float:
        """The cell diameter (px) this model was trained at; 0 = the images' own scale."""
        return float(self.cfg.diameter)

    def config_dict(self) -> dict:
        return to_dict(self.cfg)

    @classmethod
    def from_config(cls, cfg: dict | OmniposeConfig) -> "Omnipose":
        return cls(cfg if isinstance(cfg, OmniposeConfig) else from_dict(OmniposeConfig, cfg, "OmniposeConfig"))
