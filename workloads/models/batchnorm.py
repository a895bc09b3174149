"""BatchNorm over more or fewer images than a worker's batch: global (across workers) or split.

- ``GlobalBatchNorm``: training-mode statistics over the whole global batch of every worker, so W
  workers normalise exactly as one worker on the concatenated batch. torch's SyncBatchNorm does
  this on CUDA only; this one gathers each worker's (count, mean, M2) with torch.distributed.nn's
  differentiable all_gather and merges them exactly (Chan et al.'s parallel variance), so it runs on
  gloo (CPU) too, gradient included. Without a process group it is BatchNorm.
- ``SplitBatchNorm``: statistics per sub-batch of ``splits`` equal contiguous groups, the MoCo
  CIFAR-10 demo's way of simulating per-GPU BN (and shuffle-BN) on one worker.

Both keep BatchNorm's parameters and buffers, so their state dicts load into plain BatchNorm.
"""
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNorm", "SplitBatchNorm", "convert_batchnorm"]


def _update_running(bn: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
    """Running estimates from a batch's mean and biased variance (stored unbiased, as nn.BatchNorm does)."""
    if not bn.track_running_stats:
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * count / (count - 1).clamp(min=1)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)


def _normalise(bn: _BatchNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, spatial: int) -> torch.Tensor:
    """x [..., C, *spatial dims] with mean/var shaped to broadcast against it."""
    y = (x - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        shape = [-1] + [1] * spatial
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(_BatchNorm):
    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [N, C, ...] input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.full((1,), x.numel() / x.shape[1], device=x.device)
        mean = xf.mean(dims)
        m2 = ((xf - mean.view(1, -1, *[1] * (x.dim() - 2))) ** 2).sum(dims)
        local = torch.cat([count, mean, m2]).unsqueeze(0)
        stats = torch.cat(dist_nn.all_gather(local))  # [W, 1 + 2C], differentiable
        counts, means, m2s = stats[:, :1], stats[:, 1 : 1 + x.shape[1]], stats[:, 1 + x.shape[1] :]
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        var = (m2s + counts * (means - global_mean) ** 2).sum(0) / total
        _update_running(self, global_mean.detach(), var.detach(), total.detach())
        view = [1, -1] + [1] * (x.dim() - 2)
        return _normalise(self, xf, global_mean.view(view), var.view(view), x.dim() - 2).to(x.dtype)


class SplitBatchNorm(_BatchNorm):
    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if splits < 1:
            raise ValueError(f"SplitBatchNorm: splits must be >= 1, got {splits}")
        self.splits = splits

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SplitBatchNorm expects [N, C, ...] input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        if len(x) % self.splits:
            raise ValueError(f"SplitBatchNorm: a batch of {len(x)} does not split into {self.splits} equal groups")
        groups = x.float().unflatten(0, (self.splits, -1))  # [S, N/S, C, ...]
        dims = [1, *range(3, groups.dim())]
        view = [self.splits, 1, -1] + [1] * (x.dim() - 2)
        mean, var = groups.mean(dims), groups.var(dims, unbiased=False)  # [S, C]
        count = torch.tensor(groups[0].numel() / x.shape[1], device=x.device)
        _update_running(self, mean.mean(0).detach(), var.mean(0).detach(), count)  # the groups' mean, as the demo
        return _normalise(self, groups, mean.view(view), var.view(view), x.dim() - 2).flatten(0, 1).to(x.dtype)


def convert_batchnorm(module: nn.Module, kind: str, splits: int = 1) -> nn.Module:
    """Every BatchNorm layer of `module` replaced by a GlobalBatchNorm (kind "global") or a
    SplitBatchNorm (kind "split") with its parameters and buffers; returns the module."""
    if kind not in ("global", "split"):
        raise ValueError(f"convert_batchnorm: kind must be 'global' or 'split', got {kind!r}")
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, SplitBatchNorm)):
        options = dict(eps=module.eps, momentum=module.momentum, affine=module.affine,
                       track_running_stats=module.track_running_stats)
        new = GlobalBatchNorm(module.num_features, **options) if kind == "global" else \
            SplitBatchNorm(module.num_features, splits, **options)
        new.load_state_dict(module.state_dict())
        device = module.weight.device if module.affine else module.running_mean.device
        return new.to(device).train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, kind, splits))
    return module
