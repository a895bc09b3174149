"""The contrastive method: backbone -> projection head -> a loss over the two views of each image.

Each image is its own class (instance discrimination): its two views are the positive pair and the
other images of the batch supply the negatives, in the form each loss expects.

With several workers the batch is the global one: ContrastiveLearner gathers every rank's
embeddings (workloads.distributed.gather_with_grad) before the loss, so row i of z1 and z2 is
global image i on every rank, and the instance ids, the triplet's rolled negative and the N-pair
"others" below are built over all B global rows. Every rank then computes the same global loss.
"""
import torch
from torch import nn

from workloads.distributed import gather_with_grad, rank_and_world
from workloads.losses import (
    contrastive_loss,
    info_nce_loss,
    lifted_structured_loss,
    npair_loss,
    nt_xent_loss,
    triplet_loss,
)

LOSSES = ("nt_xent", "info_nce", "contrastive", "triplet", "lifted_structured", "npair")


def two_view_loss(z1: torch.Tensor, z2: torch.Tensor, loss: str, temperature: float, margin: float) -> torch.Tensor:
    """z1[i], z2[i]: the two views of image i of the (global) batch."""
    batch = len(z1)
    if loss == "nt_xent":
        return nt_xent_loss(z1, z2, temperature)
    if loss == "info_nce":
        return info_nce_loss(z1, z2, None, temperature)
    if loss in ("contrastive", "lifted_structured"):
        ids = torch.arange(batch, device=z1.device)  # image i's two views share id i
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
    """forward(view1, view2) -> scalar loss; `backbone` is the encoder kept after pretraining.

    gather: the loss sees the global batch (every rank's rows, in rank order) and its gradient
    reaches each rank's rows as gather_with_grad scales it for DDP; a no-op on one process.
    Without it each rank's loss sees only its own rows.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, loss: str, temperature: float, margin: float,
                 gather: bool = True):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        self.backbone, self.head = backbone, head
        self.loss, self.temperature, self.margin, self.gather = loss, temperature, margin, gather

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(torch.cat([view1, view2])))
        z1, z2 = z.float().chunk(2)
        if self.gather and rank_and_world()[1] > 1:  # one collective for both views: [n, 2, D] -> [W*n, 2, D]
            z1, z2 = gather_with_grad(torch.stack([z1, z2], dim=1)).unbind(1)
        return two_view_loss(z1, z2, self.loss, self.temperature, self.margin)
