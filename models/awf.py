"""Anchor-based Watershed Framework (AWF) network.

ResNet-18 backbone -> light PAN neck -> (a) a YOLOv5-style one-class detection head (per anchor:
x, y, w, h, objectness) and (b) a watershed decoder (P3 -> stride 4 + C2 -> stride 2 + C1 -> full
resolution) predicting a foreground logit and a height map. The instance post-processing
(``utils/watershed.py``) seeds a watershed on the height map with the detected boxes.

Input: float ``(B, 3, H, W)`` RGB in [0, 1], H and W multiples of 32; ImageNet normalisation is
done inside the module so training, prediction and the exported ONNX graph all agree.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ResNet18Backbone
from utils.config import from_dict, to_dict

LOGGER = logging.getLogger(__name__)

# torchvision's ImageNet statistics (the backbone's pretraining normalisation)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# YOLOv5's BatchNorm settings for the layers it creates (models/yolo.py initialize_weights)
BN_EPS, BN_MOMENTUM = 1e-3, 0.03
MAX_STRIDE = 32  # ResNet-18's deepest feature; H and W must be multiples of it
# original AWF anchors, all on the stride-8 level
DEFAULT_ANCHORS = [[22.0, 22.0, 46.0, 46.0, 199.0, 190.0]]


@dataclass
class AWFConfig:
    """Network architecture (saved in every checkpoint; anchors in pixels).

    ``anchors``: one list per detection level of flat (w, h) pairs in pixels, the same count on
    every level; ``strides``: the levels' strides, ascending, from {8, 16, 32}.
    ``decoder_channels``: watershed-decoder widths at (stride 4, stride 2).
    ``cells_per_image`` / ``prior_img_size``: the objectness bias prior (YOLOv5 uses 8 objects
    per 640-pixel image; a microscopy tile holds many more cells).
    """

    anchors: list[list[float]] = field(default_factory=lambda: [list(a) for a in DEFAULT_ANCHORS])
    strides: list[int] = field(default_factory=lambda: [8])
    neck_channels: int = 128
    decoder_channels: list[int] = field(default_factory=lambda: [64, 32])
    backbone: str = "resnet18"
    cells_per_image: float = 100.0
    prior_img_size: int = 640

    def __post_init__(self):
        if self.backbone != "resnet18":
            raise ValueError(f"backbone must be resnet18, got {self.backbone}")
        if not self.strides or any(s not in (8, 16, 32) for s in self.strides):
            raise ValueError(f"strides must be a subset of 8, 16, 32, got {self.strides}")
        if sorted(set(self.strides)) != list(self.strides):
            raise ValueError(f"strides must be ascending and distinct, got {self.strides}")
        if len(self.anchors) != len(self.strides):
            raise ValueError(f"{len(self.anchors)} anchor level(s) for {len(self.strides)} stride(s)")
        counts = {len(a) for a in self.anchors}
        if len(counts) != 1 or counts.pop() % 2 or not self.anchors[0]:
            raise ValueError("each anchor level needs the same number of (w, h) pairs")
        if any(v <= 0 for a in self.anchors for v in a):
            raise ValueError("anchor sizes must be positive (pixels)")
        if len(self.decoder_channels) != 2 or min(self.decoder_channels) < 1 or self.neck_channels < 1:
            raise ValueError("decoder_channels is [stride-4 width, stride-2 width]; widths >= 1")


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm -> SiLU, 'same' padding; ``(B, c_in, H, W) -> (B, c_out, H/s, W/s)``."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False),
            nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.SiLU(inplace=True),
        )


class Fuse(nn.Sequential):
    """Merge of concatenated features: 1x1 (c_in -> c) then 3x3 (c -> c)."""

    def __init__(self, c_in: int, c: int):
        super().__init__(ConvBNAct(c_in, c, 1), ConvBNAct(c, c, 3))


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class PAN(nn.Module):
    """YOLOv5-shaped path aggregation neck: top-down (FPN) to P3, then bottom-up to P4/P5.

    ``forward([C3, C4, C5]) -> {stride: P}`` with ``ch`` channels each. P3 is always produced
    (the watershed decoder reads it); the bottom-up stages are built only up to ``top_stride``,
    the deepest level the detection head uses (an unused stage would cost CPU time and leave
    parameters without gradients, which DDP rejects).
    """

    def __init__(self, in_ch: tuple[int, int, int], ch: int, top_stride: int = 8):
        super().__init__()
        c3, c4, c5 = in_ch
        self.top_stride = top_stride
        self.lat5 = ConvBNAct(c5, ch, 1)
        self.td4 = Fuse(c4 + ch, ch)
        self.td3 = Fuse(c3 + ch, ch)
        if top_stride >= 16:
            self.down3, self.bu4 = ConvBNAct(ch, ch, 3, 2), Fuse(2 * ch, ch)
        if top_stride >= 32:
            self.down4, self.bu5 = ConvBNAct(ch, ch, 3, 2), Fuse(2 * ch, ch)

    def forward(self, feats: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        c3, c4, c5 = feats
        h5 = self.lat5(c5)
        h4 = self.td4(torch.cat([_up2(h5), c4], 1))
        out = {8: self.td3(torch.cat([_up2(h4), c3], 1))}
        if self.top_stride >= 16:
            out[16] = self.bu4(torch.cat([self.down3(out[8]), h4], 1))
        if self.top_stride >= 32:
            out[32] = self.bu5(torch.cat([self.down4(out[16]), h5], 1))
        return out


class WatershedDecoder(nn.Module):
    """P3 (stride 8) + C2 (stride 4) + C1 (stride 2) -> ``(B, out_ch, H, W)`` (AWF: [foreground
    logit, height]; Omnipose: [flow y, flow x, distance, boundary logit]).

    Features are reduced with 1x1 convs before each nearest x2 upsampling and added to a 1x1
    lateral of the skip feature, then mixed by one 3x3 conv; the 2-channel output at stride 2 is
    upsampled bilinearly to full resolution (a stride-1 stage would double the decoder's cost).
    """

    def __init__(self, p3_ch: int, c2_ch: int, c1_ch: int, ch: tuple[int, int], out_ch: int = 2):
        super().__init__()
        d4, d2 = ch
        self.reduce8, self.lat4, self.fuse4 = ConvBNAct(p3_ch, d4), ConvBNAct(c2_ch, d4), ConvBNAct(d4, d4, 3)
        self.reduce4, self.lat2, self.fuse2 = ConvBNAct(d4, d2), ConvBNAct(c1_ch, d2), ConvBNAct(d2, d2, 3)
        self.out = nn.Conv2d(d2, out_ch, 1)

    def forward(self, p3: torch.Tensor, c2: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        x = self.fuse4(_up2(self.reduce8(p3)) + self.lat4(c2))
        x = self.fuse2(_up2(self.reduce4(x)) + self.lat2(c1))
        return F.interpolate(self.out(x), scale_factor=2.0, mode="bilinear", align_corners=False)


def _make_grid(h, w, device) -> torch.Tensor:
    """Cell coordinates ``(h, w, 2)`` float32 [x, y] (traceable: h, w may be traced sizes)."""
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), -1)


class AWF(nn.Module):
    """The AWF network; see the module docstring.

    ``forward(x (B, 3, H, W) in [0, 1]) -> dict(det=[(B, na, H/s, W/s, 5) raw per level],
    fg=(B, 1, H, W) logits, height=(B, 1, H, W) linear)``. ``anchors`` is a ``(nl, na, 2)``
    buffer in pixels (in every state dict; autoanchor replaces it with :meth:`set_anchors`).
    """

    kind = "awf"

    def __init__(self, cfg: AWFConfig | None = None):
        super().__init__()
        self.cfg = cfg = copy.deepcopy(cfg) if cfg is not None else AWFConfig()
        self.nl, self.na = len(cfg.strides), len(cfg.anchors[0]) // 2
        self.strides = list(cfg.strides)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("anchors", torch.tensor(cfg.anchors, dtype=torch.float32).view(self.nl, self.na, 2))
        self.backbone = ResNet18Backbone()
        c1, c2, c3, c4, c5 = self.backbone.channels
        n = cfg.neck_channels
        self.neck = PAN((c3, c4, c5), n, top_stride=max(self.strides))
        self.head = nn.ModuleList(nn.Conv2d(n, self.na * 5, 1) for _ in self.strides)
        self.decoder = WatershedDecoder(n, c2, c1, tuple(cfg.decoder_channels))
        self._init_head_biases()

    def _init_head_biases(self):
        """YOLOv5-style: box biases 0 (a box at the cell centre of anchor size), objectness bias =
        logit of the prior chance that a (cell, anchor) holds an object: ``cells_per_image``
        spread over the ``(prior_img_size / stride)^2`` cells of the level."""
        for conv, s in zip(self.head, self.strides):
            b = conv.bias.detach().view(self.na, 5)
            p = min(self.cfg.cells_per_image / (self.cfg.prior_img_size / s) ** 2, 0.5)
            b[:, :4] = 0.0
            b[:, 4] = math.log(p / (1.0 - p))

    def forward(self, x: torch.Tensor) -> dict:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % MAX_STRIDE or x.shape[3] % MAX_STRIDE:
                raise ValueError(f"AWF input must be (B, 3, H, W) with H, W multiples of {MAX_STRIDE}, "
                                 f"got {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        c1, c2, c3, c4, c5 = self.backbone(x)
        p = self.neck([c3, c4, c5])
        det = [self._head_out(conv(p[s])) for conv, s in zip(self.head, self.strides)]
        fg, height = self.decoder(p[8], c2, c1).split(1, dim=1)
        return {"det": det, "fg": fg, "height": height}

    def _head_out(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, na*5, h, w) -> (B, na, h, w, 5)``."""
        b, _, h, w = y.shape
        return y.view(b, self.na, 5, h, w).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, det: list[torch.Tensor]) -> torch.Tensor:
        """Raw head outputs -> ``(B, N, 5)`` float32 [cx, cy, w, h, score] in input pixels.

        YOLOv5's parametrisation: ``xy = (2 sigmoid(t) - 0.5 + grid) * stride``,
        ``wh = (2 sigmoid(t))^2 * anchor``, ``score = sigmoid(obj)``. N = sum over levels of
        na * h * w, ordered level, anchor, row, column. Traceable (ONNX, dynamic H and W).
        """
        out = []
        for i, p in enumerate(det):
            p = p.float().sigmoid()
            b, na, h, w, _ = p.shape
            grid = _make_grid(h, w, p.device).view(1, 1, h, w, 2)
            xy = (p[..., :2] * 2.0 - 0.5 + grid) * self.strides[i]
            wh = (p[..., 2:4] * 2.0) ** 2 * self.anchors[i].view(1, na, 1, 1, 2)
            out.append(torch.cat((xy, wh, p[..., 4:5]), -1).reshape(b, -1, 5))
        return torch.cat(out, 1)

    @torch.no_grad()
    def set_anchors(self, anchors) -> None:
        """Replace the anchors: ``(nl * na, 2)`` pixels (w, h), any order; sorted by area and dealt
        to the levels in stride order (small anchors on the fine level). The config follows."""
        a = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
        if a.shape[0] != self.nl * self.na or not bool((a > 0).all()):
            raise ValueError(f"expected {self.nl * self.na} positive (w, h) anchors, got {tuple(a.shape)}")
        a = a[a.prod(1).argsort()].view(self.nl, self.na, 2)
        self.anchors.copy_(a.to(self.anchors.device))
        self.cfg.anchors = [[float(v) for v in lvl.flatten()] for lvl in a]
        LOGGER.info("anchors set to %s", self.cfg.anchors)

    def config_dict(self) -> dict:
        """Plain dict of the architecture (with the current anchors) for checkpoints."""
        self.cfg.anchors = [[float(v) for v in lvl.flatten()] for lvl in self.anchors.detach().cpu()]
        return to_dict(self.cfg)

    @classmethod
    def from_config(cls, cfg: dict | AWFConfig) -> "AWF":
        """Build from :meth:`config_dict`'s output (validated: unknown keys are errors)."""
        return cls(cfg if isinstance(cfg, AWFConfig) else from_dict(AWFConfig, cfg, "AWFConfig"))


class AWFExport(nn.Module):
    """Export/inference wrapper: ``x (B, 3, H, W) in [0, 1] -> (boxes (B, N, 5) [cx, cy, w, h,
    score] pixels, fg (B, 1, H, W) probability, height (B, 1, H, W))``.

    The wrapper takes the model's train/eval mode (exporters restore the wrapper's mode on all
    children afterwards: a wrapper left in train mode would switch an eval model to training).
    """

    def __init__(self, model: AWF):
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        return self.model.decode(out["det"]), out["fg"].float().sigmoid(), out["height"].float()
