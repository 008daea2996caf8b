"""Command-line pieces shared by the scripts: logging set-up, the training flags, the prediction flags.

The training flags are built from :class:`utils.options.TrainOptions`; the training engine is
imported only when a training script runs (:func:`train_cli`), so predict.py and evaluate.py
never load the training stack.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from utils.config import REPO_ROOT
from utils.options import TrainOptions
from utils.precision import MODES
from utils.routing import DEFAULT_ROUTING, Overrides, Router, load_routing


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; under torchrun only rank 0 logs at INFO level."""
    rank = int(os.environ.get("RANK", 0))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def training_parser(description: str, **defaults) -> argparse.ArgumentParser:
    """One flag per :class:`TrainOptions` field (its metadata: help, extra names, settings),
    with the script's ``defaults`` by field name (``data=``, ``hyp=``, ``epochs=``...) in place of
    the schema's; an option without a default is a required flag."""
    flags = [f for f in fields(TrainOptions) if "help" in f.metadata]
    unknown = sorted(set(defaults) - {f.name for f in flags})
    if unknown:
        raise TypeError(f"training_parser: no training flag {unknown}")
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in flags:
        default = defaults.get(f.name, f.default)
        settings = {"default": default} if default is not MISSING else {"required": True}
        if isinstance(default, bool):
            settings["action"] = "store_true"
        elif "const" not in f.metadata["argparse"]:
            settings["type"] = type(default) if default is not MISSING else str
        p.add_argument("--" + f.name.replace("_", "-"), *f.metadata["aliases"],
                       help=f.metadata["help"], **settings, **f.metadata["argparse"])
    return p


def latest_last_pt(project: str = "runs/train") -> str:
    """The most recently written runs/train/*/weights/last.pt (for a bare ``--resume``)."""
    found = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--resume: no {project}/*/weights/last.pt to resume from")
    return str(found[-1])


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Flags parsed by :func:`training_parser` -> TrainOptions (every flag is an option; a bare
    --resume picks the latest last.pt)."""
    values = vars(args)
    if values["resume"] == "auto":
        values = {**values, "resume": latest_last_pt(values["project"])}
    return TrainOptions(**values)


def add_prediction_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of predict.py and evaluate.py: checkpoint/routing, detection overrides, device."""
    p.add_argument("--ckpt", default=None, help="one checkpoint for every image (skips routing)")
    p.add_argument("--routing", default=str(DEFAULT_ROUTING),
                   help="branch routing YAML (model_dict, per-modality settings, Omnipose rule)")
    p.add_argument("--device", default="", help="cuda device, e.g. 0, or cpu")
    p.add_argument("--conf-thres", type=float, default=None,
                   help="override the per-modality value (AWF branches; refused for an Omnipose "
                        "--ckpt: it has no detection step)")
    p.add_argument("--iou-thres", type=float, default=None,
                   help="override the per-modality NMS IoU (AWF branches)")
    p.add_argument("--max-det", type=int, default=None,
                   help="override the per-modality cap (AWF branches)")
    p.add_argument("--scale", type=scale_arg, default=None,
                   help="a fixed resize factor before the network (default: the image's own "
                        "scale, then the size rule of the routing YAML: utils/sizing.py)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--amp", default="auto", choices=MODES,
                   help="precision (utils.precision): auto = fp16 on CUDA, bf16 + channels_last on a "
                        "CPU with native bf16, else fp32")
    return p


def scale_arg(text: str) -> float:
    """--scale: a positive number (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def router_from_args(args, device):
    """The Router the prediction flags describe (checkpoints resolve against the repo root).

    Raises FileNotFoundError (one line) when no checkpoint can run, ValueError for a flag the
    checkpoint cannot honour."""
    cfg = load_routing(args.routing)
    overrides = Overrides(args.conf_thres, args.iou_thres, args.max_det, args.tta, args.scale)
    router = Router(cfg, device, overrides, ckpt=args.ckpt, amp=args.amp, base_dir=REPO_ROOT)
    router.check_checkpoints()
    return router


def train_cli(task_cls, description: str, argv=None, **defaults) -> None:
    """The whole of a training script: parse the flags (``defaults`` as for
    :func:`training_parser`), set up logging, train ``task_cls`` on the engine."""
    from utils.engine import TrainingDiverged, run_training  # the training stack, only here
    from utils.errors import exit_on_error
    args = training_parser(description, **defaults).parse_args(argv)
    setup_logging()
    best = exit_on_error(lambda: run_training(task_cls, options_from_args(args)),
                         failures=(TrainingDiverged,))
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {best}")
