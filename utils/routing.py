"""Per-image branch routing: modality -> checkpoint, per-modality detection settings, Omnipose rule.

data/routing.yaml is the one home of these settings (every key is required but the size rule's
probe, off when absent; an unknown key is an error) and replaces the original framework's edits
of predict.py. Its keys, with the shipped values (tests/test_predict.py checks this block against
the file):

    ckpt_dir: ckpts
    model_dict: {general: general.pt, bf: bf.pt, gs: grayscale.pt, fl: fl.pt, omni: omnipose.pt}
    general: general
    detection:
      bf: {conf_thres: 0.25, iou_thres: 0.25}
      gs: {conf_thres: 0.30, iou_thres: 0.25}
      fl: {conf_thres: 0.30, iou_thres: 0.30}
    omni_rule: {enabled: true, modalities: [fl], awf_conf_below: 0.0, omni_margin: 0.0,
                diameter_ratio_above: 1.025}
    size_rule: {enabled: true, min_diameter: 14, small_target: 20, max_diameter: 75,
                large_target: 60, probe_below_diameter: 40, probe_below_conf: 0.5,
                probe_factor: 2.0, probe_gain: 1.2}

Each checkpoint is loaded once per run, on first use.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from models.loading import load_model
from utils.branch_settings import BranchSettings
from utils.config import REPO_ROOT, ConfigError, from_dict, load_config, load_yaml
from utils.inference import (AWFSegmenter, add_timings, InferenceParams, OmniposeParams, OmniposeSegmenter,
                             Segmentation)
from utils.modality import MODALITIES, classify_modality
from utils.precision import log_precision, resolve_precision
from utils.sizing import SizeRule, diameter_scale, trained_size_rule

LOGGER = logging.getLogger(__name__)
# The shipped routing configuration: the default of predict.py, evaluate.py, training validation
# and utils.tune_nms.
DEFAULT_ROUTING = REPO_ROOT / "data" / "routing.yaml"
# Renamed keys of the routing YAML: old name (still read, with a warning: user files may have it)
# -> new name. ``postprocess`` held the detection settings (NMS), not the post-processing.
RENAMED_KEYS = {"postprocess": "detection"}


@dataclass
class OmniRule:
    """When Omnipose's mask replaces the AWF's.

    For images of ``modalities`` both branches run; Omnipose wins when the AWF's mean foreground
    confidence is under ``awf_conf_below``, or Omnipose's is higher by more than ``omni_margin``
    (the original framework's two tests, there 0.8 and 0.05 on gs), or Omnipose's median cell
    diameter is more than ``diameter_ratio_above`` times the AWF's (this project's test: the AWF
    split cells that Omnipose keeps whole; ``.inf`` = off). Measure a setting with
    ``benchmarks/omni_rule.py``.
    """

    enabled: bool
    modalities: list[str]
    awf_conf_below: float
    omni_margin: float
    diameter_ratio_above: float

    def __post_init__(self):
        bad = sorted(set(self.modalities) - set(MODALITIES))
        if bad:
            raise ValueError(f"omni_rule.modalities: unknown modality(ies) {bad}")

    def prefer_omnipose(self, awf_conf, omni_conf, awf_diameter=0.0, omni_diameter=0.0):
        """Confidences: mean foreground probability over pixels above 0.5; diameters: median cell
        diameter in pixels (:func:`utils.inference.median_diameter`, 0 = no cell). Scalars give a
        bool, equal-shape arrays (one entry per image) a bool array."""
        awf_d, omni_d = np.asarray(awf_diameter, float), np.asarray(omni_diameter, float)
        larger = (awf_d > 0) & (omni_d / np.maximum(awf_d, 1e-9) > self.diameter_ratio_above)
        return (np.asarray(awf_conf) < self.awf_conf_below) \
            | (np.asarray(omni_conf) > np.asarray(awf_conf) + self.omni_margin) | larger


def leave_one_out(scores: np.ndarray) -> float:
    """``scores (rules, N)``: each of N images' F1 under each candidate rule -> the mean F1 when
    each image is routed by the rule best on all the other images (the honest estimate of a rule
    tuned on these images; ties keep the first rule)."""
    rest = scores.sum(axis=1, keepdims=True) - scores   # (rules, N): total without image i
    best = rest.argmax(axis=0)                          # first maximum
    return float(scores[best, np.arange(scores.shape[1])].mean())


@dataclass
class RoutingConfig:
    """The routing YAML (see the module docstring): every key required."""

    ckpt_dir: str                            # relative to the repository root
    model_dict: dict[str, str]               # branch (general / bf / fl / gs / omni) -> checkpoint file
    general: str                             # the branch a missing checkpoint falls back to
    detection: dict[str, BranchSettings]     # modality -> detection settings of its AWF branch
    omni_rule: OmniRule
    size_rule: SizeRule                      # AWF branches: a second pass at the cells' scale

    def __post_init__(self):
        bad = set(self.model_dict) - set(MODALITIES) - {"general", "omni"}
        if bad:
            raise ValueError(f"model_dict: unknown branch(es) {sorted(bad)}")
        if self.general not in self.model_dict:
            raise ValueError(f"general: {self.general} is not a key of model_dict")
        if set(self.detection) != set(MODALITIES):
            raise ValueError(f"detection: needs exactly the modalities {list(MODALITIES)}, "
                             f"got {sorted(self.detection)}")
        self.detection = {m: load_config(BranchSettings, s) for m, s in self.detection.items()}
        self.omni_rule = load_config(OmniRule, self.omni_rule)
        self.size_rule = load_config(SizeRule, self.size_rule)

    def inference_params(self, modality: str, overrides: Overrides | None = None,
                         tuned: dict | None = None) -> InferenceParams:
        """The AWF settings of ``modality``'s branch: this YAML's, then ``tuned`` (the settings a
        checkpoint carries, finetune.py), then the run's command-line ``overrides``."""
        settings = replace(self.detection[modality], **tuned) if tuned else self.detection[modality]
        return (overrides or Overrides()).params(settings, self.size_rule)


@dataclass
class Overrides:
    """Per-run command-line overrides (None = the routing YAML's per-modality value)."""

    conf_thres: float | None = None
    iou_thres: float | None = None
    max_det: int | None = None
    tta: bool = False
    scale: float | None = None   # a fixed resize factor; None = native, then the size rule
    diameter: float = 0.0        # the cells' typical diameter in the images (px, --diameter): a
    #                              fixed resize to the model's diameter; 0 = measured

    def __post_init__(self):
        if self.scale is not None and self.diameter:
            raise ValueError(f"--scale {self.scale} and --diameter {self.diameter}: give one of "
                             "the two")
        if self.diameter:
            diameter_scale(self.diameter)  # > 0, or a one-line ValueError

    def fixed_scale(self, trained_diameter: float = 0.0) -> float | None:
        """This run's fixed resize factor: --scale, or --diameter's (a model trained at
        ``trained_diameter`` px: that over --diameter; else utils.sizing.DIAMETER_TARGET over
        it); None = automatic (native scale, then the size rule)."""
        if self.diameter:
            return (trained_diameter / self.diameter if trained_diameter > 0
                    else diameter_scale(self.diameter))
        return self.scale

    def detection(self) -> dict:
        """The detection settings this run overrides, by BranchSettings name."""
        return {k: getattr(self, k) for k in ("conf_thres", "iou_thres", "max_det")
                if getattr(self, k) is not None}

    def flags(self) -> str:
        """The detection overrides as command-line flags ("--conf-thres, --max-det"; "" = none)."""
        return ", ".join("--" + k.replace("_", "-") for k in self.detection())

    def params(self, settings: BranchSettings, size_rule: SizeRule | None = None) -> InferenceParams:
        """An AWF branch's InferenceParams: its ``settings`` with these overrides; ``size_rule``
        applies unless this run fixes the scale."""
        scale = self.fixed_scale()
        return InferenceParams(detection=replace(settings, **self.detection()), tta=self.tta,
                               scale=1.0 if scale is None else scale,
                               size_rule=size_rule if scale is None else None)

    def omnipose_params(self, diameter: float = 0.0) -> OmniposeParams:
        """An Omnipose branch's settings: --tta and the fixed scale (it has no detection step),
        else the size rule of its training ``diameter`` (px; 0 = trained at native scale: one
        pass as the image is)."""
        scale = self.fixed_scale(diameter)
        return OmniposeParams(tta=self.tta, scale=1.0 if scale is None else scale,
                              size_rule=trained_size_rule(diameter) if scale is None else None)


class Router:
    """Chooses and runs a branch per image; ``ckpt`` forces one checkpoint for every image,
    ``modality`` (bf / fl / gs) one modality (its branch and detection settings) instead of the
    classifier's (utils.modality)."""

    def __init__(self, cfg: RoutingConfig, device: torch.device, overrides: Overrides | None = None,
                 ckpt: str | None = None, amp: str = "auto", base_dir: Path | None = None,
                 modality: str | None = None):
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"--modality {modality}: choose one of {', '.join(MODALITIES)}")
        self.modality = modality
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
        else:
            general = self.ckpt_dir / self.cfg.model_dict[self.cfg.general]
            if not general.is_file():
                raise FileNotFoundError(f"{general}: default weights missing (see "
                                        "ckpts/README.md), or pass --ckpt PATH")
            for name in dict.fromkeys(self.cfg.model_dict.values()):
                if (self.ckpt_dir / name).is_file():
                    self._model(self.ckpt_dir / name)
        self._check_overrides()

    def _check_overrides(self) -> None:
        """Detection overrides mean nothing to an Omnipose model (no detection step): a
        ValueError (one line) when only Omnipose models can run, a warning when some can."""
        flags = self.overrides.flags()
        omni = [k for k, m in self._models.items() if getattr(m, "kind", "awf") == "omnipose"]
        if not flags or not omni:
            return
        if len(omni) == len(self._models):
            raise ValueError(f"{flags}: {', '.join(omni)} is an Omnipose checkpoint, which has "
                             "no detection step to set")
        LOGGER.warning("%s: set for the AWF branches only; the Omnipose branch (%s) has no "
                       "detection step", flags, ", ".join(omni))

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

    def params(self, modality: str, model: torch.nn.Module | None = None) -> InferenceParams:
        """The AWF settings of ``modality``'s images: data/routing.yaml's, then those ``model``'s
        checkpoint was tuned with (finetune.py), then the command line's overrides."""
        return self.cfg.inference_params(modality, self.overrides,
                                         getattr(model, "detection", None))

    def segmenter(self, path: Path, modality: str):
        model = self._model(path)
        if getattr(model, "kind", "awf") == "omnipose":
            return OmniposeSegmenter(model, self.device,
                                     self.overrides.omnipose_params(model.diameter),
                                     precision=self.precision)
        params = self.params(modality, model)
        if getattr(model, "finetuned", False) and params.size_rule is not None:
            # weights finetuned on the user's images learnt their scale: no probe of another
            params = replace(params, size_rule=replace(params.size_rule, probe_factor=1.0))
        scale = getattr(model, "input_scale", 1.0)
        if self.overrides.fixed_scale() is None and scale != 1.0:
            # weights trained on resized images (finetune.py): the same resize, no size rule
            params = replace(params, scale=scale, size_rule=None)
        return AWFSegmenter(model, self.device, params, precision=self.precision)

    def route_and_segment(self, raw: np.ndarray, image: np.ndarray) -> Segmentation:
        """Raw image (for the modality) and network image ``(H, W, 3) uint8`` -> the
        :class:`Segmentation` of the branch chosen (the modality's checkpoint, and the Omnipose
        rule), with its modality (the forced one when ``modality`` is set), branch and timings."""
        t0 = time.perf_counter()
        modality = self.modality or classify_modality(raw)
        spent = {"modality": time.perf_counter() - t0}
        path = self.branch_path(modality)
        result = replace(self.segmenter(path, modality).segment(image), modality=modality,
                         branch=path.stem)
        rule = self.cfg.omni_rule
        omni = None if self.ckpt else self.branch_path("omni")
        if omni is not None and rule.enabled and modality in rule.modalities:
            # sized by the AWF's cells (an Omnipose pass at the wrong scale mismeasures them)
            rival = self.segmenter(omni, modality).segment(image, diameter=result.diameter)
            spent = add_timings(spent, rival.timings)
            if rule.prefer_omnipose(result.fg_conf, rival.fg_conf, result.diameter,
                                    rival.diameter):
                result = replace(rival, modality=modality, branch=omni.stem,
                                 timings=result.timings)
        return replace(result, timings=add_timings(spent, result.timings))


def renamed_keys(data: dict, where: str) -> dict:
    """``data`` with the old names of :data:`RENAMED_KEYS` replaced by the new ones (one warning
    each); a mapping that gives both names is a ConfigError."""
    for old, new in RENAMED_KEYS.items():
        if old in data:
            if new in data:
                raise ConfigError(f"{where}: {old} is the old name of {new}: give only {new}")
            LOGGER.warning("%s: the key %s is deprecated, read as %s (rename it)", where, old, new)
            data = {new if k == old else k: v for k, v in data.items()}
    return data


def load_routing(path=None, **changes) -> RoutingConfig:
    """A routing YAML (None = the shipped data/routing.yaml; a missing file is a ConfigError),
    with optional field changes (``load_routing(ckpt_dir="ckpts")``). The old key name
    ``postprocess`` is read as ``detection`` (:data:`RENAMED_KEYS`)."""
    path = DEFAULT_ROUTING if path is None else path
    cfg = from_dict(RoutingConfig, renamed_keys(load_yaml(path), str(path)), str(path))
    return replace(cfg, **changes) if changes else cfg
