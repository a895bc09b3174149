"""Video colorization by copying colours (Vondrick, Shrivastava, Fathi, Guadarrama & Murphy,
"Tracking Emerges by Colorizing Videos", ECCV 2018).

The encoder sees grey frames only. The colours of ``references`` earlier frames are given, and the
target frame (``target_gap`` frames after the last reference) must be coloured by pointing: each
target pixel attends to the reference pixels with similar features and copies their colour. Colour
is a free label that moves with the objects, so features that point to the right place act as a
tracker; the paper shows tracking of masks and poses emerge.

Details (from the paper, where not said otherwise):
- Colour as classes: ab of Lab cut into ``clusters`` (16) by k-means over pixels of the training
  clips (``prepare``: a seeded torch k-means on a sample of pixels). The centroids are a buffer, so
  they are saved and loaded with the task.
- Grey input: lightness L / 100 replicated to three channels and normalised like RGB frames, so the
  encoder is an ordinary RGB backbone (downstream gives it colour frames; grey-looking ones here).
- Features at 1/4 resolution (``workloads.video.features.feature_map``); each pixel's colour label
  is the majority cluster of the 4x4 pixels under it.
- The copy: A = softmax over all reference pixels of sim(target pixel, reference pixel) / temperature;
  the copied colour distribution is A times the references' one-hot clusters. The loss is the
  cross-entropy of that distribution against the target's own clusters. Here sim is the cosine of the
  features, not the paper's raw inner product, so a pixel is always most similar to a pixel with its
  own features (the paper's product can prefer a pixel with a longer feature vector).
  With cosine similarity the logits lie in [-1/T, 1/T], so at T = 0.5 the attention stays broad
  (measured on coloured squares over grey noise, SmallConvNet width 8, 60 steps: accuracy 0.46 -> 0.58
  at T = 0.5, 0.87 -> 0.95 at T = 0.1, 0.88 -> 0.95 at T = 0.05).
- Only the encoder's layers up to stride 4 learn from this task (the copy attends over their
  feature map); the deeper layers keep their initial weights (they are tied into the loss with weight
  0 so DistributedDataParallel sees every parameter used).
Metric "accuracy": the pixels whose most probable copied cluster is theirs (chance: 1 / clusters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from workloads.pretext.base import PretextStep
from workloads.pretext.checks import check_range
from workloads.pretext.color.lab import lab_to_rgb, rgb_to_lab
from workloads.video.dataset import VideoDataset
from workloads.video.features import feature_map
from workloads.video.tasks.base import (
    VideoTask,
    clip_normalize,
    clip_to_unit,
    frames_figure,
    zero_loss,
)

KMEANS_PIXELS = 20_000  # pixels sampled from the training clips for the k-means: plenty for 16 centres in 2-D
KMEANS_SEED = 0


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The index of each point's nearest centroid [M] (points [M, D], centroids [k, D]), from exact
    differences (D is 2 here; cdist switches to a matrix-product form that rounds for many points)."""
    return (points.unsqueeze(1) - centroids.unsqueeze(0)).square().sum(dim=2).argmin(dim=1)


def kmeans(points: torch.Tensor, k: int, iterations: int = 30, seed: int = KMEANS_SEED) -> torch.Tensor:
    """Points [M, D] -> k centroids [k, D]: k-means++ seeding, then Lloyd iterations; deterministic for a seed.
    A cluster left empty keeps its centroid."""
    g = torch.Generator().manual_seed(seed)
    points = points.float().cpu()
    centroids = points[torch.randint(len(points), (1,), generator=g)]
    for _ in range(1, k):  # k-means++: the next seed far from the chosen ones (probability ~ squared distance)
        d2 = (points.unsqueeze(1) - centroids.unsqueeze(0)).square().sum(dim=2).amin(dim=1)
        pick = torch.multinomial(d2, 1, generator=g) if d2.sum() > 0 else torch.randint(len(points), (1,), generator=g)
        centroids = torch.cat([centroids, points[pick]])
    for _ in range(iterations):
        assign = nearest(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def sample_ab(clips: torch.Tensor, count: int, seed: int = KMEANS_SEED) -> torch.Tensor:
    """uint8 clips [N, T, 3, H, W] -> the ab of ``count`` pixels drawn at random (seeded) [count, 2]."""
    g = torch.Generator().manual_seed(seed)
    N, T, _, H, W = clips.shape
    n, t, y, x = (torch.randint(s, (count,), generator=g) for s in (N, T, H, W))
    rgb = clips[n, t, :, y, x].float() / 255.0  # [count, 3]
    return rgb_to_lab(rgb.T.reshape(1, 3, count, 1))[0, 1:, :, 0].T


def copy_colors(target_feats: torch.Tensor, ref_feats: torch.Tensor, ref_labels_onehot: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Copy colours by attention. target_feats [B, C, h, w], ref_feats [B, R, C, h, w], ref_labels_onehot
    [B, R, K, h, w] -> the copied colour distribution [B, K, h, w] (softmax over all R h w reference
    pixels of cosine similarity / temperature, times their one-hot clusters)."""
    B, _, h, w = target_feats.shape
    with torch.autocast(target_feats.device.type, enabled=False):  # float32: a small temperature magnifies rounding
        target = F.normalize(target_feats.float().flatten(2), dim=1)  # [B, C, hw]
        refs = F.normalize(ref_feats.float().transpose(1, 2).flatten(2), dim=1)  # [B, C, R h w]
        attention = (target.transpose(1, 2) @ refs / temperature).softmax(dim=2)  # [B, hw, R h w]
        labels = ref_labels_onehot.float().transpose(1, 2).flatten(2).transpose(1, 2)  # [B, R h w, K]
        return (attention @ labels).transpose(1, 2).reshape(B, -1, h, w)


class VideoColorization(VideoTask):
    """Colour copying from reference frames by feature attention. Hyperparameters: see the module docstring."""

    def __init__(self, encoder: nn.Module, feature_dim: int, *, references: int = 3, clusters: int = 16,
                 temperature: float = 0.5, target_gap: int = 1):
        super().__init__(encoder)
        self.references = check_range("references", references, 1, 10_000, integer=True)
        self.clusters = check_range("clusters", clusters, 2, 10_000, integer=True)
        self.temperature = float(check_range("temperature", temperature, 0.0, 1e6, open_low=True))
        self.target_gap = check_range("target_gap", target_gap, 1, 10_000, integer=True)
        self.chance = 1.0 / self.clusters
        self.register_buffer("centroids", torch.zeros(self.clusters, 2))  # ab cluster centres, from prepare()
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def min_frames(self) -> int:
        return self.references + self.target_gap

    def prepare(self, train: VideoDataset) -> None:
        count = min(KMEANS_PIXELS, train.clips[:, :, 0].numel())
        centroids = kmeans(sample_ab(train.clips, count), self.clusters)
        self.centroids.copy_(centroids.to(self.centroids.device))
        self.fitted.fill_(True)

    def frames(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised clips -> the references then the target of each, in Lab [B, references + 1, 3, H, W]."""
        B, T = clips.shape[:2]
        start = torch.randint(0, T - self.min_frames + 1, (B,)).to(clips.device)
        offsets = torch.tensor([*range(self.references), self.references - 1 + self.target_gap], device=clips.device)
        picked = clip_to_unit(clips[torch.arange(B, device=clips.device).unsqueeze(1), start.unsqueeze(1) + offsets])
        return rgb_to_lab(picked.flatten(0, 1)).view(*picked.shape)

    def copy(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lab frames [B, R + 1, 3, H, W] -> (the target's copied distribution [B, K, h, w], its clusters [B, h, w])."""
        if not bool(self.fitted):
            raise RuntimeError("video_colorization has no colour clusters yet: call prepare(train) before training")
        B, F1 = lab.shape[:2]
        grey = clip_normalize((lab[:, :, :1] / 100.0).expand(-1, -1, 3, -1, -1))
        maps = feature_map(self.encoder, grey.flatten(0, 1))  # [B (R + 1), C, h, w]
        h, w = maps.shape[-2:]
        ab = lab[:, :, 1:].flatten(0, 1)  # [B (R + 1), 2, H, W]
        ids = nearest(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.centroids).view(B * F1, *ab.shape[-2:])
        onehot = F.one_hot(ids, self.clusters).permute(0, 3, 1, 2).float()
        majority = F.adaptive_avg_pool2d(onehot, (h, w)).argmax(dim=1).view(B, F1, h, w)  # the cluster under each feature
        refs = F.one_hot(majority[:, :-1], self.clusters).permute(0, 1, 4, 2, 3)  # [B, R, K, h, w]
        maps = maps.view(B, F1, *maps.shape[1:])
        return copy_colors(maps[:, -1], maps[:, :-1], refs, self.temperature), majority[:, -1]

    def forward(self, clips: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        self.check_clips(clips)
        probs, target = self.copy(self.frames(clips))
        loss = -probs.gather(1, target.unsqueeze(1)).clamp_min(1e-8).log().mean()  # the NLL of each target pixel
        loss = loss + zero_loss(self)  # the layers after stride 4 get no gradient; DDP must still see them used
        return PretextStep(loss, {"accuracy": (probs.detach().argmax(dim=1) == target).float().mean()})

    @torch.no_grad()
    def figure(self, clips: torch.Tensor, count: int = 4) -> Figure:
        """Per clip: the colour references, the grey target the encoder sees, its true colours (as clusters)
        and the colours copied to it (the expected ab of the copied distribution)."""
        with self.evaluating():
            lab = self.frames(clips[:count])
            probs, target = self.copy(lab)
        H, W = lab.shape[-2:]
        target_lab = lab[:, -1]
        copied_ab = F.interpolate(torch.einsum("bkhw,kc->bchw", probs, self.centroids), size=(H, W), mode="bilinear",
                                  align_corners=False)
        true_ab = F.interpolate(self.centroids[target].permute(0, 3, 1, 2), size=(H, W), mode="nearest")
        rows = []
        for i in range(len(lab)):
            l = target_lab[i:i + 1, :1]
            refs = lab_to_rgb(lab[i, :-1])
            shown = torch.cat([refs, lab_to_rgb(torch.cat([l, torch.zeros_like(l), torch.zeros_like(l)], 1)),
                               lab_to_rgb(torch.cat([l, true_ab[i:i + 1]], 1)), lab_to_rgb(torch.cat([l, copied_ab[i:i + 1]], 1))])
            accuracy = float((probs[i].argmax(dim=0) == target[i]).float().mean())
            captions = [f"reference {r}" for r in range(self.references)] + ["grey target", "true clusters",
                                                                              f"copied ({accuracy:.0%})"]
            rows.append((f"clip {i}", shown, captions))
        return frames_figure(f"Video colorization: colours copied from {self.references} references by attention", rows)
