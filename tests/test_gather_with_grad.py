"""gather_with_grad under DDP: 2 gloo processes on CPU, each with half of a fixed global batch, give
after one backward the parameter gradients of one process on the whole batch.

The pair is spawned once for the module; it runs every case and saves its results to a file per rank.
The model has no BatchNorm (whose batch statistics differ per rank unless synchronised).
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import free_port
from torch import nn

from workloads.distributed import gather_with_grad, rank_and_world
from workloads.methods.contrastive import LOSSES, ContrastiveLearner

WORLD, ROWS, IN_DIM = 2, 6, 12  # a global batch of 12 images, 6 per rank
TEMPERATURE, MARGIN = 0.5, 1.5  # margin 1.5 on unit vectors: most negative pairs are inside it
TOL = 1e-5


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


def learner(loss: str, gather: bool = True) -> ContrastiveLearner:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(IN_DIM, 16), nn.Tanh(), nn.Linear(16, 16))
    head = nn.Sequential(nn.Linear(16, 8), Normalize())
    return ContrastiveLearner(backbone, head, loss, TEMPERATURE, MARGIN, gather=gather)


def global_views() -> torch.Tensor:
    """[2 views, WORLD * ROWS images, IN_DIM]; rank r holds images r*ROWS .. (r+1)*ROWS - 1."""
    return torch.randn(2, WORLD * ROWS, IN_DIM, generator=torch.Generator().manual_seed(1))


def step(model: nn.Module, views: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    value = model(views[0], views[1])
    value.backward()
    module = getattr(model, "module", model)
    return value.detach(), {name: p.grad.clone() for name, p in module.named_parameters()}


def weights_for(rows: int) -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, rows * 3).view(rows, 3)


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {"rank_and_world": rank_and_world()}
        # The helper alone: every rank computes the same loss sum(weights * gathered).
        x = torch.arange(ROWS * 3, dtype=torch.float32).view(ROWS, 3).add(100 * rank).requires_grad_()
        gathered = gather_with_grad(x)
        (weights_for(WORLD * ROWS) * gathered).sum().backward()
        results["gathered"], results["x_grad"] = gathered.detach(), x.grad
        views = global_views()[:, rank * ROWS : (rank + 1) * ROWS]
        for loss in LOSSES:
            for gather in (True, False):
                ddp = nn.parallel.DistributedDataParallel(learner(loss, gather))
                results[f"{loss}/{gather}"] = step(ddp, views)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gather")
    mp.spawn(_rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def one_process(loss: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    assert not dist.is_initialized()
    return step(learner(loss), global_views())


@pytest.mark.slow
def test_the_helper_concatenates_in_rank_order_and_scales_the_gradient_by_world(ranks):
    expected = torch.cat([torch.arange(ROWS * 3, dtype=torch.float32).view(ROWS, 3).add(100 * r) for r in range(WORLD)])
    weights = weights_for(WORLD * ROWS)
    for rank, result in enumerate(ranks):
        assert result["rank_and_world"] == (rank, WORLD)
        assert torch.equal(result["gathered"], expected)
        # d(loss)/d(own rows) = weights of the own rows; times W so that DDP's mean gives it back
        assert torch.equal(result["x_grad"], WORLD * weights[rank * ROWS : (rank + 1) * ROWS])


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)  # the issue names nt_xent, contrastive, lifted_structured
def test_ddp_gradients_with_gather_equal_one_process_on_the_global_batch(ranks, loss):
    value, grads = one_process(loss)
    for result in ranks:
        rank_value, rank_grads = result[f"{loss}/True"]
        torch.testing.assert_close(rank_value, value, atol=TOL, rtol=0)  # every rank: the global loss
        assert rank_grads.keys() == grads.keys()
        for name, grad in grads.items():
            assert grad.abs().max() > 1e-3, name  # a gradient that could be wrong
            torch.testing.assert_close(rank_grads[name], grad, atol=TOL, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_without_gather_each_rank_sees_only_its_rows_and_the_gradients_differ(ranks, loss):
    value, grads = one_process(loss)
    rank_values = [result[f"{loss}/False"][0] for result in ranks]
    assert all(abs(v - value) > 1e-3 for v in rank_values) and abs(rank_values[0] - rank_values[1]) > 1e-3
    rank_grads = ranks[0][f"{loss}/False"][1]
    assert max((rank_grads[n] - g).abs().max() for n, g in grads.items()) > 1e-3


def test_identity_without_a_process_group():
    assert not dist.is_initialized() and rank_and_world() == (0, 1)
    x = torch.randn(4, 3, requires_grad=True)
    y = gather_with_grad(x)
    assert torch.equal(y, x)
    weights = torch.randn(4, 3)
    (weights * y).sum().backward()
    assert torch.equal(x.grad, weights)


@pytest.mark.parametrize("loss", LOSSES)
def test_gather_changes_nothing_on_one_process(loss):
    views = global_views()
    value, grads = step(learner(loss, gather=True), views)
    plain_value, plain_grads = step(learner(loss, gather=False), views)
    assert torch.equal(value, plain_value)
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads)
