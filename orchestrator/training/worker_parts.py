"""What the image and the video worker share: the optimiser, the per-step hook, the progress bar."""
import torch

from orchestrator.config.schema import SSLabConfig


def build_optimizer(params, train) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def step_hook(progress, every: int, first_step: int, step_losses: list):
    """The loops' on_step: the progress bar, and every `every` global steps the step's loss
    ([global step, loss], reported with the epoch and logged as train/step_loss)."""
    if progress is None and not every:
        return None

    def on_step(step: int, loss: torch.Tensor) -> None:
        if progress is not None:
            progress.update(1)
        if every and (first_step + step) % every == 0:
            step_losses.append([first_step + step, float(loss)])

    return on_step


def progress_bar(config: SSLabConfig, rank: int, steps_per_epoch: int, first_epoch: int):
    if rank != 0 or not config.train.progress:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=steps_per_epoch * config.train.epochs, desc=f"epoch {first_epoch + 1}/{config.train.epochs}")
    bar.update(steps_per_epoch * first_epoch)
    return bar
