"""The encoder checkpoint: everything needed to rebuild and evaluate the backbone without its config.

Besides the weights and how to build them, it keeps what the encoder's input must look like: the
per-channel `normalization` ({"mean": [...], "std": [...]}) measured on the run's training split,
and the `augment` settings the run trained with (for repr/* in `sslab eval`).
"""
import os
import tempfile
from typing import Any

import torch
from torch import nn

from workloads.data.normalization import CIFAR10, Normalization
from workloads.pretext.registry import build_encoder

FORMAT = "sslab.encoder/1"


def save_encoder(path: str, backbone: nn.Module, name: str, kwargs: dict, metadata: dict[str, Any]) -> None:
    """Written to a temporary file then renamed, so a crash never leaves a half-written checkpoint."""
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    payload = {"format": FORMAT, "backbone": name, "backbone_kwargs": kwargs, "state_dict": state, **metadata}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False) as handle:
        torch.save(payload, handle)
    os.replace(handle.name, path)


def load_encoder(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found; expected an encoder.pt written by sslab train")
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an sslab encoder checkpoint (expected format {FORMAT!r})")
    # a pretext task's encoder may wrap the backbone (lightness in, or split-brain halves)
    backbone = build_encoder(payload["backbone"], payload["backbone_kwargs"], payload.get("encoder_wrapper"))
    backbone.load_state_dict(payload["state_dict"])
    metadata = {k: v for k, v in payload.items() if k not in ("state_dict",)}
    return backbone.to(device).eval(), metadata


def checkpoint_normalization(metadata: dict[str, Any]) -> Normalization:
    """The normalisation an encoder was trained with: the one its checkpoint stores, or the CIFAR-10
    constants for checkpoints written before runs measured it (every data set was normalised so then)."""
    stored = metadata.get("normalization")
    return Normalization.from_dict(stored) if stored else CIFAR10
