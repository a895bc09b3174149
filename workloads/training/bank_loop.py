"""One training epoch with a memory bank: query encoder + momentum key encoder, negatives from the bank.

Order inside a step keeps the staleness contract of workloads.bank.protocol: the bank is queried
with the step's queries first, and only then are the step's keys pushed.
"""
import time
from collections.abc import Callable

import torch
from torch import nn

from workloads.distributed import unwrap
from workloads.methods.bank_objective import BankObjective
from workloads.methods.momentum_contrast import MomentumKeyEncoder
from workloads.training.finite import FiniteGuard
from workloads.training.loop import EpochStats, autocast_for, full_batches


def train_epoch_with_bank(
    query_encoder: nn.Module,
    key_encoder: MomentumKeyEncoder,
    objective: BankObjective,
    optimizer: torch.optim.Optimizer,
    scheduler,
    images: torch.Tensor,
    indices: torch.Tensor,
    augment: nn.Module,
    batch_size: int,
    device: torch.device,
    first_step: int,
    rank: int = 0,
    precision: str = "auto",
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    guard: FiniteGuard | None = None,
) -> EpochStats:
    """`indices` are this worker's data-set ids for the epoch; `first_step` is the global step count so far.
    guard: as train_epoch's; a nan/inf step raises before its optimizer step and before its keys reach the bank."""
    guard = guard or FiniteGuard()
    query_encoder.train()
    plain = unwrap(query_encoder)
    steps = full_batches(len(indices), batch_size)
    total = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in range(steps):
        ids = indices[step * batch_size : (step + 1) * batch_size]
        with torch.no_grad():
            view1, view2 = augment(images[ids].to(device, non_blocking=True))
        global_step = first_step + step
        with autocast_for(device, precision):
            query = query_encoder(view1).float()
            pending = objective.request(query, global_step, query_ids=ids)  # the bank works while the key encoder runs
            positive = key_encoder.keys(view2, global_step).float()
        loss = objective(query, positive, global_step, pending, query_ids=ids)  # own images are no negatives
        optimizer.zero_grad(set_to_none=True)
        guard.backward(loss)
        guard.check(loss, optimizer, step)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        key_encoder.follow(plain)
        objective.bank.push(positive.detach().cpu(), ids=ids, step=global_step, rank=rank)  # keys with their image ids
        total += loss.detach()
        if on_step is not None:
            on_step(step, loss.detach())
    seconds = time.perf_counter() - start
    return EpochStats(float(total) / steps, optimizer.param_groups[0]["lr"], steps * batch_size / seconds, seconds, steps)
