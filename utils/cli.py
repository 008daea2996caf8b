"""Command-line pieces shared by the scripts: logging and set-up check, the help format, the
training flags, the prediction flags.

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
from utils.errors import USER_ERROR_STATUS
from utils.modality import MODALITIES
from utils.options import TrainOptions
from utils.precision import AMP_HELP, MODES
from utils.predictor import prediction_defaults
from utils.routing import DEFAULT_ROUTING, load_routing
from utils.setup_check import SetupError, check_torch_install, package_version
from utils.sizing import DIAMETER_TARGET

LOGGER = logging.getLogger(__name__)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log to stderr; under torchrun only rank 0 logs at INFO level; ``quiet``: warnings only."""
    rank = int(os.environ.get("RANK", 0))
    level = logging.DEBUG if verbose else (
        logging.INFO if rank == 0 and not quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def setup(quiet: bool = False) -> None:
    """The start of every command: logging (:func:`setup_logging`), then the set-up check
    (utils.setup_check: torch and torchvision must match), which ends the process with one line
    and exit status 2 when they do not."""
    setup_logging(quiet=quiet)
    try:
        check_torch_install()
    except SetupError as exc:
        LOGGER.error("%s", exc)
        raise SystemExit(USER_ERROR_STATUS) from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with "(default: X)" only where X means something: not on required flags,
    switches (a ``store_false`` switch's True read as "on by default"), flags whose default is
    None or "" (their help says what happens without them), or help that states its default."""

    def _get_help_string(self, action):
        default = action.default
        if (action.required or action.nargs == 0 or default is None or default is False
                or default == "" or "(default:" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--version`` and ``-q/--quiet`` (predict.py, evaluate.py)."""
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                   help="print the version of allcell-segmenter and exit")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="warnings and errors only: no progress bar, no information lines")
    return p


def training_parser(description: str, **defaults) -> argparse.ArgumentParser:
    """One flag per :class:`TrainOptions` field (its metadata: help, extra names, settings),
    with the script's ``defaults`` by field name (``data=``, ``hyp=``, ``epochs=``...) in place of
    the schema's; an option without a default is a required flag."""
    flags = [f for f in fields(TrainOptions) if "help" in f.metadata]
    unknown = sorted(set(defaults) - {f.name for f in flags})
    if unknown:
        raise TypeError(f"training_parser: no training flag {unknown}")
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
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


def _per_modality(setting: str) -> str:
    """"bf 0.25, fl 0.3, gs 0.3": the shipped routing YAML's ``setting`` per modality."""
    try:
        cfg = load_routing()
        return ", ".join(f"{m} {getattr(cfg.inference_params(m).detection, setting):g}"
                         for m in MODALITIES)
    except (OSError, ValueError):  # a broken routing YAML is reported when the run loads it
        return "see the file"


def add_prediction_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of predict.py and evaluate.py: checkpoint/routing, detection overrides, size,
    modality, channels, device, precision. Each is a keyword of
    :meth:`utils.predictor.Predictor.from_config` with its default (:func:`prediction_kwargs`)."""
    defaults = prediction_defaults()
    routing = os.path.relpath(DEFAULT_ROUTING, REPO_ROOT)
    p.add_argument("--ckpt", help="one checkpoint for every image (default: routing per "
                                  "modality over ckpts/, see --routing)")
    p.add_argument("--routing",
                   help=f"branch routing YAML: model_dict, per-modality settings, Omnipose rule "
                        f"(default: {routing})")
    p.add_argument("--device", help="CUDA device, e.g. 0, or cpu (default: auto: the first CUDA "
                                    "GPU, else the CPU)")
    p.add_argument("--conf-thres", type=float,
                   help=f"detection confidence threshold for every image (default: a "
                        f"finetune.py checkpoint's own, else per modality from --routing; "
                        f"{routing}: {_per_modality('conf_thres')}). AWF "
                        "branches; refused for an Omnipose --ckpt: it has no detection step")
    p.add_argument("--iou-thres", type=float,
                   help=f"NMS IoU threshold for every image (default: a finetune.py checkpoint's"
                        f" own, else per modality from --routing; {routing}: "
                        f"{_per_modality('iou_thres')}). AWF branches")
    p.add_argument("--max-det", type=int,
                   help=f"most detections kept per image (default: per modality from --routing; "
                        f"{routing}: {_per_modality('max_det')}). AWF branches")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=scale_arg,
                      help="a fixed resize factor before the network (default: the image's own "
                           "scale, then the size rule of the routing YAML: utils/sizing.py)")
    size.add_argument("--diameter", type=diameter_arg, metavar="PIXELS",
                      help="the cells' typical diameter in the image (Cellpose's --diameter): the "
                           f"image is resized once by {DIAMETER_TARGET:g} / PIXELS "
                           "(utils.sizing.DIAMETER_TARGET; an Omnipose trained at one diameter: "
                           "that diameter / PIXELS); 0 = automatic, as --scale's default")
    p.add_argument("--modality", choices=MODALITIES,
                   help="branch and detection settings of this modality for every image (bf: "
                        "brightfield, fl: fluorescence, gs: grayscale) instead of the classifier's;"
                        " the CSV's modality column then shows the forced value")
    p.add_argument("--chan", type=int, choices=range(5), metavar="N",
                   help="Cellpose's channel to segment: 1 red, 2 green, 3 blue, 4 the fourth, "
                        "0 grey (the mean of all) (default: every channel as stored)")
    p.add_argument("--chan2", type=int, choices=range(5), metavar="N",
                   help="with --chan, Cellpose's optional nuclear channel (1-4; 0 = none); an "
                        "image without a channel asked for fails alone")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--amp", choices=MODES, help=AMP_HELP)
    missing = set(defaults) - {a.dest for a in p._actions}
    if missing:
        raise TypeError(f"Predictor.from_config setting(s) without a flag: {sorted(missing)}")
    p.set_defaults(**defaults)  # the one home of the defaults: from_config's signature
    return p


def prediction_kwargs(args: argparse.Namespace) -> dict:
    """The prediction flags parsed by :func:`add_prediction_args` -> the keyword arguments of
    :meth:`utils.predictor.Predictor.from_config` (same names)."""
    return {name: getattr(args, name) for name in prediction_defaults()}


def scale_arg(text: str) -> float:
    """--scale: a positive number (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def diameter_arg(text: str) -> float:
    """--diameter: a number >= 0 (0 = automatic; argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0 (0 = automatic)")
    return value


def train_cli(task_cls, description: str, argv=None, **defaults) -> None:
    """The whole of a training script: parse the flags (``defaults`` as for
    :func:`training_parser`), set up logging, train ``task_cls`` on the engine."""
    args = training_parser(description, **defaults).parse_args(argv)
    setup()
    from utils.engine import TrainingDiverged, run_training  # the training stack, only here
    from utils.errors import exit_on_error
    best = exit_on_error(lambda: run_training(task_cls, options_from_args(args)),
                         failures=(TrainingDiverged,))
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {best}")
