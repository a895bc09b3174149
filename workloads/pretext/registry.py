"""Build a pretext task by its workload kind, over a backbone of the configured family.

`encoder_spec(kind)` names the encoder wrapper a kind trains (None: the plain backbone; "gray":
lightness in; "split_brain": L and ab sub-networks), so a checkpoint can rebuild the encoder.
"""
from __future__ import annotations

from torch import nn

from workloads.models import build_backbone
from workloads.pretext.base import PretextTask
from workloads.pretext.color.encoders import build_encoder as build_wrapped

# kind -> (module, class name, the encoder wrapper it trains); imported lazily: one task per run
TASKS = {
    "rotation": ("rotation", "RotationPrediction", None),
    "exemplar": ("exemplar", "ExemplarDiscrimination", None),
    "relative_position": ("patches.relative_position", "RelativePosition", None),
    "jigsaw": ("patches.jigsaw", "Jigsaw", None),
    "colorization": ("color.colorization", "Colorization", "gray"),
    "denoising": ("denoising", "DenoisingAutoencoder", None),
    "context_encoder": ("context_encoder", "ContextEncoder", None),
    "split_brain": ("color.split_brain", "SplitBrain", "split_brain"),
}


def encoder_spec(kind: str) -> str | None:
    return TASKS[kind][2]


def build_encoder(backbone: str, backbone_kwargs: dict, wrapper: str | None) -> nn.Module:
    if wrapper is None:
        return build_backbone(backbone, **backbone_kwargs)
    return build_wrapped(backbone, backbone_kwargs, wrapper)


def build_task(kind: str, params: dict, backbone: str, backbone_kwargs: dict, num_images: int) -> PretextTask:
    """params: the workload block's hyperparameters (without kind); num_images: the training set's size."""
    if kind not in TASKS:
        raise ValueError(f"unknown pretext kind {kind!r}; valid: {', '.join(TASKS)}")
    module_name, class_name, wrapper = TASKS[kind]
    import importlib

    cls = getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)
    encoder = build_encoder(backbone, backbone_kwargs, wrapper)
    extra = {"num_classes": num_images} if kind == "exemplar" else {}
    return cls(encoder, encoder.feature_dim, **params, **extra)
