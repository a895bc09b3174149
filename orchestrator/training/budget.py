"""train.max_minutes: a wall-clock budget for a run's training, with one verdict for all its workers."""
import time

import torch
import torch.distributed as dist


class TrainingBudget:
    """Started when training starts (after data and model are ready); `reached()` says whether the
    budget is spent. DDP needs every worker to take the same steps, so with several workers the
    ranks' verdicts are combined (max: any rank late stops all) by one all-reduce of one number."""

    def __init__(self, minutes: float | None, world: int, device: torch.device) -> None:
        self.seconds = None if minutes is None else minutes * 60.0
        self.world, self.device = world, device
        self.deadline = float("inf")

    def start(self) -> None:
        if self.seconds is not None:
            self.deadline = time.monotonic() + self.seconds

    def reached(self) -> bool:
        if self.seconds is None:
            return False
        late = time.monotonic() >= self.deadline
        if self.world > 1:
            flag = torch.tensor(float(late), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            late = bool(flag.item())
        return late

    @property
    def stop(self):
        """The per-step check for the training loop; None without a budget (no check at all)."""
        return None if self.seconds is None else self.reached
