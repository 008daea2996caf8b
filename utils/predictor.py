"""One Python call that segments an image exactly as predict.py does.

    from utils.predictor import Predictor
    predictor = Predictor.from_config()                  # predict.py's defaults
    result = predictor.segment("cell_00001.png")         # a path, or an array (H, W[, C])
    result.label, result.n_cells, result.modality        # a utils.inference.Segmentation

:meth:`Predictor.from_config` takes predict.py's prediction flags by name (``ckpt``,
``routing``, ``device``, ``conf_thres``, ``iou_thres``, ``max_det``, ``scale``, ``tta``,
``amp``) with predict.py's defaults, and builds the same :class:`utils.routing.Router`
(``utils.cli.router_from_args``): per-image modality routing over ckpts/, the per-modality
detection settings of data/routing.yaml, the Omnipose rule, whole-image or chunked inference,
the same precision. Relative ``ckpt`` / ``routing`` paths resolve against the current folder,
as on predict.py's command line; the default routing YAML and ckpts/ against the repository.
"""
from __future__ import annotations

import argparse
import logging
import os

from utils.cli import add_prediction_args, router_from_args
from utils.config import REPO_ROOT
from utils.dist import select_device
from utils.inference import Segmentation
from utils.io import as_image, normalize_image, read_image

LOGGER = logging.getLogger(__name__)
__all__ = ["Predictor", "REPO_ROOT"]


def prediction_defaults() -> dict:
    """predict.py's prediction flags and their defaults, by argparse name (``conf_thres``...)."""
    return vars(add_prediction_args(argparse.ArgumentParser(add_help=False)).parse_args([]))


class Predictor:
    """Segments images one call at a time with a Router (checkpoints loaded once, on first use)."""

    def __init__(self, router):
        self.router = router

    @classmethod
    def from_config(cls, **flags) -> "Predictor":
        """A Predictor with predict.py's flags (``Predictor.from_config(ckpt="best.pt",
        device="cpu", tta=True)``); an unknown name is a TypeError, no weights a
        FileNotFoundError (one line)."""
        values = prediction_defaults()
        unknown = sorted(set(flags) - set(values))
        if unknown:
            raise TypeError(f"Predictor.from_config: unknown setting(s) {unknown}; "
                            f"known: {sorted(values)}")
        values.update(flags)
        args = argparse.Namespace(**values)
        return cls(router_from_args(args, select_device(args.device)))

    def segment(self, image) -> Segmentation:
        """A path (any format predict.py reads) or a raw array ``(H, W)``, ``(H, W, C)`` or
        ``(C, H, W)``, C <= 4, any dtype -> its :class:`utils.inference.Segmentation`: ``label``
        ``(H, W)`` (0 = background), ``modality`` (bf / fl / gs), ``branch`` (the checkpoint's
        name), ``n_cells``, ``fg_conf``, ``diameter``, ``timings``..."""
        if isinstance(image, (str, os.PathLike)):
            raw = read_image(image)
        else:
            raw = as_image(image)
        return self.router.route_and_segment(raw, normalize_image(raw))
