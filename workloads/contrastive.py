"""The contrastive method: backbone -> projection head -> a loss over the two views of each image.

Each image is its own class (instance discrimination): its two views are the positive pair and the
other images of the batch supply the negatives, in the form each loss expects.
"""
import torch
from torch import nn

from .losses import contrastive_loss, info_nce_loss, lifted_structured_loss, npair_loss, nt_xent_loss, triplet_loss

LOSSES = ("nt_xent", "info_nce", "contrastive", "triplet", "lifted_structured", "npair")


def two_view_loss(z1: torch.Tensor, z2: torch.Tensor, loss: str, temperature: float, margin: float) -> torch.Tensor:
    batch = len(z1)
    if loss == "nt_xent":
        return nt_xent_loss(z1, z2, temperature)
    if loss == "info_nce":
        return info_nce_loss(z1, z2, None, temperature)
    if loss in ("contrastive", "lifted_structured"):
        ids = torch.arange(batch, device=z1.device)
        fn = contrastive_loss if loss == "contrastive" else lifted_structured_loss
        return fn(torch.cat([z1, z2]), torch.cat([ids, ids]), margin)
    if loss == "triplet":
        return triplet_loss(z1, z2, z2.roll(1, dims=0), margin)
    if loss == "npair":
        others = ~torch.eye(batch, dtype=torch.bool, device=z1.device)
        negatives = z2.unsqueeze(0).expand(batch, -1, -1)[others].view(batch, batch - 1, -1)
        return npair_loss(z1, z2, negatives)
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")


class ContrastiveLearner(nn.Module):
    """forward(view1, view2) -> scalar loss; `backbone` is the encoder kept after pretraining."""

    def __init__(self, backbone: nn.Module, head: nn.Module, loss: str, temperature: float, margin: float):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        self.backbone, self.head = backbone, head
        self.loss, self.temperature, self.margin = loss, temperature, margin

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(torch.cat([view1, view2])))
        z1, z2 = z.float().chunk(2)
        return two_view_loss(z1, z2, self.loss, self.temperature, self.margin)
