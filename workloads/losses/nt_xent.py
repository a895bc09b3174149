"""NT-Xent, the SimCLR loss: Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for
Contrastive Learning of Visual Representations", ICML 2020.

With z = cat(z1, z2) [2B, D], s_ij = z_i . z_j / tau, and pos(i) = i + B mod 2B:
    l_i  = -log( exp(s_i,pos(i)) / sum_{j != i} exp(s_ij) )
    loss = mean over the 2B anchors of l_i
i.e. the symmetric 2B-way InfoNCE with self-similarity excluded. No normalisation (pass
normalised embeddings for the cosine form of the paper). Computed in float32 (float64 for
float64 inputs); returns a scalar of that dtype.
"""

import torch
import torch.nn.functional as F


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    if z1.ndim != 2 or z1.shape[0] < 1:
        raise ValueError(f"nt_xent_loss: z1 must be [B, D] with B >= 1, got {list(z1.shape)}")
    if z2.shape != z1.shape:
        raise ValueError(
            f"nt_xent_loss: z2 must be [B, D] = {list(z1.shape)} like z1, got {list(z2.shape)}"
        )
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0, got {temperature}")
    with torch.autocast(z1.device.type, enabled=False):
        z = torch.cat([z1, z2]).to(torch.promote_types(z1.dtype, torch.float32))
        n = len(z)
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
        target = (torch.arange(n, device=z.device) + n // 2) % n
        return F.cross_entropy(logits, target)
