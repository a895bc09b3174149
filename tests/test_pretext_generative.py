"""The decoder, the denoising autoencoder, the context encoder's masks and task, the split-brain autoencoder."""
import math

import pytest
import torch
from matplotlib.figure import Figure
from pretext_helpers import mean_of, train

from workloads.models.backbones import SmallConvNet
from workloads.pretext.color.encoders import build_encoder
from workloads.pretext.color.split_brain import SplitBrain
from workloads.pretext.context_encoder import ContextEncoder, square_masks
from workloads.pretext.decoder import ImageDecoder
from workloads.pretext.denoising import DenoisingAutoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _mean_image_mse(images):
    """The error of the best prediction that ignores the input: the mean image (~0.94 here)."""
    return (images - images.mean(0)).square().mean().item()


def _check_figure(task, images, rows, first_title):
    for training in (True, False):
        task.train(training)
        fig = task.figure(images[:5])
        assert isinstance(fig, Figure) and task.training is training  # the mode is restored
        assert len(fig.axes) == rows * 5
        titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
        assert len(titles) == rows and titles[0].startswith(first_title)


# --- decoder -------------------------------------------------------------------------------------

def test_decoder_shapes():
    decoder = ImageDecoder(64, 5, size=32, width=8)
    z = torch.randn(4, 64)
    assert decoder(z).shape == (4, 5, 32, 32)
    assert decoder(z, out_size=(48, 40)).shape == (4, 5, 48, 40)
    assert ImageDecoder(64, 2, size=8, width=8)(z).shape == (4, 2, 8, 8)
    with pytest.raises(ValueError, match="size must be 4 times a power of 2"):
        ImageDecoder(64, 3, size=24)


# --- context encoder masks ----------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(32, 32), (40, 32), (33, 35)])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["center", "random"])
def test_masks_are_squares_of_the_requested_area(height, width, fraction, mode):
    masks = square_masks(6, height, width, fraction, mode)
    assert masks.shape == (6, 1, height, width) and masks.dtype == torch.bool
    target_side = math.sqrt(fraction * height * width)
    for m in masks[:, 0]:
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        side = len(rows)
        assert len(cols) == side and abs(side - target_side) <= 0.5  # a square, side within half a pixel
        assert m.sum() == side * side  # solid, and whole: nothing cut off at the border
        assert rows.max() - rows.min() == side - 1 and cols.max() - cols.min() == side - 1
        if mode == "center":
            centre = (rows.float().mean(), cols.float().mean())
            assert abs(centre[0] - (height - 1) / 2) <= 0.5 and abs(centre[1] - (width - 1) / 2) <= 0.5


def test_random_masks_differ_per_sample_and_follow_the_seed():
    torch.manual_seed(3)
    masks = square_masks(16, 32, 32, 0.25, "random")
    assert len({m.nonzero()[0].tolist().__str__() for m in masks[:, 0]}) > 8
    torch.manual_seed(3)
    assert torch.equal(square_masks(16, 32, 32, 0.25, "random"), masks)
    center = square_masks(4, 32, 32, 0.25, "center")
    assert (center == center[:1]).all()


def test_context_encoder_hides_the_hole_and_scores_it(images):
    torch.manual_seed(0)
    task = ContextEncoder(SmallConvNet(width=4), 32, decoder_width=8)
    masks, masked, recon = task._inpaint(images[:4])
    assert (masked[masks.expand_as(masked)] == 0).all()  # filled with the mean (0 after normalisation)
    assert torch.equal(masked[~masks.expand_as(masked)], images[:4][~masks.expand_as(masked)])
    step = task(images[:4])
    torch.testing.assert_close(step.loss, step.metrics["mse_masked"])  # context_weight 0: only the hole counts
    weighted = ContextEncoder(SmallConvNet(width=4), 32, decoder_width=8, context_weight=0.1)
    step = weighted(images[:4])
    torch.testing.assert_close(step.loss, step.metrics["mse_masked"] + 0.1 * step.metrics["mse_context"])


def test_context_encoder_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="mask must be one of center, random"):
        ContextEncoder(SmallConvNet(width=4), 32, mask="ring")
    with pytest.raises(ValueError, match=r"mask_fraction must be a number in \(0.0, 1.0\)"):
        ContextEncoder(SmallConvNet(width=4), 32, mask_fraction=1.0)
    with pytest.raises(ValueError, match="context_weight"):
        ContextEncoder(SmallConvNet(width=4), 32, context_weight=-0.1)


@pytest.mark.parametrize("mask", ["center", "random"])
def test_context_encoder_learns(images, mask):
    torch.manual_seed(0)
    task = ContextEncoder(SmallConvNet(width=8), 64, mask=mask, decoder_width=16)
    history = train(task, images, steps=30, lr=2e-3)
    assert {"mse_masked", "mse_context"} <= set(history[0])
    assert mean_of(history, "mse_masked", "last") < 0.7 * mean_of(history, "mse_masked", "first")
    assert mean_of(history, "mse_masked", "last") < 0.85 * _mean_image_mse(images)  # uses the context
    _check_figure(task, images, 3, "masked input")


# --- denoising autoencoder ----------------------------------------------------------------------

def test_denoising_corruptions(images):
    torch.manual_seed(0)
    gaussian = DenoisingAutoencoder(SmallConvNet(width=4), 32, noise_std=0.3, decoder_width=8)
    noise = gaussian.corrupt(images) - images
    assert abs(noise.std().item() - 0.3) < 0.01 and abs(noise.mean().item()) < 0.01
    masking = DenoisingAutoencoder(SmallConvNet(width=4), 32, noise="masking", mask_fraction=0.4, decoder_width=8)
    corrupted = masking.corrupt(images)
    dropped = (corrupted == 0).all(1)  # whole pixels, all three channels
    assert abs(dropped.float().mean().item() - 0.4) < 0.02
    kept = ~dropped.unsqueeze(1).expand_as(images)
    assert torch.equal(corrupted[kept], images[kept])
    with pytest.raises(ValueError, match="noise must be one of gaussian, masking"):
        DenoisingAutoencoder(SmallConvNet(width=4), 32, noise="salt")
    with pytest.raises(ValueError, match="noise_std"):
        DenoisingAutoencoder(SmallConvNet(width=4), 32, noise_std=0)
    with pytest.raises(ValueError, match="mask_fraction"):
        DenoisingAutoencoder(SmallConvNet(width=4), 32, mask_fraction=1.2)


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_denoising_autoencoder_learns(images, noise):
    torch.manual_seed(0)
    task = DenoisingAutoencoder(SmallConvNet(width=8), 64, noise=noise, decoder_width=16)
    history = train(task, images, steps=30, lr=2e-3)
    assert set(history[0]) == {"loss", "mse"}
    assert mean_of(history, "mse", "last") < 0.5 * mean_of(history, "mse", "first")
    assert mean_of(history, "mse", "last") < 0.6 * _mean_image_mse(images)  # uses the input
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = task(images[:8])
    assert step.loss.dtype == torch.float32 and torch.isfinite(step.loss)
    _check_figure(task, images, 3, "noisy input")


# --- split-brain autoencoder --------------------------------------------------------------------

def _split_brain(**kwargs) -> SplitBrain:
    encoder = build_encoder("small_convnet", {"width": 4}, "split_brain")
    return SplitBrain(encoder, encoder.feature_dim, decoder_width=16, **kwargs)


def test_split_brain_builds_two_halves():
    task = _split_brain()
    assert task.encoder.feature_dim == 64 and task.decoder_ab.out.out_channels == task.quantizer.num_bins
    assert task.decoder_l.out.out_channels == 100
    assert task.encoder(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    with pytest.raises(TypeError, match="SplitBrainEncoder"):
        SplitBrain(SmallConvNet(width=4), 32)
    with pytest.raises(ValueError, match="feature_dim 32 differs"):
        SplitBrain(build_encoder("small_convnet", {"width": 4}, "split_brain"), 32)
    with pytest.raises(ValueError, match="mode must be one of classification, regression"):
        _split_brain(mode="l1")
    with pytest.raises(ValueError, match="l_bins"):
        _split_brain(l_bins=1)


def test_split_brain_halves_see_only_their_channels(images):
    """net_l's prediction ignores ab and net_ab's ignores L: each half only gets its own channels."""
    torch.manual_seed(0)
    task = _split_brain(mode="regression").eval()
    step = task(images[:4])
    step.loss.backward()
    net_l_grads = [p.grad for p in task.encoder.net_l.parameters()]
    assert all(g is not None for g in net_l_grads)
    task.zero_grad()
    _, _, _, out_l = task._predict(images[:4])
    out_l.sum().backward()  # the L prediction comes from net_ab alone
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in task.encoder.net_l.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.encoder.net_ab.parameters())


@pytest.mark.parametrize("mode", ["classification", "regression"])
def test_split_brain_learns(images, mode):
    torch.manual_seed(0)
    task = _split_brain(mode=mode)
    history = train(task, images, steps=30, lr=2e-3)
    assert {"loss_l_to_ab", "loss_ab_to_l"} <= set(history[0])
    # L from ab is the harder half: its loss falls more slowly (~10% in 30 steps from log 100)
    for key, fraction in (("loss_l_to_ab", 0.8), ("loss_ab_to_l", 0.95 if mode == "classification" else 0.8)):
        assert mean_of(history, key, "last") < fraction * mean_of(history, key, "first"), key
    if mode == "classification":
        assert mean_of(history, "accuracy_l", "last") > 0.04 > 3 / 100  # 100 L bins
        assert mean_of(history, "accuracy_ab", "last") > 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = task(images[:8])
    assert step.loss.dtype == torch.float32 and torch.isfinite(step.loss)
    _check_figure(task, images, 5, "original")
