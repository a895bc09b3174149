"""Losses over embeddings: pure, vectorised torch functions (see DESIGN.md, "Losses").

None of them normalises its inputs; distances are Euclidean; reductions are means.
Each computes in float32 (float64 for float64 inputs) and returns a scalar in that dtype,
so bfloat16/float16 inputs give a float32 loss whose gradients flow back in the input dtype.
"""

from workloads.losses.contrastive import contrastive_loss
from workloads.losses.info_nce import info_nce_loss
from workloads.losses.lifted_structured import lifted_structured_loss
from workloads.losses.npair import npair_loss
from workloads.losses.nt_xent import nt_xent_loss
from workloads.losses.triplet import triplet_loss

__all__ = [
    "contrastive_loss",
    "triplet_loss",
    "lifted_structured_loss",
    "npair_loss",
    "info_nce_loss",
    "nt_xent_loss",
]
