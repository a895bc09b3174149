"""Rotation prediction and exemplar distortion discrimination: inputs, labels, figures, and a tiny
learning run each on sample images (pure torch, CPU)."""
import math

import pytest
import torch
from matplotlib.figure import Figure
from pretext_helpers import small_task, train

from workloads.pretext.base import normalize
from workloads.pretext.exemplar import ExemplarDiscrimination
from workloads.pretext.rotation import RotationPrediction, rotate_all

pytestmark = pytest.mark.usefixtures("one_thread")


# --- rotation ---------------------------------------------------------------------------------


def test_rotate_all_layout_labels_and_inverse():
    x = torch.randn(3, 3, 32, 32)
    rotated, labels = rotate_all(x)
    assert rotated.shape == (12, 3, 32, 32)
    # Rotation-major: all images at 0 degrees, then at 90, 180, 270.
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for i in range(12):
        back = torch.rot90(rotated[i], -int(labels[i]), dims=(-2, -1))
        assert torch.equal(back, x[i % 3])
    # The four copies of an image differ (a random image has no rotational symmetry).
    assert not torch.equal(rotated[0], rotated[3]) and not torch.equal(rotated[3], rotated[6])


def test_rotation_label_one_is_a_quarter_turn_counter_clockwise():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 0, 0] = 1.0  # a bright top-left pixel
    rotated, labels = rotate_all(x)
    corners = [(int(r[0].nonzero()[0, 0]), int(r[0].nonzero()[0, 1])) for r in rotated]
    assert corners == [(0, 0), (31, 0), (31, 31), (0, 31)]  # top-left -> bottom-left -> ...
    assert labels.tolist() == [0, 1, 2, 3]


def test_rotation_forward_sees_4b_images_and_reports_accuracy():
    task = small_task(RotationPrediction, hidden=16)
    seen = []
    task.head.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    step = task(torch.randn(5, 3, 32, 32))
    assert seen == [(20, 4)]
    assert step.loss.ndim == 0 and step.loss.requires_grad
    assert set(step.metrics) == {"accuracy"} and 0.0 <= float(step.metrics["accuracy"]) <= 1.0
    assert not step.metrics["accuracy"].requires_grad
    assert task.chance == 0.25


def test_rotation_linear_head_bf16_autocast_and_bad_inputs():
    task = small_task(RotationPrediction, hidden=0)
    assert isinstance(task.head, torch.nn.Linear)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = task(torch.randn(2, 3, 32, 32))
    assert step.loss.dtype == torch.float32 and torch.isfinite(step.loss)
    with pytest.raises(ValueError, match="square"):
        task(torch.randn(2, 3, 32, 40))
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="hidden"):
            small_task(RotationPrediction, hidden=bad)


@pytest.mark.parametrize("training", [True, False])
def test_rotation_figure_shows_four_rotations_and_keeps_mode(training):
    task = small_task(RotationPrediction).train(training)
    fig = task.figure(torch.randn(6, 3, 32, 32), count=2)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 8  # 2 images x 4 rotations
    assert all(ax.get_title().startswith("true ") and "pred " in ax.get_title() for ax in fig.axes)
    assert task.training is training and task.encoder.training is training


def test_rotation_learns_on_sample_images(images):
    torch.manual_seed(0)
    task = small_task(RotationPrediction, width=8)
    train(task, images, steps=30, batch=32)
    task.eval()
    with torch.no_grad():
        accuracy = float(task(images).metrics["accuracy"])
    assert accuracy > 0.6, accuracy  # chance 0.25


# --- exemplar ---------------------------------------------------------------------------------


def test_exemplar_distortions_share_their_image_label():
    # No crop, rotation or colour change: each distortion is its image, possibly flipped, so the
    # layout (distortion-major, labels = ids repeated) can be checked exactly.
    task = small_task(ExemplarDiscrimination, num_classes=16, distortions=3, crop_scale=(1.0, 1.0), rotation=0, jitter=0, hue=0)
    x = normalize(torch.rand(4, 3, 32, 32))
    ids = torch.tensor([10, 3, 7, 0])
    torch.manual_seed(0)
    views, labels = task.distorted(x, ids)
    assert views.shape == (12, 3, 32, 32)
    assert labels.tolist() == [10, 3, 7, 0] * 3
    for i in range(12):
        source = x[i % 4]
        assert min((views[i] - source).abs().max(), (views[i] - source.flip(-1)).abs().max()) < 1e-4


def test_exemplar_distortions_differ_and_are_reproducible():
    task = small_task(ExemplarDiscrimination, num_classes=8, distortions=2)
    x = normalize(torch.rand(4, 3, 32, 32))
    ids = torch.arange(4)
    torch.manual_seed(1)
    views, labels = task.distorted(x, ids)
    assert views.shape == (8, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    for i in range(4):
        assert (views[i] - views[i + 4]).abs().mean() > 0.05  # two distortions of one image differ
        assert (views[i] - x[i]).abs().mean() > 0.05  # and neither is the image itself
    torch.manual_seed(1)
    again, _ = task.distorted(x, ids)
    assert torch.equal(views, again)


def test_exemplar_forward_classifies_over_num_classes_under_autocast():
    task = small_task(ExemplarDiscrimination, num_classes=32, distortions=3)
    seen = []
    task.head.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = task(torch.randn(5, 3, 32, 32), torch.tensor([0, 31, 4, 4, 9]))
    assert seen == [(15, 32)]
    assert step.loss.dtype == torch.float32 and torch.isfinite(step.loss)
    assert set(step.metrics) == {"accuracy"}
    assert task.chance == pytest.approx(1 / 32)


def test_exemplar_rejects_missing_or_out_of_range_ids():
    task = small_task(ExemplarDiscrimination, num_classes=8)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="needs ids"):
        task(x)
    with pytest.raises(ValueError, match="num_classes=8"):
        task(x, torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="shape"):
        task(x, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "name,value",
    [("num_classes", 1), ("distortions", 0), ("crop_scale", (0.5, 0.2)), ("crop_scale", (0.0, 1.0)),
     ("rotation", -1.0), ("rotation", 200), ("jitter", 1.5), ("hue", 0.6)],
)
def test_exemplar_validates_hyperparameters(name, value):
    kwargs = {"num_classes": 8, name: value}
    with pytest.raises(ValueError, match=name):
        small_task(ExemplarDiscrimination, **kwargs)


@pytest.mark.parametrize("with_ids", [True, False])
def test_exemplar_figure_shows_an_image_with_its_distortions(with_ids):
    task = small_task(ExemplarDiscrimination, num_classes=8).train(True)
    ids = torch.tensor([5, 2]) if with_ids else None
    fig = task.figure(torch.randn(2, 3, 32, 32), ids, count=2, shown=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 8  # 2 rows: original + 3 distortions
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == ("original, class 5" if with_ids else "original, image 0")
    assert all(t.startswith("pred ") for t in titles[1:4]) if with_ids else "image 0" in titles[1]
    assert task.training


def test_exemplar_learns_on_sample_images(images):
    torch.manual_seed(0)
    task = small_task(ExemplarDiscrimination, width=8, num_classes=256)
    train(task, images, steps=30)
    task.eval()
    with torch.no_grad():
        step = task(images, torch.arange(256))
    assert float(step.metrics["accuracy"]) > 3 / 256, float(step.metrics["accuracy"])
    assert float(step.loss) < math.log(256) - 0.3, float(step.loss)  # from ~ln 256 at the start
