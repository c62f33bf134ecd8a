"""Data-parallel training over several processes (one per GPU, or CPU processes over gloo),
launched by `torchrun` or `accelerate launch`, which set RANK / WORLD_SIZE / LOCAL_RANK.

Why gradients are summed by hand: the LoRA layers sit inside the frozen UNet and text encoders,
so the models are run unwrapped (accelerate's mixed-precision forward kept, no DDP wrapper):
a DDP wrapper around modules whose forward is not the one called never syncs (the reference
trainer's bug #924, fixed there the same way), and one SUM of every LoRA gradient per optimizer
step gives exactly the gradient of a one-process run that accumulates the same micro-batches.
The same seed-keyed randomness (noise, timesteps, captions, flips) on every rank makes the ranks'
weights identical after each step, which the loop checks.

Everything here is a no-op with one process, and nothing imports torch until a process group is
actually needed.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes of this run, from the launcher's environment (1 when not launched that way)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    return rank() == 0


def init(timeout_minutes: int | None = None, cuda: bool | None = None) -> None:
    """Join the process group (once), before anything else talks to it: nccl on CUDA, gloo on the
    CPU; `timeout_minutes` bounds every collective (--ddp_timeout), so a rank that died or hangs
    ends the others with an error instead of waiting forever."""
    if world_size() < 2:
        return
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kwargs = {"timeout": datetime.timedelta(minutes=timeout_minutes)} if timeout_minutes else {}
    dist.init_process_group(backend="nccl" if cuda else "gloo", **kwargs)


def _device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agree(value):
    """Rank 0's value on every rank (a seed drawn at random, a decision taken once)."""
    if world_size() < 2:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def sum_gradients(params) -> None:
    """Every rank's LoRA gradients summed in place, in one flat buffer (a parameter a rank did not
    use counts as zero, so a rank left without a micro-batch at the end of an epoch joins too)."""
    if world_size() < 2:
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]).to(_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        value = flat[offset:offset + n].view_as(g).to(p.device, p.dtype)
        if p.grad is None:
            p.grad = value
        else:
            p.grad.copy_(value)
        offset += n


def sum_value(value: float) -> float:
    if world_size() < 2:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on one (a stop request reaches one process, all stop
    after the same step)."""
    if world_size() < 2:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def weights_in_sync(params) -> bool:
    """Whether every rank holds the same LoRA weights (a float64 checksum of them, compared)."""
    if world_size() < 2:
        return True
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        local = torch.stack([sum(p.detach().double().sum() for p in params),
                             sum((p.detach().double() ** 2).sum() for p in params)]).to(_device())
    every = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(every, local)
    return all(torch.equal(every[0], other) for other in every[1:])


def share(items: list) -> list:
    """This rank's part of a list (every world_size-th item from its rank)."""
    return items[rank()::world_size()] if world_size() > 1 else list(items)


def gather_dicts(part: dict) -> dict:
    """The union of every rank's dict (CPU tensors travel pickled)."""
    if world_size() < 2:
        return part
    import torch.distributed as dist

    every = [None] * world_size()
    dist.all_gather_object(every, part)
    out: dict = {}
    for d in every:
        out.update(d)
    return out


def gather_lists(part: list) -> list:
    """Every rank's list, concatenated in rank order (small lists of numbers: they travel pickled)."""
    if world_size() < 2:
        return list(part)
    import torch.distributed as dist

    every = [None] * world_size()
    dist.all_gather_object(every, list(part))
    return [item for got in every for item in got]
