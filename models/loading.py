"""Building models from checkpoints and ``--weights`` files (one place for every script)."""
from __future__ import annotations

import logging

import torch.nn as nn

from utils.checkpoint import CheckpointError, load_checkpoint, model_state, tuned_detection
from utils.io import one_line

LOGGER = logging.getLogger(__name__)


def checkpoint_kind(ckpt: dict) -> str:
    """``'awf'``, ``'omnipose'`` or ``'resnet18'`` (a converted or raw torchvision ResNet-18)."""
    kind = ckpt.get("kind")
    if kind:
        return str(kind)
    if "conv1.weight" in ckpt or "fc.weight" in ckpt:
        return "resnet18"
    raise CheckpointError("unknown checkpoint: no 'kind' and not a ResNet-18 state dict")


def build_model(kind: str, config: dict | None = None) -> nn.Module:
    """A fresh model of ``kind`` from its config dict (None = defaults)."""
    if kind == "awf":
        from models.awf import AWF
        return AWF.from_config(config or {})
    if kind == "omnipose":
        from models.omnipose import Omnipose
        return Omnipose.from_config(config or {})
    raise CheckpointError(f"cannot build a model of kind {kind!r}")


def load_model(path, kind: str | None = None) -> nn.Module:
    """A ready-to-run model (EMA weights when present) from a checkpoint of this project."""
    ckpt = load_checkpoint(path)
    found = "?"
    try:
        found = checkpoint_kind(ckpt)
        if kind is not None and found != kind:
            raise CheckpointError(f"a {found} checkpoint where a {kind} one is expected")
        model = build_model(found, ckpt.get("model_config"))
        model.load_state_dict(model_state(ckpt))
        # the resize factor its training images had (finetune.py; 1 = native scale)
        model.input_scale = float(ckpt.get("input_scale", 1.0))
        # detection settings tuned for these weights (finetune.py; {} = data/routing.yaml's)
        model.detection = tuned_detection(ckpt.get("detection") or {})
        # trained on a user's images by finetune.py (no size probe at prediction)
        model.finetuned = bool(ckpt.get("finetuned", False))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # weights of another model
        raise CheckpointError(f"{path}: weights do not fit a {found} model "
                              f"({type(exc).__name__}: {one_line(exc, 200)})") from None
    return model.eval()


def model_from_weights(kind: str, weights: str = "", config: dict | None = None,
                       keep_config: bool = False) -> tuple[nn.Module, str]:
    """``(model, source)``: a model of ``kind`` for training, initialised from ``--weights``;
    ``source`` is the kind of the weights file ('' for random init, 'resnet18', 'awf', ...).

    ``weights`` may be empty (random init), a ResNet-18 (``resnet18.pt`` or torchvision's file:
    backbone only), or a checkpoint of this project: of the same kind, the model is rebuilt with
    the checkpoint's config (its anchors) and loaded whole, unless ``keep_config`` (``--cfg``: a
    new architecture, e.g. more detection levels, started from the checkpoint's tensors); of
    another kind (an AWF checkpoint starting an Omnipose model), or with ``keep_config``, every
    tensor whose name and shape match is loaded.
    Missing and unexpected keys are logged.
    """
    if not weights:
        return build_model(kind, config), ""
    ckpt = load_checkpoint(weights)
    found = checkpoint_kind(ckpt)
    if found == "resnet18":
        from models.backbone import load_backbone_weights
        model = build_model(kind, config)
        missing, unexpected = load_backbone_weights(model.backbone, ckpt.get("model", ckpt))
        LOGGER.info("%s: ResNet-18 backbone loaded (%d missing, %d unexpected keys)", weights,
                    len(missing), len(unexpected))
        return model, found
    model = build_model(kind, ckpt.get("model_config") if found == kind and not keep_config else config)
    state, own = model_state(ckpt), model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = sorted(set(own) - set(usable))
    unexpected = sorted(set(state) - set(usable))
    model.load_state_dict(usable, strict=False)
    LOGGER.info("%s: %d/%d tensors loaded from a %s checkpoint", weights, len(usable), len(own), found)
    if missing:
        LOGGER.warning("%s: %d missing keys, e.g. %s", weights, len(missing), ", ".join(missing[:5]))
    if unexpected:
        LOGGER.warning("%s: %d unexpected or mismatched keys, e.g. %s", weights, len(unexpected),
                       ", ".join(unexpected[:5]))
    return model, found
