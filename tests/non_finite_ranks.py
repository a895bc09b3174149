"""What tests/test_non_finite.py's loops and its two gloo ranks share: a planted nan, a step recorder.

A module of its own, importing little: each spawned rank imports it (torchvision and the rest of the
test module's imports would cost the ranks most of their time on a loaded machine)."""
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from workloads.errors import NonFiniteLossError
from workloads.methods.contrastive import ContrastiveLearner
from workloads.training.loop import train_epoch

CPU = torch.device("cpu")


class NanAt(nn.Module):
    """The wrapped two-view augmentation, with one nan pixel in view `view` of the batch of step `at`."""

    def __init__(self, augment: nn.Module, at: int, view: int = 0):
        super().__init__()
        self.augment, self.at, self.view, self.calls = augment, at, view, 0

    def forward(self, batch):
        views = list(self.augment(batch))
        if self.calls == self.at:
            views[self.view] = views[self.view].clone()
            views[self.view][0, 0, 0, 0] = float("nan")
        self.calls += 1
        return tuple(views)


class Recorder:
    """on_step: each step's loss, and the parameters after it."""

    def __init__(self, *modules: nn.Module):
        self.modules, self.losses, self.params = modules, [], []

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        self.losses.append(float(loss))
        self.params.append(parameters(*self.modules))


def parameters(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for module in modules for p in module.parameters()]


def rank_main(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a rank left waiting fails instead of hanging
    results = {}
    try:
        for gather in (False, True):
            torch.manual_seed(0)
            backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh())
            learner = nn.parallel.DistributedDataParallel(
                ContrastiveLearner(backbone, nn.Linear(16, 8), "nt_xent", 0.5, 1.0, gather=gather))
            optimizer = torch.optim.SGD(learner.parameters(), lr=0.1)
            images = torch.randint(0, 256, (16, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(rank))
            augment = NanAt(Views(), at=1 if rank == 1 else -1)  # rank 1's batch of step 1 only
            recorder = Recorder(learner)
            try:
                train_epoch(learner, optimizer, None, images, torch.arange(16), augment, 4, CPU, "fp32",
                            on_step=recorder)
                results[gather] = ("finished", len(recorder.losses))
            except NonFiniteLossError as error:
                results[gather] = (str(error), len(recorder.losses), all(
                    torch.equal(a, b) for a, b in zip(parameters(learner), recorder.params[-1])))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


class Views(nn.Module):
    """Two views of uint8 images [B, 3, 4, 4]: the images in [0, 1], and mirrored."""

    def forward(self, batch):
        x = batch.float() / 255
        return x, x.flip(-1)
