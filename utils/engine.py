"""The one training engine shared by train_main.py, train_weakly.py and train_omnipose.py.

What differs between the scripts is a :class:`Task` (model, loss, data, validation); the loop,
DDP, EMA, AMP, warm-up and schedules, checkpoints, resume, early stopping and logging live here.
Only rank 0 writes files and logs.

Resume is exact: every epoch's randomness (sampling order, augmentation) is derived from
``(seed, epoch, rank)`` alone, so a run resumed from ``last.pt`` of epoch k repeats exactly what
the uninterrupted run would have done from epoch k + 1 on.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import random
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from models.awf import MAX_STRIDE  # multi-scale sizes are multiples of it
from utils import dist as du
from utils.checkpoint import load_checkpoint, save_checkpoint_atomic
from utils.config import ConfigError, Hyp, from_dict, load_hyp, to_dict
from utils.dataset import build_dataloader
from utils.io import atomic_write, remove_stale_temporaries
from utils.options import TrainOptions
from utils.plots import plot_results
from utils.precision import log_precision, resolve_precision

LOGGER = logging.getLogger(__name__)

# Warm-up lasts at least the hyp's warmup_min_iters optimizer steps (YOLOv5: 100), whatever
# warmup_epochs gives, but never more than this fraction of all steps. YOLOv5 has no cap: with
# 300 epochs it never matters, but a weakly-stage run of 6 epochs x 4 batches stayed in warm-up (lr ~1e-5) throughout.
WARMUP_MAX_FRACTION = 0.3
# Seconds between progress-bar lines when stderr is a file, not a terminal (keeps nohup logs readable).
LOG_BAR_INTERVAL = 60.0
# results.png is redrawn at most this often (seconds) and once at the end: a redraw takes 1-2 s on
# 2 cores (matplotlib), a tenth of an epoch of finetune.py, which made it after every epoch.
PLOT_INTERVAL = 60.0
# --time fits the number of epochs to the budget after each of this many first epochs (the first
# alone ran 4x slower than the next ones in a 2-core CPU finetuning: label cache, bf16 kernels).
TIME_FIT_EPOCHS = 2
# ... and again every TIME_REFIT_PERIOD epochs while under half the planned epochs are done, at
# the median training time of the last TIME_REFIT_PERIOD epochs: a 2-core fp32 finetuning (AVX2
# EPYC, 2026-12-07) trained its first 5 epochs in 13-16 s and the rest in 11-12 s, so the plan
# made after epoch 2 (59 epochs) ended 2.5 of its 14.4 minutes early.
TIME_REFIT_PERIOD = 5


def warmup_iters(warmup_epochs: float, nb: int, epochs: int, min_iters: int) -> int:
    """Warm-up length in optimizer steps (-1: none): ``warmup_epochs`` epochs of ``nb`` batches,
    at least ``min_iters`` (the hyp's warmup_min_iters), and at most WARMUP_MAX_FRACTION of the
    whole run, so that a short finetuning on a small set (e.g. 6 epochs of 4 batches) still
    reaches its learning rate."""
    if warmup_epochs <= 0:
        return -1
    return min(max(round(warmup_epochs * nb), min_iters), int(WARMUP_MAX_FRACTION * epochs * nb))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


class Task(ABC):
    """What a training script supplies to the engine."""

    kind = "task"

    def __init__(self, opt: TrainOptions, hyp: Hyp):
        self.opt, self.hyp = opt, hyp

    @abstractmethod
    def build_model(self, ckpt: dict | None) -> nn.Module:
        """The model, initialised from ``ckpt`` (resume) or from ``opt.weights``."""

    @abstractmethod
    def build_loss(self, model: nn.Module):
        """Callable ``(outputs, batch) -> (loss tensor, dict of floats)``."""

    @abstractmethod
    def train_dataset(self):
        """``(dataset, collate_fn)`` of the training split."""

    @abstractmethod
    def validate(self, model: nn.Module, device: torch.device) -> dict:
        """Metrics dict with at least ``fitness`` (higher is better), computed on rank 0."""

    def before_training(self, model: nn.Module, dataset) -> None:  # noqa: B027 (optional hook)
        """Hook (e.g. autoanchor) run on every rank before DDP wraps the model."""

    def model_config(self, model: nn.Module) -> dict:
        return getattr(model, "config_dict", lambda: {})()

    def bilinear_map_keys(self) -> tuple[str, ...]:
        """The batch's continuous maps, resized bilinearly with the images by multi-scale
        training (every other same-size map, e.g. a label map or mask, by nearest neighbour)."""
        return ()

    def rescale_targets(self, batch: dict, s: float) -> dict:
        """Hook after a multi-scale resize by ``s``: map values in pixels scale with the image
        (boxes are scaled by :func:`resize_batch`; the AWF's height map is scale-free)."""
        return batch


class ModelEMA:
    """Exponential moving average of the weights (YOLOv5's ramped decay)."""

    def __init__(self, model: nn.Module, decay: float, tau: float, updates: int = 0):
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.decay, self.tau, self.updates = decay, tau, updates
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = unwrap(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def increment_path(path: Path, exist_ok: bool) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... when taken (unless exist_ok)."""
    if exist_ok or not path.exists():
        return path
    n = 2
    while Path(f"{path}{n}").exists():
        n += 1
    return Path(f"{path}{n}")


def epochs_in_budget(budget_s: float, elapsed_s: float, train_s: float, val_s: float,
                     val_period: int, save_s: float, epoch: int) -> int:
    """``--time``: the epochs a run will have, counted when epoch ``epoch`` (0-based) is trained
    but not yet validated or saved: the epochs done plus those that fit the rest of the budget.

    All in seconds: ``elapsed_s`` since the start; ``train_s`` this epoch's training;
    ``val_s`` the last validation (0: none yet), run every ``val_period`` epochs; ``save_s``
    the last epoch's results row, plot and checkpoint writes (0: none yet). An epoch costs
    ``train_s + val_s / val_period + save_s``; left uncounted, the writes cut a 10-minute
    finetuning from a planned 57-74 epochs to 46-55, so that its cosine never ended."""
    val_period = max(val_period, 1)
    pending = (val_s if (epoch + 1) % val_period == 0 else 0.0) + save_s  # this epoch's
    per_epoch = train_s + val_s / val_period + save_s
    rest = int(max(budget_s - elapsed_s - pending, 0.0) / max(per_epoch, 1e-6))
    return epoch + 1 + rest


def fits_time_after(epoch: int, start_epoch: int, epochs: int) -> bool:
    """``--time``: whether the number of epochs is fitted to the budget after ``epoch`` (0-based)
    of a run that started at ``start_epoch`` and plans ``epochs``: after each of the first
    TIME_FIT_EPOCHS, then every TIME_REFIT_PERIOD while no more than half are done."""
    done = epoch - start_epoch + 1
    return done <= TIME_FIT_EPOCHS or (done % TIME_REFIT_PERIOD == 0 and 2 * done <= epochs)


def lr_lambda(hyp: Hyp, epochs: int, cos: bool):
    """Multiplier of lr0 at an epoch: cosine or linear from 1 to hyp.lrf."""
    if cos:
        return lambda e: ((1 - math.cos(e * math.pi / epochs)) / 2) * (hyp.lrf - 1) + 1
    return lambda e: (1 - e / epochs) * (1.0 - hyp.lrf) + hyp.lrf


def freeze_modules(model: nn.Module, names: list[str]) -> int:
    """Stop the parameters of the named submodules (``hyp.freeze``, e.g. ``backbone.layer1``)
    from training; returns how many parameter tensors were frozen. A name that is not a
    submodule of ``model`` raises :class:`ConfigError` naming it.

    Frozen layers still run in training mode (batch-norm statistics as the rest); when they sit
    at the input, backward stops above them, which is where the time is saved."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        raise ConfigError(f"hyp freeze: no module named {', '.join(map(repr, unknown))} in "
                         f"{type(model).__name__}")
    count = 0
    for name in names:
        for p in modules[name].parameters():
            count += int(p.requires_grad)
            p.requires_grad_(False)
    return count


def build_optimizer(model: nn.Module, hyp: Hyp) -> torch.optim.Optimizer:
    """Three groups as YOLOv5: decayed weights, undecayed norm weights, undecayed biases."""
    decay, no_decay, biases = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                biases.append(p)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)):
                no_decay.append(p)
            else:
                decay.append(p)
    if hyp.optimizer == "SGD":
        opt = torch.optim.SGD(biases, lr=hyp.lr0, momentum=hyp.momentum, nesterov=True)
    else:
        cls = torch.optim.AdamW if hyp.optimizer == "AdamW" else torch.optim.Adam
        opt = cls(biases, lr=hyp.lr0, betas=(hyp.momentum, 0.999))
    opt.add_param_group({"params": decay, "weight_decay": hyp.weight_decay})
    opt.add_param_group({"params": no_decay, "weight_decay": 0.0})
    return opt


def resume_options(opt: TrainOptions, ckpt: dict) -> TrainOptions:
    """The options of the interrupted run, with this invocation's resume path, device and workers."""
    saved = dict(ckpt.get("opt") or {})
    if not saved:
        raise ValueError(f"{opt.resume}: not a training checkpoint (no saved options); use --weights")
    if int(ckpt["epoch"]) + 1 >= int(saved["epochs"]):
        raise ValueError(f"{opt.resume}: training already finished ({saved['epochs']} epochs)")
    saved.update(resume=opt.resume, device=opt.device, workers=opt.workers)
    return TrainOptions(**saved)


def run_training(task_cls: type[Task], opt: TrainOptions) -> Path:
    """Resolve ``--resume`` (the interrupted run's options and hyps), build the task, train."""
    ckpt = None
    if opt.resume:
        ckpt = load_checkpoint(opt.resume)
        opt = resume_options(opt, ckpt)
        hyp = from_dict(Hyp, ckpt["hyp"], f"{opt.resume}: hyp")
    else:
        hyp = load_hyp(opt.hyp)
    du.start(opt.device)  # before the task: rank 0 builds its label cache while the others wait
    return Trainer(task_cls(opt, hyp), opt, ckpt).train()


def rng_state() -> dict:
    """RNG states as tensors/plain values (weights_only-loadable)."""
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def resize_batch(batch: dict, size: int, bilinear_keys: tuple[str, ...]) -> dict:
    """Multi-scale training: resize a square batch to ``size`` pixels.

    Images and the task's continuous maps (``bilinear_keys``) are resized bilinearly, label maps
    and masks with nearest neighbour, and target boxes are scaled.
    """
    old = batch["img"].shape[-1]
    if size == old:
        return batch
    s = size / old
    out = dict(batch)
    out["img"] = F.interpolate(batch["img"], size=(size, size), mode="bilinear", align_corners=False)
    for key, value in batch.items():
        if key == "img" or not torch.is_tensor(value) or value.dim() not in (3, 4) or value.shape[-1] != old:
            continue
        mode = "bilinear" if key in bilinear_keys else "nearest"
        x = value[:, None] if value.dim() == 3 else value  # (B, H, W) maps and (B, C, H, W) stacks
        resized = F.interpolate(x.float(), size=(size, size), mode=mode,
                                **({"align_corners": False} if mode == "bilinear" else {}))
        out[key] = (resized[:, 0] if value.dim() == 3 else resized).to(value.dtype)
    if "targets" in batch and len(batch["targets"]):
        t = batch["targets"].clone()
        t[:, 1:5] *= s
        out["targets"] = t
    return out


class Trainer:
    """Runs a :class:`Task`: ``Trainer(task, opt).train()`` returns the path of best.pt."""

    def __init__(self, task: Task, opt: TrainOptions, ckpt: dict | None = None):
        self.task, self.opt, self.hyp, self.ckpt = task, opt, task.hyp, ckpt
        self.info, self.device = du.start(opt.device)
        if opt.batch % self.info.world_size:
            raise ValueError(f"--batch {opt.batch} is not divisible by the {self.info.world_size} ranks")
        self.batch_per_rank = opt.batch // self.info.world_size
        self.precision = resolve_precision(opt.amp, self.device)
        self.dtype = self.precision.dtype
        if not opt.resume and self.info.is_main:
            opt.save_dir = str(increment_path(Path(opt.project) / opt.name, opt.exist_ok))
        opt.save_dir = du.broadcast_object(opt.save_dir, self.info)
        self.save_dir = Path(opt.save_dir)
        self.wdir = self.save_dir / "weights"
        self._plotted = time.time()  # the first results.png after PLOT_INTERVAL

    # ---------------------------------------------------------------- set-up
    def _setup(self, ckpt: dict | None):
        opt, hyp, info = self.opt, self.hyp, self.info
        seed_everything(opt.seed + max(info.rank, 0))
        model = self.precision.model(self.task.build_model(ckpt).to(self.device))
        log_precision(self.precision, "training")
        self.dataset, collate = self.task.train_dataset()
        self.task.before_training(model, self.dataset)
        if opt.sync_bn and info.distributed:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:  # torch's SyncBatchNorm runs on CUDA only
                LOGGER.warning("--sync-bn ignored on CPU: SyncBatchNorm needs CUDA")
        if hyp.freeze:
            n = freeze_modules(model, hyp.freeze)
            LOGGER.info("frozen: %s (%d parameter tensors)", ", ".join(hyp.freeze), n)
        self.optimizer = build_optimizer(model, hyp)
        self.lf = lr_lambda(hyp, opt.epochs, opt.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = ModelEMA(model, hyp.ema_decay, hyp.ema_tau) if info.is_main else None
        self.start_epoch, self.best_fitness, self.best_epoch = 0, -1.0, 0
        if ckpt is not None and opt.resume:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.ema is not None and ckpt.get("ema") is not None:
                self.ema.ema.load_state_dict(ckpt["ema"])
                self.ema.updates = int(ckpt.get("ema_updates", 0))
            self.start_epoch = int(ckpt["epoch"]) + 1
            self.best_fitness = float(ckpt.get("best_fitness", -1.0))
            self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.model = model
        self.loss_fn = self.task.build_loss(model)
        if info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(model, device_ids=ids, output_device=ids[0] if ids else None)
        self.loader, self.sampler = build_dataloader(
            self.dataset, self.batch_per_rank, opt.workers, shuffle=True, rank=info.rank,
            world_size=info.world_size, seed=opt.seed, collate_fn=collate)
        self.generator = self.loader.sampler.generator  # shuffle order + augmentation seeds
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16
                                           and self.device.type == "cuda")

    def _write_run_files(self):
        self.wdir.mkdir(parents=True, exist_ok=True)
        for folder in (self.save_dir, self.wdir):  # half-written files of a killed run
            remove_stale_temporaries(folder, time.time())
        (self.save_dir / "opt.yaml").write_text(yaml.safe_dump(asdict(self.opt), sort_keys=False))
        (self.save_dir / "hyp.yaml").write_text(yaml.safe_dump(to_dict(self.hyp), sort_keys=False))

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint(self, epoch: int) -> dict:
        model = unwrap(self.model)
        ema = self.ema.ema if self.ema is not None else model
        return {"kind": self.task.kind, "epoch": epoch, "best_fitness": self.best_fitness,
                "best_epoch": self.best_epoch,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
                "ema_updates": self.ema.updates if self.ema is not None else 0,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "model_config": self.task.model_config(model), "hyp": to_dict(self.hyp),
                "opt": asdict(self.opt), "rng": rng_state()}

    def _save(self, epoch: int, improved: bool) -> None:
        ckpt = self._checkpoint(epoch)
        for name in ("model", "ema"):
            if not all(torch.isfinite(v).all() for v in ckpt[name].values() if v.is_floating_point()):
                raise TrainingDiverged(f"epoch {epoch}: non-finite weights; {self.wdir} left untouched")
        save_checkpoint_atomic(ckpt, self.wdir / "last.pt")
        if improved:
            save_checkpoint_atomic(ckpt, self.wdir / "best.pt")
        if self.opt.save_period > 0 and (epoch + 1) % self.opt.save_period == 0:
            save_checkpoint_atomic(ckpt, self.wdir / f"epoch{epoch}.pt")

    # ---------------------------------------------------------------- loop
    def _seed_epoch(self, epoch: int) -> None:
        """All randomness of an epoch depends on (seed, epoch, rank) only: the key to exact resume."""
        seed_everything(self.opt.seed + 1000 * epoch + max(self.info.rank, 0))
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(self.opt.seed + 1000 * epoch + max(self.info.rank, 0))

    def _warmup(self, ni: int, nw: int, epoch: int) -> None:
        hyp = self.hyp
        for j, group in enumerate(self.optimizer.param_groups):
            start = hyp.warmup_bias_lr if j == 0 else 0.0
            group["lr"] = np.interp(ni, [0, nw], [start, group["initial_lr"] * self.lf(epoch)])
            if "momentum" in group:
                group["momentum"] = np.interp(ni, [0, nw], [hyp.warmup_momentum, hyp.momentum])

    def _multiscale(self, batch: dict) -> dict:
        if self.hyp.multiscale <= 0:
            return batch
        m = self.hyp.multiscale
        lo, hi = self.opt.img * (1 - m), self.opt.img * (1 + m)
        size = max(MAX_STRIDE, int(random.uniform(lo, hi) // MAX_STRIDE * MAX_STRIDE))
        old = batch["img"].shape[-1]
        if size == old:
            return batch
        return self.task.rescale_targets(resize_batch(batch, size, self.task.bilinear_map_keys()), size / old)

    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        out = {k: (v.to(self.device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out["img"] = out["img"].float() / 255.0
        return out

    def _check_finite(self, loss: torch.Tensor, epoch: int, i: int) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss).all() else 1.0, device=self.device)
        if self.info.distributed:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item() > 0:
            raise TrainingDiverged(
                f"loss is NaN/inf at epoch {epoch}, batch {i}; stopping. The last good checkpoint in "
                f"{self.wdir} is untouched: lower lr0 in the hyp file or check the data, then --resume.")

    def _train_epoch(self, epoch: int, nw: int) -> dict:
        self.model.train()
        self._seed_epoch(epoch)
        nb = len(self.loader)
        sums: dict[str, float] = {}
        # Redirected to a log file (nohup), the bar updates once a minute rather than every batch.
        bar = tqdm(self.loader, total=nb, desc=f"epoch {epoch + 1}/{self.opt.epochs}",
                   disable=not self.info.is_main, dynamic_ncols=True, leave=False,
                   mininterval=0.1 if sys.stderr.isatty() else LOG_BAR_INTERVAL)
        for i, batch in enumerate(bar):
            ni = i + nb * epoch
            if ni <= nw:
                self._warmup(ni, nw, epoch)
            batch = self._multiscale(self._to_device(batch))
            with self.precision.autocast():
                outputs = self.model(self.precision.input(batch["img"]))
            loss, items = self.loss_fn(outputs, batch)
            self._check_finite(loss, epoch, i)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=self.hyp.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
            for k, v in items.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix({k: f"{v / (i + 1):.4f}" for k, v in sums.items()}, refresh=False)
        return {f"train/{k}": v / max(nb, 1) for k, v in sums.items()}

    def train(self) -> Path:
        opt, info = self.opt, self.info
        ckpt = self.ckpt
        self._setup(ckpt)
        if info.is_main:
            self._write_run_files()
        nb = len(self.loader)
        nw = warmup_iters(self.hyp.warmup_epochs, nb, opt.epochs, self.hyp.warmup_min_iters)
        stopper = EarlyStopping(opt.patience)
        LOGGER.info("training %s for %d epochs from epoch %d on %s, %d rank(s), batch %d per rank, "
                    "results in %s", self.task.kind, opt.epochs, self.start_epoch + 1, self.device,
                    info.world_size, self.batch_per_rank, self.save_dir)
        t_start, epoch, val_s, save_s = time.time(), self.start_epoch, 0.0, 0.0
        train_times = []  # seconds of each epoch's training (--time's pace)
        while epoch < opt.epochs:
            t0 = time.time()
            row = {"epoch": epoch, **self._train_epoch(epoch, nw)}
            row["lr"] = self.optimizer.param_groups[1]["lr"]
            self.scheduler.step()
            train_times.append(time.time() - t0)
            validates = (epoch + 1) % max(opt.val_period, 1) == 0
            if (opt.time > 0 and not opt.resume
                    and fits_time_after(epoch, self.start_epoch, opt.epochs)):
                # before the checkpoint, which must carry the epochs the run will have (resume)
                pace = (train_times[-1] if len(train_times) <= TIME_FIT_EPOCHS
                        else float(np.median(train_times[-TIME_REFIT_PERIOD:])))
                epochs = epochs_in_budget(opt.time * 60.0, time.time() - t_start, pace, val_s,
                                          opt.val_period, save_s, epoch)
                nw = self._fit_epochs_to_time(epochs, epoch, nb, pace)
            stop = False
            if info.is_main:
                out_of_time = self._out_of_time(t_start, time.time() - t0, epoch)
                last = epoch + 1 == opt.epochs or out_of_time
                metrics = {}
                if validates or last:
                    metrics = self.task.validate(self.ema.ema, self.device)
                    val_s = metrics.get("seconds", val_s)
                fitness = metrics.get("fitness", -1.0)
                improved = bool(metrics) and fitness > self.best_fitness
                if improved:
                    self.best_fitness, self.best_epoch = fitness, epoch
                row.update({f"val/{k}": v for k, v in metrics.items()})
                row["seconds"] = round(time.time() - t0, 2)
                t_save = time.time()
                self._log_row(row)  # before the checkpoint: a kill in between re-runs this epoch
                self._save(epoch, improved)
                save_s = time.time() - t_save  # the results plot and ~190 MB of checkpoints
                stop = stopper(epoch, self.best_epoch) or out_of_time
            stop = du.broadcast_object(stop, info)
            if stop:
                break
            epoch += 1
        if info.is_main:
            self._plot()
        du.barrier(info)
        du.cleanup(info)
        best = self.wdir / "best.pt"
        return best if best.exists() else self.wdir / "last.pt"

    def _out_of_time(self, t_start: float, epoch_s: float, epoch: int) -> bool:
        """``--time``: True when another epoch as long as this one would end past the budget
        (the pace can change: another job on the machine); never on the first TIME_FIT_EPOCHS
        epochs, which set the number of epochs."""
        if self.opt.time <= 0 or epoch - self.start_epoch < TIME_FIT_EPOCHS:
            return False
        if time.time() - t_start + epoch_s <= self.opt.time * 60.0:
            return False
        LOGGER.info("--time %.1f min: budget reached after epoch %d of %d", self.opt.time,
                    epoch + 1, self.opt.epochs)
        return True

    def _fit_epochs_to_time(self, epochs: int, epoch: int, nb: int, train_s: float) -> int:
        """``--time``: set ``opt.epochs`` to ``epochs`` (rank 0's :func:`epochs_in_budget`,
        shared), rebuild the learning-rate schedule over them (the scheduler keeps its step count)
        and return the warm-up length in iterations. Called where :func:`fits_time_after` says:
        the first epoch also pays one-time costs (caches, workers, kernels), and the pace of the
        first few can differ from the rest's. ``train_s``: the pace, seconds of training an epoch."""
        opt = self.opt
        opt.epochs = int(du.broadcast_object(epochs, self.info))
        self.lf = lr_lambda(self.hyp, opt.epochs, opt.cos_lr)
        self.scheduler.lr_lambdas = [self.lf] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:  # the next epoch's lr on the new schedule
            group["lr"] = group["initial_lr"] * self.lf(epoch + 1)
        LOGGER.info("--time %.1f min: after epoch %d, %.1f s of training an epoch, training %d "
                    "epochs", opt.time, epoch + 1, train_s, opt.epochs)
        return warmup_iters(self.hyp.warmup_epochs, nb, opt.epochs, self.hyp.warmup_min_iters)

    def _log_row(self, row: dict) -> None:
        path = self.save_dir / "results.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        LOGGER.info("epoch %d: %s", row["epoch"] + 1,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if time.time() - self._plotted >= PLOT_INTERVAL:
            self._plot()

    def _plot(self) -> None:
        path = self.save_dir / "results.csv"
        if path.exists():
            plot_results(path)
        self._plotted = time.time()


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a better fitness (0 = never)."""

    patience: int

    def __call__(self, epoch: int, best_epoch: int) -> bool:
        if self.patience <= 0:
            return False
        if epoch - best_epoch >= self.patience:
            LOGGER.info("early stop: no improvement for %d epochs (best epoch %d)", self.patience,
                        best_epoch + 1)
            return True
        return False
