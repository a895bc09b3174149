"""What the pretext task tests share: a task on a tiny ConvNet, a short training run, its averages."""
import torch

from workloads.models import SmallConvNet


def small_task(cls, width=4, **kwargs):
    encoder = SmallConvNet(width=width)
    return cls(encoder, encoder.feature_dim, **kwargs)


def train(task, images, steps, batch=64, lr=3e-3):
    """Adam over consecutive batches of the small set (ids: the images' indices); each step's loss and metrics."""
    optimizer = torch.optim.Adam(task.parameters(), lr=lr)
    task.train()
    history = []
    for step in range(steps):
        b = torch.arange(len(images))[(step * batch) % len(images):][:batch]
        out = task(images[b], b)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append({"loss": out.loss.item(), **{k: v.item() for k, v in out.metrics.items()}})
    return history


def mean_of(history, key, part):
    """The mean of `key` over the first or last 4 steps."""
    rows = history[:4] if part == "first" else history[-4:]
    return sum(r[key] for r in rows) / len(rows)
