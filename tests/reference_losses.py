"""Loop-based float64 transcriptions of the loss definitions in DESIGN.md ("Losses").

Deliberately naive: python loops over i, j, b, one scalar at a time, so that each function
reads as the formula. Only for tests (small shapes); autograd flows through them, so their
gradients are the reference for the vectorised ones in workloads.losses.
"""

import torch


def _sqdist(u, v):
    return sum((u[d] - v[d]) ** 2 for d in range(len(u)))


def _dot(u, v):
    return sum(u[d] * v[d] for d in range(len(u)))


def _log_sum_exp(values):  # log(sum(exp(v))), shifted by the max so large logits stay finite
    m = max(v.item() for v in values)
    return m + torch.log(sum(torch.exp(v - m) for v in values))


def contrastive_ref(x, labels, margin):
    x = x.double()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            d = torch.sqrt(_sqdist(x[i], x[j]))
            if labels[i] == labels[j]:
                total = total + d**2
            else:
                total = total + torch.clamp(margin - d, min=0) ** 2
            count += 1
    return total / count


def triplet_ref(anchor, positive, negative, margin):
    a, p, n = anchor.double(), positive.double(), negative.double()
    total = torch.zeros((), dtype=torch.float64)
    for b in range(len(a)):
        total = total + torch.clamp(_sqdist(a[b], p[b]) - _sqdist(a[b], n[b]) + margin, min=0)
    return total / len(a)


def lifted_structured_ref(x, labels, margin):
    x = x.double()
    N = len(x)
    total, num_pos = torch.zeros((), dtype=torch.float64), 0
    for i in range(N):
        for j in range(i + 1, N):
            if labels[i] != labels[j]:
                continue
            num_pos += 1
            candidates = [margin - _sqdist(x[i], x[k]) for k in range(N) if labels[k] != labels[i]]
            candidates += [margin - _sqdist(x[j], x[l]) for l in range(N) if labels[l] != labels[j]]
            if not candidates:  # no negative on either side: the max is over nothing
                continue
            hardest = candidates[0]
            for c in candidates[1:]:
                hardest = torch.maximum(hardest, c)
            L = _sqdist(x[i], x[j]) + hardest
            total = total + torch.clamp(L, min=0) ** 2
    if num_pos == 0:
        return torch.zeros((), dtype=torch.float64)
    return total / (2 * num_pos)


def npair_ref(anchor, positive, negatives):
    a, p, n = anchor.double(), positive.double(), negatives.double()
    total = torch.zeros((), dtype=torch.float64)
    for b in range(len(a)):
        inner = 1.0
        for m in range(n.shape[1]):
            inner = inner + torch.exp(_dot(a[b], n[b, m]) - _dot(a[b], p[b]))
        total = total + torch.log(inner)
    return total / len(a)


def info_nce_ref(query, positive, negatives, temperature):
    q, p = query.double(), positive.double()
    B = len(q)
    total = torch.zeros((), dtype=torch.float64)
    for b in range(B):
        if negatives is None:
            negs = [p[j] for j in range(B) if j != b]
        elif negatives.ndim == 2:
            negs = [negatives.double()[k] for k in range(len(negatives))]
        else:
            negs = [negatives.double()[b, k] for k in range(negatives.shape[1])]
        pos_logit = _dot(q[b], p[b]) / temperature
        logits = [pos_logit] + [_dot(q[b], n) / temperature for n in negs]
        total = total - (pos_logit - _log_sum_exp(logits))
    return total / B


def nt_xent_ref(z1, z2, temperature):
    z = torch.cat([z1, z2]).double()
    n = len(z)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        pos = (i + n // 2) % n
        logits = [_dot(z[i], z[j]) / temperature for j in range(n) if j != i]
        total = total - (_dot(z[i], z[pos]) / temperature - _log_sum_exp(logits))
    return total / n

