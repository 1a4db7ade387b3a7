"""What the harness adds around a method when it runs on several Ray Train workers.

Reptile-style methods set ``.grad`` by hand (Φ − W), not through ``backward()``, so DDP's
backward hooks never fire for them. The harness therefore averages gradients itself with
one flat ``all_reduce`` (hand-written because no library offers "average these .grad
tensors"); a method calls it before each optimizer step and never learns the world size.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

from methods.base import GradSync, no_sync


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def grad_sync() -> GradSync:
    """Mean of every given parameter's ``.grad`` over all workers, in place (identity on one)."""
    _, size = world()
    if size == 1:
        return no_sync

    def sync(params: Iterable[torch.nn.Parameter]) -> None:
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    return sync


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every worker if it is true on any (so all stop at the same step)."""
    _, size = world()
    if size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """For each flag, True on every worker if it is true on any: several ``any_true`` in ONE all-reduce.

    ``flags``: the same number of booleans on every worker; returns a list of that length. The training
    loop asks two questions per step (diverged? budget reached?); one all-reduce instead of two halves
    the per-step synchronisation points besides the gradients' own (issue 14)."""
    _, size = world()
    if size == 1 or not flags:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def broadcast_params(params: list[torch.nn.Parameter]) -> None:
    """Start every worker from rank 0's parameters."""
    _, size = world()
    if size == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def average_tensors(tensors: list[torch.Tensor]) -> None:
    """Mean of ``tensors`` (e.g. batch-norm running statistics) over workers, in place, as one flat all-reduce."""
    _, size = world()
    if size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()


def gather_objects(obj) -> list:
    """Every worker's ``obj`` in rank order (``[obj]`` on one process)."""
    _, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every worker."""
    _, size = world()
    if size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
