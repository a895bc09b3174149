"""The in-process memory bank: exact InfoNCE from shard partials, queue / instance contents,
hard negatives, sampling, idempotent pushes, checkpoints, storage dtypes and argument errors."""
import io

import pytest
import torch
import torch.nn.functional as F

from workloads.bank import (
    BankShard,
    LocalBank,
    NegativeBank,
    exact_info_nce,
    merge_partials,
)
from workloads.bank.local import SEEN_STEPS
from workloads.losses import info_nce_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add OpenMP wake-ups


def unit(*shape, seed=0, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                                   dtype=dtype), dim=-1)


def filled(mode, shards, size=48, dim=16, dtype=torch.float32, seed=0):
    bank = LocalBank(size, dim, num_shards=shards, mode=mode, dtype=dtype, seed=seed)
    for step in range(5):
        keys = unit(13, dim, seed=100 + step)
        ids = torch.randint(size, (13,), generator=torch.Generator().manual_seed(step))
        bank.push(keys, ids=ids if mode == "instance" else None, step=step)
    return bank


def loss_and_grads(fn, q, p):
    q, p = q.clone().requires_grad_(), p.clone().requires_grad_()
    loss = fn(q, p)
    loss.backward()
    return loss.detach(), q.grad, p.grad


@pytest.mark.parametrize("mode", ["queue", "instance"])
@pytest.mark.parametrize("shards", [1, 2, 4])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_info_nce_is_exact(mode, shards, tau):
    bank = filled(mode, shards)
    q, p = unit(8, 16, seed=1), unit(8, 16, seed=2)
    got = loss_and_grads(lambda q, p: bank.info_nce(q, p, tau), q, p)
    want = loss_and_grads(lambda q, p: info_nce_loss(q, p, bank.keys(), tau), q, p)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_detached_positive_gets_no_gradient():  # MoCo: the positive is the key encoder's output
    bank = filled("queue", 2)
    q, p = unit(8, 16, seed=1).requires_grad_(), unit(8, 16, seed=2)
    bank.info_nce(q, p, 0.2).backward()
    want = q.detach().clone().requires_grad_()
    info_nce_loss(want, p, bank.keys(), 0.2).backward()
    torch.testing.assert_close(q.grad, want.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shards", [1, 3])
def test_gradcheck_float64(shards):
    bank = filled("instance", shards, size=12, dim=5)
    q, p = unit(4, 5, seed=3, dtype=torch.float64), unit(4, 5, seed=4, dtype=torch.float64)
    q.requires_grad_(), p.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, p: bank.info_nce(q, p, 0.3), (q, p))
    torch.testing.assert_close(bank.info_nce(q, p, 0.3),
                               info_nce_loss(q, p, bank.keys().double(), 0.3), atol=1e-12, rtol=1e-12)


def test_large_logits_are_stable_and_merged_triple_is_accepted():
    bank = filled("queue", 4)
    q, p = 300 * unit(8, 16, seed=5), 300 * unit(8, 16, seed=6)  # logits up to ~1e4 / tau
    got = loss_and_grads(lambda q, p: bank.info_nce(q, p, 0.05), q, p)
    want = loss_and_grads(lambda q, p: info_nce_loss(q, p, bank.keys(), 0.05), q, p)
    assert all(torch.isfinite(t).all() for t in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-3, rtol=1e-5)
    merged = merge_partials([s.partial_lse(q, 0.05) for s in bank.shards])
    torch.testing.assert_close(exact_info_nce(q, p, merged, 0.05), got[0])


def test_partials_merge_and_chunking():
    shard = BankShard(50, 6, seed=1)
    shard.push(unit(37, 6, seed=7))
    q = unit(3, 6, seed=8)
    whole = shard.partial_lse(q, 0.2)
    for a, b in zip(whole, shard.partial_lse(q, 0.2, chunk=4)):
        torch.testing.assert_close(a, b)
    halves = [BankShard(50, 6), BankShard(50, 6), BankShard(50, 6)]  # the last stays empty
    halves[0].push(shard.contents()[:20]), halves[1].push(shard.contents()[20:])
    for a, b in zip(whole, merge_partials([h.partial_lse(q, 0.2) for h in halves])):
        torch.testing.assert_close(a, b)
    M, Z, W = BankShard(4, 6).partial_lse(q, 0.2)
    assert torch.isinf(M).all() and (Z == 0).all() and (W == 0).all()


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_queue_holds_exactly_the_last_size_keys(shards):
    size, gen, pushed = 24, torch.Generator().manual_seed(shards), 0
    bank = LocalBank(size, 3, num_shards=shards)
    for n in [0, 5, 1, 30, 7, 24, 3, 49, 2]:  # smaller and larger than the capacity
        keys = torch.randn(n, 3, generator=gen)
        keys[:, 0] = torch.arange(pushed, pushed + n)  # column 0 names the row
        bank.push(keys)
        pushed += n
        held = sorted(bank.keys()[:, 0].long().tolist())
        assert held == list(range(max(0, pushed - size), pushed))


def test_shard_ring_is_fifo_and_one_big_push_equals_many_small_ones():
    a, b = BankShard(5, 2), BankShard(5, 2)
    rows = torch.arange(26.0).repeat(2, 1).T
    a.push(rows[:3]), a.push(rows[3:])
    for i in range(0, 26, 2):
        b.push(rows[i:i + 2])
    assert a.contents()[:, 0].tolist() == [21, 22, 23, 24, 25]
    assert torch.equal(a.buffer, b.buffer) and (a.ptr, a.count) == (b.ptr, b.count)


def momentum_reference(init, pushes, m):
    v = init.double().clone()
    for ids, keys in pushes:
        for i, f in zip(ids.tolist(), keys.double()):
            v[i] = F.normalize(m * v[i] + (1 - m) * f, dim=0)
    return v


@pytest.mark.parametrize("shards", [1, 3])
def test_instance_entries_follow_the_momentum_formula(shards):
    bank = LocalBank(10, 4, num_shards=shards, mode="instance", momentum=0.7, seed=3)
    init = bank.keys()
    assert torch.allclose(init.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(init, LocalBank(10, 4, 1, "instance", seed=3).keys())  # shard-free
    pushes = [(torch.tensor([1, 1, 9, 1, 4]), unit(5, 4, seed=11)),
              (torch.tensor([9, 0, 9]), 3 * torch.randn(3, 4)), (torch.tensor([], dtype=torch.long),
                                                                  torch.zeros(0, 4))]
    for ids, keys in pushes:
        bank.push(keys, ids=ids)
    torch.testing.assert_close(bank.keys().double(), momentum_reference(init, pushes, 0.7),
                               atol=1e-6, rtol=1e-6)


def test_hardest_equals_brute_force_topk():
    bank, q = filled("queue", 4), unit(6, 16, seed=9)
    neg = bank.hardest(q, 5)
    assert neg.shape == (6, 5, 16)
    torch.testing.assert_close((neg * q[:, None]).sum(-1), (q @ bank.keys().T).topk(5).values)
    assert bank.hardest(q, 1000).shape == (6, 48, 16)  # capped at the keys held
    assert LocalBank(8, 16, 2).hardest(q, 3).shape == (6, 0, 16)
    sims, keys = bank.shards[0].topk(q, 3, chunk=2)
    torch.testing.assert_close(sims, (q @ bank.shards[0].contents().T).topk(3).values)


def test_sample_draws_bank_keys_uniformly_and_reproducibly():
    bank = LocalBank(40, 3, num_shards=4, seed=5)
    keys = torch.randn(6, 3)
    bank.push(keys)  # shards hold 2, 2, 1, 1 keys
    draws = bank.sample(6000)
    match = (draws[:, None] == keys[None]).all(-1)
    assert draws.shape == (6000, 3) and match.sum(1).eq(1).all()
    freq = match.sum(0).float()
    assert ((freq - 1000).abs() < 5 * (6000 * (1 / 6) * (5 / 6)) ** 0.5).all(), freq
    assert torch.equal(LocalBank(40, 3, 4, seed=5).sample(0), torch.zeros(0, 3))
    other = LocalBank(40, 3, num_shards=4, seed=5)
    other.push(keys)
    assert torch.equal(other.sample(6000), draws)


def test_pushes_are_idempotent_by_step_and_rank():
    bank = LocalBank(16, 2, num_shards=2)
    assert bank.push(torch.ones(3, 2), step=0, rank=0)
    assert not bank.push(torch.ones(3, 2), step=0, rank=0)  # a retry
    assert bank.push(torch.ones(3, 2), step=0, rank=1) and bank.push(torch.ones(3, 2))
    assert bank.count == 9 and bank.counter == 9
    for step in range(1, SEEN_STEPS + 5):
        bank.push(torch.ones(1, 2), step=step)
    assert len(bank.seen) == SEEN_STEPS
    assert not bank.push(torch.ones(1, 2), step=1)  # older than anything remembered: never duplicate


@pytest.mark.parametrize("mode", ["queue", "instance"])
def test_state_dict_round_trip(mode):
    a = filled(mode, 2, dtype=torch.bfloat16)
    a.sample(3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = LocalBank(48, 16, num_shards=2, mode=mode, dtype=torch.bfloat16, seed=99)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert not b.push(unit(13, 16), ids=torch.arange(13) if mode == "instance" else None, step=4)
    for bank in (a, b):
        bank.push(unit(20, 16, seed=42), ids=torch.arange(20) * 2 if mode == "instance" else None,
                  step=5)
    q, p = unit(4, 16, seed=1), unit(4, 16, seed=2)
    assert torch.equal(a.keys(), b.keys()) and torch.equal(a.sample(50), b.sample(50))
    assert torch.equal(a.info_nce(q, p, 0.1), b.info_nce(q, p, 0.1))
    assert a.counter == b.counter and a.seen == b.seen


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "bfloat16"])
@pytest.mark.parametrize("mode", ["queue", "instance"])
def test_low_precision_storage(dtype, mode):
    low, full = filled(mode, 2, dtype=dtype), filled(mode, 2)
    assert all(s.buffer.dtype == s.dtype != torch.float32 for s in low.shards)
    assert low.keys().dtype == torch.float32
    torch.testing.assert_close(low.keys(), full.keys(), atol=2e-2, rtol=0)
    q, p = unit(8, 16, seed=1), unit(8, 16, seed=2)
    got = loss_and_grads(lambda q, p: low.info_nce(q, p, 0.1), q, p)
    want = loss_and_grads(lambda q, p: info_nce_loss(q, p, low.keys(), 0.1), q, p)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    bf16_query = loss_and_grads(lambda q, p: low.info_nce(q, p, 0.1), q.bfloat16(), p.bfloat16())
    assert bf16_query[0].dtype == torch.float32 and bf16_query[1].dtype == torch.bfloat16


def test_empty_bank():
    bank = LocalBank(8, 4, num_shards=2)
    q, p = unit(3, 4, seed=1), unit(3, 4, seed=2)
    loss, dq, dp = loss_and_grads(lambda q, p: bank.info_nce(q, p, 0.1), q, p)
    assert loss.item() == 0 and (dq == 0).all() and (dp == 0).all()
    assert info_nce_loss(q, p, bank.keys(), 0.1).item() == 0  # the positive alone: softmax of one
    assert bank.keys().shape == (0, 4) and bank.sample(5).shape == (0, 4)
    assert bank.hardest(q, 2).shape == (3, 0, 4) and bank.count == 0


def test_protocol():
    bank = LocalBank(8, 4)
    assert isinstance(bank, NegativeBank) and (bank.size, bank.dim, bank.mode) == (8, 4, "queue")
    bank.close()


def test_value_errors():
    q = torch.zeros(2, 4)
    queue, inst = LocalBank(8, 4, 2), LocalBank(10, 4, 3, mode="instance")
    shard, ishard = BankShard(4, 4), BankShard(4, 4, mode="instance", first_id=8)
    cases = [
        (lambda: BankShard(0, 4), "capacity"), (lambda: BankShard(4, 0), "dim"),
        (lambda: BankShard(4, 4, mode="ring"), "mode"), (lambda: BankShard(4, 4, momentum=1.0), "momentum"),
        (lambda: BankShard(4, 4, dtype=torch.int8), "dtype"), (lambda: BankShard(4, 4, first_id=-1), "first_id"),
        (lambda: shard.push(torch.zeros(2, 3)), r"keys must be .*\[n, 4\]"),
        (lambda: shard.push(torch.full((1, 4), float("nan"))), "NaN"),
        (lambda: shard.update(torch.tensor([0]), torch.zeros(1, 4)), "update is for mode='instance'"),
        (lambda: ishard.push(torch.zeros(1, 4)), "push is for mode='queue'"),
        (lambda: ishard.update(torch.tensor([12]), torch.zeros(1, 4)), r"ids must lie in \[8, 12\)"),
        (lambda: ishard.update(torch.tensor([8.0]), torch.zeros(1, 4)), "ids must be an integer"),
        (lambda: ishard.update(torch.tensor([8, 9]), torch.zeros(1, 4)), "ids must be an integer"),
        (lambda: shard.partial_lse(q, 0.0), "temperature"),
        (lambda: shard.partial_lse(torch.zeros(2, 5), 0.1), "query"),
        (lambda: shard.topk(q, 0), "k must be"), (lambda: shard.sample(-1), "n must be"),
        (lambda: shard.load_state_dict(BankShard(5, 4).state_dict()), "capacity"),
        (lambda: LocalBank(10, 4, 3), "divisible"), (lambda: LocalBank(5, 4, 4, "instance"), "num_shards=4"),
        (lambda: LocalBank(8, 4, 0), "num_shards"), (lambda: LocalBank(0, 4), "size"),
        (lambda: LocalBank(8, 0), "dim"), (lambda: LocalBank(8, 4, mode="x"), "mode"),
        (lambda: queue.push(q, ids=torch.tensor([0.0, 1.0])), "ids must be an integer tensor"),
        (lambda: queue.push(q, ids=torch.tensor([-2, 0])), r"ids must lie in >= -1"),
        (lambda: shard.push(q, ids=torch.arange(3)), r"ids must be an integer tensor \[2\]"),
        (lambda: queue.info_nce(q, q, 0.1, query_ids=torch.arange(3)), r"query_ids: ids .*\[2\]"),
        (lambda: queue.hardest(q, 1, query_ids=torch.zeros(2)), "query_ids: ids must be an integer"),
        (lambda: shard.load_state_dict(dict(shard.state_dict(), ids=torch.zeros(3, dtype=torch.long))),
         r"state ids must be \[4\]"),
        (lambda: inst.push(q), "ids .* are required"),
        (lambda: inst.push(q, ids=torch.tensor([0, 10])), r"ids must lie in \[0, 10\)"),
        (lambda: inst.push(q, ids=torch.tensor([0])), "ids must be an integer tensor"),
        (lambda: queue.push(torch.zeros(2, 3)), "keys must be"), (lambda: queue.sample(-2), "n must be"),
        (lambda: queue.load_state_dict(LocalBank(8, 4, 4).state_dict()), "num_shards"),
        (lambda: merge_partials([]), "non-empty"),
        (lambda: exact_info_nce(q, q[:1], [shard.partial_lse(q, 1.0)], 1.0), "positive"),
        (lambda: exact_info_nce(q, q, [shard.partial_lse(q, 1.0)], -1.0), "temperature"),
        (lambda: exact_info_nce(q, q, [shard.partial_lse(q[:1], 1.0)], 1.0), "partials"),
        (lambda: exact_info_nce(q, q, [], torch.tensor(1.0, requires_grad=True)), "temperature"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
