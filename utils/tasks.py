"""Training tasks: what train_main.py / train_weakly.py / train_omnipose.py hand to the engine.

A task says which model, loss and data a run uses and how it is validated; everything else
(loop, DDP, EMA, AMP, checkpoints) is the engine's.
"""
from __future__ import annotations

import logging
import time
from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.awf import AWF
from models.omnipose import Omnipose
from models.loading import model_from_weights
from utils.autoanchor import check_anchors
from utils.config import from_dict, load_data_config, load_yaml
from utils.dataset import CellDataset, collate_fn
from utils.datasplits import resolve_split
from utils.engine import Task
from utils.flows import TARGET_CHANNELS, label_to_tensor
from utils.inference import AWFSegmenter, OmniposeSegmenter
from utils.io import InputError
from utils.label_cache import DatasetCache, dataset_boxes
from utils.loss import AWFLoss, AWFLossGains, OmniposeLoss, OmniposeLossGains
from utils.metrics import match_instances
from utils.options import TrainOptions
from utils.precision import resolve_precision
from utils.routing import load_routing

LOGGER = logging.getLogger(__name__)

# Label/box caches of training runs (the dataset folders may be read-only).
CACHE_DIR = Path("runs/cache")


def summarize_validation(rows: list[dict]) -> dict:
    """Per-image rows (f1, precision, recall, modality[, source]) -> mean metrics overall, per
    modality (``f1_bf``...) and per named source (``f1_src_NAME``, data YAMLs with ``sources``).

    The challenge ranks by the mean F1 over images; ``fitness`` is that mean.
    """
    if not rows:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "fitness": 0.0}
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("precision", "recall", "f1")}
    for key, prefix in (("modality", "f1_"), ("source", "f1_src_")):
        for group in sorted({r.get(key) or "" for r in rows} - {""}):
            out[prefix + group] = float(np.mean([r["f1"] for r in rows if r.get(key) == group]))
    out["fitness"] = out["f1"]
    return out


class SegmentationTask(Task):
    """Shared data handling of the AWF and Omnipose tasks (labelled NeurIPS-layout data)."""

    def __init__(self, opt: TrainOptions, hyp):
        super().__init__(opt, hyp)
        self.data = load_data_config(opt.data)
        self.train_samples = self.training_samples()
        self.val_samples = resolve_split(self.data, "val") if self.data.val else []
        self.cache = DatasetCache(self.train_samples + self.val_samples, CACHE_DIR,
                                  cache_images=opt.cache_images)
        self.routing = load_routing()  # validation scores with predict.py's settings

    def training_samples(self):
        return resolve_split(self.data, "train")

    def model_cfg(self) -> dict:
        """``model_from_weights`` arguments of ``--cfg`` (a model YAML overriding the weights')."""
        if not self.opt.cfg:
            return {}
        return {"config": load_yaml(self.opt.cfg), "keep_config": True}

    def target_fn(self):
        """Dense targets of a label map (None = the dataset's default: fg + height)."""
        return None

    def target_diameter(self) -> float:
        """The cell diameter (px) training images are resized to (0 = their own scale)."""
        return 0.0

    def train_dataset(self):
        kwargs = {"target_fn": self.target_fn()} if self.target_fn() is not None else {}
        shares = {k: v.share for k, v in self.data.sources.items()}
        ds = CellDataset(self.train_samples, self.opt.img, self.hyp, augment=True, cache=self.cache,
                         shares=shares, epoch_size=self.data.epoch_size,
                         target_diameter=self.target_diameter(), **kwargs)
        return ds, collate_fn

    @abstractmethod
    def segmenter(self, model: nn.Module, device: torch.device, modality: str):
        """The prediction pipeline of this task's model for images of ``modality`` (bf / fl /
        gs), with predict.py's settings: ``.segment(image) -> Segmentation``."""

    def validate(self, model: nn.Module, device: torch.device) -> dict:
        """Segment every validation image whole (the prediction pipeline, with the per-modality
        settings of data/routing.yaml as predict.py) and score it with the challenge metric;
        returns mean precision/recall/F1 overall and F1 per modality."""
        if not self.val_samples:
            return {}
        segmenters, rows, t0 = {}, [], time.time()
        for s in self.val_samples:
            try:
                image, gt = self.cache.image(s), self.cache.label(s)
            except InputError as exc:
                LOGGER.warning("validation skips %s", exc)
                continue
            modality = self.cache.modality(s)
            if modality not in segmenters:
                segmenters[modality] = self.segmenter(model, device, modality)
            r = match_instances(gt, segmenters[modality].segment(image).label, threshold=0.5)
            rows.append({"f1": r.f1, "precision": r.precision, "recall": r.recall,
                         "modality": modality, "source": s.source})
        out = summarize_validation(rows)
        out["seconds"] = time.time() - t0
        return out


class AWFTask(SegmentationTask):
    """Anchor-based Watershed Framework: detection + watershed branch."""

    kind = "awf"

    def build_model(self, ckpt: dict | None) -> nn.Module:
        if ckpt is not None:  # resume: the run's own model and anchors
            model = AWF.from_config(ckpt["model_config"])
            model.load_state_dict(ckpt["model"])
            return model
        model, source = model_from_weights("awf", self.opt.weights, **self.model_cfg())
        # a trained head keeps its anchors; a new architecture (--cfg) gets autoanchor's
        self.pretrained_head = source == "awf" and not self.opt.cfg
        return model

    def build_loss(self, model: nn.Module):
        gains = from_dict(AWFLossGains, self.hyp.loss, f"{self.opt.hyp}: loss")
        return AWFLoss(model, gains)

    def before_training(self, model: nn.Module, dataset) -> None:
        if self.opt.resume or getattr(self, "pretrained_head", False):
            return  # the anchors belong to the checkpoint's trained detection head
        thr = from_dict(AWFLossGains, self.hyp.loss, "loss").anchor_t
        check_anchors(model, dataset_boxes(self.train_samples, self.cache), thr=thr,
                      noautoanchor=self.opt.noautoanchor)

    def bilinear_map_keys(self) -> tuple[str, ...]:
        return ("height",)

    def segmenter(self, model: nn.Module, device: torch.device, modality: str):
        return AWFSegmenter(model, device, self.routing.inference_params(modality),
                            precision=resolve_precision(self.opt.amp, device))


class WeaklyTask(AWFTask):
    """The weakly-supervised stage: finetune one AWF branch (``DataConfig.modality``) on the
    labelled ``train`` images plus the pseudo-labelled ``pseudo`` images of that modality.

    A pseudo-labelled sample keeps its confidence (predict.py --pseudo's mean foreground
    probability, 0..1) as its weight in the pixel losses; samples under ``hyp.pseudo_conf`` are
    dropped, and NAME_ignore.png masks leave uncertain pixels out of the loss (utils.label_cache).
    An image both labelled and pseudo-labelled keeps its true label. Validation is the ``val``
    split filtered to the modality, so best.pt is chosen for this branch.
    """

    def training_samples(self):
        if self.data.modality is None:
            LOGGER.warning("%s: no modality set: finetuning on every modality", self.opt.data)
        labelled = resolve_split(self.data, "train", CACHE_DIR) if self.data.train else []
        if not self.data.pseudo:
            raise InputError(self.opt.data, "the weakly stage needs a pseudo entry "
                                            "(predict.py --pseudo output)")
        pseudo = resolve_split(self.data, "pseudo", CACHE_DIR)
        known = {str(s.image.resolve()) for s in labelled}
        kept = [s for s in pseudo if s.confidence >= self.hyp.pseudo_conf
                and str(s.image.resolve()) not in known]
        LOGGER.info("weakly stage (%s): %d labelled + %d of %d pseudo-labelled images "
                    "(confidence >= %.2f, mean weight %.3f)", self.data.modality or "all",
                    len(labelled), len(kept), len(pseudo), self.hyp.pseudo_conf,
                    float(np.mean([s.confidence for s in kept])) if kept else 0.0)
        if not labelled and not kept:
            raise InputError(self.opt.data, f"no training images left: every pseudo label is "
                                            f"under pseudo_conf {self.hyp.pseudo_conf}")
        return labelled + kept


DIST_CHANNEL = TARGET_CHANNELS.index("dist")


def omnipose_targets(label: np.ndarray) -> dict:
    """Dataset target_fn of the Omnipose task: {'omni': (4, S, S) float32} (utils.flows)."""
    return {"omni": label_to_tensor(label).numpy()}


class OmniposeTask(SegmentationTask):
    """Omnipose: flows, distance and boundary on the same labelled data as the AWF."""

    kind = "omnipose"

    def build_model(self, ckpt: dict | None) -> nn.Module:
        if ckpt is not None:
            model = Omnipose.from_config(ckpt["model_config"])
            model.load_state_dict(ckpt["model"])
        else:
            model = model_from_weights("omnipose", self.opt.weights, **self.model_cfg())[0]
        self._diameter = model.diameter
        if model.diameter:
            LOGGER.info("training images resized so that their cells measure %.0f px",
                        model.diameter)
        return model

    def target_diameter(self) -> float:
        """The model config's ``diameter`` (models/omnipose_sized.yaml: 30 px)."""
        return self._diameter

    def build_loss(self, model: nn.Module):
        return OmniposeLoss(from_dict(OmniposeLossGains, self.hyp.loss, f"{self.opt.hyp}: loss"))

    def target_fn(self):
        return omnipose_targets

    def bilinear_map_keys(self) -> tuple[str, ...]:
        return ("omni",)

    def rescale_targets(self, batch: dict, s: float) -> dict:
        """The distance channel is in pixels: its cell values scale by ``s`` (background stays)."""
        omni = batch["omni"].clone()
        dist = omni[:, DIST_CHANNEL]
        omni[:, DIST_CHANNEL] = torch.where(dist > 0, dist * s, dist)
        return {**batch, "omni": omni}

    def segmenter(self, model: nn.Module, device: torch.device, modality: str):
        return OmniposeSegmenter(model, device, precision=resolve_precision(self.opt.amp, device))
