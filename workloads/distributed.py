"""Global-batch helpers for data-parallel training (torch.distributed's public API only).

Identity on one process: without an initialised process group (or with world size 1) nothing here
communicates, so the single-worker code path is the multi-worker one.
"""
import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, world = rank_and_world()
        ctx.rows = len(x)
        parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`x` [n, ...] of every rank concatenated in rank order: [W*n, ...], differentiable.

    Every rank must pass the same shape (the same row count n). The identity (the same tensor,
    gradient passed straight through) without a process group or with world size 1.

    Gradient scaling. The caller computes the same global loss L(X) on every rank, X being this
    gather's output, so every rank's backward brings the same dL/dX [W*n, ...]. A rank's parameters
    only reach X through its own rows X_r, so one process training on the concatenated batch would
    have gradient  sum_r J_r^T dL/dX_r  (J_r: the Jacobian of rank r's rows w.r.t. the parameters).
    DDP sums the ranks' parameter gradients and divides by W, so rank r must pass its rows
    W * dL/dX_r: the backward all-reduces (SUM) the incoming gradient, which gives W * dL/dX on
    every rank (the sum of W equal terms), and returns this rank's slice. After DDP's averaging,
    (1/W) * sum_r J_r^T (W * dL/dX_r) is exactly the one-process gradient.

    Summing instead of assuming equal terms also keeps the rule right when ranks compute different
    losses L_r on the gathered rows: rank r then receives sum_s dL_s/dX_r, and DDP's average is the
    gradient of mean_s L_s. Taking only one's own slice without the sum (as lightly's GatherLayer
    and older copies of solo-learn's do) drops the terms of the other ranks' losses, which is exact
    only when each rank's loss treats remote rows as constants.
    Cost: one all_gather of x forward and one all_reduce of [W*n, ...] backward.
    """
    if rank_and_world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module a DistributedDataParallel wrapper holds (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
