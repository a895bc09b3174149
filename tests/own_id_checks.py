"""Checks that no query's own image is its negative, shared by the LocalBank tests
(tests/test_bank_own_id.py) and the Ray bank tests (tests/test_memory_bank.py).

own_case() fills a bank so that each query's nearest keys are those of its own image id (the case
in which a bank that kept them would mine them first); check_own_id() then compares the bank's
hardest, info_nce and sampled negatives with brute force written out from the definitions."""

import torch
import torch.nn.functional as F

from workloads.methods.bank_objective import BankObjective

QUERY_IDS = {"queue": [3, 7, 11, 13], "instance": [2, 9, 17, 28]}  # instance: one per shard of 4


def unit(n, dim, seed):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def own_case(bank, world_size: int = 1, seed: int = 0):
    """Pushes chunks of 8 rows as (step, rank) = divmod(i, world_size); returns (q, p, query_ids).
    queue (48 rows): keys of unknown id, keys of other images, and per query two near copies of
    itself with its id (the image pushed in two epochs). instance: each query's entry pushed
    towards the query four times; other entries get random keys."""
    dim, mode = bank.dim, bank.mode
    qids = torch.tensor(QUERY_IDS[mode])
    q = unit(4, dim, seed)
    p = F.normalize(q + 0.8 * unit(4, dim, seed + 1), dim=1)
    g = torch.Generator().manual_seed(seed + 2)
    if mode == "queue":
        chunks = [(unit(8, dim, seed + 10), None), (unit(8, dim, seed + 11), torch.arange(100, 108)),
                  (unit(8, dim, seed + 12), torch.randint(100, 200, (8,), generator=g)),
                  (unit(8, dim, seed + 13), qids.repeat(2).flip(0))]  # another query's id is a fine negative
        near = F.normalize(q.repeat_interleave(2, 0) + 0.05 * unit(8, dim, seed + 14), dim=1)
        chunks += [(unit(8, dim, seed + 15), torch.randint(20, 40, (8,), generator=g)),
                   (near, qids.repeat_interleave(2))]
    else:
        others = torch.tensor([i for i in range(bank.size) if i not in QUERY_IDS[mode]][:8])
        chunks = [(unit(8, dim, seed + 10), others)] + [(q.repeat(2, 1), qids.repeat(2))] * 2
    assert len(chunks) % world_size == 0
    for i, (keys, ids) in enumerate(chunks):
        step, rank = divmod(i, world_size)
        bank.push(keys, ids=ids, step=step, rank=rank)
    return q, p, qids


def content_ids(vectors, keys, kids):
    """The id of each vector [..., D], found by exact equality among the bank's keys."""
    flat = vectors.reshape(-1, keys.shape[1])
    match = (flat[:, None, :] == keys[None]).all(-1)
    assert match.any(1).all(), "a returned vector is not a key of the bank"
    return kids[match.float().argmax(1)].reshape(vectors.shape[:-1])


def brute_info_nce(q, p, negatives, negative_ids, qids, scale):
    """From the definition: mean over b of -log(e^{s_b+} / (e^{s_b+} + sum over the negatives j
    with id != qids[b] of e^{s_bj})), s = scale x dot products, in float64."""
    losses = []
    for b in range(q.shape[0]):
        neg = negatives.double()[negative_ids != qids[b]]
        logits = torch.cat([(q[b] * p[b]).sum()[None], neg @ q[b]]) * scale
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


def value_and_grads(fn, q, p):
    q, p = q.clone().requires_grad_(), p.clone().requires_grad_()
    loss = fn(q, p)
    loss.backward()
    return loss.detach().double(), q.grad.double(), p.grad.double()


def assert_same(got, want, atol=1e-5):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=atol, rtol=0)


class Recording:
    """The bank, with the last sample() kept (what the objective drew)."""

    def __init__(self, bank):
        self.bank, self.draws = bank, None

    def sample(self, n, step=None, with_ids=False):
        self.draws = self.bank.sample(n, step=step, with_ids=with_ids)
        return self.draws

    def __getattr__(self, name):
        return getattr(self.bank, name)


def check_own_id(bank, q, p, qids, tau=0.2, k=5):
    keys, kids = bank.keys(with_ids=True)
    sims = q @ keys.T
    # the case can fail: without exclusion every query's nearest key is its own image's
    assert (kids[sims.argmax(1)] == qids).all()
    assert (content_ids(bank.hardest(q, 1), keys, kids)[:, 0] == qids).all()

    # hardest: none of its own id, and exactly the top k among the others
    hard = bank.hardest(q, k, query_ids=qids)
    eligible = kids[None, :] != qids[:, None]
    kk = min(k, int(eligible.sum(1).min()))
    assert hard.shape == (4, kk, bank.dim)
    assert (content_ids(hard, keys, kids) != qids[:, None]).all()
    want = sims.masked_fill(~eligible, float("-inf")).topk(kk, dim=1).values
    torch.testing.assert_close((hard * q[:, None]).sum(-1), want, atol=1e-6, rtol=0)

    # exact InfoNCE: over the keys not of the query's id, value and gradients
    got = value_and_grads(lambda q, p: bank.info_nce(q, p, tau, query_ids=qids), q, p)
    want = value_and_grads(lambda q, p: brute_info_nce(q.double(), p.double(), keys, kids, qids, 1 / tau), q, p)
    assert_same(got, want)
    kept = brute_info_nce(q.double(), p.double(), keys, kids, torch.full_like(qids, -5), 1 / tau)
    assert abs(kept.item() - want[0].item()) > 1e-3  # keeping the own keys would be caught

    # sampled: the draws carry their keys' ids, and each row drops the draws of its own id
    for loss, scale in (("info_nce", 1 / tau), ("npair", 1.0)):
        recording = Recording(bank)
        objective = BankObjective(recording, "sampled", loss, temperature=tau, margin=0.5, n=300)
        got = value_and_grads(lambda q, p: objective(q, p, query_ids=qids), q, p)
        drawn, drawn_ids = recording.draws
        assert drawn.shape == (300, bank.dim)
        assert torch.equal(drawn_ids, content_ids(drawn, keys, kids))
        own = drawn_ids[None, :] == qids[:, None]
        assert own.any(1).all()  # every query drew its own image's keys: the mask is exercised
        want = value_and_grads(lambda q, p: brute_info_nce(q.double(), p.double(), drawn, drawn_ids, qids, scale), q, p)
        assert_same(got, want)
        kept = brute_info_nce(q.double(), p.double(), drawn, drawn_ids, torch.full_like(qids, -5), scale)
        assert abs(kept.item() - want[0].item()) > 1e-3
