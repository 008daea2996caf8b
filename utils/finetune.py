"""Finetune the shipped AWF weights on a handful of a user's labelled images (finetune.py).

The answer to "my images look different": 1 to 10 labelled images of the new kind, a few minutes
on a CPU. Steps, each a function:

1. :func:`utils.user_labels.find_pairs`: images and their labels (challenge or Cellpose layout);
2. :func:`split_pairs`: with MIN_VAL_PAIRS images or more, some are held back to validate on;
3. :func:`prepare_dataset`: the images (channels selected, cells resized into the AWF's working
   range of diameters as the size rule does at prediction) and their labels written as a
   challenge-layout dataset with a dataset YAML, in the run folder;
4. :func:`start_weights`: the shipped branch of the images' modality (or the ``--weights`` given);
5. the training engine (``utils.engine.run_training``, the AWF task, data/hyps/hyp.finetune.yaml),
   for ``minutes`` of training (``--time``: the epochs that fit, measured on the first ones; half
   the minutes when step 7 follows); its last epoch is kept;
6. :func:`score_checkpoint` before and after: the challenge metric on the held-back images
   (else the training images), through predict.py's own pipeline (utils.routing.Router), on the
   original images;
7. with held-back images (and ``refit``), training goes on from step 6's weights on every image,
   held-back ones included, for the rest of the minutes (or, with ``epochs``, as many again):
   step 6 measured the weights, this run adds every label and doubles the steps or more;
8. the weights stripped to ``finetuned.pt`` (fp16 EMA, with the training images' resize factor
   as ``input_scale``: predict.py --ckpt and the Python API resize images by it, as the weights
   learnt them, instead of applying the size rule); ``validated.pt``: step 6's weights;
9. with ``tune``, :func:`tune_detection`: the detection thresholds of finetuned.pt swept on
   every image it trained on when they hold MIN_TRAINED_TUNE_CELLS cells (else, and without a
   refit, those of validated.pt on the held-back images, before step 7), the best pair stored in
   finetuned.pt when the images hold enough cells and it gains enough.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from utils.checkpoint import strip_checkpoint
from utils.config import REPO_ROOT
from utils.inference import median_diameter, resize_label
from utils.io import InputError, select_channels, write_image, write_label
from utils.metrics import match_instances
from utils.modality import classify_modality
from utils.precision import cpu_native_bf16, resolve_precision
from utils.predictor import Predictor
from utils.routing import load_routing
from utils.user_labels import find_pairs, read_pair

LOGGER = logging.getLogger(__name__)

# The hyperparameters of a few-image finetuning (schedule, augmentation).
FINETUNE_HYP = REPO_ROOT / "data" / "hyps" / "hyp.finetune.yaml"
# Batches per epoch (crops of the few images): 8 batches of --batch, so that --time measures a
# whole epoch within seconds and validation (one image or two) runs often.
EPOCH_BATCHES = 8
# From this many labelled images on, VAL_FRACTION of them (at least one) are held back to choose
# the best epoch and to report the F1 after finetuning on images it did not train on.
MIN_VAL_PAIRS = 3
VAL_FRACTION = 0.2
# The engine validates on the held-back images every this many epochs (and after the last): a
# progress figure only, since the run's last.pt is what is scored and kept. Each validation cost
# ~1.2 s plus a ~190 MB best.pt write in ~16 s epochs (fp32, 2-core AVX2 EPYC, one MoNuSeg tile
# held back, 2026-12-07), so every epoch's was a sixth of the first training's time.
VAL_PERIOD = 10
# --minutes when not given: the limit, 15, where training runs in fp32 on a CPU (no
# native bf16: about a third of bf16's epochs in the same time), else 10. Set in
# docs/EXPERIMENTS.md (leave one source out, K = 3): fp32 on a 2-core AVX2 EPYC, 10 -> 15
# minutes, MoNuSeg seed 0 0.708 -> 0.713, seed 1 0.586 -> 0.693, DIC-HeLa seed 0 0.697 -> 0.748,
# seed 1 0.728 -> 0.728 (15-minute means of three seeds: MoNuSeg 0.707, DIC-HeLa 0.733); bf16
# on a 2-core Xeon, 10 minutes, means of three seeds MoNuSeg 0.723, DIC-HeLa 0.766.
MINUTES = 10.0
FP32_CPU_MINUTES = 15.0
# Minutes kept out of the budget for the scoring before and after (a few images each).
SCORING_RESERVE_MIN = 0.5
# Minutes kept out of the refit's budget (the rest of ``minutes``) for writing finetuned.pt.
WRITE_RESERVE_MIN = 0.1
# Detection thresholds tuned for the finetuned weights on the held-back images (utils.tune_nms's
# sweep of validated.pt; one network pass per image): this grid, and the best pair is stored in
# finetuned.pt when the held-back labels hold MIN_TUNE_CELLS cells or more and it beats the
# modality's data/routing.yaml pair by TUNE_MIN_GAIN F1 or more. Set in docs/EXPERIMENTS.md
# (issue #23, leave one source out, K = 3 and 10): the three held-back gains of 0.06-0.19 (two on
# DIC frames of 10 and 18 cells) became +0.015 to +0.031 on the test images; gains under 0.002
# and a tie became -0.013 to +0.019 (noise).
TUNE_CONFS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
TUNE_IOUS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.45)
MIN_TUNE_CELLS = 10
TUNE_MIN_GAIN = 0.01
# The final weights are swept on every image they trained on (instead of validated.pt on the
# held-back images, or nothing without any) when those hold this many cells or more: enough not to
# be learnt by heart. Set in docs/EXPERIMENTS.md on 17 finetunings of the leave-one-source-out
# benchmark: MoNuSeg (398-3786 cells) gained -0.001 to +0.040 on the test tiles (K = 3: 0.688 ->
# 0.710 for the worst of four seeds), DIC-HeLa at K = 10 (93 cells) +0.009; at K = 3 (27 cells,
# training F1 0.82-0.93 against 0.71-0.75 on the test frames) -0.021 to +0.018. Then run: MoNuSeg
# K = 3 seeds 0-3 0.717 / 0.714 / 0.702 / 0.712 (before 0.721 / 0.687 / 0.713 / 0.703).
MIN_TRAINED_TUNE_CELLS = 50
# That sweep's time over one scoring of the same images (predict.py's pass, model loading in;
# before finetuning, and after the first training when a refit follows), kept out of the
# trainings' minutes. Measured on 3 MoNuSeg tiles (fp32, 2-core AVX2 EPYC): 20-22 s against
# 1.0-2.0 s a tile to score (ratios 3.3-7); 4 let a 15-minute run end at 15.0, 8 at 13.7.
TUNE_COST_RATIO = 6.0


@dataclass
class FinetuneOptions:
    """What finetune.py's flags set (see its --help)."""

    images: str
    labels: str | None = None
    weights: str = "auto"
    chan: int | None = None
    chan2: int = 0
    minutes: float = 0.0            # 0: default_minutes (MINUTES, FP32_CPU_MINUTES on a CPU in fp32)
    epochs: int = 0                 # > 0: a fixed number of epochs instead of ``minutes``
    img: int = 256
    batch: int = 8
    workers: int = 1
    device: str = ""
    amp: str = "auto"
    name: str = "exp"
    project: str = "runs/finetune"
    seed: int = 0
    val: list[str] | None = None   # image stems to hold back (None: chosen by split_pairs)
    hold_back: bool = True          # False: every image trains, none held back (no unseen F1)
    refit: bool = True              # with held-back images: go on training on every image
    tune: bool = True               # with held-back images: tune the detection thresholds


@dataclass
class DetectionTuning:
    """The threshold sweep of :func:`tune_detection` on the final weights' images."""

    settings: dict          # {"conf_thres", "iou_thres"} to store, {} = keep data/routing.yaml's
    default_f1: float       # mean F1 with data/routing.yaml's pair
    best_f1: float          # mean F1 with the grid's best pair (chosen on these images)
    best: dict              # the grid's best pair, stored or not
    cells: int              # cells in the swept images' labels
    routing: dict           # data/routing.yaml's pair (the first image's modality)
    trained: bool = False   # swept on images the weights trained on (else held-back ones)


@dataclass
class FinetuneResult:
    """F1 (challenge metric, mean over images) before and after, and where the weights went."""

    before: float
    after: float
    scored_on: list[str]            # image names scored
    held_out: bool                  # True: images not trained on; False: the training images
    weights: Path                   # finetuned.pt
    start: Path                     # the weights finetuning started from
    epochs: int                     # of the training scored (validated.pt)
    minutes: float
    resize: float                   # resize factor of the training images (1 = as given)
    refit: bool = False             # finetuned.pt trained on further on every image (held-back too)
    refit_epochs: int = 0           # the epochs of that further training
    tuning: DetectionTuning | None = None  # the threshold sweep of finetuned.pt


def default_minutes(device, amp: str, native_bf16=cpu_native_bf16) -> float:
    """The budget when --minutes is not given: FP32_CPU_MINUTES when ``--amp amp`` trains in fp32
    on a CPU ``device``, else MINUTES (``native_bf16``: utils.precision's CPU check)."""
    p = resolve_precision(amp, device, native_bf16)
    return FP32_CPU_MINUTES if p.device_type == "cpu" and p.mode == "fp32" else MINUTES


def split_pairs(pairs: list, val: list[str] | None = None, seed: int = 0,
                hold_back: bool = True):
    """``(train, held back)`` pairs. Named stems (``val``) are held back; otherwise, with
    MIN_VAL_PAIRS pairs or more, ``round(VAL_FRACTION * n)`` (at least 1) chosen by ``seed``;
    none when ``hold_back`` is False (naming stems then is an error)."""
    if not hold_back:
        if val:
            raise InputError(", ".join(val), "--val names images to hold back, --no-val holds none")
        return list(pairs), []
    if val:
        held = [p for p in pairs if p[0].stem in set(val)]
        missing = set(val) - {p[0].stem for p in held}
        if missing:
            raise InputError(", ".join(sorted(missing)), "--val names no image of the input")
    elif len(pairs) >= MIN_VAL_PAIRS:
        k = max(1, round(VAL_FRACTION * len(pairs)))
        order = np.random.default_rng(seed).permutation(len(pairs))[:k]
        held = [pairs[i] for i in sorted(order)]
    else:
        held = []
    train = [p for p in pairs if p not in held]
    if not train:
        raise InputError(pairs[0][0].parent, "every image is held back: none left to train on")
    return train, held


def load_pair(image: Path, label: Path, channels: tuple[int, int] | None):
    """Raw image (channels selected when given) and label map of one pair."""
    raw, lab = read_pair(image, label)
    if channels is not None:
        raw = select_channels(raw, *channels, source=image)
    return raw, lab


def resize_factor(labels: list[np.ndarray]) -> float:
    """The size rule's factor (data/routing.yaml ``size_rule``) for the median cell diameter of
    the labels: the training images are resized by it, as prediction resizes such images."""
    diameters = [median_diameter(lab) for lab in labels if lab.max() > 0]
    if not diameters:
        return 1.0
    return load_routing().size_rule.factor(float(np.median(diameters)))


def _resized(raw: np.ndarray, label: np.ndarray, factor: float):
    """A raw image ``(H, W[, C])`` (area when shrunk, bilinear when enlarged) and its label
    (nearest, pixel centres on the image's: utils.inference.resize_label) resized by ``factor``."""
    if factor == 1.0:
        return raw, label
    h, w = label.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    img = cv2.resize(raw, size, interpolation=interp)
    return img.reshape(img.shape[:2] + raw.shape[2:]), resize_label(label, size[1], size[0])


def _write_raw(path: Path, raw: np.ndarray) -> Path:
    """A raw image as a TIFF read back identically by utils.io.read_image (2 channels: ImageJ
    CYX; 1 channel: 2D; 3 or 4: RGB(A))."""
    import tifffile
    from utils.io import atomic_write
    path = path.with_suffix(".tif")
    if raw.ndim == 3 and raw.shape[2] == 2:
        data = np.ascontiguousarray(raw.transpose(2, 0, 1))
        if data.dtype not in (np.uint8, np.uint16, np.float32):
            data = data.astype(np.float32)
        with atomic_write(path) as tmp:
            tifffile.imwrite(str(tmp), data, imagej=True, metadata={"axes": "CYX"})
    else:
        write_image(path, raw[..., 0] if raw.ndim == 3 and raw.shape[2] == 1 else raw)
    return path


def prepare_dataset(train: list, held: list, root: Path, channels, factor: float,
                    epoch_size: int) -> Path:
    """Write ``root/{train,val}/{images,labels}`` and ``root/data.yaml`` (a dataset YAML of
    ``epoch_size`` samples per epoch); returns the YAML's path."""
    for split, pairs in (("train", train), ("val", held)):
        for image, label in pairs:
            raw, lab = _resized(*load_pair(image, label, channels), factor)
            out = _write_raw(root / split / "images" / image.stem, raw)
            write_label(root / split / "labels" / f"{out.stem}_label.tiff", lab)
    cfg = {"path": ".", "train": ["train"], "val": ["val"] if held else [],
           "sources": {"user": {"match": "*"}}, "epoch_size": epoch_size}
    path = root / "data.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_weights(weights: str, raws: list[np.ndarray]) -> Path:
    """``weights`` as given, or for "auto" the shipped branch of the images' majority modality
    (data/routing.yaml; the general model where that branch's file is missing)."""
    if weights != "auto":
        if not Path(weights).is_file():
            raise InputError(weights, "--weights: no such checkpoint")
        return Path(weights)
    cfg = load_routing()
    modalities = [classify_modality(r) for r in raws]
    modality = max(set(modalities), key=modalities.count)
    ckpt_dir = REPO_ROOT / cfg.ckpt_dir
    path = ckpt_dir / cfg.model_dict.get(modality, cfg.model_dict[cfg.general])
    if not path.is_file():
        path = ckpt_dir / cfg.model_dict[cfg.general]
    LOGGER.info("starting from %s (the shipped %s branch)", path, modality)
    return path


def score_checkpoint(ckpt: Path, pairs: list, channels, device, amp: str,
                     **detection) -> list[float]:
    """F1 at IoU 0.5 of each pair's original image, segmented by ``ckpt`` exactly as predict.py
    --ckpt does (utils.predictor.Predictor: channels, per-modality settings, scale);
    ``detection``: ``conf_thres`` / ``iou_thres`` overrides, as predict.py's flags."""
    chan, chan2 = channels if channels is not None else (None, 0)
    predictor = Predictor.from_config(ckpt=str(ckpt), device=device, amp=amp, chan=chan,
                                      chan2=chan2, **detection)
    scores = []
    for image, label in pairs:
        raw, lab = read_pair(image, label)
        scores.append(match_instances(lab, predictor.segment(raw).label, threshold=0.5).f1)
    return scores


def tuning_plan(tune: bool, refit: bool, train_labels: list[np.ndarray],
                held: list) -> tuple[bool, bool]:
    """Which weights :func:`tune_detection` sweeps: ``(finetuned.pt on every image it trained
    on, validated.pt on the held-back pairs)``, at most one True. Without a refit, the held-back
    pairs (never trained on); else the first when the images hold MIN_TRAINED_TUNE_CELLS cells,
    the second (if any is held back) when they do not."""
    if not tune or (held and not refit):
        return False, bool(tune and held)
    labels = train_labels + [read_pair(*p)[1] for p in held]
    trained = count_cells(labels) >= MIN_TRAINED_TUNE_CELLS
    return trained, bool(held) and not trained


def sweep_minutes(scoring_seconds: float, n_images: int) -> float:
    """Minutes that :func:`tune_detection` will take on ``n_images`` images that took
    ``scoring_seconds`` each to score (TUNE_COST_RATIO times as long)."""
    return TUNE_COST_RATIO * scoring_seconds * n_images / 60.0


def count_cells(labels: list[np.ndarray]) -> int:
    """Cells (distinct ids other than 0) in label maps."""
    return sum(len(np.unique(lab[lab > 0])) for lab in labels)


def tune_detection(ckpt: Path, pairs: list, channels, device, amp: str,
                   trained: bool = False) -> DetectionTuning:
    """Sweep TUNE_CONFS x TUNE_IOUS for ``ckpt`` on ``pairs`` (original images, predict.py's
    preparation and the checkpoint's resize) and choose a pair (see TUNE_MIN_GAIN); ``trained``:
    ``ckpt`` trained on them (recorded, and said in the log)."""
    from utils.io import network_input
    from utils.tune_nms import sweep

    chan, chan2 = channels if channels is not None else (None, 0)
    router = Predictor.from_config(ckpt=str(ckpt), device=device, amp=amp, chan=chan,
                                   chan2=chan2).router
    items, settings, cells = [], {}, 0
    for image, label in pairs:
        raw, lab = read_pair(image, label)
        raw, net = network_input(raw, channels, image)
        modality = router.modality or classify_modality(raw)
        settings[modality] = router.params(modality).detection
        items.append((image.name, modality, net, lab))
        cells += count_cells([lab])
    seg = router.segmenter(Path(ckpt), items[0][1])
    frame = sweep(seg, items, TUNE_CONFS, TUNE_IOUS, settings, seg.params.post, seg.params.scale)
    grid = frame[frame["grid"]].groupby(["conf_thres", "iou_thres"])["f1"].mean()
    default = float(frame[frame["configured"]]["f1"].mean())
    conf, iou = grid.idxmax()
    best = {"conf_thres": float(conf), "iou_thres": float(iou)}
    keep = cells >= MIN_TUNE_CELLS and float(grid.max()) >= default + TUNE_MIN_GAIN
    first = settings[items[0][1]]
    routing = {"conf_thres": first.conf_thres, "iou_thres": first.iou_thres}
    LOGGER.info("detection thresholds on %d %s image(s) (%d cells): routing's F1 %.3f, best of "
                "the grid %.3f at %s: %s", len(pairs), "training" if trained else "held-back",
                cells, default, float(grid.max()), best, "stored" if keep else "not stored")
    return DetectionTuning(best if keep else {}, default, float(grid.max()), best, cells, routing,
                           trained)


def _train(opt: FinetuneOptions, data_yaml: Path, start: Path, run_dir: Path, name: str,
           epochs: int, minutes: float) -> Path:
    """One AWF training on a prepared dataset: ``epochs`` > 0 fixed, else ``minutes`` of
    training (the engine's --time). Returns the run's last.pt (the end of the schedule: with one
    held-back image, a best epoch picked on it is noise, and the refit has no image to pick on)."""
    from utils.engine import run_training
    from utils.options import TrainOptions
    from utils.tasks import AWFTask

    topt = TrainOptions(data=str(data_yaml), hyp=str(FINETUNE_HYP), weights=str(start),
                        img=opt.img, batch=opt.batch, epochs=epochs or 1000,
                        time=0.0 if epochs else minutes, workers=opt.workers, device=opt.device,
                        name=name, project=str(run_dir), exist_ok=True, patience=0,
                        cos_lr=True, seed=opt.seed, amp=opt.amp, val_period=VAL_PERIOD,
                        cache_images=True)
    run_training(AWFTask, topt)
    return Path(topt.save_dir) / "weights" / "last.pt"


def epochs_run(last: Path) -> int:
    """The epochs a run made (rows of its results.csv, beside weights/)."""
    return len((last.parent.parent / "results.csv").read_text().splitlines()) - 1


def run_finetune(opt: FinetuneOptions) -> FinetuneResult:
    """The whole finetuning (module docstring); returns the F1 before and after.

    With held-back images and ``opt.refit``, the time is split in two: the first training (on
    the other images, half the minutes) is the one scored on the held-back images; the second
    goes on from its weights, for the rest of the minutes (``opt.epochs``: as many epochs), on
    every image and gives finetuned.pt (with 3 images, half as much data again; measured in
    ckpts/README.md, leave one source out)."""
    from utils.dist import select_device
    from utils.engine import increment_path

    t0 = time.time()
    channels = None if opt.chan is None else (opt.chan, opt.chan2)
    pairs = find_pairs(opt.images, opt.labels)
    train, held = split_pairs(pairs, opt.val, opt.seed, opt.hold_back)
    loaded = [load_pair(i, lab, channels) for i, lab in train]
    factor = resize_factor([lab for _, lab in loaded])
    run_dir = increment_path(Path(opt.project) / opt.name, exist_ok=False)
    epoch_size = EPOCH_BATCHES * opt.batch
    data_yaml = prepare_dataset(train, held, run_dir / "data", channels, factor, epoch_size)
    start = start_weights(opt.weights, [raw for raw, _ in loaded])
    scored = held or train
    refit = bool(held) and opt.refit
    tune_trained, tune_held = tuning_plan(opt.tune, refit, [lab for _, lab in loaded], held)
    device = select_device(opt.device)
    if opt.minutes <= 0 and opt.epochs <= 0:
        opt = replace(opt, minutes=default_minutes(device, opt.amp))
        LOGGER.info("--minutes %g (%s)", opt.minutes, resolve_precision(opt.amp, device).describe())
    t_score = time.time()
    before = score_checkpoint(start, scored, channels, device, opt.amp)
    per_image = (time.time() - t_score) / len(scored)  # seconds: one scoring of one image
    reserve = sweep_minutes(per_image, len(pairs)) if tune_trained else 0.0
    LOGGER.info("%d training image(s), %d held back; cells resized x%.3g; F1 before %.3f",
                len(train), len(held), factor, float(np.mean(before)))
    budget = 0.0 if opt.epochs > 0 else max(opt.minutes - SCORING_RESERVE_MIN - reserve
                                            - (time.time() - t0) / 60.0, 0.5)
    last = _train(opt, data_yaml, start, run_dir, "train", opt.epochs, budget / (2 if refit else 1))
    epochs = epochs_run(last)
    note = _note(opt, start, factor)
    out = strip_checkpoint(last, run_dir / ("validated.pt" if refit else "finetuned.pt"),
                           note=note, input_scale=factor, finetuned=True)
    t_score = time.time()
    after = score_checkpoint(out, scored, channels, device, opt.amp)
    if tune_trained:  # finetuned weights find more cells: their scoring is the better measure
        per_image = max(per_image, (time.time() - t_score) / len(scored))
        reserve = sweep_minutes(per_image, len(pairs))
    tuning = tune_detection(out, held, channels, device, opt.amp) if tune_held else None
    if refit:
        LOGGER.info("F1 after %.3f on the held-back image(s); training goes on on all %d images",
                    float(np.mean(after)), len(pairs))
        all_yaml = prepare_dataset(train + held, [], run_dir / "data_all", channels, factor,
                                   epoch_size)
        rest = 0.0 if opt.epochs > 0 else max(opt.minutes - WRITE_RESERVE_MIN - reserve
                                              - (time.time() - t0) / 60.0, 0.5)
        last = _train(opt, all_yaml, out, run_dir, "train_all", opt.epochs, rest)
        refit_epochs = epochs_run(last)
        note += f"; then {refit_epochs} epochs on all {len(pairs)} images"
        out = strip_checkpoint(last, run_dir / "finetuned.pt", note=note, input_scale=factor,
                               finetuned=True)
    if tune_trained:
        tuning = tune_detection(out, train + held, channels, device, opt.amp, trained=True)
    if tuning and tuning.settings:
        out = strip_checkpoint(last, out, note=note, input_scale=factor, detection=tuning.settings,
                               finetuned=True)
    result = FinetuneResult(float(np.mean(before)), float(np.mean(after)),
                            [p[0].name for p in scored], bool(held), out, start,
                            epochs, (time.time() - t0) / 60.0, factor, refit,
                            refit_epochs if refit else 0, tuning)
    (run_dir / "finetune.yaml").write_text(yaml.safe_dump(
        {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()},
        sort_keys=False))
    return result


def _note(opt: FinetuneOptions, start: Path, factor: float) -> str:
    chans = "" if opt.chan is None else f"; trained with --chan {opt.chan} --chan2 {opt.chan2}"
    return f"finetune.py on {opt.images} from {start.name}; training images resized x{factor:.3g}{chans}"
