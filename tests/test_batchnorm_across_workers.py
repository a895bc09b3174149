"""BatchNorm and the MoCo key encoder across workers: 2 gloo processes on CPU against one process.

- GlobalBatchNorm under DDP: outputs, running statistics and parameter gradients equal one process's
  plain BatchNorm on the concatenated batch.
- The key encoder: copied after DDP and synchronised, every rank's equals rank 0's, at setup and
  after a resume from a state; shuffle-BN gives each rank the keys of its own images.
- SplitBatchNorm equals BatchNorm applied to each sub-batch.

The pair is spawned once for the module and writes one result file per rank.
"""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from torch import nn

from workloads.methods.momentum_contrast import MomentumKeyEncoder
from workloads.models.batchnorm import (
    GlobalBatchNorm,
    SplitBatchNorm,
    convert_batchnorm,
)

WORLD, ROWS = 2, 8


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    with torch.no_grad():  # affine parameters away from (1, 0), so that their gradients matter
        for bn in (net[1], net[6]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net


def global_batch() -> torch.Tensor:
    return torch.randn(WORLD * ROWS, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1


def loss_of(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A per-row loss that is not symmetric in the rows; summed here, scaled by the caller."""
    return (out.pow(2).sum(1) * torch.linspace(0.5, 1.5, WORLD * ROWS)[rows]).sum()


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        mine = torch.arange(rank * ROWS, (rank + 1) * ROWS)
        net = nn.parallel.DistributedDataParallel(convert_batchnorm(model(), "global"))
        out = net(global_batch()[mine])
        # DDP averages over W ranks: each rank's share of the global mean loss, times W
        (loss_of(out, mine) * WORLD / (WORLD * ROWS)).backward()
        results["bn"] = {"out": out.detach(), "grads": {n: p.grad for n, p in net.module.named_parameters()},
                         "buffers": {n: b.clone() for n, b in net.module.named_buffers()}}

        torch.manual_seed(100 + rank)  # every rank starts from its own random weights
        query = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
        key = MomentumKeyEncoder(query.module, 0.9)
        key.synchronise()
        results["key_setup"] = copy.deepcopy(key.state_dict())
        drifted = {n: t + rank for n, t in key.state_dict().items()}  # a state that differs per rank
        key.load_state_dict(drifted)
        key.synchronise()
        results["key_resumed"] = copy.deepcopy(key.state_dict())

        torch.manual_seed(7)
        identity = nn.Sequential(nn.Linear(4, 4, bias=False))
        nn.init.eye_(identity[0].weight)
        shuffled = MomentumKeyEncoder(identity, 0.9, shuffle="shuffle", seed=3)
        views = torch.randn(WORLD * ROWS, 4, generator=torch.Generator().manual_seed(2))[mine]
        results["shuffle_keys"] = (views, shuffled.keys(views, step=5))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("bn_workers"))
    mp.start_processes(_rank_main, args=(free_port(), out_dir), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_global_batchnorm_on_two_workers_equals_batchnorm_on_the_whole_batch(ranks):
    reference = model()
    out = reference(global_batch())
    (loss_of(out, torch.arange(WORLD * ROWS)) / (WORLD * ROWS)).backward()
    got = torch.cat([r["bn"]["out"] for r in ranks])
    assert torch.allclose(got, out.detach(), atol=1e-5)
    for rank in ranks:
        for name, param in reference.named_parameters():
            assert torch.allclose(rank["bn"]["grads"][name], param.grad, atol=1e-5), name
        for name, buffer in reference.named_buffers():
            assert torch.allclose(rank["bn"]["buffers"][name].float(), buffer.float(), atol=1e-5), name


@pytest.mark.slow
def test_local_batchnorm_on_two_workers_differs(ranks):
    """The check above can fail: per-worker statistics give other outputs."""
    local = model()
    halves = torch.cat([local(half) for half in global_batch().chunk(WORLD)])
    assert not torch.allclose(torch.cat([r["bn"]["out"] for r in ranks]), halves, atol=1e-3)


@pytest.mark.slow
def test_every_rank_has_rank_zeros_key_encoder_after_setup_and_after_a_resume(ranks):
    for stage in ("key_setup", "key_resumed"):
        for name, tensor in ranks[0][stage].items():
            assert torch.equal(ranks[1][stage][name], tensor), (stage, name)
    # the resumed state is rank 0's drifted one, not the setup one: synchronise really broadcast
    weight = "0.weight"
    assert torch.equal(ranks[1]["key_resumed"][weight], ranks[0]["key_setup"][weight])


@pytest.mark.slow
def test_shuffle_bn_gives_each_rank_the_keys_of_its_own_images(ranks):
    for rank in ranks:
        views, keys = rank["shuffle_keys"]
        assert torch.allclose(keys, views, atol=1e-6), "un-shuffled: an identity encoder returns the views"


def test_shuffle_bn_mixes_the_workers_images_in_each_batchnorm():
    """With BN in the key encoder, a rank's keys depend on the other rank's images only through the
    shuffle: checked without a process group by split mode (the one-worker stand-in)."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    views = torch.randn(16, 4)
    split = MomentumKeyEncoder(convert_batchnorm(copy.deepcopy(encoder), "split", 4), 0.9, shuffle="split", seed=1)
    plain = MomentumKeyEncoder(encoder, 0.9)
    keys = split.keys(views, step=0)
    assert keys.shape == views.shape and not torch.allclose(keys, plain.keys(views), atol=1e-3)
    # row i's key is computed from row i's view: un-shuffled, with BN over the shuffled sub-batch it sat in
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1 * 1_000_003 + 0))
    by_group = torch.empty_like(keys)
    for group in order.view(4, 4):
        by_group[group] = encoder(views[group])
    assert torch.allclose(keys, by_group, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 6), (16, 6, 5, 5)])
def test_split_batchnorm_is_batchnorm_per_sub_batch(shape):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(6) if len(shape) == 2 else nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    split = convert_batchnorm(copy.deepcopy(bn), "split", 4)
    assert isinstance(split, SplitBatchNorm)
    x = torch.randn(*shape) * 3 + 2
    assert torch.allclose(split(x), torch.cat([bn(part) for part in x.chunk(4)]), atol=1e-5)
    with pytest.raises(ValueError, match="batch of 18 does not split into 4"):
        split(torch.randn(18, *shape[1:]))
    dims = [0, *range(2, len(shape))]
    group_means = torch.stack([part.mean(dims) for part in x.chunk(4)])
    assert torch.allclose(split.running_mean, 0.1 * group_means.mean(0), atol=1e-5), "momentum 0.1 from zeros"
    split.eval()
    reference = copy.deepcopy(bn)
    reference.load_state_dict(split.state_dict())
    assert torch.allclose(split(x), reference.eval()(x), atol=1e-5), "eval: the running statistics"


def test_global_batchnorm_without_a_process_group_is_batchnorm():
    bn = nn.BatchNorm2d(3)
    global_bn = convert_batchnorm(copy.deepcopy(bn), "global")
    assert isinstance(global_bn, GlobalBatchNorm)
    x = torch.randn(8, 3, 4, 4)
    assert torch.equal(global_bn(x), bn(x))
    assert torch.equal(global_bn.running_var, bn.running_var)
    assert set(global_bn.state_dict()) == set(bn.state_dict()), "checkpoints load into plain BatchNorm"
