"""Lab colour, the ab quantiser, the Lab encoder wrappers and the colorization task (Zhang et al. 2016)."""

import pytest
import torch
from matplotlib.figure import Figure
from pretext_helpers import mean_of, train

from workloads.models.backbones import resnet18_cifar
from workloads.pretext.base import normalize, to_unit
from workloads.pretext.color.colorization import Colorization
from workloads.pretext.color.encoders import (
    GrayEncoder,
    SplitBrainEncoder,
    build_encoder,
)
from workloads.pretext.color.lab import (
    ABQuantizer,
    lab_to_rgb,
    normalized_to_lab,
    rgb_to_lab,
    scale_ab,
    scale_l,
    split_lab,
    unscale_ab,
    unscale_l,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lab_round_trip_on_sample_images(images):
    rgb = to_unit(images)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == torch.float32
    l, ab = split_lab(lab)
    assert l.shape == (256, 1, 32, 32) and ab.shape == (256, 2, 32, 32)
    assert 0 <= l.min() and l.max() <= 100 and ab.abs().max() < 110
    assert (lab_to_rgb(lab) - rgb).abs().max() < 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the conversion must not run in bf16
        lab_amp = rgb_to_lab(rgb)
        assert lab_amp.dtype == torch.float32 and (lab_to_rgb(lab_amp) - rgb).abs().max() < 1e-3
    torch.testing.assert_close(normalized_to_lab(images), lab)


def test_channel_scaling_maps_to_unit_range_and_back():
    l = torch.tensor([0.0, 50.0, 100.0])
    torch.testing.assert_close(scale_l(l), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(unscale_l(scale_l(l)), l)
    ab = torch.tensor([-110.0, 55.0])
    torch.testing.assert_close(scale_ab(ab), torch.tensor([-1.0, 0.5]))
    torch.testing.assert_close(unscale_ab(scale_ab(ab)), ab)


def test_ab_bins_are_the_in_gamut_grid():
    q = ABQuantizer(10)
    assert 200 < q.num_bins < 320  # Zhang et al.: 313 from their gamut; ours: the bins sRGB reaches
    assert torch.equal(q.centers, (q.centers / 10).round() * 10)
    assert len(torch.unique(q.centers, dim=0)) == q.num_bins
    assert q.centers.abs().max() <= 110
    assert ABQuantizer(20).num_bins < q.num_bins
    assert torch.equal(ABQuantizer(10).centers, q.centers)  # deterministic


def test_hard_and_soft_encoding_match_brute_force(images):
    q = ABQuantizer(10)
    _, ab = split_lab(normalized_to_lab(images[:16]))
    pixels = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    dist = torch.cdist(pixels, q.centers)
    hard = q.encode_hard(ab).reshape(-1)
    torch.testing.assert_close(dist.gather(1, hard[:, None])[:, 0], dist.min(1).values)
    bins, weights = q.encode_soft(ab)
    assert bins.shape == weights.shape == (16, 5, 32, 32)
    torch.testing.assert_close(weights.sum(1), torch.ones(16, 32, 32))
    soft = bins.permute(0, 2, 3, 1).reshape(-1, 5)
    # the 5 chosen bins are the 5 nearest (compare distances: ties may pick either bin)
    torch.testing.assert_close(dist.gather(1, soft).sort(1).values, dist.topk(5, largest=False).values.sort(1).values)
    w = weights.permute(0, 2, 3, 1).reshape(-1, 5)
    assert (w[:, :1] >= w[:, 1:] - 1e-6).all()  # the nearest bin weighs most


def test_annealed_mean_between_mode_and_mean():
    q = ABQuantizer(10)
    logits = torch.full((1, q.num_bins, 1, 1), -30.0)
    logits[0, 7] = 30.0
    torch.testing.assert_close(q.annealed_mean(logits)[0, :, 0, 0], q.centers[7])
    logits = torch.randn(2, q.num_bins, 3, 3)
    mean = torch.einsum("bqhw,qc->bchw", logits.softmax(1), q.centers)
    torch.testing.assert_close(q.annealed_mean(logits, temperature=1.0), mean)
    # a lower temperature moves the estimate towards the most probable bin
    mode = q.centers[logits.argmax(1)].permute(0, 3, 1, 2)
    assert (q.annealed_mean(logits, 0.38) - mode).norm(dim=1).mean() < (mean - mode).norm(dim=1).mean()


def test_encoders_feature_dims_and_state_dict_round_trip():
    kwargs = {"width": 4}
    plain = build_encoder("small_convnet", kwargs, None)
    assert plain.feature_dim == 32 and plain.features[0][0].in_channels == 3
    gray = build_encoder("small_convnet", kwargs, "gray")
    assert isinstance(gray, GrayEncoder) and gray.feature_dim == 32 and gray.backbone.features[0][0].in_channels == 1
    split = build_encoder("small_convnet", kwargs, "split_brain")
    assert isinstance(split, SplitBrainEncoder) and split.feature_dim == 64
    assert split.net_l.features[0][0].in_channels == 1 and split.net_ab.features[0][0].in_channels == 2
    x = torch.randn(3, 3, 32, 32)
    for wrapper in (None, "gray", "split_brain"):
        torch.manual_seed(0)
        a = build_encoder("small_convnet", kwargs, wrapper)
        torch.manual_seed(1)
        b = build_encoder("small_convnet", kwargs, wrapper)
        assert not torch.allclose(a.eval()(x), b.eval()(x))
        b.load_state_dict(a.state_dict())  # strict: the same keys
        torch.testing.assert_close(a(x), b(x))
        assert a(x).shape == (3, a.feature_dim)
    assert all(k.startswith("backbone.") for k in gray.state_dict())
    assert {k.split(".")[0] for k in split.state_dict()} == {"net_l", "net_ab"}


def test_build_encoder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown encoder wrapper 'lab'"):
        build_encoder("small_convnet", {}, "lab")
    with pytest.raises(ValueError, match="in_channels"):
        build_encoder("small_convnet", {"in_channels": 1}, "gray")


def test_resnet18_in_channels():
    assert resnet18_cifar().conv1.in_channels == 3
    gray = build_encoder("resnet18_cifar", {}, "gray")
    assert gray.backbone.conv1.in_channels == 1 and gray.feature_dim == 512
    with pytest.raises(ValueError, match="in_channels"):
        resnet18_cifar(in_channels=0)


def test_gray_encoder_sees_only_lightness(images):
    """Changing the colour but not L leaves the features unchanged."""
    torch.manual_seed(0)
    encoder = build_encoder("small_convnet", {"width": 4}, "gray").eval()
    l, ab = split_lab(normalized_to_lab(images[:4]))
    recoloured = normalize(lab_to_rgb(torch.cat([l, ab.flip(0) * 0.3], 1)))
    assert (recoloured - images[:4]).abs().max() > 0.5
    torch.testing.assert_close(encoder(recoloured), encoder(images[:4]), atol=2e-2, rtol=0)


def _colorization(**kwargs) -> Colorization:
    encoder = build_encoder("small_convnet", {"width": 8}, "gray")
    return Colorization(encoder, encoder.feature_dim, decoder_width=16, **kwargs)


def test_colorization_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="mode must be one of classification, regression"):
        _colorization(mode="gan")
    with pytest.raises(ValueError, match=r"temperature must be a number in \(0.0, 1.0\]"):
        _colorization(temperature=0.0)
    with pytest.raises(ValueError, match="rebalance_lambda"):
        _colorization(rebalance_lambda=1.5)
    with pytest.raises(ValueError, match="bin_size must be an integer"):
        _colorization(bin_size=7.5)
    with pytest.raises(ValueError, match="output_stride"):
        _colorization(output_stride=3)
    with pytest.raises(ValueError, match="prior must hold"):
        _colorization(prior=torch.ones(5))
    with pytest.raises(TypeError, match="GrayEncoder"):
        Colorization(build_encoder("small_convnet", {"width": 4}), 32)


def test_class_rebalancing_weights():
    task = _colorization()
    q = task.quantizer.num_bins
    assert torch.allclose(task.class_weights(), torch.ones(q))  # a uniform prior: no reweighting
    prior = torch.full((q,), 1e-4)
    prior[0] = 1.0
    task = _colorization(prior=prior)
    w, smooth = task.class_weights(), task.smoothing @ task.prior
    assert w[0] < 1 < w[-1]  # the common bin weighs less than a rare one
    assert w.max() <= 2 * q  # lambda = 0.5 caps the weight of an unseen bin
    torch.testing.assert_close((smooth / smooth.sum() * w).sum(), torch.tensor(1.0))
    assert torch.allclose(_colorization(prior=prior, rebalance_lambda=1.0).class_weights(), torch.ones(q))


def test_running_prior_follows_the_data(images):
    task = _colorization()
    task.eval()
    task(images[:8])
    assert task.prior_batches == 0  # evaluation does not update it
    task.train()
    task(images[:8])
    hard = task.quantizer.encode_hard(torch.nn.functional.avg_pool2d(normalized_to_lab(images[:8])[:, 1:], 4))
    hist = torch.bincount(hard.flatten(), minlength=len(task.prior)).float()
    torch.testing.assert_close(task.prior, hist / hist.sum())  # the first batch replaces the uniform start
    assert "prior" in task.state_dict() and "prior_batches" in task.state_dict()
    fixed = _colorization(prior=torch.ones(task.quantizer.num_bins))
    fixed(images[:8])
    assert fixed.prior_batches == 0 and torch.allclose(fixed.prior, fixed.prior.mean().expand_as(fixed.prior))


def test_colorization_classification_learns(images):
    torch.manual_seed(0)
    task = _colorization()
    history = train(task, images, steps=30, lr=2e-3)
    assert set(history[0]) == {"loss", "accuracy", "mse_ab"}
    assert mean_of(history, "loss", "last") < 0.8 * mean_of(history, "loss", "first")
    assert mean_of(history, "accuracy", "last") > 0.05 > 3 * task.chance  # from ~1 / Q at the start
    assert mean_of(history, "mse_ab", "last") < 0.5 * mean_of(history, "mse_ab", "first")


def test_colorization_regression_learns(images):
    torch.manual_seed(0)
    task = _colorization(mode="regression")
    history = train(task, images, steps=30, lr=2e-3)
    assert set(history[0]) == {"loss", "mse_ab"} and task.chance is None
    assert mean_of(history, "mse_ab", "last") < 0.3 * mean_of(history, "mse_ab", "first")


@pytest.mark.parametrize("mode", ["classification", "regression"])
def test_colorization_autocast_and_figure(images, mode):
    torch.manual_seed(0)
    task = _colorization(mode=mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = task(images[:8])
    assert step.loss.dtype == torch.float32 and torch.isfinite(step.loss)
    step.loss.backward()
    assert task.encoder.backbone.features[0][0].weight.grad is not None
    for training in (True, False):
        task.train(training)
        fig = task.figure(images[:6])
        assert isinstance(fig, Figure) and task.training is training
        assert len(fig.axes) == 3 * 6
        titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
        assert titles[0].startswith("grayscale input") and titles[1].startswith("colourised") and titles[2] == "original"
