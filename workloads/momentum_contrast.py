"""MoCo's momentum key encoder: a copy of the query encoder that follows it by an exponential moving average."""
import copy

import torch
from torch import nn


class QueryEncoder(nn.Module):
    """backbone -> projection head; the module trained by gradient (and wrapped by DDP)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(views))


class MomentumKeyEncoder:
    """keys(views) under no_grad; follow(query) sets θ_k <- m θ_k + (1 - m) θ_q (He et al. 2020)."""

    def __init__(self, query: nn.Module, momentum: float):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"key encoder momentum must be in [0, 1), got {momentum}")
        self.encoder = copy.deepcopy(query).requires_grad_(False)
        self.momentum = momentum

    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> torch.Tensor:
        self.encoder.train()  # batch statistics, as the query encoder sees them
        return self.encoder(views)

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
