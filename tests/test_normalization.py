"""The data's normalisation through the pretext path: the loop, the task's own helpers, its figure,
and the Lab encoders at evaluation all use one mean/std (the task's, measured on the training split)."""
import torch

from workloads.data import CIFAR10, Normalization, active_normalization
from workloads.evaluate.features import extract_features
from workloads.pretext.base import PretextStep, PretextTask, normalize, to_unit
from workloads.pretext.color.colorization import Colorization
from workloads.pretext.color.encoders import build_encoder
from workloads.training.pretext_loop import pretext_train_epoch

DATA = Normalization((0.3, 0.35, 0.4), (0.15, 0.2, 0.25))


class Recorder(PretextTask):
    """What a task sees: its input, and what its helpers convert it to."""

    def __init__(self):
        super().__init__(torch.nn.Linear(3, 2))
        self.inputs, self.units, self.active = [], [], []

    def forward(self, images, ids=None):
        self.inputs.append(images.clone())
        self.units.append(to_unit(images))
        self.active.append(active_normalization())
        return PretextStep(self.encoder(images.mean(dim=(2, 3))).pow(2).mean())

    def figure(self, images):
        return active_normalization(), to_unit(images)


def test_the_loop_and_the_task_use_the_task_normalisation():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    task = Recorder()
    task.normalization = DATA
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    pretext_train_epoch(task, optimizer, None, images, torch.arange(8), 4, torch.device("cpu"), augment=False)
    for k, (seen, unit) in enumerate(zip(task.inputs, task.units)):
        expected_unit = images[4 * k : 4 * k + 4].float() / 255
        torch.testing.assert_close(seen, DATA.normalize(expected_unit))
        torch.testing.assert_close(unit, expected_unit)  # the task's to_unit inverts the loop's normalize exactly
    assert task.active == [DATA, DATA]
    assert active_normalization() == CIFAR10  # only while the task runs
    active, unit = task.figure(normalize(images[:2].float() / 255, DATA))
    assert active == DATA
    torch.testing.assert_close(unit, images[:2].float() / 255)


def test_a_task_on_its_own_keeps_the_former_constants():
    task = Recorder()
    x = torch.rand(2, 3, 8, 8)
    task(normalize(x))
    assert task.normalization == CIFAR10 and task.active == [CIFAR10]
    torch.testing.assert_close(task.units[0], x)
    torch.testing.assert_close(normalize(x), (x - torch.tensor(CIFAR10.mean).view(3, 1, 1)) / torch.tensor(CIFAR10.std).view(3, 1, 1))


def test_colour_tasks_and_lab_encoders_see_the_same_colours_whatever_the_normalisation():
    """Lab conversion un-normalises with the active normalisation: with the data's statistics used
    consistently, the colorization loss and the gray encoder's features do not depend on them."""
    torch.manual_seed(0)
    unit = torch.rand(6, 3, 32, 32)
    gray = build_encoder("small_convnet", {"width": 4}, "gray")
    task = Colorization(gray, gray.feature_dim).eval()
    losses = []
    for norm in (CIFAR10, DATA):
        task.normalization = norm
        with torch.no_grad():
            losses.append(task(normalize(unit, norm)).loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-4)
    encoder = build_encoder("small_convnet", {"width": 4}, "gray").eval()
    images = (unit * 255).round().to(torch.uint8)
    features = [extract_features(encoder, images, norm) for norm in (CIFAR10, DATA)]
    torch.testing.assert_close(features[0], features[1], rtol=1e-4, atol=1e-4)
    # and mismatched statistics would have changed them: the normalisation really reaches the encoder
    mismatched = encoder(normalize(images.float() / 255, DATA))  # fed DATA-normalised, converted as CIFAR-10
    assert (mismatched - features[1]).abs().max() > 1e-3
