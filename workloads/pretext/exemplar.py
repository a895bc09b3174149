"""Exemplar-style distortion discrimination (Exemplar-CNN; Dosovitskiy, Springenberg, Riedmiller &
Brox, "Discriminative Unsupervised Feature Learning with Convolutional Neural Networks", NIPS 2014).

Every training image is its own "surrogate class": the class holds the image and all its random
distortions, and a classifier over the N training images must tell which image a distortion came
from. To do that the features have to be invariant to the distortions (pose, scale, colour) while
still telling the images apart, which is the representation downstream tasks want.

Details that make it work (from the paper):
- The distortions are strong and varied: translation and scaling (here one random resized crop),
  rotation (the paper's +-20 degrees), and colour changes (contrast, saturation/value, hue +-0.1;
  here torchvision-style brightness/contrast/saturation/hue jitter). Weak distortions let the
  network match exact pixels; the paper's accuracy rises with every transformation added.
- Several distortions of each image in every step (``distortions``, default 2), so each step
  pulls distortions of the same image towards the same class.
- Labels are the images' data-set indices (``ids``), so ``num_classes`` is the number of training
  images; the classifier is linear (the paper's softmax over surrogate classes on top of the net).
  With many images the classifier is large and each class is seen once per epoch, the paper's
  known limit (it used 8000-32000 classes).

Layout: for B images the task classifies ``distortions * B`` images, distortion-major (all first
distortions, then all second ones), labelled ``ids.repeat(distortions)``. Every distortion draws its
own parameters from torch's global CPU generator (as workloads/augment.py does), so
``torch.manual_seed`` reproduces them on any device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.geometry.transform import crop_and_resize, rotate
from matplotlib.figure import Figure
from torch import nn

from workloads.augment import random_resized_crop_boxes
from workloads.pretext.base import (
    PretextStep,
    PretextTask,
    accuracy,
    normalize,
    to_unit,
)
from workloads.pretext.checks import check_range


class ExemplarDiscrimination(PretextTask):
    """Classify distortions of training images into one class per image.

    num_classes: number of training images (ids lie in [0, num_classes)); integer >= 2.
    distortions: distortions of each image per step; integer >= 1.
    crop_scale: (min, max) area fraction of the random resized crop; 0 < min <= max <= 1.
    rotation: maximum rotation in degrees, drawn uniformly in [-rotation, rotation]; [0, 180].
    jitter: brightness/contrast/saturation strength, factors uniform in [max(0, 1-j), 1+j]; [0, 1].
    hue: maximum hue shift in turns, uniform in [-hue, hue]; [0, 0.5].
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        *,
        num_classes: int,
        distortions: int = 2,
        crop_scale: tuple[float, float] = (0.4, 1.0),
        rotation: float = 20.0,
        jitter: float = 0.4,
        hue: float = 0.1,
    ):
        super().__init__(encoder)
        check_range("num_classes (the number of training images)", num_classes, 2, float("inf"), integer=True)
        check_range("distortions", distortions, 1, 64, integer=True)
        try:
            lo, hi = (float(v) for v in crop_scale)
        except (TypeError, ValueError):
            lo, hi = float("nan"), float("nan")
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale!r}")
        self.num_classes = num_classes
        self.distortions = distortions
        self.crop_scale = (lo, hi)
        self.rotation = float(check_range("rotation (degrees)", rotation, 0.0, 180.0))
        self.jitter = float(check_range("jitter", jitter, 0.0, 1.0))
        self.hue = float(check_range("hue (turns)", hue, 0.0, 0.5))
        self.chance = 1.0 / num_classes
        self.head = nn.Linear(feature_dim, num_classes)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, distortions={self.distortions}, crop_scale={self.crop_scale}, "
            f"rotation={self.rotation}, jitter={self.jitter}, hue={self.hue}"
        )

    @torch.no_grad()
    def distort(self, images: torch.Tensor) -> torch.Tensor:
        """One random distortion per image: normalised [B, 3, H, W] -> normalised [B, 3, H, W]."""
        with torch.autocast(images.device.type, enabled=False):  # pixel coordinates need float32
            return self._distort(images.float())

    def _distort(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        x = to_unit(images)
        # All parameters from the CPU generator (reproducible with torch.manual_seed), then one copy.
        boxes = random_resized_crop_boxes(batch, height, width, self.crop_scale)
        j = self.jitter
        params = torch.cat(
            [
                boxes.reshape(batch, 8),
                (torch.rand(batch, 1) < 0.5).float(),  # horizontal flip
                torch.empty(batch, 1).uniform_(-self.rotation, self.rotation),
                torch.empty(batch, 3).uniform_(max(0.0, 1.0 - j), 1.0 + j),  # brightness, contrast, saturation
                torch.empty(batch, 1).uniform_(-self.hue, self.hue),
            ],
            dim=1,
        ).to(x.device, non_blocking=True)
        # Crop + resize back to the input size: translation and scaling in one resampling.
        x = crop_and_resize(x, params[:, :8].view(batch, 4, 2), (height, width), mode="bilinear", align_corners=True)
        x = torch.where(params[:, 8].bool().view(batch, 1, 1, 1), x.flip(-1), x)
        if self.rotation > 0:  # reflection padding: no black corners to give the angle away
            x = rotate(x, params[:, 9], padding_mode="reflection")
        if j > 0:
            x = adjust_brightness_accumulative(x, params[:, 10])
            x = adjust_contrast_with_mean_subtraction(x, params[:, 11])
            x = adjust_saturation_with_gray_subtraction(x, params[:, 12])
        if self.hue > 0:  # kornia takes the hue shift in radians
            x = adjust_hue(x, params[:, 13] * (2 * math.pi))
        return normalize(x.clamp(0.0, 1.0))

    def distorted(self, images: torch.Tensor, ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(distortions * B images, distortion-major; their labels, the ids repeated)."""
        if ids is None:
            raise ValueError(
                "exemplar discrimination needs ids (the images' data-set indices, its class labels); got ids=None"
            )
        if ids.shape != (images.shape[0],):
            raise ValueError(f"ids must have shape [{images.shape[0]}] (one per image), got {list(ids.shape)}")
        low, high = int(ids.min()), int(ids.max())  # free when ids are on the CPU, as the loop passes them
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"ids must lie in [0, num_classes={self.num_classes}), got values in [{low}, {high}]")
        views = torch.cat([self.distort(images) for _ in range(self.distortions)])
        labels = ids.long().to(images.device, non_blocking=True).repeat(self.distortions)
        return views, labels

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        views, labels = self.distorted(images, ids)
        logits = self.head(self.encoder(views)).float()  # float32 loss under autocast
        return PretextStep(F.cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels)})

    @torch.no_grad()
    def figure(self, images: torch.Tensor, ids: torch.Tensor | None = None, count: int = 3, shown: int = 5) -> Figure:
        """Each of a few images next to `shown` of its distortions (one surrogate class per row).

        With ids (the images' data-set indices) each distortion is titled with the predicted class.
        """
        with self.evaluating():
            images = images[:count]
            rows = images.shape[0]
            views = torch.cat([self.distort(images) for _ in range(shown)])  # distortion-major
            predicted = self.head(self.encoder(views)).float().argmax(dim=1) if ids is not None else None
        originals = to_unit(images.float()).permute(0, 2, 3, 1).cpu().numpy()
        pictures = to_unit(views.float()).permute(0, 2, 3, 1).cpu().numpy()
        fig = Figure(figsize=(1.8 * (shown + 1), 2.0 * rows + 0.5), layout="constrained")
        fig.suptitle("Exemplar discrimination: each row is one surrogate class (an image and its distortions)")
        axes = fig.subplots(rows, shown + 1, squeeze=False)
        for r in range(rows):
            label = f"class {int(ids[r])}" if ids is not None else f"image {r}"
            axes[r][0].imshow(originals[r])
            axes[r][0].set_title(f"original, {label}", fontsize=8)
            for d in range(shown):
                i = d * rows + r
                ax = axes[r][d + 1]
                ax.imshow(pictures[i])
                if predicted is None:
                    ax.set_title(f"distortion {d + 1}, {label}", fontsize=8)
                else:
                    right = int(predicted[i]) == int(ids[r])
                    ax.set_title(f"pred {int(predicted[i])}", fontsize=8, color="green" if right else "red")
            for ax in axes[r]:
                ax.axis("off")
        return fig
