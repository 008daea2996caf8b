"""One Python call that segments an image exactly as predict.py does.

    from utils.predictor import Predictor
    predictor = Predictor.from_config()                  # predict.py's defaults
    result = predictor.segment("cell_00001.png")         # a path, or an array (H, W[, C])
    result.label, result.n_cells, result.modality        # a utils.inference.Segmentation

:meth:`Predictor.from_config` takes predict.py's prediction flags as keyword arguments of the
same names (``--conf-thres`` is ``conf_thres=``) and the same defaults (this signature is their
one home: utils.cli builds the flags' defaults from it), and builds the same
:class:`utils.routing.Router`: per-image modality routing over ckpts/, the per-modality detection
settings of data/routing.yaml, the Omnipose rule, whole-image or chunked inference, the same
precision. Relative ``ckpt`` / ``routing`` paths resolve against the current folder, as on
predict.py's command line; the default routing YAML and ckpts/ against the repository.
"""
from __future__ import annotations

import inspect
import logging
import os

import torch

from utils.config import REPO_ROOT
from utils.dist import select_device
from utils.inference import Segmentation
from utils.io import MAX_CHANNELS, as_image, network_input, read_image
from utils.routing import Overrides, Router, load_routing

LOGGER = logging.getLogger(__name__)
__all__ = ["Predictor", "REPO_ROOT", "prediction_defaults"]


def channel_choice(chan: int | None, chan2: int = 0) -> tuple[int, int] | None:
    """``--chan`` / ``--chan2`` -> the ``(chan, chan2)`` of :func:`utils.io.select_channels`, or
    None (``chan`` None: every channel as stored). ValueError (one line) for a channel outside
    0..MAX_CHANNELS, or ``chan2`` without ``chan``."""
    for name, value in (("chan", chan), ("chan2", chan2)):
        if value is not None and not 0 <= value <= MAX_CHANNELS:
            raise ValueError(f"--{name} {value}: channels are 0 (grey) or 1..{MAX_CHANNELS}")
    if chan is None:
        if chan2:
            raise ValueError(f"--chan2 {chan2} needs --chan (0 = grey, 1..{MAX_CHANNELS})")
        return None
    return chan, chan2


class Predictor:
    """Segments images one call at a time with a Router (checkpoints loaded once, on first use).

    ``channels``: ``(chan, chan2)`` picked from each raw image before normalisation
    (:func:`utils.io.select_channels`), None = the image's channels as stored."""

    def __init__(self, router: Router, channels: tuple[int, int] | None = None):
        self.router = router
        self.channels = channels

    @classmethod
    def from_config(cls, *, ckpt: str | None = None, routing: str | None = None,
                    device: str | torch.device = "", conf_thres: float | None = None,
                    iou_thres: float | None = None, max_det: int | None = None, tta: bool = False,
                    scale: float | None = None, diameter: float = 0.0,
                    modality: str | None = None, chan: int | None = None, chan2: int = 0,
                    amp: str = "auto") -> "Predictor":
        """A Predictor with predict.py's settings, e.g. ``Predictor.from_config(ckpt="best.pt",
        device="cpu", tta=True)``:

        - ``ckpt``: one checkpoint for every image (None = routing over ckpts/);
          ``routing``: the routing YAML (None = data/routing.yaml).
        - ``device``: "cpu", "0", a torch.device, or "" = the first CUDA GPU, else the CPU.
        - ``conf_thres`` / ``iou_thres`` / ``max_det``: the AWF detection settings (None = the
          routing YAML's per-modality values); ``tta``: flip test-time augmentation.
        - ``scale``: a fixed resize factor; ``diameter``: the cells' typical diameter in pixels
          (the image is resized by utils.sizing.DIAMETER_TARGET / diameter, or for an Omnipose
          trained at one diameter by that diameter / ``diameter``); at most one of the
          two; None / 0 = automatic (the image's own scale, then the size rule).
        - ``modality``: "bf", "fl" or "gs" for every image (None = the classifier's).
        - ``chan`` / ``chan2``: Cellpose's channels (1-based; chan 0 = grey, chan2 0 = none;
          None = every channel as stored), see :func:`utils.io.select_channels`.
        - ``amp``: precision, one of utils.precision.MODES.

        An unknown name is a TypeError; no weights a FileNotFoundError, a refused setting a
        ValueError (one line each)."""
        channels = channel_choice(chan, chan2)
        if not isinstance(device, torch.device):
            device = select_device(device)
        overrides = Overrides(conf_thres, iou_thres, max_det, tta, scale, diameter)
        router = Router(load_routing(routing), device, overrides, ckpt=ckpt, amp=amp,
                        base_dir=REPO_ROOT, modality=modality)
        router.check_checkpoints()
        return cls(router, channels)

    def segment(self, image) -> Segmentation:
        """A path (any format predict.py reads) or a raw array ``(H, W)``, ``(H, W, C)`` or
        ``(C, H, W)``, C <= 4, any dtype -> its :class:`utils.inference.Segmentation`: ``label``
        ``(H, W)`` (0 = background), ``modality`` (bf / fl / gs), ``branch`` (the checkpoint's
        name), ``n_cells``, ``fg_conf``, ``diameter`` (pixels), ``scale``, ``timings``...
        An image without the channel asked for is an :class:`utils.io.InputError`."""
        if isinstance(image, (str, os.PathLike)):
            source, raw = image, read_image(image)
        else:
            source, raw = "array", as_image(image)
        return self.router.route_and_segment(*network_input(raw, self.channels, source))


def prediction_defaults() -> dict:
    """The settings of :meth:`Predictor.from_config` and their defaults, by name (``conf_thres``
    ...): the defaults of predict.py's and evaluate.py's prediction flags."""
    params = inspect.signature(Predictor.from_config).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
