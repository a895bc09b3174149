"""workloads.evaluate: answers known by construction."""

import math
import time

import pytest
import torch
from torch import nn

from workloads.data import Normalization, active_normalization
from workloads.evaluate import (
    alignment,
    extract_features,
    knn_accuracy,
    linear_probe_accuracy,
    uniformity,
)
from workloads.evaluate.linear_probe import (
    WEIGHT_DECAYS,
    fit_linear_probe,
    select_weight_decay,
)


def _clusters(n_per_class, num_classes, dim, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(num_classes, dim) * 10.0
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centers[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


# ---------------------------------------------------------------- kNN


def test_knn_separable_clusters_is_perfect():
    train_x, train_y = _clusters(50, 5, 16, spread=0.5, seed=0)
    test_x, test_y = _clusters(20, 5, 16, spread=0.5, seed=1)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20) == 1.0


def test_knn_weighted_vote_hand_computed():
    # Test point (1, 0), label 0. Training points (norms differ: features are normalised inside):
    #   (2, 0)     label 0 -> cosine sim 1.0
    #   (0.6, 0.8) label 1 -> sim 0.6
    #   (1.2, 1.6) label 1 -> sim 0.6  (same direction, norm 2)
    #   (-3, 0)    label 0 -> sim -1.0 (not among the k=3 nearest)
    # tau = 0.1: class 0 gets e^(1/0.1) = e^10 = 22026.5; class 1 gets 2 e^6 = 806.9 -> predicts 0 (correct).
    # tau = 1:   class 0 gets e^1 = 2.718;  class 1 gets 2 e^0.6 = 3.644       -> predicts 1 (wrong),
    #            so the minority-but-closer neighbour only wins at the sharp temperature.
    train_x = torch.tensor([[2.0, 0.0], [0.6, 0.8], [1.2, 1.6], [-3.0, 0.0]])
    train_y = torch.tensor([0, 1, 1, 0])
    test_x, test_y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=0.1) == 1.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=1.0) == 0.0
    # k=1: only (2, 0) votes -> 0 at any temperature.
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=1, temperature=1.0) == 1.0
    # Tiny temperature must not overflow (e^(1/0.001) is inf in float32 without max-subtraction).
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=1e-3) == 1.0


def test_knn_random_labels_is_chance():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
    train_y, test_y = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=50)
    assert 0.05 < acc < 0.16  # chance is 0.1; the std over 1000 test points is ~0.01


def test_knn_k_larger_than_train_set_is_clipped():
    train_x, train_y = _clusters(3, 3, 8, spread=0.3, seed=0)  # 9 training points
    test_x, test_y = _clusters(4, 3, 8, spread=0.3, seed=1)
    big = knn_accuracy(train_x, train_y, test_x, test_y, k=1000)
    assert big == knn_accuracy(train_x, train_y, test_x, test_y, k=9)
    assert big == 1.0  # all 9 vote, but exp(sim/0.1) makes the own cluster dominate


def test_knn_chunking_and_determinism():
    g = torch.Generator().manual_seed(3)
    train_x, test_x = torch.randn(300, 16, generator=g), torch.randn(257, 16, generator=g)
    train_y, test_y = torch.randint(0, 4, (300,), generator=g), torch.randint(0, 4, (257,), generator=g)
    ref = knn_accuracy(train_x, train_y, test_x, test_y, k=10)
    assert isinstance(ref, float) and 0.0 <= ref <= 1.0
    for chunk in (1, 7, 64, 10_000):
        assert knn_accuracy(train_x, train_y, test_x, test_y, k=10, chunk_size=chunk) == ref


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be an integer >= 1"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(num_classes=2), "num_classes must be an integer > the largest label"),
    ],
)
def test_knn_rejects_bad_arguments(kwargs, match):
    x, y = _clusters(2, 3, 4, spread=0.1, seed=0)
    with pytest.raises(ValueError, match=match):
        knn_accuracy(x, y, x, y, **kwargs)


def test_knn_rejects_bad_shapes():
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="train_y has 5 labels but train_x has 6 rows"):
        knn_accuracy(x, y[:5], x, y)
    with pytest.raises(ValueError, match="test_x is empty"):
        knn_accuracy(x, y, x[:0], y[:0])
    with pytest.raises(ValueError, match="same feature dimension"):
        knn_accuracy(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="train_x must be 2-D"):
        knn_accuracy(x[0], y, x, y)
    with pytest.raises(ValueError, match="test_y must hold integer class labels"):
        knn_accuracy(x, y, x, y.float())
    with pytest.raises(ValueError, match="train_y must hold class labels >= 0"):
        knn_accuracy(x, y - 1, x, y)


# ---------------------------------------------------------------- linear probe


def _linearly_separable(n, dim, num_classes, seed):
    # Labels are the argmax of a fixed linear map, keeping only points whose top score beats the
    # runner-up by a margin: separable with a margin by construction. Features are then shifted
    # and scaled per dimension so that the standardisation inside matters.
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(123))
    x = torch.randn(4 * n, dim, generator=g)
    top2 = (x @ w).topk(2, dim=1)
    keep = (top2.values[:, 0] - top2.values[:, 1] > 1.0).nonzero().squeeze(1)[:n]
    assert len(keep) == n
    x, y = x[keep], top2.indices[keep, 0]
    scale = torch.linspace(0.1, 20.0, dim)
    return x * scale + 5.0, y


def test_linear_probe_separable_data():
    train_x, train_y = _linearly_separable(2000, 20, 4, seed=0)
    test_x, test_y = _linearly_separable(1000, 20, 4, seed=1)
    start = time.perf_counter()
    acc = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    assert acc > 0.95
    assert time.perf_counter() - start < 10


def test_linear_probe_adam_separable_data():
    train_x, train_y = _linearly_separable(1000, 20, 4, seed=0)
    test_x, test_y = _linearly_separable(500, 20, 4, seed=1)
    acc = linear_probe_accuracy(train_x, train_y, test_x, test_y, optimizer="adam")
    assert acc > 0.95


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_linear_probe_is_deterministic(optimizer):
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(500, 32, generator=g), torch.randn(200, 32, generator=g)
    train_y = (train_x[:, 0] > 0).long() + (train_x[:, 1] > 0).long()  # noisy-ish, not separable
    test_y = torch.randint(0, 3, (200,), generator=g)
    kw = dict(optimizer=optimizer, epochs=20)
    a = linear_probe_accuracy(train_x, train_y, test_x, test_y, **kw)
    b = linear_probe_accuracy(train_x, train_y, test_x, test_y, **kw)
    assert isinstance(a, float) and 0.0 <= a <= 1.0
    assert a == b


def test_linear_probe_restores_thread_count():
    # The CPU fit runs single-threaded; the caller's setting must come back.
    before = torch.get_num_threads()
    x, y = _linearly_separable(100, 5, 2, seed=0)
    linear_probe_accuracy(x, y, x, y, epochs=5)
    assert torch.get_num_threads() == before


def test_linear_probe_rejects_bad_arguments():
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="optimizer must be one of lbfgs, adam"):
        linear_probe_accuracy(x, y, x, y, optimizer="sgd")
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        linear_probe_accuracy(x, y, x, y, epochs=0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        linear_probe_accuracy(x, y, x, y, weight_decay=-1.0)
    with pytest.raises(ValueError, match="train_x is empty"):
        linear_probe_accuracy(x[:0], y[:0], x, y)


def test_weight_decay_is_chosen_on_a_share_of_the_training_features():
    """Clean separable data wants the lightest penalty; few samples in many noisy dimensions the heaviest."""
    clean_x, clean_y = _linearly_separable(500, 20, 4, seed=0)
    assert select_weight_decay(clean_x, clean_y) == WEIGHT_DECAYS[0]
    g = torch.Generator().manual_seed(0)
    noisy_x = torch.randn(120, 400, generator=g)
    noisy_y = (noisy_x[:, 0] + 0.8 * torch.randn(120, generator=g) > 0).long()
    assert select_weight_decay(noisy_x, noisy_y) == WEIGHT_DECAYS[-1]
    assert select_weight_decay(noisy_x, noisy_y, candidates=[0.3]) == 0.3


def test_linear_probe_default_fits_once_on_train_and_never_looks_at_the_scored_set():
    g = torch.Generator().manual_seed(0)
    train_x = torch.randn(120, 400, generator=g)
    train_y = (train_x[:, 0] + 0.8 * torch.randn(120, generator=g) > 0).long()
    chosen = select_weight_decay(train_x, train_y)
    probe = fit_linear_probe(train_x, train_y)
    assert probe.weight_decay == chosen
    for seed in (1, 2):  # two different scored sets: the same probe scores both
        test_x = torch.randn(200, 400, generator=torch.Generator().manual_seed(seed))
        test_y = (test_x[:, 0] > 0).long()
        expected = fit_linear_probe(train_x, train_y, weight_decay=chosen).accuracy(test_x, test_y)
        assert linear_probe_accuracy(train_x, train_y, test_x, test_y) == expected == probe.accuracy(test_x, test_y)
    # a fixed weight decay is used as given
    assert fit_linear_probe(train_x, train_y, weight_decay=0.05).weight_decay == 0.05


# ---------------------------------------------------------------- alignment / uniformity


def test_alignment_identical_views_is_zero():
    z = torch.randn(10, 8)
    assert alignment(z, z.clone()).item() == 0.0


def test_alignment_hand_computed():
    # Pair distances: ||(0,0) - (3,4)|| = 5 and ||(1,0) - (1,1)|| = 1.
    z1 = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    z2 = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert alignment(z1, z2).item() == pytest.approx((25 + 1) / 2)  # alpha = 2 -> 13
    assert alignment(z1, z2, alpha=1).item() == pytest.approx((5 + 1) / 2)  # -> 3


def test_uniformity_two_points():
    # One pair at distance d: log(exp(-t d^2)) = -t d^2.
    d, t = 1.5, 2.0
    z = torch.tensor([[0.0, 0.0], [d, 0.0]])
    assert uniformity(z, t=t).item() == pytest.approx(-t * d * d)


def test_uniformity_three_points_hand_computed():
    # Points at 0, 1, 3 on a line: squared distances 1, 9, 4 over the 3 pairs.
    z = torch.tensor([[0.0], [1.0], [3.0]])
    expected = math.log((math.exp(-2 * 1) + math.exp(-2 * 9) + math.exp(-2 * 4)) / 3)
    assert uniformity(z, t=2).item() == pytest.approx(expected, rel=1e-5)


def test_uniformity_is_stable_for_far_points():
    # exp(-2 * 100^2) underflows to 0; logsumexp keeps the exact answer -20000.
    z = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    assert uniformity(z).item() == pytest.approx(-20000.0)


def test_uniformity_and_alignment_do_not_normalise_and_have_gradients():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)  # not unit vectors
    u = uniformity(z)
    assert u.item() == pytest.approx(-8.0)
    u.backward()
    assert torch.isfinite(z.grad).all()


def test_representation_rejects_bad_inputs():
    with pytest.raises(ValueError, match="z1 and z2 must have the same shape"):
        alignment(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="z1 and z2 are empty"):
        alignment(torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="z must have at least 2 rows"):
        uniformity(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="t must be > 0"):
        uniformity(torch.zeros(3, 2), t=0)


# ---------------------------------------------------------------- feature extraction


class _MeanPixel(nn.Module):
    """Returns each channel's mean value; a BatchNorm shows whether eval mode was used."""

    feature_dim = 3

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)  # running stats: mean 0, var 1 -> identity in eval mode

    def forward(self, x):
        return self.bn(x).mean(dim=(2, 3))


def test_extract_features_normalises_and_uses_eval_mode():
    images = torch.full((5, 3, 4, 4), 255, dtype=torch.uint8)
    images[:, 1] = 0
    model = _MeanPixel().train()
    norm = Normalization((0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    feats = extract_features(model, images, norm, batch_size=2)
    assert feats.dtype == torch.float32 and feats.shape == (5, 3) and feats.device.type == "cpu"
    # (1 - 0.5) / 0.5 = 1, (0 - 0.5) / 0.25 = -2, (1 - 0.5) / 0.5 = 1
    torch.testing.assert_close(feats, torch.tensor([[1.0, -2.0, 1.0]]).expand(5, 3))
    assert model.training  # mode restored
    assert feats.grad_fn is None and not feats.requires_grad  # ran under no_grad


def test_extract_features_makes_its_normalisation_the_active_one():
    """Encoders that convert their input (the Lab encoders) read the active normalisation."""
    seen = []

    class Recorder(_MeanPixel):
        def forward(self, x):
            seen.append(active_normalization())
            return super().forward(x)

    norm = Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    extract_features(Recorder(), torch.zeros(3, 3, 4, 4, dtype=torch.uint8), norm, batch_size=2)
    assert seen == [norm, norm] and active_normalization() != norm


def test_extract_features_rejects_bad_images():
    norm = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="images_uint8 must have dtype torch.uint8"):
        extract_features(_MeanPixel(), torch.zeros(2, 3, 4, 4), norm)
    with pytest.raises(ValueError, match=r"images_uint8 must be 4-D \[N, C, H, W\]"):
        extract_features(_MeanPixel(), torch.zeros(3, 4, 4, dtype=torch.uint8), norm)
    with pytest.raises(ValueError, match="normalization has 1 channels, the images 3"):
        extract_features(_MeanPixel(), torch.zeros(2, 3, 4, 4, dtype=torch.uint8), Normalization((0.5,), (0.5,)))
    with pytest.raises(ValueError, match="normalization must be a workloads.data.Normalization"):
        extract_features(_MeanPixel(), torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ((0.5,) * 3, (0.5,) * 3))
