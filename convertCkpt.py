"""Convert torchvision's ImageNet ResNet-18 weights into ``resnet18.pt`` for ``--weights``.

    python convertCkpt.py                                   # finds resnet18-*.pth in . or the torch hub cache
    python convertCkpt.py --src resnet18-f37072fd.pth --dst resnet18.pt

The output holds plain tensors and a metadata dict (``{"model": state_dict, "kind": "resnet18",
"meta": {...}}``), so it loads with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

import torch

from models.backbone import ResNet18Backbone, convert_resnet18_state, load_backbone_weights
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint_atomic

LOGGER = logging.getLogger("convertCkpt")

# torchvision's published ImageNet ResNet-18 files (IMAGENET1K_V1, then the older URL's name)
TORCHVISION_NAMES = ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth")


def default_source() -> Path | None:
    """The first torchvision ResNet-18 file found in ``.`` or the torch hub checkpoint folders."""
    folders = [Path("."), Path(torch.hub.get_dir()) / "checkpoints",
               Path.home() / ".cache" / "torch" / "hub" / "checkpoints"]
    for folder in folders:
        for name in TORCHVISION_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def convert(src: Path, dst: Path) -> tuple[list[str], list[str]]:
    """Convert ``src`` into ``dst``; returns the ``(missing, unexpected)`` backbone keys."""
    state = convert_resnet18_state(load_checkpoint(src))
    missing, unexpected = load_backbone_weights(ResNet18Backbone(), state)
    if missing:
        raise ValueError(f"{src}: not a ResNet-18 state dict ({len(missing)} backbone key(s) missing, "
                         f"e.g. {', '.join(missing[:3])}); nothing written")
    state = {k: v for k, v in state.items() if k not in set(unexpected)}
    meta = {"arch": "resnet18", "source": src.name,
            "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest()[:16],
            "tensors": len(state), "missing": missing, "unexpected": unexpected,
            "torch": str(torch.__version__)}
    save_checkpoint_atomic({"model": state, "kind": "resnet18", "meta": meta}, dst)
    return missing, unexpected


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="torchvision ResNet-18 .pth -> resnet18.pt (AWF backbone)")
    ap.add_argument("--src", default=None, help=f"torchvision file (default: {' or '.join(TORCHVISION_NAMES)} "
                                                "in . or ~/.cache/torch/hub/checkpoints)")
    ap.add_argument("--dst", default="resnet18.pt")
    opt = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    src = Path(opt.src) if opt.src else default_source()
    if src is None:
        LOGGER.error("no %s in . or the torch hub cache; pass --src", " / ".join(TORCHVISION_NAMES))
        return 2
    try:
        missing, unexpected = convert(src, Path(opt.dst))
    except (CheckpointError, ValueError) as exc:
        LOGGER.error("%s", exc)
        return 1
    LOGGER.info("%s -> %s: %d missing, %d unexpected key(s) (dropped)%s", src, opt.dst, len(missing),
                len(unexpected), f": {', '.join(unexpected[:5])}" if unexpected else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
