"""No image is its own negative, on the in-process LocalBank (the exactness reference): keys carry
their image ids through pushes, sharding, FIFO eviction and checkpoints; queries exclude their own
id on the shards (hardest, exact InfoNCE with its gradient) and in the sampled objective."""
import io

import pytest
import torch
from own_id_checks import brute_info_nce, check_own_id, own_case, unit, value_and_grads

from workloads.bank import BankShard, LocalBank, own_mask
from workloads.losses import info_nce_loss, npair_loss
from workloads.methods.bank_objective import masked_softmax_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode", ["queue", "instance"])
@pytest.mark.parametrize("shards", [1, 2, 4])
def test_no_query_is_its_own_negative(mode, shards):
    bank = LocalBank(48, 16, num_shards=shards) if mode == "queue" else \
        LocalBank(30, 8, num_shards=shards, mode="instance", momentum=0.5)
    check_own_id(bank, *own_case(bank))


@pytest.mark.parametrize("shards", [1, 3])
def test_queue_ids_travel_with_their_keys_through_sharding_and_eviction(shards):
    bank, pushed = LocalBank(24, 3, num_shards=shards), 0
    for n in [5, 1, 30, 7, 0, 24, 3]:
        keys = torch.randn(n, 3)
        keys[:, 0] = torch.arange(pushed, pushed + n)  # column 0 names the row, its id is 1000 + row
        bank.push(keys, ids=1000 + torch.arange(pushed, pushed + n) if n != 7 else None)
        pushed += n
        keys, ids = bank.keys(with_ids=True)
        rows = keys[:, 0].long()
        assert sorted(rows.tolist()) == list(range(max(0, pushed - 24), pushed))
        unknown = (rows >= 36) & (rows < 43)  # the push without ids
        assert torch.equal(ids[~unknown], 1000 + rows[~unknown]) and (ids[unknown] == -1).all()


def test_instance_ids_are_the_entries_and_unknown_ids_match_nothing():
    bank = LocalBank(10, 4, num_shards=3, mode="instance")
    keys, ids = bank.keys(with_ids=True)
    assert torch.equal(ids, torch.arange(10))
    q, p = unit(3, 4, 1), unit(3, 4, 2)
    everything = bank.info_nce(q, p, 0.3)
    assert torch.equal(bank.info_nce(q, p, 0.3, query_ids=torch.full((3,), -1)), everything)
    queue = LocalBank(8, 4)
    queue.push(unit(8, 4, 3))  # ids unknown: never excluded, whatever the query's id
    assert torch.equal(queue.info_nce(q, p, 0.3, query_ids=torch.tensor([-1, 0, 5])), queue.info_nce(q, p, 0.3))
    assert own_mask(None, ids) is None
    assert own_mask(torch.tensor([3, -1]), torch.tensor([3, -1, 4])).tolist() == [[True, False, False],
                                                                                  [False, False, False]]


def test_a_row_whose_keys_are_all_its_own():
    shard = BankShard(6, 4)
    shard.push(unit(6, 4, 5), ids=torch.tensor([7, 7, 7, 7, 7, 7]))
    q = unit(2, 4, 6)
    M, Z, W = shard.partial_lse(q, 0.1, query_ids=torch.tensor([7, 8]), chunk=4)
    assert torch.isinf(M[0]) and Z[0] == 0 and (W[0] == 0).all()  # no key left: (-inf, 0, 0)
    whole = shard.partial_lse(q[1:], 0.1)
    for a, b in zip((M[1:], Z[1:], W[1:]), whole):
        torch.testing.assert_close(a, b)
    bank = LocalBank(6, 4, mode="queue")
    bank.push(shard.contents(), ids=torch.full((6,), 7))
    p = unit(2, 4, 7)
    got = value_and_grads(lambda q, p: bank.info_nce(q, p, 0.1, query_ids=torch.tensor([7, 8])), q, p)
    keys, kids = bank.keys(with_ids=True)
    want = value_and_grads(
        lambda q, p: brute_info_nce(q.double(), p.double(), keys, kids, torch.tensor([7, 8]), 10.0), q, p)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    assert bank.hardest(q, 3, query_ids=torch.tensor([7, 8])).shape == (2, 0, 4)  # row 0 has none


def test_masked_chunks_equal_one_chunk_and_gradcheck():
    bank = LocalBank(40, 5, num_shards=2)
    bank.push(unit(40, 5, 8).double(), ids=torch.arange(40) % 6)
    qids = torch.tensor([0, 3, 5, 9])
    q = unit(4, 5, 9).double()
    for shard in bank.shards:
        for a, b in zip(shard.partial_lse(q, 0.2, qids, chunk=3), shard.partial_lse(q, 0.2, qids)):
            torch.testing.assert_close(a, b)
        s3, k3 = shard.topk(q, 4, qids, chunk=3)
        s, k = shard.topk(q, 4, qids)
        torch.testing.assert_close(s3, s)
    p = unit(4, 5, 10).double()
    q.requires_grad_(), p.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, p: bank.info_nce(q, p, 0.3, query_ids=qids), (q, p))


def test_masked_softmax_loss_is_info_nce_and_npair_without_a_mask():
    q, p, n = unit(5, 6, 1), unit(5, 6, 2), unit(9, 6, 3)
    none = torch.zeros(5, 9, dtype=torch.bool)
    torch.testing.assert_close(masked_softmax_loss(q, p, n, none, 1 / 0.2), info_nce_loss(q, p, n, 0.2))
    torch.testing.assert_close(masked_softmax_loss(q, p, n, none, 1.0), npair_loss(q, p, n.expand(5, -1, -1)))
    drop = torch.rand(5, 9, generator=torch.Generator().manual_seed(0)) < 0.5
    by_rows = torch.stack([info_nce_loss(q[b:b + 1], p[b:b + 1], n[~drop[b]], 0.2) for b in range(5)]).mean()
    torch.testing.assert_close(masked_softmax_loss(q, p, n, drop, 1 / 0.2), by_rows)


@pytest.mark.parametrize("mode", ["queue", "instance"])
def test_ids_are_saved_and_an_old_state_loads_with_unknown_ids(mode):
    a = LocalBank(48, 16, num_shards=2) if mode == "queue" else LocalBank(30, 8, 2, "instance")
    q, p, qids = own_case(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    b = LocalBank(a.size, a.dim, num_shards=2, mode=mode)
    b.load_state_dict(state)
    for x, y in zip(a.keys(with_ids=True), b.keys(with_ids=True)):
        assert torch.equal(x, y)
    assert torch.equal(a.info_nce(q, p, 0.1, query_ids=qids), b.info_nce(q, p, 0.1, query_ids=qids))
    for shard in state["shards"]:
        del shard["ids"]  # a checkpoint from before keys carried ids
    b.load_state_dict(state)
    keys, ids = b.keys(with_ids=True)
    assert torch.equal(keys, a.keys())
    assert torch.equal(ids, torch.full((48,), -1) if mode == "queue" else torch.arange(30))
