"""ShardedMemoryBank on a real local Ray (the session's `ray_local`): exactness against the local
formulas and LocalBank, queue and instance semantics, exactly-once pushes, the staleness bound,
a shard restart, checkpoints, and that no query's own image is its negative. The multi-node placement test is tests/test_memory_bank_cluster.py.

Banks are created once per module (lazily) and emptied with reset() between tests: every shard
is an actor process, and starting one costs seconds on a small machine."""

import os
import pickle
import time

import numpy as np
import pytest
import ray
import torch
import torch.nn.functional as F
from own_id_checks import check_own_id, own_case

from orchestrator.memory_bank import BankTimeoutError, ShardedMemoryBank
from orchestrator.memory_bank.wire import from_wire, to_wire
from workloads.bank import LocalBank, NegativeBank
from workloads.losses import info_nce_loss

pytestmark = pytest.mark.slow  # shard actors in the session's local Ray (~40 s): the default suite runs them

DIM, K, TAU = 16, 48, 0.2
CONFIGS = {
    "q1": dict(size=K, dim=DIM, num_shards=1),
    "q2": dict(size=K, dim=DIM, num_shards=2, world_size=2),
    "q4": dict(size=K, dim=DIM, num_shards=4),
    "i1": dict(size=30, dim=8, num_shards=1, mode="instance", momentum=0.5),
    "i2": dict(size=30, dim=8, num_shards=2, mode="instance", momentum=0.5),
    "i4": dict(size=30, dim=8, num_shards=4, mode="instance", momentum=0.5),
}


@pytest.fixture(scope="module")
def banks(ray_local):
    made = {}

    def get(name):
        if name not in made:
            made[name] = ShardedMemoryBank(**CONFIGS[name])
        made[name].reset()
        return made[name]

    yield get
    for bank in made.values():
        bank.close()


def unit(n, dim=DIM, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def rows(t, ids=None):
    """The rows in a canonical order (with ids: each row with its id)."""
    return sorted(map(tuple, (t if ids is None else torch.cat([t, ids[:, None].to(t.dtype)], 1)).tolist()))


def assert_exact(bank, local, seed):
    """info_nce equals info_nce_loss over bank.keys() and LocalBank: value and grads, 1e-5."""
    q = unit(6, seed=seed).requires_grad_(True)
    p = unit(6, seed=seed + 1).requires_grad_(True)
    loss = bank.info_nce(q, p, TAU)
    loss.backward()
    gq, gp = q.grad.clone(), p.grad.clone()
    q.grad = p.grad = None
    ref = info_nce_loss(q, p, bank.keys(), TAU)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(gq, q.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(gp, p.grad, atol=1e-5, rtol=0)
    assert loss.item() == pytest.approx(local.info_nce(q, p, TAU).item(), abs=1e-5)


def test_bad_arguments_raise_before_any_actor():
    cases = [(dict(size=0, dim=4), "size"), (dict(size=8, dim=0), "dim"),
             (dict(size=10, dim=4, num_shards=4), "num_shards"), (dict(size=8, dim=4, mode="fifo"), "mode"),
             (dict(size=5, dim=4, num_shards=4, mode="instance"), "num_shards"),
             (dict(size=8, dim=4, momentum=1.0), "momentum"), (dict(size=8, dim=4, dtype="int8"), "dtype"),
             (dict(size=8, dim=4, world_size=0), "world_size"), (dict(size=8, dim=4, timeout=0), "timeout"),
             (dict(size=8, dim=4, num_cpus=-1), "num_cpus"), (dict(size=8, dim=4, snapshot_every=-1), "snapshot_every"),
             (dict(size=8, dim=4, max_restarts=-2), "max_restarts")]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name) as info:
            ShardedMemoryBank(**kwargs)
        assert "must be" in str(info.value)


@pytest.mark.parametrize("name", ["q1", "q2", "q4"])
def test_info_nce_is_exact_and_equals_local_bank(banks, name):
    bank = banks(name)
    assert isinstance(bank, NegativeBank)  # the protocol the training step uses
    local = LocalBank(K, DIM, num_shards=bank.num_shards)
    assert_exact(bank, local, seed=1)  # empty bank: the positive alone, loss 0
    if bank.world_size == 1:  # one pusher, uneven pushes, wrapping around the queue
        for i, n in enumerate([7, 13, 20, 5, 31]):
            keys = unit(n, seed=10 + i)
            bank.push(keys)
            local.push(keys)
            if i == 1:
                assert_exact(bank, local, seed=2)  # partly filled
    else:  # two ranks, pushed by (step, rank); LocalBank gets them in that order
        for step in range(4):
            for rank in (1, 0):
                bank.push(unit(10, seed=100 + 2 * step + rank), step=step, rank=rank)
            for rank in (0, 1):
                local.push(unit(10, seed=100 + 2 * step + rank))
    assert rows(bank.keys()) == rows(local.keys())
    assert_exact(bank, local, seed=3)


def test_queue_holds_exactly_the_last_K_keys_with_two_pushers_in_any_order(banks):
    bank = banks("q2")
    other = pickle.loads(pickle.dumps(bank))  # rank 1 pushes through its own copy
    stream = []  # (step, rank, keys) in stream order
    orders = [(0, 1), (1, 0), (1, 0), (0, 1), (1, 0), (0, 1), (0, 1)]
    for step, order in enumerate(orders):
        batch = {rank: unit(8, seed=1000 + 2 * step + rank) for rank in (0, 1)}
        for rank in order:
            (bank if rank == 0 else other).push(batch[rank], step=step, rank=rank)
        stream += [batch[0], batch[1]]
    expected = torch.cat(stream)[-K:]
    assert rows(bank.keys()) == rows(expected)
    assert rows(other.keys()) == rows(expected)
    other.close()  # a copy only detaches: the bank goes on
    assert bank.keys().shape == (K, DIM)


def test_instance_entries_follow_the_momentum_formula(banks):
    bank = banks("i2")
    local = LocalBank(30, 8, num_shards=2, mode="instance", momentum=0.5)
    start = bank.keys()
    torch.testing.assert_close(start, local.keys())  # initial content: same seeded unit vectors
    expected = start.clone()
    pushes = [torch.tensor([0, 29, 14, 15]), torch.tensor([3, 14, 20]), torch.tensor([29, 0, 7, 7])]
    for i, ids in enumerate(pushes):
        f = unit(len(ids), 8, seed=50 + i)
        bank.push(f, ids)
        local.push(f, ids)
        for j, id_ in enumerate(ids.tolist()):
            expected[id_] = F.normalize(0.5 * expected[id_] + 0.5 * f[j], dim=0)
    got = bank.keys()
    assert got.shape == (30, 8)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got, local.keys(), atol=1e-6, rtol=0)
    assert_exact_instance = info_nce_loss(unit(4, 8, 9), unit(4, 8, 8), got, TAU)
    assert bank.info_nce(unit(4, 8, 9), unit(4, 8, 8), TAU).item() == pytest.approx(assert_exact_instance.item(), abs=1e-5)


def test_hardest_is_the_brute_force_top_k_and_sample_draws_bank_keys(banks):
    bank = banks("q4")
    bank.push(unit(K, seed=7))
    q = unit(5, seed=8)
    keys = bank.keys()
    sims = q @ keys.T
    top = sims.topk(6, dim=1)
    hard = bank.hardest(q, 6)
    assert hard.shape == (5, 6, DIM)
    torch.testing.assert_close(hard, keys[top.indices], atol=0, rtol=0)
    assert bank.hardest(q, 100).shape == (5, K, DIM)  # k capped at the keys held
    drawn = bank.sample(2000)
    assert drawn.shape == (2000, DIM)
    held = set(rows(keys))
    assert set(rows(drawn)) == held  # every draw is a bank key, and every key gets drawn
    assert bank.sample(0).shape == (0, DIM)


@pytest.mark.parametrize("name", ["q1", "q2", "q4", "i1", "i2", "i4"])
def test_no_query_is_its_own_negative(banks, name):
    """Against brute force from the bank's keys and ids (tests/own_id_checks.py), and LocalBank."""
    bank = banks(name)
    q, p, qids = own_case(bank, bank.world_size)
    check_own_id(bank, q, p, qids)
    config = {key: v for key, v in CONFIGS[name].items() if key != "world_size"}
    local = LocalBank(**config)
    own_case(local)
    assert rows(*bank.keys(with_ids=True)) == rows(*local.keys(with_ids=True))
    assert bank.info_nce(q, p, TAU, query_ids=qids).item() == pytest.approx(
        local.info_nce(q, p, TAU, query_ids=qids).item(), abs=1e-5)
    bad = [(lambda: bank.push(q, ids=torch.tensor([0.0, 1, 2, 3]), step=9), "ids must be an integer tensor"),
           (lambda: bank.push(q, ids=torch.tensor([-2, 0, 1, 2]), step=9), "ids must lie in"),
           (lambda: bank.hardest(q, 2, query_ids=qids[:3]), r"query_ids: ids must be an integer tensor \[4\]"),
           (lambda: bank.info_nce(q, p, TAU, query_ids=qids.float()), "query_ids: ids must be an integer")]
    for fn, match in bad:
        with pytest.raises(ValueError, match=match):
            fn()


def test_a_repeated_step_and_rank_lands_once(banks):
    bank = banks("q2")
    first, again = unit(6, seed=1), unit(6, seed=2)
    bank.push(first, step=0, rank=0)
    bank.push(again, step=0, rank=0)  # a retry or a repeat: dropped, not appended
    # landed before the copy's repeat is sent: two copies' messages are ordered each within its own
    # copy only, so without it the copy's `again` could reach the shard first and be the one kept
    bank.flush()
    other = pickle.loads(pickle.dumps(bank))
    other.push(again, step=0, rank=0)  # from another copy: dropped as well
    bank.push(unit(6, seed=3), step=0, rank=1)
    assert rows(bank.keys()) == rows(torch.cat([first, unit(6, seed=3)]))


@ray.remote(num_cpus=0)
def late_push(bank, keys, step, rank, delay):
    time.sleep(delay)
    bank.push(keys, step=step, rank=rank)
    bank.flush()
    return True


def test_a_query_at_step_t_waits_for_every_rank_of_step_t_minus_1(banks):
    bank = banks("q2")
    k0, k1 = unit(4, seed=20), unit(4, seed=21)
    bank.push(k0, step=0, rank=0)
    # rank 1 pushes step 0 late, from another process (the bank pickles into a Ray task)
    started = time.monotonic()
    done = late_push.remote(bank, k1, 0, 1, 1.0)
    q, p = unit(3, seed=22), unit(3, seed=23)
    loss = bank.info_nce(q, p, TAU, step=1)
    waited = time.monotonic() - started
    assert ray.get(done)
    assert waited >= 1.0
    assert loss.item() == pytest.approx(info_nce_loss(q, p, torch.cat([k0, k1]), TAU).item(), abs=1e-5)
    # a fast rank's step-1 push is held back from queries at step 1, seen from step 2
    bank.push(unit(4, seed=24), step=1, rank=1)
    assert rows(bank.keys(step=1)) == rows(torch.cat([k0, k1]))
    bank.push(unit(4, seed=25), step=1, rank=0)
    assert len(bank.keys(step=2)) == 16
    # a rank that never pushes: a clear error after the timeout
    impatient = pickle.loads(pickle.dumps(bank))
    impatient.timeout = 1.0
    with pytest.raises(BankTimeoutError, match=r"step 2 from ranks \[0, 1\]"):
        impatient.info_nce(q, p, TAU, step=3)
    with pytest.raises(BankTimeoutError, match="step 2"):  # a checkpoint holds whole steps too
        impatient.state_dict(step=3)


def test_overlap_request_then_combine(banks):
    bank = banks("q1")
    bank.push(unit(K, seed=30))
    q, p = unit(8, seed=31).requires_grad_(True), unit(8, seed=32)
    pending = bank.request_info_nce(q, TAU)  # the shard starts now
    other_work = (torch.randn(64, 64) @ torch.randn(64, 64)).sum()  # e.g. the key encoder
    loss = pending.loss(p)
    loss.backward()
    assert torch.isfinite(other_work)
    assert loss.item() == pytest.approx(info_nce_loss(q.detach(), p, bank.keys(), TAU).item(), abs=1e-5)
    assert q.grad is not None and q.grad.abs().sum() > 0
    m = bank.metrics()
    assert set(m) >= {"bank/size", "bank/fill", "bank/push_seconds", "bank/query_seconds",
                      "bank/bytes_moved", "bank/shard_restarts"}
    assert m["bank/size"] == K and m["bank/fill"] == 1.0 and m["bank/bytes_moved"] > 0


def test_state_dict_round_trip_and_into_a_fresh_bank(banks):
    bank = banks("q1")
    for step in range(3):
        bank.push(unit(20, seed=40 + step), ids=torch.arange(20) + 20 * step, step=step)
    state = bank.state_dict()
    saved = bank.keys(with_ids=True)
    bank.push(unit(20, seed=50), step=3)
    assert rows(bank.keys()) != rows(saved[0])
    bank.load_state_dict(state)
    assert rows(*bank.keys(with_ids=True)) == rows(*saved)  # the keys' image ids are saved too
    fresh = ShardedMemoryBank(**CONFIGS["q1"])
    try:
        fresh.load_state_dict(pickle.loads(pickle.dumps(state)))
        assert rows(*fresh.keys(with_ids=True)) == rows(*saved)
        fresh.push(unit(20, seed=99), step=2)  # (step 2, rank 0) is in the saved records: dropped
        assert rows(fresh.keys()) == rows(saved[0])
        with pytest.raises(ValueError, match="num_shards"):
            fresh.load_state_dict(dict(state, num_shards=2))
        old = pickle.loads(pickle.dumps(state))
        for shard_state in old["shards"]:
            del shard_state["shard"]["ids"]  # a checkpoint from before keys carried ids
        fresh.load_state_dict(old)
        keys, ids = fresh.keys(with_ids=True)
        assert rows(keys) == rows(saved[0]) and (ids == -1).all()
    finally:
        fresh.close()


def test_placement_group_spread_and_no_cpu_taken(banks):
    bank = banks("q2")
    table = ray.util.placement_group_table(bank._pg)
    assert table["strategy"] == "SPREAD" and len(table["bundles"]) == 2
    assert all("CPU" not in b for b in table["bundles"].values())

    @ray.remote(num_cpus=2)
    def all_cpus():
        return 1

    assert ray.get(all_cpus.remote(), timeout=60) == 1  # a trial may still use every CPU
    # each shard is its own process and reports its resident memory (bench/bank_scale.py reads it)
    hellos = [ray.get(a.hello.remote())["result"] for a in bank.actors]
    assert len({h["pid"] for h in hellos} | {os.getpid()}) == 3
    assert all(h["rss_bytes"] > 0 for h in hellos)


def test_a_killed_shard_is_restarted_and_refilled(ray_local):
    # float16 storage; snapshots every 2 pushes; each copy replays its last 4 pushes per shard
    bank = ShardedMemoryBank(size=64, dim=8, num_shards=2, dtype="float16", snapshot_every=2)
    local = LocalBank(64, 8, num_shards=2, dtype=torch.float16)
    try:
        def push(step):
            keys, ids = unit(4, 8, seed=60 + step), torch.arange(4) + 4 * step
            bank.push(keys, ids=ids, step=step)
            local.push(keys, ids=ids, step=step)

        for step in range(9):  # 36 rows: nothing evicted, so a lost push would show
            push(step)
            if step % 3 == 0:
                bank.info_nce(unit(2, 8, 1), unit(2, 8, 2), TAU)
        bank.flush()  # step 8 reached shard 1: it is lost with the actor, then replayed
        ray.kill(bank.actors[1], no_restart=False)
        for step in range(9, 12):
            push(step)
        q, p = unit(3, 8, 3), unit(3, 8, 4)
        loss = bank.info_nce(q, p, TAU)  # detects the restart, refills, replays, answers
        assert bank.shard_restarts == 1
        assert bank.metrics()["bank/shard_restarts"] == 1
        assert rows(*bank.keys(with_ids=True)) == rows(*local.keys(with_ids=True))  # ids refilled too
        assert loss.item() == pytest.approx(local.info_nce(q, p, TAU).item(), abs=1e-5)
        push(12)
        assert rows(bank.keys()) == rows(local.keys())
        assert bank.shard_restarts == 1
    finally:
        bank.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bfloat16])
def test_wire_round_trip_keeps_values_and_dtype(dtype):
    t = torch.arange(12).reshape(3, 4).to(dtype)
    sent = to_wire((t, None))
    assert isinstance(sent[0], torch.Tensor if dtype == torch.bfloat16 else np.ndarray) and sent[1] is None
    if isinstance(sent[0], np.ndarray):
        sent[0].setflags(write=False)  # as Ray hands it back: a read-only view of its store
    back, _ = from_wire(sent)
    assert back.dtype == dtype and torch.equal(back, t)
    expected = t.clone()
    back += 1  # writable (a bfloat16 tensor passed through is the caller's own)
    assert torch.equal(back - 1, expected)
