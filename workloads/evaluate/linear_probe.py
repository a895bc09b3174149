"""Linear-probe accuracy: a softmax linear classifier trained on frozen features.

Features are standardised with the training set's per-dimension mean and standard deviation
(applied to both sets). A ``D -> C`` linear layer, initialised to zero, then minimises the
convex objective

    mean cross-entropy + weight_decay / 2 * ||W||^2        (the bias is not penalised)

The weight decay is the probe's one hyperparameter, and it is chosen on the training features
alone, never on the data being scored: by default (``weight_decay=None``) each of
``WEIGHT_DECAYS`` is fitted on a stratified 80 % of the training features and scored on the other
20 % (``select_weight_decay``; the best accuracy wins, ties going to the lower held-out
cross-entropy), and the probe is then refitted on all the training features with the winner. A
float fixes it instead. (The former fixed default, 5e-3, had been picked by scores on a validation
split: an optimistic choice where that split is what is reported.)

Default solver: full-batch L-BFGS with a strong-Wolfe line search (``optimizer="lbfgs"``).
On a few thousand feature vectors the whole training set is one small matrix product, so
full-batch is cheap; L-BFGS reaches the optimum of the objective in ~100 iterations with no
learning rate to tune, the answer depends on ``weight_decay`` alone (not on lr or a schedule),
and there is no randomness at all. It also keeps the number of tiny kernel launches low, which
matters on a busy shared CPU: ~4000 x 512 features take well under a second on 2 cores.
``optimizer="adam"`` instead runs mini-batch Adam (``batch_size``, cosine-decayed ``lr``,
``epochs`` passes, batches ordered by a ``torch.Generator`` seeded with ``seed``) on the same
objective, for sets too large for full-batch. ``epochs=100`` L-BFGS iterations converge on such
sets (500 changed the accuracy by 0.001).

On the CPU the fit runs single-threaded (the previous thread count is restored afterwards):
its matrices are too small to gain from intra-op threads, and on a busy machine two OpenMP
threads waiting on each other made the fit 10-40x slower (5-50 s instead of ~1 s) in our
measurements. One thread also makes the result independent of the machine's thread count.
Either way the same inputs give the same accuracy on every call (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.split import stratified_split
from .knn import check_features_labels

__all__ = ["LinearProbe", "WEIGHT_DECAYS", "fit_linear_probe", "linear_probe_accuracy", "select_weight_decay"]

_OPTIMIZERS = ("lbfgs", "adam")
WEIGHT_DECAYS = (1e-4, 1e-3, 5e-3, 2e-2, 1e-1)  # the candidates select_weight_decay tries
SELECTION_FRACTION = 0.2  # of the training features, held out to choose the weight decay
FALLBACK_WEIGHT_DECAY = 5e-3  # when the training set is too small to hold any out


class LinearProbe:
    """A fitted probe: standardisation (the fitted set's) and the linear layer."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 weight_decay: float):
        self.weight, self.bias, self.mean, self.std, self.weight_decay = weight, bias, mean, std, weight_decay

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.weight.device, dtype=torch.float32)
        return F.linear((x - self.mean) / self.std, self.weight, self.bias)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy in [0, 1] on features x [N, D] with labels y [N]."""
        x, y, _, _ = check_features_labels(x, y, x, y)
        if x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"x has feature dimension {x.shape[1]}, the probe {self.weight.shape[1]}")
        return int((self.logits(x).argmax(dim=1) == y.to(self.weight.device)).sum()) / x.shape[0]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean cross-entropy on x, y (labels must be < the probe's classes)."""
        return float(F.cross_entropy(self.logits(x), y.to(self.weight.device)))


def _check_options(epochs, lr, batch_size, optimizer, weight_decay) -> float:
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {optimizer!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if lr is None:
        lr = 1.0 if optimizer == "lbfgs" else 1e-2
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if weight_decay is not None and not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return lr


def _num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    max_label = max(int(y.max()) for y in labels)
    if num_classes is None:
        return max_label + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= max_label:
        raise ValueError(f"num_classes must be an integer > the largest label ({max_label}), got {num_classes!r}")
    return num_classes


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    weight_decay: float | None = None,
    epochs: int = 100,
    lr: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    optimizer: str = "lbfgs",
    candidates: Sequence[float] = WEIGHT_DECAYS,
) -> LinearProbe:
    """Fit the probe on training features (arguments as in ``linear_probe_accuracy``).

    weight_decay None: chosen among ``candidates`` by ``select_weight_decay`` on these features."""
    train_x, train_y, _, _ = check_features_labels(train_x, train_y, train_x, train_y)
    lr = _check_options(epochs, lr, batch_size, optimizer, weight_decay)
    num_classes = _num_classes(num_classes, train_y)
    if weight_decay is None:
        weight_decay = select_weight_decay(train_x, train_y, candidates, seed=seed, epochs=epochs, lr=lr,
                                           batch_size=batch_size, device=device, num_classes=num_classes,
                                           optimizer=optimizer)
    return _fit(train_x, train_y, weight_decay, epochs, lr, batch_size, seed, device, num_classes, optimizer)


def select_weight_decay(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    candidates: Sequence[float] = WEIGHT_DECAYS,
    holdout_fraction: float = SELECTION_FRACTION,
    seed: int = 0,
    **fit_options,
) -> float:
    """The weight decay among ``candidates`` whose probe, fitted on a stratified (seeded) share of the
    training features, scores best on the rest (accuracy; ties: the lower cross-entropy, then the
    earlier candidate). Only training features are used. ``FALLBACK_WEIGHT_DECAY`` when no row can
    be held out (too few per class)."""
    candidates = [float(c) for c in candidates]
    if not candidates or any(not c >= 0 for c in candidates):
        raise ValueError(f"candidates must be a non-empty list of weight decays >= 0, got {candidates!r}")
    if len(candidates) == 1:
        return candidates[0]
    train_x, train_y, _, _ = check_features_labels(train_x, train_y, train_x, train_y)
    fit_rows, held_rows = stratified_split(train_y.cpu(), holdout_fraction, seed)
    if len(held_rows) == 0 or len(fit_rows) == 0:
        return FALLBACK_WEIGHT_DECAY
    options = {"epochs": 100, "lr": None, "batch_size": 256, "device": None, "num_classes": None, "optimizer": "lbfgs",
               **fit_options}
    options["lr"] = _check_options(options["epochs"], options["lr"], options["batch_size"], options["optimizer"], 0.0)
    options["num_classes"] = _num_classes(options["num_classes"], train_y)
    fit_x, fit_y = train_x[fit_rows.to(train_x.device)], train_y[fit_rows.to(train_y.device)]
    held_x, held_y = train_x[held_rows.to(train_x.device)], train_y[held_rows.to(train_y.device)]
    scored = []
    for index, candidate in enumerate(candidates):
        probe = _fit(fit_x, fit_y, candidate, seed=seed, **options)
        scored.append((-probe.accuracy(held_x, held_y), probe.loss(held_x, held_y), index))
    return candidates[min(scored)[2]]


def _fit(train_x, train_y, weight_decay, epochs, lr, batch_size, seed, device, num_classes, optimizer) -> LinearProbe:
    device = torch.device(device) if device is not None else train_x.device
    train_x = train_x.to(device=device, dtype=torch.float32)
    train_y = train_y.to(device)
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, correction=0).clamp_min(1e-6)  # constant features stay finite
    train_x = (train_x - mean) / std
    weight = torch.zeros(num_classes, train_x.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    with torch.enable_grad(), _single_thread_if_cpu(device):
        if optimizer == "lbfgs":
            _fit_lbfgs(weight, bias, train_x, train_y, epochs, lr, weight_decay)
        else:
            _fit_adam(weight, bias, train_x, train_y, epochs, lr, weight_decay, batch_size, seed)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, float(weight_decay))


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, **fit_options
) -> float:
    """Top-1 test accuracy in [0, 1] of a linear classifier trained on ``train_x``.

    Args:
        train_x, test_x: frozen features ``[N, D]`` (standardised here with train statistics).
        train_y, test_y: integer class labels ``[N]``.
        fit_options: ``fit_linear_probe``'s, by name:
        epochs: L-BFGS: the most iterations; Adam: passes over the training set. >= 1.
        lr: L-BFGS: initial step (default 1.0); Adam: peak learning rate (default 1e-2). > 0.
        weight_decay: L2 coefficient on the weights (not the bias), >= 0; None (default): chosen
            on a held-out share of the training features (``select_weight_decay``), never on test.
        batch_size: Adam's mini-batch size (clipped to the training set); unused by L-BFGS.
        seed: seeds the weight-decay hold-out and the generator that orders Adam's mini-batches.
        device: where to train; default ``train_x``'s device.
        num_classes: number of classes; default ``max(label) + 1`` over train and test.
        optimizer: ``"lbfgs"`` (full batch, default) or ``"adam"`` (mini-batch).
    """
    train_x, train_y, test_x, test_y = check_features_labels(train_x, train_y, test_x, test_y)
    num_classes = _num_classes(fit_options.pop("num_classes", None), train_y, test_y)
    probe = fit_linear_probe(train_x, train_y, num_classes=num_classes, **fit_options)
    return probe.accuracy(test_x, test_y)


@contextlib.contextmanager
def _single_thread_if_cpu(device: torch.device):
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_lbfgs(weight, bias, x, y, max_iter, lr, weight_decay) -> None:
    opt = torch.optim.LBFGS(
        [weight, bias], lr=lr, max_iter=max_iter, history_size=10,
        line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10,
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(F.linear(x, weight, bias), y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


def _fit_adam(weight, bias, x, y, epochs, lr, weight_decay, batch_size, seed) -> None:
    n = x.shape[0]
    batch_size = min(batch_size, n)
    total_steps = epochs * math.ceil(n / batch_size)
    # Adam's coupled weight_decay adds weight_decay * W to the gradient: the same L2 objective.
    opt = torch.optim.Adam(
        [{"params": [weight], "weight_decay": weight_decay}, {"params": [bias], "weight_decay": 0.0}], lr=lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / total_steps)))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(F.linear(x[idx], weight, bias), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
