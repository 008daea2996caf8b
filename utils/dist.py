"""Devices and torch.distributed set-up (torchrun: NCCL on CUDA, Gloo on CPU)."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

LOGGER = logging.getLogger(__name__)

# Collective timeout (YOLOv5's): rank 0 may build the label cache for that long while the other
# ranks wait at a barrier (torch's defaults: 10 minutes for NCCL, 30 for Gloo).
TIMEOUT = timedelta(hours=3)


@dataclass
class DistInfo:
    """This process's place in a torchrun job (world_size 1 and rank -1 outside torchrun)."""

    rank: int = -1          # global rank, -1 when not distributed
    local_rank: int = -1
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)


def dist_info() -> DistInfo:
    """Read torchrun's environment variables (RANK, LOCAL_RANK, WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), world)


def select_device(device: str = "", info: DistInfo | None = None) -> torch.device:
    """``'cpu'``, ``'0'``, ``'0,1'`` or ``''`` (first GPU if any) -> this process's torch.device.

    Under torchrun each process takes the GPU of its local rank among those listed.
    """
    info = info or DistInfo()
    device = str(device).strip().lower().replace("cuda:", "")
    if device == "cpu" or not torch.cuda.is_available():
        if device not in ("", "cpu"):
            raise ValueError(f"--device {device} requested but CUDA is not available (use --device cpu)")
        return torch.device("cpu")
    ids = [int(d) for d in device.split(",") if d != ""] or list(range(torch.cuda.device_count()))
    n = torch.cuda.device_count()
    bad = [i for i in ids if i >= n]
    if bad:
        raise ValueError(f"--device {device}: this machine has {n} CUDA device(s)")
    idx = ids[max(info.local_rank, 0) % len(ids)]
    torch.cuda.set_device(idx)
    return torch.device("cuda", idx)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Start the process group: NCCL for CUDA devices, Gloo for CPU."""
    if not info.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    LOGGER.info("DDP: rank %d/%d on %s (%s)", info.rank, info.world_size, device, backend)


def start(device: str = "") -> tuple[DistInfo, torch.device]:
    """This process's place and device (:func:`select_device`), its process group started under
    torchrun (:func:`init_distributed`; a second call changes nothing)."""
    info = dist_info()
    dev = select_device(device, info)
    init_distributed(info, dev)
    return info, dev


@contextlib.contextmanager
def rank_zero_first():
    """Run the block on rank 0 first, then on the other ranks (which wait at a barrier).

    Only when torch.distributed is initialised with several ranks; otherwise a plain block. Rank 0
    reaches the barrier even if its block raises, so the other ranks never wait forever.
    """
    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if active and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if active and dist.get_rank() == 0:
            dist.barrier()


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Send a picklable object from rank ``src`` to all ranks (identity when not distributed)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
