"""The pretext training epoch: batches, ids, augmentation, metrics, and a few epochs of rotation."""
import math
import os

import pytest
import torch

from workloads.data.load import load_images
from workloads.models.backbones import SmallConvNet
from workloads.pretext.base import PretextStep, PretextTask, normalize
from workloads.pretext.rotation import RotationPrediction
from workloads.training.pretext_loop import crop_flip, pretext_train_epoch

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data", "cifar10_sample.parquet")
CPU = torch.device("cpu")


class Recorder(PretextTask):
    """Records what the loop feeds the task; a trivial loss so the optimizer has work."""

    def __init__(self):
        super().__init__(torch.nn.Linear(3, 2))
        self.calls = []

    def forward(self, images, ids=None):
        self.calls.append((images.clone(), ids.clone()))
        loss = self.encoder(images.mean(dim=(2, 3))).pow(2).mean()
        return PretextStep(loss, {"accuracy": torch.tensor(len(self.calls) / 10), "other": torch.tensor(1.0)})


def test_crop_flip_takes_a_padded_crop_per_sample():
    x = torch.rand(6, 3, 32, 32)
    torch.manual_seed(0)
    out = crop_flip(x)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    found = []
    for i in range(6):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + 32, dx : dx + 32]))
        ]
        assert matches, f"sample {i} is not a crop of its padded image"
        found.append(matches[0])
    assert len(set(found)) > 1  # parameters drawn per sample
    torch.manual_seed(0)
    assert torch.equal(crop_flip(x), out)  # reproducible from torch's seed


def test_epoch_feeds_normalised_batches_with_their_ids_and_averages_metrics():
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    indices = torch.tensor([7, 3, 19, 0, 5, 11, 2, 8, 1, 4, 6])  # 11 images, batch 4: 2 full batches
    task = Recorder()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    calls = []
    stats, metrics = pretext_train_epoch(
        task, optimizer, scheduler, images, indices, 4, CPU, augment=False, on_step=lambda s, l: calls.append((s, l))
    )
    assert stats.steps == 2 and len(task.calls) == 2 and math.isfinite(stats.loss)
    for k, (seen, ids) in enumerate(task.calls):
        assert ids.tolist() == indices[4 * k : 4 * k + 4].tolist()  # drop_last, in epoch order
        assert torch.allclose(seen, normalize(images[ids].float() / 255))
    assert metrics == pytest.approx({"accuracy": (0.1 + 0.2) / 2, "other": 1.0})
    assert stats.lr == pytest.approx(0.1 * 0.25)  # stepped once per step
    assert [s for s, _ in calls] == [0, 1]  # every step, with its loss as a tensor (the caller decides when to sync)
    assert all(torch.is_tensor(loss) and math.isfinite(float(loss)) for _, loss in calls)


def test_epoch_with_too_large_batch_is_a_clear_error():
    task = Recorder()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    images = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="batch_size 16 is larger than this worker's 8 training images"):
        pretext_train_epoch(task, optimizer, None, images, torch.arange(8), 16, CPU)


def test_a_few_epochs_of_rotation_raise_its_accuracy():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small shared test machines: one intra-op thread is much faster there
    try:
        images = load_images(SAMPLE).images[:256]
        torch.manual_seed(0)
        encoder = SmallConvNet(width=8)
        task = RotationPrediction(encoder, encoder.feature_dim)
        optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
        history = []
        for epoch in range(4):
            order = torch.randperm(256, generator=torch.Generator().manual_seed(epoch))
            stats, metrics = pretext_train_epoch(task, optimizer, None, images, order, 32, CPU, precision="fp32")
            assert stats.steps == 8 and set(metrics) == {"accuracy"}
            history.append(metrics["accuracy"])
    finally:
        torch.set_num_threads(threads)
    assert history[-1] > 0.55 and history[-1] > history[0] + 0.1, history  # chance 0.25
