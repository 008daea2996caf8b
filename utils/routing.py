"""Per-image branch routing: modality -> checkpoint, per-modality detection settings, Omnipose rule.

The routing YAML (data/routing.yaml) replaces the original framework's edits of predict.py:

    ckpt_dir: ckpts
    model_dict: {bf: general.pt, gs: grayscale.pt, fl: fl.pt, omni: omnipose.pt}
    general: bf                       # the branch a missing file falls back to
    postprocess: {bf: {conf_thres: 0.10, iou_thres: 0.25}, ...}
    omni_rule: {modalities: [gs], awf_conf_below: 0.8, omni_margin: 0.05, diameter_ratio_above: .inf}

Each checkpoint is loaded once per run, on first use.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.loading import load_model
from utils.config import load_config
from utils.inference import AWFSegmenter, InferenceParams, OmniposeSegmenter
from utils.modality import classify_modality
from utils.precision import log_precision, resolve_precision

LOGGER = logging.getLogger(__name__)
MODALITIES = ("bf", "fl", "gs")


@dataclass
class BranchSettings:
    """Per-modality detection settings (the original framework's tuned values as defaults)."""

    conf_thres: float = 0.25
    iou_thres: float = 0.35
    max_det: int = 3000


@dataclass
class OmniRule:
    """When Omnipose's mask replaces the AWF's.

    For images of ``modalities`` both branches run; Omnipose wins when the AWF's mean foreground
    confidence is under ``awf_conf_below``, or Omnipose's is higher by more than ``omni_margin``
    (the original framework's two tests), or Omnipose's median cell diameter is more than
    ``diameter_ratio_above`` times the AWF's (this project's test: the AWF split cells that
    Omnipose keeps whole; ``.inf`` = off). Measure a setting with ``benchmarks/omni_rule.py``.
    """

    enabled: bool = True
    modalities: list[str] = field(default_factory=lambda: ["gs"])
    awf_conf_below: float = 0.8
    omni_margin: float = 0.05
    diameter_ratio_above: float = math.inf

    def prefer_omnipose(self, awf_conf, omni_conf, awf_diameter=0.0, omni_diameter=0.0):
        """Confidences: mean foreground probability over pixels above 0.5; diameters: median cell
        diameter in pixels (:func:`utils.inference.median_diameter`, 0 = no cell). Scalars give a
        bool, equal-shape arrays (one entry per image) a bool array."""
        awf_d, omni_d = np.asarray(awf_diameter, float), np.asarray(omni_diameter, float)
        larger = (awf_d > 0) & (omni_d / np.maximum(awf_d, 1e-9) > self.diameter_ratio_above)
        return (np.asarray(awf_conf) < self.awf_conf_below) \
            | (np.asarray(omni_conf) > np.asarray(awf_conf) + self.omni_margin) | larger


@dataclass
class RoutingConfig:
    ckpt_dir: str = "ckpts"
    model_dict: dict = field(default_factory=lambda: {"bf": "general.pt", "gs": "grayscale.pt",
                                                      "fl": "fl.pt", "omni": "omnipose.pt"})
    general: str = "bf"
    postprocess: dict = field(default_factory=lambda: {
        "bf": {"conf_thres": 0.10, "iou_thres": 0.25},
        "gs": {"conf_thres": 0.20, "iou_thres": 0.25},
        "fl": {"conf_thres": 0.25, "iou_thres": 0.35}})
    omni_rule: OmniRule = field(default_factory=OmniRule)

    def __post_init__(self):
        bad = set(self.model_dict) - set(MODALITIES) - {"omni"}
        if bad:
            raise ValueError(f"model_dict: unknown branch(es) {sorted(bad)}")
        if self.general not in self.model_dict:
            raise ValueError(f"general: {self.general} is not a key of model_dict")
        self.settings = {m: load_config(BranchSettings, dict(self.postprocess.get(m, {})))
                         for m in MODALITIES}


@dataclass
class Overrides:
    """Per-run command-line overrides (None = the routing YAML's per-modality value)."""

    conf_thres: float | None = None
    iou_thres: float | None = None
    max_det: int | None = None
    tta: bool = False
    scale: float = 1.0


class Router:
    """Chooses and runs a branch per image; ``ckpt`` forces one checkpoint for every image."""

    def __init__(self, cfg: RoutingConfig, device: torch.device, overrides: Overrides | None = None,
                 ckpt: str | None = None, amp: str = "auto", base_dir: Path | None = None):
        self.cfg, self.device = cfg, device
        self.precision = resolve_precision(amp, device)  # utils.precision (--amp)
        log_precision(self.precision, "inference")
        self.ckpt_dir = Path(base_dir or ".") / cfg.ckpt_dir
        self.overrides = overrides or Overrides()
        self.ckpt = ckpt
        self._models: dict[str, torch.nn.Module] = {}
        self._warned: set[str] = set()

    def _model(self, path: Path) -> torch.nn.Module:
        key = str(path)
        if key not in self._models:
            self._models[key] = load_model(path).to(self.device)
            LOGGER.info("loaded %s", path)
        return self._models[key]

    def check_checkpoints(self) -> None:
        """Load every checkpoint this run can use, once, before any image is read: a missing
        one raises FileNotFoundError, a corrupt or refused one CheckpointError (one line each)."""
        if self.ckpt:
            if not Path(self.ckpt).is_file():
                raise FileNotFoundError(f"--ckpt {self.ckpt}: no such checkpoint")
            self._model(Path(self.ckpt))
            return
        general = self.ckpt_dir / self.cfg.model_dict[self.cfg.general]
        if not general.is_file():
            raise FileNotFoundError(f"{general}: default weights missing (see ckpts/README.md), "
                                    "or pass --ckpt PATH")
        for name in dict.fromkeys(self.cfg.model_dict.values()):
            if (self.ckpt_dir / name).is_file():
                self._model(self.ckpt_dir / name)

    def branch_path(self, branch: str) -> Path | None:
        """Checkpoint of a branch; a missing file falls back to the general branch (warned once)."""
        if self.ckpt:
            return Path(self.ckpt)
        root = self.ckpt_dir
        name = self.cfg.model_dict.get(branch)
        if name and (root / name).is_file():
            return root / name
        if branch == "omni":
            return None
        general = root / self.cfg.model_dict[self.cfg.general]
        if branch not in self._warned and self.cfg.model_dict.get(branch) != self.cfg.model_dict[self.cfg.general]:
            self._warned.add(branch)
            LOGGER.warning("branch %s: %s missing, using the general branch %s", branch,
                           root / str(name), general)
        if not general.is_file():
            raise FileNotFoundError(f"{general}: general branch checkpoint missing (pass --ckpt)")
        return general

    def params(self, modality: str) -> InferenceParams:
        s, o = self.cfg.settings[modality], self.overrides
        return InferenceParams(conf_thres=s.conf_thres if o.conf_thres is None else o.conf_thres,
                               iou_thres=s.iou_thres if o.iou_thres is None else o.iou_thres,
                               max_det=s.max_det if o.max_det is None else o.max_det,
                               tta=o.tta, scale=o.scale)

    def segmenter(self, path: Path, modality: str):
        model = self._model(path)
        if getattr(model, "kind", "awf") == "omnipose":
            return OmniposeSegmenter(model, self.device, precision=self.precision)
        return AWFSegmenter(model, self.device, self.params(modality), precision=self.precision)

    def segment(self, raw: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """Raw image (for the modality) and network image -> (label, info with modality/branch)."""
        modality = classify_modality(raw)
        path = self.branch_path(modality)
        label, info = self.segmenter(path, modality).segment(image)
        info.update(modality=modality, branch=path.stem)
        rule = self.cfg.omni_rule
        omni = None if self.ckpt else self.branch_path("omni")
        if omni is not None and rule.enabled and modality in rule.modalities:
            omni_label, omni_info = self.segmenter(omni, modality).segment(image)
            if rule.prefer_omnipose(info["fg_conf"], omni_info["fg_conf"], info["diameter"],
                                    omni_info["diameter"]):
                label, info = omni_label, {**omni_info, "modality": modality, "branch": omni.stem}
        return label, info


def load_routing(path: str | None, **changes) -> RoutingConfig:
    """The routing YAML (None or a missing file = built-in defaults), with optional field changes."""
    cfg = load_config(RoutingConfig, path) if path and Path(path).is_file() else RoutingConfig()
    return replace(cfg, **changes) if changes else cfg
