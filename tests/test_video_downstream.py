"""Label propagation and J (workloads.video.propagation), the video training epoch
(workloads.video.loop) and the video downstream scores (workloads.video.downstream), on tiny
hand-made clips whose right answers are known."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workloads.data import CIFAR10, ImageDataset, Normalization
from workloads.models.backbones import SmallConvNet
from workloads.pretext.base import PretextStep, PretextTask
from workloads.video import propagation
from workloads.video.dataset import VideoDataset
from workloads.video.downstream import video_scores
from workloads.video.loop import video_train_epoch
from workloads.video.propagation import (
    copy_first_frame_j,
    j_mean,
    propagate,
    region_similarity,
)

# --- region similarity ---------------------------------------------------------------------------

def test_region_similarity_is_the_hand_computed_iou():
    true = torch.zeros(2, 4, 4, dtype=torch.long)
    true[:, :2, :2] = 1  # object 1: 4 pixels, top left
    true[:, 2:, 2:] = 2  # object 2: 4 pixels, bottom right
    pred = true.clone()
    pred[0, 3, 3] = 0  # frame 0: object 2 loses a pixel ...
    pred[0, 0, 3] = 2  # ... and gains a wrong one: intersection 3, union 5
    pred[1][pred[1] == 2] = 0  # frame 1: object 2 missed entirely: 0
    pred[1, 0, 2] = 3  # and an object 3 that is not there: 0
    assert region_similarity(pred[0], true[0]) == pytest.approx((1.0 + 3 / 5) / 2)
    assert region_similarity(pred[1], true[1]) == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert region_similarity(pred, true) == pytest.approx((1.0 + 3 / 5 + 1.0 + 0.0 + 0.0) / 5)


def test_region_similarity_skips_objects_absent_from_both():
    true = torch.zeros(2, 4, 4, dtype=torch.long)
    true[0, :2, :2] = 1  # object 1 only in frame 0; frame 1 is background in both
    assert region_similarity(true.clone(), true) == 1.0
    assert math.isnan(region_similarity(true[1], true[1]))  # nothing at all to score
    with pytest.raises(ValueError):
        region_similarity(true.float(), true.float())


# --- propagation ---------------------------------------------------------------------------------

BACKGROUND, SQUARE = (40, 60, 220), (230, 40, 30)  # different directions in RGB: colour features tell them apart
SIDE, STEP = 24, 5  # the square's side and its motion per frame, pixels (neither a multiple of the stride 4)


def moving_square(frames: int = 6, size: int = 64, side: int = SIDE, step: int = STEP, background=BACKGROUND,
                  square=SQUARE):
    """uint8 clip [T, 3, H, W] and its mask [T, H, W]: a side x side square moving right by `step` px per frame.

    The square is 6 feature cells wide: at stride 4, labels upsampled bilinearly from the grid get its
    border right to a pixel or two, so J can reach 0.9 (an 8-px square peaks near 0.8 even when tracked)."""
    clip = torch.tensor(background, dtype=torch.uint8).view(1, 3, 1, 1).repeat(frames, 1, size, size)
    mask = torch.zeros(frames, size, size, dtype=torch.long)
    top = (size - side) // 2 - 2  # not on the 4-px grid either
    for t in range(frames):
        x = 2 + step * t
        clip[t, :, top : top + side, x : x + side] = torch.tensor(square, dtype=torch.uint8).view(3, 1, 1)
        mask[t, top : top + side, x : x + side] = 1
    return clip, mask


def normalised(clip_uint8: torch.Tensor, norm: Normalization = CIFAR10) -> torch.Tensor:
    return norm.normalize(clip_uint8.float() / 255.0)


class ColourFeatures(nn.Module):
    """An 'encoder' whose feature map is the image's colour, averaged over 4x4 cells (stride 4, as feature_map)."""

    def forward(self, x):
        return F.avg_pool2d(x, 4).mean((2, 3))


@pytest.fixture
def colour_features(monkeypatch):
    real = propagation.feature_map
    monkeypatch.setattr(propagation, "feature_map",
                        lambda encoder, x: F.avg_pool2d(x, 4) if isinstance(encoder, ColourFeatures) else real(encoder, x))
    return ColourFeatures()


def test_copy_first_frame_j_by_hand():
    _, mask = moving_square()
    still = mask[:1].repeat(6, 1, 1)
    assert copy_first_frame_j(still[None]) == 1.0
    # Shifted by d < SIDE pixels the square overlaps itself on (SIDE - d) columns: IoU (SIDE - d) / (SIDE + d).
    by_hand = [(SIDE - d) / (SIDE + d) if d < SIDE else 0.0 for d in (STEP * t for t in range(1, 6))]
    assert copy_first_frame_j(mask[None]) == pytest.approx(sum(by_hand) / 5)
    assert copy_first_frame_j(torch.stack([still, mask])) == pytest.approx((1.0 + sum(by_hand) / 5) / 2)


def test_colour_features_propagate_a_moving_square(colour_features):
    clip, mask = moving_square()
    pred = propagate(colour_features, normalised(clip), mask[0])
    assert pred.shape == mask.shape and pred.dtype == torch.long
    assert torch.equal(pred[0], mask[0])
    j = region_similarity(pred[1:], mask[1:])
    assert j > 0.9
    assert j > copy_first_frame_j(mask[None]) + 0.5  # the copy: 0.28 (by hand above)
    assert j_mean(colour_features, normalised(clip)[None], mask[None]) == pytest.approx(j)
    # A window of 2 grid cells (8 px) still reaches a square that moves 5 px a frame.
    assert j_mean(colour_features, normalised(clip)[None], mask[None], radius=2, topk=3, context=2) > 0.9


def test_propagation_radius_excludes_far_sources(colour_features):
    # The square jumps 32 px (8 grid cells, clear of where it was): with a 1-cell window its pixels
    # see only background in the source and lose the label; without a window they find it again.
    clip, mask = moving_square(frames=2, step=32)
    far = propagate(colour_features, normalised(clip), mask[0], radius=None)
    near = propagate(colour_features, normalised(clip), mask[0], radius=1)
    assert region_similarity(far[1], mask[1]) > 0.9
    assert region_similarity(near[1], mask[1]) < 0.1


# --- the training epoch ---------------------------------------------------------------------------

class ToyVideoTask(PretextTask):
    """Predicts the first frame's mean colour from the last frame; remembers what it was fed."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        self.head = nn.Linear(8, 3)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, clips, ids=None):
        self.seen.append((clips.detach().clone(), ids.clone()))
        loss = F.mse_loss(self.head(self.encoder(clips[:, -1])), clips[:, 0].mean((2, 3)))
        return PretextStep(loss, {"id_mean": ids.float().mean(), "mse": loss.detach()})


def ramp_clips(n: int = 16, frames: int = 3, size: int = 8) -> torch.Tensor:
    """uint8 [N, T, 3, H, W]: a left-to-right ramp (a flip changes it) of a random colour per clip,
    brighter in each later frame (the frames differ, so mixing flipped and unflipped frames shows)."""
    g = torch.Generator().manual_seed(0)
    colour = torch.rand(n, 1, 3, 1, 1, generator=g)
    ramp = torch.linspace(0.2, 1.0, size).view(1, 1, 1, 1, size)
    time = torch.linspace(0.6, 1.0, frames).view(1, frames, 1, 1, 1)
    return (255 * colour * ramp * time).expand(n, frames, 3, size, size).round().to(torch.uint8).contiguous()


def test_video_train_epoch_flips_whole_clips_and_averages_metrics():
    torch.manual_seed(0)
    clips = ramp_clips()
    task = ToyVideoTask()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    indices = torch.randperm(len(clips))[:14]  # 14 clips, batch 4: 3 full steps, 2 clips dropped
    stats, metrics = video_train_epoch(task, optimizer, None, clips, indices, 4, torch.device("cpu"))
    assert stats.steps == 3 and len(task.seen) == 3
    assert math.isfinite(stats.loss) and stats.loss > 0 and stats.lr == 0.1
    assert stats.seconds > 0 and stats.images_per_s > 0
    assert metrics["id_mean"] == pytest.approx(float(indices[:12].float().view(3, 4).mean(1).mean()))
    assert metrics["mse"] == pytest.approx(stats.loss)
    flips = []
    for seen, ids in task.seen:
        assert seen.shape == (4, 3, 3, 8, 8)
        for clip, i in zip(seen, ids):
            plain = normalised(clips[i], task.normalization)
            flipped = plain.flip(-1)
            assert torch.allclose(clip, plain, atol=1e-5) or torch.allclose(clip, flipped, atol=1e-5)
            flips.append(torch.allclose(clip, flipped, atol=1e-5))
    assert 0 < sum(flips) < len(flips)  # both happened
    task.seen.clear()
    video_train_epoch(task, optimizer, None, clips, indices, 4, torch.device("cpu"), augment=False)
    assert all(torch.allclose(c, normalised(clips[i], task.normalization), atol=1e-5)
               for seen, ids in task.seen for c, i in zip(seen, ids))
    with pytest.raises(ValueError):
        video_train_epoch(task, optimizer, None, clips, indices[:3], 4, torch.device("cpu"))


def test_video_train_epoch_lowers_the_loss():
    torch.manual_seed(1)
    clips = ramp_clips(n=16)
    task = ToyVideoTask()
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-2)
    steps = []
    losses = [video_train_epoch(task, optimizer, None, clips, torch.randperm(16), 4, torch.device("cpu"),
                                on_step=lambda step, loss: steps.append(step))[0].loss for _ in range(6)]
    assert steps[:5] == [0, 1, 2, 3, 0] and len(steps) == 24
    assert losses[-1] < 0.5 * losses[0]


# --- the downstream scores ------------------------------------------------------------------------

def two_class_videos(n: int, seed: int, masks: bool = True, labels: bool = True) -> VideoDataset:
    """Clips of a green square moving over a reddish (class 0) or bluish (class 1) background, with
    per-clip brightness jitter and start positions, so the classes differ by colour alone."""
    g = torch.Generator().manual_seed(seed)
    clips, all_masks, ys = [], [], []
    for i in range(n):
        y = i % 2
        jitter = int(torch.randint(-30, 31, (1,), generator=g))
        background = (180 + jitter, 60, 40) if y == 0 else (40, 60, 180 + jitter)
        clip, mask = moving_square(frames=4, size=32, side=8, step=2, background=background, square=(40, 200, 60))
        shift = int(torch.randint(0, 8, (1,), generator=g))
        clips.append(clip.roll(shift, dims=-2))
        all_masks.append(mask.roll(shift, dims=-2))
        ys.append(y)
    names = [f"v{seed}_{i}#0" for i in range(n)]
    return VideoDataset(torch.stack(clips), names, [name.split("#")[0] for name in names], "hash",
                        torch.tensor(ys) if labels else None, ["red", "blue"] if labels else [],
                        torch.stack(all_masks).to(torch.uint8) if masks else None)


def frames_as_images(videos: VideoDataset) -> ImageDataset:
    images = videos.clips[:, 0]
    return ImageDataset(images, videos.labels, videos.classes, "frames", "hash")


def test_video_scores_keys_and_a_clip_knn_above_chance():
    torch.manual_seed(0)
    encoder = SmallConvNet(width=8)
    train, test = two_class_videos(12, seed=1), two_class_videos(8, seed=2)
    norm = Normalization.of_images(train.clips.flatten(0, 1))
    scores = video_scores(encoder, norm, train=train, test=test, images_train=frames_as_images(train),
                          images_test=frames_as_images(test), knn_k=5, max_clips=2,
                          propagation={"topk": 3, "context": 2})
    assert set(scores) == {"downstream/propagation/j_mean", "baseline/copy_first_frame/j_mean",
                           "downstream/clip_knn_top1", "downstream/clip_linear_top1", "downstream/knn_top1"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["baseline/copy_first_frame/j_mean"] == pytest.approx(copy_first_frame_j(test.masks[:2]))
    assert scores["downstream/clip_knn_top1"] >= 0.9  # chance: 0.5
    assert scores["downstream/clip_linear_top1"] >= 0.9
    assert scores["downstream/knn_top1"] >= 0.9
    bare = video_scores(encoder, norm, train=two_class_videos(2, 3, labels=False), test=two_class_videos(2, 4, masks=False))
    assert bare == {}
    empty = two_class_videos(2, 5)
    empty.masks.zero_()  # masks, but no object in them: nothing to propagate, no J (rather than NaN)
    assert video_scores(encoder, norm, train=train, test=empty).keys() == {"downstream/clip_knn_top1",
                                                                            "downstream/clip_linear_top1"}
