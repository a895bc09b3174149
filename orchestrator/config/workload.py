"""The `workload:` block: a contrastive objective, an image pretext task or a video pretext task
(orchestrator/config/video_workload.py), chosen by `kind`.

Each kind has its own hyperparameters (a sweep can search any of them as `workload.<name>`); a key
that belongs to another kind is an error naming the kind. Without `kind`, the workload is contrastive.
"""
from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag

from orchestrator.config.sections import CropScale, Section
from orchestrator.config.video_workload import VIDEO_WORKLOADS

LOSSES = ("nt_xent", "info_nce", "contrastive", "triplet", "lifted_structured", "npair")


class ContrastiveWorkload(Section):
    kind: Literal["contrastive"] = "contrastive"
    loss: Literal[LOSSES] = "nt_xent"
    temperature: float = Field(0.5, gt=0.0, le=100.0)
    margin: float = Field(1.0, gt=0.0)


class RotationWorkload(Section):
    """RotNet: each image in all four rotations, a 4-way classifier."""
    kind: Literal["rotation"]
    hidden: int = Field(256, ge=0, description="hidden width of the MLP head (0: linear)")


class ExemplarWorkload(Section):
    """Exemplar-CNN: an image and its distortions form one class (one class per training image)."""
    kind: Literal["exemplar"]
    distortions: int = Field(2, ge=1, le=16, description="distortions of each image per step")
    crop_scale: CropScale = (0.4, 1.0)
    rotation: float = Field(20.0, ge=0.0, le=180.0, description="maximum rotation, degrees")
    jitter: float = Field(0.4, ge=0.0, le=1.0, description="brightness/contrast/saturation strength")
    hue: float = Field(0.1, ge=0.0, le=0.5, description="maximum hue shift, turns")


class PatchWorkload(Section):
    """The 3x3 patch grid and Doersch et al.'s measures against shortcuts, each switchable."""
    kind: str  # each task's Literal; declared here so that it comes first
    grid_size: int = Field(96, ge=24, multiple_of=3, description="pixels the image is resized to before cutting")
    gap: int = Field(8, ge=0, description="pixels between patches (0: none)")
    jitter: int = Field(3, ge=0, description="random shift of each patch, pixels per axis (<= gap/2)")
    downsample_p: float = Field(0.0, ge=0.0, le=1.0, description="share of patches downsampled then upsampled")
    hidden: int = Field(256, ge=0, description="hidden width of the MLP head (0: linear)")


class RelativePositionWorkload(PatchWorkload):
    """Relative position of a neighbour patch to the centre patch: 8 classes (Doersch et al. 2015)."""
    kind: Literal["relative_position"]
    color_drop_p: float = Field(1.0, ge=0.0, le=1.0, description="chromatic aberration: drop 2 of 3 channels per patch")


class JigsawWorkload(PatchWorkload):
    """Jigsaw: which of P maximal-Hamming permutations shuffled the 9 tiles (Noroozi & Favaro 2016)."""
    kind: Literal["jigsaw"]
    color_drop_p: float = Field(0.0, ge=0.0, le=1.0)
    permutations: int = Field(100, ge=2, le=1000, description="the size P of the permutation set")
    permutation_seed: int = Field(0, ge=0)
    grayscale_p: float = Field(0.3, ge=0.0, le=1.0)
    normalize_tiles: bool = True


class DecoderWorkload(Section):
    """A task that reconstructs pixels or colours through a decoder of the given width."""
    kind: str  # each task's Literal; declared here so that it comes first
    decoder_width: int = Field(64, ge=1, le=1024)


class ColorizationWorkload(DecoderWorkload):
    """Colorization: the ab channels of Lab from the L channel (the encoder sees lightness only)."""
    kind: Literal["colorization"]
    mode: Literal["classification", "regression"] = "classification"
    bin_size: int = Field(10, ge=2, le=50, description="classification: ab grid step")
    temperature: float = Field(0.38, gt=0.0, le=1.0, description="annealed-mean decoding of the predicted bins")
    rebalance_lambda: float = Field(0.5, ge=0.0, le=1.0, description="class rebalancing: mix with uniform (1: off)")
    rebalance_sigma: float = Field(5.0, gt=0.0, le=50.0, description="Gaussian smoothing of the bin prior")
    soft_encoding: bool = True
    output_stride: Literal[1, 2, 4] = 4


class DenoisingWorkload(DecoderWorkload):
    """Denoising autoencoder: reconstruct the clean image from a corrupted one."""
    kind: Literal["denoising"]
    noise: Literal["gaussian", "masking"] = "gaussian"
    noise_std: float = Field(0.3, gt=0.0, le=5.0, description="gaussian: std in normalised units")
    mask_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="masking: fraction of pixels zeroed")


class ContextEncoderWorkload(DecoderWorkload):
    """Context encoder: mask a square region and reconstruct it from its surroundings."""
    kind: Literal["context_encoder"]
    mask: Literal["center", "random"] = "center"
    mask_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="the masked square's share of the image area")
    context_weight: float = Field(0.0, ge=0.0, le=1.0, description="loss weight outside the hole")


class SplitBrainWorkload(Section):
    """Split-brain autoencoder: L -> ab and ab -> L sub-networks (each half the width); features concatenated."""
    kind: Literal["split_brain"]
    mode: Literal["classification", "regression"] = "classification"
    ab_bin_size: int = Field(10, ge=2, le=50)
    l_bins: int = Field(100, ge=2, le=256)
    output_stride: Literal[1, 2, 4] = 4


PRETEXT_WORKLOADS = (RotationWorkload, ExemplarWorkload, RelativePositionWorkload, JigsawWorkload, ColorizationWorkload, DenoisingWorkload,
                     ContextEncoderWorkload, SplitBrainWorkload)
WORKLOADS = {cls.model_fields["kind"].annotation.__args__[0]: cls
             for cls in (ContrastiveWorkload, *PRETEXT_WORKLOADS, *VIDEO_WORKLOADS)}
KINDS = tuple(WORKLOADS)


def _kind(value) -> str | None:
    if isinstance(value, dict):
        return value.get("kind", "contrastive")
    return getattr(value, "kind", None)


WorkloadConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in WORKLOADS.items())],
    Discriminator(_kind, custom_error_type="invalid_workload_kind",
                  custom_error_message=f"workload.kind must be one of: {', '.join(KINDS)}"),
]
