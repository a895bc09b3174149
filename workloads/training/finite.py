"""The non-finite guard: a nan or inf loss, or gradient norm, stops training at that step.

Each loop calls `guard.backward(loss)` instead of `loss.backward()`, then `guard.check(loss, optimizer,
step)` before `optimizer.step()` (and before a bank push): so the optimizer never steps with a
non-finite gradient and the bank never receives a key of that step.

Data parallelism: every rank must stop at the same step, or the others wait in the next all-reduce.
The gradient norm is the same on every rank after DDP's all-reduce; the loss is per rank. So
`backward` turns a rank's non-finite loss into nan gradients (loss x nan; x 1.0 otherwise, which
changes nothing), the all-reduce carries them to every rank, and every rank's `check` raises at that
step: the one whose loss it was with "loss became nan", the others with "gradient norm became nan".

Cost: one host read per step (the loss and the gradient norm together, as two floats), the norm
itself (one foreach pass over the gradients) and one scalar multiply. On the CPU the read costs
nothing (nothing runs ahead); on an accelerator it is one synchronisation per step.
"""
import math

import torch

from workloads.errors import NonFiniteLossError


class FiniteGuard:
    """Per run: `epoch` (0-based, as MLflow's step of train/loss) is set by the caller each epoch for
    the message; `last_loss` is the last finite step loss seen, across epochs."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch
        self.last_loss: float | None = None

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        """loss.backward(), a non-finite loss poisoning every gradient (see the module docstring)."""
        poison = torch.where(torch.isfinite(loss.detach()), 1.0, math.nan)  # on the device: no sync
        (loss * poison).backward()

    def check(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, step: int) -> float:
        """After backward, before the optimizer's step: the step's loss as a float, or NonFiniteLossError
        naming what became non-finite, the epoch and step (0-based, within the epoch), the lr and the
        last finite loss."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        loss_value, norm_value = torch.stack([loss.detach().float(), norm.float().to(loss.device)]).tolist()  # one sync
        if math.isfinite(loss_value):
            self.last_loss = loss_value
            if math.isfinite(norm_value):
                return loss_value
        what, value = ("loss", loss_value) if not math.isfinite(loss_value) else ("gradient norm", norm_value)
        last = "none" if self.last_loss is None else f"{self.last_loss:.4g}"
        lr = float(optimizer.param_groups[0]["lr"])
        raise NonFiniteLossError(f"{what} became {value} at epoch {self.epoch} step {step} "
                                 f"(lr {lr:.4g}, last finite loss {last})", self.epoch, step)
