"""Checkpoints: tensors and plain metadata only, written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict such as::

    {"model": state_dict, "ema": state_dict | None, "optimizer": ..., "scheduler": ...,
     "epoch": int, "best_fitness": float, "model_config": dict, "hyp": dict, "opt": dict,
     "rng": {...}, "kind": "awf" | "omnipose" | "resnet18"}

Nothing in it needs pickle to run code, so ``torch.load(path, weights_only=True)`` loads it.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from utils.io import atomic_write, one_line

LOGGER = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded (one-line message naming the file)."""


def save_checkpoint_atomic(ckpt: dict, path) -> Path:
    """Write ``ckpt`` to ``path`` via a temporary file and a rename (a crash never leaves half a file)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def _load_failure(exc: Exception) -> str:
    """One line for a failed torch.load: a refused pickle says which object it holds."""
    text = str(exc)
    if "Weights only load failed" in text:
        found = re.search(r"(unsupported GLOBAL [^ ]+|Unsupported global: [^ ]+)", text)
        return ("refused: it holds Python objects that weights_only=True loading does not run"
                + (f" ({found.group(1)})" if found else ""))
    return f"cannot load checkpoint ({type(exc).__name__}: {one_line(exc)})"


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; errors are one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, pickled objects refused by weights_only, ...
        raise CheckpointError(f"{path}: {_load_failure(exc)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def model_state(ckpt: dict) -> dict:
    """The weights to run: the EMA when present (what YOLOv5 evaluates), else the raw model."""
    state = ckpt.get("ema") or ckpt.get("model")
    if state is None:
        # a bare state dict (e.g. torchvision's resnet18-*.pth)
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
        raise CheckpointError("checkpoint holds neither 'model' nor 'ema' weights")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# The detection settings a checkpoint may carry (utils.branch_settings.BranchSettings names).
TUNABLE_DETECTION = ("conf_thres", "iou_thres")


def tuned_detection(detection: dict) -> dict:
    """``detection`` as a checkpoint stores it: TUNABLE_DETECTION keys only (a ValueError names
    another), floats in [0, 1]."""
    extra = sorted(set(detection) - set(TUNABLE_DETECTION))
    if extra:
        raise ValueError(f"detection: {', '.join(extra)} cannot be tuned per checkpoint "
                         f"(only {', '.join(TUNABLE_DETECTION)})")
    out = {k: float(v) for k, v in detection.items()}
    bad = [k for k, v in out.items() if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"detection: {bad[0]} {out[bad[0]]} is outside 0..1")
    return out


def strip_checkpoint(src, dst, note: str = "", input_scale: float = 1.0,
                     detection: dict | None = None, finetuned: bool = False) -> Path:
    """Shippable weights from a training checkpoint: the EMA weights in fp16, the model config and
    plain metadata (epoch, best fitness, hyps, the training options), no optimizer state.
    ``input_scale``: the resize factor the training images had (finetune.py resizes cells into
    the working range): prediction with these weights resizes images by it (utils.routing).
    ``detection``: detection settings tuned for these weights (``{"conf_thres": 0.4}``,
    finetune.py), used by prediction instead of data/routing.yaml's (flags still win).
    ``finetuned``: weights trained on a user's images (finetune.py): they learnt those images'
    scale, so prediction does not probe other scales (utils.sizing.SizeRule.wants_probe).

    A ResNet-18 AWF becomes ~23 MB. :func:`model_state` casts back to float32 on loading.
    """
    ckpt = load_checkpoint(src)
    weights = model_state(ckpt)
    slim = {"kind": ckpt.get("kind", "awf"), "model_config": ckpt.get("model_config", {}),
            "model": {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()},
            "epoch": ckpt.get("epoch", -1), "best_fitness": ckpt.get("best_fitness", -1.0),
            "hyp": ckpt.get("hyp", {}), "opt": ckpt.get("opt", {}), "note": note,
            "input_scale": float(input_scale),
            "detection": tuned_detection(detection or {}), "finetuned": bool(finetuned)}
    return save_checkpoint_atomic(slim, dst)


def main(argv=None) -> None:
    """``python -m utils.checkpoint SRC DST [--note TEXT]``: strip a training checkpoint."""
    import argparse
    p = argparse.ArgumentParser(description=strip_checkpoint.__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    out = strip_checkpoint(args.src, args.dst, args.note)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
