"""The four video pretext tasks (issue 13) on small synthetic clips made here: their pieces (tuple
sampling, reversal, border cropping, rejection, colour copying, k-means, the simple tracker), the
stride-4 feature maps, every task's step on both sizes, the registry, and that frame order and
arrow of time learn an easy set."""
import io

import pytest
import torch
from matplotlib.figure import Figure

from workloads.data.normalization import Normalization
from workloads.models import SmallConvNet, build_backbone
from workloads.video.dataset import VideoDataset
from workloads.video.features import feature_map, feature_stride
from workloads.video.tasks.arrow_of_time import (
    crop_black_borders,
    has_cut,
    is_static,
    reverse,
)
from workloads.video.tasks.frame_order import (
    sample_tuples,
    select_windows,
    window_positions,
)
from workloads.video.tasks.registry import VIDEO_TASKS, build_video_task
from workloads.video.tasks.tracker import track_clips
from workloads.video.tasks.video_colorization import copy_colors, kmeans, sample_ab

NORM = Normalization((0.45, 0.45, 0.45), (0.25, 0.25, 0.25))


def moving_squares(n, T=8, H=32, speed=2, side=6, seed=0):
    """Clips in [0, 1] [n, T, 3, H, H]: a bright square moving right at ``speed`` px/frame over static
    noise (plus a little noise per frame), and the square's true (y, x) centres [n, T, 2]."""
    g = torch.Generator().manual_seed(seed)
    clips = (torch.rand(n, 1, 3, H, H, generator=g) * 0.5).repeat(1, T, 1, 1, 1)
    clips += 0.03 * torch.randn(n, T, 3, H, H, generator=g)
    centres = torch.zeros(n, T, 2)
    for i in range(n):
        y = int(torch.randint(8, H - side - 8, (1,), generator=g))
        for t in range(T):
            x = min(8 - side // 2 + speed * t, H - 8 - side // 2)
            clips[i, t, :, y:y + side, x:x + side] = 1.0
            centres[i, t] = torch.tensor([y + side / 2, x + side / 2])
    return clips.clamp(0, 1), centres


def as_dataset(unit):
    n = len(unit)
    return VideoDataset((unit * 255).round().to(torch.uint8), [f"c{i}" for i in range(n)], ["s"] * n, "hash")


def task_of(kind, width=4, **params):
    task = build_video_task(kind, params, "small_convnet", {"width": width})
    task.normalization = NORM
    return task


# -- the pieces ------------------------------------------------------------------------------------

def test_tuple_labels_match_the_orders():
    starts = torch.arange(200) % 7
    frames, labels = sample_tuples(starts, window=9, negatives_fraction=0.75, generator=torch.Generator().manual_seed(0))
    pos = window_positions(9)
    assert pos.tolist() == [0, 2, 4, 6, 8]
    offsets = frames - starts.unsqueeze(1)
    for (first, middle, last), label in zip(offsets.tolist(), labels.tolist()):
        in_order = first < middle < last or first > middle > last
        assert label == int(in_order)
        assert {first, last} == {int(pos[1]), int(pos[3])}  # b and d outside, in either order
        assert middle in (pos[0], pos[2], pos[4])
    assert 0.6 < 1 - labels.float().mean() < 0.9  # ~75% negatives


def test_window_selection_keeps_the_moving_windows():
    motion = torch.tensor([[0.0, 0.1, 0.5], [0.2, 0.3, 0.0]])
    clip, start = select_windows(motion, 0.5)
    assert sorted(zip(clip.tolist(), start.tolist())) == [(0, 2), (1, 0), (1, 1)]
    clip, start = select_windows(motion, 1.0)
    assert (clip.tolist(), start.tolist()) == ([0], [2])


def test_reverse_border_crop_static_and_cut():
    clip, _ = moving_squares(1, T=6)
    clip = clip[0]
    assert torch.equal(reverse(clip)[0], clip[-1]) and torch.equal(reverse(reverse(clip)), clip)
    barred = clip.clone()
    barred[:, :, :4] = 0.0  # letterbox bars top and bottom, a pillar on the left
    barred[:, :, -3:] = 0.0
    barred[:, :, :, :2] = 0.0
    cropped = crop_black_borders(barred)
    assert cropped.shape == clip.shape
    assert cropped[:, :, :2].amax() > 0.2 and cropped[:, :, -2:].amax() > 0.2 and cropped[:, :, :, :2].amax() > 0.2
    assert torch.equal(crop_black_borders(clip), clip)  # no bars: untouched
    still = clip[:1].repeat(6, 1, 1, 1)
    assert bool(is_static(still, 0.02)) and not bool(is_static(clip, 0.02))
    cut = torch.cat([clip[:3], 1.0 - clip[3:]])
    assert bool(has_cut(cut, 0.35)) and not bool(has_cut(clip, 0.35))
    assert is_static(torch.stack([still, clip]), 0.02).tolist() == [True, False]


def test_copied_colours_reproduce_the_reference_that_is_the_target():
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(2, 3, 16, 4, 4, generator=g)
    labels = torch.randint(0, 5, (2, 3, 4, 4), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 5).permute(0, 1, 4, 2, 3)
    probs = copy_colors(refs[:, 1], refs, onehot, temperature=0.01)
    assert probs.shape == (2, 5, 4, 4)
    assert torch.equal(probs.argmax(dim=1), labels[:, 1])
    assert torch.allclose(probs, onehot[:, 1].float(), atol=1e-4)
    assert torch.allclose(copy_colors(refs[:, 1], refs, onehot, 0.5).sum(dim=1), torch.ones(2, 4, 4))


def test_kmeans_gives_the_clusters_and_is_deterministic():
    clips, _ = moving_squares(4, T=4)
    ab = sample_ab(as_dataset(clips).clips, 2000)
    assert ab.shape == (2000, 2)
    first, again = kmeans(ab, 16, seed=3), kmeans(ab, 16, seed=3)
    assert first.shape == (16, 2) and torch.equal(first, again)
    assert torch.cdist(ab, first).argmin(dim=1).unique().numel() > 8  # the clusters are used
    task = task_of("video_colorization", clusters=6)
    task.prepare(as_dataset(clips))
    assert task.centroids.shape == (6, 2) and "centroids" in task.state_dict()


def test_simple_tracker_follows_a_moving_square():
    for H, T, speed in ((32, 8, 2), (64, 16, 3), (32, 16, 1)):
        clips, truth = moving_squares(4, T=T, H=H, speed=speed, seed=H + speed)
        tracks = track_clips(clips, patch=16)
        assert tracks.shape == (4, 1, T, 2)
        assert (tracks[:, 0] - truth).abs().max() <= 2.0
        assert torch.equal(track_clips(as_dataset(clips).clips, patch=16), track_clips(as_dataset(clips).clips, patch=16))


@pytest.mark.parametrize("backbone,kwargs", [("small_convnet", {"width": 4}), ("resnet18_cifar", {})])
def test_feature_maps_are_at_stride_4(backbone, kwargs):
    encoder = build_backbone(backbone, **kwargs)
    for size in (32, 64):
        assert feature_map(encoder, torch.randn(2, 3, size, size)).shape[-2:] == (size // 4, size // 4)
    assert feature_stride(encoder) == 4
    with pytest.raises(ValueError, match="feature_map"):
        feature_map(torch.nn.Linear(3, 3), torch.randn(1, 3, 32, 32))


# -- the tasks ---------------------------------------------------------------------------------------

SETTINGS = [  # (kind, params, draw its figure)
    ("frame_order", {}, True),
    ("arrow_of_time", {}, True),
    ("arrow_of_time", {"input": "frames", "crop_borders": False}, False),
    ("tracking", {"gap": 3}, True),
    ("tracking", {"cycle_consistency": True, "gap": 2}, False),
    ("video_colorization", {}, True),
]
METRICS = {"frame_order": {"accuracy", "balanced_accuracy"}, "arrow_of_time": {"accuracy", "rejected"},
           "tracking": {"triplet_accuracy"}, "video_colorization": {"accuracy"}}


@pytest.mark.parametrize("kind,params,draw", SETTINGS)
@pytest.mark.parametrize("H,T,B,width", [(32, 8, 6, 4), (64, 16, 4, 8)])
def test_each_task_steps_with_gradients_into_the_encoder(kind, params, draw, H, T, B, width):
    torch.manual_seed(0)
    unit, _ = moving_squares(B, T=T, H=H, speed=2, seed=H)
    task = task_of(kind, width=width, **params)
    assert T >= task.min_frames
    task.prepare(as_dataset(unit))
    clips = NORM.normalize(unit.flatten(0, 1)).view(unit.shape)
    step = task(clips, torch.arange(B))
    assert torch.isfinite(step.loss)
    step.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.encoder.parameters())
    expected = METRICS[kind] | ({"cycle_loss"} if params.get("cycle_consistency") else set())
    assert set(step.metrics) == expected
    assert all(not m.requires_grad and m.ndim == 0 and torch.isfinite(m) for m in step.metrics.values())
    if draw and H == 32:  # one figure per task
        figure = task.figure(clips[:2])
        assert isinstance(figure, Figure)
        figure.savefig(io.BytesIO(), format="png", dpi=40)
    with pytest.raises(ValueError, match="at least"):
        task(clips[:, : task.min_frames - 1], torch.arange(B))


def test_tracking_uses_the_data_set_tracks():
    unit, truth = moving_squares(4, T=8)
    data = as_dataset(unit)
    second = torch.tensor([24.0, 24.0]).expand(4, 8, 2).clone()  # a second, still object
    second[:, 5:] = float("nan")  # that leaves the frame: no triplet from it there
    data.tracks = torch.stack([truth, second], dim=1)
    task = task_of("tracking", gap=2)
    task.prepare(data)
    assert torch.allclose(task.tracks, data.tracks, equal_nan=True)
    clips = NORM.normalize(unit.flatten(0, 1)).view(unit.shape)
    for _ in range(5):
        clip, track, start, at, _, anchors, _ = task.triplets(clips, task.batch_tracks(clips, torch.arange(4)))
        assert torch.isfinite(at).all() and (track == 0).sum() == 4 and len(anchors) == 4 + (start + 2 < 5).sum()
        assert (start[clip[track == 1]] + 2 < 5).all()
    assert torch.isfinite(task(clips, torch.arange(4)).loss)
    with pytest.raises(ValueError, match="true or false"):
        task_of("tracking", cycle_consistency=1)
    assert task.min_frames == 3 and task_of("frame_order", window=7).min_frames == 7


def test_colorization_needs_prepare():
    unit, _ = moving_squares(2, T=4)
    with pytest.raises(RuntimeError, match="prepare"):
        task_of("video_colorization")(NORM.normalize(unit.flatten(0, 1)).view(unit.shape), torch.arange(2))


def test_registry_builds_each_kind_and_rejects_others():
    assert set(VIDEO_TASKS) == {"frame_order", "arrow_of_time", "tracking", "video_colorization"}
    for kind in VIDEO_TASKS:
        task = build_video_task(kind, {}, "small_convnet", {"width": 4})
        assert isinstance(task, VIDEO_TASKS[kind]) and isinstance(task.encoder, SmallConvNet)
    assert build_video_task("frame_order", {"window": 6}, "small_convnet", {"width": 4}).window == 6
    with pytest.raises(ValueError, match="frame_order, arrow_of_time, tracking, video_colorization"):
        build_video_task("jigsaw", {}, "small_convnet", {})
    with pytest.raises(ValueError, match="input"):
        build_video_task("arrow_of_time", {"input": "flow"}, "small_convnet", {"width": 4})


# -- learning an easy set ----------------------------------------------------------------------------

def brightness_ramps(n, T=8, H=32, seed=0, both_ways=True):
    """Clips in [0, 1]: static noise whose brightness changes by 0.06 a frame: up, or (both_ways) up
    or down at random, plus a little noise per frame. The order of frames, and the direction of time,
    are in the mean brightness."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 3, H, H, generator=g) * 0.4 + 0.1
    step = torch.full((n, 1, 1, 1, 1), 0.06)
    if both_ways:
        step = step * (torch.randint(0, 2, (n, 1, 1, 1, 1), generator=g) * 2 - 1)
    start = torch.where(step > 0, torch.zeros_like(step), -step * (T - 1))
    flicker = 0.02 * torch.randn(n, T, 3, H, H, generator=g)  # differences not uniform: BatchNorm sees some spread
    return (base + start + step * torch.arange(T).view(1, T, 1, 1, 1) + flicker).clamp(0, 1)


def held_out_accuracy(task, clips, seed=1):
    """On held-out clips in one batch, with the batch's BatchNorm statistics: after 25 steps the running
    averages still carry much of their initial values (seen: 45% in eval mode, 100% with batch statistics,
    both modes 100% by step 30)."""
    torch.manual_seed(seed)  # the same tuples and directions before and after training
    with torch.no_grad():
        return task(clips, None).metrics["accuracy"].item()


@pytest.mark.parametrize("kind,both_ways", [("frame_order", True), ("arrow_of_time", False)])
def test_a_few_steps_learn_an_easy_set(kind, both_ways):
    torch.manual_seed(0)
    task = task_of(kind, width=4)
    train = NORM.normalize(brightness_ramps(128, both_ways=both_ways).flatten(0, 1)).view(128, 8, 3, 32, 32)
    test = NORM.normalize(brightness_ramps(32, seed=9, both_ways=both_ways).flatten(0, 1)).view(32, 8, 3, 32, 32)
    before = held_out_accuracy(task, test)
    optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
    task.train()
    for step in range(25):
        batch = torch.arange(step * 16, step * 16 + 16) % 128
        out = task(train[batch], batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = held_out_accuracy(task, test)
    # above the model at init, and above guessing the majority class (75% of frame order's tuples are negatives)
    assert after > max(before, 0.75) + 0.05, (before, after)


def test_frame_order_balanced_accuracy_is_chance_for_a_constant_answer():
    from workloads.video.tasks.frame_order import balanced_accuracy

    labels = torch.tensor([0, 0, 0, 1])  # 3 shuffled, 1 in order (negatives_fraction 0.75)
    always_shuffled = torch.tensor([[1.0, 0.0]]).repeat(4, 1)
    assert float(balanced_accuracy(always_shuffled, labels)) == 0.5  # plain accuracy would be 0.75
    right = torch.nn.functional.one_hot(labels, 2).float()
    assert float(balanced_accuracy(right, labels)) == 1.0
