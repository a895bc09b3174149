"""MoCo's momentum key encoder: a copy of the query encoder that follows it by an exponential moving average.

With several workers there is one key encoder, not W: it is copied from the query encoder after DDP
has broadcast rank 0's weights, and `synchronise()` broadcasts rank 0's key encoder (at setup and
after a resume), so every rank computes the keys the shared bank receives with the same network.

Key BatchNorm (`shuffle`): "none" normalises keys as the query encoder does (over the global batch
with sync BN); "shuffle" is MoCo's shuffle-BN (He et al. 2020, §3.3): the global batch of key views
is permuted across workers before the key encoder, so a worker's BN statistics mix other workers'
images, and the keys are un-permuted after; "split" is the MoCo CIFAR-10 demo's one-worker stand-in:
the worker's key views are permuted before an encoder whose BN works on sub-batches (SplitBatchNorm).
"""
import copy

import torch
import torch.distributed as dist
from torch import nn

KEY_BN = ("none", "shuffle", "split")


class QueryEncoder(nn.Module):
    """backbone -> projection head; the module trained by gradient (and wrapped by DDP)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(views))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class MomentumKeyEncoder:
    """keys(views) under no_grad; follow(query) sets θ_k <- m θ_k + (1 - m) θ_q (He et al. 2020)."""

    def __init__(self, query: nn.Module, momentum: float, shuffle: str = "none", seed: int = 0):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"key encoder momentum must be in [0, 1), got {momentum}")
        if shuffle not in KEY_BN:
            raise ValueError(f"key encoder shuffle must be one of {', '.join(KEY_BN)}, got {shuffle!r}")
        self.encoder = copy.deepcopy(query).requires_grad_(False)
        self.momentum, self.shuffle, self.seed = momentum, shuffle, seed

    @torch.no_grad()
    def synchronise(self) -> None:
        """Every rank's key encoder becomes rank 0's (a no-op on one worker)."""
        if _distributed():
            for tensor in self.encoder.state_dict().values():
                dist.broadcast(tensor, src=0)

    @torch.no_grad()
    def keys(self, views: torch.Tensor, step: int = 0) -> torch.Tensor:
        self.encoder.train()  # batch statistics, as the query encoder sees them
        if self.shuffle == "none":
            return self.encoder(views)
        everyone = _distributed() and self.shuffle == "shuffle"
        rank, world = (dist.get_rank(), dist.get_world_size()) if everyone else (0, 1)
        pool = _all_gather(views) if everyone else views
        # the same permutation on every rank: seeded by the run's seed and the global step
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + step))
        order = order.to(views.device)
        mine = slice(rank * len(views), (rank + 1) * len(views))
        keys = self.encoder(pool[order][mine])
        shuffled = _all_gather(keys) if everyone else keys
        restored = torch.empty_like(shuffled)
        restored[order] = shuffled
        return restored[mine]

    @torch.no_grad()
    def follow(self, query: nn.Module) -> None:
        key_params = list(self.encoder.parameters())
        torch._foreach_lerp_(key_params, [p.detach() for p in query.parameters()], 1.0 - self.momentum)
        for key_buffer, query_buffer in zip(self.encoder.buffers(), query.buffers()):
            key_buffer.copy_(query_buffer)

    def state_dict(self) -> dict:
        return self.encoder.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state)
