"""Several processes, one round: torch.distributed, as `torchrun` or `accelerate launch` starts it.

A round's problem lists (chunk, validation set, test set) are cut into fixed blocks of `rollout_batch` problems.
Block b is always sampled with the seed (round seed, b), whatever the number of processes, and rank r owns blocks
r, r+N, r+2N, ... So N processes draw exactly the rollouts one process draws, and each per-problem number (pass
rate, ‖g‖, ⟨g, ĝ_V⟩) is computed once, by the rank that owns the problem. Sums over problems (the validation
gradient and its token count) are all-reduced; per-problem numbers are gathered back into list order; rank 0
makes the selection and broadcasts it, so every rank trains on the same problems.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)


def block_count(n_items: int, block: int) -> int:
    return -(-n_items // max(1, block))


def block_items(n_items: int, block: int, blocks) -> np.ndarray:
    """The item indices of the given blocks, in block order."""
    parts = [np.arange(b * block, min(n_items, (b + 1) * block)) for b in blocks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=int)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the run's processes, and the few collectives a sharded round needs.

    With one process every collective is the identity, so the single-process path runs the same code.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def blocks(self, n_items: int, block: int) -> list[int]:
        """The blocks of an `n_items` list this rank owns (round-robin: ranks differ by at most one block)."""
        return list(range(self.rank, block_count(n_items, block), self.world_size))

    def shard(self, n_items: int, block: int) -> tuple[list[int], np.ndarray]:
        """(owned blocks, owned item indices) of an `n_items` list."""
        blocks = self.blocks(n_items, block)
        return blocks, block_items(n_items, block, blocks)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over ranks (a new tensor on `t`'s device and dtype)."""
        if not self.sharded:
            return t
        x = t.detach().to(self.device, copy=True)
        dist.all_reduce(x)
        return x.to(t.device)

    def max(self, n: int) -> int:
        """The largest `n` over ranks."""
        if not self.sharded:
            return n
        x = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
        return int(x.item())

    def gather(self, values, index: np.ndarray, n_items: int) -> np.ndarray:
        """Every rank's `values` (rows for the items `index`) assembled into one array of `n_items` rows."""
        return self.gather_fields({"values": values}, index, n_items)["values"]

    def gather_fields(self, fields: dict, index: np.ndarray, n_items: int) -> dict[str, np.ndarray]:
        """`gather` for several per-item arrays at once (one collective)."""
        fields = {name: np.asarray(v) for name, v in fields.items()}
        parts = [(np.asarray(index), fields)]
        if self.sharded:
            parts = [None] * self.world_size
            dist.all_gather_object(parts, (np.asarray(index), fields))
        out = {name: np.zeros((n_items,) + v.shape[1:], dtype=v.dtype) for name, v in fields.items()}
        for idx, values in parts:
            for name, v in values.items():
                out[name][idx] = v
        return out

    def gather_all(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.sharded:
            return [obj]
        parts = [None] * self.world_size
        dist.all_gather_object(parts, obj)
        return parts

    def gather_to_main(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.sharded:
            return [obj]
        parts = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, parts, dst=0)
        return parts

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.sharded:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.sharded:
            dist.barrier()


SINGLE = ProcessGroup()


def fsdp_sharded(model) -> bool:
    """True when the model's parameters are sharded across processes (FSDP2's `fully_shard`, as accelerate's
    FSDP plugin applies it): every forward is then a collective, and parameters are DTensor shards."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def reshard(model) -> None:
    """Put an FSDP model's shards back as its parameters. FSDP keeps the root's full copies after a forward without
    gradient (`generate`); code that reads `model.parameters()` must see the shards. No collective."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def shard_group(group: ProcessGroup, model) -> ProcessGroup:
    """The group `model`'s parameters are split over: `group` under FSDP, else none (SINGLE).

    Under FSDP every forward gathers parameters from all ranks, so each rank makes as many passes as the busiest
    (`shard_group(...).max(n)`), the extra ones on padding."""
    return group if group.sharded and fsdp_sharded(model) else SINGLE


def launched_world_size() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def fsdp_requested() -> bool:
    """True when `accelerate launch` was told to shard the model with FSDP (its config sets this variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")


def torchrun_command(processes: int, target: list[str]) -> list[str]:
    """The command that runs `target` (a script and its arguments, or `-m module ...`) on `processes` local
    processes, as users launch it: torchrun, single node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *target]


def is_main_process() -> bool:
    """Rank 0 of a launched job, or the only process: the one that prints and writes reports."""
    return int(os.environ.get("RANK", "0")) == 0


def process_group(device: torch.device) -> ProcessGroup:
    """This process's group: joins (or, first, creates) torch.distributed's default group when a launcher
    started several processes; gloo on CPU, NCCL on CUDA."""
    if launched_world_size() == 1:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    group = ProcessGroup(dist.get_rank(), dist.get_world_size(), device)
    if not group.is_main:  # one log for the run: the other ranks report warnings only
        logging.getLogger("gradalign").setLevel(logging.WARNING)
    return group


def world_size() -> int:
    """Processes in torch.distributed's default group (1 when there is none): TRL splits each step across them."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
