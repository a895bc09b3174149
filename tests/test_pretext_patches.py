"""Patch pretext tasks: the 3x3 patch geometry and its measures against shortcuts, relative position
(Doersch et al. 2015) and jigsaw (Noroozi & Favaro 2016): inputs, labels, the permutation set,
figures, and a tiny learning run each on sample images (pure torch, CPU)."""
import io
import itertools

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from pretext_helpers import small_task, train

from workloads.pretext.base import to_unit
from workloads.pretext.patches.grid import (
    COLOR_NOISE,
    PatchGrid,
    crop_patches,
    drop_colors,
    resize_to_grid,
)
from workloads.pretext.patches.jigsaw import (
    Jigsaw,
    _greedy_permutations,
    maximal_hamming_permutations,
    shuffle_tiles,
)
from workloads.pretext.patches.relative_position import NEIGHBOURS, RelativePosition

ALL_POSITIONS = torch.arange(9)
OFF = dict(downsample_p=0.0, color_drop_p=0.0, grayscale_p=0.0, normalize_patches=False)

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def mean_accuracy(task, images, draws):
    """Accuracy over `draws` fresh draws of pairs/puzzles from the same images, in eval mode."""
    task.eval()
    torch.manual_seed(123)
    accuracy = torch.stack([task(images).metrics["accuracy"] for _ in range(draws)]).mean()
    task.train()
    return float(accuracy)


# --- patch geometry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid_size, gap, jitter",
    [(96, 8, 3), (96, 8, 4), (96, 0, 0), (96, 8, 0), (96, 2, 1), (96, 24, 12), (48, 8, 4), (33, 3, 1)],
)
def test_patches_stay_inside_the_image_and_their_own_cell(grid_size, gap, jitter):
    torch.manual_seed(0)
    grid = PatchGrid(grid_size, gap, jitter, **OFF)
    cell, size = grid_size // 3, grid_size // 3 - gap
    assert grid.patch_size == size
    positions = ALL_POSITIONS.repeat(200, 1)
    patches, corners = grid(torch.randn(200, 3, 32, 32), positions)
    assert patches.shape == (200, 9, 3, size, size)
    top, left = corners[..., 0], corners[..., 1]
    assert top.min() >= 0 and left.min() >= 0
    assert (top + size).max() <= grid_size and (left + size).max() <= grid_size
    # Inside its own cell (so patches never overlap), and the cell is the requested position.
    row, col = positions // 3, positions % 3
    assert (top >= row * cell).all() and (top + size <= (row + 1) * cell).all()
    assert (left >= col * cell).all() and (left + size <= (col + 1) * cell).all()
    # The jitter covers its whole range [-jitter, jitter] around the centred position.
    offset = corners - torch.stack([row, col], dim=-1) * cell - gap // 2
    assert offset.min() == -jitter and offset.max() == jitter


def test_patch_pixels_are_the_box_of_the_grid_image():
    torch.manual_seed(0)
    # Pixel values that say where they are: channel 0 = row, channel 1 = column in the 96-px grid image.
    rows, cols = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    coded = torch.stack([rows, cols, torch.randn(96, 96)]).expand(4, 3, 96, 96)
    grid = PatchGrid(96, 8, 4, **OFF)
    positions = torch.randint(0, 9, (4, 5))
    patches, corners = grid(coded, positions)
    assert torch.equal(patches[:, :, 0, 0, 0], corners[..., 0].float())
    assert torch.equal(patches[:, :, 1, 0, 0], corners[..., 1].float())
    assert torch.equal(patches[:, :, 0, -1, 0] - patches[:, :, 0, 0, 0], torch.full((4, 5), 23.0))
    # 32-px images: the same box of the bilinear 96-px resize.
    x = torch.randn(4, 3, 32, 32)
    patches, corners = grid(x, positions)
    resized = resize_to_grid(x, 96)
    for b in range(4):
        for k in range(5):
            t, l = corners[b, k].tolist()
            assert torch.equal(patches[b, k], resized[b, :, t : t + 24, l : l + 24])


def test_resize_to_grid_is_bilinear_without_antialias_when_upsampling():
    x = torch.randn(2, 3, 32, 32)
    expected = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(resize_to_grid(x, 96), expected)
    assert resize_to_grid(expected, 96) is expected


def test_crop_patches_per_sample_boxes():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    tops, lefts = torch.tensor([[0, 3], [1, 2]]), torch.tensor([[1, 0], [4, 2]])
    out = crop_patches(x, tops, lefts, 2)
    assert out.shape == (2, 2, 1, 2, 2)
    assert torch.equal(out[0, 1, 0], x[0, 0, 3:5, 0:2])
    assert torch.equal(out[1, 0, 0], x[1, 0, 1:3, 4:6])


def test_colour_dropping_keeps_exactly_one_channel():
    x = torch.randn(64, 3, 32, 32)
    torch.manual_seed(1)
    plain, corners = PatchGrid(96, 8, 3, **OFF)(x, ALL_POSITIONS.repeat(64, 1))
    torch.manual_seed(1)  # same corners: every random choice is drawn whatever is switched on
    dropped, corners2 = PatchGrid(96, 8, 3, **{**OFF, "color_drop_p": 1.0})(x, ALL_POSITIONS.repeat(64, 1))
    assert torch.equal(corners, corners2)
    same = (dropped == plain).flatten(3).all(dim=3)  # [B, 9, 3]: channel identical to the input's
    assert (same.sum(dim=2) == 1).all()
    # The two dropped channels are faint noise: 1/100 of the kept channel's std.
    kept_std = plain.flatten(3).std(dim=3)[same]
    noise_std = dropped.flatten(3).std(dim=3)[~same].view(-1, 2)
    ratio = noise_std / kept_std[:, None]
    assert ratio.min() > 0.5 * COLOR_NOISE and ratio.max() < 1.5 * COLOR_NOISE
    # Every channel gets kept sometimes.
    assert same.flatten(0, 1).any(dim=0).all()


def test_colour_drop_probability_and_direct_call():
    x = torch.randn(6, 3, 8, 8)
    dropped, keep = torch.tensor([True, True, True, False, False, False]), torch.tensor([0, 1, 2, 0, 1, 2])
    out = drop_colors(x, dropped, keep)
    for n, keep in enumerate([0, 1, 2]):
        assert torch.equal(out[n, keep], x[n, keep])
        assert all(not torch.equal(out[n, c], x[n, c]) for c in range(3) if c != keep)
    assert torch.equal(out[3:], x[3:])
    torch.manual_seed(0)
    plain, _ = PatchGrid(96, 8, 0, **OFF)(torch.randn(200, 3, 32, 32), ALL_POSITIONS[:1].repeat(200, 1))
    torch.manual_seed(0)
    half_grid = PatchGrid(96, 8, 0, **{**OFF, "color_drop_p": 0.5})
    half, _ = half_grid(torch.randn(200, 3, 32, 32), ALL_POSITIONS[:1].repeat(200, 1))
    untouched = (half == plain).flatten(1).all(dim=1).float().mean()
    assert 0.35 < untouched < 0.65


def test_downsample_upsample_changes_patches_but_keeps_their_size():
    x = torch.randn(16, 3, 32, 32)
    positions = ALL_POSITIONS.repeat(16, 1)
    torch.manual_seed(2)
    plain, _ = PatchGrid(96, 8, 3, **OFF)(x, positions)
    torch.manual_seed(2)
    low, _ = PatchGrid(96, 8, 3, **{**OFF, "downsample_p": 1.0})(x, positions)
    assert low.shape == plain.shape == (16, 9, 3, 24, 24)
    assert not (low == plain).flatten(2).all(dim=2).any()  # every patch changed
    # Smoother: less energy in neighbouring-pixel differences.
    assert low.diff(dim=-1).abs().mean() < 0.8 * plain.diff(dim=-1).abs().mean()
    torch.manual_seed(2)
    none, _ = PatchGrid(96, 8, 3, **{**OFF, "downsample_p": 0.0})(x, positions)
    assert torch.equal(none, plain)


def test_grayscale_and_patch_normalisation():
    x = torch.randn(8, 3, 32, 32)
    patches, _ = PatchGrid(96, 8, 3, **{**OFF, "grayscale_p": 1.0})(x, ALL_POSITIONS.repeat(8, 1))
    unit = to_unit(patches.flatten(0, 1))
    assert torch.allclose(unit[:, 0], unit[:, 1], atol=1e-5) and torch.allclose(unit[:, 1], unit[:, 2], atol=1e-5)
    patches, _ = PatchGrid(96, 8, 3, **{**OFF, "normalize_patches": True})(x, ALL_POSITIONS.repeat(8, 1))
    flat = patches.flatten(2)
    assert flat.mean(dim=2).abs().max() < 1e-4 and (flat.std(dim=2) - 1).abs().max() < 1e-3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(grid_size=95), "grid_size"),
        (dict(grid_size=21), "grid_size"),
        (dict(gap=-1), "gap"),
        (dict(gap=25), "gap"),  # patches of 7 px
        (dict(gap=8, jitter=5), "jitter"),  # would leave its cell
        (dict(gap=0, jitter=1), "jitter"),
        (dict(downsample_p=1.5), "downsample_p"),
        (dict(color_drop_p=-0.1), "color_drop_p"),
        (dict(grayscale_p=True), "grayscale_p"),
        (dict(normalize_patches=1), "normalize_patches"),
    ],
)
def test_patch_grid_validates_its_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PatchGrid(**kwargs)


# --- relative position ------------------------------------------------------------------------


def test_relative_position_labels_match_the_neighbour_position():
    torch.manual_seed(0)
    task = small_task(RelativePosition)
    patches, labels, corners = task.pairs(torch.randn(400, 3, 32, 32))
    assert patches.shape == (400, 2, 3, 24, 24) and labels.shape == (400,)
    assert sorted(labels.unique().tolist()) == list(range(8))
    cell = corners.div(32, rounding_mode="floor")  # [B, 2, (row, col)]
    assert (cell[:, 0] == 1).all()  # the first patch is the centre
    neighbour = torch.tensor(NEIGHBOURS)[labels]
    assert torch.equal(cell[:, 1, 0], neighbour // 3) and torch.equal(cell[:, 1, 1], neighbour % 3)
    assert task.chance == 1 / 8


def test_relative_position_forward_under_bf16_autocast():
    torch.manual_seed(0)
    task = small_task(RelativePosition)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task(torch.randn(8, 3, 32, 32))
    assert out.loss.dtype == torch.float32 and out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert task.encoder.features[0][0].weight.grad is not None
    accuracy = out.metrics["accuracy"]
    assert not accuracy.requires_grad and 0.0 <= float(accuracy) <= 1.0
    with pytest.raises(ValueError, match="hidden"):
        small_task(RelativePosition, hidden=-1)
    with pytest.raises(ValueError, match="jitter"):
        small_task(RelativePosition, gap=4, jitter=3)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        task(torch.randn(8, 1, 32, 32))


@pytest.mark.parametrize("training", [True, False])
def test_relative_position_figure_keeps_mode_and_rng(training):
    task = small_task(RelativePosition).train(training)
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(5)
    fig = task.figure(x)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))  # the figure's draws do not shift training's
    assert isinstance(fig, Figure) and task.training is training
    assert len(fig.axes) == 6 and "true" in fig.axes[3].get_title() and "pred" in fig.axes[3].get_title()
    fig.savefig(io.BytesIO(), format="png", dpi=30)  # it renders


def test_relative_position_learns_on_sample_images(images):
    torch.manual_seed(0)
    task = small_task(RelativePosition, width=8)  # defaults: gap, jitter and colour dropping on
    before = mean_accuracy(task, images, 4)
    train(task, images, steps=100, lr=2e-3)
    after = mean_accuracy(task, images, 4)  # 1024 pairs: chance gives 0.125 +- 0.010
    assert after > 1 / 8 + 0.04 and after > before + 0.03, (before, after)  # measured 0.19-0.21 over seeds


# --- jigsaw -----------------------------------------------------------------------------------


def test_permutation_set_size_distinct_and_minimum_hamming_distance():
    perms, distances = maximal_hamming_permutations(100, 0)
    assert perms.shape == (100, 9) and perms.dtype == torch.long
    assert torch.equal(perms.sort(dim=1).values, torch.arange(9).expand(100, 9))  # permutations
    assert len({tuple(p) for p in perms.tolist()}) == 100
    pairwise = (perms[:, None] != perms[None]).sum(-1)
    minimum = int(pairwise[~torch.eye(100, dtype=torch.bool)].min())
    # Farthest-point greedy: distances never increase, the last one is the set's minimum distance...
    assert (distances[1:] <= distances[:-1]).all() and int(distances[-1]) == minimum
    assert minimum == 6  # measured: the paper's total-distance rule alone gives 2
    assert float(pairwise.sum()) / (100 * 99) > 8.0  # and the paper's high average is kept
    # ...and no permutation left out is farther than that from the set (else it would have been picked).
    everything = np.array(list(itertools.permutations(range(9))), dtype=np.uint8)
    chosen = perms.numpy().astype(np.uint8)
    nearest = np.full(len(everything), 9, dtype=np.uint8)
    for p in chosen:
        np.minimum(nearest, (everything != p).sum(axis=1, dtype=np.uint8), out=nearest)
    assert nearest.max() <= minimum
    # Deterministic given the seed; the seed matters.
    small = maximal_hamming_permutations(10, 0)[0]
    assert torch.equal(_greedy_permutations.__wrapped__(10, 0)[0], small)  # rebuilt, not cached
    assert torch.equal(small, perms[:10])  # greedy: a smaller set is a prefix of a larger one
    assert not torch.equal(maximal_hamming_permutations(10, 1)[0], small)


@pytest.mark.parametrize("size, minimum", [(2, 9), (10, 8)])
def test_small_permutation_sets(size, minimum):
    perms, distances = maximal_hamming_permutations(size, 0)
    pairwise = (perms[:, None] != perms[None]).sum(-1)
    assert len(perms) == size
    assert int(pairwise[~torch.eye(size, dtype=torch.bool)].min()) == minimum == int(distances[-1])


def test_jigsaw_unshuffling_by_the_label_restores_the_grid_order():
    torch.manual_seed(0)
    # Measures whose output does not depend on the draw are off, so the tiles are the same every call.
    task = small_task(Jigsaw, permutations=10, jitter=0, grayscale_p=0.0, normalize_tiles=False)
    x = torch.randn(32, 3, 32, 32)
    tiles, _ = task.grid(x, ALL_POSITIONS.repeat(32, 1))
    shuffled, labels = task.puzzles(x)
    perms = task.permutation_set[labels]
    assert shuffled.shape == (32, 9, 3, 24, 24) and not torch.equal(shuffled, tiles)
    assert torch.equal(shuffled[torch.arange(32), 3], tiles[torch.arange(32), perms[:, 3]])  # slot i <- tile perm[i]
    assert torch.equal(shuffle_tiles(shuffled, perms.argsort(dim=1)), tiles)
    assert labels.min() >= 0 and labels.max() < 10 and len(labels.unique()) > 5


def test_jigsaw_forward_under_bf16_autocast_and_its_parameters():
    torch.manual_seed(0)
    task = small_task(Jigsaw, permutations=12)
    assert task.chance == 1 / 12 and task.permutation_set.shape == (12, 9)
    assert "permutation_set" in task.state_dict()  # checkpoints carry the classes' meaning
    assert task.head[-1].out_features == 12 and task.head[0].in_features == 9 * task.encoder.feature_dim
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task(torch.randn(6, 3, 32, 32))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert not out.metrics["accuracy"].requires_grad
    for kwargs, name in [
        (dict(permutations=1), "permutations"),
        (dict(permutations=1001), "permutations"),
        (dict(permutation_seed=-1), "permutation_seed"),
        (dict(grayscale_p=2.0), "grayscale_p"),
        (dict(hidden=1.5), "hidden"),
    ]:
        with pytest.raises(ValueError, match=name):
            small_task(Jigsaw, **kwargs)


@pytest.mark.parametrize("training", [True, False])
def test_jigsaw_figure_keeps_mode(training):
    task = small_task(Jigsaw, permutations=10).train(training)
    fig = task.figure(torch.randn(2, 3, 32, 32))
    assert isinstance(fig, Figure) and task.training is training
    assert len(fig.axes) == 6 and "true #" in fig.axes[2].get_title() and "pred #" in fig.axes[2].get_title()
    fig.savefig(io.BytesIO(), format="png", dpi=30)  # it renders


def test_jigsaw_learns_on_sample_images(images):
    torch.manual_seed(0)
    task = small_task(Jigsaw, width=8, permutations=10)
    before = mean_accuracy(task, images, 2)
    train(task, images, steps=25)
    after = mean_accuracy(task, images, 2)
    assert after > 0.1 + 0.25 and after > before + 0.2, (before, after)  # measured 0.68-0.73 over seeds
