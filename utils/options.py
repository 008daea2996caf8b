"""The options of a training run: the one schema of the training scripts' flags, opt.yaml and the
``opt`` saved in every checkpoint (``--resume`` rebuilds them from there).

Each field is one flag, ``--name-with-dashes`` (YOLOv5's names), whose help, extra names and
argparse settings are the field's metadata; ``utils.cli.training_parser`` builds the parser
from them, so a flag cannot exist without its option, nor an option without its flag
(``save_dir`` alone is the engine's).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field

from utils.precision import AMP_HELP, MODES


def option(default, help_text: str, *aliases: str, **argparse_settings):
    """A TrainOptions field: ``default`` (MISSING = required), its flag's help, extra flag names
    and other ``argparse.add_argument`` settings (a bool is a switch)."""
    return field(default=default, metadata={"help": help_text, "aliases": aliases,
                                            "argparse": argparse_settings})


@dataclass
class TrainOptions:
    """Options of a training run (see the module docstring)."""

    data: str = option(MISSING, "dataset YAML")
    hyp: str = option(MISSING, "hyperparameter YAML")
    weights: str = option("", "initial weights: resnet18.pt (backbone) or a checkpoint of this "
                              "project")
    cfg: str = option("", "model YAML, e.g. models/awf_p345.yaml (detection levels, anchors); "
                          "empty = the --weights checkpoint's architecture, else the defaults")
    img: int = option(640, "training crop size (pixels)", "--img-size")
    batch: int = option(16, "total batch over all ranks", "--batch-size")
    epochs: int = option(100, "training epochs (the cosine/linear learning-rate schedule spans "
                              "them)")
    workers: int = option(8, "dataloader workers per rank")
    device: str = option("", "cuda device(s), e.g. 0 or 0,1, or cpu (default: auto: CUDA if "
                             "available, else the CPU)")
    name: str = option("exp", "run folder under --project (NAME2, NAME3, ... when taken)")
    project: str = option("runs/train", "folder of the runs: PROJECT/NAME/")
    exist_ok: bool = option(False, "reuse runs/train/NAME instead of NAME2")
    noautoanchor: bool = option(False, "keep the anchors of the model config")
    save_period: int = option(-1, "also save epochN.pt every N epochs")
    patience: int = option(100, "epochs without improvement; 0 = never stop")
    cos_lr: bool = option(False, "cosine learning-rate decay (else linear)")
    sync_bn: bool = option(False, "SyncBatchNorm under DDP")
    resume: str = option("", "resume from a last.pt (no value: the latest run's last.pt)",
                         nargs="?", const="auto")
    seed: int = option(0, "random seed of initialisation, sampling and augmentation")
    amp: str = option("auto", AMP_HELP, choices=MODES)
    time: float = option(0.0, "training time budget in minutes: after the first epochs (and "
                              "every 5 until half-way), --epochs becomes what fits in it "
                              "(YOLOv8's --time); 0 = --epochs as given")
    val_period: int = option(1, "validate every N epochs")
    cache_images: bool = option(False, "keep decoded images in RAM")
    save_dir: str = ""  # the run's folder, set by the engine (not a flag)
