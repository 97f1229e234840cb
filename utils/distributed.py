"""torchrun-aware process group setup and the few collectives train.py needs.

Without torchrun's environment everything degrades to a single process (rank 0 of 1), so the
same code runs on one CPU, one GPU or N GPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    local_world_size: int = 1  # processes of this run on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Init the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank if world > 1 else torch.cuda.current_device())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world,
                                **({"device_id": device} if cuda else {}))
    # processes on this node: torchrun's LOCAL_WORLD_SIZE, else SLURM's tasks per node (srun without torchrun)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
                      or (1 if world == 1 else world))
    return DistInfo(rank, world, local_rank, device, local_world)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj` in rank order (a one-element list when not distributed)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's `obj` in rank order on rank 0 (None elsewhere): for large objects only rank 0 keeps."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj, info: DistInfo):
    """Rank 0's `obj` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank. DDP syncs them at the start of each
    training forward, so after the last step each rank holds stats of its own last batch; evaluating
    with those would make a row's logits depend on which rank predicted it."""
    if info.distributed:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when `flag` is true on any (one small all-reduce): ranks agree before they act."""
    if not info.distributed:
        return bool(flag)
    box = torch.tensor([int(bool(flag))], device=info.device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())
