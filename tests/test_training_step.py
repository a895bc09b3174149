"""The contrastive method and the training step, in plain PyTorch (no Ray)."""
import pytest
import torch

from workloads.augment import SimCLRAugment
from workloads.losses import info_nce_loss, npair_loss
from workloads.methods.contrastive import LOSSES, ContrastiveLearner, two_view_loss
from workloads.models import ProjectionHead, build_backbone
from workloads.training.compiled import compile_or_eager
from workloads.training.loop import epoch_shard, train_epoch, use_channels_last, warmup_cosine


def learner(loss: str) -> ContrastiveLearner:
    torch.manual_seed(0)
    backbone = build_backbone("small_convnet", width=4)
    return ContrastiveLearner(backbone, ProjectionHead(backbone.feature_dim, 16, 8), loss, 0.5, 1.0)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_gives_a_finite_loss_and_gradients(loss):
    model = learner(loss)
    views = torch.randn(2, 6, 3, 16, 16)
    value = model(views[0], views[1])
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_in_batch_negatives_are_the_other_images():
    z1, z2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    explicit = torch.stack([z2[[j for j in range(5) if j != i]] for i in range(5)])
    assert torch.allclose(two_view_loss(z1, z2, "npair", 0.5, 1.0), npair_loss(z1, z2, explicit))
    assert torch.allclose(two_view_loss(z1, z2, "info_nce", 0.5, 1.0), info_nce_loss(z1, z2, explicit, 0.5))


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss 'simclr'; valid: nt_xent"):
        learner("simclr")


def test_epoch_shards_are_disjoint_equal_and_change_per_epoch():
    shards = [epoch_shard(103, epoch=2, seed=1, rank=r, world_size=3, batch_size=12) for r in range(3)]
    assert [len(s) for s in shards] == [8 * 4] * 3, "8 full global batches of 12: 4 images per worker per step"
    joined = torch.cat(shards)
    assert len(set(joined.tolist())) == 96 and set(joined.tolist()) <= set(range(103))
    assert not torch.equal(epoch_shard(103, 3, 1, 0, 3, 12), shards[0])
    assert torch.equal(epoch_shard(103, 2, 1, 0, 3, 12), shards[0])


@pytest.mark.parametrize("samples,world,batch", [(103, 3, 12), (100, 4, 8), (50, 2, 50), (77, 7, 14)])
def test_epoch_shards_are_the_one_worker_global_batch_cut_in_rank_order(samples, world, batch):
    one = epoch_shard(samples, epoch=1, seed=3, rank=0, world_size=1, batch_size=batch)
    shards = [epoch_shard(samples, 1, 3, r, world, batch) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every worker has the same number of steps"
    per = batch // world
    for step in range(samples // batch):
        global_batch = torch.cat([s[step * per : (step + 1) * per] for s in shards])
        assert torch.equal(global_batch, one[step * batch : (step + 1) * batch])


def test_epoch_shard_rejects_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="multiple of the 3 workers"):
        epoch_shard(100, 0, 0, 0, 3, batch_size=10)


@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "bf16_channels_last_fused"])
def test_train_epoch_lowers_the_loss_and_reports_throughput(fast):
    """Also the CPU fast path: NHWC model and views, bf16 autocast, the fused augmentation."""
    torch.manual_seed(0)
    model = learner("nt_xent")
    if fast:
        model = model.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    augment = SimCLRAugment(16, crop_scale=(0.8, 1.0), jitter_p=0.0, grayscale_p=0.0, fused=fast)
    options = dict(precision="bf16", channels_last=True) if fast else {}
    first = train_epoch(model, optimizer, None, images, torch.arange(64), augment, 32, torch.device("cpu"), **options)
    for _ in range(15):
        last = train_epoch(model, optimizer, None, images, torch.arange(64), augment, 32, torch.device("cpu"),
                           **options)
    assert last.loss < first.loss - 0.1
    assert last.steps == 2 and last.images_per_s > 0
    conv = model.backbone.features[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == fast and conv.dtype == torch.float32


def test_channels_last_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", cuda) and not use_channels_last("auto", cpu)
    assert use_channels_last(True, cpu) and not use_channels_last(False, cuda)


class CannotCompile(torch.nn.Linear):
    def compile(self, *args, **kwargs):  # a platform where torch.compile is unavailable
        raise RuntimeError("no compiler here")


def test_compile_falls_back_to_eager_where_unavailable():
    module = CannotCompile(4, 2)
    with pytest.warns(UserWarning, match="torch.compile is unavailable here .*no compiler here.*runs eagerly"):
        assert compile_or_eager(module) is module
    x = torch.randn(3, 4)
    torch.testing.assert_close(module(x), x @ module.weight.T + module.bias)


def test_batch_larger_than_the_shard_is_a_clear_error():
    model = learner("nt_xent")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="batch_size 64 is larger than this worker's 10 training images"):
        train_epoch(model, optimizer, None, torch.zeros(10, 3, 16, 16, dtype=torch.uint8), torch.arange(10),
                    SimCLRAugment(16), 64, torch.device("cpu"))


def test_warmup_then_cosine_schedule():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=20, warmup_steps=5)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] < 0.01 and max(rates) == pytest.approx(1.0, abs=0.01)
    assert rates.index(max(rates)) == 5 and rates[-1] < 0.05
