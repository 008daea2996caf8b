"""Command-line pieces shared by the scripts: logging set-up and the training flags."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from utils.engine import TrainOptions
from utils.precision import MODES


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; under torchrun only rank 0 logs at INFO level."""
    rank = int(os.environ.get("RANK", 0))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def training_parser(description: str, data: str, hyp: str, weights: str = "", epochs: int = 100,
                    name: str = "exp") -> argparse.ArgumentParser:
    """YOLOv5's training flags (the original framework's commands run as written)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=data, help="dataset YAML")
    p.add_argument("--hyp", default=hyp, help="hyperparameter YAML")
    p.add_argument("--weights", default=weights,
                   help="initial weights: resnet18.pt (backbone) or a checkpoint of this project")
    p.add_argument("--cfg", default="",
                   help="model YAML, e.g. models/awf_p345.yaml (detection levels, anchors); empty = "
                        "the --weights checkpoint's architecture, else the defaults")
    p.add_argument("--img", "--img-size", type=int, default=640, help="training crop size (pixels)")
    p.add_argument("--batch", "--batch-size", type=int, default=16, help="total batch over all ranks")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs (the cosine/linear "
                   "learning-rate schedule spans them)")
    p.add_argument("--workers", type=int, default=8, help="dataloader workers per rank")
    p.add_argument("--device", default="", help="cuda device(s), e.g. 0 or 0,1, or cpu")
    p.add_argument("--project", default="runs/train", help="folder of the runs: PROJECT/NAME/")
    p.add_argument("--name", default=name,
                   help="run folder under --project (NAME2, NAME3, ... when taken)")
    p.add_argument("--exist-ok", action="store_true", help="reuse runs/train/NAME instead of NAME2")
    p.add_argument("--noautoanchor", action="store_true", help="keep the anchors of the model config")
    p.add_argument("--save-period", type=int, default=-1, help="also save epochN.pt every N epochs")
    p.add_argument("--patience", type=int, default=100, help="epochs without improvement; 0 = never stop")
    p.add_argument("--cos-lr", action="store_true", help="cosine learning-rate decay (else linear)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--resume", nargs="?", const="auto", default="",
                   help="resume from a last.pt (no value: the latest run's last.pt)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of initialisation, sampling and augmentation")
    p.add_argument("--amp", default="auto", choices=list(MODES) + ["off"],
                   help="precision (utils.precision): auto = fp16 on CUDA, bf16 + channels_last on a "
                        "CPU with native bf16, else fp32; off = fp32")
    p.add_argument("--val-period", type=int, default=1, help="validate every N epochs")
    p.add_argument("--cache-images", action="store_true", help="keep decoded images in RAM")
    p.add_argument("--local-rank", "--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def latest_last_pt(project: str = "runs/train") -> str:
    """The most recently written runs/train/*/weights/last.pt (for a bare ``--resume``)."""
    from pathlib import Path
    found = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--resume: no {project}/*/weights/last.pt to resume from")
    return str(found[-1])


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Parsed flags -> TrainOptions (a bare --resume picks the latest last.pt)."""
    values = {k: v for k, v in vars(args).items() if k in TrainOptions.__dataclass_fields__}
    if values.get("resume") == "auto":
        values["resume"] = latest_last_pt(values.get("project", "runs/train"))
    return TrainOptions(**values)


# The repository root: default routing YAML and ckpts/ resolve against it, whatever the cwd.
REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def add_prediction_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of predict.py and evaluate.py: checkpoint/routing, detection overrides, device."""
    p.add_argument("--ckpt", default=None, help="one checkpoint for every image (skips routing)")
    p.add_argument("--routing", default=str(REPO_ROOT / "data" / "routing.yaml"),
                   help="branch routing YAML (model_dict, per-modality settings, Omnipose rule)")
    p.add_argument("--device", default="", help="cuda device, e.g. 0, or cpu")
    p.add_argument("--conf-thres", type=float, default=None, help="override the per-modality value")
    p.add_argument("--iou-thres", type=float, default=None, help="override the per-modality NMS IoU")
    p.add_argument("--max-det", type=int, default=None, help="override the per-modality cap")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor before the network")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--amp", default="auto", choices=MODES,
                   help="precision (utils.precision): auto = fp16 on CUDA, bf16 + channels_last on a "
                        "CPU with native bf16, else fp32")
    return p


def router_from_args(args, device):
    """The Router the prediction flags describe (checkpoints resolve against the repo root).

    Raises FileNotFoundError (one line) when no checkpoint can run."""
    from utils.routing import Overrides, Router, load_routing
    cfg = load_routing(args.routing)
    overrides = Overrides(args.conf_thres, args.iou_thres, args.max_det, args.tta, args.scale)
    router = Router(cfg, device, overrides, ckpt=args.ckpt, amp=args.amp, base_dir=REPO_ROOT)
    router.check_checkpoints()
    return router


def train_cli(task_cls, description: str, argv=None, **defaults) -> None:
    """The whole of a training script: parse the YOLOv5-style flags (``defaults`` as for
    :func:`training_parser`), set up logging, train ``task_cls`` on the engine."""
    from utils.engine import TrainingDiverged, run_training
    from utils.errors import exit_on_error
    args = training_parser(description, **defaults).parse_args(argv)
    setup_logging()
    best = exit_on_error(lambda: run_training(task_cls, options_from_args(args)),
                         failures=(TrainingDiverged,))
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {best}")
