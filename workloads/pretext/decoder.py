"""A small image decoder for the generative pretext tasks: features [B, D] -> image [B, C, size, size].

The backbones pool globally, so colorization, the autoencoders and the context encoder decode from
the feature vector, as the context encoder's channel-wise fully connected bottleneck does (Pathak et
al. 2016): every output pixel can depend on the whole input, and the encoder must put what the
decoder needs into the pooled features downstream evaluation uses.

Linear -> [4 * width, 4, 4] -> blocks of (2x nearest upsampling, 3x3 conv, BN, ReLU), halving the
channels down to ``width``, until ``size`` -> 1x1 conv to ``out_channels`` (no activation: the
outputs are logits or normalised values). Nearest upsampling plus conv avoids the checkerboard
artefacts of transposed convolutions. Asked for another output size (images larger than ``size``),
it resizes its output bilinearly.

Also ``image_rows_figure``, the figure the generative tasks share.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageDecoder(nn.Module):
    def __init__(self, feature_dim: int, out_channels: int, size: int = 32, width: int = 64):
        super().__init__()
        steps = (size // 4).bit_length() - 1
        if size < 4 or 4 * 2**steps != size:
            raise ValueError(f"size must be 4 times a power of 2 (4, 8, 16, 32, 64, ...), got {size!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        channels = [max(width, (4 * width) >> i) for i in range(steps + 1)]
        self.size, self.start = size, channels[0]
        self.fc = nn.Sequential(nn.Linear(feature_dim, channels[0] * 16), nn.BatchNorm1d(channels[0] * 16), nn.ReLU(inplace=True))
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels[-1], out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.blocks(self.fc(features).view(len(features), self.start, 4, 4))
        x = self.out(x)
        if out_size is not None and tuple(out_size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
        return x


def image_rows_figure(rows: list[tuple[str, torch.Tensor]], cell: float = 1.1):
    """A figure of image rows, each (title, RGB in [0, 1] [n, 3, H, W]), for the tasks' figure()."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global state, safe under the Agg backend
    )

    n = max(len(images) for _, images in rows)
    fig = Figure(figsize=(cell * n, (cell + 0.25) * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(images):
                ax.imshow(images[c].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        axes[r][0].set_title(title, loc="left", fontsize=8)
    return fig

